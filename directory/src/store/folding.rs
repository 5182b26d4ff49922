//! Per-person indexes derived from append-only logs. The writer appends to a log keyed
//! by sequence in the main database — an append touches only the last pages of one
//! B-tree, where an index keyed by person would touch one random page per entry, so
//! thousands of appends commit together cheaply. A folder thread copies each log into
//! its per-person index in a second database file with a writer of its own: folding
//! never holds up the main writer. A reader takes the index and then the part of the
//! log not folded yet.
//!
//! The index is kept as sorted runs, as a log-structured merge tree keeps them: a fold
//! writes its entries, sorted by person, as one new run at the end of the index table,
//! and runs of about the same size are merged into one, again at the end. Inserting a
//! fold's entries among all earlier ones instead touched one random page per entry, so
//! at 20,000 checks/s every fold of the service-use log rewrote nearly the whole index
//! and waited for it in one `fdatasync`, and the checks answered meanwhile waited too
//! (`iryo-bench-net`: p99 12–13 ms with folding, 6–7 ms without). Appended runs cost a
//! few hundred sequential pages a fold, and each entry is rewritten once a level.
//!
//! Two logs are folded: the service-use log (the linkage DB's history, proposal §4-1) and the
//! audit log (the entries about each patient).

use super::tables::{AUDIT_LEAVES, SERVICE_LOG};
use super::{decode, encode, Result, Store};
use crate::audit::LogEntry;
use crate::registry::ServiceUse;
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, TableHandle,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Each log key already folded sits below its mark, here.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("mark");

/// (log's mark name, run) → the run's entry count: every run of every index.
const RUNS: TableDefinition<(&str, u64), u64> = TableDefinition::new("runs");

/// (run, person, log key) → what the reader needs of the entry.
type Index = TableDefinition<'static, (u64, u64, u64), &'static [u8]>;

/// One log and the per-person index derived from it.
pub(super) struct Derived {
    /// The mark's name: the first log key not folded yet. It also names the log's runs.
    mark: &'static str,
    /// The log's first key (where the mark starts).
    first: u64,
    log: TableDefinition<'static, u64, &'static [u8]>,
    index: Index,
    /// The index as one (person, log key) table, before runs; dropped and refolded
    /// when a database from before is opened.
    before_runs: &'static str,
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
    index: TableDefinition::new("service_use_runs"),
    before_runs: "service_use",
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
    index: TableDefinition::new("audit_by_patient_runs"),
    before_runs: "audit_by_patient",
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
/// Runs of one level merged into one of the next.
const FANOUT: usize = 4;
/// Runs of this level are no longer merged: a merge is one transaction, and beyond
/// about five million entries (FOLD_AT × 4⁴) its dirty pages would take too much
/// memory. Such runs accumulate one per five million entries; a reader looks in each.
const FINAL_LEVEL: u32 = 4;

/// A run's level: 0 for a fold's run, one more for each FANOUT-fold of size.
fn level(entries: u64) -> u32 {
    let (mut level, mut bound) = (0, FOLD_AT * FANOUT as u64);
    while entries >= bound && level < FINAL_LEVEL {
        level += 1;
        bound = bound.saturating_mul(FANOUT as u64);
    }
    level
}

/// The index file's name, beside the main database.
pub(super) const FILE_NAME: &str = "linkage.redb";

/// Opens (or creates) the index file beside the main database.
pub(super) fn open(main: &Path) -> Result<Database> {
    let db = super::side_file(&main.with_file_name(FILE_NAME), 64, super::Writes::Paced)?;
    let tx = db.begin_write()?;
    {
        let mut marks = tx.open_table(MARKS)?;
        tx.open_table(RUNS)?;
        for d in DERIVED {
            tx.open_table(d.index)?;
            let before: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new(d.before_runs);
            if tx.delete_table(before)? {
                // Derived data: the folder rebuilds it from the log, and readers take
                // the log meanwhile.
                marks.remove(d.mark)?;
                tracing::info!(
                    index = before.name(),
                    "index from before runs dropped; it is refolded from its log"
                );
            }
        }
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

/// `d`'s runs, oldest first, with their entry counts.
fn runs(t: &impl ReadableTable<(&'static str, u64), u64>, d: &Derived) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for item in t.range((d.mark, 0)..=(d.mark, u64::MAX))? {
        let (k, v) = item?;
        out.push((k.value().1, v.value()));
    }
    Ok(out)
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
    let table = index.open_table(d.index)?;
    for (run, _) in runs(&index.open_table(RUNS)?, d)? {
        for item in table.range((run, person, 0)..=(run, person, u64::MAX))? {
            let (k, v) = item?;
            out.push((k.value().2, v.value().to_vec()));
        }
    }
    // Merged runs interleave in time.
    out.sort_unstable_by_key(|e| e.0);
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

/// One run's next entry, as ((person, log key), value).
type RunEntry = ((u64, u64), Vec<u8>);

fn next_entry(
    run: &mut redb::Range<'static, (u64, u64, u64), &'static [u8]>,
) -> Result<Option<RunEntry>> {
    Ok(match run.next().transpose()? {
        Some((k, v)) => {
            let (_, person, key) = k.value();
            Some(((person, key), v.value().to_vec()))
        }
        None => None,
    })
}

/// Writes the entries of `from` (read from `snapshot`) as run `into`, in (person, log
/// key) order, and deletes them. Returns how many.
fn merge(
    snapshot: &ReadOnlyTable<(u64, u64, u64), &'static [u8]>,
    index: &mut Table<'_, (u64, u64, u64), &'static [u8]>,
    from: &[u64],
    into: u64,
) -> Result<u64> {
    let mut sources = from
        .iter()
        .map(|&r| snapshot.range((r, 0, 0)..=(r, u64::MAX, u64::MAX)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut heads = sources
        .iter_mut()
        .map(next_entry)
        .collect::<Result<Vec<_>>>()?;
    let mut written = 0;
    while let Some(i) = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|(k, _)| (*k, i)))
        .min()
        .map(|(_, i)| i)
    {
        if let Some(((person, key), value)) = heads[i].take() {
            index.insert((into, person, key), value.as_slice())?;
            written += 1;
        }
        heads[i] = next_entry(&mut sources[i])?;
    }
    for &r in from {
        index.retain_in((r, 0, 0)..=(r, u64::MAX, u64::MAX), |_, _| false)?;
    }
    Ok(written)
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
            if !entries.is_empty() {
                let mut runs_table = tx.open_table(RUNS)?;
                let run = runs(&runs_table, d)?.last().map_or(0, |(r, _)| r + 1);
                let mut index = tx.open_table(d.index)?;
                for ((person, key), v) in &entries {
                    index.insert((run, *person, *key), v.as_slice())?;
                }
                runs_table.insert((d.mark, run), entries.len() as u64)?;
            }
            marks.insert(d.mark, next)?;
            passed
        };
        tx.commit()?;
        tracing::debug!(
            log = d.mark,
            passed,
            "log folded into a run of its per-person index"
        );
        Ok(passed)
    }

    /// Merges the oldest FANOUT runs of the lowest level that has as many, one merge
    /// per transaction, until no level has. Returns how many merges it made.
    pub(super) fn compact(&self, d: &Derived) -> Result<u32> {
        let mut merges = 0;
        loop {
            // Read after the write began: nothing can commit between the two.
            let tx = self.linkage.begin_write()?;
            let snapshot = self.linkage.begin_read()?;
            let all = runs(&snapshot.open_table(RUNS)?, d)?;
            let due = (0..FINAL_LEVEL).find_map(|l| {
                let of_level: Vec<(u64, u64)> = all
                    .iter()
                    .copied()
                    .filter(|(_, n)| level(*n) == l)
                    .collect();
                (of_level.len() >= FANOUT).then(|| of_level[..FANOUT].to_vec())
            });
            let (Some(merging), Some((last, _))) = (due, all.last()) else {
                tx.abort()?;
                return Ok(merges);
            };
            let into = last + 1;
            let from: Vec<u64> = merging.iter().map(|(r, _)| *r).collect();
            {
                let mut index = tx.open_table(d.index)?;
                let n = merge(&snapshot.open_table(d.index)?, &mut index, &from, into)?;
                let mut runs_table = tx.open_table(RUNS)?;
                for r in &from {
                    runs_table.remove((d.mark, *r))?;
                }
                runs_table.insert((d.mark, into), n)?;
            }
            tx.commit()?;
            merges += 1;
            tracing::debug!(log = d.mark, runs = ?from, into, "runs of the per-person index merged");
        }
    }

    /// Folds every log to its end, however few entries wait; returns how many it passed.
    pub(super) fn fold_all(&self) -> Result<u64> {
        let mut passed = 0;
        for d in DERIVED {
            loop {
                let n = self.fold(d, FOLD_CHUNK)?;
                if n == 0 {
                    break;
                }
                passed += n;
                self.compact(d)?;
            }
        }
        Ok(passed)
    }

    /// Folds each log that has enough unfolded entries; returns how many it passed.
    pub fn fold_if_due(&self) -> Result<u64> {
        let mut passed = 0;
        for d in DERIVED {
            if self.unfolded(d)? >= FOLD_AT {
                passed += self.fold(d, FOLD_CHUNK)?;
                self.compact(d)?;
            }
        }
        Ok(passed)
    }
}

/// Folds every `every` until `stop` is set, at the lowest priority the system gives.
pub(super) fn fold_until(store: &Store, every: Duration, stop: &AtomicBool) {
    yield_to_answers();
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = store.fold_if_due() {
            tracing::error!(error = %e, "folding a log into its index failed");
        }
        std::thread::park_timeout(every);
    }
}

/// The folder alone, for work that writes the logs without `Store::start_writers`
/// (the registry benchmark); stopped and joined when dropped.
pub struct Folding {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Store {
    /// Starts folding in the background every `every`.
    pub fn start_folding(self: &Arc<Self>, every: Duration) -> std::io::Result<Folding> {
        let stop = Arc::new(AtomicBool::new(false));
        let (store, flag) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("folder".into())
            .spawn(move || fold_until(&store, every, &flag))?;
        Ok(Folding {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Folding {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Folding can wait; answers cannot. A fold is a burst of a core's work, and on a small
/// machine it would otherwise delay every check and grant queued behind it. Under
/// `SCHED_IDLE` the folder runs only when no other thread wants the core; readers take
/// what it has not folded yet from the log. Measured with `iryo-bench-net` at a steady
/// 20,000 checks/s, three alternating pairs: p99 5.2–17.6 ms under `SCHED_IDLE`,
/// 10.1–27.1 ms at nice 10 (and at nice 0, before, the slowest check took 26–46 ms).
fn yield_to_answers() {
    if !crate::sys::run_when_idle() {
        tracing::debug!("the folder keeps the normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::Method;
    use crate::store::linkage::append;

    fn use_on(day: u32) -> ServiceUse {
        ServiceUse {
            institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
            date: chrono::NaiveDate::from_ymd_opt(2026, 1, day).unwrap(),
            eligible: true,
            at: 0,
        }
    }

    fn run_count(s: &Store) -> usize {
        let tx = s.linkage.begin_read().unwrap();
        runs(&tx.open_table(RUNS).unwrap(), &SERVICE_USE)
            .unwrap()
            .len()
    }

    #[test]
    fn levels_grow_by_fanout() {
        assert_eq!(level(0), 0);
        assert_eq!(level(FOLD_AT * 4 - 1), 0);
        assert_eq!(level(FOLD_AT * 4), 1);
        assert_eq!(level(FOLD_AT * 16), 2);
        assert_eq!(level(u64::MAX), FINAL_LEVEL);
    }

    #[test]
    fn merged_runs_read_as_the_log_did() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("d.redb"), 16, Method::Fpe).unwrap();
        s.write(|t| {
            for day in 1..=12 {
                append(t, 7 + u64::from(day % 3), &use_on(day))?;
            }
            Ok(())
        })
        .unwrap();
        let history = |s: &Store| -> Vec<Vec<ServiceUse>> {
            let r = s.reader().unwrap();
            (7..=9).map(|p| r.service_uses(p).unwrap()).collect()
        };
        let expected = history(&s);
        assert!(expected.iter().all(|h| h.len() == 4));
        for fold in 1..=6 {
            assert_eq!(s.fold(&SERVICE_USE, 2).unwrap(), 2);
            assert_eq!(history(&s), expected, "after fold {fold}");
            let merges = s.compact(&SERVICE_USE).unwrap();
            assert_eq!(merges, u32::from(fold == 4), "fold {fold}");
            assert_eq!(history(&s), expected, "after compacting fold {fold}");
        }
        // Four runs became one; two more came after.
        assert_eq!(run_count(&s), 3);
        drop(s);
        let reopened = Store::open(&dir.path().join("d.redb"), 16).unwrap();
        assert_eq!(history(&reopened), expected);
    }

    #[test]
    fn an_index_from_before_runs_is_refolded() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("d.redb");
        let s = Store::create(&main, 16, Method::Fpe).unwrap();
        s.write(|t| {
            for day in 1..=3 {
                append(t, 7, &use_on(day))?;
            }
            Ok(())
        })
        .unwrap();
        let expected = s.reader().unwrap().service_uses(7).unwrap();
        drop(s);
        // The layout before runs: one (person, log key) table, everything folded.
        {
            let db = Database::create(main.with_file_name("linkage.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.delete_table(SERVICE_USE.index).unwrap();
            {
                let before: TableDefinition<(u64, u64), &[u8]> =
                    TableDefinition::new(SERVICE_USE.before_runs);
                let mut t = tx.open_table(before).unwrap();
                for key in 1..=3 {
                    t.insert((7, key), encode(&use_on(key as u32)).unwrap().as_slice())
                        .unwrap();
                }
                tx.open_table(MARKS)
                    .unwrap()
                    .insert(SERVICE_USE.mark, 4)
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let s = Store::open(&main, 16).unwrap();
        assert_eq!(
            s.unfolded(&SERVICE_USE).unwrap(),
            3,
            "refolded from the start"
        );
        assert_eq!(s.reader().unwrap().service_uses(7).unwrap(), expected);
        s.fold(&SERVICE_USE, 100).unwrap();
        assert_eq!(s.reader().unwrap().service_uses(7).unwrap(), expected);
        let tx = s.linkage.begin_read().unwrap();
        assert!(tx
            .list_tables()
            .unwrap()
            .all(|t| t.name() != SERVICE_USE.before_runs));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the folds' sizes and however the runs merged, each person's history
        /// reads as the log has it.
        #[test]
        fn any_folds_and_merges_keep_every_history(
            people in proptest::collection::vec(0u64..5, 1..60),
            chunks in proptest::collection::vec(1usize..9, 1..30),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let s = Store::create(&dir.path().join("d.redb"), 16, Method::Fpe).unwrap();
            s.write(|t| {
                for (i, p) in people.iter().enumerate() {
                    append(t, *p, &use_on(1 + (i % 28) as u32))?;
                }
                Ok(())
            })
            .unwrap();
            let history = |s: &Store| -> Vec<Vec<ServiceUse>> {
                let r = s.reader().unwrap();
                (0..5).map(|p| r.service_uses(p).unwrap()).collect()
            };
            let expected = history(&s);
            for chunk in &chunks {
                s.fold(&SERVICE_USE, *chunk).unwrap();
                s.compact(&SERVICE_USE).unwrap();
                proptest::prop_assert_eq!(&history(&s), &expected);
                proptest::prop_assert!(run_count(&s) < FANOUT);
            }
        }
    }
}
