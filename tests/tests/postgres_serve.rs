//! Two `serve` processes on one PostgreSQL database answer a federation at once, while
//! operator commands run on the database beside them; when one stops, its nodes go on
//! with the other, and the audit log both appended to is one log that verifies.

use iryo_node::config::{Addresses, NodeConfig};
use iryo_tests::federation::*;
use iryo_tests::pg::Cluster;
use iryo_tests::{directory_bin, write_enrollment};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

fn eligible(node: &NodeProc, p: iryo_proto::MedicalId) -> bool {
    let (status, a) = node.eligibility(&json!({ "medical_id": p.to_string() }));
    status == 200 && a["eligible"].as_bool() == Some(true)
}

fn set_addresses(node: &mut NodeProc, addresses: Vec<String>) {
    node.stop();
    let mut cfg = NodeConfig::load(&node.config_path()).expect("node.toml");
    cfg.directory.address = Addresses(addresses);
    std::fs::write(node.config_path(), cfg.commented()).expect("node.toml");
    node.start();
}

#[test]
fn two_serve_processes_answer_one_federation_from_one_database() {
    let pg = Cluster::start();
    let mut fed = Federation::start_on_postgres(&pg.url(), 2, 2, 1);
    let (p, q) = (fed.patients[0], fed.patients[1]);
    let first = fed.directory_addr.clone();

    // A second process of the agency's directory on the same database and keys.
    let mut cmd = Command::new(directory_bin());
    cmd.arg("--data-dir")
        .arg(&fed.registry.data)
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .env_remove("SSLKEYLOGFILE");
    fed.registry.database_env(&mut cmd);
    let (_second, line) = start_ready(cmd, "iryo-directory serve");
    let second = field(&line, "p2p").split(',').next().unwrap().to_string();
    assert_ne!(first, second);

    // Node 0 knows only the first process, node 1 only the second: both answer at once.
    set_addresses(&mut fed.nodes[0], vec![first.clone()]);
    set_addresses(&mut fed.nodes[1], vec![second.clone()]);
    std::thread::scope(|s| {
        for node in &fed.nodes {
            s.spawn(move || {
                for _ in 0..20 {
                    assert!(eligible(node, p));
                    assert!(eligible(node, q));
                }
            });
        }
        // An operator works on the database meanwhile: no "in use", no admin socket.
        let status = fed.registry.json(&["status"]);
        assert_eq!(status["persons"], 2, "{status}");
        fed.consent(p, fed.nodes[1].code);
        let more = fed.registry.path("more.csv");
        write_enrollment(&more, &[&patient_row(7, "追加 七郎", "東京都港区1-1")]);
        fed.registry.ok(&["enroll", more.to_str().unwrap()]);
    });
    assert_eq!(fed.registry.json(&["status"])["service_uses"], 80);

    // An exchange across the two: node 1 (on the second process) fetches what node 0
    // (on the first) holds; each reports its end to its own process.
    let doc = sample_bundle(2, 100);
    let (stored, body) = fed.nodes[0].put_records(p, &doc);
    assert!(stored == 200 || stored == 201, "{stored} {body}");
    let (status, bundle) = fed.nodes[1].fetch(p, fed.nodes[0].code, "treatment", None);
    assert_eq!(status, 200, "{bundle}");
    assert!(fed.nodes[0].drain_outbox(20) && fed.nodes[1].drain_outbox(20));
    let entries = fed.audit_show(p);
    let count = |kind: &str| entries.iter().filter(|e| e[1].get(kind).is_some()).count();
    assert_eq!(
        (count("GrantIssued"), count("Notification")),
        (1, 2),
        "one grant, and each end's report: {entries:?}"
    );

    // The first process stops; node 0, which now lists both, goes on with the second.
    set_addresses(&mut fed.nodes[0], vec![first, second]);
    assert!(eligible(&fed.nodes[0], p));
    fed.stop_directory();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !eligible(&fed.nodes[0], p) {
        assert!(
            Instant::now() < deadline,
            "node 0 never reached the second process"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(eligible(&fed.nodes[1], q));

    let verified = fed.operator(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
}
