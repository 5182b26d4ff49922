//! `Operations` on PostgreSQL: what runs there so far, and a refusal by name of what
//! does not yet (docs/storage.md).

use super::PgStore;
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::issuance::{Issuer, Method};
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::{Conflict, Mismatch, Notice, Person, ServiceUse, Timestamp};
use crate::store::{
    forward, AssignmentRow, AuditReport, ConflictAction, Counts, GrantRecord, InstitutionRecord,
    LetterRow, MismatchAction, Operations, Plan, Result, StoreError, VerifyReport,
};
use chrono::NaiveDate;
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_p2p::backup::Manifest;
use iryo_proto::federation::{Membership, Registration, Role, Time, TreeHead};
use iryo_proto::merkle::Hash;
use iryo_proto::signed::Signed;
use iryo_proto::{InstitutionCode, InsurerNumber, MedicalId, MyNumber};
use std::path::{Path, PathBuf};

fn not_yet<T>(what: &'static str) -> Result<T> {
    Err(StoreError::NotOnPostgres(what))
}

impl Operations for PgStore {
    forward! {
        method() -> Result<Method>;
        retention_years() -> u32;
        counts() -> Result<Counts>;
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
    }

    fn add_institution(
        &self,
        _: &Signed<Registration>,
        _: Vec<Role>,
        _: u32,
        _: &SigningKey,
        _: Time,
        _: &str,
    ) -> Result<Membership> {
        not_yet("institution add")
    }

    fn revoke_institution(&self, _: InstitutionCode, _: Time, _: &str) -> Result<()> {
        not_yet("institution revoke")
    }

    fn institutions(&self) -> Result<Vec<InstitutionRecord>> {
        not_yet("institution list")
    }

    fn add_consent(&self, _: MedicalId, _: &ConsentRecord) -> Result<()> {
        not_yet("consent")
    }

    fn consents(&self, _: MedicalId) -> Result<Vec<ConsentRecord>> {
        not_yet("consent list")
    }

    fn unmatched(&self, _: Time, _: i64) -> Result<Vec<GrantRecord>> {
        not_yet("audit unmatched")
    }

    fn close_unmatched(&self, _: [u8; 16], _: &str, _: &str, _: Time) -> Result<GrantRecord> {
        not_yet("audit close")
    }

    fn audit_for_person(&self, _: &Person) -> Result<Vec<(u64, LogEntry)>> {
        not_yet("audit show")
    }

    fn audit_verify(&self, _: &VerifyingKey) -> Result<AuditReport> {
        not_yet("audit verify")
    }

    fn current_head(&self) -> Result<(Signed<TreeHead>, u64)> {
        not_yet("audit proofs")
    }

    fn audit_root(&self, _: u64) -> Result<Hash> {
        not_yet("audit proofs")
    }

    fn audit_entry(&self, _: u64) -> Result<LogEntry> {
        not_yet("audit proofs")
    }

    fn inclusion_proof(&self, _: u64, _: u64) -> Result<Vec<Hash>> {
        not_yet("audit proofs")
    }

    fn consistency_proof(&self, _: u64, _: u64) -> Result<Vec<Hash>> {
        not_yet("audit proofs")
    }

    fn verify_records(&self, _: &VerifyingKey) -> Result<VerifyReport> {
        not_yet("verify-store")
    }

    fn backup(&self, _: &Path, _: &[PathBuf], _: &Path) -> Result<Manifest> {
        // The database's own tools copy it consistently (pg_basebackup, pg_dump).
        not_yet("backup (use pg_basebackup or pg_dump, and copy --data-dir's keys)")
    }
}
