//! The seam: every operation an operator's command asks of the directory's store, on
//! either backend. `admin::execute` is written against it, so a command does the same
//! on redb and on PostgreSQL; each backend implements it with the same rules
//! (`registry_tx`), and an operation a backend cannot do yet says so by name.

use super::subjects::Subject;
use super::{
    AssignmentRow, AuditReport, ConflictAction, Counts, EnrollBatch, GrantRecord,
    InstitutionRecord, LetterRow, MismatchAction, Plan, Result, Store, VerifyReport,
};
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::issuance::{Issuer, Method};
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::{Conflict, Mismatch, Notice, Person, ServiceUse, Timestamp};
use chrono::NaiveDate;
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_p2p::backup::Manifest;
use iryo_proto::federation::{Membership, Registration, Role, Time, TreeHead};
use iryo_proto::merkle::Hash;
use iryo_proto::roles::RegistryNotice;
use iryo_proto::signed::Signed;
use iryo_proto::{
    Branch, CardNumber, CardSymbol, InstitutionCode, InsurerNumber, MedicalId, MyNumber,
};
use std::path::{Path, PathBuf};

#[allow(clippy::too_many_arguments)]
pub trait Operations: EnrollBatch {
    /// How this registry issues medical IDs, fixed at `init`.
    fn method(&self) -> Result<Method>;
    fn retention_years(&self) -> u32;
    fn counts(&self) -> Result<Counts>;
    /// The first `n` persons in pid order.
    fn first_persons(&self, n: usize) -> Result<Vec<Person>>;
    fn audit_size(&self) -> Result<u64>;
    fn person_by_medical_id(&self, id: MedicalId) -> Result<Person>;
    fn person_by_my_number(&self, n: MyNumber) -> Result<Person>;
    fn service_uses(&self, pid: u64) -> Result<Vec<ServiceUse>>;
    /// Everyone who holds a card of this insurer, symbol and number (and branch, when
    /// given).
    fn persons_by_card(
        &self,
        insurer: &InsurerNumber,
        symbol: &CardSymbol,
        number: &CardNumber,
        branch: Option<Branch>,
    ) -> Result<Vec<Person>>;
    /// Writes that `operator` read `what` of each of these people to the audit log.
    fn log_reads(&self, operator: &str, people: &[MedicalId], what: &str) -> Result<()>;
    fn check(&self, req: &CheckRequest, at: Timestamp) -> Result<CheckAnswer>;

    fn change_id(
        &self,
        id: MedicalId,
        reason: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<MedicalId>;
    fn change_my_number(&self, old: MyNumber, new: MyNumber, at: Timestamp) -> Result<MedicalId>;
    fn record_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate>;
    fn correct_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate>;
    fn revoke_death(&self, id: MedicalId, reason: &str, by: &str, at: Timestamp) -> Result<()>;
    fn retire_due(&self, today: NaiveDate, at: Timestamp) -> Result<Vec<MedicalId>>;

    fn conflicts(&self, open_only: bool) -> Result<Vec<Conflict>>;
    fn resolve_conflict(
        &self,
        id: u64,
        action: ConflictAction,
        reason: &str,
        by: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<Conflict>;
    fn mismatches(&self, open_only: bool) -> Result<Vec<Mismatch>>;
    fn resolve_mismatch(
        &self,
        id: u64,
        action: MismatchAction,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<Mismatch>;
    fn notices(&self, insurer: Option<&InsurerNumber>) -> Result<Vec<Notice>>;

    fn assignment_rows(&self, insurer: &InsurerNumber, all: bool) -> Result<Vec<AssignmentRow>>;
    fn mark_assigned(&self, rows: &[AssignmentRow], at: Timestamp) -> Result<()>;
    fn letter_rows(&self, plan: Plan, all: bool, today: NaiveDate) -> Result<Vec<LetterRow>>;
    fn letter_row_of(&self, plan: Plan, id: MedicalId, today: NaiveDate) -> Result<LetterRow>;
    fn letters_sent(
        &self,
        plan: Plan,
        letters: &[(u64, String)],
        expires: Timestamp,
        at: Timestamp,
    ) -> Result<()>;

    fn add_institution(
        &self,
        request: &Signed<Registration>,
        roles: Vec<Role>,
        valid_days: u32,
        agency: &SigningKey,
        now: Time,
        operator: &str,
    ) -> Result<Membership>;
    fn revoke_institution(&self, code: InstitutionCode, now: Time, operator: &str) -> Result<()>;
    fn institutions(&self) -> Result<Vec<InstitutionRecord>>;
    fn add_consent(&self, id: MedicalId, record: &ConsentRecord) -> Result<()>;
    fn consents(&self, id: MedicalId) -> Result<Vec<ConsentRecord>>;
    /// Applies the registry's notices in order, each verified against `registry`
    /// (docs/roles.md); the number of the notice expected next.
    fn accept_registry_notices(
        &self,
        notices: &[Signed<RegistryNotice>],
        registry: &VerifyingKey,
    ) -> Result<u64>;
    /// Up to `n` of a registry's notices to the authority from number `from` on.
    fn notices_to_tell(&self, from: u64, n: usize) -> Result<Vec<RegistryNotice>>;
    /// Forgets a registry's notices numbered below `expected`, applied by the authority.
    fn forget_told(&self, expected: u64) -> Result<()>;
    /// The exchange authority's record of the patient holding `id`, if it has one.
    fn subject_by_medical_id(&self, id: MedicalId) -> Result<Option<Subject>>;
    fn unmatched(&self, now: Time, window: i64) -> Result<Vec<GrantRecord>>;
    fn close_unmatched(
        &self,
        grant_id: [u8; 16],
        reason: &str,
        by: &str,
        at: Time,
    ) -> Result<GrantRecord>;

    fn audit_for_person(&self, person: &Person) -> Result<Vec<(u64, LogEntry)>>;
    /// The entries about a patient who held these medical IDs.
    fn audit_for_patient(&self, ids: &[MedicalId]) -> Result<Vec<(u64, LogEntry)>>;
    fn audit_verify(&self, agency: &VerifyingKey) -> Result<AuditReport>;
    /// The latest signed head and the log's size it covers, signing one first if
    /// entries were appended since the last.
    fn current_head(&self) -> Result<(Signed<TreeHead>, u64)>;
    fn audit_root(&self, size: u64) -> Result<Hash>;
    /// Keeps a checkpoint of `size` with witnesses' cosignatures (a signed note).
    fn keep_witnessed(&self, size: u64, note: &str) -> Result<()>;
    /// The kept cosigned checkpoint of `size`, or the largest one kept.
    fn witnessed(&self, size: Option<u64>) -> Result<Option<(u64, String)>>;
    fn audit_entry(&self, index: u64) -> Result<LogEntry>;
    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>>;
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>>;

    fn verify_records(&self, agency: &VerifyingKey) -> Result<VerifyReport>;
    /// A consistent copy of the store and `extra` files of `data_dir` into `out`.
    fn backup(&self, data_dir: &Path, extra: &[PathBuf], out: &Path) -> Result<Manifest>;
}

/// Forwards each operation to the method of the same name.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $out {
            Self::$name(self, $($arg),*)
        })*
    };
}
pub(crate) use forward;

impl Operations for Store {
    forward! {
        method() -> Result<Method>;
        retention_years() -> u32;
        counts() -> Result<Counts>;
        audit_size() -> Result<u64>;
        person_by_medical_id(id: MedicalId) -> Result<Person>;
        person_by_my_number(n: MyNumber) -> Result<Person>;
        log_reads(operator: &str, people: &[MedicalId], what: &str) -> Result<()>;
        check(req: &CheckRequest, at: Timestamp) -> Result<CheckAnswer>;
        change_id(id: MedicalId, reason: &str, issuer: &Issuer, at: Timestamp) -> Result<MedicalId>;
        change_my_number(old: MyNumber, new: MyNumber, at: Timestamp) -> Result<MedicalId>;
        record_death(id: MedicalId, date: NaiveDate, by: &str, at: Timestamp) -> Result<NaiveDate>;
        correct_death(id: MedicalId, date: NaiveDate, reason: &str, by: &str, at: Timestamp) -> Result<NaiveDate>;
        revoke_death(id: MedicalId, reason: &str, by: &str, at: Timestamp) -> Result<()>;
        retire_due(today: NaiveDate, at: Timestamp) -> Result<Vec<MedicalId>>;
        conflicts(open_only: bool) -> Result<Vec<Conflict>>;
        resolve_conflict(id: u64, action: ConflictAction, reason: &str, by: &str, issuer: &Issuer, at: Timestamp) -> Result<Conflict>;
        mismatches(open_only: bool) -> Result<Vec<Mismatch>>;
        resolve_mismatch(id: u64, action: MismatchAction, reason: &str, by: &str, at: Timestamp) -> Result<Mismatch>;
        notices(insurer: Option<&InsurerNumber>) -> Result<Vec<Notice>>;
        assignment_rows(insurer: &InsurerNumber, all: bool) -> Result<Vec<AssignmentRow>>;
        mark_assigned(rows: &[AssignmentRow], at: Timestamp) -> Result<()>;
        letter_rows(plan: Plan, all: bool, today: NaiveDate) -> Result<Vec<LetterRow>>;
        letter_row_of(plan: Plan, id: MedicalId, today: NaiveDate) -> Result<LetterRow>;
        letters_sent(plan: Plan, letters: &[(u64, String)], expires: Timestamp, at: Timestamp) -> Result<()>;
        add_institution(request: &Signed<Registration>, roles: Vec<Role>, valid_days: u32, agency: &SigningKey, now: Time, operator: &str) -> Result<Membership>;
        revoke_institution(code: InstitutionCode, now: Time, operator: &str) -> Result<()>;
        institutions() -> Result<Vec<InstitutionRecord>>;
        add_consent(id: MedicalId, record: &ConsentRecord) -> Result<()>;
        consents(id: MedicalId) -> Result<Vec<ConsentRecord>>;
        accept_registry_notices(notices: &[Signed<RegistryNotice>], registry: &VerifyingKey) -> Result<u64>;
        subject_by_medical_id(id: MedicalId) -> Result<Option<Subject>>;
        notices_to_tell(from: u64, n: usize) -> Result<Vec<RegistryNotice>>;
        forget_told(expected: u64) -> Result<()>;
        unmatched(now: Time, window: i64) -> Result<Vec<GrantRecord>>;
        close_unmatched(grant_id: [u8; 16], reason: &str, by: &str, at: Time) -> Result<GrantRecord>;
        audit_for_person(person: &Person) -> Result<Vec<(u64, LogEntry)>>;
        audit_for_patient(ids: &[MedicalId]) -> Result<Vec<(u64, LogEntry)>>;
        audit_verify(agency: &VerifyingKey) -> Result<AuditReport>;
        current_head() -> Result<(Signed<TreeHead>, u64)>;
        audit_root(size: u64) -> Result<Hash>;
        keep_witnessed(size: u64, note: &str) -> Result<()>;
        witnessed(size: Option<u64>) -> Result<Option<(u64, String)>>;
        audit_entry(index: u64) -> Result<LogEntry>;
        inclusion_proof(index: u64, size: u64) -> Result<Vec<Hash>>;
        consistency_proof(old: u64, new: u64) -> Result<Vec<Hash>>;
        verify_records(agency: &VerifyingKey) -> Result<VerifyReport>;
        backup(data_dir: &Path, extra: &[PathBuf], out: &Path) -> Result<Manifest>;
    }

    fn service_uses(&self, pid: u64) -> Result<Vec<ServiceUse>> {
        self.reader()?.service_uses(pid)
    }

    fn first_persons(&self, n: usize) -> Result<Vec<Person>> {
        self.reader()?.first_persons(n)
    }

    fn persons_by_card(
        &self,
        insurer: &InsurerNumber,
        symbol: &CardSymbol,
        number: &CardNumber,
        branch: Option<Branch>,
    ) -> Result<Vec<Person>> {
        self.reader()?
            .persons_by_card(insurer, symbol, number, branch)
    }
}
