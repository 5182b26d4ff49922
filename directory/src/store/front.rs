//! What the HTTPS front keeps in the store besides the registry: portal accounts,
//! signed-in sessions, the counts of failed sign-ins, and insurers' upload jobs. They
//! live in the store, not in a process's memory, so a restart or a second `serve` on
//! the same database signs no one out, forgets no failed guess and loses no upload.

use super::tables::{PORTAL_SESSIONS, SIGN_IN_TRIES, UPLOAD_JOBS};
use super::{decode, encode, Holder, Patient, Result, Serving, Store, StoreError};
use crate::enrollment::Summary;
use crate::registry::Timestamp;
use ed25519_dalek::VerifyingKey;
use iryo_proto::merkle;
use iryo_proto::MedicalId;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

/// A signed-in session, kept under the SHA-256 of its token: the token itself is only
/// in the person's cookie, so a copy of the store lets no one in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub pid: u64,
    pub medical_id: MedicalId,
    /// Every form of the session carries it; a POST without it is refused.
    pub csrf: String,
    /// When the session ends unless it is used again.
    pub expires: Timestamp,
}

/// The failed tries of one address or account (`web::limits` decides with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryCount {
    pub failures: u32,
    /// Milliseconds since the epoch when the window of these failures began.
    pub since_ms: i64,
    /// No try before this moment, in milliseconds since the epoch (accounts only).
    pub not_before_ms: i64,
}

/// An insurer's upload and its outcome, as the insurer is shown it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    pub id: String,
    pub insurer: String,
    /// "running", "done" or "failed".
    pub state: String,
    pub summary: Option<Summary>,
    pub error: Option<String>,
}

/// The counts of failed sign-ins: read, decided on and written back under one lock,
/// so tries arriving together, at one process or several, are all counted.
pub trait TryCounts {
    /// Reads the counts of `subjects` (absent: `None`), lets `decide` change them
    /// (`None` deletes) and writes them back, all in one transaction that every other
    /// caller waits for. `decide` also gets how many subjects are tracked in all when
    /// one of these is new, and 0 otherwise.
    fn count_tries(
        &self,
        subjects: &[String],
        decide: &mut dyn FnMut(&mut [Option<TryCount>], u64),
    ) -> Result<()>;
    /// Forgets the counts whose window began before `window_before` and whose wait
    /// ended before `wait_before` (milliseconds since the epoch); returns how many.
    fn forget_tries(&self, window_before: i64, wait_before: i64) -> Result<u64>;
}

/// Everything the HTTPS front asks of the store, on either backend.
pub trait Front: Serving + TryCounts {
    fn account(&self, pid: u64) -> Result<Option<super::Account>>;
    /// Uses the activation code once and sets the passphrase hash (`store::portal`).
    fn activate(
        &self,
        holder: &Holder,
        code: &str,
        passphrase_phc: &str,
        at: Timestamp,
    ) -> Result<()>;
    /// The patient `id` names: the exchange authority's subject where it keeps one,
    /// the person otherwise.
    fn patient(&self, id: MedicalId) -> Result<Patient> {
        match self.subject_by_medical_id(id)? {
            Some(s) => {
                let current = s.ids.last().copied().unwrap_or(id);
                Ok(Patient::Subject(s, current))
            }
            None => Ok(Patient::Person(Box::new(self.person_by_medical_id(id)?))),
        }
    }
    /// Writes what an operator did to the audit log; returns the entry's index.
    fn log_operator(&self, operator: &str, action: String) -> Result<u64>;

    fn put_session(&self, token: &[u8; 32], session: &SessionRecord) -> Result<()>;
    fn session(&self, token: &[u8; 32]) -> Result<Option<SessionRecord>>;
    fn end_session(&self, token: &[u8; 32]) -> Result<()>;
    /// Deletes the sessions that expired before `at`; returns how many.
    fn end_sessions_before(&self, at: Timestamp) -> Result<u64>;

    fn put_job(&self, job: &JobState) -> Result<()>;
    fn job(&self, id: &str) -> Result<Option<JobState>>;

    /// Proves entry `index` against the latest signed head, signing one first if the
    /// entry is newer than every head; returns the head's size if the proof verifies
    /// under `agency`, `None` if it does not or no head covers the entry.
    fn prove_entry(&self, index: u64, agency: &VerifyingKey) -> Result<Option<u64>> {
        let head = match self.current_head() {
            Ok((head, _)) => head,
            Err(StoreError::EmptyLog) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(head) = head.verify(agency) else {
            return Ok(None);
        };
        if index >= head.size {
            return Ok(None);
        }
        let leaf = merkle::leaf_hash(&self.audit_entry(index)?.canonical());
        let proof = self.inclusion_proof(index, head.size)?;
        Ok(
            merkle::verify_inclusion(&leaf, index, head.size, &proof, &head.root)
                .then_some(head.size),
        )
    }
}

fn job_bytes(job: &JobState) -> Result<Vec<u8>> {
    serde_json::to_vec(job).map_err(|e| StoreError::Inconsistent(format!("upload job: {e}")))
}

pub(crate) fn job_from(bytes: &[u8]) -> Result<JobState> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Inconsistent(format!("upload job: {e}")))
}

impl TryCounts for Store {
    fn count_tries(
        &self,
        subjects: &[String],
        decide: &mut dyn FnMut(&mut [Option<TryCount>], u64),
    ) -> Result<()> {
        // redb has one writer at a time: the write transaction is the lock.
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = tx.open_table(SIGN_IN_TRIES).map_err(redb::Error::from)?;
            let mut counts = Vec::with_capacity(subjects.len());
            for s in subjects {
                let got = table.get(s.as_str()).map_err(redb::Error::from)?;
                counts.push(match got {
                    Some(v) => Some(decode::<TryCount>(v.value())?),
                    None => None,
                });
            }
            let tracked = if counts.iter().any(Option::is_none) {
                table.len().map_err(redb::Error::from)?
            } else {
                0
            };
            decide(&mut counts, tracked);
            for (s, c) in subjects.iter().zip(&counts) {
                match c {
                    Some(c) => {
                        table
                            .insert(s.as_str(), encode(c)?.as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    None => {
                        table.remove(s.as_str()).map_err(redb::Error::from)?;
                    }
                }
            }
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn forget_tries(&self, window_before: i64, wait_before: i64) -> Result<u64> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let gone = {
            let mut table = tx.open_table(SIGN_IN_TRIES).map_err(redb::Error::from)?;
            let before = table.len().map_err(redb::Error::from)?;
            table
                .retain(|_, v| {
                    decode::<TryCount>(v).is_ok_and(|c| {
                        c.since_ms >= window_before || c.not_before_ms >= wait_before
                    })
                })
                .map_err(redb::Error::from)?;
            before - table.len().map_err(redb::Error::from)?
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(gone)
    }
}

impl Front for Store {
    fn account(&self, pid: u64) -> Result<Option<super::Account>> {
        Store::account(self, pid)
    }

    fn activate(&self, holder: &Holder, code: &str, phc: &str, at: Timestamp) -> Result<()> {
        Store::activate(self, holder, code, phc, at)
    }

    fn log_operator(&self, operator: &str, action: String) -> Result<u64> {
        Store::log_operator(self, operator, action)
    }

    fn put_session(&self, token: &[u8; 32], session: &SessionRecord) -> Result<()> {
        let bytes = encode(session)?;
        self.small_write(|tx| {
            tx.open_table(PORTAL_SESSIONS)?
                .insert(token, bytes.as_slice())?;
            Ok(())
        })
    }

    fn session(&self, token: &[u8; 32]) -> Result<Option<SessionRecord>> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(PORTAL_SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(token)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn end_session(&self, token: &[u8; 32]) -> Result<()> {
        self.small_write(|tx| {
            tx.open_table(PORTAL_SESSIONS)?.remove(token)?;
            Ok(())
        })
    }

    fn end_sessions_before(&self, at: Timestamp) -> Result<u64> {
        self.small_write(|tx| {
            let mut table = tx.open_table(PORTAL_SESSIONS)?;
            let before = table.len()?;
            table.retain(|_, v| decode::<SessionRecord>(v).is_ok_and(|s| s.expires >= at))?;
            Ok(before - table.len()?)
        })
    }

    fn put_job(&self, job: &JobState) -> Result<()> {
        let bytes = job_bytes(job)?;
        self.small_write(|tx| {
            tx.open_table(UPLOAD_JOBS)?
                .insert(job.id.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Result<Option<JobState>> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(UPLOAD_JOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(id)? {
            Some(v) => Ok(Some(job_from(v.value())?)),
            None => Ok(None),
        }
    }
}

impl Store {
    /// One write transaction of the front's own tables, which no registry rule reads.
    fn small_write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(redb::Error::from)?;
        Ok(out)
    }
}
