//! The PostgreSQL backend of the directory's store (docs/storage.md): the connection,
//! and the versioned schema every process checks before it uses the database.

pub mod audit;
pub mod baseline;
pub mod migrate;
mod operations;
pub mod prepared;
mod registry_tx;
pub mod revocations;
mod store;

pub use store::{initial_load::PgInitialLoad, PgStore};

use std::time::Duration;
use thiserror::Error;

/// How long a connection attempt waits when the URL sets no `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest one statement may run when neither the URL (`options`) nor the
/// configuration (`storage.statement_timeout_seconds`) says.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections a process keeps when the configuration does not say.
pub const POOL_SIZE: usize = 4;

/// Intake lanes when the configuration does not say (`store/intake.rs`): none, so
/// every check goes through the group-commit writer. On a machine whose cores the
/// database shares with the directory, lanes raise the rate at saturation by about a
/// third but lengthen the steady rate's tail (BENCHMARKS.md); an agency whose database
/// has cores of its own, or that runs several `serve` processes, sets two.
pub const INTAKE_LANES: usize = 0;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL does not parse; the text names what is wrong, never the password.
    #[error("database URL {url}: {reason}; expected postgresql://USER@HOST/DATABASE or postgresql://USER@/DATABASE?host=/socket/dir")]
    BadUrl { url: String, reason: String },
    #[error("PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("a stored value does not decode: {0}")]
    Codec(String),
    #[error("the database is inconsistent: {0}")]
    Inconsistent(String),
    /// A pipelined transaction's first statements were about to go out before the
    /// COMMIT of the one before them on the same connection; nothing was sent.
    #[error("a transaction was to begin before the one before it sent its COMMIT")]
    OutOfOrder,
    #[error("no audit entry {index} in a log of {size} entries")]
    NotInLog { index: u64, size: u64 },
    #[error("no consistency proof from {old} to {new} entries")]
    NoConsistency { old: u64, new: u64 },
    /// The database was migrated by a newer iryo-directory.
    #[error("the database's schema is version {found}, newer than this iryo-directory knows ({known}); run the newer iryo-directory, or upgrade this one")]
    Newer { found: i32, known: i32 },
    #[error("{0} holds a registry already; `init` prepares an empty database only")]
    Initialised(String),
    #[error("{0} holds no registry yet; run `iryo-directory init --database URL` first")]
    NotInitialised(String),
    #[error("{url} asks for TLS (sslmode=require), but no CA to check the server's certificate with is set: set `ca_file` in [storage] to the PEM file of the CA that signed the database server's certificate")]
    NoTlsRoots { url: String },
    #[error("{path}: {reason}; `ca_file` in [storage] must be the PEM file of the CA that signed the database server's certificate")]
    TlsRoots { path: String, reason: String },
    /// A row a batch took for new was known after all (a unique index refused it):
    /// the batch is rolled back and applied again with its keys looked up first.
    #[error("an enrollment row taken for new names a My Number, card or ID already registered")]
    KnownAfterAll,
    /// The database needs `iryo-directory migrate` first.
    #[error("the database's schema is version {found}, older than this iryo-directory needs ({known}); run `iryo-directory migrate --database URL` first")]
    Older { found: i32, known: i32 },
}

/// A number as PostgreSQL's bigint; every number the store keeps fits.
pub(crate) fn sql(n: u64) -> Result<i64, PgError> {
    i64::try_from(n).map_err(|_| PgError::Inconsistent(format!("{n} is beyond a bigint")))
}

/// A bigint read back as the number it was written from.
pub(crate) fn unsql(n: i64) -> Result<u64, PgError> {
    u64::try_from(n)
        .map_err(|_| PgError::Inconsistent(format!("a negative number {n} where none is written")))
}

/// A database URL as given, shown with its password replaced.
#[derive(Clone)]
pub struct DatabaseUrl {
    text: String,
    config: tokio_postgres::Config,
    /// Whether the URL set the session's `options` itself (then they are left alone).
    own_options: bool,
    pool_size: usize,
    intake_lanes: usize,
    /// How the server's certificate is checked, when connections use TLS.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl DatabaseUrl {
    /// Parses a libpq URL or key=value string.
    pub fn parse(text: &str) -> Result<Self, PgError> {
        let mut config: tokio_postgres::Config =
            text.parse()
                .map_err(|e: tokio_postgres::Error| PgError::BadUrl {
                    url: redact(text),
                    reason: e.to_string(),
                })?;
        // libpq splits `?host=/a,/b` into two hosts; this client takes it for one path.
        let joined = config.get_hosts().iter().any(|h| {
            matches!(h, tokio_postgres::config::Host::Unix(p) if p.to_string_lossy().contains(','))
        });
        if joined {
            return Err(PgError::BadUrl {
                url: redact(text),
                reason: "several socket directories go before the database name, each written with %2F for '/': postgresql://USER@%2Frun%2Fpg1,%2Frun%2Fpg2/DATABASE".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let own_options = config.get_options().is_some();
        if !own_options {
            config.options(statement_timeout(STATEMENT_TIMEOUT));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        // libpq's own variable, so that a password need not be in the URL (or in `ps`).
        if config.get_password().is_none() {
            if let Some(p) = std::env::var_os("PGPASSWORD") {
                config.password(p.as_encoded_bytes());
            }
        }
        Ok(Self {
            text: text.to_string(),
            config,
            own_options,
            pool_size: POOL_SIZE,
            intake_lanes: INTAKE_LANES,
            tls: None,
        })
    }

    /// Applies `[storage]`: the statement timeout (unless the URL sets `options`), the
    /// connections a process keeps, and TLS checked against `ca_file`. With a CA file
    /// every connection over the network uses TLS (sslmode=require).
    pub fn configured(mut self, storage: &crate::config::StorageConfig) -> Result<Self, PgError> {
        if !self.own_options {
            self.config.options(statement_timeout(Duration::from_secs(
                storage.statement_timeout_seconds,
            )));
        }
        self.pool_size = storage.pool_size.max(1);
        self.intake_lanes = storage.intake_lanes;
        if let Some(path) = &storage.ca_file {
            self.tls = Some(std::sync::Arc::new(tls_config(path)?));
            self.config
                .ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        Ok(self)
    }

    /// Connections a process keeps to this database.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Connections that record plain checks beside the group-commit writer.
    pub fn intake_lanes(&self) -> usize {
        self.intake_lanes
    }

    /// The same database with `lanes` intake lanes.
    #[must_use]
    pub fn with_intake_lanes(mut self, lanes: usize) -> Self {
        self.intake_lanes = lanes;
        self
    }

    /// Connects, and drives the connection on the current Tokio runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        let failed = |source| PgError::Connect {
            url: self.to_string(),
            source,
        };
        if let Some(tls) = &self.tls {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (client, connection) = self.config.connect(tls).await.map_err(failed)?;
            tokio::spawn(drive(connection));
            return Ok(client);
        }
        if self.config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(PgError::NoTlsRoots {
                url: self.to_string(),
            });
        }
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(failed)?;
        tokio::spawn(drive(connection));
        Ok(client)
    }
}

/// No statement waits for ever (a lock held by a stuck process, a server that stopped
/// answering): a request fails with a clear error instead, and the connection is made
/// again for the next.
fn statement_timeout(t: Duration) -> String {
    format!("-c statement_timeout={}", t.as_millis())
}

/// Runs a connection until it ends.
async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "PostgreSQL connection ended");
    }
}

/// A TLS client that trusts only the CA certificates in `path`.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, PgError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| PgError::TlsRoots {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.text))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The URL with any password replaced by `***`: in `user:secret@host` and in a
/// `password=` parameter.
fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let start = i + "password=".len();
        redacted.push_str(&rest[..start]);
        redacted.push_str("***");
        let end = rest[start..]
            .find(['&', ' '])
            .map_or(rest.len(), |j| start + j);
        rest = &rest[end..];
    }
    redacted.push_str(rest);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (given, shown) in [
            (
                "postgresql://iryo:s3cret@db.example/iryo",
                "postgresql://iryo:***@db.example/iryo",
            ),
            (
                "postgresql://iryo@/iryo?host=/run/pg&password=s3cret&sslmode=disable",
                "postgresql://iryo@/iryo?host=/run/pg&password=***&sslmode=disable",
            ),
            (
                "host=/run/pg user=iryo password=s3cret",
                "host=/run/pg user=iryo password=***",
            ),
            ("postgresql://iryo@db/iryo", "postgresql://iryo@db/iryo"),
        ] {
            let url = DatabaseUrl::parse(given).unwrap();
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("s3cret"));
        }
        let joined = DatabaseUrl::parse("postgresql://iryo@/iryo?host=/run/a,/run/b")
            .unwrap_err()
            .to_string();
        assert!(joined.contains("%2Frun%2Fpg1"), "{joined}");
        let bad = DatabaseUrl::parse("postgresql://iryo:s3cret@db/iryo?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            !bad.contains("s3cret") && bad.contains("expected postgresql://"),
            "{bad}"
        );
    }
}
