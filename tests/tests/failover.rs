//! A node that lists several directory addresses goes on when one does not answer.

use iryo_tests::federation::*;
use iryo_tests::{directory_bin, Directory};
use std::process::Command;

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
    fed.nodes[0].set_directory_addresses(vec![nowhere.clone(), live.clone()]);
    assert!(fed.nodes[0].finds_eligible(p));
    assert!(
        fed.nodes[0].finds_eligible(p),
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
    let second_addr = iryo_tests::federation::first_p2p(&line);
    fed.nodes[0].set_directory_addresses(vec![nowhere, live, second_addr]);
    assert!(fed.nodes[0].finds_eligible(p));
    fed.stop_directory();
    // The session to the stopped process closes; the next request opens one to the
    // second, which shares its key (one peer, two addresses).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fed.nodes[0].finds_eligible(p) {
        assert!(
            std::time::Instant::now() < deadline,
            "no directory answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
