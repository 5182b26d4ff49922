//! The binary starts, explains itself, and refuses bad arguments with a clear message.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iryo-directory"))
}

#[test]
fn help_lists_the_operator_commands() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "init",
        "enroll",
        "assign",
        "letters",
        "ca",
        "serve",
        "check",
        "conflicts",
        "mismatches",
        "change",
        "death",
        "show",
        "sample",
        "demo",
        "bench",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn a_bad_medical_id_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["show", "--medical-id", "1234-5678-9012-3456"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("check digit"), "{err}");
}

#[test]
fn commands_before_init_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("--data-dir")
        .arg(dir.path())
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("iryo-directory init"), "{err}");
}
