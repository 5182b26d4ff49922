//! A node that lists several directory addresses goes on when one does not answer.

use iryo_node::config::{Addresses, NodeConfig};
use iryo_tests::federation::*;
use iryo_tests::{directory_bin, Directory};
use serde_json::json;
use std::process::Command;

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
fn a_node_moves_to_the_next_directory_when_one_does_not_answer() {
    let mut fed = Federation::start(1, 1, 60);
    let p = fed.patients[0];

    // Listed first, a directory that is not there: a process on another key whose
    // port nobody listens on.
    let other = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let peer = iryo_node::identity::peer_id(&other.verifying_key().to_bytes()).unwrap();
    let nowhere = format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer}", free_port());
    let live = fed.directory_addr.clone();
    set_addresses(&mut fed.nodes[0], vec![nowhere.clone(), live.clone()]);
    assert!(eligible(&fed.nodes[0], p));
    assert!(
        eligible(&fed.nodes[0], p),
        "and the next request goes there at once"
    );

    // A second directory process of the agency (here: the same keys, on a copy of the
    // store restored from a backup) at another address; the first one stops.
    let backup = fed.registry.path("backup");
    fed.registry
        .ok(&["backup", "--out", backup.to_str().unwrap()]);
    let second = Directory::new();
    second.ok(&["restore", "--from", backup.to_str().unwrap()]);
    let mut cmd = Command::new(directory_bin());
    cmd.arg("--data-dir")
        .arg(&second.data)
        .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "warn")
        .env_remove("SSLKEYLOGFILE");
    let (_second_proc, line) = start_ready(cmd, "iryo-directory serve");
    let second_addr = field(&line, "p2p").split(',').next().unwrap().to_string();
    set_addresses(&mut fed.nodes[0], vec![nowhere, live, second_addr]);
    assert!(eligible(&fed.nodes[0], p));
    fed.stop_directory();
    // The session to the stopped process closes; the next request opens one to the
    // second, which shares its key (one peer, two addresses).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !eligible(&fed.nodes[0], p) {
        assert!(
            std::time::Instant::now() < deadline,
            "no directory answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
