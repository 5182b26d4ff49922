//! Store operations on real redb files in temp dirs.

use super::tables::Tables;
use super::*;
use crate::issuance::Issuer;
use crate::registry::merge::tests::row;
use crate::registry::merge::RowOutcome;

fn store(dir: &tempfile::TempDir) -> Store {
    Store::create(&dir.path().join("d.redb"), 16, Method::Fpe).unwrap()
}

#[test]
fn an_issued_id_is_never_issued_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let issuer = Issuer::fpe(&[7u8; 32]);
    let r = row("983205673214", "01130012", "5");
    let taken = issuer.candidate(r.my_number, 0).unwrap();
    // Someone else holds generation 0's candidate already.
    s.write(|t: &mut Tables<'_>| t.set_id_status(taken, 999, IdStatus::Retired))
        .unwrap();
    let report = s
        .enroll_batch("f", std::slice::from_ref(&r), None, &issuer, 0)
        .unwrap();
    assert_eq!(report.outcomes[0].1, RowOutcome::New);
    let p = s.person_by_my_number(r.my_number).unwrap();
    assert_ne!(p.medical_id, taken);
    assert_eq!(p.medical_id, issuer.candidate(r.my_number, 1).unwrap());
    assert_eq!(p.generation, 1);
    // A change moves to the next free generation and keeps the old ID issued.
    let new = s.change_id(p.medical_id, "lost", &issuer, 1).unwrap();
    assert_eq!(new, issuer.candidate(r.my_number, 2).unwrap());
    assert_eq!(
        s.id_entry(p.medical_id).unwrap().unwrap().status,
        IdStatus::Changed { successor: new }
    );
}

#[test]
fn durable_checks_record_one_service_use_each() {
    use crate::registry::eligibility::{CheckKey, CheckRequest};
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let issuer = Issuer::fpe(&[1u8; 32]);
    let r = row("983205673214", "01130012", "5");
    s.enroll_batch("f", std::slice::from_ref(&r), None, &issuer, 0)
        .unwrap();
    let id = s.person_by_my_number(r.my_number).unwrap().medical_id;
    let req = CheckRequest {
        institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
        key: CheckKey::MedicalId(id),
        date: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
    };
    let answers = s.check_batch(&vec![req.clone(); 10], 0).unwrap();
    assert!(answers.iter().all(|a| a.eligible));
    assert_eq!(s.counts().unwrap().service_uses, 10);
    assert!(s.reader().unwrap().check(&req).unwrap().eligible);
    assert_eq!(
        s.counts().unwrap().service_uses,
        10,
        "the read path records nothing"
    );
    drop(s);
    let reopened = Store::open(&dir.path().join("d.redb"), 16).unwrap();
    assert_eq!(
        reopened.counts().unwrap().service_uses,
        10,
        "committed durably"
    );
}
