//! The agency's own certificate authority for the HTTPS front (proposal §5): the server's
//! certificate, and client certificates that tell the server which insurer or which
//! operator is calling. Everything lives in `DATA_DIR/ca/`: the CA key (mode 0600), its
//! certificate, the register of issued certificates, and the revocation list that
//! `serve` reloads whenever it changes.

use crate::keys::{write_secret, KeyError};
use iryo_proto::InsurerNumber;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{0}: no agency CA here; run `iryo-directory ca init` first")]
    Missing(PathBuf),
    #[error("{0}: the agency CA exists already; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{path}: {reason}")]
    Register { path: PathBuf, reason: String },
    #[error("no issued certificate matches {0}")]
    NoMatch(String),
    #[error("operator name {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    OperatorName(String),
}

type Result<T> = std::result::Result<T, CaError>;

/// Whom a client certificate speaks for. The server takes this from the certificate,
/// never from a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientIdentity {
    Insurer(InsurerNumber),
    Operator(String),
}

impl ClientIdentity {
    fn common_name(&self) -> String {
        match self {
            ClientIdentity::Insurer(n) => format!("insurer {n}"),
            ClientIdentity::Operator(name) => format!("operator {name}"),
        }
    }

    fn from_common_name(cn: &str) -> Option<Self> {
        match cn.split_once(' ')? {
            ("insurer", n) => n.parse().ok().map(ClientIdentity::Insurer),
            ("operator", name) if valid_operator(name) => {
                Some(ClientIdentity::Operator(name.to_string()))
            }
            _ => None,
        }
    }

    /// The identity in a DER certificate the TLS handshake has already verified.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        Self::from_common_name(cn)
    }
}

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.common_name())
    }
}

fn valid_operator(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What `ca issue` makes.
#[derive(Debug, Clone)]
pub enum Subject {
    Client(ClientIdentity),
    /// The HTTPS server, by host names or IP addresses.
    Server(Vec<String>),
}

/// One line of the register of issued certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub serial: u64,
    pub subject: String,
    pub not_after: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Register {
    next_serial: u64,
    crl_number: u64,
    issued: Vec<IssuedCert>,
}

pub struct Ca {
    dir: PathBuf,
}

const KEY: &str = "ca.key";
const CERT: &str = "ca.pem";
const REGISTER: &str = "issued.json";
const CRL: &str = "crl.pem";
const SERVER_KEY: &str = "server.key";
const SERVER_CERT: &str = "server.pem";

impl Ca {
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("ca")
    }

    /// Makes the CA and a server certificate for `server_hosts`.
    pub fn init(dir: &Path, server_hosts: &[String]) -> Result<Self> {
        if dir.join(KEY).exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("iryo agency CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from(1u64));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_secret(&dir.join(KEY), key.serialize_pem().as_bytes())?;
        write_file(&dir.join(CERT), cert.pem().as_bytes())?;
        let ca = Ca {
            dir: dir.to_path_buf(),
        };
        ca.save(&Register {
            next_serial: 2,
            crl_number: 0,
            issued: Vec::new(),
        })?;
        ca.write_crl()?;
        ca.issue(&Subject::Server(server_hosts.to_vec()), dir, 825)?;
        Ok(ca)
    }

    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(KEY).exists() {
            return Err(CaError::Missing(dir.to_path_buf()));
        }
        Ok(Ca {
            dir: dir.to_path_buf(),
        })
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(KEY).exists()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT)
    }
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL)
    }
    pub fn server_paths(&self) -> (PathBuf, PathBuf) {
        (self.dir.join(SERVER_CERT), self.dir.join(SERVER_KEY))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&read(&self.dir.join(KEY))?)?;
        Ok(Issuer::from_ca_cert_pem(&read(&self.dir.join(CERT))?, key)?)
    }

    /// Issues a certificate into `out` (`server.pem`/`server.key` for the server,
    /// `cert.pem`/`key.pem` for a client); the key file is mode 0600.
    pub fn issue(&self, subject: &Subject, out: &Path, days: i64) -> Result<IssuedCert> {
        let mut register = self.load()?;
        let serial = register.next_serial;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let (label, files) = match subject {
            Subject::Client(identity) => {
                if let ClientIdentity::Operator(n) = identity {
                    if !valid_operator(n) {
                        return Err(CaError::OperatorName(n.clone()));
                    }
                }
                params.distinguished_name = name(&identity.common_name());
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                (identity.common_name(), ("cert.pem", "key.pem"))
            }
            Subject::Server(hosts) => {
                params.distinguished_name = name(hosts.first().map_or("localhost", |h| h));
                params.subject_alt_names = hosts
                    .iter()
                    .map(|h| match h.parse::<std::net::IpAddr>() {
                        Ok(ip) => Ok(SanType::IpAddress(ip)),
                        Err(_) => h.clone().try_into().map(SanType::DnsName),
                    })
                    .collect::<std::result::Result<_, _>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                (
                    format!("server {}", hosts.join(",")),
                    (SERVER_CERT, SERVER_KEY),
                )
            }
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        std::fs::create_dir_all(out).map_err(io(out))?;
        let (cert_file, key_file) = (out.join(files.0), out.join(files.1));
        for f in [&cert_file, &key_file] {
            if f.exists() {
                std::fs::remove_file(f).map_err(io(f))?;
            }
        }
        write_secret(&key_file, key.serialize_pem().as_bytes())?;
        write_secret(&cert_file, cert.pem().as_bytes())?;
        let issued = IssuedCert {
            serial,
            subject: label,
            not_after: params.not_after.date().to_string(),
            revoked_at: None,
        };
        register.next_serial += 1;
        register.issued.push(issued.clone());
        self.save(&register)?;
        tracing::info!(serial, subject = %issued.subject, "certificate issued");
        Ok(issued)
    }

    /// Revokes every unrevoked certificate whose serial or subject is `what`
    /// (`42`, `insurer 01130012`, `operator sato`) and rewrites the revocation list.
    pub fn revoke(&self, what: &str) -> Result<Vec<IssuedCert>> {
        let mut register = self.load()?;
        let at = OffsetDateTime::now_utc().date().to_string();
        let mut revoked = Vec::new();
        for c in &mut register.issued {
            let hit = what.parse::<u64>().ok() == Some(c.serial) || c.subject == what;
            if hit && c.revoked_at.is_none() {
                c.revoked_at = Some(at.clone());
                revoked.push(c.clone());
            }
        }
        if revoked.is_empty() {
            return Err(CaError::NoMatch(what.into()));
        }
        self.save(&register)?;
        self.write_crl()?;
        Ok(revoked)
    }

    /// The revocation list in force here and its number.
    pub fn crl(&self) -> Result<(u64, String)> {
        Ok((self.load()?.crl_number, read(&self.crl_path())?))
    }

    /// Installs a revocation list numbered `number` that the CA wrote elsewhere (on
    /// the host holding its register), if it is newer than the one here; says if it
    /// was. The HTTPS front reloads it at its next connection.
    pub fn install_crl(&self, number: u64, pem: &str) -> Result<bool> {
        use rustls::pki_types::pem::PemObject;
        let mut register = self.load()?;
        if number <= register.crl_number {
            return Ok(false);
        }
        let parsed =
            rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>();
        if !matches!(parsed.as_deref(), Ok([_])) {
            return Err(CaError::Register {
                path: self.crl_path(),
                reason: format!("revocation list {number} from the database is not one PEM CRL"),
            });
        }
        replace_file(&self.crl_path(), pem.as_bytes())?;
        register.crl_number = number;
        self.save(&register)?;
        Ok(true)
    }

    pub fn list(&self) -> Result<Vec<IssuedCert>> {
        Ok(self.load()?.issued)
    }

    fn write_crl(&self) -> Result<()> {
        let mut register = self.load()?;
        register.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(register.crl_number),
            issuing_distribution_point: None,
            revoked_certs: register
                .issued
                .iter()
                .filter(|c| c.revoked_at.is_some())
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer()?)?;
        self.save(&register)?;
        replace_file(&self.crl_path(), crl.pem()?.as_bytes())
    }

    fn load(&self) -> Result<Register> {
        let path = self.dir.join(REGISTER);
        if !path.exists() {
            return Ok(Register::default());
        }
        serde_json::from_str(&read(&path)?).map_err(|e| CaError::Register {
            path,
            reason: e.to_string(),
        })
    }

    fn save(&self, r: &Register) -> Result<()> {
        let text = serde_json::to_string_pretty(r).map_err(|e| CaError::Register {
            path: self.dir.join(REGISTER),
            reason: e.to_string(),
        })?;
        replace_file(&self.dir.join(REGISTER), text.as_bytes())
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "iryo");
    dn.push(DnType::CommonName, cn);
    dn
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io(path))
}

/// Replaces a file whole: written aside, synced, then renamed over the old one, so a
/// reader never sees half of it.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_identifies_and_revokes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = Ca::init(&dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(matches!(Ca::init(&dir, &[]), Err(CaError::Exists(_))));
        let insurer: InsurerNumber = "01130012".parse().unwrap();
        let out = tmp.path().join("ins");
        let issued = ca
            .issue(
                &Subject::Client(ClientIdentity::Insurer(insurer.clone())),
                &out,
                365,
            )
            .unwrap();
        let pem = std::fs::read_to_string(out.join("cert.pem")).unwrap();
        let der = rustls_pem_der(&pem);
        assert_eq!(
            ClientIdentity::from_certificate(&der),
            Some(ClientIdentity::Insurer(insurer))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let revoked = ca.revoke(&issued.serial.to_string()).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(ca.revoke(&issued.serial.to_string()).is_err());
        assert!(matches!(
            ca.issue(
                &Subject::Client(ClientIdentity::Operator("a b".into())),
                &out,
                1
            ),
            Err(CaError::OperatorName(_))
        ));
    }

    fn rustls_pem_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    proptest::proptest! {
        /// A certificate's bytes only reach this after the handshake verified them, but
        /// garbage must still come out as "no identity", not a panic.
        #[test]
        fn arbitrary_certificates_never_panic(der in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            proptest::prop_assert!(ClientIdentity::from_certificate(&der).is_none());
        }

        #[test]
        fn common_names_round_trip(name in "[A-Za-z0-9._-]{1,64}") {
            let id = ClientIdentity::Operator(name);
            proptest::prop_assert_eq!(ClientIdentity::from_common_name(&id.common_name()), Some(id));
        }
    }
}
