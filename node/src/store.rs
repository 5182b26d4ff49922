//! The node's durable state in redb: the institution's FHIR records by medical ID, the
//! grants already served (single use), and the outbox of signed notifications.

use crate::fhir::Contents;
use iryo_proto::federation::{Notification, RefusalReport};
use iryo_proto::signed::Signed;
use iryo_proto::MedicalId;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use std::path::Path;
use thiserror::Error;

mod kept;
pub use kept::{Keep, KEPT_SECONDS};

const RECORDS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("records");
const SEEN_GRANTS: TableDefinition<[u8; 16], i64> = TableDefinition::new("seen_grants");
/// The same grants by expiry, so that those no check would accept any more are
/// forgotten in order.
const SEEN_BY_EXPIRY: TableDefinition<(i64, [u8; 16]), ()> =
    TableDefinition::new("seen_grants_by_expiry");
/// Served grants forgotten at most per serving commit: more than one commit serves,
/// so the table stays near the grants still valid, and no commit is held up long.
const FORGET_AT_ONCE: usize = 64;
const OUTBOX: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("outbox");
/// Refusal reports kept at most while the directory does not take them.
const MAX_PENDING_REFUSALS: u64 = 10_000;
/// Signed reports of fetches this node refused, waiting for the directory.
const REFUSALS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("refusals");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// "latest" → the witnessed checkpoint this node accepted last (`witnessed::Kept`).
const WITNESSED: TableDefinition<&str, &[u8]> = TableDefinition::new("witnessed");

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("node database: {0}")]
    Db(#[from] redb::Error),
    #[error("a stored record does not decode: {0}")]
    Codec(String),
    #[error("the grant was used before")]
    Replayed,
    /// The patient's records here would not fit one exchange response.
    #[error(
        "the patient's records would take {size} bytes, more than one fetch can carry ({max})"
    )]
    TooLarge { size: usize, max: usize },
    /// A commit of a group of fetches failed; each fetch in it gets this, with the
    /// failure's text (the failure itself went to the log).
    #[error("serving a group of fetches failed: {0}")]
    GroupFailed(String),
    #[error("the serve-commit thread has stopped")]
    Stopped,
    #[error("{0}: {1}")]
    File(std::path::PathBuf, std::io::Error),
    #[error(
        "{}: damaged ({what}): its pages no longer match their checksums; stop the node and restore its data directory from a backup",
        path.display()
    )]
    Damaged {
        path: std::path::PathBuf,
        what: String,
    },
    /// A write failed and no write has succeeded since: receipts cannot be recorded.
    #[error("this node cannot write its database ({0}); free disk space or fix the disk, then restart the node")]
    CannotWrite(String),
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

/// Notes the storage failing (`iryo_p2p::storage`), and logs it.
fn storage_failed(e: &redb::Error) {
    if iryo_p2p::storage::note(e) {
        tracing::error!(error = %e, "the node database's storage failed; it must be opened again");
    }
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    db: Database,
    /// Why the last write failed, while no write has succeeded since.
    write_failure: std::sync::Mutex<Option<String>>,
}

/// One fetch to serve under a grant that passed every offline check.
pub struct ServeJob {
    pub grant_id: [u8; 16],
    pub expires_at: i64,
    pub medical_id: MedicalId,
    /// Builds the signed disclosure notification from the records served.
    pub notify: Disclosure,
}

/// Builds the signed disclosure from what is served.
pub type Disclosure = Box<dyn FnOnce(&Contents) -> Signed<Notification> + Send>;

/// A stored resource: its JSON, as it was accepted.
pub type Record = Vec<u8>;

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        // Every page's checksum is checked at open: a damaged file is refused, named,
        // rather than served (or a panic later).
        let db = Database::builder()
            .set_cache_size(32 << 20)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(what)) => {
                    StoreError::Damaged {
                        path: path.to_path_buf(),
                        what,
                    }
                }
                e => StoreError::Db(e.into()),
            })?;
        // The patients' records: readable by the node's user alone.
        iryo_p2p::files::make_private(path).map_err(|e| StoreError::File(path.to_path_buf(), e))?;
        Self::with_db(db)
    }

    fn with_db(db: Database) -> Result<Self> {
        let tx = db.begin_write()?;
        {
            tx.open_table(RECORDS)?;
            let seen = tx.open_table(SEEN_GRANTS)?;
            let mut by_expiry = tx.open_table(SEEN_BY_EXPIRY)?;
            // Grants served before the expiry index existed.
            if by_expiry.is_empty()? {
                for item in seen.iter()? {
                    let (id, expires) = item?;
                    by_expiry.insert((expires.value(), id.value()), ())?;
                }
            }
            tx.open_table(OUTBOX)?;
            tx.open_table(REFUSALS)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(kept::KEPT)?;
            tx.open_table(kept::KEPT_BY_EXPIRY)?;
        }
        tx.commit()?;
        Ok(Self {
            db,
            write_failure: std::sync::Mutex::new(None),
        })
    }

    /// Whether this node can record what it is about to receive: a node that could
    /// not record a receipt must not ask for records, or the source discloses them
    /// and the EMR gets nothing. Free while writes succeed; after a failed write, a
    /// small write is tried, and its failure refuses.
    pub fn can_record(&self) -> Result<()> {
        if !self.write_failed() {
            return Ok(());
        }
        let tried = (|| -> Result<()> {
            let tx = self.db.begin_write()?;
            {
                let mut c = tx.open_table(COUNTERS)?;
                let n = c.get("write_probe")?.map_or(0, |g| g.value());
                c.insert("write_probe", n.wrapping_add(1))?;
            }
            tx.commit()?;
            Ok(())
        })();
        self.wrote(&tried);
        tried.map_err(|e| StoreError::CannotWrite(e.to_string()))
    }

    /// A snapshot for a backup, and how many records it holds.
    pub(crate) fn snapshot(
        &self,
    ) -> std::result::Result<(redb::ReadTransaction, u64), iryo_p2p::backup::BackupError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read()?;
        iryo_p2p::backup::only_tables(
            &tx,
            &[
                "records",
                "seen_grants",
                "seen_grants_by_expiry",
                "outbox",
                "refusals",
                "counters",
                "kept_answers",
                "kept_answers_by_expiry",
            ],
            "node.redb",
        )?;
        let records = match tx.open_table(RECORDS) {
            Ok(t) => t.len()?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok((tx, records))
    }

    /// Copies every table of a snapshot into a fresh file (a backup).
    pub(crate) fn copy_snapshot(
        from: &redb::ReadTransaction,
        to: &Database,
    ) -> std::result::Result<(), iryo_p2p::backup::BackupError> {
        use iryo_p2p::backup::copy_table;
        copy_table(from, to, RECORDS)?;
        copy_table(from, to, SEEN_GRANTS)?;
        copy_table(from, to, SEEN_BY_EXPIRY)?;
        copy_table(from, to, OUTBOX)?;
        copy_table(from, to, REFUSALS)?;
        copy_table(from, to, COUNTERS)?;
        copy_table(from, to, kept::KEPT)?;
        copy_table(from, to, kept::KEPT_BY_EXPIRY)?;
        Ok(())
    }

    /// Whether the last write failed; `can_record` then tries one.
    pub fn write_failed(&self) -> bool {
        self.write_failure.lock().map_or(true, |f| f.is_some())
    }

    /// Notes how a write ended, for `can_record`.
    fn wrote<T>(&self, result: &Result<T>) {
        if let Ok(mut f) = self.write_failure.lock() {
            *f = result.as_ref().err().map(ToString::to_string);
        }
    }

    /// Stores resources for a patient. Refused, storing nothing, when the patient's
    /// records would no longer fit the Bundle one fetch returns: such records could
    /// never be served to another institution.
    pub fn put_records(&self, id: MedicalId, resources: &[Value]) -> Result<()> {
        let encoded = resources
            .iter()
            .map(|r| serde_json::to_vec(r).map_err(|e| StoreError::Codec(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        let tx = self.db.begin_write()?;
        {
            let mut counters = tx.open_table(COUNTERS)?;
            let mut seq = counters.get("record")?.map_or(1, |g| g.value());
            let mut t = tx.open_table(RECORDS)?;
            let mut sizes = Vec::new();
            for item in t.range((id.as_u64(), 0)..=(id.as_u64(), u64::MAX))? {
                sizes.push(item?.1.value().len());
            }
            sizes.extend(encoded.iter().map(Vec::len));
            let size = crate::fhir::bundle_size(sizes.into_iter());
            if size > crate::fhir::MAX_RECORDS_BYTES {
                return Err(StoreError::TooLarge {
                    size,
                    max: crate::fhir::MAX_RECORDS_BYTES,
                });
            }
            for bytes in &encoded {
                t.insert((id.as_u64(), seq), bytes.as_slice())?;
                seq += 1;
            }
            counters.insert("record", seq)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn records(&self, id: MedicalId) -> Result<Vec<Record>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.range((id.as_u64(), 0)..=(id.as_u64(), u64::MAX))? {
            out.push(item?.1.value().to_vec());
        }
        Ok(out)
    }

    /// Serves grants, each once: in one transaction marks each used, reads its records,
    /// and puts the disclosure notification its `notify` builds into the outbox. One
    /// commit for all of them; a replayed grant fails alone. Grants that expired before
    /// `forget_before` are forgotten: the offline checks refuse them anyway.
    pub fn serve_grants(
        &self,
        jobs: Vec<ServeJob>,
        forget_before: i64,
    ) -> Result<Vec<Result<Vec<Record>>>> {
        let tx = self.db.begin_write()?;
        let mut out = Vec::with_capacity(jobs.len());
        {
            let mut seen = tx.open_table(SEEN_GRANTS)?;
            let mut by_expiry = tx.open_table(SEEN_BY_EXPIRY)?;
            let expired: Vec<(i64, [u8; 16])> = by_expiry
                .range(..(forget_before, [0u8; 16]))?
                .take(FORGET_AT_ONCE)
                .map(|item| item.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()?;
            for key in expired {
                by_expiry.remove(key)?;
                seen.remove(key.1)?;
            }
            let t = tx.open_table(RECORDS)?;
            for job in jobs {
                if seen.get(job.grant_id)?.is_some() {
                    out.push(Err(StoreError::Replayed));
                    continue;
                }
                let mut records = Vec::new();
                let id = job.medical_id.as_u64();
                for item in t.range((id, 0)..=(id, u64::MAX))? {
                    records.push(item?.1.value().to_vec());
                }
                // Records that cannot be sent are not disclosed: the grant stays
                // unused and no disclosure is reported.
                let size = crate::fhir::bundle_size(records.iter().map(Vec::len));
                if size > crate::fhir::MAX_RECORDS_BYTES {
                    out.push(Err(StoreError::TooLarge {
                        size,
                        max: crate::fhir::MAX_RECORDS_BYTES,
                    }));
                    continue;
                }
                seen.insert(job.grant_id, job.expires_at)?;
                by_expiry.insert((job.expires_at, job.grant_id), ())?;
                let contents = crate::fhir::stored_contents(&records)
                    .map_err(|e| StoreError::Codec(e.to_string()))?;
                let n = (job.notify)(&contents);
                put_outbox(&tx, &n)?;
                out.push(Ok(records));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Queues a notification, durably, before the caller reports success.
    pub fn queue(&self, n: &Signed<Notification>) -> Result<()> {
        let queued = (|| {
            let tx = self.db.begin_write()?;
            put_outbox(&tx, n)?;
            tx.commit()?;
            Ok(())
        })();
        self.wrote(&queued);
        queued
    }

    pub fn outbox(&self, limit: usize) -> Result<Vec<Signed<Notification>>> {
        self.queued(OUTBOX, limit)
    }

    /// The first `limit` entries of a queue table, decoded.
    fn queued<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<[u8; 16], &[u8]>,
        limit: usize,
    ) -> Result<Vec<T>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = Vec::new();
        for item in t.iter()?.take(limit) {
            out.push(
                postcard::from_bytes(item?.1.value())
                    .map_err(|e| StoreError::Codec(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Queues a signed report of a refused fetch, durably, for the directory. Past
    /// `MAX_PENDING_REFUSALS` waiting (the directory unreachable during a flood of bad
    /// grants), further reports are dropped and logged rather than fill the disk.
    pub fn queue_refusal(&self, r: &Signed<RefusalReport>) -> Result<()> {
        let id = r
            .open_unverified()
            .map_err(|e| StoreError::Codec(e.to_string()))?
            .id;
        let bytes = postcard::to_allocvec(r).map_err(|e| StoreError::Codec(e.to_string()))?;
        let tx = self.db.begin_write()?;
        let mut t = tx.open_table(REFUSALS)?;
        if t.len()? >= MAX_PENDING_REFUSALS {
            tracing::warn!("refusal reports waiting at their limit; this one is dropped");
            return Ok(());
        }
        t.insert(id, bytes.as_slice())?;
        drop(t);
        tx.commit()?;
        Ok(())
    }

    /// Refusal reports waiting for the directory, oldest first.
    pub fn refusals(&self, limit: usize) -> Result<Vec<Signed<RefusalReport>>> {
        self.queued(REFUSALS, limit)
    }

    /// Removes refusal reports the directory acknowledged.
    pub fn acknowledge_refusals(&self, ids: &[[u8; 16]]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(REFUSALS)?;
            for id in ids {
                t.remove(*id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The witnessed checkpoint accepted last, if any.
    pub fn witnessed(&self) -> Result<Option<crate::witnessed::Kept>> {
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(WITNESSED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match t.get("latest")? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).map_err(|e| StoreError::Codec(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    /// Keeps the witnessed checkpoint accepted last, durably: a restarted node must
    /// still know what it saw, or a fork shown after the restart would pass.
    pub fn keep_witnessed(&self, kept: &crate::witnessed::Kept) -> Result<()> {
        let bytes = postcard::to_allocvec(kept).map_err(|e| StoreError::Codec(e.to_string()))?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(WITNESSED)?;
            t.insert("latest", bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How many served grants are remembered, to refuse their replay.
    pub fn seen_grants(&self) -> Result<u64> {
        Ok(self.db.begin_read()?.open_table(SEEN_GRANTS)?.len()?)
    }

    pub fn outbox_len(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(OUTBOX)?.len()?)
    }

    /// Removes what the directory acknowledged. This commit alone is not made durable
    /// (it would cost an `fdatasync` for nothing the node must keep): the next queued
    /// notification's durable commit carries it to disk, and if a crash loses it first,
    /// the entries are delivered again and the directory, which de-duplicates by id,
    /// acknowledges them again.
    pub fn acknowledge(&self, ids: &[[u8; 16]]) -> Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        {
            let mut t = tx.open_table(OUTBOX)?;
            for id in ids {
                t.remove(*id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn put_outbox(tx: &redb::WriteTransaction, n: &Signed<Notification>) -> Result<()> {
    let id = n
        .open_unverified()
        .map_err(|e| StoreError::Codec(e.to_string()))?
        .id;
    let bytes = postcard::to_allocvec(n).map_err(|e| StoreError::Codec(e.to_string()))?;
    tx.open_table(OUTBOX)?.insert(id, bytes.as_slice())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iryo_proto::federation::{Purpose, Side};

    /// A file whose writes fail while `full` is set, as on a full disk.
    #[derive(Debug)]
    struct Filling {
        file: redb::backends::FileBackend,
        full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for Filling {
        fn len(&self) -> std::result::Result<u64, std::io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
            self.full()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
            self.full()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
            self.full()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::result::Result<(), std::io::Error> {
            self.file.close()
        }
    }

    impl Filling {
        fn full(&self) -> std::result::Result<(), std::io::Error> {
            if self.full.load(std::sync::atomic::Ordering::Acquire) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    #[test]
    fn a_node_that_cannot_write_does_not_ask() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("node.redb"))
            .unwrap();
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let backend = Filling {
            file: redb::backends::FileBackend::new(file).unwrap(),
            full: full.clone(),
        };
        let db = Database::builder().create_with_backend(backend).unwrap();
        let s = Store::with_db(db).unwrap();
        s.can_record().unwrap();
        full.store(true, Ordering::Release);
        assert!(s.queue(&receipt()).is_err());
        match s.can_record() {
            Err(e @ StoreError::CannotWrite(_)) => {
                assert!(e.to_string().contains("restart the node"), "{e}");
            }
            other => panic!("a node that cannot write may ask: {other:?}"),
        }
        // Space freed: redb refuses further writes until the file is reopened, and
        // the node still refuses rather than fetch what it cannot record.
        full.store(false, Ordering::Release);
        assert!(s.can_record().is_err());
    }

    pub(super) fn receipt() -> Signed<Notification> {
        Signed::sign(
            &Notification {
                id: [3; 16],
                side: Side::Received,
                grant_id: [2; 16],
                medical_id: MedicalId::from_body(9),
                source: iryo_proto::InstitutionCode::parse("1310000011").unwrap(),
                requester: iryo_proto::InstitutionCode::parse("1310000011").unwrap(),
                purpose: Purpose::Treatment,
                emergency: false,
                record_count: 1,
                resource_types: Vec::new(),
                at: 0,
            },
            &ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
        )
    }

    fn note(medical_id: MedicalId) -> Disclosure {
        Box::new(move |c: &Contents| {
            Signed::sign(
                &Notification {
                    id: [1; 16],
                    side: Side::Disclosed,
                    grant_id: [2; 16],
                    medical_id,
                    source: iryo_proto::InstitutionCode::parse("1310000011").unwrap(),
                    requester: iryo_proto::InstitutionCode::parse("1310000011").unwrap(),
                    purpose: Purpose::Treatment,
                    emergency: false,
                    record_count: c.count,
                    resource_types: c.types.clone(),
                    at: 0,
                },
                &ed25519_dalek::SigningKey::from_bytes(&[5; 32]),
            )
        })
    }

    fn big(bytes: usize) -> Value {
        serde_json::json!({"resourceType": "Observation", "status": "final", "note": [{"text": "x".repeat(bytes)}]})
    }

    #[test]
    fn records_that_could_not_be_sent_are_neither_stored_nor_disclosed() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("node.redb")).unwrap();
        let id = MedicalId::from_body(9);
        let seven = 7 << 20;
        s.put_records(id, &[big(seven)]).unwrap();
        s.put_records(id, &[big(seven)]).unwrap();
        assert!(matches!(
            s.put_records(id, &[big(seven)]),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(
            s.records(id).unwrap().len(),
            2,
            "the refused PUT stored nothing"
        );
        // Records stored before the limit existed: serving them is refused, the grant
        // stays unused and no disclosure is queued.
        {
            let tx = s.db.begin_write().unwrap();
            tx.open_table(RECORDS)
                .unwrap()
                .insert(
                    (id.as_u64(), 99),
                    serde_json::to_vec(&big(seven)).unwrap().as_slice(),
                )
                .unwrap();
            tx.commit().unwrap();
        }
        let job = ServeJob {
            grant_id: [3; 16],
            expires_at: 0,
            medical_id: id,
            notify: note(id),
        };
        let out = s.serve_grants(vec![job], 0).unwrap();
        assert!(matches!(out[0], Err(StoreError::TooLarge { .. })));
        assert_eq!(s.outbox_len().unwrap(), 0);
        let job = ServeJob {
            grant_id: [3; 16],
            expires_at: 0,
            medical_id: id,
            notify: note(id),
        };
        assert!(
            !matches!(
                s.serve_grants(vec![job], 0).unwrap()[0],
                Err(StoreError::Replayed)
            ),
            "the grant was not used"
        );
    }

    #[test]
    fn served_grants_are_remembered_until_no_check_would_accept_them() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("node.redb")).unwrap();
        let id = MedicalId::from_body(9);
        let job = |n: u8, expires_at: i64| ServeJob {
            grant_id: [n; 16],
            expires_at,
            medical_id: id,
            notify: note(id),
        };
        // 100 grants served, expiring at 1000..1099.
        for n in 0..100u8 {
            assert!(s
                .serve_grants(vec![job(n, 1000 + i64::from(n))], 0)
                .unwrap()[0]
                .is_ok());
        }
        assert_eq!(s.seen_grants().unwrap(), 100);
        // Still valid ones are replays whatever the time.
        let again = s.serve_grants(vec![job(99, 1099)], 1050).unwrap();
        assert!(matches!(again[0], Err(StoreError::Replayed)));
        // That commit forgot at most FORGET_AT_ONCE of those expired before 1050.
        assert_eq!(s.seen_grants().unwrap(), 100 - 50);
        s.serve_grants(vec![job(200, 5000)], 2000).unwrap();
        assert_eq!(s.seen_grants().unwrap(), 1, "only the one still valid");
        // Reopened, the index is whole.
        drop(s);
        let s = Store::open(&tmp.path().join("node.redb")).unwrap();
        let again = s.serve_grants(vec![job(200, 5000)], 2000).unwrap();
        assert!(matches!(again[0], Err(StoreError::Replayed)));
    }
}
