//! A federation inside one process — the directory service and nodes as libraries on
//! 127.0.0.1 — for the demo and the network benchmark.

use anyhow::{Context as _, Result};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::enrollment::{ingest_all, Encoding, IngestOptions};
use iryo_directory::keys::AgencyKeys;
use iryo_directory::postgres::DatabaseUrl;
use iryo_directory::registry::now;
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_directory::store::{Serving, Store};
use iryo_node::config::{ApiConfig, DirectoryConfig, NodeConfig, OutboxConfig, P2pConfig};
use iryo_node::identity::{generate_key, RegistrationFile};
use iryo_proto::federation::Role;
use iryo_proto::InstitutionCode;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A registry made and enrolled: the store, the embedded one again if it is that, and
/// the agency's keys.
type Filled = (Arc<dyn Serving>, Option<Arc<Store>>, AgencyKeys);

pub struct LocalFederation {
    pub dir: PathBuf,
    /// The directory's store, on either backend.
    pub store: Arc<dyn Serving>,
    /// The same store when it is the embedded one, for what only it has (the HTTPS
    /// front, the per-person index folding).
    pub embedded: Option<Arc<Store>>,
    pub keys: AgencyKeys,
    pub service: iryo_directory::service::Running,
    pub directory_addr: String,
    pub agency_hex: String,
}

impl LocalFederation {
    /// The embedded store, for what only it has; an error on PostgreSQL.
    pub fn embedded(&self) -> Result<Arc<Store>> {
        self.embedded
            .clone()
            .context("this needs the embedded store; the federation runs on PostgreSQL")
    }

    /// A fresh directory in `dir/directory` with `persons` sample people, serving.
    pub async fn start(dir: &Path, persons: u64) -> Result<Self> {
        Self::start_on(dir, persons, None).await
    }

    /// As `start`, with the registry in the (empty) PostgreSQL database `database`
    /// when one is given.
    pub async fn start_on(
        dir: &Path,
        persons: u64,
        database: Option<&DatabaseUrl>,
    ) -> Result<Self> {
        let config = Config {
            data_dir: dir.join("directory"),
            ..Config::default()
        };
        let ctx = Context::new(config.clone());
        let sample = write_sample(&dir.join("sample"), &SampleOptions::clean(persons, 7))?;
        let opts = IngestOptions {
            encoding: Some(Encoding::Utf8),
            batch_rows: config.enrollment.batch_rows,
            only_insurer: None,
            max_line_bytes: config.enrollment.max_line_bytes,
            source_name: None,
        };
        // The stores block (PostgreSQL's client drives a runtime of its own): off the
        // async workers.
        let (store, embedded, keys) =
            tokio::task::block_in_place(|| Self::fill(&ctx, &sample, &opts, database))?;

        let service_key = iryo_directory::keys::service_identity(&config.keys_dir())?;
        let service = iryo_directory::service::start(
            store.clone(),
            keys.root.clone(),
            service_key,
            "/ip4/127.0.0.1/tcp/0".parse()?,
            config.service.max_group,
            iryo_directory::service::Admission::all(),
        )
        .await?;
        let directory_addr = service
            .addresses
            .first()
            .context("no listen address")?
            .to_string();
        let agency_hex = iryo_proto::merkle::to_hex(keys.root.verifying_key().as_bytes());
        Ok(Self {
            dir: dir.to_path_buf(),
            store,
            embedded,
            keys,
            service,
            directory_addr,
            agency_hex,
        })
    }

    /// Makes the registry, on PostgreSQL when `database` is given, and enrolls the
    /// sample into it.
    fn fill(
        ctx: &Context,
        sample: &iryo_directory::sample::SampleReport,
        opts: &IngestOptions,
        database: Option<&DatabaseUrl>,
    ) -> Result<Filled> {
        Ok(if let Some(url) = database {
            let (store, keys) = ctx.init_postgres(url)?;
            let issuer = ctx.postgres_issuer(&store)?;
            ingest_all(&store, &issuer, &sample.files, opts)?;
            (Arc::new(store), None, keys)
        } else {
            let (store, keys) = ctx.init()?;
            let issuer = ctx.issuer(&store)?;
            ingest_all(&store, &issuer, &sample.files, opts)?;
            let store = Arc::new(store);
            (store.clone(), Some(store), keys)
        })
    }

    /// Makes a node's identity and configuration under `dir/<sub>`, registers it with
    /// the agency, and starts it.
    /// Card checks for about `n` people spread over the whole registry — every so many
    /// rows of the enrolled sample files — so a large registry is not asked about its
    /// first pages only.
    pub fn spread_checks(
        &self,
        n: usize,
        institution: InstitutionCode,
        date: chrono::NaiveDate,
    ) -> Result<Vec<iryo_proto::eligibility::CheckRequest>> {
        use iryo_proto::eligibility::{Card, CheckKey, CheckRequest};
        use iryo_proto::{Branch, CardNumber, CardSymbol, InsurerNumber};
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("sample"))?
            .map(|e| Ok(e?.path()))
            .collect::<std::io::Result<_>>()?;
        files.sort();
        let mut rows = 0usize;
        for f in &files {
            rows += csv::Reader::from_path(f)?.records().count();
        }
        let every = (rows / n.max(1)).max(1);
        let mut checks = Vec::with_capacity(n);
        let mut seen = 0usize;
        for f in &files {
            let mut r = csv::Reader::from_path(f)?;
            let header = r.headers()?.clone();
            let at = |name: &str| {
                header
                    .iter()
                    .position(|h| h == name)
                    .with_context(|| format!("{}: no {name} column", f.display()))
            };
            let (i, s, c, b) = (
                at("insurer_number")?,
                at("card_symbol")?,
                at("card_number")?,
                at("branch")?,
            );
            for row in r.records() {
                let row = row?;
                seen += 1;
                if !seen.is_multiple_of(every) {
                    continue;
                }
                let card = Card {
                    insurer: InsurerNumber::parse(&row[i])?,
                    symbol: CardSymbol::parse(&row[s])?,
                    number: CardNumber::parse(&row[c])?,
                    branch: Branch::parse(&row[b])?,
                };
                checks.push(CheckRequest {
                    institution,
                    key: CheckKey::for_card(&card, None),
                    date,
                    visit_consent: false,
                    idempotency_key: None,
                });
            }
        }
        Ok(checks)
    }

    pub async fn add_node(
        &self,
        sub: &str,
        code: InstitutionCode,
        name: &str,
    ) -> Result<(iryo_node::Running, NodeConfig)> {
        let dir = self.dir.join(sub);
        std::fs::create_dir_all(&dir)?;
        let key = generate_key(&dir.join("node.key"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let reg = RegistrationFile::new(&key, code, name, vec![listen.clone()], now());
        std::fs::write(
            dir.join("registration.json"),
            serde_json::to_string_pretty(&reg)?,
        )?;
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        let cfg = NodeConfig {
            code,
            data_dir: dir.clone(),
            key_file: None,
            p2p: P2pConfig { listen },
            api: ApiConfig {
                listen: "127.0.0.1:0".into(),
                token: iryo_proto::merkle::to_hex(&token),
            },
            directory: DirectoryConfig {
                address: self.directory_addr.clone().into(),
                registry_address: iryo_node::config::Addresses::default(),
                agency_key: self.agency_hex.clone(),
                refresh_seconds: 60,
                clock_tolerance_seconds: iryo_proto::federation::CLOCK_SKEW_SECONDS,
            },
            outbox: OutboxConfig::default(),
            witnesses: iryo_node::config::WitnessesConfig::default(),
        };
        std::fs::write(dir.join("node.toml"), cfg.commented())?;
        tokio::task::block_in_place(|| {
            self.store.add_institution(
                &reg.signed,
                vec![Role::Source, Role::Requester],
                365,
                &self.keys.root,
                now(),
                "local",
            )
        })?;
        let running = iryo_node::start(cfg.clone()).await?;
        Ok((running, cfg))
    }
}
