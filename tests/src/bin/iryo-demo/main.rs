//! `iryo-demo`: a local federation on 127.0.0.1 — the agency's directory with sample
//! people enrolled, and two institutions' nodes — doing one consented exchange of
//! records, narrated, ending with the audit entries it produced.

use anyhow::{Context as _, Result};
use clap::Parser;
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::registry::now;
use iryo_directory::report;
use iryo_proto::federation::Purpose;
use iryo_proto::{InstitutionCode, PointTableKind};
use iryo_tests::local::LocalFederation;
use serde_json::json;
use std::path::PathBuf;

mod split;

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
    /// Keep everything running at the end (until Ctrl-C) to try My Portal in a browser.
    #[arg(long)]
    serve: bool,
    /// Run the directory as a registry and an exchange authority apart, each with its
    /// own data, store and key (docs/roles.md): nodes check eligibility at the
    /// registry and exchange records through the authority.
    #[arg(long, conflicts_with = "serve")]
    split: bool,
}

fn step(s: &str) {
    println!("\n== {s}");
}

fn main() -> Result<()> {
    iryo_tests::init_tracing();
    let args = Args::parse();
    if args.split {
        return split::run(args.persons);
    }
    for sub in ["directory", "clinic", "hospital", "sample", "letters"] {
        let p = args.dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&args))
}

async fn run(args: &Args) -> Result<()> {
    step("1. the agency: a fresh directory, sample enrollment files, medical IDs issued");
    let fed = LocalFederation::start(&args.dir, args.persons).await?;
    let store = fed.embedded()?;
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
    println!("  directory listening at {}", fed.directory_addr);

    step("2. two institutions install nodes and register with the agency");
    let hospital_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 100_001)?;
    let clinic_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 200_002)?;
    let (hospital, hospital_cfg) = fed
        .add_node("hospital", hospital_code, "東京中央病院")
        .await?;
    let (clinic, clinic_cfg) = fed
        .add_node("clinic", clinic_code, "千代田内科クリニック")
        .await?;
    for m in store.institutions()? {
        let m = m.membership()?;
        println!("  membership #{} for {} {}", m.serial, m.code, m.name);
    }
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
        { "resource": { "resourceType": "Condition", "subject": { "reference": "Patient/p1" },
                        "code": { "text": "2型糖尿病 / type 2 diabetes" } } },
        { "resource": { "resourceType": "Observation", "status": "final", "subject": { "reference": "Patient/p1" },
                        "code": { "text": "HbA1c" }, "valueQuantity": { "value": 7.1, "unit": "%" } } },
        { "resource": { "resourceType": "MedicationStatement", "status": "active", "subject": { "reference": "Patient/p1" },
                        "medicationCodeableConcept": { "text": "メトホルミン / metformin 500 mg" } } }
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
    // Heads come at most once a second; an auditor asks for one covering everything.
    store.sign_pending_head()?;
    let report = store.audit_verify(&fed.keys.root.verifying_key())?;
    println!(
        "  audit log: {} entries, signed tree heads checked: {}, root {} — {}",
        report.entries,
        report.heads,
        &report.root[..16],
        if report.problems.is_empty() {
            "verified"
        } else {
            "PROBLEMS"
        }
    );
    step("7. the patient's letter and My Portal on the agency's HTTPS front");
    let front = portal(&fed, &patient).await?;
    if args.serve {
        println!("  Ctrl-C stops the federation.");
        tokio::signal::ctrl_c().await?;
    } else {
        println!("  (run with --serve to keep the federation up and sign in)");
    }
    front.stop();
    hospital.stop();
    clinic.stop();
    fed.service.stop().await;
    println!(
        "\nEverything is in {}: directory/ (database, keys, ca/), hospital/ and clinic/ (node.toml, node.key, records), letters/.",
        args.dir.display()
    );
    Ok(())
}

/// Makes the agency CA, starts the HTTPS front, and prints the patient's letter with
/// its activation code (as a PDF too when the Japanese font is installed).
async fn portal(
    fed: &LocalFederation,
    patient: &iryo_directory::registry::Person,
) -> Result<iryo_directory::web::Running> {
    use iryo_directory::ca::Ca;
    use iryo_directory::config::Config;
    use iryo_directory::letters::{write_letters, Letter};
    use iryo_directory::store::Plan;
    use iryo_directory::web;
    let config = Config {
        data_dir: fed.dir.join("directory"),
        ..Config::default()
    };
    let ca = Ca::init(
        &Ca::dir(&config.data_dir),
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    let tls = std::sync::Arc::new(web::tls::TlsConfigs::new(&ca)?);
    let state = std::sync::Arc::new(web::Web::new(
        fed.embedded()?,
        fed.keys.root.clone(),
        config.clone(),
    )?);
    let front = web::start(state, tls, "127.0.0.1:0".parse()?).await?;
    let row = fed
        .embedded()?
        .letter_rows(Plan::Agency, true, iryo_directory::registry::today())?
        .into_iter()
        .find(|r| r.pid == patient.pid)
        .context("no letter row for the patient")?;
    let expires = now() + i64::from(config.letters.activation_days) * 86_400;
    let code = fed
        .embedded()?
        .issue_activations(&[patient.pid], expires)?
        .pop()
        .context("no activation code")?;
    let mut letters_cfg = config.letters.clone();
    letters_cfg.portal_url = format!("https://localhost:{}/portal/", front.addr.port());
    let letter = Letter {
        pid: patient.pid,
        row,
        code: code.clone(),
        expires: chrono::DateTime::from_timestamp(expires, 0)
            .map(|d| d.date_naive().to_string())
            .unwrap_or_default(),
        expires_at: expires,
    };
    match write_letters(
        &fed.dir.join("letters"),
        &[letter],
        Plan::Agency,
        &letters_cfg,
    ) {
        Ok(files) => println!("  letter: {}", files[0].display()),
        Err(e) => println!("  (no PDF: {e})"),
    }
    println!("  My Portal: {}", letters_cfg.portal_url);
    println!(
        "  sign in the first time with medical ID {} and activation code {code}",
        patient.medical_id.grouped()
    );
    println!(
        "  (the agency's CA is {}; the browser will ask to trust it)",
        ca.cert_path().display()
    );
    Ok(front)
}
