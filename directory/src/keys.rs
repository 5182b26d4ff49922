//! The agency's secret keys: the Ed25519 root key that signs memberships and grants,
//! and the FF1 key that issues medical IDs. Each lives in its own file, mode 0600.

use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: expected 32 bytes, found {len}")]
    Length { path: PathBuf, len: usize },
    #[error("{path}: readable by others (mode {mode:o}); run chmod 600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error(
        "{0} is missing. Every node's configured directory address names the peer id of \
         this key: restore it from the backup, or, to start afresh, make a new one with \
         `iryo-directory keys new-p2p` and give every node the new address"
    )]
    MissingServiceKey(PathBuf),
    #[error("{0} exists already; a new one would change the directory's peer id")]
    ServiceKeyExists(PathBuf),
}

pub struct AgencyKeys {
    pub root: SigningKey,
    /// The FF1 key; `None` on an exchange authority, which issues no medical ID.
    pub issuance: Option<[u8; 32]>,
}

const ROOT_FILE: &str = "agency-root.ed25519";
const ISSUANCE_FILE: &str = "issuance-ff1.aes256";
const SERVICE_FILE: &str = "directory-p2p.ed25519";

pub fn random32() -> Result<[u8; 32], KeyError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

impl AgencyKeys {
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            root: SigningKey::from_bytes(&random32()?),
            issuance: Some(random32()?),
        })
    }

    /// An exchange authority's keys: the root key alone.
    pub fn generate_root_only() -> Result<Self, KeyError> {
        Ok(Self {
            root: SigningKey::from_bytes(&random32()?),
            issuance: None,
        })
    }

    /// Writes both keys into `dir`, refusing to overwrite existing ones.
    pub fn write(&self, dir: &Path) -> Result<(), KeyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        crate::files::create_private_dir(dir).map_err(io(dir))?;
        write_secret(&dir.join(ROOT_FILE), &self.root.to_bytes())?;
        if let Some(issuance) = self.issuance {
            write_secret(&dir.join(ISSUANCE_FILE), &issuance)?;
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let root = read32(&dir.join(ROOT_FILE))?;
        // An exchange authority has none; issuing without one fails by name
        // (`Context::issuer_for`).
        let path = dir.join(ISSUANCE_FILE);
        let issuance = if path.exists() {
            Some(read32(&path)?)
        } else {
            None
        };
        Ok(Self {
            root: SigningKey::from_bytes(&root),
            issuance,
        })
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(ROOT_FILE).exists() || dir.join(ISSUANCE_FILE).exists()
    }
}

/// The directory service's own libp2p identity, made by `init` (or `keys new-p2p`).
/// It is not the root key: the root key only signs, it never speaks TLS. A missing
/// one is an error, never silently replaced: nodes dial the directory by its peer id.
pub fn service_identity(dir: &Path) -> Result<[u8; 32], KeyError> {
    let path = dir.join(SERVICE_FILE);
    if !path.exists() {
        return Err(KeyError::MissingServiceKey(path));
    }
    read32(&path)
}

/// Makes the directory service's libp2p identity; refuses when one exists.
pub fn new_service_identity(dir: &Path) -> Result<[u8; 32], KeyError> {
    let path = dir.join(SERVICE_FILE);
    if path.exists() {
        return Err(KeyError::ServiceKeyExists(path));
    }
    let key = random32()?;
    write_secret(&path, &key)?;
    Ok(key)
}

/// Writes a new secret file readable by its owner alone; never overwrites one. The
/// bytes go to a temporary file that is synced and then linked into place, so that a
/// crash or a full disk leaves either no key file or a whole one, never a short one.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    crate::files::write_new_secret(path, bytes).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read32(path: &Path) -> Result<[u8; 32], KeyError> {
    use crate::files::SecretError;
    crate::files::read_secret32(path).map_err(|e| match e {
        SecretError::Permissions(mode) => KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        },
        SecretError::Length(len) => KeyError::Length {
            path: path.to_path_buf(),
            len,
        },
        SecretError::Io(source) => KeyError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = AgencyKeys::generate().unwrap();
        keys.write(dir.path()).unwrap();
        assert!(keys.write(dir.path()).is_err(), "never overwrites keys");
        let back = AgencyKeys::load(dir.path()).unwrap();
        assert_eq!(back.issuance, keys.issuance);
        assert_eq!(back.root.to_bytes(), keys.root.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(ROOT_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
