//! Intake files: where the eligibility checks nodes send over the network become
//! durable before they are answered. A check that changes nothing but the logs (no
//! presented medical ID to compare, no consent given at the visit) writes its audit
//! entry and its service use into one of a few small database files beside the main
//! one; the main writer moves them into the audit log and the service-use log in
//! batches, a few milliseconds later (`move_into`).
//!
//! Why files of their own: the tail of the answers' latency was the disk. An
//! `fdatasync` that stalls for 3–12 ms held up every check queued behind the one main
//! writer, hundreds at 20,000 checks/s, and the stalls of two files mostly fall at
//! different moments. With two intake files, checks arriving during one file's stall go
//! to the other. A commit to an intake file also writes a few pages at the end of one
//! B-tree instead of fifteen pages spread over the main file, and syncing scattered
//! pages costs three to four times one run (docs/performance.md, intake files).
//!
//! Keys in each file count from 1. The main database keeps, per file, the first key not
//! moved yet (a counter, written in the same transaction as the moved entries), so an
//! entry is moved exactly once whatever moment a process dies at; moved entries are
//! deleted from their file afterwards, by its own writer.
//!
//! A deleted intake file would lose answered checks without a trace, so the main
//! database keeps each file's stamp (a random number written into the file when it is
//! made) and whether the files are in use: set when the writers start, cleared once the
//! writers have stopped and the files are drained. A file that is missing while in use,
//! or that carries another stamp, is refused at open, naming it. A file missing after a
//! clean stop held nothing, and is made again.

use super::tables::Tables;
use super::{checks, decode, encode, Job, Outcome, Result, Store, StoreError};
use crate::registry::eligibility::{CheckAnswer, CheckKey, CheckRequest};
use crate::registry::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// key → (audit entry, service use): what `checks::record` would have appended.
const CHECKS: TableDefinition<u64, &[u8]> = TableDefinition::new("checks");

/// A block of zeros that keeps the end of each intake file allocated. redb gives a file
/// back to the disk when its last pages are free and takes it again when it needs them,
/// and under load an intake file did both several times a second: each time, the next
/// sync also wrote the file's new size, which costs several commits' time on this disk
/// (STACK.md). The block sits at the end, where redb's buddy allocator places a block of
/// its size, and the checks use the space below it, so the file keeps its size.
const RESERVE: TableDefinition<(), &[u8]> = TableDefinition::new("reserve");

/// The block fills a 4 MiB page of redb's with room for the page's own header, and puts
/// 4 MiB of room below it: many seconds of checks at the target rate.
const RESERVED_BYTES: usize = (4 << 20) - (8 << 10);

/// The main database's counter for each intake file: its first key not moved yet.
pub(super) const MARKS: [&str; 2] = ["intake_0_moved", "intake_1_moved"];

/// The main database's copy of each intake file's stamp.
const STAMPS: [&str; 2] = ["intake_0_stamp", "intake_1_stamp"];

/// The main database's counter that is 1 while writers may be filling the intake files.
pub(super) const IN_USE: &str = "intake_in_use";

/// The file's own stamp, made with the file.
const STAMP: TableDefinition<(), u64> = TableDefinition::new("stamp");

/// Entries one commit of the main database moves at most, so that a grant committed
/// with a move waits for a bounded one.
const MOVE_AT_ONCE: usize = 4_000;

/// Moved entries one intake commit deletes at most, to keep that commit small.
const DELETE_AT_ONCE: u64 = 512;

pub(super) struct IntakeFile {
    db: Database,
    /// The next key to write; read and advanced inside the file's write transaction.
    next: AtomicU64,
    /// Keys below this are in the main database (published after its commit).
    moved: AtomicU64,
    /// Keys below this are deleted from this file.
    deleted: AtomicU64,
}

impl IntakeFile {
    /// A snapshot of the file for a backup.
    pub(super) fn snapshot(&self) -> Result<redb::ReadTransaction> {
        Ok(self.db.begin_read()?)
    }
}

/// Copies an intake file's snapshot into the fresh file `to` (a backup).
pub(super) fn copy_file(snapshot: &redb::ReadTransaction, to: &Database) -> Result<()> {
    iryo_p2p::backup::copy_table(snapshot, to, CHECKS)?;
    iryo_p2p::backup::copy_table(snapshot, to, RESERVE)?;
    iryo_p2p::backup::copy_table(snapshot, to, STAMP)?;
    Ok(())
}

/// Opens (or creates) the intake files beside `main`, each positioned after what it
/// holds and after what was moved from it, so a key is never used twice. A file the
/// main database knows may hold entries must be there, and be the same file.
pub(super) fn open(main_path: &Path, main: &Database) -> Result<Vec<IntakeFile>> {
    let known = {
        let tx = main.begin_read()?;
        let counters = tx.open_table(super::tables::COUNTERS)?;
        let get =
            |name: &str| -> Result<Option<u64>> { Ok(counters.get(name)?.map(|g| g.value())) };
        let in_use = get(IN_USE)? == Some(1);
        let mut known = Vec::with_capacity(MARKS.len());
        for (mark, stamp) in MARKS.iter().zip(STAMPS) {
            known.push((get(mark)?.unwrap_or(1), get(stamp)?, in_use));
        }
        known
    };
    let mut files = Vec::with_capacity(MARKS.len());
    let mut new_stamps = Vec::new();
    for (i, (moved, recorded, in_use)) in known.into_iter().enumerate() {
        let path = main_path.with_file_name(format!("intake-{i}.redb"));
        let existed = path.exists();
        if !existed && in_use && recorded.is_some() {
            return Err(StoreError::IntakeMissing(path));
        }
        let db = super::side_file(&path, 16, super::Writes::AtCommit)?;
        let tx = db.begin_write()?;
        let stamp = {
            let mut stamps = tx.open_table(STAMP)?;
            let found = stamps.get(())?.map(|g| g.value());
            if let Some(s) = found {
                s
            } else {
                let s = fresh_stamp()?;
                stamps.insert((), s)?;
                s
            }
        };
        if existed && recorded.is_some_and(|r| r != stamp) {
            return Err(StoreError::IntakeForeign(path));
        }
        {
            let mut reserve = tx.open_table(RESERVE)?;
            if reserve.is_empty()? {
                reserve.insert((), vec![0u8; RESERVED_BYTES].as_slice())?;
            }
        }
        let (first, last) = {
            let t = tx.open_table(CHECKS)?;
            let first = t.first()?.map(|(k, _)| k.value());
            let last = t.last()?.map(|(k, _)| k.value());
            (first, last)
        };
        tx.commit()?;
        if recorded != Some(stamp) {
            new_stamps.push((STAMPS[i], stamp));
        }
        files.push(IntakeFile {
            db,
            next: AtomicU64::new(last.map_or(1, |l| l + 1).max(moved)),
            moved: AtomicU64::new(moved),
            deleted: AtomicU64::new(first.unwrap_or(moved).min(moved)),
        });
    }
    if !new_stamps.is_empty() {
        let tx = main.begin_write()?;
        {
            let mut counters = tx.open_table(super::tables::COUNTERS)?;
            for (name, stamp) in new_stamps {
                counters.insert(name, stamp)?;
            }
        }
        tx.commit()?;
    }
    Ok(files)
}

/// A random, non-zero stamp for a new intake file.
fn fresh_stamp() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(bytes).max(1))
}

/// Whether a check appends to the logs and changes nothing else: no consent given at
/// the visit, no presented medical ID to compare, no idempotency key.
pub fn plain(r: &CheckRequest) -> bool {
    !r.visit_consent
        && r.idempotency_key.is_none()
        && !matches!(
            r.key,
            CheckKey::Card {
                presented: Some(_),
                ..
            }
        )
}

/// Answers each job of plain checks with `record`, in order; anything else is refused.
pub(crate) fn answer_plain(
    jobs: &[Job],
    mut record: impl FnMut(&CheckRequest) -> Result<CheckAnswer>,
) -> Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        out.push(match job {
            Job::Check(req) => Outcome::Check(record(req)?),
            Job::Checks(reqs) => {
                Outcome::Checks(reqs.iter().map(&mut record).collect::<Result<_>>()?)
            }
            Job::Grant(..) | Job::Notify(..) => return Err(not_plain()),
        });
    }
    Ok(out)
}

/// Whether a job's checks can be recorded in an intake file: checks whose recording
/// appends to the logs and nothing else, and that carry no idempotency key (which only
/// the main writer can look up).
pub(crate) fn fits(job: &Job) -> bool {
    match job {
        Job::Check(r) => plain(r),
        Job::Checks(rs) => rs.iter().all(plain),
        Job::Grant(..) | Job::Notify(..) => false,
    }
}

/// Moves up to `MOVE_AT_ONCE` entries of each file into the main database's logs, and
/// advances the files' marks in the same transaction. Returns the marks to publish
/// once that transaction has committed, and how many entries moved.
pub(super) fn move_into(
    t: &mut Tables<'_>,
    files: &[IntakeFile],
) -> Result<(Vec<(usize, u64)>, u64)> {
    let (mut marks, mut entries) = (Vec::new(), 0);
    for (i, file) in files.iter().enumerate() {
        if file.moved.load(Ordering::Acquire) >= file.next.load(Ordering::Acquire) {
            continue;
        }
        let from = t.peek(MARKS[i])?;
        let tx = file.db.begin_read()?;
        let table = tx.open_table(CHECKS)?;
        let mut upto = from;
        for item in table.range(from..)?.take(MOVE_AT_ONCE) {
            let (k, v) = item?;
            checks::append_entries(t, &decode(v.value())?)?;
            upto = k.value() + 1;
            entries += 1;
        }
        if upto > from {
            t.set(MARKS[i], upto);
            marks.push((i, upto));
        }
    }
    Ok((marks, entries))
}

/// Runs `step` (one move) until it moves nothing; how many entries moved in all.
pub(crate) fn drain(mut step: impl FnMut() -> Result<u64>) -> Result<u64> {
    let mut total = 0;
    loop {
        match step()? {
            0 => return Ok(total),
            moved => total += moved,
        }
    }
}

pub(crate) fn not_plain() -> StoreError {
    StoreError::Inconsistent("a job that changes the registry was sent to the intake".into())
}

pub(super) fn publish(files: &[IntakeFile], marks: &[(usize, u64)]) {
    for &(i, upto) in marks {
        if let Some(f) = files.get(i) {
            f.moved.fetch_max(upto, Ordering::AcqRel);
        }
    }
}

impl Store {
    /// How many intake files there are; `check_into` takes a file number below it.
    pub fn intake_files(&self) -> usize {
        self.intake.len()
    }

    /// Whether some checks wait in the intake files to be moved. Looks in the files: a
    /// key taken by a commit that failed is never written, and must not make every
    /// timed move commit for nothing.
    fn intake_waiting(&self) -> Result<bool> {
        for f in &self.intake {
            let moved = f.moved.load(Ordering::Acquire);
            if moved < f.next.load(Ordering::Acquire) {
                let tx = f.db.begin_read()?;
                if tx.open_table(CHECKS)?.range(moved..)?.next().is_some() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Decides checks on one snapshot of the main database and makes them durable in
    /// intake file `file`, then answers them. Only jobs that `fits` accepts, as
    /// `GroupCommitter` routes them; anything else is refused.
    pub(super) fn check_into(
        &self,
        file: usize,
        jobs: &[Job],
        at: Timestamp,
    ) -> Result<Vec<Outcome>> {
        let f = self
            .intake
            .get(file)
            .ok_or(StoreError::NoIntakeFile(file))?;
        if !jobs.iter().all(fits) {
            return Err(not_plain());
        }
        let reader = self.reader()?;
        let tx = f.db.begin_write()?;
        let (deleted, moved) = (
            f.deleted.load(Ordering::Acquire),
            f.moved.load(Ordering::Acquire),
        );
        let until = moved.min(deleted + DELETE_AT_ONCE).max(deleted);
        let mut next = f.next.load(Ordering::Acquire);
        let out;
        {
            let mut table = tx.open_table(CHECKS)?;
            out = answer_plain(jobs, |req| {
                let r = reader.resolve(req)?;
                table.insert(next, encode(&checks::entries(req, &r, at))?.as_slice())?;
                next += 1;
                Ok(r.into_answer())
            })?;
            // Entries already moved go, a bounded number per commit.
            if until > deleted {
                table.retain_in(deleted..until, |_, _| false)?;
            }
        }
        // Advanced before the commit: a failed commit leaves a gap, which moving skips.
        f.next.store(next, Ordering::Release);
        tx.commit()?;
        f.deleted.store(until, Ordering::Release);
        Ok(out)
    }

    /// Moves what waits in the intake files into the main database in one commit, up
    /// to `MOVE_AT_ONCE` entries a file. Returns how many entries moved.
    pub fn move_intake(&self) -> Result<u64> {
        if !self.intake_waiting()? {
            return Ok(0);
        }
        let (marks, moved) = self.write(|t| move_into(t, &self.intake))?;
        publish(&self.intake, &marks);
        Ok(moved)
    }

    /// Records whether writers may be filling the intake files: set before they start,
    /// cleared once they have stopped and the files are drained (`Writers`).
    pub(super) fn mark_intake_in_use(&self, in_use: bool) -> Result<()> {
        self.write(|t| {
            t.set(IN_USE, u64::from(in_use));
            Ok(())
        })
    }

    /// Moves everything the intake files hold, in as many commits as it takes: when a
    /// store opens, and when the service stops.
    pub fn drain_intake(&self) -> Result<u64> {
        drain(|| self.move_intake())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::Method;

    const KEY: [u8; 32] = [9; 32];

    fn open(path: &Path) -> Store {
        Store::open(path, 16)
            .unwrap()
            .with_signer(ed25519_dalek::SigningKey::from_bytes(&KEY))
    }

    /// A store with one person, and a check by medical ID of that person.
    fn setup(dir: &tempfile::TempDir) -> (std::path::PathBuf, CheckRequest) {
        let path = dir.path().join("d.redb");
        let s = Store::create(&path, 16, Method::Fpe)
            .unwrap()
            .with_signer(ed25519_dalek::SigningKey::from_bytes(&KEY));
        let req = crate::store::tests::one_person_check(&s);
        (path, req)
    }

    fn checks(s: &Store, file: usize, req: &CheckRequest, n: usize) {
        let out = s
            .check_into(file, &[Job::Checks(vec![req.clone(); n])], 0)
            .unwrap();
        match out.as_slice() {
            [Outcome::Checks(a)] => assert!(a.len() == n && a.iter().all(|a| a.eligible)),
            _ => panic!("checks answered as something else"),
        }
    }

    fn verified(s: &Store) -> bool {
        let key = ed25519_dalek::SigningKey::from_bytes(&KEY).verifying_key();
        s.sign_pending_head().unwrap();
        s.audit_verify(&key).unwrap().problems.is_empty()
    }

    fn logged(s: &Store) -> (u64, u64) {
        (s.audit_size().unwrap(), s.counts().unwrap().service_uses)
    }

    /// A file that grows or shrinks makes the next sync write its metadata too, several
    /// times the cost of a commit here; under a steady load the file keeps its size.
    #[test]
    fn the_files_keep_their_size_under_load() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let s = open(&path);
        let file = path.with_file_name("intake-0.redb");
        let len = || std::fs::metadata(&file).unwrap().len();
        let mut sizes = std::collections::BTreeSet::new();
        // As at 10,000 checks/s a file: commits of 6, a move every 20 ms.
        let mut reading = None;
        for round in 0..3_000 {
            checks(&s, 0, &req, 6);
            // The main writer's move reads the file while its writer goes on committing.
            if round % 35 == 20 {
                reading = Some(s.intake[0].db.begin_read().unwrap());
            }
            if round % 35 == 34 {
                s.move_intake().unwrap();
                reading = None;
            }
            sizes.insert(len());
        }
        drop(reading);
        assert_eq!(sizes.len(), 1, "sizes seen: {sizes:?}");
        assert!(verified(&s));
    }

    #[test]
    fn checks_reach_the_logs_once_moved() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let s = open(&path);
        let before = logged(&s);
        checks(&s, 0, &req, 3);
        checks(&s, 1, &req, 2);
        assert_eq!(logged(&s), before, "not in the logs before the move");
        assert_eq!(s.move_intake().unwrap(), 5);
        assert_eq!(logged(&s), (before.0 + 5, before.1 + 5));
        assert_eq!(s.move_intake().unwrap(), 0);
        // A commit of the main writer moves them too.
        checks(&s, 0, &req, 4);
        s.commit_group(&[], 0).unwrap();
        assert_eq!(logged(&s), (before.0 + 9, before.1 + 9));
        assert!(verified(&s));
    }

    #[test]
    fn each_check_is_moved_exactly_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let before = logged(&open(&path));
        // Answered, then the process ends before any move.
        checks(&open(&path), 0, &req, 3);
        let s = open(&path);
        assert_eq!(s.move_intake().unwrap(), 3);
        // Moved, and the process ends before the file's writer deletes them.
        drop(s);
        let s = open(&path);
        assert_eq!(s.move_intake().unwrap(), 0);
        assert_eq!(logged(&s), (before.0 + 3, before.1 + 3));
        // The next commit deletes them; the file is empty when the process ends, and
        // its keys must go on after the moved ones, or new checks would be skipped.
        checks(&s, 0, &req, 1);
        assert_eq!(s.move_intake().unwrap(), 1);
        s.check_into(0, &[], 0).unwrap();
        drop(s);
        let s = open(&path);
        assert_eq!(s.move_intake().unwrap(), 0);
        checks(&s, 0, &req, 2);
        assert_eq!(s.move_intake().unwrap(), 2);
        assert_eq!(logged(&s), (before.0 + 6, before.1 + 6));
        assert!(verified(&s));
    }

    #[test]
    fn an_intake_file_lost_or_swapped_while_in_use_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let file = path.with_file_name("intake-0.redb");
        let aside = dir.path().join("aside.redb");
        let before = logged(&open(&path));
        // Answered while serving, then the process is killed before any move.
        let s = open(&path);
        s.mark_intake_in_use(true).unwrap();
        checks(&s, 0, &req, 3);
        drop(s);
        std::fs::rename(&file, &aside).unwrap();
        match Store::open(&path, 16) {
            Err(e @ StoreError::IntakeMissing(_)) => {
                assert!(e.to_string().contains("intake-0.redb"), "{e}");
            }
            other => panic!("opened without the intake file: {:?}", other.err()),
        }
        assert!(!file.exists(), "a refused open makes no file in its place");
        // Another database's intake file in its place is refused too.
        let other = tempfile::tempdir().unwrap();
        let (other_path, _) = setup(&other);
        std::fs::copy(other_path.with_file_name("intake-0.redb"), &file).unwrap();
        assert!(matches!(
            Store::open(&path, 16),
            Err(StoreError::IntakeForeign(p)) if p == file
        ));
        // With its own file back, nothing is lost.
        std::fs::rename(&aside, &file).unwrap();
        let s = open(&path);
        assert_eq!(s.drain_intake().unwrap(), 3);
        assert_eq!(logged(&s), (before.0 + 3, before.1 + 3));
        // After a clean stop the files hold nothing, and a missing one is made again.
        s.mark_intake_in_use(false).unwrap();
        drop(s);
        std::fs::remove_file(&file).unwrap();
        let s = open(&path);
        checks(&s, 0, &req, 1);
        assert_eq!(s.move_intake().unwrap(), 1);
        assert!(verified(&s));
    }

    #[test]
    fn a_key_never_written_holds_nothing_up() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let s = open(&path);
        let before = logged(&s);
        // As a commit that failed leaves it: keys taken, nothing written.
        s.intake[0].next.fetch_add(3, Ordering::AcqRel);
        assert!(!s.intake_waiting().unwrap());
        assert_eq!(s.move_intake().unwrap(), 0);
        checks(&s, 0, &req, 2);
        assert!(s.intake_waiting().unwrap());
        assert_eq!(s.move_intake().unwrap(), 2);
        assert_eq!(logged(&s), (before.0 + 2, before.1 + 2));
    }

    #[test]
    fn checks_that_change_the_registry_stay_with_the_main_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, req) = setup(&dir);
        let consent = CheckRequest {
            visit_consent: true,
            idempotency_key: None,
            ..req.clone()
        };
        let s = open(&path);
        let CheckKey::MedicalId(id) = req.key else {
            panic!("a check by medical ID")
        };
        let card = s.person_by_medical_id(id).unwrap().coverages[0]
            .card
            .clone();
        let presented = CheckRequest {
            key: CheckKey::for_card(&card, Some(id)),
            ..req.clone()
        };
        let by_card = CheckRequest {
            key: CheckKey::for_card(&card, None),
            ..req.clone()
        };
        assert!(fits(&Job::Check(req.clone())));
        assert!(fits(&Job::Checks(vec![req.clone(), by_card])));
        assert!(!fits(&Job::Checks(vec![req.clone(), presented])));
        assert!(!fits(&Job::Checks(vec![req.clone(), consent.clone()])));
        assert!(s.check_into(0, &[Job::Check(consent)], 0).is_err());
        assert!(s.check_into(7, &[Job::Check(req)], 0).is_err());
        assert_eq!(s.move_intake().unwrap(), 0);
    }
}
