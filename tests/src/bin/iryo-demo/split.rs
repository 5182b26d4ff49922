//! `iryo-demo --split`: the directory run as a registry and an exchange authority
//! apart (docs/roles.md), each with its own data directory, store and key, and two
//! institutions' nodes that check eligibility at the registry and exchange records
//! through the authority. Real processes, in temporary directories removed at the end.

use anyhow::{bail, Context, Result};
use iryo_proto::{InstitutionCode, MedicalId};
use iryo_tests::federation::{sample_bundle, Federation};
use iryo_tests::Backend;
use serde_json::json;
use std::time::{Duration, Instant};

fn step(s: &str) {
    println!("\n== {s}");
}

/// Asks `f` until it says yes, for at most 30 s.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while !f() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{what}: not within 30 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// Prints the patient's letter at the registry, waits for its code to reach the
/// authority, signs in to My Portal there and reads what the patient would.
fn portal(fed: &Federation, patient: MedicalId, clinic: InstitutionCode) -> Result<()> {
    use iryo_tests::https::{activate, agent_no_redirects};
    let (_, letters) = fed.registry.print_letters("letters", &[]);
    let letter = letters
        .into_iter()
        .find(|l| l["medical_id"] == patient.grouped())
        .context("no letter for the patient")?;
    println!(
        "  letter: medical ID {} and first sign-in code {}",
        letter["medical_id"], letter["activation_code"]
    );
    fed.until_told();
    let base = format!(
        "https://localhost:{}",
        fed.https.rsplit(':').next().unwrap_or_default()
    );
    println!("  My Portal, on the authority's HTTPS front: {base}/portal/");
    let agent = agent_no_redirects(&fed.exchange_dir().data.join("ca/ca.pem"));
    let session = activate(
        &agent,
        &base,
        &letter["medical_id"],
        &letter["activation_code"],
    );
    let page = |path: &str| -> Result<String> {
        Ok(agent
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .call()?
            .body_mut()
            .read_to_string()?)
    };
    let seen = |body: &str| {
        if body.contains(&clinic.to_string()) {
            "yes"
        } else {
            "no"
        }
    };
    let (history, access) = (page("/portal/history")?, page("/portal/access")?);
    println!(
        "  signed in: the visit to the clinic listed {}; the clinic's read in the access log {}",
        seen(&history),
        seen(&access)
    );
    println!(
        "  the home page holds no name: {}",
        if page("/portal/home")?.contains("登録機関が別に管理") {
            "the registry keeps it apart"
        } else {
            "NAME SHOWN"
        }
    );
    Ok(())
}

pub(crate) fn run(persons: u64) -> Result<()> {
    step("1. the registry and the exchange authority, apart: own data, own store, own key");
    let fed = Federation::start_split(Backend::Redb, 2, persons.max(1));
    let split = fed.split.as_ref().expect("a split federation");
    println!("  exchange authority: {}", fed.directory_addr);
    println!(
        "    its key signs memberships, grants and the audit log: {}",
        fed.agency_key
    );
    println!("  registry:           {}", split.registry_addr);
    println!(
        "    it knows who holds each medical ID; it tells the authority of ID changes, deaths and consent given at the desk, signed"
    );
    let (hospital, clinic) = (&fed.nodes[0], &fed.nodes[1]);
    let patient = fed.patients[0];
    println!(
        "  {} people enrolled at the registry; the patient of this demo: medical ID {}",
        fed.patients.len(),
        patient.grouped()
    );

    step("2. two institutions are members of the authority; the hospital stores the patient's records");
    let (status, _) = hospital.put_records(patient, &sample_bundle(3, 40));
    println!(
        "  PUT /patients/{}/records at the hospital -> {status}",
        patient.grouped()
    );

    step("3. the clinic asks for them: no consent yet");
    let (status, body) = clinic.fetch(patient, hospital.code, "treatment", None);
    println!(
        "  POST /exchange/fetch -> {status} {}",
        body["detail"].as_str().unwrap_or("")
    );

    step("4. at the clinic's desk the patient's card is checked at the registry, and they agree to sharing");
    let (status, answer) =
        clinic.eligibility(&json!({ "medical_id": patient.to_string(), "visit_consent": true }));
    println!(
        "  POST /eligibility (visit_consent) -> {status} eligible={}",
        answer["eligible"]
    );
    let mut fetched = (0, serde_json::Value::Null);
    until("the consent reaching the authority", || {
        fetched = clinic.fetch(patient, hospital.code, "treatment", None);
        fetched.0 == 200
    })?;
    let n = fetched.1["entry"].as_array().map_or(0, Vec::len);
    println!(
        "  POST /exchange/fetch -> {}: a Bundle of {n} resources, under the authority's grant",
        fetched.0
    );

    step("5. the registry prints the patient's letter; My Portal is the authority's");
    portal(&fed, patient, clinic.code)?;

    step("6. a death recorded at the registry: the authority refuses the next fetch");
    fed.operator(&[
        "death",
        "--medical-id",
        &patient.to_string(),
        "--date",
        "2024-01-02",
    ]);
    let mut refused = (0, serde_json::Value::Null);
    until("the death reaching the authority", || {
        refused = clinic.fetch(patient, hospital.code, "treatment", None);
        refused.0 != 200
    })?;
    println!(
        "  POST /exchange/fetch -> {} {}",
        refused.0,
        refused.1["detail"].as_str().unwrap_or("")
    );

    step("7. what the authority keeps names no one");
    let yes = |b: bool| if b { "yes" } else { "no" };
    let address = "東京都千代田区";
    println!(
        "  the sample's address {address}: in the registry's store {}, in the authority's {}",
        yes(fed.registry.stores(address)),
        yes(split.authority.stores(address)),
    );
    let named = (0..fed.patients.len() as u64).any(|i| {
        let my_number = iryo_tests::federation::patient_my_number(i).to_string();
        split.authority.stores(&my_number) || split.authority.stores(&format!("{i}号"))
    });
    println!(
        "  the sample's My Numbers and names in the authority's store: {}",
        if named { "FOUND" } else { "none" }
    );
    println!("\nThe split federation ran in temporary directories, removed now.");
    Ok(())
}
