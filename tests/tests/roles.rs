//! The directory split into a registry and an exchange authority (docs/roles.md), as
//! separate processes with separate data directories and keys: the registry tells the
//! authority of deaths and ID changes, signed; the authority decides grants by them
//! and keeps no My Number, name or address.

use iryo_node::config::NodeConfig;
use iryo_proto::federation::{LoggedGrant, Purpose};
use iryo_proto::roles::{NoticeKind, RegistryNotice};
use iryo_proto::signed::Signed;
use iryo_proto::wire::{DirectoryRequest, DirectoryResponse, RefusalReason};
use iryo_proto::MedicalId;
use iryo_tests::federation::{
    authority_roles, code, init_node, medical_id_of, patient_my_number, patient_row, sample_bundle,
    start_ready, Federation, Proc, RawPeer,
};
use iryo_tests::{on_both_backends, write_enrollment, Directory};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The person data the sample is made of, to look for in the authority's store.
fn name(i: u64) -> String {
    format!("山田 花子{i}")
}

fn address(i: u64) -> String {
    format!("東京都千代田区霞が関{i}丁目")
}

/// `serve` on `dir` with `config`; the process and its p2p address.
fn serve(dir: &Directory, config: &Path, role: &str) -> (Proc, String) {
    let config = config.display().to_string();
    let cmd = dir.command(&[
        "--config",
        &config,
        "serve",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let (p, line) = start_ready(cmd, role);
    assert!(line.contains(&format!("role={role}")), "{line}");
    (p, iryo_tests::federation::first_p2p(&line))
}

fn node_key(dir: &Path) -> ed25519_dalek::SigningKey {
    let cfg = NodeConfig::load(&dir.join("node.toml")).expect("node.toml");
    iryo_node::identity::load_key(&cfg.key_path()).expect("node key")
}

/// The grant `peer` gets for `id` from institution 1's records, or the refusal.
fn grant(peer: &RawPeer, id: MedicalId) -> Result<LoggedGrant, (RefusalReason, String)> {
    match peer.directory(DirectoryRequest::Grant {
        medical_id: id,
        source: code(1),
        purpose: Purpose::Emergency,
        reason: Some("意識不明で搬送".into()),
        idempotency_key: None,
    }) {
        DirectoryResponse::Grant(g) => Ok(g),
        DirectoryResponse::Refused(r) => Err((r.reason, r.detail)),
        other => panic!("{other:?}"),
    }
}

/// Waits until `peer`'s grant for `id` is refused for `reason`.
fn until_refused(peer: &RawPeer, id: MedicalId, reason: RefusalReason) -> String {
    let started = Instant::now();
    loop {
        match grant(peer, id) {
            Err((r, detail)) if r == reason => return detail,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "still {other:?} for {id}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

on_both_backends! {
    fn a_registry_apart_tells_the_authority_of_deaths_and_id_changes(backend) {
        let registry = Directory::on(backend);
        let authority = Directory::on(backend);
        registry.ok(&["init", "--role", "registry"]);
        let made = authority.ok(&["init", "--role", "authority"]);
        assert!(made.contains("no issuance key"), "{made}");
        // The authority holds no key that issues medical IDs.
        assert!(authority.data.join("keys/agency-root.ed25519").exists());
        assert!(!authority.data.join("keys/issuance-ff1.aes256").exists());
        assert!(registry.data.join("keys/issuance-ff1.aes256").exists());
        // Each half has its own keys.
        let root = |d: &Directory| {
            let shown = d.ok(&["keys", "show"]);
            shown
                .lines()
                .find_map(|l| l.strip_prefix("root key"))
                .map(|k| k.trim().to_string())
                .expect("root key line")
        };
        let (registry_key, authority_key) = (root(&registry), root(&authority));
        assert_ne!(registry_key, authority_key);
        // Each data directory keeps the role it was made for.
        let refused = registry.fails(&["serve", "--role", "authority", "--listen", "/ip4/127.0.0.1/tcp/0"]);
        assert!(
            refused.contains("was made for the registry role") && refused.contains("asks for authority"),
            "{refused}"
        );

        let acfg = authority.path("authority.toml");
        std::fs::write(&acfg, authority_roles(&registry)).unwrap();
        let (serving_authority, aaddr) = serve(&authority, &acfg, "authority");
        // Nor does it take the registry's commands.
        let a = acfg.display().to_string();
        let sample = authority.path("one.csv");
        write_enrollment(&sample, &[&patient_row(9, "山田 一郎", "大阪市")]);
        let refused = authority.fails(&["--config", &a, "enroll", &sample.display().to_string()]);
        assert!(refused.contains("enroll is the registry's"), "{refused}");

        let rcfg = registry.path("registry.toml");
        std::fs::write(
            &rcfg,
            format!("[roles]\nrole = \"registry\"\nauthority = \"{aaddr}\"\ntell_every_seconds = 1\n"),
        )
        .unwrap();
        let rows: Vec<String> = (0..3).map(|i| patient_row(i, &name(i), &address(i))).collect();
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        let file = registry.path("patients.csv");
        write_enrollment(&file, &refs);
        let r = rcfg.display().to_string();
        registry.ok(&["--config", &r, "enroll", &file.display().to_string()]);
        let (_r, _raddr) = serve(&registry, &rcfg, "registry");
        let ids: Vec<MedicalId> = (0..3).map(|i| medical_id_of(&registry, i)).collect();

        // Two institutions are members of the authority.
        let nodes: Vec<PathBuf> = (0..2).map(|n| init_node(&authority, n, &format!("医院{n}"), &[])).collect();
        for n in &nodes {
            authority.ok(&["--config", &a, "institution", "add", &n.join("registration.json").display().to_string()]);
        }
        let peer = RawPeer::new(&node_key(&nodes[0]), &aaddr);

        // An ID the authority has never dealt with is a patient like any other.
        assert!(grant(&peer, ids[0]).is_ok());
        // The registry's eligibility checks are not the authority's.
        match peer.directory(DirectoryRequest::Consent { medical_id: ids[0] }) {
            DirectoryResponse::Consent(c) => assert!(c.is_empty()),
            other => panic!("{other:?}"),
        }

        // A death recorded at the registry reaches the authority.
        registry.ok(&["--config", &r, "death", "--medical-id", &ids[0].to_string(), "--date", "2024-01-02"]);
        let detail = until_refused(&peer, ids[0], RefusalReason::Deceased);
        assert!(detail.contains("research"), "{detail}");
        // A new ID: the old one is refused with its successor named, the new one served.
        registry.ok(&["--config", &r, "change", "--medical-id", &ids[1].to_string(), "--reason", "card lost"]);
        let new = medical_id_of(&registry, 1);
        assert_ne!(new, ids[1]);
        let detail = until_refused(&peer, ids[1], RefusalReason::UnknownPatient);
        assert!(detail.contains(&new.to_string()), "{detail}");
        assert!(grant(&peer, new).is_ok());

        // A member cannot pass for the registry, not even with a notice the authority's
        // own key signed.
        let forged = Signed::sign(
            &RegistryNotice { seq: 3, at: 0, kind: NoticeKind::Retired { medical_id: new } },
            &{
                let bytes = std::fs::read(authority.data.join("keys/agency-root.ed25519"))
                    .expect("the authority's root key");
                ed25519_dalek::SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
            },
        );
        match peer.directory(DirectoryRequest::RegistryNotices { notices: vec![forged] }) {
            DirectoryResponse::Refused(r) => assert_eq!(r.reason, RefusalReason::NotMember, "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(grant(&peer, new).is_ok());

        // What the authority keeps names no one.
        drop(peer);
        drop(serving_authority);
        for i in 0..3 {
            // The given name alone: names are kept as family and given names.
            for needle in [patient_my_number(i).to_string(), format!("花子{i}"), address(i)] {
                assert!(!authority.stores(&needle), "the authority stores {needle:?}");
                assert!(registry_holds(&registry, &needle, i), "sample {needle:?} not in the registry");
            }
        }
    }
}

/// Whether the registry holds `needle` (checked so that the scan of the authority
/// would find the sample's values if they were there); the registry still runs, so
/// its persons are asked for rather than its file read.
fn registry_holds(registry: &Directory, needle: &str, i: u64) -> bool {
    let shown = registry.ok(&[
        "show",
        "--my-number",
        &patient_my_number(i).to_string(),
        "--json",
    ]);
    shown.contains(needle)
}

on_both_backends! {
    fn a_split_federation_checks_at_the_registry_and_exchanges_through_the_authority(backend) {
        let fed = Federation::start_split(backend, 3, 2);
        let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
        let p = fed.patients[0];
        // The check goes to the registry, which admits B by the membership the
        // authority keeps.
        let (status, answer) = b.eligibility(&serde_json::json!({ "medical_id": p.to_string() }));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["eligible"], true, "{answer}");
        // Records go from A to B under the authority's grant, with the consent given
        // there.
        assert_eq!(a.put_records(p, &sample_bundle(2, 10)).0, 201);
        let (status, body) = b.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 403, "no consent yet: {body}");
        fed.consent(p, b.code);
        let (status, body) = b.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 200, "{body}");
        assert!(a.drain_outbox(20) && b.drain_outbox(20));
        // Consent given at C's desk during a check at the registry reaches the
        // authority, which then grants C a fetch.
        let q = fed.patients[1];
        assert_eq!(a.put_records(q, &sample_bundle(1, 10)).0, 201);
        let (status, body) = c.fetch(q, a.code, "treatment", None);
        assert_eq!(status, 403, "no consent yet: {body}");
        let (status, answer) =
            c.eligibility(&serde_json::json!({ "medical_id": q.to_string(), "visit_consent": true }));
        assert_eq!((status, &answer["eligible"]), (200, &serde_json::json!(true)), "{answer}");
        let started = Instant::now();
        loop {
            let (status, body) = c.fetch(q, a.code, "treatment", None);
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{status} {body}");
            std::thread::sleep(Duration::from_millis(250));
        }
        // The registry's key signs no grant a source accepts: the agency key nodes
        // trust is the authority's.
        let registry_root = {
            let bytes = std::fs::read(fed.registry.data.join("keys/agency-root.ed25519"))
                .expect("the registry's root key");
            ed25519_dalek::SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
        };
        let forged = iryo_proto::federation::Grant {
            id: [7; 16],
            requester: b.code,
            requester_key: node_key(&b.dir).verifying_key().to_bytes(),
            source: a.code,
            medical_id: p,
            purpose: Purpose::Treatment,
            reason: None,
            issued_at: chrono::Utc::now().timestamp(),
            expires_at: chrono::Utc::now().timestamp() + 60,
        };
        let b_raw = RawPeer::new(&node_key(&b.dir), &fed.directory_addr);
        match b_raw.fetch(
            a,
            iryo_proto::wire::ExchangeRequest::Fetch {
                medical_id: p,
                purpose: Purpose::Treatment,
                grant: Signed::sign(&forged, &registry_root),
                position: None,
            },
        ) {
            iryo_proto::wire::ExchangeResponse::Refused(r) => assert_eq!(
                r.reason,
                RefusalReason::Grant(iryo_proto::federation::GrantRefusal::NotAgency),
                "{r}"
            ),
            other => panic!("a grant signed by the registry's key was served: {other:?}"),
        }
        // An institution the authority revokes is refused at the registry too, once the
        // registry asks again (members_refresh_seconds = 2).
        assert!(c.finds_eligible(p));
        fed.operator(&["institution", "revoke", &c.code.to_string()]);
        let started = Instant::now();
        loop {
            let (status, body) = c.eligibility(&serde_json::json!({ "medical_id": p.to_string() }));
            if status != 200 {
                assert!(body.to_string().contains("membership"), "{status} {body}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "C still served");
            std::thread::sleep(Duration::from_millis(250));
        }
        // A death recorded at the registry: the authority refuses the next grant.
        fed.operator(&["death", "--medical-id", &p.to_string(), "--date", "2024-01-02"]);
        let started = Instant::now();
        loop {
            let (status, body) = b.fetch(p, a.code, "treatment", None);
            if status != 200 {
                assert!(body.to_string().contains("deceased"), "{status} {body}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "still served: {body}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `iryo-demo --split`, as a user runs it: the split deployment with one flag.
#[test]
fn the_demo_runs_the_split_deployment_with_one_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_iryo-demo"))
        .args(["--split", "--persons", "3"])
        .env("RUST_LOG", "warn")
        .env_remove("SSLKEYLOGFILE")
        .output()
        .expect("run iryo-demo --split");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "registry:",
        "exchange authority:",
        "POST /exchange/fetch -> 403",
        "POST /exchange/fetch -> 200: a Bundle of 3 resources",
        "My Portal, on the authority's HTTPS front: https://localhost:",
        "the visit to the clinic listed yes; the clinic's read in the access log yes",
        "the home page holds no name: the registry keeps it apart",
        "403 the patient has died",
        "in the registry's store yes, in the authority's no",
        "the sample's My Numbers and names in the authority's store: none",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

/// The `RegistryNotice` entries the authority logged about `id`.
fn notices_logged(fed: &Federation, id: MedicalId) -> usize {
    fed.audit_show(id)
        .iter()
        .filter(|e| e[1].get("RegistryNotice").is_some())
        .count()
}

#[test]
fn notices_wait_out_an_authority_that_is_down_and_a_registry_killed_and_apply_once() {
    let mut fed = Federation::start_split(iryo_tests::Backend::Redb, 2, 2);
    let (p, q) = (fed.patients[0], fed.patients[1]);
    let peer = RawPeer::new(&node_key(&fed.nodes[0].dir), &fed.directory_addr);
    assert!(grant(&peer, p).is_ok());
    drop(peer);
    // What the authority was told before (the operator's reads of the sample).
    fed.until_told();
    let before = (notices_logged(&fed, p), notices_logged(&fed, q));
    // The authority is down: the registry records the death and the ID change, and
    // keeps their notices.
    fed.stop_directory();
    fed.operator(&[
        "death",
        "--medical-id",
        &p.to_string(),
        "--date",
        "2024-01-02",
    ]);
    fed.operator(&[
        "change",
        "--medical-id",
        &q.to_string(),
        "--reason",
        "card lost",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    // Killed with them unsent, the registry sends them when it is back.
    fed.restart_registry();
    fed.start_directory();
    let peer = RawPeer::new(&node_key(&fed.nodes[0].dir), &fed.directory_addr);
    until_refused(&peer, p, RefusalReason::Deceased);
    until_refused(&peer, q, RefusalReason::UnknownPatient);
    // Each applied once, however often they were offered.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(notices_logged(&fed, p), before.0 + 1);
    assert_eq!(notices_logged(&fed, q), before.1 + 1);
    let verified = fed.operator(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
}
