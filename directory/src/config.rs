//! The directory's configuration file (TOML). Every field has a default, so an empty
//! file is a valid configuration; command-line flags override the file.

use crate::issuance::Method;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{}: {setting} is {value}; it must be {allowed}", path.display())]
    Invalid {
        path: PathBuf,
        setting: &'static str,
        value: String,
        allowed: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Holds `directory.redb` and `keys/`.
    pub data_dir: PathBuf,
    pub issuance: IssuanceConfig,
    pub registry: RegistryConfig,
    pub enrollment: EnrollmentConfig,
    pub access: AccessConfig,
    pub service: ServiceConfig,
    pub https: HttpsConfig,
    pub letters: LettersConfig,
    pub storage: StorageConfig,
    pub audit: AuditConfig,
    pub roles: RolesConfig,
}

/// Which of the directory's services a process is (docs/roles.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceRole {
    /// Both, on one store under one key: the single-process directory.
    #[default]
    All,
    /// Enrollment, issuance, letters and eligibility: knows who holds each medical ID.
    Registry,
    /// Memberships, consent, grants, notifications and the audit log: knows medical IDs
    /// and institutions, never a My Number, name or address.
    Authority,
}

impl ServiceRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::All => "all",
            ServiceRole::Registry => "registry",
            ServiceRole::Authority => "authority",
        }
    }

    /// Whether this process keeps persons: enrollment, issuance, letters, checks.
    pub fn registers(self) -> bool {
        self != ServiceRole::Authority
    }

    /// Whether this process runs the exchange: memberships, consent, grants, the log.
    pub fn exchanges(self) -> bool {
        self != ServiceRole::Registry
    }
}

/// The split of the directory into a registry and an exchange authority (`[roles]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesConfig {
    /// What this process is: "all", "registry" or "authority"; `serve --role`
    /// overrides it.
    pub role: ServiceRole,
    /// The registry's: the exchange authority's service address, with its peer id
    /// (`/ip4/…/tcp/…/p2p/…`, as the authority's `serve` prints it).
    pub authority: Option<String>,
    /// The authority's: the registry's root public key, 64 hex digits, that signs its
    /// notices (`iryo-directory keys show` on the registry prints it as "root key").
    pub registry_key: Option<String>,
    /// The authority's: the registry's service peer id, which its session with the
    /// authority is authenticated by (`keys show` prints it as "service peer").
    pub registry_peer: Option<String>,
    /// The registry's: how often notices not yet applied are sent, in seconds.
    pub tell_every_seconds: u64,
    /// The registry's: how long a membership the authority confirmed is trusted
    /// before it is asked again; a revocation reaches the registry within it.
    pub members_refresh_seconds: u64,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            role: ServiceRole::All,
            authority: None,
            registry_key: None,
            registry_peer: None,
            tell_every_seconds: 5,
            members_refresh_seconds: 60,
        }
    }
}

/// The file in the data directory that records the role `init` made it for: a
/// registry's or an authority's data must never be served as another.
const ROLE_FILE: &str = "role";

impl Config {
    /// The role the data directory was made for, if `init` recorded one.
    pub fn recorded_role(&self) -> Result<Option<ServiceRole>, String> {
        let path = self.data_dir.join(ROLE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim() {
                "all" => Ok(Some(ServiceRole::All)),
                "registry" => Ok(Some(ServiceRole::Registry)),
                "authority" => Ok(Some(ServiceRole::Authority)),
                other => Err(format!(
                    "{}: {other:?} is not a role (all, registry or authority)",
                    path.display()
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Records the role the data directory is made for (`init`).
    pub fn record_role(&self) -> std::io::Result<()> {
        let mut f = crate::files::create_private(&self.data_dir.join(ROLE_FILE))?;
        std::io::Write::write_all(&mut f, format!("{}\n", self.roles.role.as_str()).as_bytes())
    }

    /// Settles the role from what `init` recorded and what the configuration or a flag
    /// says (`asked`): the recorded one stands when nothing else is said; another one
    /// asked for is refused, naming both.
    pub fn settle_role(&mut self, asked: Option<ServiceRole>) -> Result<(), String> {
        let asked = asked.or((self.roles.role != ServiceRole::All).then_some(self.roles.role));
        match (self.recorded_role()?, asked) {
            (Some(recorded), Some(a)) if a != recorded => Err(format!(
                "{} was made for the {} role; this configuration or --role asks for {}: run that role on its own data directory (docs/roles.md)",
                self.data_dir.display(),
                recorded.as_str(),
                a.as_str()
            )),
            (Some(recorded), _) => {
                self.roles.role = recorded;
                Ok(())
            }
            (None, Some(a)) => {
                self.roles.role = a;
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }
}

impl RolesConfig {
    /// The Ed25519 key of the registry's service peer, for an authority.
    pub fn registry_peer(&self) -> Result<[u8; 32], String> {
        let text = self.registry_peer.as_deref().map_or("", str::trim);
        if text.is_empty() {
            return Err("roles.registry_peer is not set: give the registry's service peer id (`iryo-directory keys show` on the registry)".into());
        }
        let peer: libp2p::PeerId = text
            .parse()
            .map_err(|e| format!("roles.registry_peer {text:?} is not a peer id: {e}"))?;
        iryo_p2p::transport::peer_key(&peer)
            .ok_or_else(|| format!("roles.registry_peer {text:?} is not an Ed25519 peer id"))
    }

    /// The registry's key that notices must be signed with, for an authority.
    pub fn registry_key(&self) -> Result<ed25519_dalek::VerifyingKey, String> {
        let hex = self.registry_key.as_deref().map_or("", str::trim);
        if hex.is_empty() {
            return Err("roles.registry_key is not set: give the registry's public key (`iryo-directory keys show` on the registry)".into());
        }
        let bytes = iryo_proto::merkle::from_hex(hex)
            .ok_or_else(|| format!("roles.registry_key {hex:?} is not 64 hex digits"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| format!("roles.registry_key {hex:?} is not an Ed25519 public key: {e}"))
    }
}

/// The audit log's checkpoints and their witnesses (`[audit]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The first line of the log's checkpoints (c2sp.org/tlog-checkpoint), unique to
    /// this deployment; unset, `iryo-audit/` and the start of the root key in hex.
    pub origin: Option<String>,
    /// The witnesses `audit witness` asks to cosign each checkpoint.
    #[serde(rename = "witness")]
    pub witnesses: Vec<WitnessConfig>,
    /// How often `serve` asks them to cosign the latest checkpoint, in seconds (0:
    /// never; `audit witness` then does it when run).
    pub witness_every_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            origin: None,
            witnesses: Vec::new(),
            witness_every_seconds: 60,
        }
    }
}

/// One witness (`[[audit.witness]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Its submission prefix: `add-checkpoint` is posted under it.
    pub url: String,
    /// Its verifier key (`NAME+ID+KEY`, cosignature type 0x04), as `iryo-witness vkey`
    /// prints it.
    pub key: String,
}

/// Where the registry is kept (`[storage]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A PostgreSQL database, as a libpq URL (postgresql://USER@HOST/DATABASE, or
    /// postgresql://USER@/DATABASE?host=/socket/dir); unset keeps the embedded store
    /// (redb) in `data_dir`. The keys stay in `data_dir` either way.
    pub url: Option<String>,
    /// Connections each process keeps to the database.
    pub pool_size: usize,
    /// Connections that record the network's plain checks side by side, without the
    /// audit log's lock (0: every check goes through the one group-commit writer).
    pub intake_lanes: usize,
    /// The longest one statement may run before it fails with an error, in seconds
    /// (unless the URL sets `options` itself).
    pub statement_timeout_seconds: u64,
    /// The CA certificate(s), PEM, that signed the database server's certificate. Set,
    /// every connection over the network uses TLS and checks the server against it.
    pub ca_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: crate::postgres::POOL_SIZE,
            intake_lanes: crate::postgres::INTAKE_LANES,
            statement_timeout_seconds: crate::postgres::STATEMENT_TIMEOUT.as_secs(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    /// Address of the HTTPS front (portal, insurers, operators); it starts with `serve`
    /// once `ca init` has made the agency CA.
    pub listen: String,
    /// The largest enrollment file an insurer may upload, in MiB.
    pub max_upload_mib: u64,
    /// Days an uploaded file and its error report are kept after it was enrolled; the
    /// job's summary stays.
    pub upload_retention_days: u32,
    /// Connections one client address may hold at once.
    pub connections_per_address: usize,
    /// Seconds a connection may send and receive nothing before it is closed.
    pub idle_seconds: u64,
    /// Bytes a second a connection must move on average, after its first
    /// `idle_seconds`; a slower one (a trickled body) is closed.
    pub min_bytes_per_second: u64,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            max_upload_mib: 2048,
            upload_retention_days: 30,
            connections_per_address: 32,
            idle_seconds: 30,
            min_bytes_per_second: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LettersConfig {
    /// A Japanese TrueType font to embed (Debian: fonts-ipaexfont-gothic, IPA Font License).
    pub font: PathBuf,
    /// Where the letter tells people to sign in.
    pub portal_url: String,
    /// Days an activation code stays valid.
    pub activation_days: u32,
    /// Letters per PDF file.
    pub per_file: usize,
    /// How people reach the agency (name, telephone, hours): printed on every letter
    /// and shown on My Portal's page for a lost letter or a forgotten password.
    pub contact: String,
}

impl Default for LettersConfig {
    fn default() -> Self {
        Self {
            font: PathBuf::from("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf"),
            portal_url: "https://localhost:8443/portal/".into(),
            activation_days: 90,
            per_file: 500,
            contact: "医療ID管理機関 お問い合わせ窓口".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Without a consent record that covers a request: "deny" (opt-in) or "allow" (opt-out).
    pub default_policy: crate::access::DefaultPolicy,
    /// Days that consent given at a visit lets the institution obtain records.
    pub visit_consent_days: u32,
    /// Days a new membership is valid.
    pub membership_days: u32,
    /// Seconds after which a grant used by only one end is listed by `audit unmatched`.
    pub unmatched_after_seconds: i64,
    /// Seconds a grant stays valid, 1 to 300.
    pub grant_seconds: i64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            default_policy: crate::access::DefaultPolicy::Deny,
            visit_consent_days: 90,
            membership_days: 365,
            unmatched_after_seconds: 600,
            grant_seconds: iryo_proto::federation::MAX_GRANT_SECONDS,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// libp2p listen address of `serve`.
    pub listen: String,
    /// Most checks committed together (group commit).
    pub max_group: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: "/ip4/127.0.0.1/tcp/4701".into(),
            max_group: 512,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuanceConfig {
    pub method: Method,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Years after death during which the ID still serves research (proposal §2-7).
    pub retention_years: u32,
    /// redb page cache; bounds the directory's memory.
    pub cache_mib: usize,
    /// Days past today that a stated date (of death, of a check) may lie, for clocks
    /// that run ahead; later dates are refused.
    pub date_allowance_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrollmentConfig {
    /// Rows per durable transaction.
    pub batch_rows: usize,
    /// The longest line an enrollment file may have, in bytes; a longer one stops the
    /// file (a row is a few hundred bytes; this bounds memory).
    pub max_line_bytes: usize,
    /// Encoding of files without a byte-order mark: "auto" (strict UTF-8, else
    /// Shift_JIS/CP932, else the file is refused), "utf-8" or "shift_jis".
    pub encoding: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("iryo-data"),
            issuance: IssuanceConfig::default(),
            registry: RegistryConfig::default(),
            enrollment: EnrollmentConfig::default(),
            access: AccessConfig::default(),
            service: ServiceConfig::default(),
            https: HttpsConfig::default(),
            letters: LettersConfig::default(),
            storage: StorageConfig::default(),
            audit: AuditConfig::default(),
            roles: RolesConfig::default(),
        }
    }
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            method: Method::Fpe,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            retention_years: 10,
            cache_mib: 256,
            date_allowance_days: 1,
        }
    }
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            batch_rows: 10_000,
            max_line_bytes: 64 * 1024,
            encoding: "auto".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let grant = config.access.grant_seconds;
        let max = iryo_proto::federation::MAX_GRANT_SECONDS;
        if !(1..=max).contains(&grant) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                setting: "access.grant_seconds",
                value: grant.to_string(),
                allowed: format!("1 to {max} (nodes refuse longer grants)"),
            });
        }
        Ok(config)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("directory.redb")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/directory.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.issuance.method, Method::Fpe);
        assert!(c.enrollment.batch_rows > 0);
    }

    #[test]
    fn postgres_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/directory-postgres.toml");
        let c = Config::load(&path).unwrap();
        let url = c.storage.url.unwrap();
        assert!(crate::postgres::DatabaseUrl::parse(&url).is_ok(), "{url}");
    }

    #[test]
    fn an_authority_names_what_is_wrong_with_the_registry_it_hears() {
        let roles = |key: &str, peer: &str| RolesConfig {
            registry_key: Some(key.into()),
            registry_peer: Some(peer.into()),
            ..RolesConfig::default()
        };
        let none = RolesConfig::default();
        assert!(none.registry_key().unwrap_err().contains("keys show"));
        assert!(none.registry_peer().unwrap_err().contains("keys show"));
        let bad = roles("<script>", "not a peer");
        assert!(bad.registry_key().unwrap_err().contains("64 hex digits"));
        assert!(bad.registry_peer().unwrap_err().contains("not a peer id"));
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let peer = libp2p::identity::PublicKey::from(
            libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).unwrap(),
        )
        .to_peer_id();
        let good = roles(
            &iryo_proto::merkle::to_hex(key.as_bytes()),
            &peer.to_string(),
        );
        assert_eq!(good.registry_key().unwrap(), key);
        assert_eq!(good.registry_peer().unwrap(), key.to_bytes());
    }

    #[test]
    fn the_role_init_recorded_stands() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        // Nothing recorded: what is asked, else the configuration's.
        c.settle_role(None).unwrap();
        assert_eq!(c.roles.role, ServiceRole::All);
        c.roles.role = ServiceRole::Registry;
        c.record_role().unwrap();
        // Recorded: it stands when nothing is asked, and another is refused.
        let mut later = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        later.settle_role(None).unwrap();
        assert_eq!(later.roles.role, ServiceRole::Registry);
        let e = later.settle_role(Some(ServiceRole::Authority)).unwrap_err();
        assert!(
            e.contains("registry role") && e.contains("authority"),
            "{e}"
        );
        std::fs::write(dir.path().join("role"), "<script>").unwrap();
        assert!(later
            .settle_role(None)
            .unwrap_err()
            .contains("is not a role"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("data_dri = \"x\"").is_err());
        assert!(toml::from_str::<Config>("").is_ok());
    }

    #[test]
    fn a_grant_lifetime_outside_its_range_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("directory.toml");
        for (value, ok) in [("60", true), ("300", true), ("0", false), ("301", false)] {
            std::fs::write(&path, format!("[access]\ngrant_seconds = {value}\n")).unwrap();
            match Config::load(&path) {
                Ok(c) => assert!(ok && c.access.grant_seconds.to_string() == value, "{value}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !ok && e.contains("access.grant_seconds is") && e.contains("1 to 300"),
                        "{e}"
                    );
                }
            }
        }
    }
}
