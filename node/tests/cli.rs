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
        cfg.directory_address().unwrap();
        cfg.listen_address().unwrap();
    }
}
