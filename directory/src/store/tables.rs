//! Table layout. Keys are fixed-width integers or short byte strings so that B-tree
//! pages stay dense; values are postcard-encoded registry types.

use super::{decode, encode, Result, StoreError};
use crate::registry::eligibility::CardStanding;
use crate::registry::{IdEntry, IdStatus, Person};
use iryo_proto::{MedicalId, MyNumber};
use redb::{Key, ReadableTable, Table, TableDefinition, Value, WriteTransaction};
use std::cell::OnceCell;
use std::collections::BTreeMap;

pub(super) const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
/// Counters: next pid, next service-use sequence, next case and notice numbers.
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(super) const PERSONS: TableDefinition<u64, &[u8]> = TableDefinition::new("persons");
/// My Number → pid. A replaced My Number stays as an alias of the same person.
pub(super) const MY_NUMBERS: TableDefinition<u64, u64> = TableDefinition::new("my_numbers");
/// Every medical ID ever issued → IdEntry. Nothing is ever removed.
pub(super) const MEDICAL_IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("medical_ids");
/// Card key (insurer, symbol, number, branch) → the card's `CardStanding`, so a check by
/// card needs no other lookup. Keys start with the insurer number, so one range lists
/// an insurer's people for its assignment file.
pub(super) const CARDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("cards");
/// sequence → (pid, ServiceUse): the linkage DB's service history in the order it
/// happened, appended by every eligibility check and never rewritten. The per-person
/// index is derived from it in a database file of its own (see `store::linkage`).
pub(super) const SERVICE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("service_log");
/// (days since epoch of death, pid) → (), for the retirement sweep.
pub(super) const DEATHS: TableDefinition<(i64, u64), ()> = TableDefinition::new("deaths");
pub(super) const CONFLICTS: TableDefinition<u64, &[u8]> = TableDefinition::new("conflicts");
/// Canonical encoding of an open conflict's row → conflict id, so a re-ingested file
/// records each conflict once.
pub(super) const CONFLICT_KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("conflict_keys");
pub(super) const MISMATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("mismatches");
/// (card key, presented ID) of an open mismatch → mismatch id.
pub(super) const MISMATCH_KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("mismatch_keys");
pub(super) const NOTICES: TableDefinition<u64, &[u8]> = TableDefinition::new("notices");

/// Institution code → InstitutionRecord (signed membership, revocation).
pub(super) const INSTITUTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("institutions");
/// Node public key → institution code, to find the membership of an authenticated peer.
pub(super) const INSTITUTION_KEYS: TableDefinition<[u8; 32], u64> =
    TableDefinition::new("institution_keys");
/// (pid, sequence) → ConsentRecord, in the order the patient decided.
pub(super) const CONSENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("consents");
/// Grant id → GrantRecord: what was granted and which ends have reported using it.
pub(super) const GRANTS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("grants");
/// Grant id → (operator, reason, when): an unmatched grant an operator closed, whose
/// other end's report can never come; `unmatched` no longer lists it.
pub(super) const CLOSED_GRANTS: TableDefinition<[u8; 16], &[u8]> =
    TableDefinition::new("closed_grants");
/// Notification id → audit log index, so a notification delivered twice is logged once.
pub(super) const NOTIFICATION_IDS: TableDefinition<[u8; 16], u64> =
    TableDefinition::new("notification_ids");
/// Audit log index → canonical LogEntry.
pub(super) const AUDIT_LEAVES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_leaves");
/// (last leaf, level) → hash of the perfect subtree of 2^level leaves ending at that leaf
/// (`subtree_key`). Keyed by where a subtree ends, every hash an append completes sorts
/// after all before it, so appends only touch the table's last page.
pub(super) const AUDIT_NODES: TableDefinition<(u64, u32), [u8; 32]> =
    TableDefinition::new("audit_subtrees");

/// The key of the perfect subtree `index` at `level`, which covers leaves
/// [index·2^level, (index+1)·2^level).
pub(crate) fn subtree_key(level: u32, index: u64) -> (u64, u32) {
    (((index + 1) << level) - 1, level)
}
/// Tree size → Signed<TreeHead>.
pub(super) const AUDIT_HEADS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_heads");
/// Size → the checkpoint of that size with witnesses' cosignatures (a signed note).
pub(super) const WITNESSED: TableDefinition<u64, &str> =
    TableDefinition::new("witnessed_checkpoints");
/// pid → portal Account: the activation code's hash and the passphrase's argon2id hash.
pub(super) const PORTAL_ACCOUNTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("portal_accounts");
/// SHA-256 of a session token → SessionRecord (`store::front`).
pub(super) const PORTAL_SESSIONS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("portal_sessions");
/// "a:address" or "m:medical ID" → TryCount of failed sign-ins.
pub(super) const SIGN_IN_TRIES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("sign_in_tries");
/// Upload id → JobState as JSON.
/// A registry's notices to the exchange authority not yet applied there: number →
/// `RegistryNotice` (docs/roles.md).
pub(super) const REGISTRY_OUTBOX: TableDefinition<u64, &[u8]> =
    TableDefinition::new("registry_outbox");
/// The exchange authority's patients: pid → `subjects::Subject` (docs/roles.md).
pub(super) const SUBJECTS: TableDefinition<u64, &[u8]> = TableDefinition::new("subjects");
pub(super) const UPLOAD_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("upload_jobs");

pub(super) const PID: &str = "next_pid";
pub(super) const SERVICE_SEQ: &str = "next_service_use";
pub(super) const CONFLICT_SEQ: &str = "next_conflict";
pub(super) const MISMATCH_SEQ: &str = "next_mismatch";
pub(super) const NOTICE_SEQ: &str = "next_notice";
pub(super) const CONSENT_SEQ: &str = "next_consent";
pub(super) const MEMBERSHIP_SERIAL: &str = "next_membership_serial";
/// The audit log's size is this counter minus one.
pub(super) const AUDIT_NEXT: &str = "audit_next";
/// Counters read from the append-only table they number rather than stored: the next
/// audit index follows the last leaf, the next service use the last entry. Storing them
/// made every check's commit write one more table.
pub(super) const DERIVED_COUNTERS: [&str; 2] = [AUDIT_NEXT, SERVICE_SEQ];

/// How many generations or draws issuance tries before giving up; with 10^15 bodies
/// even a national population makes a single retry rare.
pub(super) const MAX_ISSUE_ATTEMPTS: u32 = 1000;

pub(super) fn days(d: chrono::NaiveDate) -> i64 {
    i64::from(d.num_days_from_ce())
}
use chrono::Datelike;

/// A table opened on its first use in a transaction. redb looks every open table up
/// again at commit, so a commit that opened all of them paid for each one it never
/// touched: opening and closing the twenty tables was 15 % of the group commit's CPU,
/// for a check that writes to three.
pub(super) struct Lazy<'t, K: Key + 'static, V: Value + 'static> {
    tx: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Lazy<'t, K, V> {
    fn new(tx: &'t WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        Self {
            tx,
            def,
            table: OnceCell::new(),
        }
    }

    pub(super) fn open(&self) -> Result<&Table<'t, K, V>> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.tx.open_table(self.def)?;
        Ok(self.table.get_or_init(|| t))
    }

    pub(super) fn open_mut(&mut self) -> Result<&mut Table<'t, K, V>> {
        self.open()?;
        self.table
            .get_mut()
            .ok_or_else(|| StoreError::Inconsistent("a table did not stay open".into()))
    }
}

/// The tables of one write transaction, each opened when first used, with the
/// counters it bumps kept in memory until the end of the transaction.
pub(super) struct Tables<'t> {
    pub persons: Lazy<'t, u64, &'static [u8]>,
    pub my_numbers: Lazy<'t, u64, u64>,
    pub medical_ids: Lazy<'t, u64, &'static [u8]>,
    pub cards: Lazy<'t, &'static [u8], &'static [u8]>,
    pub service_log: Lazy<'t, u64, &'static [u8]>,
    pub deaths: Lazy<'t, (i64, u64), ()>,
    pub conflicts: Lazy<'t, u64, &'static [u8]>,
    pub conflict_keys: Lazy<'t, &'static [u8], u64>,
    pub mismatches: Lazy<'t, u64, &'static [u8]>,
    pub mismatch_keys: Lazy<'t, &'static [u8], u64>,
    pub notices: Lazy<'t, u64, &'static [u8]>,
    pub institutions: Lazy<'t, u64, &'static [u8]>,
    pub institution_keys: Lazy<'t, [u8; 32], u64>,
    pub consents: Lazy<'t, (u64, u64), &'static [u8]>,
    pub grants: Lazy<'t, [u8; 16], &'static [u8]>,
    pub notification_ids: Lazy<'t, [u8; 16], u64>,
    pub audit_leaves: Lazy<'t, u64, &'static [u8]>,
    pub audit_nodes: Lazy<'t, (u64, u32), [u8; 32]>,
    pub audit_heads: Lazy<'t, u64, &'static [u8]>,
    pub portal_accounts: Lazy<'t, u64, &'static [u8]>,
    pub closed_grants: Lazy<'t, [u8; 16], &'static [u8]>,
    pub idempotency: Lazy<'t, [u8; 32], &'static [u8]>,
    pub idempotency_by_time: Lazy<'t, (i64, [u8; 32]), ()>,
    pub subjects: Lazy<'t, u64, &'static [u8]>,
    pub registry_outbox: Lazy<'t, u64, &'static [u8]>,
    /// The service the store is kept for (`RegistryTx::role`).
    pub role: crate::config::ServiceRole,
    /// Set when an entry was appended, so the transaction ends with a signed tree head.
    pub audit_dirty: bool,
    counters_table: Lazy<'t, &'static str, u64>,
    counters: BTreeMap<&'static str, u64>,
}

impl<'t> Tables<'t> {
    /// Creates every table, for a new database.
    pub(super) fn create_all(tx: &WriteTransaction) -> Result<()> {
        let t = Tables::open(tx)?;
        t.persons.open()?;
        t.my_numbers.open()?;
        t.medical_ids.open()?;
        t.cards.open()?;
        t.service_log.open()?;
        t.deaths.open()?;
        t.conflicts.open()?;
        t.conflict_keys.open()?;
        t.mismatches.open()?;
        t.mismatch_keys.open()?;
        t.notices.open()?;
        t.institutions.open()?;
        t.institution_keys.open()?;
        t.consents.open()?;
        t.grants.open()?;
        t.notification_ids.open()?;
        t.audit_leaves.open()?;
        t.audit_nodes.open()?;
        t.audit_heads.open()?;
        t.portal_accounts.open()?;
        t.closed_grants.open()?;
        t.idempotency.open()?;
        t.idempotency_by_time.open()?;
        t.subjects.open()?;
        t.registry_outbox.open()?;
        t.counters_table.open()?;
        Ok(())
    }

    pub(super) fn open(tx: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            persons: Lazy::new(tx, PERSONS),
            my_numbers: Lazy::new(tx, MY_NUMBERS),
            medical_ids: Lazy::new(tx, MEDICAL_IDS),
            cards: Lazy::new(tx, CARDS),
            service_log: Lazy::new(tx, SERVICE_LOG),
            deaths: Lazy::new(tx, DEATHS),
            conflicts: Lazy::new(tx, CONFLICTS),
            conflict_keys: Lazy::new(tx, CONFLICT_KEYS),
            mismatches: Lazy::new(tx, MISMATCHES),
            mismatch_keys: Lazy::new(tx, MISMATCH_KEYS),
            notices: Lazy::new(tx, NOTICES),
            institutions: Lazy::new(tx, INSTITUTIONS),
            institution_keys: Lazy::new(tx, INSTITUTION_KEYS),
            consents: Lazy::new(tx, CONSENTS),
            grants: Lazy::new(tx, GRANTS),
            notification_ids: Lazy::new(tx, NOTIFICATION_IDS),
            audit_leaves: Lazy::new(tx, AUDIT_LEAVES),
            audit_nodes: Lazy::new(tx, AUDIT_NODES),
            audit_heads: Lazy::new(tx, AUDIT_HEADS),
            portal_accounts: Lazy::new(tx, PORTAL_ACCOUNTS),
            closed_grants: Lazy::new(tx, CLOSED_GRANTS),
            idempotency: Lazy::new(tx, super::idempotency::KEPT),
            idempotency_by_time: Lazy::new(tx, super::idempotency::KEPT_BY_TIME),
            subjects: Lazy::new(tx, SUBJECTS),
            registry_outbox: Lazy::new(tx, REGISTRY_OUTBOX),
            role: crate::config::ServiceRole::All,
            audit_dirty: false,
            counters_table: Lazy::new(tx, COUNTERS),
            counters: BTreeMap::new(),
        })
    }

    /// The next value of a counter, starting at 1.
    pub(super) fn next(&mut self, name: &'static str) -> Result<u64> {
        let v = self.peek(name)?;
        self.counters.insert(name, v + 1);
        Ok(v)
    }

    /// The current value of a counter without moving it.
    pub(super) fn peek(&self, name: &'static str) -> Result<u64> {
        if let Some(v) = self.counters.get(name) {
            return Ok(*v);
        }
        Ok(match name {
            AUDIT_NEXT => self
                .audit_leaves
                .open()?
                .last()?
                .map_or(1, |(k, _)| k.value() + 2),
            SERVICE_SEQ => self
                .service_log
                .open()?
                .last()?
                .map_or(1, |(k, _)| k.value() + 1),
            _ => self
                .counters_table
                .open()?
                .get(name)?
                .map_or(1, |g| g.value()),
        })
    }

    pub(super) fn set(&mut self, name: &'static str, value: u64) {
        self.counters.insert(name, value);
    }

    pub(super) fn flush_counters(&mut self) -> Result<()> {
        for (k, v) in std::mem::take(&mut self.counters) {
            if !DERIVED_COUNTERS.contains(&k) {
                self.counters_table.open_mut()?.insert(k, v)?;
            }
        }
        Ok(())
    }

    pub(super) fn person(&self, pid: u64) -> Result<Person> {
        match self.persons.open()?.get(pid)? {
            Some(v) => decode(v.value()),
            None => Err(StoreError::Inconsistent(format!("pid {pid} has no record"))),
        }
    }

    /// Writes the record alone: for bookkeeping that no eligibility answer depends on
    /// (assignment and letter dates, a new My Number).
    pub(super) fn put_person(&mut self, p: &Person) -> Result<()> {
        self.persons
            .open_mut()?
            .insert(p.pid, encode(p)?.as_slice())?;
        Ok(())
    }

    /// Writes a person's record encoded already (the initial load's fresh rows).
    pub(super) fn put_record(&mut self, pid: u64, record: &[u8]) -> Result<()> {
        self.persons.open_mut()?.insert(pid, record)?;
        Ok(())
    }

    /// Writes the record and re-derives the card index entry of each of its coverages,
    /// for every change an eligibility check can see.
    pub(super) fn save_person(&mut self, p: &Person) -> Result<()> {
        self.put_person(p)?;
        for c in &p.coverages {
            let standing = encode(&CardStanding::of(p, c))?;
            self.cards
                .open_mut()?
                .insert(c.card.key().as_slice(), standing.as_slice())?;
        }
        Ok(())
    }

    pub(super) fn pid_by_my_number(&self, n: MyNumber) -> Result<Option<u64>> {
        Ok(self.my_numbers.open()?.get(n.as_u64())?.map(|g| g.value()))
    }

    pub(super) fn id_entry(&self, id: MedicalId) -> Result<Option<IdEntry>> {
        match self.medical_ids.open()?.get(id.as_u64())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    pub(super) fn set_id_status(
        &mut self,
        id: MedicalId,
        pid: u64,
        status: IdStatus,
    ) -> Result<()> {
        let e = encode(&IdEntry { pid, status })?;
        self.medical_ids
            .open_mut()?
            .insert(id.as_u64(), e.as_slice())?;
        Ok(())
    }

    pub(super) fn card_holder(&self, card: &crate::registry::Card) -> Result<Option<u64>> {
        match self.cards.open()?.get(card.key().as_slice())? {
            Some(v) => Ok(Some(decode::<CardStanding>(v.value())?.pid)),
            None => Ok(None),
        }
    }

    pub(super) fn unbind_card(&mut self, card: &crate::registry::Card) -> Result<()> {
        self.cards.open_mut()?.remove(card.key().as_slice())?;
        Ok(())
    }
}

impl super::registry_tx::RegistryTx for Tables<'_> {
    fn pid_by_my_number(&mut self, n: MyNumber) -> Result<Option<u64>> {
        Tables::pid_by_my_number(self, n)
    }

    fn person(&mut self, pid: u64) -> Result<Person> {
        Tables::person(self, pid)
    }

    fn card_holder(&mut self, card: &crate::registry::Card) -> Result<Option<u64>> {
        Tables::card_holder(self, card)
    }

    fn put_person(&mut self, p: &Person) -> Result<()> {
        Tables::put_person(self, p)
    }

    fn save_person(&mut self, p: &Person) -> Result<()> {
        Tables::save_person(self, p)
    }

    fn put_my_number(&mut self, n: MyNumber, pid: u64) -> Result<()> {
        self.my_numbers.open_mut()?.insert(n.as_u64(), pid)?;
        Ok(())
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        Tables::next(self, counter)
    }

    fn peek(&mut self, counter: &'static str) -> Result<u64> {
        Tables::peek(self, counter)
    }

    fn role(&self) -> crate::config::ServiceRole {
        self.role
    }

    fn subject(&mut self, pid: u64) -> Result<Option<super::subjects::Subject>> {
        match self.subjects.open()?.get(pid)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_subject(&mut self, s: &super::subjects::Subject) -> Result<()> {
        self.subjects
            .open_mut()?
            .insert(s.pid, encode(s)?.as_slice())?;
        Ok(())
    }

    fn tell_authority(&mut self, kind: iryo_proto::roles::NoticeKind, at: i64) -> Result<()> {
        if self.role != crate::config::ServiceRole::Registry {
            return Ok(());
        }
        let seq = Tables::next(self, super::subjects::NEXT_TOLD)?;
        let n = iryo_proto::roles::RegistryNotice { seq, at, kind };
        self.registry_outbox
            .open_mut()?
            .insert(seq, encode(&n)?.as_slice())?;
        Ok(())
    }

    fn claim_id(&mut self, id: MedicalId, entry: &IdEntry) -> Result<bool> {
        // Insert first and look at what it displaced: one B-tree walk instead of two
        // on the path every new person takes.
        let bytes = encode(entry)?;
        let displaced = self
            .medical_ids
            .open_mut()?
            .insert(id.as_u64(), bytes.as_slice())?
            .map(|old| old.value().to_vec());
        match displaced {
            None => Ok(true),
            Some(old) => {
                self.medical_ids
                    .open_mut()?
                    .insert(id.as_u64(), old.as_slice())?;
                Ok(false)
            }
        }
    }

    fn conflict_by_key(&mut self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.conflict_keys.open()?.get(key)?.map(|g| g.value()))
    }

    fn put_conflict(&mut self, c: &crate::registry::Conflict, key: &[u8]) -> Result<()> {
        self.conflicts
            .open_mut()?
            .insert(c.id, encode(c)?.as_slice())?;
        self.conflict_keys.open_mut()?.insert(key, c.id)?;
        Ok(())
    }

    fn audit_append(&mut self, entry: &crate::audit::LogEntry) -> Result<u64> {
        Tables::audit_append(self, entry)
    }

    fn id_entry(&mut self, id: MedicalId) -> Result<Option<IdEntry>> {
        Tables::id_entry(self, id)
    }

    fn set_id_status(&mut self, id: MedicalId, pid: u64, status: IdStatus) -> Result<()> {
        Tables::set_id_status(self, id, pid, status)
    }

    fn mark_death(&mut self, day: i64, pid: u64, present: bool) -> Result<()> {
        let deaths = self.deaths.open_mut()?;
        if present {
            deaths.insert((day, pid), ())?;
        } else {
            deaths.remove((day, pid))?;
        }
        Ok(())
    }

    fn kept_entry(&mut self, scope: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.kept_raw(scope)
    }

    fn keep_entry(&mut self, scope: [u8; 32], at: i64, entry: &[u8]) -> Result<()> {
        self.keep_raw(scope, at, entry)
    }

    fn append_service_use(&mut self, pid: u64, u: &crate::registry::ServiceUse) -> Result<()> {
        super::linkage::append(self, pid, u)
    }

    fn put_consent(&mut self, pid: u64, seq: u64, r: &crate::access::ConsentRecord) -> Result<()> {
        self.consents
            .open_mut()?
            .insert((pid, seq), encode(r)?.as_slice())?;
        Ok(())
    }

    fn mismatch_by_key(&mut self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.mismatch_keys.open()?.get(key)?.map(|g| g.value()))
    }

    fn put_mismatch(&mut self, m: &crate::registry::Mismatch, key: &[u8]) -> Result<()> {
        self.mismatches
            .open_mut()?
            .insert(m.id, encode(m)?.as_slice())?;
        self.mismatch_keys.open_mut()?.insert(key, m.id)?;
        Ok(())
    }

    fn put_notice(&mut self, n: &crate::registry::Notice) -> Result<()> {
        self.notices
            .open_mut()?
            .insert(n.id, encode(n)?.as_slice())?;
        Ok(())
    }

    fn conflict(&mut self, id: u64) -> Result<Option<crate::registry::Conflict>> {
        self.conflicts
            .open()?
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn save_conflict(&mut self, c: &crate::registry::Conflict) -> Result<()> {
        self.conflicts
            .open_mut()?
            .insert(c.id, encode(c)?.as_slice())?;
        Ok(())
    }

    fn mismatch(&mut self, id: u64) -> Result<Option<crate::registry::Mismatch>> {
        self.mismatches
            .open()?
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn save_mismatch(&mut self, m: &crate::registry::Mismatch) -> Result<()> {
        self.mismatches
            .open_mut()?
            .insert(m.id, encode(m)?.as_slice())?;
        Ok(())
    }

    fn forget_mismatch_key(&mut self, key: &[u8]) -> Result<()> {
        self.mismatch_keys.open_mut()?.remove(key)?;
        Ok(())
    }

    fn unbind_card(&mut self, card: &crate::registry::Card) -> Result<()> {
        Tables::unbind_card(self, card)
    }

    fn account(&mut self, pid: u64) -> Result<Option<crate::store::Account>> {
        self.portal_accounts
            .open()?
            .get(pid)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn put_account(&mut self, pid: u64, a: &crate::store::Account) -> Result<()> {
        self.portal_accounts
            .open_mut()?
            .insert(pid, encode(a)?.as_slice())?;
        Ok(())
    }

    fn institution(
        &mut self,
        code: iryo_proto::InstitutionCode,
    ) -> Result<Option<crate::store::InstitutionRecord>> {
        self.institutions
            .open()?
            .get(code.as_u64())?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn put_institution(
        &mut self,
        code: iryo_proto::InstitutionCode,
        r: &crate::store::InstitutionRecord,
    ) -> Result<()> {
        self.institutions
            .open_mut()?
            .insert(code.as_u64(), encode(r)?.as_slice())?;
        Ok(())
    }

    fn put_institution_key(
        &mut self,
        key: [u8; 32],
        code: iryo_proto::InstitutionCode,
    ) -> Result<()> {
        self.institution_keys
            .open_mut()?
            .insert(key, code.as_u64())?;
        Ok(())
    }

    fn forget_institution_key(&mut self, key: &[u8; 32]) -> Result<()> {
        self.institution_keys.open_mut()?.remove(*key)?;
        Ok(())
    }

    fn consents_of(&mut self, pid: u64) -> Result<Vec<crate::access::ConsentRecord>> {
        let mut out = Vec::new();
        for item in self.consents.open()?.range((pid, 0)..=(pid, u64::MAX))? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    fn grant(&mut self, id: &[u8; 16]) -> Result<Option<crate::store::GrantRecord>> {
        self.grants
            .open()?
            .get(*id)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn put_grant(&mut self, g: &crate::store::GrantRecord) -> Result<()> {
        self.grants
            .open_mut()?
            .insert(g.grant.id, encode(g)?.as_slice())?;
        Ok(())
    }

    fn notification_leaf(&mut self, id: &[u8; 16]) -> Result<Option<u64>> {
        Ok(self.notification_ids.open()?.get(*id)?.map(|g| g.value()))
    }

    fn put_notification_leaf(&mut self, id: [u8; 16], leaf: u64) -> Result<()> {
        self.notification_ids.open_mut()?.insert(id, leaf)?;
        Ok(())
    }

    fn close_grant(&mut self, id: [u8; 16], closed: &[u8]) -> Result<bool> {
        let table = self.closed_grants.open_mut()?;
        if table.get(id)?.is_some() {
            return Ok(false);
        }
        table.insert(id, closed)?;
        Ok(true)
    }

    fn deaths_after(&mut self, after: Option<(i64, u64)>, n: usize) -> Result<Vec<(i64, u64)>> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let deaths = self.deaths.open()?;
        let mut out = Vec::new();
        for item in deaths
            .range::<(i64, u64)>((from, Bound::Unbounded))?
            .take(n)
        {
            out.push(item?.0.value());
        }
        Ok(out)
    }
}
