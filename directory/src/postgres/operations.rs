//! `Operations` on PostgreSQL: what runs there so far, and a refusal by name of what
//! does not yet (docs/storage.md).

use super::PgStore;
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::issuance::{Issuer, Method};
use crate::registry::dates::DateRules;
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::{Conflict, Mismatch, Notice, Person, ServiceUse, Timestamp};
use crate::store::subjects::Subject;
use crate::store::{
    forward, AssignmentRow, AuditReport, ConflictAction, Counts, GrantRecord, InstitutionRecord,
    LetterRow, MismatchAction, Operations, Plan, Result, StoreError, VerifyReport,
};
use crate::store::{ReportsTaken, Serving, Writers};
use chrono::NaiveDate;
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_p2p::backup::Manifest;
use iryo_proto::federation::RefusalReport;
use iryo_proto::federation::{Membership, Registration, Role, Time, TreeHead};
use iryo_proto::merkle::Hash;
use iryo_proto::roles::RegistryNotice;
use iryo_proto::signed::Signed;
use iryo_proto::{
    Branch, CardNumber, CardSymbol, InstitutionCode, InsurerNumber, MedicalId, MyNumber,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn not_yet<T>(what: &'static str) -> Result<T> {
    Err(StoreError::NotOnPostgres(what))
}

impl Operations for PgStore {
    forward! {
        method() -> Result<Method>;
        retention_years() -> u32;
        counts() -> Result<Counts>;
        audit_size() -> Result<u64>;
        first_persons(n: usize) -> Result<Vec<Person>>;
        person_by_medical_id(id: MedicalId) -> Result<Person>;
        person_by_my_number(n: MyNumber) -> Result<Person>;
        service_uses(pid: u64) -> Result<Vec<ServiceUse>>;
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
    }

    fn persons_by_card(
        &self,
        insurer: &InsurerNumber,
        symbol: &CardSymbol,
        number: &CardNumber,
        branch: Option<Branch>,
    ) -> Result<Vec<Person>> {
        self.persons_by_card_key(&crate::registry::Card::prefix_of(
            insurer, symbol, number, branch,
        ))
    }

    fn verify_records(&self, agency: &VerifyingKey) -> Result<VerifyReport> {
        crate::store::verify_records(self, self.persons()?, agency)
    }

    fn backup(&self, _: &Path, _: &[PathBuf], _: &Path) -> Result<Manifest> {
        // The database's own tools copy it consistently (pg_basebackup, pg_dump).
        not_yet("backup (use pg_basebackup or pg_dump, and copy --data-dir's keys)")
    }
}

impl Serving for PgStore {
    fn institution(&self, code: InstitutionCode) -> Result<Option<InstitutionRecord>> {
        PgStore::institution(self, code)
    }

    fn institution_by_key(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>> {
        PgStore::institution_by_key(self, key)
    }

    fn cached_member(&self, key: &[u8; 32]) -> Option<InstitutionRecord> {
        PgStore::cached_member(self, key)
    }

    fn date_rules(&self) -> DateRules {
        PgStore::date_rules(self)
    }

    fn log_refusals(
        &self,
        member: &Membership,
        reports: &[Signed<RefusalReport>],
    ) -> Result<ReportsTaken> {
        PgStore::log_refusals(self, member, reports)
    }

    fn start_writers(self: Arc<Self>, agency: SigningKey, max_group: usize) -> Result<Writers> {
        let store = self.clone();
        // What the last checks left in the intake, before the process stops.
        let finish = Box::new(move || {
            if let Err(e) = store.drain_intake() {
                tracing::error!(error = %e, "moving checks from the intake failed");
            }
        });
        Ok(Writers::start(&self, agency, max_group, Vec::new(), finish))
    }
}
