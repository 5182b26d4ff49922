//! The node's Ed25519 identity (its libp2p key, which TLS proves to peers) and the
//! registration request the agency turns into a membership.

use ed25519_dalek::SigningKey;
use iryo_proto::federation::Registration;
use iryo_proto::signed::Signed;
use iryo_proto::InstitutionCode;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a 32-byte key")]
    Malformed(PathBuf),
    #[error("{0}: readable by others (mode {1:o}); run chmod 600")]
    Permissions(PathBuf, u32),
    #[error("{0}: exists already; refusing to overwrite a node identity")]
    Exists(PathBuf),
    #[error("the OS random source failed: {0}")]
    Random(String),
}

pub fn generate_key(path: &Path) -> Result<SigningKey, IdentityError> {
    if path.exists() {
        return Err(IdentityError::Exists(path.to_path_buf()));
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
    let io = |e| IdentityError::Io(path.to_path_buf(), e);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(&seed).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn load_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let io = |e| IdentityError::Io(path.to_path_buf(), e);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Permissions(path.to_path_buf(), mode));
        }
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| IdentityError::Malformed(path.to_path_buf()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The libp2p PeerId of a public key.
pub fn peer_id(public_key: &[u8; 32]) -> Option<libp2p::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(public_key).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The registration request file: readable fields for the operator, and the signed
/// statement the directory verifies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationFile {
    pub code: InstitutionCode,
    pub name: String,
    pub kind: iryo_proto::PointTableKind,
    pub public_key: String,
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub signed: Signed<Registration>,
}

impl RegistrationFile {
    pub fn new(
        key: &SigningKey,
        code: InstitutionCode,
        name: &str,
        addresses: Vec<String>,
        at: i64,
    ) -> Self {
        let public_key = key.verifying_key().to_bytes();
        let reg = Registration {
            code,
            name: name.to_string(),
            public_key,
            addresses: addresses.clone(),
            at,
        };
        Self {
            code,
            name: name.to_string(),
            kind: code.kind(),
            public_key: iryo_proto::merkle::to_hex(&public_key),
            peer_id: peer_id(&public_key)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            addresses,
            signed: Signed::sign(&reg, key),
        }
    }
}
