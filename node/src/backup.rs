//! Online backup of a node and its restore, on `iryo_p2p::backup`: `node.redb` read in
//! one read transaction and written into a fresh file, with the node's key, while the
//! node serves; restore checks every file against the manifest first.

use crate::store::{Store, StoreError};
use iryo_p2p::backup::{self as b, BackupError, Manifest};
use std::collections::BTreeMap;
use std::path::Path;

/// The key's name inside a backup, wherever `key_file` keeps it.
const KEY: &str = "node.key";

impl Store {
    /// Writes a consistent copy of the node's database and its key file into `out`
    /// (new or empty), the manifest last.
    pub fn backup(&self, key_file: &Path, out: &Path) -> Result<Manifest, BackupError> {
        b::start(out)?;
        let (snapshot, records) = self.snapshot()?;
        let taken_at = chrono::Utc::now().timestamp();
        Store::copy_snapshot(&snapshot, &b::fresh(&out.join("node.redb"))?)?;
        drop(snapshot);
        let key_dir = key_file.parent().unwrap_or(Path::new("."));
        let key_name = key_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        b::copy_file(key_dir, out, &key_name)?;
        if key_name != KEY {
            std::fs::rename(out.join(&key_name), out.join(KEY)).map_err(|source| {
                BackupError::File {
                    path: out.join(KEY),
                    source,
                }
            })?;
        }
        let counts = BTreeMap::from([("records".to_string(), records)]);
        b::finish(out, vec!["node.redb".into(), KEY.into()], taken_at, counts)
    }
}

/// Restores a backup into `data_dir` (which must not hold node.redb) and the key to
/// `key_file`, after checking every file against the manifest.
pub fn restore(from: &Path, data_dir: &Path, key_file: &Path) -> Result<Manifest, BackupError> {
    if key_file.exists() {
        return Err(BackupError::NotEmpty(key_file.to_path_buf()));
    }
    let manifest = b::restore_files(from, data_dir, "node.redb")?;
    let restored = data_dir.join(KEY);
    if restored != key_file {
        if let Some(parent) = key_file.parent() {
            iryo_p2p::files::create_private_dir(parent).map_err(|source| BackupError::File {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::rename(&restored, key_file).map_err(|source| BackupError::File {
            path: key_file.to_path_buf(),
            source,
        })?;
    }
    // The restored file opens, and its pages check.
    Store::open(&data_dir.join("node.redb")).map_err(|e| match e {
        StoreError::Db(e) => BackupError::Db(e),
        e => BackupError::Bad(e.to_string()),
    })?;
    Ok(manifest)
}
