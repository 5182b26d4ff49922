//! The audit log on PostgreSQL: the same leaves, stored subtree hashes and signed heads
//! as the redb store keeps (docs/storage.md), and one append-only RFC 6962 sequence
//! whichever process appends.
//!
//! An appending transaction first takes the log's transaction-level advisory lock, so
//! appenders take turns: the size it then reads cannot change until it commits or
//! rolls back, and the lock goes with either. It reads the log's right edge once
//! (`Frontier`: at most one hash per bit of the size), appends its entries in memory,
//! and writes the leaves and the subtrees they complete in two statements.
//!
//! Roots and proofs ask RFC 6962's recursion which subtrees it needs (it asks by
//! position alone), read those in two statements, then compute.

use super::{sql, unsql, PgError};
use crate::audit::LogEntry;
use crate::log_check::{AuditReport, LogCheck};
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_proto::federation::{Time, TreeHead};
use iryo_proto::merkle::{self, Asked, Frontier, Hash, Prefetched};
use iryo_proto::signed::Signed;
use iryo_proto::MedicalId;
use std::collections::{BTreeSet, HashMap};
use tokio_postgres::GenericClient;

/// Subtrees of at least 2^STORED_FROM leaves are stored, smaller ones rehashed from
/// their leaves: the redb store's rule, and so the same rows.
use crate::store::STORED_FROM;

/// The advisory lock appenders hold ("iryo" and 2 in its bytes).
const APPEND_LOCK: i64 = 0x6972_796f_0000_0002;

/// Leaves `verify` reads at a time.
const VERIFY_PAGE: i64 = 10_000;

fn hash(bytes: &[u8]) -> Result<Hash, PgError> {
    bytes
        .try_into()
        .map_err(|_| PgError::Inconsistent(format!("a stored hash of {} bytes", bytes.len())))
}

/// Entries appended in one transaction, written when it finishes.
pub struct Appender {
    frontier: Frontier,
    leaves: Vec<i64>,
    entries: Vec<Vec<u8>>,
    patients: Vec<Option<i64>>,
    /// Subtrees completed: (last leaf, level, hash).
    subtrees: (Vec<i64>, Vec<i32>, Vec<Vec<u8>>),
}

pub(crate) const APPEND: &str = "SELECT pg_advisory_xact_lock($1)";
/// The log's size and its latest signed head, in one statement.
pub(crate) const LOG_STATE: &str = "SELECT
     (SELECT coalesce(max(leaf) + 1, 0) FROM audit_leaves),
     (SELECT head FROM audit_heads ORDER BY size DESC LIMIT 1)";
/// An append's leaves, the subtrees they complete and the head signed over them, in
/// one statement: a statement is a message and an answer of its own, and the group
/// commit waits for all of them. A data-modifying WITH runs once, whatever reads it.
pub(crate) const LOG_WRITE: &str = "WITH leaves AS (
         INSERT INTO audit_leaves (leaf, entry, medical_id)
         SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bigint[])
     ), subtrees AS (
         INSERT INTO audit_subtrees (last_leaf, level, hash)
         SELECT * FROM unnest($4::bigint[], $5::integer[], $6::bytea[])
     )
     INSERT INTO audit_heads (size, head)
     SELECT $7::bigint, $8::bytea WHERE $8::bytea IS NOT NULL
     ON CONFLICT (size) DO NOTHING";

/// Takes the append lock for the rest of `tx` and reads the log's right edge, unless
/// `known` is the edge of a log of the size found: this process appended last, and
/// kept it.
pub async fn begin(
    tx: &(impl GenericClient + Sync),
    known: Option<&Frontier>,
    prepared: &crate::postgres::prepared::Prepared,
) -> Result<Appender, PgError> {
    // Sent together: the server runs them in order, so the size and the latest head
    // are read once the lock is held, without a round trip between them.
    let (_, state) = futures::try_join!(
        prepared.execute(tx, APPEND, &[&APPEND_LOCK]),
        prepared.query_one(tx, LOG_STATE, &[]),
    )?;
    let size = unsql(state.get(0))?;
    let latest: Option<&[u8]> = state.get(1);
    // The kept edge is this log's only if the head signed over the log as it stands
    // has the kept edge's root: a database restored or failed over to another history
    // of the same length has another root.
    let latest: Option<TreeHead> = latest.and_then(|r| {
        postcard::from_bytes::<Signed<TreeHead>>(r)
            .ok()
            .and_then(|h| h.open_unverified().ok())
    });
    let frontier = match known {
        Some(f)
            if f.size() == size && latest.is_some_and(|h| h.size == size && h.root == f.root()) =>
        {
            f.clone()
        }
        _ => {
            let read = read_subtrees(tx, &Frontier::parts(size)).await?;
            Frontier::load(&read, size)
                .map_err(|e| PgError::Inconsistent(format!("the log's right edge: {e}")))?
        }
    };
    Ok(Appender {
        frontier,
        leaves: Vec::new(),
        entries: Vec::new(),
        patients: Vec::new(),
        subtrees: (Vec::new(), Vec::new(), Vec::new()),
    })
}

impl Appender {
    /// The log's right edge with what was appended.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Whether anything was appended.
    pub fn appended(&self) -> bool {
        !self.leaves.is_empty()
    }

    /// The log's size with what was appended so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Appends an entry; returns its index.
    pub fn append(&mut self, entry: &LogEntry) -> Result<u64, PgError> {
        let bytes = entry.canonical();
        let index = self.frontier.size();
        for (level, i, h) in self.frontier.push(merkle::leaf_hash(&bytes)) {
            if level >= STORED_FROM {
                let (last, _) = crate::store::subtree_key(level, i);
                self.subtrees.0.push(sql(last)?);
                self.subtrees.1.push(level as i32);
                self.subtrees.2.push(h.to_vec());
            }
        }
        self.leaves.push(sql(index)?);
        self.entries.push(bytes);
        self.patients
            .push(entry.medical_id().map(|m| sql(m.as_u64())).transpose()?);
        Ok(index)
    }

    /// What was appended and, with a key, a head for the whole log signed at `at`,
    /// encoded for `Sealed::send`: everything that can fail here fails before a
    /// statement is sent.
    pub fn seal(self, sign: Option<(&SigningKey, Time)>) -> Result<SealedLog, PgError> {
        let size = sql(self.frontier.size())?;
        let head = sign
            .map(|(key, at)| {
                let head = Signed::sign(
                    &TreeHead {
                        size: self.frontier.size(),
                        root: self.frontier.root(),
                        at,
                    },
                    key,
                );
                let encoded =
                    postcard::to_allocvec(&head).map_err(|e| PgError::Codec(e.to_string()))?;
                Ok::<_, PgError>((head, encoded))
            })
            .transpose()?;
        Ok(SealedLog {
            appended: self,
            size,
            head,
        })
    }
}

impl Appender {
    /// Writes what was appended and, with a key, a head for the whole log signed at
    /// `at`; the caller commits `tx`.
    pub async fn finish(
        self,
        tx: &(impl GenericClient + Sync),
        sign: Option<(&SigningKey, Time)>,
        prepared: &crate::postgres::prepared::Prepared,
    ) -> Result<Option<Signed<TreeHead>>, PgError> {
        self.seal(sign)?.send(tx, prepared).await
    }
}

/// An `Appender`'s writes, ready to be sent.
pub struct SealedLog {
    appended: Appender,
    size: i64,
    head: Option<(Signed<TreeHead>, Vec<u8>)>,
}

impl SealedLog {
    /// The log's right edge with what was appended.
    pub fn frontier(&self) -> &Frontier {
        &self.appended.frontier
    }

    /// Sends the leaves, the subtrees they complete and the signed head (the caller
    /// commits `tx`); the head.
    pub async fn send(
        self,
        tx: &(impl GenericClient + Sync),
        prepared: &crate::postgres::prepared::Prepared,
    ) -> Result<Option<Signed<TreeHead>>, PgError> {
        let a = &self.appended;
        let head = self.head.as_ref().map(|(_, encoded)| encoded);
        if !a.leaves.is_empty() || head.is_some() {
            prepared
                .execute(
                    tx,
                    LOG_WRITE,
                    &[
                        &a.leaves,
                        &a.entries,
                        &a.patients,
                        &a.subtrees.0,
                        &a.subtrees.1,
                        &a.subtrees.2,
                        &self.size,
                        &head,
                    ],
                )
                .await?;
        }
        Ok(self.head.map(|(h, _)| h))
    }
}

/// Reads the perfect subtrees `asked` for: stored ones by key, smaller ones from
/// their leaves.
async fn read_subtrees(
    c: &impl GenericClient,
    asked: &[(u32, u64)],
) -> Result<Prefetched, PgError> {
    let (mut lasts, mut levels, mut leaves) = (Vec::new(), Vec::new(), BTreeSet::new());
    for &(level, index) in asked {
        if level >= STORED_FROM {
            lasts.push(sql(crate::store::subtree_key(level, index).0)?);
            levels.push(level as i32);
        } else {
            for leaf in index << level..(index + 1) << level {
                leaves.insert(sql(leaf)?);
            }
        }
    }
    let mut read = Prefetched::default();
    let wanted: Vec<i64> = leaves.into_iter().collect();
    let stored = async {
        if lasts.is_empty() {
            return Ok(Vec::new());
        }
        c.query(
            "SELECT s.last_leaf, s.level, s.hash FROM audit_subtrees s
             JOIN unnest($1::bigint[], $2::integer[]) AS k(last_leaf, level)
             USING (last_leaf, level)",
            &[&lasts, &levels],
        )
        .await
    };
    let below = async {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        c.query(
            "SELECT leaf, entry FROM audit_leaves WHERE leaf = ANY($1) ORDER BY leaf",
            &[&wanted],
        )
        .await
    };
    let (stored, rows) = futures::try_join!(stored, below)?;
    for r in stored {
        let (last, level) = (unsql(r.get(0))?, r.get::<_, i32>(1) as u32);
        let index = ((last + 1) >> level) - 1;
        read.0.insert((level, index), hash(r.get(2))?);
    }
    if !wanted.is_empty() {
        let hashes: HashMap<u64, Hash> = rows
            .iter()
            .map(|r| Ok((unsql(r.get(0))?, merkle::leaf_hash(r.get(1)))))
            .collect::<Result<_, PgError>>()?;
        for &(level, index) in asked.iter().filter(|(l, _)| *l < STORED_FROM) {
            let mut below = Vec::with_capacity(1 << level);
            for leaf in index << level..(index + 1) << level {
                match hashes.get(&leaf) {
                    Some(h) => below.push(*h),
                    None => {
                        return Err(PgError::Inconsistent(format!("audit entry {leaf} missing")))
                    }
                }
            }
            read.0.insert((level, index), merkle::perfect_hash(below));
        }
    }
    Ok(read)
}

/// How many entries the log holds.
pub async fn size(c: &impl GenericClient) -> Result<u64, PgError> {
    unsql(
        c.query_one("SELECT coalesce(max(leaf) + 1, 0) FROM audit_leaves", &[])
            .await?
            .get(0),
    )
}

/// The root of the first `size` entries.
pub async fn root(c: &impl GenericClient, size: u64) -> Result<Hash, PgError> {
    let read = read_subtrees(c, &Asked::by(|s| merkle::root(s, size))).await?;
    merkle::root(&read, size).map_err(|e| PgError::Inconsistent(e.to_string()))
}

/// The inclusion proof of entry `index` in the tree of `size` entries.
pub async fn inclusion_proof(
    c: &impl GenericClient,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, PgError> {
    if index >= size || size > self::size(c).await? {
        return Err(PgError::NotInLog { index, size });
    }
    let read = read_subtrees(c, &Asked::by(|s| merkle::inclusion_proof(s, index, size))).await?;
    merkle::inclusion_proof(&read, index, size).map_err(|e| PgError::Inconsistent(e.to_string()))
}

/// The proof that the tree of `old` entries is a prefix of the tree of `new`.
pub async fn consistency_proof(
    c: &impl GenericClient,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, PgError> {
    if old > new || new > self::size(c).await? {
        return Err(PgError::NoConsistency { old, new });
    }
    let read = read_subtrees(c, &Asked::by(|s| merkle::consistency_proof(s, old, new))).await?;
    merkle::consistency_proof(&read, old, new).map_err(|e| PgError::Inconsistent(e.to_string()))
}

/// The most recent signed tree head.
pub async fn latest_head(c: &impl GenericClient) -> Result<Option<Signed<TreeHead>>, PgError> {
    let row = c
        .query_opt(
            "SELECT head FROM audit_heads ORDER BY size DESC LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| postcard::from_bytes(r.get(0)).map_err(|e| PgError::Codec(e.to_string())))
        .transpose()
}

/// The entries about a patient, under each of the medical IDs given, in log order.
pub async fn for_patient(
    c: &impl GenericClient,
    ids: &[MedicalId],
) -> Result<Vec<(u64, LogEntry)>, PgError> {
    let ids: Vec<i64> = ids
        .iter()
        .map(|m| sql(m.as_u64()))
        .collect::<Result<_, _>>()?;
    let rows = c
        .query(
            "SELECT leaf, entry FROM audit_leaves WHERE medical_id = ANY($1) ORDER BY leaf",
            &[&ids],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let entry =
                postcard::from_bytes(r.get(1)).map_err(|e| PgError::Codec(e.to_string()))?;
            Ok((unsql(r.get(0))?, entry))
        })
        .collect()
}

/// `audit verify` on PostgreSQL: the checks of `LogCheck`, reading the entries a page
/// at a time in one repeatable-read snapshot.
pub async fn verify(
    client: &mut tokio_postgres::Client,
    agency: &VerifyingKey,
) -> Result<AuditReport, PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let mut heads = Vec::new();
    for r in tx.query("SELECT size, head FROM audit_heads", &[]).await? {
        let head = postcard::from_bytes(r.get(1)).map_err(|e| PgError::Codec(e.to_string()))?;
        heads.push((unsql(r.get(0))?, head));
    }
    let mut check = LogCheck::new(agency, heads);
    let mut from = 0i64;
    loop {
        let rows = tx
            .query(
                "SELECT leaf, entry FROM audit_leaves WHERE leaf >= $1 ORDER BY leaf LIMIT $2",
                &[&from, &VERIFY_PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        from = last.get::<_, i64>(0) + 1;
        for r in &rows {
            check.entry(unsql(r.get(0))?, r.get(1));
        }
    }
    for r in tx
        .query("SELECT last_leaf, level, hash FROM audit_subtrees", &[])
        .await?
    {
        check.subtree(
            (unsql(r.get(0))?, r.get::<_, i32>(1) as u32),
            &hash(r.get(2))?,
        );
    }
    tx.commit().await?;
    Ok(check.finish())
}
