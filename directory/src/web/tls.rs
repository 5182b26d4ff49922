//! The HTTPS front's TLS: the server certificate from the agency CA, and client
//! certificates optional at the handshake (the portal needs none) but, when presented,
//! verified against the CA and its revocation list. The configuration is rebuilt when
//! `ca revoke` rewrites the list or `ca issue --server` the server's certificate, so a
//! revoked certificate is refused from its next connection on without a restart.

use crate::ca::Ca;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// When the revocation list and the server certificate last changed.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

pub struct TlsConfigs {
    ca_cert: PathBuf,
    crl: PathBuf,
    server: (PathBuf, PathBuf),
    current: Mutex<Option<(Stamp, Arc<ServerConfig>)>>,
}

impl TlsConfigs {
    pub fn new(ca: &Ca) -> Result<Self, TlsError> {
        let t = Self {
            ca_cert: ca.cert_path(),
            crl: ca.crl_path(),
            server: ca.server_paths(),
            current: Mutex::new(None),
        };
        t.current()?;
        Ok(t)
    }

    /// The configuration for a new connection, rebuilt if either file changed.
    pub fn current(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stamp = (modified(&self.crl), modified(&self.server.0));
        let mut guard = self
            .current
            .lock()
            .map_err(|_| TlsError::Config("lock poisoned".into()))?;
        if let Some((s, c)) = guard.as_ref() {
            if *s == stamp {
                return Ok(c.clone());
            }
        }
        let config = Arc::new(self.build()?);
        if guard.is_some() {
            tracing::info!("revocation list or server certificate changed; TLS reloaded");
        }
        *guard = Some((stamp, config.clone()));
        Ok(config)
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for c in certs(&self.ca_cert)? {
            roots.add(c).map_err(|e| file(&self.ca_cert, e))?;
        }
        let crls = CertificateRevocationListDer::pem_file_iter(&self.crl)
            .map_err(|e| file(&self.crl, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file(&self.crl, e))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let (cert, key) = &self.server;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(cert)?, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(path, e))
}

fn file(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
