//! `serve`: the federation's directory service and the HTTPS front.

use anyhow::{Context as _, Result};
use clap::Args;
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct ServeArgs {
    /// libp2p listen address, e.g. /ip4/127.0.0.1/tcp/4701; overrides `service.listen`.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Option<String>,
    /// HTTPS address of the portal, insurer and operator front, e.g. 127.0.0.1:8443;
    /// overrides `https.listen`.
    #[arg(long, value_name = "ADDR")]
    https: Option<String>,
    /// Which service to run: the whole directory (all), or one of its two halves run
    /// apart, each on its own data directory and keys (docs/roles.md); overrides
    /// `roles.role`.
    #[arg(long, value_enum)]
    role: Option<iryo_directory::config::ServiceRole>,
}

impl ServeArgs {
    pub(super) fn role(&self) -> Option<iryo_directory::config::ServiceRole> {
        self.role
    }
}

/// `config.roles.role` is settled before: what `init` recorded, or `--role`.
pub(super) fn run(config: Config, a: ServeArgs) -> Result<ExitCode> {
    let ServeArgs {
        listen,
        https,
        role: _,
    } = a;
    let listen: libp2p::Multiaddr = listen
        .unwrap_or_else(|| config.service.listen.clone())
        .parse()
        .context("listen address")?;
    let ctx = Context::new(config.clone());
    if let Some(url) = ctx.database()? {
        return serve_postgres(&ctx, &url, listen, https);
    }
    let store = std::sync::Arc::new(ctx.store()?);
    let keys = ctx.keys()?;
    let identity = iryo_directory::keys::service_identity(&config.keys_dir())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let socket =
            iryo_directory::admin::bind_socket(&iryo_directory::admin::socket_path(&config))
                .context("the admin socket")?;
        let admin_task = tokio::spawn(iryo_directory::admin::serve_socket(
            socket,
            store.clone(),
            keys.root.clone(),
            config.clone(),
        ));
        let witnessing = start_witnessing(&config, store.clone(), &keys.root)?;
        let link = authority_link(&config, identity)?;
        let telling = start_telling(&config, store.clone(), &keys.root, link.clone());
        let started = start_serving(
            &config,
            store,
            (&keys.root, identity),
            listen,
            https,
            None,
            link,
        )
        .await;
        let (running, front) = match started {
            Ok(s) => s,
            Err(e) => {
                admin_task.abort();
                let _ = std::fs::remove_file(iryo_directory::admin::socket_path(&config));
                return Err(e);
            }
        };
        // Stop on a signal, or when the storage fails: redb serves nothing after an I/O
        // error until the database is opened again, which a restart does.
        let failed = tokio::select! {
            () = iryo_p2p::shutdown::signal() => None,
            why = iryo_p2p::storage::failed() => Some(why),
        };
        if let Some(why) = &failed {
            tracing::error!(
                error = %why,
                "stopping with exit code {STORAGE_FAILED}: the database's storage failed; \
                 the supervisor starts the directory again (configs/iryo-directory.service)"
            );
        }
        admin_task.abort();
        for task in [witnessing, telling].into_iter().flatten() {
            task.abort();
        }
        if let Some(f) = front {
            f.stop();
        }
        running.stop().await;
        let _ = std::fs::remove_file(iryo_directory::admin::socket_path(&config));
        anyhow::Ok(failed)
    })?
    .map_or(Ok(ExitCode::SUCCESS), |_| {
        Ok(ExitCode::from(STORAGE_FAILED))
    })
}

/// `serve` on PostgreSQL: the directory service for nodes, answering from the database
/// beside any other `serve` process on it. Operator commands need no admin socket
/// there: they work on the database directly.
fn serve_postgres(
    ctx: &Context,
    url: &iryo_directory::postgres::DatabaseUrl,
    listen: libp2p::Multiaddr,
    https: Option<String>,
) -> Result<ExitCode> {
    let config = &ctx.config;
    let store = std::sync::Arc::new(ctx.postgres(url)?);
    let keys = ctx.keys()?;
    let identity = iryo_directory::keys::service_identity(&config.keys_dir())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let follower = follow_revocations(config, &store);
        let witnessing = start_witnessing(config, store.clone(), &keys.root)?;
        let link = authority_link(config, identity)?;
        let telling = start_telling(config, store.clone(), &keys.root, link.clone());
        let (running, front) = start_serving(
            config,
            store,
            (&keys.root, identity),
            listen,
            https,
            Some(url),
            link,
        )
        .await?;
        iryo_p2p::shutdown::signal().await;
        if let Some(f) = follower {
            f.abort();
        }
        for task in [witnessing, telling].into_iter().flatten() {
            task.abort();
        }
        if let Some(f) = front {
            f.stop();
        }
        running.stop().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the directory service for nodes and the HTTPS front on `store`, writes the
/// service's addresses down and prints the line scripts and tests wait for.
async fn start_serving(
    config: &Config,
    store: std::sync::Arc<dyn iryo_directory::store::Front>,
    (agency, identity): (&ed25519_dalek::SigningKey, [u8; 32]),
    listen: libp2p::Multiaddr,
    https: Option<String>,
    database: Option<&iryo_directory::postgres::DatabaseUrl>,
    authority: Option<std::sync::Arc<iryo_directory::tell::Authority>>,
) -> Result<(
    iryo_directory::service::Running,
    Option<iryo_directory::web::Running>,
)> {
    let admission = iryo_directory::service::Admission {
        role: config.roles.role,
        registry: match config.roles.role {
            iryo_directory::config::ServiceRole::Authority => Some(
                config
                    .roles
                    .registry_key()
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            _ => None,
        },
        registry_peer: match config.roles.role {
            iryo_directory::config::ServiceRole::Authority => Some(
                config
                    .roles
                    .registry_peer()
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            _ => None,
        },
        members: authority.map(|a| {
            std::sync::Arc::new(iryo_directory::members::RemoteMembers::new(
                a,
                std::time::Duration::from_secs(config.roles.members_refresh_seconds.max(1)),
            ))
        }),
    };
    let running = iryo_directory::service::start(
        store.clone(),
        agency.clone(),
        identity,
        listen,
        config.service.max_group,
        admission,
    )
    .await?;
    let addrs = note_addresses(&config.data_dir, &running)?;
    let front = start_https(config, https, store, agency.clone()).await?;
    let https_addr = front
        .as_ref()
        .map(|f| f.addr.to_string())
        .unwrap_or_default();
    let database = database
        .map(|u| format!(" database={u}"))
        .unwrap_or_default();
    println!(
        "iryo-directory ready p2p={} https={https_addr} agency_key={}{database} role={}",
        addrs.join(","),
        iryo_proto::merkle::to_hex(agency.verifying_key().as_bytes()),
        config.roles.role.as_str()
    );
    use std::io::Write as _;
    std::io::stdout().flush()?;
    Ok((running, front))
}

/// Keeps the HTTPS front's revocation list in step with the one `ca revoke` published
/// to the database, from now and then every few seconds; `None` without an agency CA.
fn follow_revocations(
    config: &Config,
    store: &std::sync::Arc<iryo_directory::postgres::PgStore>,
) -> Option<tokio::task::JoinHandle<()>> {
    use iryo_directory::ca::Ca;
    use iryo_directory::postgres::revocations::{follow, FOLLOW_EVERY};
    let dir = Ca::dir(&config.data_dir);
    let ca = Ca::open(&dir).ok()?;
    let (store, ca) = (store.clone(), std::sync::Arc::new(ca));
    let once = move || {
        if let Err(e) = follow(&store, &ca) {
            tracing::warn!(error = %e, "the revocation list could not be brought in step with the database");
        }
    };
    once();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(FOLLOW_EVERY).await;
            let step = once.clone();
            let _ = tokio::task::spawn_blocking(step).await;
        }
    }))
}

/// Asks the configured witnesses to cosign the latest checkpoint now and every
/// `[audit] witness_every_seconds`, and keeps what they cosign; `None` when there is
/// none to ask. A witness that fails is logged when it starts failing and when it
/// answers again, not at every round.
fn start_witnessing(
    config: &Config,
    store: std::sync::Arc<dyn iryo_directory::store::Operations + Send + Sync>,
    root: &ed25519_dalek::SigningKey,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use iryo_directory::witnesses;
    let every = config.audit.witness_every_seconds;
    if every == 0 || config.audit.witnesses.is_empty() {
        return Ok(None);
    }
    let list = witnesses::configured(&config.audit.witnesses)?;
    let origin = witnesses::origin(config.audit.origin.as_deref(), root);
    let signer = witnesses::log_signer(&origin, root)
        .map_err(|e| anyhow::anyhow!("[audit] origin {origin:?}: {e}"))?;
    let state = std::sync::Arc::new((store, list, signer, origin));
    Ok(Some(tokio::spawn(async move {
        let mut failing: Vec<String> = Vec::new();
        loop {
            let s = state.clone();
            let failed = tokio::task::spawn_blocking(move || {
                witnesses::witness_once(&*s.0, &s.1, &s.2, &s.3)
            })
            .await
            .unwrap_or_default();
            for (url, e) in failed.iter().filter(|(u, _)| !failing.contains(u)) {
                tracing::warn!(witness = %url, error = %e, "a witness did not cosign the audit log's checkpoint");
            }
            let now: Vec<String> = failed.into_iter().map(|(u, _)| u).collect();
            for url in failing.iter().filter(|u| !now.contains(u)) {
                tracing::info!(witness = %url, "the witness cosigns again");
            }
            failing = now;
            tokio::time::sleep(std::time::Duration::from_secs(every)).await;
        }
    })))
}

/// On a registry run apart, the session with the exchange authority, under the
/// registry's service identity (the authority's `roles.registry_peer`); the root key
/// only signs. Must run inside the runtime.
fn authority_link(
    config: &Config,
    identity: [u8; 32],
) -> Result<Option<std::sync::Arc<iryo_directory::tell::Authority>>> {
    if config.roles.role != iryo_directory::config::ServiceRole::Registry {
        return Ok(None);
    }
    let address = config.roles.authority.as_deref().unwrap_or("").trim();
    if address.is_empty() {
        anyhow::bail!(
            "roles.authority is not set: a registry run apart tells the exchange authority of ID changes, deaths and retirements, and admits nodes by the memberships it keeps; give the address the authority's `serve` prints"
        );
    }
    Ok(Some(std::sync::Arc::new(
        iryo_directory::tell::Authority::new(address, identity)?,
    )))
}

/// On a registry run apart from the exchange authority, sends the notices its ID
/// changes, deaths and retirements queue, now and every `roles.tell_every_seconds`.
fn start_telling(
    config: &Config,
    store: std::sync::Arc<dyn iryo_directory::store::Operations + Send + Sync>,
    root: &ed25519_dalek::SigningKey,
    authority: Option<std::sync::Arc<iryo_directory::tell::Authority>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = std::time::Duration::from_secs(config.roles.tell_every_seconds.max(1));
    authority.map(|a| {
        tokio::spawn(iryo_directory::tell::tell_loop(
            store,
            a,
            root.clone(),
            every,
        ))
    })
}

/// The service's listen addresses, also written to `DATA_DIR/directory.addr` for
/// scripts and tests.
fn note_addresses(
    data_dir: &std::path::Path,
    running: &iryo_directory::service::Running,
) -> Result<Vec<String>> {
    let addrs: Vec<String> = running
        .addresses
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    let mut file = iryo_directory::files::create_private(&data_dir.join("directory.addr"))?;
    std::io::Write::write_all(&mut file, addrs.join("\n").as_bytes())?;
    Ok(addrs)
}

/// The exit code after the storage failed (EX_TEMPFAIL): try again.
const STORAGE_FAILED: u8 = 75;

/// Starts the HTTPS front when the agency CA exists.
async fn start_https(
    config: &Config,
    https: Option<String>,
    store: std::sync::Arc<dyn iryo_directory::store::Front>,
    agency: ed25519_dalek::SigningKey,
) -> Result<Option<iryo_directory::web::Running>> {
    use iryo_directory::ca::Ca;
    use iryo_directory::web;
    let dir = Ca::dir(&config.data_dir);
    if !Ca::exists(&dir) {
        tracing::warn!(
            "no agency CA in {}: HTTPS front off (run `iryo-directory ca init`)",
            dir.display()
        );
        return Ok(None);
    }
    let listen: std::net::SocketAddr = https
        .unwrap_or_else(|| config.https.listen.clone())
        .parse()
        .context("HTTPS listen address")?;
    let tls = std::sync::Arc::new(web::tls::TlsConfigs::new(&Ca::open(&dir)?)?);
    let state = std::sync::Arc::new(web::Web::new(store, agency, config.clone())?);
    Ok(Some(
        web::start(state, tls, listen)
            .await
            .with_context(|| format!("HTTPS on {listen}"))?,
    ))
}
