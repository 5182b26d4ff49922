//! Online backups of redb files, for the directory and the nodes alike.
//!
//! Copying a serving redb file byte for byte gives a copy that mostly does not open:
//! redb rewrites its header and reuses freed pages while the copy runs. Instead a
//! database is read in one read transaction — a snapshot that nothing changes — and
//! written into a fresh file, table by table (`copy_table`). A manifest, written last
//! and atomically, lists every file with its size and SHA-256 (`finish`): a backup
//! without one is partial, and `check` refuses it, as it refuses a file that differs.

use redb::{Database, Key, ReadTransaction, TableDefinition, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("{}: holds files already; give a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("not a backup to restore: {0}")]
    Bad(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for BackupError {
            fn from(e: $t) -> Self {
                BackupError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, BackupError>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupFile {
    /// The path inside the data directory, e.g. `directory.redb` or `keys/agency-root.ed25519`.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When the snapshot was taken, seconds since the epoch.
    pub taken_at: i64,
    /// What the backup holds, by name (persons, audit entries, records…).
    pub counts: BTreeMap<String, u64>,
    pub files: Vec<BackupFile>,
}

impl Manifest {
    pub fn count(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or_default()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

fn file_error(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Rows copied per commit: bounds the memory a large table takes.
const ROWS_PER_COMMIT: usize = 50_000;

/// Copies table `def` of the snapshot `from` into `to`; a table the snapshot does not
/// hold is no error. Returns the rows copied.
pub fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64> {
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut rows = redb::ReadableTable::iter(&src)?;
    let mut n = 0u64;
    loop {
        let tx = to.begin_write()?;
        let mut more = false;
        {
            let mut dst = tx.open_table(def)?;
            for _ in 0..ROWS_PER_COMMIT {
                let Some(row) = rows.next() else { break };
                let (k, v) = row?;
                dst.insert(k.value(), v.value())?;
                n += 1;
                more = true;
            }
        }
        tx.commit()?;
        if !more {
            return Ok(n);
        }
    }
}

/// Refuses a snapshot holding a table `known` does not name: a backup that copied
/// only the tables it knows would miss it.
pub fn only_tables(from: &ReadTransaction, known: &[&str], file: &str) -> Result<()> {
    use redb::TableHandle;
    for t in from.list_tables()? {
        if !known.contains(&t.name()) {
            return Err(BackupError::Bad(format!(
                "{file} holds table {:?}, which the backup does not know",
                t.name()
            )));
        }
    }
    Ok(())
}

/// Makes `out` a new, private directory for a backup; refuses one that holds files.
pub fn start(out: &Path) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(file_error(out))?
            .next()
            .is_some()
    {
        return Err(BackupError::NotEmpty(out.to_path_buf()));
    }
    crate::files::create_private_dir(out).map_err(file_error(out))
}

/// A fresh database file in a backup, readable by its owner alone.
pub fn fresh(path: &Path) -> Result<Database> {
    let db = Database::create(path)?;
    crate::files::make_private(path).map_err(file_error(path))?;
    Ok(db)
}

/// Copies file `rel` of `from` (a data directory or a backup) to the same place under
/// `to`: 0600, its directories 0700, synced.
pub fn copy_file(from: &Path, to: &Path, rel: &str) -> Result<()> {
    let (src, dst) = (from.join(rel), to.join(rel));
    if let Some(parent) = dst.parent() {
        crate::files::create_private_dir(parent).map_err(file_error(parent))?;
    }
    let bytes = std::fs::read(&src).map_err(file_error(&src))?;
    let mut f = crate::files::create_private(&dst).map_err(file_error(&dst))?;
    f.write_all(&bytes).map_err(file_error(&dst))?;
    f.sync_all().map_err(file_error(&dst))
}

/// The SHA-256 of a file, in hex.
fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(file_error(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(file_error(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(file_error(path))
}

/// Syncs the backup's files and writes its manifest, last and atomically.
pub fn finish(
    out: &Path,
    names: Vec<String>,
    taken_at: i64,
    counts: BTreeMap<String, u64>,
) -> Result<Manifest> {
    let mut files = Vec::new();
    for name in names {
        let path = out.join(&name);
        sync(&path)?;
        files.push(BackupFile {
            bytes: std::fs::metadata(&path).map_err(file_error(&path))?.len(),
            sha256: sha256(&path)?,
            name,
        });
    }
    let manifest = Manifest {
        format: 1,
        taken_at,
        counts,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Bad(format!("the manifest: {e}")))?;
    let tmp = out.join(format!("{MANIFEST}.tmp"));
    let mut f = crate::files::create_private(&tmp).map_err(file_error(&tmp))?;
    f.write_all(&text).map_err(file_error(&tmp))?;
    f.sync_all().map_err(file_error(&tmp))?;
    std::fs::rename(&tmp, out.join(MANIFEST)).map_err(file_error(out))?;
    sync(out)?;
    Ok(manifest)
}

/// Checks a backup against its manifest: every file listed is there with its size and
/// SHA-256. A backup without a manifest is partial.
pub fn check(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| {
        BackupError::Bad(format!(
            "{}: {e}; without it the backup is partial (it was interrupted, or this is not a backup)",
            path.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| BackupError::Bad(format!("{}: {e}", path.display())))?;
    if manifest.format != 1 {
        return Err(BackupError::Bad(format!(
            "{}: format {} is not one this version reads (1)",
            path.display(),
            manifest.format
        )));
    }
    for f in &manifest.files {
        if f.name.split('/').any(|p| p == "..") || Path::new(&f.name).is_absolute() {
            return Err(BackupError::Bad(format!(
                "{:?}: not a name inside the backup",
                f.name
            )));
        }
        let p = dir.join(&f.name);
        let bytes = std::fs::metadata(&p)
            .map_err(|e| BackupError::Bad(format!("{}: {e}", p.display())))?
            .len();
        if bytes != f.bytes {
            return Err(BackupError::Bad(format!(
                "{}: {bytes} bytes where the manifest says {}",
                p.display(),
                f.bytes
            )));
        }
        if sha256(&p)? != f.sha256 {
            return Err(BackupError::Bad(format!(
                "{}: its SHA-256 differs from the manifest's: the file was changed or damaged",
                p.display()
            )));
        }
    }
    Ok(manifest)
}

/// Copies a checked backup's files into `data_dir`, which must not hold `main` (the
/// database file a restore would replace).
pub fn restore_files(from: &Path, data_dir: &Path, main: &str) -> Result<Manifest> {
    let manifest = check(from)?;
    if data_dir.join(main).exists() {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    crate::files::create_private_dir(data_dir).map_err(file_error(data_dir))?;
    for f in &manifest.files {
        copy_file(from, data_dir, &f.name)?;
    }
    sync(data_dir)?;
    Ok(manifest)
}
