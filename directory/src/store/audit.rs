//! The audit log in redb: append-only leaves, the hashes of every completed perfect
//! subtree (so roots and proofs need O(log n) reads), and heads signed by the agency:
//! at most one a second by the transactions that append, and one at once for whoever
//! needs the whole log covered (`sign_pending_head`).

use super::tables::*;
use super::{decode, encode, Result, Store, StoreError};
use crate::audit::LogEntry;
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_proto::federation::{Time, TreeHead};
use iryo_proto::merkle::{self, Hash, Subtrees};
use iryo_proto::signed::Signed;
use iryo_proto::MedicalId;
use redb::{ReadableDatabase, ReadableTable};

/// Subtrees of at least 2^STORED_FROM leaves are stored; smaller ones are rehashed from
/// their leaves (at most 8 reads) when a root or a proof needs them. Storing every level
/// cost each append two more B-tree inserts; appends were a fifth of the group commit's
/// CPU at 20,000 checks/s, for hashes only proofs and heads ever read.
pub(crate) const STORED_FROM: u32 = 4;

/// Where a subtree ends, and its level (`subtree_key`).
type SubtreeKey = (u64, u32);
/// A leaf: a log entry's canonical bytes.
type Entry = &'static [u8];

/// Perfect-subtree hashes read from the log's tables, in or out of a write.
struct Nodes<'a, L, N> {
    leaves: &'a L,
    nodes: &'a N,
}

impl<L, N> Subtrees for Nodes<'_, L, N>
where
    L: ReadableTable<u64, Entry>,
    N: ReadableTable<SubtreeKey, Hash>,
{
    type Error = StoreError;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash> {
        if level < STORED_FROM {
            return self.rehash(level, index);
        }
        self.nodes
            .get(subtree_key(level, index))?
            .map(|g| g.value())
            .ok_or_else(|| missing(level, index))
    }
}

impl<L, N> Nodes<'_, L, N>
where
    L: ReadableTable<u64, Entry>,
{
    /// A perfect subtree's hash from its leaves.
    fn rehash(&self, level: u32, index: u64) -> Result<Hash> {
        let (first, count) = (index << level, 1u64 << level);
        let mut hashes = Vec::with_capacity(count as usize);
        for item in self.leaves.range(first..first + count)? {
            hashes.push(merkle::leaf_hash(item?.1.value()));
        }
        if hashes.len() as u64 != count {
            return Err(missing(level, index));
        }
        Ok(merkle::perfect_hash(hashes))
    }
}

fn missing(level: u32, index: u64) -> StoreError {
    StoreError::Inconsistent(format!("audit subtree ({level}, {index}) missing"))
}

impl<'t> Tables<'t> {
    fn subtrees(
        &self,
    ) -> Result<Nodes<'_, redb::Table<'t, u64, Entry>, redb::Table<'t, SubtreeKey, Hash>>> {
        Ok(Nodes {
            leaves: self.audit_leaves.open()?,
            nodes: self.audit_nodes.open()?,
        })
    }

    pub(super) fn audit_size(&self) -> Result<u64> {
        Ok(self.peek(AUDIT_NEXT)? - 1)
    }

    /// Appends an entry and returns its index.
    pub(super) fn audit_append(&mut self, entry: &LogEntry) -> Result<u64> {
        let index = self.next(AUDIT_NEXT)? - 1;
        self.audit_leaves
            .open_mut()?
            .insert(index, entry.canonical().as_slice())?;
        // When this leaf completes a stored subtree, keep its hash and those of the
        // larger subtrees it completes in turn.
        if (index + 1).is_multiple_of(1 << STORED_FROM) {
            let (mut level, mut i) = (STORED_FROM, index >> STORED_FROM);
            let mut hash = self.subtrees()?.rehash(level, i)?;
            self.audit_nodes
                .open_mut()?
                .insert(subtree_key(level, i), hash)?;
            while i & 1 == 1 {
                let left = self.subtrees()?.perfect(level, i - 1)?;
                hash = merkle::node_hash(&left, &hash);
                level += 1;
                i >>= 1;
                self.audit_nodes
                    .open_mut()?
                    .insert(subtree_key(level, i), hash)?;
            }
        }
        self.audit_dirty = true;
        Ok(index)
    }

    /// Signs and stores the head of the log as it stands.
    pub(super) fn sign_head(&mut self, key: &SigningKey, at: Time) -> Result<Signed<TreeHead>> {
        let size = self.audit_size()?;
        let root = merkle::root(&self.subtrees()?, size)?;
        let head = Signed::sign(&TreeHead { size, root, at }, key);
        self.audit_heads
            .open_mut()?
            .insert(size, encode(&head)?.as_slice())?;
        self.audit_dirty = false;
        Ok(head)
    }
}

pub use crate::log_check::AuditReport;

/// Every medical ID a person has held, under which the log names them.
/// Writes that `operator` read `what` of each of these people, one entry each, so that
/// every person sees it in their access log; a registry run apart tells the exchange
/// authority, where My Portal shows it. Either backend.
pub(crate) fn log_reads(
    t: &mut (impl super::registry_tx::RegistryTx + ?Sized),
    operator: &str,
    people: &[MedicalId],
    what: &str,
    at: crate::registry::Timestamp,
) -> Result<()> {
    for id in people {
        t.audit_append(&LogEntry::OperatorRead {
            operator: operator.into(),
            medical_id: *id,
            what: what.into(),
            at,
        })?;
        t.tell_authority(
            iryo_proto::roles::NoticeKind::StaffRead {
                medical_id: *id,
                operator: operator.into(),
                what: what.into(),
            },
            at,
        )?;
    }
    Ok(())
}

pub(crate) fn ids_held(person: &crate::registry::Person) -> Vec<MedicalId> {
    let mut ids: Vec<MedicalId> = person
        .history
        .iter()
        .filter_map(|e| match e {
            crate::registry::Event::Issued { id, .. } => Some(*id),
            crate::registry::Event::IdChanged { new, .. } => Some(*new),
            _ => None,
        })
        .collect();
    if !ids.contains(&person.medical_id) {
        ids.push(person.medical_id);
    }
    ids
}

impl Store {
    pub fn audit_size(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT_LEAVES)?;
        let size = t.last()?.map_or(0, |(k, _)| k.value() + 1);
        Ok(size)
    }

    pub fn audit_entry(&self, index: u64) -> Result<LogEntry> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT_LEAVES)?;
        let v = t.get(index)?.ok_or(StoreError::NoAuditEntry(index))?;
        decode(v.value())
    }

    pub fn audit_root(&self, size: u64) -> Result<Hash> {
        self.read_subtrees(|s| merkle::root(s, size))
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        if index >= size || size > self.audit_size()? {
            return Err(StoreError::NotInLog { index, size });
        }
        self.read_subtrees(|s| merkle::inclusion_proof(s, index, size))
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        if old > new || new > self.audit_size()? {
            return Err(StoreError::NoConsistency { old, new });
        }
        self.read_subtrees(|s| merkle::consistency_proof(s, old, new))
    }

    fn read_subtrees<T>(
        &self,
        f: impl FnOnce(
            &Nodes<
                '_,
                redb::ReadOnlyTable<u64, &'static [u8]>,
                redb::ReadOnlyTable<(u64, u32), [u8; 32]>,
            >,
        ) -> Result<T>,
    ) -> Result<T> {
        let tx = self.db.begin_read()?;
        f(&Nodes {
            leaves: &tx.open_table(AUDIT_LEAVES)?,
            nodes: &tx.open_table(AUDIT_NODES)?,
        })
    }

    /// Signs a head for the whole log if the latest one does not cover it. Returns
    /// whether it signed one.
    pub fn sign_pending_head(&self) -> Result<bool> {
        if !self.head_pending()? {
            return Ok(false);
        }
        let tx = self.db.begin_write()?;
        let at = crate::registry::now();
        {
            let mut t = Tables::open(&tx)?;
            // Checked again under the write lock: a commit may have signed meanwhile.
            let covered = t.audit_heads.open()?.last()?.map(|(k, _)| k.value());
            if covered == Some(t.audit_size()?) {
                return Ok(false);
            }
            t.sign_head(self.signer()?, at)?;
        }
        tx.commit()?;
        self.head_signed_at
            .fetch_max(at, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    /// Whether the log has entries that no signed head covers yet.
    pub fn head_pending(&self) -> Result<bool> {
        Ok(self.audit_size()? > self.latest_head_size()?)
    }

    /// How many entries the most recent signed head covers.
    fn latest_head_size(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let heads = tx.open_table(AUDIT_HEADS)?;
        let last = heads.last()?;
        Ok(last.map_or(0, |(k, _)| k.value()))
    }

    /// The most recent signed tree head.
    /// A head covering every entry so far (signed now if the last were not covered)
    /// and its size.
    pub fn current_head(&self) -> Result<(Signed<TreeHead>, u64)> {
        self.sign_pending_head()?;
        let head = self.latest_head()?.ok_or(StoreError::EmptyLog)?;
        let size = head
            .open_unverified()
            .map_err(|e| StoreError::Inconsistent(e.to_string()))?
            .size;
        Ok((head, size))
    }

    /// Keeps a checkpoint of `size` with witnesses' cosignatures (a signed note).
    pub fn keep_witnessed(&self, size: u64, note: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(WITNESSED)?;
            t.insert(size, note)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The kept cosigned checkpoint of `size`, or the largest one kept.
    pub fn witnessed(&self, size: Option<u64>) -> Result<Option<(u64, String)>> {
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(WITNESSED) {
            Ok(t) => t,
            // A store from before witnesses kept none.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(match size {
            Some(s) => t.get(s)?.map(|v| (s, v.value().to_string())),
            None => t.last()?.map(|(k, v)| (k.value(), v.value().to_string())),
        })
    }

    /// The key that signed the log's first tree head, if there is one.
    pub fn first_head_signer(&self) -> Result<Option<[u8; 32]>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT_HEADS)?;
        let first = t.first()?;
        match first {
            Some((_, v)) => Ok(Some(decode::<Signed<TreeHead>>(v.value())?.signer)),
            None => Ok(None),
        }
    }

    pub fn latest_head(&self) -> Result<Option<Signed<TreeHead>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT_HEADS)?;
        let last = t.last()?;
        match last {
            Some((_, v)) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The entries about a patient, under each medical ID the patient has held.
    pub fn audit_for_patient(&self, ids: &[MedicalId]) -> Result<Vec<(u64, LogEntry)>> {
        let index = self.linkage.begin_read()?;
        let tx = self.db.begin_read()?;
        let leaves = tx.open_table(AUDIT_LEAVES)?;
        let mut out = Vec::new();
        for id in ids {
            for (i, _) in super::folding::about(&index, &tx, &super::folding::AUDIT, id.as_u64())? {
                if let Some(v) = leaves.get(i)? {
                    out.push((i, decode(v.value())?));
                }
            }
        }
        out.sort_by_key(|e| e.0);
        Ok(out)
    }

    /// Writes that `operator` read `what` of each of these people, one entry each, so
    /// that every person sees it in their access log.
    pub fn log_reads(&self, operator: &str, people: &[MedicalId], what: &str) -> Result<()> {
        if people.is_empty() {
            return Ok(());
        }
        let at = crate::registry::now();
        self.write(|t| log_reads(t, operator, people, what, at))
    }

    /// Writes an operator's action to the log.
    pub fn log_operator(&self, operator: &str, action: String) -> Result<u64> {
        self.write(|t| {
            t.audit_append(&LogEntry::Operator {
                operator: operator.into(),
                action,
                at: crate::registry::now(),
            })
        })
    }

    /// The entries about a person, under every medical ID the person has held.
    pub fn audit_for_person(
        &self,
        person: &crate::registry::Person,
    ) -> Result<Vec<(u64, LogEntry)>> {
        self.audit_for_patient(&ids_held(person))
    }

    /// Recomputes the tree from the entries and checks every stored subtree hash and
    /// every signed head: signature, and root for its size.
    pub fn audit_verify(&self, agency: &VerifyingKey) -> Result<AuditReport> {
        let tx = self.db.begin_read()?;
        let leaves = tx.open_table(AUDIT_LEAVES)?;
        let nodes = tx.open_table(AUDIT_NODES)?;
        let heads = tx.open_table(AUDIT_HEADS)?;
        let mut signed_heads = Vec::new();
        for item in heads.iter()? {
            let (k, v) = item?;
            signed_heads.push((k.value(), decode::<Signed<TreeHead>>(v.value())?));
        }
        let mut check = crate::log_check::LogCheck::new(agency, signed_heads);
        for item in leaves.iter()? {
            let (k, v) = item?;
            check.entry(k.value(), v.value());
        }
        for item in nodes.iter()? {
            let (k, v) = item?;
            check.subtree(k.value(), &v.value());
        }
        Ok(check.finish())
    }
}
