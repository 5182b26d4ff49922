//! Per-person indexes derived from append-only logs. The writer appends to a log keyed
//! by sequence in the main database — an append touches only the last pages of one
//! B-tree, where an index keyed by person would touch one random page per entry, so
//! thousands of appends commit together cheaply. A folder thread copies each log, in
//! large sorted runs, into its per-person index in a second database file with a writer
//! of its own: folding never holds up the main writer. A reader takes the index and
//! then the part of the log not folded yet.
//!
//! Two logs are folded: the service-use log (the linkage DB's history, seed 4-1) and the
//! audit log (the entries about each patient).

use super::tables::{AUDIT_LEAVES, SERVICE_LOG};
use super::{decode, encode, Result, Store, StoreError};
use crate::audit::LogEntry;
use crate::registry::ServiceUse;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Each log key already folded sits below its mark, here.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("mark");

/// One log and the per-person index derived from it.
pub(super) struct Derived {
    /// The mark's name: the first log key not folded yet.
    mark: &'static str,
    /// The log's first key (where the mark starts).
    first: u64,
    log: TableDefinition<'static, u64, &'static [u8]>,
    /// (person, log key) → what the reader needs of the entry.
    index: TableDefinition<'static, (u64, u64), &'static [u8]>,
    /// The person a log entry is about, and what to index; `None` for entries about
    /// nobody.
    entry: fn(&[u8]) -> Result<Option<Indexed>>,
}

/// The person an entry is about, and the value its index holds.
type Indexed = (u64, Vec<u8>);

/// pid → its service uses, in the order they happened.
pub(super) const SERVICE_USE: Derived = Derived {
    mark: "folded",
    first: 1,
    log: SERVICE_LOG,
    index: TableDefinition::new("service_use"),
    entry: |v| {
        let (pid, u): (u64, ServiceUse) = decode(v)?;
        Ok(Some((pid, encode(&u)?)))
    },
};

/// Medical ID → the audit log's entries about it (the value is empty: the leaf holds
/// the entry).
pub(super) const AUDIT: Derived = Derived {
    mark: "audit_folded",
    first: 0,
    log: AUDIT_LEAVES,
    index: TableDefinition::new("audit_by_patient"),
    entry: |v| {
        Ok(decode::<LogEntry>(v)?
            .medical_id()
            .map(|m| (m.as_u64(), Vec::new())))
    },
};

const DERIVED: [&Derived; 2] = [&SERVICE_USE, &AUDIT];

/// Unfolded entries that make a fold worth it.
const FOLD_AT: u64 = 20_000;
/// Entries moved per fold transaction.
const FOLD_CHUNK: usize = 200_000;

/// Opens (or creates) the index file beside the main database.
pub(super) fn open(main: &Path) -> Result<Database> {
    let path = main.with_file_name("linkage.redb");
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .create(&path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.clone()),
            e => e.into(),
        })?;
    let tx = db.begin_write()?;
    tx.open_table(MARKS)?;
    for d in DERIVED {
        tx.open_table(d.index)?;
    }
    tx.commit()?;
    Ok(db)
}

fn mark(tx: &ReadTransaction, d: &Derived) -> Result<u64> {
    Ok(tx
        .open_table(MARKS)?
        .get(d.mark)?
        .map_or(d.first, |g| g.value()))
}

/// The entries about `person`, as (log key, indexed value), oldest first. `index` must
/// have been read before `main`, so that the mark never covers entries `main` lacks.
pub(super) fn about(
    index: &ReadTransaction,
    main: &ReadTransaction,
    d: &Derived,
    person: u64,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in index
        .open_table(d.index)?
        .range((person, 0)..=(person, u64::MAX))?
    {
        let (k, v) = item?;
        out.push((k.value().1, v.value().to_vec()));
    }
    // Everything from the mark on is newer than everything folded.
    for item in main.open_table(d.log)?.range(mark(index, d)?..)? {
        let (k, v) = item?;
        if let Some((who, value)) = (d.entry)(v.value())? {
            if who == person {
                out.push((k.value(), value));
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Entries in `d`'s log that its index does not hold yet.
    pub(super) fn unfolded(&self, d: &Derived) -> Result<u64> {
        let from = mark(&self.linkage.begin_read()?, d)?;
        let tx = self.db.begin_read()?;
        let last = tx.open_table(d.log)?.last()?.map(|(k, _)| k.value());
        Ok(last.map_or(0, |l| (l + 1).saturating_sub(from)))
    }

    /// Service-use entries not yet in the per-person index.
    pub fn unfolded_linkage(&self) -> Result<u64> {
        self.unfolded(&SERVICE_USE)
    }

    /// Copies up to `limit` entries of `d`'s log into its index, in one transaction of
    /// the index file. Returns how many log entries it passed.
    pub(super) fn fold(&self, d: &Derived, limit: usize) -> Result<u64> {
        let tx = self.linkage.begin_write()?;
        let passed = {
            let mut marks = tx.open_table(MARKS)?;
            let from = marks.get(d.mark)?.map_or(d.first, |g| g.value());
            let main = self.db.begin_read()?;
            let log = main.open_table(d.log)?;
            let (mut entries, mut next, mut passed) = (Vec::new(), from, 0u64);
            for item in log.range(from..)?.take(limit) {
                let (k, v) = item?;
                let key = k.value();
                if let Some((person, value)) = (d.entry)(v.value())? {
                    entries.push(((person, key), value));
                }
                next = key + 1;
                passed += 1;
            }
            if passed == 0 {
                return Ok(0);
            }
            entries.sort_unstable_by_key(|e| e.0);
            let mut index = tx.open_table(d.index)?;
            for (k, v) in &entries {
                index.insert(*k, v.as_slice())?;
            }
            marks.insert(d.mark, next)?;
            passed
        };
        tx.commit()?;
        tracing::debug!(log = d.mark, passed, "log folded into its per-person index");
        Ok(passed)
    }

    /// Folds each log that has enough unfolded entries; returns how many it passed.
    pub fn fold_if_due(&self) -> Result<u64> {
        let mut passed = 0;
        for d in DERIVED {
            if self.unfolded(d)? >= FOLD_AT {
                passed += self.fold(d, FOLD_CHUNK)?;
            }
        }
        Ok(passed)
    }
}

/// Folds in the background until the store is the last one holding it.
pub fn start_folder(store: Arc<Store>, every: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        yield_to_answers();
        while Arc::strong_count(&store) > 1 {
            if let Err(e) = store.fold_if_due() {
                tracing::error!(error = %e, "folding a log into its index failed");
            }
            std::thread::sleep(every);
        }
    })
}

/// Folding can wait; answers cannot. A fold is a burst of a core's work for a fraction
/// of a second, and on a small machine it would otherwise delay every check and grant
/// queued behind it (`iryo-bench-net`, 20,000 checks/s: the slowest check took 26–46 ms
/// with the folder at normal priority, 20–23 ms below it). At a lower
/// priority the folder still gets every idle moment, and readers take what it has not
/// folded yet from the log.
fn yield_to_answers() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread's own id, no memory is passed.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        if r != 0 {
            tracing::debug!("the folder keeps the normal priority");
        }
    }
}
