//! A local federation for end-to-end tests and the demo: a real `iryo-directory serve`
//! and real `iryo-node run` processes on 127.0.0.1, each in its own temp dir.

pub use crate::split::{authority_roles, Split};
use crate::{directory_bin, node_bin, write_enrollment, Backend, Directory};
use iryo_node::config::NodeConfig;
use iryo_proto::{InstitutionCode, MedicalId, MyNumber, PointTableKind};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for its ready line on stdout; returns the process and the line.
pub fn start_ready(mut cmd: Command, what: &str) -> (Proc, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let proc_ = Proc(child);
    for line in lines.by_ref() {
        let line = line.unwrap_or_default();
        if line.contains(" ready ") {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (proc_, line);
        }
    }
    panic!("{what} exited before it was ready");
}

pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The first p2p address a `serve` ready line names, ending in /p2p/<peer id>.
pub fn first_p2p(line: &str) -> String {
    field(line, "p2p")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A free port on 127.0.0.1, for the libp2p address a node registers before it starts.
/// Taken below the kernel's range for ephemeral ports (32768 and up here), at random:
/// between this choice and the node's start, every process of the suite binds port 0,
/// and a port from that range was now and then handed to one of them first.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    let (from, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    for _ in 0..1_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = from + (h.finish() % u64::from(span)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn code(n: u32) -> InstitutionCode {
    InstitutionCode::from_parts(13, PointTableKind::Medical, 1000 + n).expect("valid code")
}

/// One patient of the federation's registry.
pub fn patient_my_number(i: u64) -> MyNumber {
    MyNumber::from_body(55_500_000_000 + i)
}

pub struct NodeProc {
    pub code: InstitutionCode,
    pub dir: PathBuf,
    pub api: String,
    pub token: String,
    pub proc_: Option<Proc>,
    pub(crate) agent: ureq::Agent,
}

impl NodeProc {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_keyed(method, path, body, None)
    }

    /// As `call`, with the EMR's `Idempotency-Key` header when `key` is given.
    fn call_keyed(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.api);
        let auth = format!("Bearer {}", self.token);
        let key = key.unwrap_or_default();
        let with = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            let r = r.header("Authorization", &auth);
            if key.is_empty() {
                r
            } else {
                r.header("Idempotency-Key", key)
            }
        };
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("PUT", Some(b)) => with(self.agent.put(&url)).send_json(b),
            (_, Some(b)) => with(self.agent.post(&url)).send_json(b),
            _ => with(self.agent.post(&url)).send_empty(),
        };
        let resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        // A patient's records may take up to an exchange response (16 MiB).
        let v = resp
            .into_body()
            .with_config()
            .limit(32 << 20)
            .read_json::<Value>()
            .unwrap_or(Value::Null);
        (status, v)
    }

    pub fn put_records(&self, id: MedicalId, doc: &Value) -> (u16, Value) {
        self.call("PUT", &format!("/patients/{id}/records"), Some(doc))
    }

    /// As `put_records`, but a connection the node drops (it stopped) is `None`.
    pub fn try_put_records(&self, id: MedicalId, doc: &Value) -> Option<u16> {
        self.agent
            .put(&format!("{}/patients/{id}/records", self.api))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(doc)
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn records(&self, id: MedicalId) -> (u16, Value) {
        self.call("GET", &format!("/patients/{id}/records"), None)
    }

    pub fn fetch(
        &self,
        id: MedicalId,
        from: InstitutionCode,
        purpose: &str,
        reason: Option<&str>,
    ) -> (u16, Value) {
        let mut body =
            json!({ "medical_id": id.to_string(), "from": from.to_string(), "purpose": purpose });
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        self.call("POST", "/exchange/fetch", Some(&body))
    }

    /// Whether a check by medical ID finds `p` eligible.
    pub fn finds_eligible(&self, p: MedicalId) -> bool {
        let (status, a) = self.eligibility(&json!({ "medical_id": p.to_string() }));
        status == 200 && a["eligible"].as_bool() == Some(true)
    }

    /// Restarts the node with `addresses` as its directory's.
    pub fn set_directory_addresses(&mut self, addresses: Vec<String>) {
        self.stop();
        let mut cfg = NodeConfig::load(&self.config_path()).expect("node.toml");
        cfg.directory.address = iryo_node::config::Addresses(addresses);
        std::fs::write(self.config_path(), cfg.commented()).expect("node.toml");
        self.start();
    }

    pub fn eligibility(&self, body: &Value) -> (u16, Value) {
        self.call("POST", "/eligibility", Some(body))
    }

    /// An eligibility check sent with an `Idempotency-Key`, as an EMR that retries.
    pub fn eligibility_keyed(&self, body: &Value, key: &str) -> (u16, Value) {
        self.call_keyed("POST", "/eligibility", Some(body), Some(key))
    }

    /// A fetch for treatment sent with an `Idempotency-Key`.
    pub fn fetch_keyed(&self, id: MedicalId, from: InstitutionCode, key: &str) -> (u16, Value) {
        let body = json!({ "medical_id": id.to_string(), "from": from.to_string(), "purpose": "treatment" });
        self.call_keyed("POST", "/exchange/fetch", Some(&body), Some(key))
    }

    /// A counter of the node's `/metrics`, 0 when it has not been counted yet.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self
            .agent
            .get(&format!("{}/metrics", self.api))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let v: f64 = l
                    .strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()?;
                Some(v as u64)
            })
            .unwrap_or(0)
    }

    pub fn outbox_pending(&self) -> u64 {
        self.call("GET", "/outbox", None).1["pending"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    /// Waits until the outbox is empty (delivered and acknowledged), up to `secs`.
    pub fn drain_outbox(&self, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if self.outbox_pending() == 0 {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn stop(&mut self) {
        self.proc_ = None;
    }

    /// The running node's process, to see whether it has exited.
    pub fn proc_mut(&mut self) -> Option<&mut std::process::Child> {
        self.proc_.as_mut().map(|p| &mut p.0)
    }

    /// Starts (or restarts) the node process and waits until it is ready.
    pub fn start(&mut self) {
        let mut cmd = Command::new(node_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "warn")
            .env_remove("SSLKEYLOGFILE");
        let (p, line) = start_ready(cmd, "iryo-node");
        self.api = field(&line, "api").to_string();
        self.proc_ = Some(p);
    }
}

pub struct Federation {
    pub registry: Directory,
    pub directory: Option<Proc>,
    pub directory_addr: String,
    pub agency_key: String,
    /// `host:port` of the HTTPS front, empty when no agency CA was made.
    pub https: String,
    pub nodes: Vec<NodeProc>,
    pub patients: Vec<MedicalId>,
    pub(crate) listen: String,
    /// A configuration file `serve` is started with, if any (`--config`).
    pub directory_config: Option<PathBuf>,
    /// The exchange authority, when the directory runs split (`start_split`): then
    /// `directory`, `directory_addr` and `agency_key` are the authority's, and
    /// `registry` is the registry's data.
    pub split: Option<Split>,
}

/// Commands run on the exchange authority when the directory is split; the rest are
/// the registry's.
pub(crate) const AUTHORITY_COMMANDS: [&str; 4] = ["consent", "institution", "audit", "ca"];

/// The free text a federation carries: its institutions' names (numbered from 0) and its
/// patients' names (numbered too) and address.
pub struct Texts<'a> {
    pub institution: &'a str,
    pub person: &'a str,
    pub address: &'a str,
}

impl Texts<'_> {
    pub const PLAIN: Texts<'static> = Texts {
        institution: "テスト病院",
        person: "患者",
        address: "東京都千代田区1-1",
    };
}

/// `iryo-node init` for institution `n` named `name`, in `at`'s temp dir, listening
/// on a free port, with `extra` arguments; the node's directory, holding node.toml and
/// registration.json.
pub fn init_node(at: &Directory, n: u32, name: &str, extra: &[&str]) -> PathBuf {
    let dir = at.path(&format!("node{n}"));
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let out = Command::new(node_bin())
        .args([
            "init",
            "--code",
            &code(n).to_string(),
            "--name",
            name,
            "--out",
        ])
        .arg(&dir)
        .args(["--listen", &listen, "--api", "127.0.0.1:0"])
        .args(extra)
        .output()
        .expect("iryo-node init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The medical ID the registry in `dir` issued to sample patient `i`.
pub fn medical_id_of(dir: &Directory, i: u64) -> MedicalId {
    let v = dir.json(&[
        "show",
        "--my-number",
        &patient_my_number(i).to_string(),
        "--json",
    ]);
    v["person"]["medical_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("patient enrolled")
}

/// The HTTP client the EMR's calls to node APIs go through: statuses are answers.
pub(crate) fn api_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// An enrollment file of `patients` patients, named and living as `texts` says, in
/// `registry`'s temp dir; its path.
pub(crate) fn patients_file(registry: &Directory, patients: u64, texts: &Texts) -> PathBuf {
    let rows: Vec<String> = (0..patients)
        .map(|i| patient_row(i, &format!("{} {i}号", texts.person), texts.address))
        .collect();
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let file = registry.path("patients.csv");
    write_enrollment(&file, &refs);
    file
}

/// Patient `i`'s enrollment row, named `name`, living at `address`.
pub fn patient_row(i: u64, name: &str, address: &str) -> String {
    format!(
        "kyokai,01130012,10000001,{},00,insured,{},{name},カンジャ タロウ,1970-01-01,1,{address},2020-04-01,",
        500 + i,
        patient_my_number(i),
    )
}

impl Federation {
    /// A directory with `patients` people enrolled and `nodes` registered institutions,
    /// all running. Nodes refresh memberships every `refresh` seconds.
    pub fn start(nodes: usize, patients: u64, refresh: u64) -> Self {
        Self::start_with(nodes, patients, refresh, &Texts::PLAIN)
    }

    /// As `start`, with names and addresses from `texts`.
    pub fn start_with(nodes: usize, patients: u64, refresh: u64, texts: &Texts) -> Self {
        Self::start_in(Directory::new(), nodes, patients, refresh, texts)
    }

    /// As `start`, with the registry on `backend`.
    pub fn start_on(backend: Backend, nodes: usize, patients: u64, refresh: u64) -> Self {
        Self::start_with_on(backend, nodes, patients, refresh, &Texts::PLAIN)
    }

    /// As `start_with`, with the registry on `backend`.
    pub fn start_with_on(
        backend: Backend,
        nodes: usize,
        patients: u64,
        refresh: u64,
        texts: &Texts,
    ) -> Self {
        Self::start_in(Directory::on(backend), nodes, patients, refresh, texts)
    }

    /// As `start`, with the registry in the PostgreSQL database at `url`.
    pub fn start_on_postgres(url: &str, nodes: usize, patients: u64, refresh: u64) -> Self {
        Self::start_in(
            Directory::on_postgres(url),
            nodes,
            patients,
            refresh,
            &Texts::PLAIN,
        )
    }

    fn start_in(
        registry: Directory,
        nodes: usize,
        patients: u64,
        refresh: u64,
        texts: &Texts,
    ) -> Self {
        registry.ok(&["init"]);
        registry.ok(&["ca", "init"]);
        let file = patients_file(&registry, patients, texts);
        registry.ok(&["enroll", &file.display().to_string()]);
        let patients = (0..patients).map(|i| medical_id_of(&registry, i)).collect();

        let agent = api_agent();
        let mut node_procs = Vec::new();
        for n in 0..nodes {
            let c = code(n as u32);
            let dir = init_node(
                &registry,
                n as u32,
                &format!("{}{n}", texts.institution),
                &[],
            );
            registry.ok(&[
                "institution",
                "add",
                &dir.join("registration.json").display().to_string(),
            ]);
            node_procs.push(NodeProc {
                code: c,
                dir,
                api: String::new(),
                token: String::new(),
                proc_: None,
                agent: agent.clone(),
            });
        }
        let mut fed = Federation {
            registry,
            directory: None,
            directory_addr: String::new(),
            agency_key: String::new(),
            https: String::new(),
            nodes: node_procs,
            patients,
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            directory_config: None,
            split: None,
        };
        fed.start_directory();
        // From now on the directory keeps one port, so nodes find it after a restart.
        fed.listen = fed
            .directory_addr
            .rsplit_once("/p2p/")
            .map(|(a, _)| a.to_string())
            .expect("directory address");
        for node in &mut fed.nodes {
            let mut cfg = NodeConfig::load(&node.config_path()).expect("node.toml");
            cfg.directory.address = fed.directory_addr.clone().into();
            cfg.directory.agency_key = fed.agency_key.clone();
            cfg.directory.refresh_seconds = refresh;
            cfg.outbox.interval_ms = 100;
            std::fs::write(node.config_path(), cfg.commented()).expect("write node.toml");
            node.token = cfg.api.token.clone();
            node.start();
        }
        fed
    }

    pub fn start_directory(&mut self) {
        if let Some(s) = &self.split {
            // Split, the directory nodes talk to is the exchange authority.
            let cmd = s.authority.command(&[
                "--config",
                &s.authority_config.display().to_string(),
                "serve",
                "--listen",
                &self.listen,
                "--https",
                &self.https_listen(),
            ]);
            let (p, line) = start_ready(cmd, "iryo-directory serve (authority)");
            self.directory_addr = first_p2p(&line);
            self.https = field(&line, "https").to_string();
            self.directory = Some(p);
            return;
        }
        let mut cmd = Command::new(directory_bin());
        if let Some(config) = &self.directory_config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--data-dir")
            .arg(&self.registry.data)
            .args([
                "serve",
                "--listen",
                &self.listen,
                "--https",
                &self.https_listen(),
            ])
            .env("RUST_LOG", "warn")
            .env_remove("SSLKEYLOGFILE");
        self.registry.database_env(&mut cmd);
        let (p, line) = start_ready(cmd, "iryo-directory serve");
        self.directory_addr = first_p2p(&line);
        self.agency_key = field(&line, "agency_key").to_string();
        self.https = field(&line, "https").to_string();
        self.directory = Some(p);
    }

    /// The HTTPS front keeps its port across restarts too.
    fn https_listen(&self) -> String {
        if self.https.is_empty() {
            "127.0.0.1:0".into()
        } else {
            self.https.clone()
        }
    }

    /// Another `serve` process of the directory on the same data directory and
    /// database (PostgreSQL), recording plain checks on two intake lanes where the
    /// first records them through its group-commit writer; the process and its p2p
    /// address.
    pub fn another_directory(&self) -> (Proc, String) {
        let config = self.registry.path("lanes.toml");
        std::fs::write(&config, "[storage]\nintake_lanes = 2\n").expect("write lanes.toml");
        let mut cmd = Command::new(directory_bin());
        cmd.arg("--data-dir")
            .arg(&self.registry.data)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .env("RUST_LOG", "warn")
            .env_remove("SSLKEYLOGFILE");
        self.registry.database_env(&mut cmd);
        let (p, line) = start_ready(cmd, "iryo-directory serve");
        let addr = first_p2p(&line);
        (p, addr)
    }

    pub fn stop_directory(&mut self) {
        self.directory = None;
    }

    /// Runs an operator command against the running directory (through its admin
    /// socket), on the half it belongs to when the directory is split.
    pub fn operator(&self, args: &[&str]) -> String {
        match &self.split {
            Some(s) => {
                let exchange = args.first().is_some_and(|a| AUTHORITY_COMMANDS.contains(a));
                let (dir, config) = if exchange {
                    (&s.authority, &s.authority_config)
                } else {
                    (&self.registry, &s.registry_config)
                };
                let config = config.display().to_string();
                let mut with = vec!["--config", config.as_str()];
                with.extend_from_slice(args);
                dir.ok(&with)
            }
            None => self.registry.ok(args),
        }
    }

    pub fn consent(&self, patient: MedicalId, institution: InstitutionCode) {
        self.operator(&[
            "consent",
            "grant",
            "--medical-id",
            &patient.to_string(),
            "--institution",
            &institution.to_string(),
            "--purpose",
            "treatment",
        ]);
    }
}

/// A small FHIR Bundle of `n` observations for `patient`.
pub fn sample_bundle(n: usize, note_bytes: usize) -> Value {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            let mut r = json!({
                "id": format!("r{i}"),
                "subject": { "reference": "Patient/p1" },
                "note": [{ "text": "x".repeat(note_bytes) }],
            });
            if i == 0 {
                r["resourceType"] = json!("Condition");
                r["code"] = json!({ "text": "2型糖尿病" });
            } else {
                r["resourceType"] = json!("Observation");
                r["status"] = json!("final");
                r["code"] = json!({ "text": "HbA1c" });
            }
            json!({ "resource": r })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "collection", "entry": entries })
}

/// A bare peer speaking the protocols directly with a key of the test's choosing, to
/// send what a well-behaved node never would.
pub struct RawPeer {
    pub rt: tokio::runtime::Runtime,
    pub p2p: iryo_node::p2p::P2p,
    _task: tokio::task::JoinHandle<()>,
}

impl RawPeer {
    pub fn new(key: &ed25519_dalek::SigningKey, directory: &str) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (p2p, mut inbound, _, task) = rt
            .block_on(iryo_node::p2p::start(
                key,
                "/ip4/127.0.0.1/tcp/0".parse().expect("addr"),
                &[directory.parse().expect("directory address")],
                &[],
            ))
            .expect("raw peer starts");
        // It serves nothing: refuse whatever arrives.
        rt.spawn(async move {
            use futures::StreamExt;
            let limits = (
                iryo_proto::wire::MAX_EXCHANGE_REQUEST,
                iryo_proto::wire::MAX_EXCHANGE_RESPONSE,
            );
            while let Some((peer, stream)) = inbound.next().await {
                tokio::spawn(iryo_p2p::answer::answer(
                    peer,
                    stream,
                    limits,
                    |_: iryo_proto::wire::ExchangeRequest| async {
                        iryo_proto::wire::ExchangeResponse::Refused(iryo_proto::wire::Refusal::new(
                            iryo_proto::wire::RefusalReason::NotMember,
                            "raw peer",
                        ))
                    },
                ));
            }
        });
        Self {
            rt,
            p2p,
            _task: task,
        }
    }

    pub fn directory(
        &self,
        req: iryo_proto::wire::DirectoryRequest,
    ) -> iryo_proto::wire::DirectoryResponse {
        self.again(|| self.p2p.directory(req.clone()))
            .expect("directory answers")
    }

    /// Runs a request, and runs it again while no session could be opened (nothing
    /// was sent, `P2pError::Unreachable`), as a node's outbox does: this peer shares
    /// its key with a running node, and under the whole suite's load opening a second
    /// connection under one peer id now and then got no stream within the timeout.
    fn again<T, F: std::future::Future<Output = Result<T, iryo_p2p::P2pError>>>(
        &self,
        send: impl Fn() -> F,
    ) -> Result<T, iryo_p2p::P2pError> {
        let mut tries = 0;
        loop {
            match self.rt.block_on(send()) {
                Err(iryo_p2p::P2pError::Unreachable(why)) if tries < 2 => {
                    tries += 1;
                    eprintln!("raw peer: {why}; trying again");
                }
                other => return other,
            }
        }
    }

    pub fn fetch(
        &self,
        node: &NodeProc,
        req: iryo_proto::wire::ExchangeRequest,
    ) -> iryo_proto::wire::ExchangeResponse {
        let cfg = NodeConfig::load(&node.config_path()).expect("node.toml");
        let key = iryo_node::identity::load_key(&cfg.key_path()).expect("node key");
        let peer = iryo_node::identity::peer_id(&key.verifying_key().to_bytes()).expect("peer id");
        let addr: libp2p::Multiaddr = format!("{}/p2p/{peer}", cfg.p2p.listen)
            .parse()
            .expect("address");
        self.again(|| self.p2p.fetch(peer, vec![addr.clone()], req.clone()))
            .expect("source answers")
    }
}

pub fn node_key(node: &NodeProc) -> ed25519_dalek::SigningKey {
    let cfg = NodeConfig::load(&node.config_path()).expect("node.toml");
    iryo_node::identity::load_key(&cfg.key_path()).expect("node key")
}

impl Federation {
    /// The agency's root key, read from the directory's key files as only the agency can.
    /// Split, the exchange authority's: the key nodes trust.
    pub fn agency_key(&self) -> ed25519_dalek::SigningKey {
        let data = match &self.split {
            Some(s) => &s.authority.data,
            None => &self.registry.data,
        };
        let bytes = std::fs::read(data.join("keys/agency-root.ed25519")).expect("agency key");
        ed25519_dalek::SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
    }

    pub fn audit_show(&self, patient: MedicalId) -> Vec<Value> {
        let shown = self.operator(&[
            "audit",
            "show",
            "--medical-id",
            &patient.to_string(),
            "--json",
        ]);
        let v: Value = serde_json::from_str(&shown).expect("audit show --json");
        v.as_array().cloned().unwrap_or_default()
    }
}
