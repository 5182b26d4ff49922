//! `iryo-witness` as an operator and a hostile client meet it: a key made once and
//! never overwritten, configuration mistakes named, and an HTTP front that refuses
//! garbage and oversized bodies with the protocol's statuses and goes on serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A log key as `iryo-directory audit checkpoint-key` prints one.
const LOG_KEY: &str =
    "iryo-audit/956598d7188230f1+c49efd75+AZVlmNcYgjDxW0oR+nFKuvyM/1ysz714qlpLYoqYjzyk";

fn witness(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_iryo-witness"))
        .arg("--config")
        .arg(dir.join("witness.toml"))
        .args(args)
        .output()
        .unwrap()
}

fn configure(dir: &Path, key: &str) {
    std::fs::write(
        dir.join("witness.toml"),
        format!(
            "name = \"w.test/1\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[log]]\norigin = \"iryo-audit/956598d7188230f1\"\nkeys = [\"{key}\"]\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
}

fn serve(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iryo-witness"))
        .arg("--config")
        .arg(dir.join("witness.toml"))
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .to_string();
    (child, addr)
}

/// One HTTP/1.1 request; the status and the body.
fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server that refuses early may close before the whole body is sent.
    let _ = s.write_all(body);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn the_key_is_made_once_private_and_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    configure(dir.path(), LOG_KEY);
    let out = witness(dir.path(), &["init"]);
    assert!(out.status.success(), "{out:?}");
    let vkey = String::from_utf8(out.stdout).unwrap();
    assert!(
        vkey.lines().last().unwrap().starts_with("w.test/1+"),
        "{vkey}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("data/witness.ed25519")), 0o600);
        assert_eq!(mode(&dir.path().join("data")), 0o700);
    }
    let again = witness(dir.path(), &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(
        String::from_utf8(witness(dir.path(), &["vkey"]).stdout).unwrap(),
        vkey.lines().last().unwrap().to_string() + "\n"
    );

    // A log key that is not one: refused at start, naming the log.
    configure(dir.path(), "iryo-audit/956598d7188230f1+00000000+AQ");
    let out = witness(dir.path(), &["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iryo-audit/956598d7188230f1") && err.contains("witness.toml"),
        "{err}"
    );
}

#[test]
fn hostile_requests_get_the_protocol_s_statuses_and_the_witness_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    configure(dir.path(), LOG_KEY);
    assert!(witness(dir.path(), &["init"]).status.success());
    let (mut child, addr) = serve(dir.path());
    let (status, _) = request(&addr, "POST", "/add-checkpoint", b"hello");
    assert_eq!(status, 400);
    let (status, _) = request(&addr, "POST", "/add-checkpoint", &[0xff, 0xfe, b'\n']);
    assert_eq!(status, 400);
    let (status, _) = request(&addr, "POST", "/add-checkpoint", &vec![b'a'; 200 * 1024]);
    assert_eq!(status, 413);
    let unknown = "old 0\n\nother.example\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} other.example AAAAAAAA\n";
    let (status, _) = request(&addr, "POST", "/add-checkpoint", unknown.as_bytes());
    assert_eq!(status, 404);
    let (status, _) = request(
        &addr,
        "GET",
        &format!("/{}/checkpoint", "0".repeat(64)),
        b"",
    );
    assert_eq!(status, 404);
    // Still serving.
    let (status, _) = request(&addr, "POST", "/add-checkpoint", b"old 0\n\n");
    assert_eq!(status, 400);
    child.kill().unwrap();
    child.wait().unwrap();
}
