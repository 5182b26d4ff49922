//! Online backup of the directory's store and its restore, on `iryo_p2p::backup`: each
//! database read in one read transaction and written into a fresh file. The intake
//! files are read first and the main file after: an entry moved out of an intake file
//! in between is then in the main copy with its counter past it, so it is neither lost
//! nor moved twice. `linkage.redb` holds only indexes made from the logs; restore
//! makes it again.

use super::tables::*;
use super::{Result, Store, StoreError};
use iryo_p2p::backup::{self as b, BackupError, Manifest};
use redb::{ReadableDatabase, ReadableTableMetadata};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

impl From<BackupError> for StoreError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::File { path, source } => StoreError::File(path, source),
            BackupError::Db(e) => StoreError::Db(e),
            BackupError::NotEmpty(p) => StoreError::Exists(p),
            e => StoreError::BadBackup(e.to_string()),
        }
    }
}

/// The main file's tables; a table the file holds that is not here fails the backup
/// rather than being missed.
const MAIN_TABLES: [&str; 28] = [
    "settings",
    "counters",
    "persons",
    "my_numbers",
    "medical_ids",
    "cards",
    "service_log",
    "deaths",
    "conflicts",
    "conflict_keys",
    "mismatches",
    "mismatch_keys",
    "notices",
    "institutions",
    "institution_keys",
    "consents",
    "grants",
    "notification_ids",
    "audit_leaves",
    "audit_subtrees",
    "audit_heads",
    "portal_accounts",
    "closed_grants",
    "idempotency",
    "idempotency_by_time",
    "witnessed_checkpoints",
    "subjects",
    "registry_outbox",
];

fn copy_main(from: &redb::ReadTransaction, to: &redb::Database) -> Result<()> {
    b::only_tables(from, &MAIN_TABLES, "directory.redb")?;
    b::copy_table(from, to, SETTINGS)?;
    b::copy_table(from, to, COUNTERS)?;
    b::copy_table(from, to, PERSONS)?;
    b::copy_table(from, to, MY_NUMBERS)?;
    b::copy_table(from, to, MEDICAL_IDS)?;
    b::copy_table(from, to, CARDS)?;
    b::copy_table(from, to, SERVICE_LOG)?;
    b::copy_table(from, to, DEATHS)?;
    b::copy_table(from, to, CONFLICTS)?;
    b::copy_table(from, to, CONFLICT_KEYS)?;
    b::copy_table(from, to, MISMATCHES)?;
    b::copy_table(from, to, MISMATCH_KEYS)?;
    b::copy_table(from, to, NOTICES)?;
    b::copy_table(from, to, INSTITUTIONS)?;
    b::copy_table(from, to, INSTITUTION_KEYS)?;
    b::copy_table(from, to, CONSENTS)?;
    b::copy_table(from, to, GRANTS)?;
    b::copy_table(from, to, NOTIFICATION_IDS)?;
    b::copy_table(from, to, AUDIT_LEAVES)?;
    b::copy_table(from, to, AUDIT_NODES)?;
    b::copy_table(from, to, AUDIT_HEADS)?;
    b::copy_table(from, to, PORTAL_ACCOUNTS)?;
    b::copy_table(from, to, CLOSED_GRANTS)?;
    b::copy_table(from, to, super::idempotency::KEPT)?;
    b::copy_table(from, to, super::idempotency::KEPT_BY_TIME)?;
    b::copy_table(from, to, WITNESSED)?;
    b::copy_table(from, to, SUBJECTS)?;
    b::copy_table(from, to, REGISTRY_OUTBOX)?;
    Ok(())
}

impl Store {
    /// Writes a consistent copy of the store, and the files `extra` of the data
    /// directory (keys, the CA), into `out`, which must not exist or be empty; the
    /// manifest last. Safe while serving: only read transactions are held.
    pub fn backup(&self, data_dir: &Path, extra: &[PathBuf], out: &Path) -> Result<Manifest> {
        b::start(out)?;
        // Intake snapshots first, then the main one (see the module's note).
        let intake: Vec<redb::ReadTransaction> = self
            .intake
            .iter()
            .map(super::intake::IntakeFile::snapshot)
            .collect::<Result<_>>()?;
        let main = self.db.begin_read()?;
        let taken_at = crate::registry::now();
        let mut names = vec!["directory.redb".to_string()];
        copy_main(&main, &b::fresh(&out.join(&names[0]))?)?;
        for (i, snapshot) in intake.iter().enumerate() {
            let name = format!("intake-{i}.redb");
            super::intake::copy_file(snapshot, &b::fresh(&out.join(&name))?)?;
            names.push(name);
        }
        let counts = BTreeMap::from([
            ("persons".to_string(), main.open_table(PERSONS)?.len()?),
            (
                "audit_entries".to_string(),
                main.open_table(AUDIT_LEAVES)?.len()?,
            ),
        ]);
        drop(main);
        for rel in extra {
            let rel = rel.to_string_lossy().into_owned();
            b::copy_file(data_dir, out, &rel)?;
            names.push(rel);
        }
        Ok(b::finish(out, names, taken_at, counts)?)
    }
}

/// Restores a backup into `data_dir`, which must hold no database: checks every file
/// against the manifest, copies them (0600, directories 0700) and makes
/// `linkage.redb` again from the logs. Returns the manifest and how many log entries
/// were indexed.
pub fn restore(from: &Path, data_dir: &Path, cache_mib: usize) -> Result<(Manifest, u64)> {
    let manifest = b::restore_files(from, data_dir, "directory.redb")?;
    let (_, folded) = Store::rebuild_linkage(&data_dir.join("directory.redb"), cache_mib)?;
    Ok((manifest, folded))
}
