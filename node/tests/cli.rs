//! `iryo-node init` writes a private identity, a registration request the agency can
//! verify, and a configuration that loads.

use iryo_node::config::NodeConfig;
use iryo_node::identity::RegistrationFile;
use std::process::Command;

#[test]
fn init_writes_identity_request_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clinic");
    let status = Command::new(env!("CARGO_BIN_EXE_iryo-node"))
        .args([
            "init",
            "--code",
            "0110113719",
            "--name",
            "札幌テスト診療所",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out.join("node.key")), 0o600);
    assert_eq!(
        mode(&out.join("node.toml")),
        0o600,
        "the API token is in it"
    );
    assert_eq!(
        mode(&out.join("registration.json")),
        0o600,
        "the one-time code is in it"
    );
    assert_eq!(mode(&out), 0o700);
    let reg: RegistrationFile =
        serde_json::from_str(&std::fs::read_to_string(out.join("registration.json")).unwrap())
            .unwrap();
    let signed = reg.signed.verify_any().unwrap();
    assert_eq!(signed.code.to_string(), "0110113719");
    assert_eq!(
        iryo_proto::merkle::to_hex(&signed.public_key),
        reg.public_key
    );
    let cfg = NodeConfig::load(&out.join("node.toml")).unwrap();
    assert_eq!(cfg.code, signed.code);
    assert!(cfg.api.listen.starts_with("127.0.0.1"));
    assert!(!cfg.api.token.is_empty());
    // A second init never overwrites the identity.
    let again = Command::new(env!("CARGO_BIN_EXE_iryo-node"))
        .args(["init", "--code", "0110113719", "--name", "x", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[test]
fn run_refuses_to_start_with_a_key_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n");
    Command::new(env!("CARGO_BIN_EXE_iryo-node"))
        .args(["init", "--code", "0110113719", "--name", "x", "--out"])
        .arg(&out)
        .args([
            "--directory",
            "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
        ])
        .args(["--agency-key", &"11".repeat(32)])
        .output()
        .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_iryo-node"))
        .args(["run", "--config"])
        .arg(out.join("node.toml"))
        .env("SSLKEYLOGFILE", dir.path().join("keys.log"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("SSLKEYLOGFILE"));
}

#[test]
fn example_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    for name in ["node-hospital.toml", "node-clinic.toml"] {
        let cfg = NodeConfig::load(&dir.join(name)).unwrap();
        cfg.agency_key().unwrap();
        cfg.directory_addresses().unwrap();
        cfg.listen_address().unwrap();
    }
}

#[test]
fn an_address_peers_cannot_dial_is_refused_and_a_moved_node_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hospital");
    let init = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_iryo-node"))
            .args([
                "init",
                "--code",
                "1311000010",
                "--name",
                "東京中央病院",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = init(&["--listen", "/ip4/0.0.0.0/tcp/4711"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--advertise"), "{err}");
    let ok = init(&[
        "--listen",
        "/ip4/0.0.0.0/tcp/4711",
        "--advertise",
        "/ip4/192.0.2.10/tcp/4711",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let read = || -> RegistrationFile {
        serde_json::from_str(&std::fs::read_to_string(out.join("registration.json")).unwrap())
            .unwrap()
    };
    let first = read().signed.verify_any().unwrap();
    assert_eq!(first.addresses, ["/ip4/192.0.2.10/tcp/4711"]);
    // data_dir is relative to node.toml, wherever the node is started from.
    let cfg = NodeConfig::load(&out.join("node.toml")).unwrap();
    assert_eq!(cfg.key_path(), out.join("./node.key"));
    // The node moves: a new request, same key, new address.
    let moved = Command::new(env!("CARGO_BIN_EXE_iryo-node"))
        .current_dir(dir.path())
        .args([
            "re-register",
            "--config",
            "hospital/node.toml",
            "--name",
            "東京中央病院",
        ])
        .args(["--advertise", "/ip4/192.0.2.11/tcp/4711"])
        .output()
        .unwrap();
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let second = read().signed.verify_any().unwrap();
    assert_eq!(second.public_key, first.public_key);
    assert_eq!(second.addresses, ["/ip4/192.0.2.11/tcp/4711"]);
}
