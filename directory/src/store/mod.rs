//! The directory's durable state in redb, behind one narrow set of typed operations
//! (enroll a batch, check eligibility, change an ID, …) so that another backend is a
//! new module rather than a rewrite. Every change happens inside one write transaction.

pub(crate) mod assign;
pub(crate) mod audit;
pub mod backup;
pub(crate) mod cases;
pub(crate) mod checks;
mod commit;
mod enroll;
pub(crate) mod federation;
mod folding;
mod front;
mod grants;
mod group;
pub(crate) mod idempotency;
pub mod initial_load;
pub(crate) mod intake;
pub(crate) mod lifecycle;
mod linkage;
mod operations;
mod paced;
pub(crate) mod portal;
pub(crate) mod registry_tx;
mod serving;
pub mod subjects;
mod tables;
mod verify;

pub use assign::{AssignmentRow, LetterRow, Plan, ASSIGNMENT_HEADER};
pub use audit::AuditReport;
pub(crate) use audit::{ids_held, STORED_FROM};
pub(crate) use cases::notice_for;
pub use cases::{ConflictAction, MismatchAction};
pub use checks::Reader;
pub(crate) use commit::Committing;
pub use commit::{CommitError, GroupCommitter, Writers};
pub(crate) use enroll::{application_order, apply_row};
pub use enroll::{BatchReport, EnrollBatch};
pub use federation::{
    verify_notifications, GrantQuery, GrantRecord, InstitutionRecord, NotifyOutcome, ReportsTaken,
    Verified,
};
pub use folding::Folding;
pub(crate) use front::job_from;
pub use front::{Front, JobState, SessionRecord, TryCount, TryCounts};
pub(crate) use group::{Job, Outcome};
pub use initial_load::{Gathered, InitialLoad, Load, LoadProgress};
pub use intake::plain as plain_check;
pub(crate) use operations::forward;
pub use operations::Operations;
pub use portal::{activation_hash, new_activation_code, Account, Activation, Holder, Patient};
pub use serving::Serving;
pub(crate) use tables::subtree_key;
pub(crate) use verify::verify_records;
pub use verify::VerifyReport;

use crate::issuance::{IssueError, Method};
use crate::registry::{IdEntry, IdStatus, Person};
use iryo_proto::{MedicalId, MyNumber};
use redb::{Database, ReadableDatabase};
use std::path::{Path, PathBuf};
use tables::*;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("a stored record does not decode: {0}")]
    Codec(#[from] postcard::Error),
    #[error("{0}: no database here; run `iryo-directory init` first")]
    Missing(PathBuf),
    #[error("{}: cannot open: {source}{}", path.display(), rebuild_hint(path))]
    OpenFile {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("{0}: a database exists already")]
    Exists(PathBuf),
    #[error("{}: the database is in use by {}", path.display(), holder.as_deref().unwrap_or("another process"))]
    InUse {
        path: PathBuf,
        /// Which process holds it, as it wrote itself down on opening.
        holder: Option<String>,
    },
    #[error(transparent)]
    Date(#[from] crate::registry::dates::DateError),
    #[error("a death is recorded already for medical ID {id} ({date}); use `death --correct` or `death --revoke` with a reason")]
    DeathRecorded {
        id: MedicalId,
        date: chrono::NaiveDate,
    },
    #[error("registry notice refused: {0}")]
    Notice(String),
    #[error("no death is recorded for medical ID {0}")]
    NoDeath(MedicalId),
    #[error("medical ID {0} is not registered")]
    UnknownMedicalId(MedicalId),
    #[error("My Number {0} is not registered")]
    UnknownMyNumber(MyNumber),
    #[error("My Number {0} is registered already")]
    MyNumberTaken(MyNumber),
    #[error("medical ID {id} is {state}; it cannot be changed")]
    NotCurrent { id: MedicalId, state: String },
    #[error("{what} {id} does not exist")]
    NoSuchCase { what: &'static str, id: u64 },
    #[error("{what} {id} is resolved already")]
    CaseClosed { what: &'static str, id: u64 },
    #[error("{0} needs a reason (--reason)")]
    ReasonRequired(&'static str),
    #[error("medical ID {0} belongs to a deceased person; it is not changed")]
    Deceased(MedicalId),
    #[error("card {0} is no longer registered")]
    CardNotRegistered(iryo_proto::eligibility::Card),
    #[error("the row still conflicts after the correction: {0}")]
    StillConflicts(crate::registry::ConflictKind),
    #[error("institution {0} is not registered")]
    UnknownInstitution(iryo_proto::InstitutionCode),
    #[error("registration request: {0}")]
    BadRegistration(String),
    #[error("the medical ID or activation code is wrong, used or expired")]
    BadActivation,
    #[error("no audit entry {0}")]
    NoAuditEntry(u64),
    #[error("no entry {index} in a log of {size}")]
    NotInLog { index: u64, size: u64 },
    #[error("no consistency proof from {old} to {new} entries")]
    NoConsistency { old: u64, new: u64 },
    #[error(
        "{}: damaged ({what}): its pages no longer match their checksums, so nothing in it is served; {}",
        path.display(),
        damage_hint(path)
    )]
    Damaged { path: PathBuf, what: String },
    #[error("the audit log is empty")]
    EmptyLog,
    #[error(
        "an initial load on PostgreSQL needs an empty registry, and this one holds persons; enroll the files with --initial-load never"
    )]
    RegistryNotEmpty,
    #[error("not a backup to restore: {0}")]
    BadBackup(String),
    #[error("no grant {0} (give the id `audit unmatched` prints)")]
    NoGrant(String),
    #[error("no letter can be sent for medical ID {0}: the ID is retired or the person deceased, or there is no address (agency plan) or no coverage (insurer plan)")]
    NoLetter(MedicalId),
    #[error("no agency key to sign the audit log")]
    NoSigner,
    #[error("no intake file {0}")]
    NoIntakeFile(usize),
    #[error(
        "{}: missing, but the directory stopped while it was in use, so it may hold \
         answered checks not yet moved into the main file; put the file back (from a \
         backup or wherever it was moved to) before starting",
        .0.display()
    )]
    IntakeMissing(PathBuf),
    #[error(
        "{}: belongs to another directory database (its stamp differs from the one this \
         database recorded); put this database's own intake file back",
        .0.display()
    )]
    IntakeForeign(PathBuf),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("no free medical ID after {0} attempts")]
    IssuanceExhausted(u32),
    #[error("inconsistent database: {0}")]
    Inconsistent(String),
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error(transparent)]
    Postgres(#[from] crate::postgres::PgError),
    #[error("{0} does not run on PostgreSQL yet (docs/storage.md says what does); for now it needs the embedded store (no --database)")]
    NotOnPostgres(&'static str),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                let e: redb::Error = e.into();
                storage_failed(&e);
                StoreError::Db(e)
            }
        }
    )*};
}

/// Notes the storage failing (`iryo_p2p::storage`): logged, and counted in the metrics.
/// Every redb error passes through `from_redb`, so none is missed.
fn storage_failed(e: &redb::Error) {
    if iryo_p2p::storage::note(e) {
        tracing::error!(error = %e, "the database's storage failed; it must be opened again");
        crate::metrics::metrics().storage_failed();
    }
}

/// Why this process's database can no longer be used, if it cannot: `serve` then
/// stops with exit code 75 so that its supervisor starts it again, which opens the
/// database afresh.
pub fn storage_failure() -> Option<&'static str> {
    iryo_p2p::storage::failure()
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, StoreError>;

/// How a file beside the main database reaches the disk.
#[derive(Clone, Copy)]
enum Writes {
    /// All at once when a commit syncs: the intake files, whose commits are small and
    /// waited for.
    AtCommit,
    /// At a bounded pace (`paced`): the per-person indexes, built in large commits
    /// that nobody waits for.
    Paced,
}

/// Opens, or creates, one of the files beside the main database, with a cache of
/// `cache_mib`.
fn side_file(path: &Path, cache_mib: usize, writes: Writes) -> Result<Database> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(cache_mib << 20)
        .set_check_integrity_on_open(true);
    match writes {
        Writes::AtCommit => builder.create(path),
        Writes::Paced => {
            let file_error = |e| StoreError::File(path.to_path_buf(), e);
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let file = opts.open(path).map_err(file_error)?;
            builder.create_with_backend(paced::Paced::new(file).map_err(file_error)?)
        }
    }
    .map_err(|e| opening(path, e))
    .and_then(|db| {
        private(path)?;
        Ok(db)
    })
}

/// Opens an existing main database file, every page's checksum checked.
fn open_main(path: &Path, cache_mib: usize) -> Result<Database> {
    if !path.exists() {
        return Err(StoreError::Missing(path.to_path_buf()));
    }
    Database::builder()
        .set_cache_size(cache_mib.max(16) << 20)
        .set_check_integrity_on_open(true)
        .open(path)
        .map_err(|e| opening(path, e))
}

/// Every database file holds personal data: readable by its owner alone, however the
/// library created it.
fn private(path: &Path) -> Result<()> {
    crate::files::make_private(path).map_err(|e| StoreError::File(path.to_path_buf(), e))
}

/// What this process calls itself in a database's holder note (`describe_holder`).
static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process for others that find a database in use, e.g.
/// "iryo-directory enroll"; call once at start.
pub fn describe_holder(what: &str) {
    let _ = HOLDER.set(what.to_string());
}

fn holder_note(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".holder");
    PathBuf::from(p)
}

/// Notes beside the database which process holds it, so that a process refused with
/// "in use" can name it. A note left by a process that died is overwritten by the
/// next holder; only a live holder makes another process read it.
fn note_holder(path: &Path) {
    let text = format!(
        "process {} ({})",
        std::process::id(),
        HOLDER.get().map_or("iryo-directory", String::as_str)
    );
    let note = holder_note(path);
    let written = crate::files::create_private(&note)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = written {
        tracing::debug!(path = %note.display(), error = %e, "holder note not written");
    }
}

/// The error for a database another process holds, naming that process.
/// An error opening one of the files, naming the file: another process holds it, or
/// it is damaged.
fn opening(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => StoreError::Damaged {
            path: path.to_path_buf(),
            what,
        },
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_path_buf(),
            holder: std::fs::read_to_string(holder_note(path))
                .ok()
                .map(|s| s.trim().chars().take(200).collect()),
        },
        source => StoreError::OpenFile {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// What to do about a damaged file.
fn damage_hint(path: &Path) -> &'static str {
    if path.file_name().is_some_and(|n| n == folding::FILE_NAME) {
        "it holds only indexes built from the logs: `iryo-directory rebuild-linkage` makes it again"
    } else {
        "stop the directory and restore the data directory from a backup"
    }
}

/// What to do about a file that does not open, where something can be done.
fn rebuild_hint(path: &Path) -> &'static str {
    if path.file_name().is_some_and(|n| n == folding::FILE_NAME) {
        "; it holds only indexes built from the logs: `iryo-directory rebuild-linkage` makes it again"
    } else {
        ""
    }
}

pub struct Store {
    db: Database,
    /// The per-person indexes of service use and of the audit log, in their own file
    /// so that building them never holds up the writer of `db` (`folding`).
    linkage: Database,
    /// Where the network's plain eligibility checks are made durable (`intake`).
    intake: Vec<intake::IntakeFile>,
    retention_years: u32,
    /// Days past today a stated date may lie (`registry.date_allowance_days`).
    date_allowance_days: u32,
    /// The agency key that signs the audit log's tree heads.
    signer: Option<ed25519_dalek::SigningKey>,
    policy: AccessPolicy,
    /// Memberships by node key, as `institution_by_key` last read them.
    members: std::sync::Mutex<std::collections::HashMap<[u8; 32], InstitutionRecord>>,
    /// The second this store last signed a tree head in a write (`write`).
    head_signed_at: std::sync::atomic::AtomicI64,
    /// The service this store is kept for: on a registry run apart, lifecycle changes
    /// are queued for the exchange authority; on the authority, patients are subjects
    /// (docs/roles.md).
    role: crate::config::ServiceRole,
}

/// The consent rules the directory applies (configuration `[access]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    pub default: crate::access::DefaultPolicy,
    /// How long consent given at a visit lets that institution obtain records.
    pub visit_consent_days: u32,
    /// Seconds a grant stays valid (at most `MAX_GRANT_SECONDS`).
    pub grant_seconds: i64,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            default: crate::access::DefaultPolicy::Deny,
            visit_consent_days: 90,
            grant_seconds: iryo_proto::federation::MAX_GRANT_SECONDS,
        }
    }
}

impl Store {
    /// Creates a new, empty database that issues IDs by `method`.
    pub fn create(path: &Path, cache_mib: usize, method: Method) -> Result<Self> {
        if path.exists() {
            return Err(StoreError::Exists(path.to_path_buf()));
        }
        let db = Database::builder()
            .set_cache_size(cache_mib.max(16) << 20)
            .create(path)
            .map_err(|e| opening(path, e))?;
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(SETTINGS)?;
            t.insert("issuance_method", method.as_str())?;
            t.insert("schema", "1")?;
            Tables::create_all(&tx)?;
        }
        tx.commit()?;
        private(path)?;
        note_holder(path);
        Self::with_db(db, path)
    }

    fn with_db(db: Database, path: &Path) -> Result<Self> {
        upgrade(&db)?;
        Ok(Self {
            intake: intake::open(path, &db)?,
            db,
            linkage: folding::open(path)?,
            retention_years: 10,
            date_allowance_days: 1,
            signer: None,
            policy: AccessPolicy::default(),
            members: Default::default(),
            head_signed_at: std::sync::atomic::AtomicI64::new(i64::MIN),
            role: crate::config::ServiceRole::All,
        })
    }

    /// Opens an existing database; redb repairs it first if a process died writing.
    pub fn open(path: &Path, cache_mib: usize) -> Result<Self> {
        let db = open_main(path, cache_mib)?;
        private(path)?;
        note_holder(path);
        Self::with_db(db, path)
    }

    /// Makes `linkage.redb` again from the logs, for a file that is damaged or lost:
    /// it holds nothing else. Holds the main database while the old file is removed, so
    /// no serving process can be using it. Returns how many log entries were folded.
    pub fn rebuild_linkage(path: &Path, cache_mib: usize) -> Result<(Self, u64)> {
        let db = open_main(path, cache_mib)?;
        let linkage = path.with_file_name(folding::FILE_NAME);
        match std::fs::remove_file(&linkage) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::File(linkage, e)),
        }
        note_holder(path);
        let store = Self::with_db(db, path)?;
        let folded = store.fold_all()?;
        Ok((store, folded))
    }

    /// Lets this store append to the audit log, signing each new head with `key`.
    pub fn with_signer(mut self, key: ed25519_dalek::SigningKey) -> Self {
        self.signer = Some(key);
        self
    }

    pub fn with_policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The service this store is kept for: a registry run apart queues ID changes,
    /// deaths and retirements for the exchange authority as they commit; the authority
    /// keeps subjects, made when an ID is first dealt with (docs/roles.md).
    pub fn with_role(mut self, role: crate::config::ServiceRole) -> Self {
        self.role = role;
        self
    }

    pub fn with_retention(mut self, years: u32) -> Self {
        self.retention_years = years;
        self
    }

    pub fn with_date_allowance(mut self, days: u32) -> Self {
        self.date_allowance_days = days;
        self
    }

    /// The rules for stated dates as of today's date on this machine.
    pub fn date_rules(&self) -> crate::registry::dates::DateRules {
        crate::registry::dates::DateRules {
            today: crate::registry::today(),
            allowance_days: self.date_allowance_days,
        }
    }

    pub fn retention_years(&self) -> u32 {
        self.retention_years
    }

    pub fn method(&self) -> Result<Method> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SETTINGS)?;
        let v = t
            .get("issuance_method")?
            .map(|v| v.value().to_string())
            .ok_or_else(|| StoreError::Inconsistent("no issuance method recorded".into()))?;
        Method::parse(&v).ok_or(StoreError::Inconsistent(format!("unknown method {v}")))
    }

    /// Runs `f` in one write transaction and commits it. A write that appended to the
    /// audit log signs a new tree head if none was signed in this second: a head in
    /// every commit cost the group commit a signature each time (8 % of its CPU at
    /// 20,000 checks/s), and a head a second is as good to an auditor.
    /// `sign_pending_head` covers the rest when someone needs it.
    fn write<T>(&self, f: impl FnOnce(&mut Tables<'_>) -> Result<T>) -> Result<T> {
        use std::sync::atomic::Ordering;
        let tx = self.db.begin_write()?;
        let at = crate::registry::now();
        let mut signed = false;
        let out = {
            let mut t = Tables::open(&tx)?;
            t.role = self.role;
            let out = f(&mut t)?;
            if t.audit_dirty && self.head_signed_at.load(Ordering::Relaxed) < at {
                t.sign_head(self.signer()?, at)?;
                signed = true;
            }
            t.flush_counters()?;
            out
        };
        tx.commit()?;
        if signed {
            self.head_signed_at.fetch_max(at, Ordering::Relaxed);
        }
        Ok(out)
    }

    fn signer(&self) -> Result<&ed25519_dalek::SigningKey> {
        self.signer.as_ref().ok_or(StoreError::NoSigner)
    }

    pub fn person_by_medical_id(&self, id: MedicalId) -> Result<Person> {
        self.reader()?.person_by_medical_id(id)
    }

    pub fn person_by_my_number(&self, n: MyNumber) -> Result<Person> {
        self.reader()?.person_by_my_number(n)
    }

    /// Every person in pid order, for reports and consistency checks.
    pub fn persons(&self) -> Result<Vec<Person>> {
        self.reader()?.persons()
    }

    /// The status of a medical ID in the table of every ID ever issued.
    pub fn id_entry(&self, id: MedicalId) -> Result<Option<IdEntry>> {
        self.reader()?.id_entry(id)
    }

    pub fn counts(&self) -> Result<Counts> {
        self.reader()?.counts()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub persons: u64,
    pub issued_ids: u64,
    pub cards: u64,
    pub service_uses: u64,
    pub open_conflicts: u64,
    pub open_mismatches: u64,
    /// A registry's notices to the exchange authority not yet applied there.
    pub notices_waiting: u64,
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(postcard::to_allocvec(v)?)
}

pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Result<T> {
    Ok(postcard::from_bytes(b)?)
}

pub(crate) fn status_name(s: IdStatus) -> String {
    match s {
        IdStatus::Current => "current".into(),
        IdStatus::Changed { successor } => format!("changed (successor {successor})"),
        IdStatus::Retired => "retired".into(),
    }
}

#[cfg(test)]
mod tests;

/// Brings a database written by an earlier version to the current layout, in one
/// transaction: the audit log's subtree hashes were keyed (level, index), which spreads
/// each append over one page per level; and the per-patient audit index lived here
/// until it moved to the index file, which rebuilds it from the log. Counters now read
/// from the tables they number (`DERIVED_COUNTERS`) are dropped.
fn upgrade(db: &Database) -> Result<()> {
    use redb::{ReadableTable, TableHandle};
    const OLD_NODES: redb::TableDefinition<(u32, u64), [u8; 32]> =
        redb::TableDefinition::new("audit_nodes");
    const OLD_BY_PATIENT: redb::TableDefinition<(u64, u64), ()> =
        redb::TableDefinition::new("audit_by_patient");
    let present: Vec<String> = db
        .begin_read()?
        .list_tables()?
        .map(|t| t.name().to_string())
        .collect();
    let has = |name: &str| present.iter().any(|p| p == name);
    let stored_derived = {
        let tx = db.begin_read()?;
        let counters = tx.open_table(COUNTERS)?;
        let mut found = false;
        for name in DERIVED_COUNTERS {
            found |= counters.get(name)?.is_some();
        }
        found
    };
    if !has(OLD_NODES.name()) && !has(OLD_BY_PATIENT.name()) && !stored_derived {
        return Ok(());
    }
    let tx = db.begin_write()?;
    if has(OLD_NODES.name()) {
        let old = tx.open_table(OLD_NODES)?;
        let mut new = tx.open_table(AUDIT_NODES)?;
        for item in old.iter()? {
            let (k, v) = item?;
            let (level, index) = k.value();
            new.insert(subtree_key(level, index), v.value())?;
        }
        drop(old);
        tx.delete_table(OLD_NODES)?;
    }
    if has(OLD_BY_PATIENT.name()) {
        tx.delete_table(OLD_BY_PATIENT)?;
    }
    {
        let mut counters = tx.open_table(COUNTERS)?;
        for name in DERIVED_COUNTERS {
            counters.remove(name)?;
        }
    }
    tx.commit()?;
    tracing::info!("database upgraded to the current table layout");
    Ok(())
}
