//! `iryo-demo`: a local federation on 127.0.0.1 — the agency's directory with sample
//! people enrolled, and two institutions' nodes — doing one consented exchange of
//! records, narrated, ending with the audit entries it produced.

use anyhow::{Context as _, Result};
use clap::Parser;
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::enrollment::{ingest_file, Encoding, IngestOptions, Progress};
use iryo_directory::registry::now;
use iryo_directory::report;
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_node::config::{ApiConfig, DirectoryConfig, NodeConfig, OutboxConfig, P2pConfig};
use iryo_node::identity::{generate_key, RegistrationFile};
use iryo_proto::federation::{Purpose, Role};
use iryo_proto::{InstitutionCode, PointTableKind};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "iryo-demo",
    about = "A local federation: directory and two nodes on 127.0.0.1, one consented exchange, its audit trail."
)]
struct Args {
    /// Working directory; emptied first.
    #[arg(long, default_value = "iryo-federation-demo")]
    dir: PathBuf,
    /// People in the sample enrollment.
    #[arg(long, default_value_t = 500)]
    persons: u64,
}

fn step(s: &str) {
    println!("\n== {s}");
}

fn node_config(
    dir: &Path,
    code: InstitutionCode,
    name: &str,
    directory: &str,
    agency: &str,
) -> Result<NodeConfig> {
    std::fs::create_dir_all(dir)?;
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
        data_dir: dir.to_path_buf(),
        key_file: None,
        p2p: P2pConfig { listen },
        api: ApiConfig {
            listen: "127.0.0.1:0".into(),
            token: iryo_proto::merkle::to_hex(&token),
        },
        directory: DirectoryConfig {
            address: directory.into(),
            agency_key: agency.into(),
            refresh_seconds: 60,
        },
        outbox: OutboxConfig { interval_ms: 100 },
    };
    std::fs::write(dir.join("node.toml"), cfg.commented())?;
    Ok(cfg)
}

fn main() -> Result<()> {
    tracing_init();
    let args = Args::parse();
    for sub in ["directory", "clinic", "hospital", "sample"] {
        let p = args.dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&args))
}

fn tracing_init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

async fn run(args: &Args) -> Result<()> {
    step("1. the agency: a fresh directory, sample enrollment files, medical IDs issued");
    let config = Config {
        data_dir: args.dir.join("directory"),
        ..Config::default()
    };
    let ctx = Context::new(config.clone());
    let (store, keys) = ctx.init()?;
    let issuer = ctx.issuer(&store)?;
    let sample = write_sample(
        &args.dir.join("sample"),
        &SampleOptions {
            persons: args.persons,
            seed: 7,
            bad_rows_percent: 0.0,
            encoding: Encoding::Utf8,
        },
    )?;
    let opts = IngestOptions {
        encoding: Encoding::Utf8,
        batch_rows: 10_000,
    };
    for f in &sample.files {
        ingest_file(&store, &issuer, f, &opts, &Progress::Silent)?;
    }
    let patient = store
        .reader()?
        .first_persons(1)?
        .pop()
        .context("no one enrolled")?;
    println!(
        "  {} people enrolled; the patient of this demo: {} ({}) medical ID {}",
        store.counts()?.persons,
        patient.identity.name,
        patient.identity.kana,
        patient.medical_id.grouped()
    );
    let store = Arc::new(store);
    let service_key = iryo_directory::keys::service_identity(&config.keys_dir())?;
    let running = iryo_directory::service::start(
        store.clone(),
        keys.root.clone(),
        service_key,
        "/ip4/127.0.0.1/tcp/0".parse()?,
        config.service.max_group,
    )
    .await?;
    let directory_addr = running.addresses[0].to_string();
    let agency_hex = iryo_proto::merkle::to_hex(keys.root.verifying_key().as_bytes());
    println!("  directory listening at {directory_addr}");

    step("2. two institutions install nodes and register with the agency");
    let hospital_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 100_001)?;
    let clinic_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 200_002)?;
    let hospital_cfg = node_config(
        &args.dir.join("hospital"),
        hospital_code,
        "東京中央病院",
        &directory_addr,
        &agency_hex,
    )?;
    let clinic_cfg = node_config(
        &args.dir.join("clinic"),
        clinic_code,
        "千代田内科クリニック",
        &directory_addr,
        &agency_hex,
    )?;
    for (cfg, name) in [
        (&hospital_cfg, "東京中央病院"),
        (&clinic_cfg, "千代田内科クリニック"),
    ] {
        let reg: RegistrationFile = serde_json::from_str(&std::fs::read_to_string(
            cfg.data_dir.join("registration.json"),
        )?)?;
        let m = store.add_institution(
            &reg.signed,
            vec![Role::Source, Role::Requester],
            365,
            &keys.root,
            now(),
            "demo",
        )?;
        println!("  membership #{} for {} {name}", m.serial, m.code);
    }
    let hospital = iryo_node::start(hospital_cfg.clone()).await?;
    let clinic = iryo_node::start(clinic_cfg.clone()).await?;
    println!(
        "  hospital node API http://{}   clinic node API http://{}",
        hospital.api, clinic.api
    );

    step("3. the hospital's EMR stores the patient's records on its node");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": [
        { "resource": { "resourceType": "Condition", "code": { "text": "2型糖尿病 / type 2 diabetes" } } },
        { "resource": { "resourceType": "Observation", "code": { "text": "HbA1c" }, "valueQuantity": { "value": 7.1, "unit": "%" } } },
        { "resource": { "resourceType": "MedicationStatement", "medicationCodeableConcept": { "text": "メトホルミン / metformin 500 mg" } } }
    ]});
    let (h_api, h_token) = (hospital.api, hospital_cfg.api.token.clone());
    let (c_api, c_token) = (clinic.api, clinic_cfg.api.token.clone());
    let id = patient.medical_id;
    let put = {
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || {
            agent
                .put(&format!("http://{h_api}/patients/{id}/records"))
                .header("Authorization", &format!("Bearer {h_token}"))
                .send_json(&bundle)
                .map(|r| r.status().as_u16())
        })
        .await??
    };
    println!("  PUT /patients/{}/records -> {put}", id.grouped());

    let fetch = |agent: ureq::Agent| {
        let token = c_token.clone();
        tokio::task::spawn_blocking(move || -> Result<(u16, serde_json::Value)> {
            let r = agent
                .post(&format!("http://{c_api}/exchange/fetch"))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(json!({ "medical_id": id.to_string(), "from": hospital_code.to_string(), "purpose": "treatment" }))?;
            let status = r.status().as_u16();
            Ok((status, r.into_body().read_json()?))
        })
    };

    step("4. the clinic asks for them without the patient's consent");
    let (status, body) = fetch(agent.clone()).await??;
    println!(
        "  POST /exchange/fetch -> {status} {}",
        body["detail"].as_str().unwrap_or("")
    );

    step("5. the patient consents (at the agency, for treatment by this clinic) and the clinic asks again");
    store.add_consent(
        id,
        &ConsentRecord {
            institution: Some(clinic_code),
            purpose: Some(Purpose::Treatment),
            allow: true,
            expires_at: None,
            at: now(),
            origin: ConsentOrigin::Operator("demo".into()),
        },
    )?;
    let (status, body) = fetch(agent.clone()).await??;
    let types: Vec<&str> = body["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["resource"]["resourceType"].as_str())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "  POST /exchange/fetch -> {status}: a Bundle of {} resources ({})",
        types.len(),
        types.join(", ")
    );

    step("6. both nodes report the exchange, signed, to the agency's audit log");
    for _ in 0..100 {
        if hospital.node.store.outbox_len()? == 0 && clinic.node.store.outbox_len()? == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (i, e) in store.audit_for_patient(&[id])? {
        println!("  #{i}  {}", report::audit_entry(&e));
    }
    let report = store.audit_verify(&keys.root.verifying_key())?;
    println!(
        "  audit log: {} entries, {} signed tree heads, root {} — {}",
        report.entries,
        report.heads,
        &report.root[..16],
        if report.problems.is_empty() {
            "verified"
        } else {
            "PROBLEMS"
        }
    );
    hospital.stop();
    clinic.stop();
    running.stop().await;
    println!(
        "\nEverything is in {}: directory/ (database, keys), hospital/ and clinic/ (node.toml, node.key, records).",
        args.dir.display()
    );
    Ok(())
}
