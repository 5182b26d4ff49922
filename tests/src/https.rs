//! Clients of the directory's HTTPS front: real rustls, trusting only the agency CA,
//! optionally presenting a client certificate.

use crate::federation::{field, start_ready, Proc};
use crate::{Backend, Directory};
use iryo_proto::{InsurerNumber, MyNumber};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// `serve` on ephemeral ports; the process and its HTTPS `host:port`.
pub fn serve(d: &Directory) -> (Proc, String) {
    serve_with(d, &[])
}

/// As `serve`, with global options (`--config FILE`) before the command.
pub fn serve_with(d: &Directory, global: &[&str]) -> (Proc, String) {
    let args: Vec<&str> = global
        .iter()
        .copied()
        .chain([
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--https",
            "127.0.0.1:0",
        ])
        .collect();
    let mut cmd = d.command(&args);
    cmd.env_remove("SSLKEYLOGFILE");
    let (p, line) = start_ready(cmd, "iryo-directory serve");
    let https = field(&line, "https").to_string();
    assert!(!https.is_empty(), "HTTPS front not started: {line}");
    (p, https)
}

/// An agent trusting `ca_pem`, presenting `client` (a directory holding cert.pem and
/// key.pem) when given. Status codes are answers, not errors.
pub fn agent(ca_pem: &Path, client: Option<&Path>) -> ureq::Agent {
    agent_with(ca_pem, client, true)
}

/// As `agent`, but redirects are answers too: their `Location` can be read.
pub fn agent_no_redirects(ca_pem: &Path) -> ureq::Agent {
    agent_with(ca_pem, None, false)
}

fn agent_with(ca_pem: &Path, client: Option<&Path>, follow: bool) -> ureq::Agent {
    let ca = std::fs::read(ca_pem).expect("CA certificate");
    let ca = Certificate::from_pem(&ca).expect("CA PEM").to_owned();
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])));
    if let Some(dir) = client {
        let cert = std::fs::read(dir.join("cert.pem")).expect("client cert");
        let key = std::fs::read(dir.join("key.pem")).expect("client key");
        tls = tls.client_cert(Some(ClientCert::new_with_certs(
            &[Certificate::from_pem(&cert).expect("cert PEM").to_owned()],
            PrivateKey::from_pem(&key).expect("key PEM").to_owned(),
        )));
    }
    ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .max_redirects(if follow { 10 } else { 0 })
        .build()
        .into()
}

/// The insurer number of the kyokai kenpo branch the tests enroll under.
pub fn kyokai() -> String {
    InsurerNumber::from_body("0113001").unwrap().to_string()
}

/// A health insurance society, a second insurer.
pub fn society() -> String {
    InsurerNumber::from_body("0627014").unwrap().to_string()
}

/// One enrollment row for `insurer` with a distinct My Number per `i`.
pub fn row(insurer: &str, kind: &str, i: u64) -> String {
    format!(
        "{kind},{insurer},20000002,{},00,insured,{},佐藤 花子,サトウ ハナコ,1985-05-05,2,大阪府大阪市1-1,2021-04-01,",
        300 + i,
        MyNumber::from_body(77_700_000_000 + i)
    )
}

/// Issues a client certificate with `ca issue <flag> <who>` into `out` under the test directory.
pub fn issue(d: &Directory, flag: &str, who: &str, out: &str) -> PathBuf {
    let dir = d.path(out);
    d.ok(&[
        "ca",
        "issue",
        flag,
        who,
        "--out",
        &dir.display().to_string(),
    ]);
    dir
}

/// A directory with its database, keys and the agency CA made.
pub fn with_ca() -> Directory {
    with_ca_on(Backend::Redb)
}

/// `with_ca` on `backend`.
pub fn with_ca_on(backend: Backend) -> Directory {
    let d = Directory::on(backend);
    d.ok(&["init"]);
    d.ok(&["ca", "init"]);
    d
}

/// The value of cookie `name` that a response sets.
pub fn set_cookie(res: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie set"))
        .to_string()
}

/// Tries to activate a portal account with a code, as a person would, through an
/// agent that does not follow redirects; the answer.
pub fn try_activate(
    a: &ureq::Agent,
    base: &str,
    medical_id: &str,
    code: &str,
) -> ureq::http::Response<ureq::Body> {
    let page = a
        .get(format!("{base}/portal/activate"))
        .call()
        .expect("activation page");
    let form = set_cookie(&page, "iryo_form");
    a.post(format!("{base}/portal/activate"))
        .header("cookie", &format!("iryo_form={form}"))
        .send_form([
            ("form", form.as_str()),
            ("medical_id", medical_id),
            ("code", code),
            ("passphrase", "a long enough passphrase"),
            ("passphrase2", "a long enough passphrase"),
        ])
        .expect("activation")
}

/// Activates a portal account with a letter's code (`try_activate`); the session
/// cookie (`iryo_session=…`).
pub fn activate(a: &ureq::Agent, base: &str, medical_id: &str, code: &str) -> String {
    let res = try_activate(a, base, medical_id, code);
    assert!(res.status().is_redirection(), "{}", res.status());
    format!("iryo_session={}", set_cookie(&res, "iryo_session"))
}

/// The letters `letters --out DIR` wrote, one map of `letters.csv`'s columns each.
pub fn letters(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    csv::Reader::from_path(dir.join("letters.csv"))
        .expect("letters.csv")
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("letters.csv rows")
}
