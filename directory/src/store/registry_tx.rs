//! What the registry's rules need of one write transaction, as typed operations that
//! both backends implement: redb's `Tables` and PostgreSQL's `PgTx`. The rules
//! themselves (`enroll::apply_row`, issuance) are written once against this trait, so
//! the two backends cannot drift apart in what they decide, only in how they store it.

use super::tables::MAX_ISSUE_ATTEMPTS;
use super::{Result, StoreError};
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::issuance::Issuer;
use crate::registry::{
    Card, Conflict, EnrollmentRow, IdEntry, IdStatus, Mismatch, Notice, Person, ServiceUse,
};
use crate::store::{GrantRecord, InstitutionRecord};
use iryo_proto::{InstitutionCode, MedicalId, MyNumber};

pub(crate) trait RegistryTx {
    /// The person a My Number (current, or replaced and kept as an alias) names.
    fn pid_by_my_number(&mut self, n: MyNumber) -> Result<Option<u64>>;
    /// A person's record; a pid without one is an inconsistency.
    fn person(&mut self, pid: u64) -> Result<Person>;
    /// Who holds a card now, if anyone.
    fn card_holder(&mut self, card: &Card) -> Result<Option<u64>>;
    /// Writes the record alone: for bookkeeping that no eligibility answer depends on.
    fn put_person(&mut self, p: &Person) -> Result<()>;
    /// Writes the record and re-derives the card index entry of each of its coverages,
    /// for every change an eligibility check can see.
    fn save_person(&mut self, p: &Person) -> Result<()>;
    /// Records that My Number `n` names person `pid`.
    fn put_my_number(&mut self, n: MyNumber, pid: u64) -> Result<()>;
    /// The next value of a counter, starting at 1.
    fn next(&mut self, counter: &'static str) -> Result<u64>;
    /// The service the store is kept for: a registry run apart tells the authority of
    /// lifecycle changes; the authority makes a subject for an ID it has not seen.
    fn role(&self) -> crate::config::ServiceRole;
    /// The value `next` would return, without moving the counter.
    fn peek(&mut self, counter: &'static str) -> Result<u64>;
    /// The exchange authority's record of a patient (`subjects`), if `pid` is one.
    fn subject(&mut self, pid: u64) -> Result<Option<super::subjects::Subject>>;
    /// Writes a subject's record.
    fn put_subject(&mut self, s: &super::subjects::Subject) -> Result<()>;
    /// Queues a notice for the exchange authority, on a registry that runs apart from
    /// it (docs/roles.md); nothing on a directory that is both.
    fn tell_authority(&mut self, kind: iryo_proto::roles::NoticeKind, at: i64) -> Result<()>;
    /// Records `id` as issued with `entry` if it was never issued before; false if it
    /// was, and then nothing changes.
    fn claim_id(&mut self, id: MedicalId, entry: &IdEntry) -> Result<bool>;
    /// The open conflict recorded for a row's canonical key, if any.
    fn conflict_by_key(&mut self, key: &[u8]) -> Result<Option<u64>>;
    /// Records a new conflict under its canonical key.
    fn put_conflict(&mut self, c: &Conflict, key: &[u8]) -> Result<()>;
    /// Appends an entry to the audit log; returns its index.
    fn audit_append(&mut self, entry: &LogEntry) -> Result<u64>;
    /// What the table of every ID ever issued says of `id`.
    fn id_entry(&mut self, id: MedicalId) -> Result<Option<IdEntry>>;
    /// Changes the status of an issued ID (changed, retired).
    fn set_id_status(&mut self, id: MedicalId, pid: u64, status: IdStatus) -> Result<()>;
    /// Adds (`true`) or removes a (day of death, pid) entry of the retirement sweep.
    fn mark_death(&mut self, day: i64, pid: u64, present: bool) -> Result<()>;
    /// Up to `n` entries of the retirement sweep after `after`, earliest death first.
    fn deaths_after(&mut self, after: Option<(i64, u64)>, n: usize) -> Result<Vec<(i64, u64)>>;

    /// The kept answer (`idempotency::Entry`, encoded) of a keyed request's scope.
    fn kept_entry(&mut self, scope: &[u8; 32]) -> Result<Option<Vec<u8>>>;
    /// Keeps a keyed request's answer kept `at`, and forgets a few kept more than
    /// `idempotency::KEPT_SECONDS` before it.
    fn keep_entry(&mut self, scope: [u8; 32], at: i64, entry: &[u8]) -> Result<()>;
    /// Appends to the service history, after everything appended before.
    fn append_service_use(&mut self, pid: u64, u: &ServiceUse) -> Result<()>;
    /// Records one of a person's consent decisions under the next consent number.
    fn put_consent(&mut self, pid: u64, seq: u64, r: &ConsentRecord) -> Result<()>;
    /// The open mismatch recorded for a (card, presented ID) key, if any.
    fn mismatch_by_key(&mut self, key: &[u8]) -> Result<Option<u64>>;
    /// Records a new mismatch under its key.
    fn put_mismatch(&mut self, m: &Mismatch, key: &[u8]) -> Result<()>;
    /// Queues a notice.
    fn put_notice(&mut self, n: &Notice) -> Result<()>;
    /// A conflict by its number.
    fn conflict(&mut self, id: u64) -> Result<Option<Conflict>>;
    /// Writes a conflict recorded before (its key stays).
    fn save_conflict(&mut self, c: &Conflict) -> Result<()>;
    /// A mismatch by its number.
    fn mismatch(&mut self, id: u64) -> Result<Option<Mismatch>>;
    /// Writes a mismatch recorded before.
    fn save_mismatch(&mut self, m: &Mismatch) -> Result<()>;
    /// Forgets the key of a resolved mismatch, so the same presentation is a new case.
    fn forget_mismatch_key(&mut self, key: &[u8]) -> Result<()>;
    /// Removes a card from the card index: no one holds it now.
    fn unbind_card(&mut self, card: &Card) -> Result<()>;
    /// A person's My Portal account, if one was made.
    fn account(&mut self, pid: u64) -> Result<Option<crate::store::Account>>;
    fn put_account(&mut self, pid: u64, a: &crate::store::Account) -> Result<()>;
    /// An institution's record by its code.
    fn institution(&mut self, code: InstitutionCode) -> Result<Option<InstitutionRecord>>;
    fn put_institution(&mut self, code: InstitutionCode, r: &InstitutionRecord) -> Result<()>;
    /// Records which institution a node key speaks for.
    fn put_institution_key(&mut self, key: [u8; 32], code: InstitutionCode) -> Result<()>;
    fn forget_institution_key(&mut self, key: &[u8; 32]) -> Result<()>;
    /// A person's consent decisions, in the order they were made.
    fn consents_of(&mut self, pid: u64) -> Result<Vec<ConsentRecord>>;
    fn grant(&mut self, id: &[u8; 16]) -> Result<Option<GrantRecord>>;
    fn put_grant(&mut self, g: &GrantRecord) -> Result<()>;
    /// The audit log index a notification or refusal report was logged at, if it was.
    fn notification_leaf(&mut self, id: &[u8; 16]) -> Result<Option<u64>>;
    fn put_notification_leaf(&mut self, id: [u8; 16], leaf: u64) -> Result<()>;
    /// Closes an unmatched grant with who, why and when (encoded); false if it was
    /// closed already, and then nothing changes.
    fn close_grant(&mut self, id: [u8; 16], closed: &[u8]) -> Result<bool>;

    /// Reads ahead what applying `rows` will look up, where a round trip per lookup
    /// would cost more than one read of them all (PostgreSQL); `candidates` are the
    /// rows' first medical ID candidates, if computed. Nothing by default.
    fn prefetch_rows(
        &mut self,
        _rows: &[EnrollmentRow],
        _candidates: Option<&[MedicalId]>,
    ) -> Result<()> {
        Ok(())
    }

    /// Issues a medical ID never issued before. `first` is a candidate for
    /// `generation` computed ahead of time, if any.
    fn issue(
        &mut self,
        issuer: &Issuer,
        my_number: MyNumber,
        pid: u64,
        mut generation: u32,
        first: Option<MedicalId>,
    ) -> Result<(MedicalId, u32)> {
        let mut candidate = match first {
            Some(c) => c,
            None => issuer.candidate(my_number, generation)?,
        };
        let entry = IdEntry {
            pid,
            status: IdStatus::Current,
        };
        for _ in 0..MAX_ISSUE_ATTEMPTS {
            if self.claim_id(candidate, &entry)? {
                return Ok((candidate, generation));
            }
            tracing::warn!(%candidate, generation, "candidate medical ID issued before; trying the next");
            generation += 1;
            candidate = issuer.candidate(my_number, generation)?;
        }
        Err(StoreError::IssuanceExhausted(MAX_ISSUE_ATTEMPTS))
    }
}
