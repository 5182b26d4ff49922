//! The linkage DB's service history (seed 4-1). Every eligibility check appends one entry
//! to a log keyed by sequence in the main database — an append touches only the last
//! pages of one B-tree, so thousands of checks commit together cheaply. A folder thread
//! copies the log, in large sorted runs, into a per-person index kept in a second
//! database file, which has its own writer: folding never holds up checks. A reader takes
//! the index and then the part of the log not folded yet.

use super::tables::*;
use super::{decode, encode, Result, Store, StoreError};
use crate::registry::ServiceUse;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// (pid, sequence) → ServiceUse, in the linkage index file.
const BY_PERSON: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("service_use");
/// "folded": the first log sequence not yet in BY_PERSON.
const MARK: TableDefinition<&str, u64> = TableDefinition::new("mark");

/// Unfolded entries that make a fold worth it.
const FOLD_AT: u64 = 20_000;
/// Entries moved per fold transaction.
const FOLD_CHUNK: usize = 200_000;

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
    tx.open_table(BY_PERSON)?;
    tx.open_table(MARK)?;
    tx.commit()?;
    Ok(db)
}

pub(super) fn append(t: &mut Tables<'_>, pid: u64, u: &ServiceUse) -> Result<()> {
    let seq = t.next(SERVICE_SEQ)?;
    t.service_log.insert(seq, encode(&(pid, u))?.as_slice())?;
    Ok(())
}

fn mark(tx: &ReadTransaction) -> Result<u64> {
    Ok(tx.open_table(MARK)?.get("folded")?.map_or(1, |g| g.value()))
}

pub(super) fn of_person(
    linkage: &ReadTransaction,
    main: &ReadTransaction,
    pid: u64,
) -> Result<Vec<ServiceUse>> {
    let mut out = Vec::new();
    for item in linkage
        .open_table(BY_PERSON)?
        .range((pid, 0)..=(pid, u64::MAX))?
    {
        out.push(decode(item?.1.value())?);
    }
    // Everything from the mark on is newer than everything folded.
    for item in main.open_table(SERVICE_LOG)?.range(mark(linkage)?..)? {
        let (who, u): (u64, ServiceUse) = decode(item?.1.value())?;
        if who == pid {
            out.push(u);
        }
    }
    Ok(out)
}

pub(super) fn count(main: &ReadTransaction) -> Result<u64> {
    Ok(main.open_table(SERVICE_LOG)?.len()?)
}

impl Store {
    /// Entries in the log that the per-person index does not hold yet.
    pub fn unfolded_linkage(&self) -> Result<u64> {
        let from = mark(&self.linkage.begin_read()?)?;
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SERVICE_LOG)?;
        let last = t.last()?.map_or(0, |(k, _)| k.value());
        Ok((last + 1).saturating_sub(from))
    }

    /// Copies up to `limit` log entries into the per-person index, in one transaction
    /// of the index file. Returns how many.
    pub fn fold_linkage(&self, limit: usize) -> Result<u64> {
        let tx = self.linkage.begin_write()?;
        let moved = {
            let mut marks = tx.open_table(MARK)?;
            let from = marks.get("folded")?.map_or(1, |g| g.value());
            let main = self.db.begin_read()?;
            let log = main.open_table(SERVICE_LOG)?;
            let mut entries = Vec::new();
            for item in log.range(from..)?.take(limit) {
                let (seq, v) = item?;
                let (pid, u): (u64, ServiceUse) = decode(v.value())?;
                entries.push(((pid, seq.value()), encode(&u)?));
            }
            let Some(next) = entries.last().map(|e| e.0 .1 + 1) else {
                return Ok(0);
            };
            entries.sort_unstable_by_key(|e| e.0);
            let mut index = tx.open_table(BY_PERSON)?;
            for (k, v) in &entries {
                index.insert(*k, v.as_slice())?;
            }
            marks.insert("folded", next)?;
            entries.len() as u64
        };
        tx.commit()?;
        tracing::debug!(moved, "service-use log folded into the per-person index");
        Ok(moved)
    }

    pub fn fold_linkage_if_due(&self) -> Result<u64> {
        if self.unfolded_linkage()? >= FOLD_AT {
            self.fold_linkage(FOLD_CHUNK)
        } else {
            Ok(0)
        }
    }
}

/// Folds in the background until the store is the last one holding it.
pub fn start_folder(store: Arc<Store>, every: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        yield_to_answers();
        while Arc::strong_count(&store) > 1 {
            if let Err(e) = store.fold_linkage_if_due() {
                tracing::error!(error = %e, "folding service use failed");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::Method;

    #[test]
    fn history_reads_the_same_before_and_after_a_fold() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("d.redb"), 16, Method::Fpe).unwrap();
        let use_at = |day: u32| ServiceUse {
            institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
            date: chrono::NaiveDate::from_ymd_opt(2026, 1, day).unwrap(),
            eligible: true,
            at: 0,
        };
        s.write(|t| {
            for day in 1..=3 {
                append(t, 7, &use_at(day))?;
                append(t, 8, &use_at(day + 10))?;
            }
            Ok(())
        })
        .unwrap();
        let before = s.reader().unwrap().service_uses(7).unwrap();
        assert_eq!(before.len(), 3);
        assert_eq!(s.unfolded_linkage().unwrap(), 6);
        assert_eq!(s.fold_linkage(4).unwrap(), 4);
        assert_eq!(s.reader().unwrap().service_uses(7).unwrap(), before);
        assert_eq!(s.fold_linkage(100).unwrap(), 2);
        assert_eq!(s.unfolded_linkage().unwrap(), 0);
        s.write(|t| append(t, 7, &use_at(4))).unwrap();
        let after = s.reader().unwrap().service_uses(7).unwrap();
        assert_eq!(&after[..3], &before[..]);
        assert_eq!(after[3].date.to_string(), "2026-01-04");
        assert_eq!(s.counts().unwrap().service_uses, 7);
        drop(s);
        let reopened = Store::open(&dir.path().join("d.redb"), 16).unwrap();
        assert_eq!(reopened.reader().unwrap().service_uses(7).unwrap(), after);
    }
}
