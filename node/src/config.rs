//! The node's one configuration file (TOML), written by `iryo-node init` with comments.

use iryo_proto::InstitutionCode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This institution's 10-digit code.
    pub code: InstitutionCode,
    /// Holds node.redb and, unless `key_file` says otherwise, node.key.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub witnesses: WitnessesConfig,
}

/// The witnesses whose cosignatures of the agency's audit log this node requires
/// before it serves records (`[witnesses]`); none listed, it requires none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WitnessesConfig {
    /// The witnesses' verifier keys (`NAME+ID+KEY`, as `iryo-witness vkey` prints).
    pub keys: Vec<String>,
    /// How many of them must have cosigned a checkpoint for this node to accept it.
    pub quorum: usize,
    /// Seconds the witnesses' latest confirmation may age before records are refused.
    pub grace_seconds: u64,
    /// Seconds between fetches of the latest witnessed checkpoint.
    pub check_every_seconds: u64,
    /// The audit log's origin, when the agency configured one (`[audit] origin`).
    pub origin: Option<String>,
}

impl Default for WitnessesConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            quorum: 1,
            grace_seconds: 600,
            check_every_seconds: 60,
            origin: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p address to listen on, e.g. /ip4/0.0.0.0/tcp/4711. Must match the address
    /// registered with the agency.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The EMR's side: keep it on 127.0.0.1.
    pub listen: String,
    /// The bearer token the EMR presents.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory's libp2p address ending in /p2p/<peer id>, or several (the
    /// agency's directory processes), tried in order when one does not answer.
    pub address: Addresses,
    /// Where the agency runs the registry apart from the exchange authority
    /// (docs/roles.md): the registry's address(es), for eligibility checks; the rest
    /// goes to `address`. Empty: everything goes to `address`.
    #[serde(default, skip_serializing_if = "Addresses::is_empty")]
    pub registry_address: Addresses,
    /// The agency's root public key (Ed25519, hex), which signs memberships and grants.
    pub agency_key: String,
    /// How often cached memberships are fetched again; a revocation reaches this node
    /// within this time.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Seconds of clock difference with the agency tolerated in grants and
    /// memberships, 1 to 300.
    #[serde(default = "default_clock_tolerance")]
    pub clock_tolerance_seconds: i64,
}

/// One address, or several in the order they are tried; written as a string when
/// there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OneOrMany", into = "OneOrMany")]
pub struct Addresses(pub Vec<String>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for Addresses {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(a) => Addresses(vec![a]),
            OneOrMany::Many(v) => Addresses(v),
        }
    }
}

impl From<Addresses> for OneOrMany {
    fn from(a: Addresses) -> Self {
        match <[String; 1]>::try_from(a.0) {
            Ok([one]) => OneOrMany::One(one),
            Err(many) => OneOrMany::Many(many),
        }
    }
}

impl Addresses {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Addresses {
    fn from(a: String) -> Self {
        Addresses(vec![a])
    }
}

impl std::fmt::Display for Addresses {
    /// As TOML: a string, or an array of strings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted: Vec<String> = self
            .0
            .iter()
            .map(|a| toml::Value::from(a.as_str()).to_string())
            .collect();
        match quoted.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Pause between delivery rounds when the outbox is empty, in milliseconds.
    pub interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { interval_ms: 500 }
    }
}

/// Strings as a TOML array, each quoted and escaped.
fn toml_strings(v: &[String]) -> String {
    toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()).to_string()
}

fn default_refresh() -> u64 {
    60
}

fn default_clock_tolerance() -> i64 {
    iryo_proto::federation::CLOCK_SKEW_SECONDS
}

impl NodeConfig {
    /// Reads a node.toml. A relative `data_dir` is relative to the file's own
    /// directory, not to wherever the node happens to be started from.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut config: Self =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        let tolerance = config.directory.clock_tolerance_seconds;
        let max = iryo_proto::federation::MAX_CLOCK_TOLERANCE_SECONDS;
        if !(1..=max).contains(&tolerance) {
            return Err(format!(
                "{}: directory.clock_tolerance_seconds is {tolerance}; it must be 1 to {max} \
                 (the default is {})",
                path.display(),
                default_clock_tolerance()
            ));
        }
        Ok(config)
    }

    pub fn key_path(&self) -> PathBuf {
        match &self.key_file {
            Some(k) if k.is_absolute() => k.clone(),
            Some(k) => self.data_dir.join(k),
            None => self.data_dir.join("node.key"),
        }
    }

    pub fn agency_key(&self) -> Result<ed25519_dalek::VerifyingKey, String> {
        let bytes = iryo_proto::merkle::from_hex(self.directory.agency_key.trim())
            .ok_or("directory.agency_key is not 64 hex digits")?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| format!("directory.agency_key: {e}"))
    }

    /// The directory's addresses, in the order they are tried.
    pub fn directory_addresses(&self) -> Result<Vec<libp2p::Multiaddr>, String> {
        if self.directory.address.0.is_empty() {
            return Err("directory.address: give at least one address".into());
        }
        peer_addresses("directory.address", &self.directory.address)
    }

    /// The registry's addresses when the agency runs it apart; empty otherwise.
    pub fn registry_addresses(&self) -> Result<Vec<libp2p::Multiaddr>, String> {
        peer_addresses(
            "directory.registry_address",
            &self.directory.registry_address,
        )
    }

    pub fn listen_address(&self) -> Result<libp2p::Multiaddr, String> {
        self.p2p
            .listen
            .parse()
            .map_err(|e| format!("p2p.listen: {e}"))
    }

    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.directory.refresh_seconds.max(1))
    }

    pub fn outbox_interval(&self) -> Duration {
        Duration::from_millis(self.outbox.interval_ms.max(10))
    }

    /// The commented file `init` writes.
    pub fn commented(&self) -> String {
        format!(
            r#"# iryo node configuration for institution {code}.

# This institution's 10-digit institution code (医療機関コード).
code = "{code}"
# Holds node.redb (records, outbox) and node.key (this node's identity, mode 0600);
# a relative path is relative to this file's directory.
data_dir = "{data_dir}"

[p2p]
# Where this node listens for other institutions' nodes. The addresses they dial are
# the ones registered with the agency (`iryo-node init --advertise`, or this one).
listen = "{listen}"

[api]
# The local API for the EMR. Keep it on 127.0.0.1.
listen = "{api_listen}"
# The EMR sends "Authorization: Bearer <token>".
token = "{token}"

[directory]
# The agency directory's address, ending in /p2p/<its peer id> (from the agency).
# Where the agency runs several directory processes, list them all:
# address = ["/dns4/dir1.example/tcp/4700/p2p/...", "/dns4/dir2.example/tcp/4700/p2p/..."]
# a request goes to the first that answers, and stays there while it does.
address = {dir_addr}
# Where the agency runs its registry apart from the exchange authority: the
# registry's address, for eligibility checks (the rest goes to `address`).
{registry_addr}
# The agency's root public key, hex (printed by `iryo-directory init`).
agency_key = "{agency}"
# Seconds between refreshes of other institutions' memberships; a revoked
# institution is refused here at the latest this long after its revocation.
refresh_seconds = {refresh}
# Seconds this node's clock may differ from the agency's (1 to 300). Grants are
# refused past it; the log and /metrics (iryo_node_clock_drift_seconds) warn at half.
# Keep the clock synchronised (NTP) rather than raise this.
clock_tolerance_seconds = {tolerance}

[outbox]
# Milliseconds between deliveries of exchange notifications to the agency.
interval_ms = {interval}

[witnesses]
# Independent witnesses of the agency's audit log (as `iryo-witness vkey` prints their
# keys). Listed, this node serves records only while `quorum` of them have confirmed
# the log within `grace_seconds`, and stops if the directory shows it a log that does
# not extend the one it kept. None listed, it requires none.
keys = {witness_keys}
quorum = {quorum}
grace_seconds = {grace}
check_every_seconds = {every}
{origin}"#,
            code = self.code,
            data_dir = self.data_dir.display(),
            listen = self.p2p.listen,
            api_listen = self.api.listen,
            token = self.api.token,
            dir_addr = self.directory.address,
            registry_addr = if self.directory.registry_address.is_empty() {
                "# registry_address = \"/dns4/registry.example/tcp/4700/p2p/...\"".to_string()
            } else {
                format!("registry_address = {}", self.directory.registry_address)
            },
            agency = self.directory.agency_key,
            refresh = self.directory.refresh_seconds,
            tolerance = self.directory.clock_tolerance_seconds,
            interval = self.outbox.interval_ms,
            witness_keys = toml_strings(&self.witnesses.keys),
            quorum = self.witnesses.quorum,
            grace = self.witnesses.grace_seconds,
            every = self.witnesses.check_every_seconds,
            origin = match &self.witnesses.origin {
                Some(o) => format!("origin = {}\n", toml::Value::String(o.clone())),
                None => "# origin = \"...\"  (only if the agency set [audit] origin)\n".into(),
            },
        )
    }
}

/// Addresses of a peer whose key is checked: each must end in /p2p/<peer id>.
fn peer_addresses(setting: &str, list: &Addresses) -> Result<Vec<libp2p::Multiaddr>, String> {
    list.0
        .iter()
        .map(|text| {
            let a: libp2p::Multiaddr = text
                .parse()
                .map_err(|e| format!("{setting} {text:?}: {e}"))?;
            if !matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(format!(
                    "{setting} {text:?} must end in /p2p/<peer id> so the peer's key is checked"
                ));
            }
            Ok(a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_tolerance_outside_its_range_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node-clinic.toml");
        let text = std::fs::read_to_string(example).unwrap();
        assert!(text.contains("clock_tolerance_seconds = 30"));
        let path = dir.path().join("node.toml");
        for (value, ok) in [
            ("30", true),
            ("300", true),
            ("0", false),
            ("301", false),
            ("-5", false),
        ] {
            std::fs::write(
                &path,
                text.replace(
                    "clock_tolerance_seconds = 30",
                    &format!("clock_tolerance_seconds = {value}"),
                ),
            )
            .unwrap();
            match NodeConfig::load(&path) {
                Ok(c) => {
                    assert!(ok, "{value} accepted");
                    assert_eq!(c.directory.clock_tolerance_seconds.to_string(), value);
                }
                Err(e) => {
                    assert!(!ok, "{value} refused: {e}");
                    assert!(
                        e.contains("directory.clock_tolerance_seconds") && e.contains("1 to 300"),
                        "{e}"
                    );
                }
            }
        }
        // Left out, the default.
        std::fs::write(&path, text.replace("clock_tolerance_seconds = 30\n", "")).unwrap();
        assert_eq!(
            NodeConfig::load(&path)
                .unwrap()
                .directory
                .clock_tolerance_seconds,
            30
        );
    }

    #[test]
    fn several_directory_addresses_are_read_in_order_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node-clinic.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let one =
            "/ip4/127.0.0.1/tcp/4701/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let two =
            "/ip4/127.0.0.2/tcp/4701/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let path = dir.path().join("node.toml");
        let with = |value: &str| {
            std::fs::write(
                &path,
                text.replace(
                    &format!("address = \"{one}\""),
                    &format!("address = {value}"),
                ),
            )
            .unwrap();
            NodeConfig::load(&path)
        };
        let c = with(&format!("[\"{one}\", \"{two}\"]")).unwrap();
        let read: Vec<String> = c
            .directory_addresses()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(read, [one, two]);
        // Written back as it was read, and a single address as a plain string.
        std::fs::write(&path, c.commented()).unwrap();
        assert_eq!(
            NodeConfig::load(&path).unwrap().directory.address,
            c.directory.address
        );
        assert!(c
            .commented()
            .contains(&format!("address = [\"{one}\", \"{two}\"]")));
        let single = with(&format!("\"{one}\"")).unwrap();
        assert!(single
            .commented()
            .contains(&format!("address = \"{one}\"\n")));
        // A wrong one is named.
        let e = with(&format!("[\"{one}\", \"/ip4/127.0.0.2/tcp/4701\"]"))
            .unwrap()
            .directory_addresses()
            .unwrap_err();
        assert!(
            e.contains("/ip4/127.0.0.2/tcp/4701") && e.contains("/p2p/<peer id>"),
            "{e}"
        );
        assert!(with("[]").unwrap().directory_addresses().is_err());
    }
}
