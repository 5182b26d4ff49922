//! Store operations on real redb files in temp dirs.

use super::tables::Tables;
use super::*;
use crate::issuance::Issuer;
use crate::registry::merge::tests::row;
use crate::registry::merge::RowOutcome;

pub(super) fn store(dir: &tempfile::TempDir) -> Store {
    Store::create(&dir.path().join("d.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
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

/// Enrolls one person; an eligibility check by that person's medical ID.
pub(super) fn one_person_check(s: &Store) -> crate::registry::eligibility::CheckRequest {
    use crate::registry::eligibility::{CheckKey, CheckRequest};
    let r = row("983205673214", "01130012", "5");
    s.enroll_batch(
        "f",
        std::slice::from_ref(&r),
        None,
        &Issuer::fpe(&[1; 32]),
        0,
    )
    .unwrap();
    let id = s.person_by_my_number(r.my_number).unwrap().medical_id;
    CheckRequest {
        institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
        key: CheckKey::MedicalId(id),
        date: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        visit_consent: false,
        idempotency_key: None,
    }
}

#[test]
fn durable_checks_record_one_service_use_each() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let req = one_person_check(&s);
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

mod federation {
    use super::*;
    use crate::access::{ConsentOrigin, ConsentRecord};
    use crate::store::GrantQuery;
    use ed25519_dalek::SigningKey;
    use iryo_proto::federation::*;
    use iryo_proto::signed::Signed;
    use iryo_proto::wire::RefusalReason;
    use iryo_proto::{InstitutionCode, PointTableKind};

    fn code(n: u32) -> InstitutionCode {
        InstitutionCode::from_parts(13, PointTableKind::Medical, n).unwrap()
    }

    fn register(s: &Store, agency: &SigningKey, n: u32) -> (SigningKey, Membership) {
        let key = SigningKey::from_bytes(&[n as u8 + 40; 32]);
        let reg = Registration {
            code: code(n),
            name: format!("病院{n}"),
            public_key: key.verifying_key().to_bytes(),
            addresses: vec![],
            at: 0,
        };
        let m = s
            .add_institution(
                &Signed::sign(&reg, &key),
                vec![Role::Source, Role::Requester],
                365,
                agency,
                1_000,
                "op",
            )
            .unwrap();
        (key, m)
    }

    #[test]
    fn grants_follow_consent_and_notifications_pair_up_in_a_verifiable_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let agency = SigningKey::from_bytes(&[9; 32]);
        let issuer = Issuer::fpe(&[1u8; 32]);
        let r = row("983205673214", "01130012", "5");
        s.enroll_batch("f", std::slice::from_ref(&r), None, &issuer, 0)
            .unwrap();
        let patient = s.person_by_my_number(r.my_number).unwrap().medical_id;
        let (req_key, requester) = register(&s, &agency, 1);
        let (src_key, source) = register(&s, &agency, 2);

        // A registration not signed by the key it names is refused.
        let forged = Signed::sign(
            &Registration {
                code: code(3),
                name: "x".into(),
                public_key: [7; 32],
                addresses: vec![],
                at: 0,
            },
            &req_key,
        );
        assert!(s
            .add_institution(&forged, vec![], 1, &agency, 0, "op")
            .is_err());

        let ask = |purpose, reason: Option<&str>| GrantQuery {
            medical_id: patient,
            source: source.code,
            purpose,
            reason: reason.map(String::from),
            idempotency_key: None,
        };
        let refused = s
            .request_grant(&requester, &ask(Purpose::Treatment, None), &agency, 1_100)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.reason, RefusalReason::NoConsent);
        s.add_consent(
            patient,
            &ConsentRecord {
                institution: Some(requester.code),
                purpose: Some(Purpose::Treatment),
                allow: true,
                expires_at: None,
                at: 1_150,
                origin: ConsentOrigin::Operator("op".into()),
            },
        )
        .unwrap();
        let grant = s
            .request_grant(&requester, &ask(Purpose::Treatment, None), &agency, 1_200)
            .unwrap()
            .unwrap();
        let g = grant.grant.verify(&agency.verifying_key()).unwrap();
        // The agency states where the grant is logged: the entry just appended.
        let at = iryo_proto::federation::grant_position(
            grant.position.as_ref(),
            &g,
            &agency.verifying_key(),
        );
        assert_eq!(at, Some(s.audit_size().unwrap() - 1));
        assert!(matches!(
            s.audit_entry(s.audit_size().unwrap() - 1).unwrap(),
            crate::audit::LogEntry::GrantIssued { grant_id, .. } if grant_id == g.id
        ));
        assert_eq!(g.requester_key, req_key.verifying_key().to_bytes());
        assert_eq!(g.expires_at - g.issued_at, MAX_GRANT_SECONDS);
        // A keyed request asked again gets the same grant, logged once, while enough
        // of it is left; another key, or the same key for another ask, is new.
        let keyed = |key: &str, purpose| GrantQuery {
            idempotency_key: Some(iryo_proto::IdempotencyKey::parse(key).unwrap()),
            ..ask(purpose, None)
        };
        let grant_id = |q: &GrantQuery, at| {
            let signed = s
                .request_grant(&requester, q, &agency, at)
                .unwrap()
                .unwrap();
            let g = signed.grant.verify(&agency.verifying_key()).unwrap();
            let at = iryo_proto::federation::grant_position(
                signed.position.as_ref(),
                &g,
                &agency.verifying_key(),
            );
            (g.id, at)
        };
        let logged = s.audit_size().unwrap();
        let first = grant_id(&keyed("k1", Purpose::Treatment), 1_200);
        assert_eq!(grant_id(&keyed("k1", Purpose::Treatment), 1_230), first);
        assert_eq!(s.audit_size().unwrap(), logged + 1);
        assert_ne!(grant_id(&keyed("k2", Purpose::Treatment), 1_230), first);
        assert_ne!(
            grant_id(
                &keyed("k1", Purpose::Treatment),
                1_200 + MAX_GRANT_SECONDS - 59
            ),
            first
        );
        let no_reason = s
            .request_grant(
                &requester,
                &ask(Purpose::Emergency, Some(" ")),
                &agency,
                1_200,
            )
            .unwrap()
            .unwrap_err();
        assert_eq!(no_reason.reason, RefusalReason::ReasonRequired);

        let note = |side, key: &SigningKey, id: u8| {
            Signed::sign(
                &Notification {
                    id: [id; 16],
                    side,
                    grant_id: g.id,
                    medical_id: patient,
                    source: source.code,
                    requester: requester.code,
                    purpose: Purpose::Treatment,
                    emergency: false,
                    record_count: 2,
                    resource_types: vec!["Observation".into()],
                    at: 1_300,
                },
                key,
            )
        };
        let disclosed = note(Side::Disclosed, &src_key, 1);
        let out = s
            .accept_notifications(&source, &[disclosed.clone(), disclosed.clone()])
            .unwrap();
        assert_eq!(out.acknowledged.len(), 2);
        assert_eq!(
            s.unmatched(10_000, 600).unwrap().len(),
            1,
            "only the source reported"
        );
        // An operator closes it with a reason: no longer listed, the closing logged.
        assert!(matches!(
            s.close_unmatched(g.id, " ", "op", 10_000),
            Err(StoreError::ReasonRequired(_))
        ));
        assert!(matches!(
            s.close_unmatched([9; 16], "x", "op", 10_000),
            Err(StoreError::NoGrant(_))
        ));
        let size = s.audit_size().unwrap();
        s.close_unmatched(g.id, "requester crashed before reporting", "op", 10_000)
            .unwrap();
        assert!(s.unmatched(10_000, 600).unwrap().is_empty());
        assert_eq!(s.audit_size().unwrap(), size + 1);
        assert!(s.close_unmatched(g.id, "again", "op", 10_001).is_err());
        // The requester cannot report the source's end, nor sign for it.
        let out = s
            .accept_notifications(&requester, &[note(Side::Disclosed, &req_key, 2)])
            .unwrap();
        assert_eq!(out.refused.len(), 1);
        let out = s
            .accept_notifications(&requester, &[note(Side::Received, &src_key, 3)])
            .unwrap();
        assert_eq!(out.refused.len(), 1);
        s.accept_notifications(&requester, &[note(Side::Received, &req_key, 4)])
            .unwrap();
        assert!(s.unmatched(10_000, 600).unwrap().is_empty());

        let entries = s.audit_for_patient(&[patient]).unwrap();
        let kinds: Vec<&str> = entries
            .iter()
            .map(|(_, e)| match e {
                crate::audit::LogEntry::GrantIssued { .. } => "issued",
                crate::audit::LogEntry::GrantRefused { .. } => "refused",
                crate::audit::LogEntry::Notification { .. } => "notification",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "refused",
                "issued",
                "issued",
                "issued",
                "issued",
                "refused",
                "notification",
                "notification"
            ]
        );
        // The per-patient index is folded from the log later; a reader sees the same
        // entries before, during and after.
        let audit = &super::folding::AUDIT;
        let unfolded = s.unfolded(audit).unwrap();
        assert_eq!(unfolded, s.audit_size().unwrap());
        assert_eq!(s.fold(audit, 3).unwrap(), 3);
        assert_eq!(s.audit_for_patient(&[patient]).unwrap(), entries);
        assert_eq!(s.fold(audit, 1000).unwrap(), unfolded - 3);
        assert_eq!(s.unfolded(audit).unwrap(), 0);
        assert_eq!(s.audit_for_patient(&[patient]).unwrap(), entries);

        let report = s.audit_verify(&agency.verifying_key()).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let size = s.audit_size().unwrap();
        s.sign_pending_head().unwrap();
        let head = s
            .latest_head()
            .unwrap()
            .unwrap()
            .verify(&agency.verifying_key())
            .unwrap();
        assert_eq!(head.size, size);
        let (index, entry) = &entries[3];
        let proof = s.inclusion_proof(*index, size).unwrap();
        let leaf = iryo_proto::merkle::leaf_hash(&entry.canonical());
        assert!(iryo_proto::merkle::verify_inclusion(
            &leaf, *index, size, &proof, &head.root
        ));

        // The agency's setting shortens grants.
        let s = s.with_policy(AccessPolicy {
            grant_seconds: 60,
            ..AccessPolicy::default()
        });
        let short = s
            .request_grant(&requester, &ask(Purpose::Treatment, None), &agency, 1_200)
            .unwrap()
            .unwrap();
        let g = short.grant.verify(&agency.verifying_key()).unwrap();
        assert_eq!(g.expires_at - g.issued_at, 60);

        s.revoke_institution(source.code, 2_000, "op").unwrap();
        let gone = s
            .request_grant(&requester, &ask(Purpose::Treatment, None), &agency, 2_100)
            .unwrap()
            .unwrap_err();
        assert_eq!(gone.reason, RefusalReason::UnknownInstitution);
    }

    #[test]
    fn a_large_batch_is_verified_in_parallel_and_a_forgery_is_singled_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let agency = SigningKey::from_bytes(&[9; 32]);
        let (key, member) = register(&s, &agency, 5);
        let forger = SigningKey::from_bytes(&[66; 32]);
        let batch: Vec<_> = (0..200u32)
            .map(|i| {
                let n = Notification {
                    id: [
                        (i % 256) as u8,
                        (i / 256) as u8,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                    ],
                    side: Side::Disclosed,
                    grant_id: [0; 16],
                    medical_id: iryo_proto::MedicalId::from_body(1),
                    source: member.code,
                    requester: code(9),
                    purpose: Purpose::Treatment,
                    emergency: false,
                    record_count: 1,
                    resource_types: vec![],
                    at: 0,
                };
                let mut signed = Signed::sign(&n, if i == 137 { &forger } else { &key });
                signed.signer = key.verifying_key().to_bytes();
                signed
            })
            .collect();
        let out = s.accept_notifications(&member, &batch).unwrap();
        assert_eq!(out.acknowledged.len(), 199);
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.refused[0].0[0], 137);
    }
}

#[test]
fn activation_codes_work_once_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let codes = s.issue_activations(&[1, 2], 1_000).unwrap();
    let (one, two) = (
        Holder {
            pid: 1,
            ids: vec![],
        },
        Holder {
            pid: 2,
            ids: vec![],
        },
    );
    // Wrong code, or another person's code: refused, nothing set.
    assert!(s.activate(&one, "AAAA-BBBB-CCCC", "phc", 10).is_err());
    assert!(s.activate(&one, &codes[1], "phc", 10).is_err());
    assert_eq!(s.account(1).unwrap().unwrap().passphrase, None);
    // Typed in lower case without dashes it still fits; then it is used up.
    let typed = codes[0].to_lowercase().replace('-', "");
    s.activate(&one, &typed, "phc-1", 10).unwrap();
    assert_eq!(
        s.account(1).unwrap().unwrap().passphrase.as_deref(),
        Some("phc-1")
    );
    assert!(s.activate(&one, &codes[0], "phc-2", 11).is_err());
    // Expired.
    assert!(s.activate(&two, &codes[1], "phc", 1_000).is_err());
    assert!(s.account(3).unwrap().is_none());
}

#[test]
fn a_code_the_registry_told_of_opens_the_account_of_the_id_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let code = super::new_activation_code().unwrap();
    let (id, other) = (
        MedicalId::from_body(100_000_000),
        MedicalId::from_body(200_000_000),
    );
    let hash = iryo_proto::roles::portal_code_hash(id, &code);
    s.write(|t| super::portal::set_activation_hash(t, 7, hash, 1_000))
        .unwrap();
    // Bound to the ID: the same code for a holder of other IDs does not fit, nor does
    // the hash bound to the subject's number.
    let stranger = Holder {
        pid: 7,
        ids: vec![other],
    };
    assert!(s.activate(&stranger, &code, "phc", 10).is_err());
    // A holder whose IDs include it (an ID changed since the letter): it fits, once.
    let holder = Holder {
        pid: 7,
        ids: vec![id, other],
    };
    s.activate(&holder, &code.to_lowercase(), "phc", 10)
        .unwrap();
    assert!(s.activate(&holder, &code, "phc-2", 11).is_err());
}

#[test]
fn a_database_with_the_earlier_audit_layout_is_upgraded_on_open() {
    use redb::{ReadableTable, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    for i in 0..37 {
        s.log_operator("op", format!("action {i}")).unwrap();
    }
    let agency = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    let before = s.audit_verify(&agency).unwrap();
    assert!(before.problems.is_empty(), "{:?}", before.problems);
    // Rewrite the subtree hashes as the earlier version kept them: keyed (level, index).
    let old: TableDefinition<(u32, u64), [u8; 32]> = TableDefinition::new("audit_nodes");
    let tx = s.db.begin_write().unwrap();
    {
        let mut hashes = Vec::new();
        for item in tx.open_table(AUDIT_NODES).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            let (end, level) = k.value();
            hashes.push(((level, ((end + 1) >> level) - 1), v.value()));
        }
        let mut t = tx.open_table(old).unwrap();
        for (k, v) in hashes {
            t.insert(k, v).unwrap();
        }
    }
    tx.delete_table(AUDIT_NODES).unwrap();
    // It also stored the counters that are now read from the tables they number.
    tx.open_table(COUNTERS)
        .unwrap()
        .insert(AUDIT_NEXT, 38)
        .unwrap();
    tx.commit().unwrap();
    drop(s);
    let s = Store::open(&dir.path().join("d.redb"), 16)
        .unwrap()
        .with_signer(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    assert_eq!(s.audit_verify(&agency).unwrap(), before);
    {
        let tx = redb::ReadableDatabase::begin_read(&s.db).unwrap();
        let counters = tx.open_table(COUNTERS).unwrap();
        assert!(counters.get(AUDIT_NEXT).unwrap().is_none());
    }
    assert_eq!(s.log_operator("op", "after".into()).unwrap(), 37);
    assert_eq!(s.audit_size().unwrap(), 38);
    let tables: Vec<String> = redb::ReadableDatabase::begin_read(&s.db)
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    assert!(!tables.iter().any(|t| t == "audit_nodes"), "{tables:?}");
}

#[test]
fn roots_and_proofs_agree_with_a_tree_rebuilt_from_the_entries() {
    use iryo_proto::merkle::{self, MemoryTree, Subtrees};
    use redb::{ReadableDatabase, ReadableTable};
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let mut tree = MemoryTree::default();
    for i in 0..70u64 {
        let at = s.log_operator("op", format!("action {i}")).unwrap();
        tree.push(&s.audit_entry(at).unwrap().canonical());
    }
    for size in 1..=70 {
        let root = s.audit_root(size).unwrap();
        assert_eq!(root, merkle::root(&tree, size).unwrap(), "size {size}");
        for index in [0, size / 2, size - 1] {
            let proof = s.inclusion_proof(index, size).unwrap();
            let leaf = tree.perfect(0, index).unwrap();
            assert!(merkle::verify_inclusion(&leaf, index, size, &proof, &root));
        }
        let old = 1 + size / 3;
        let proof = s.consistency_proof(old, size).unwrap();
        let old_root = merkle::root(&tree, old).unwrap();
        assert!(merkle::verify_consistency(
            old, size, &old_root, &root, &proof
        ));
    }
    // Only subtrees of 16 leaves and more are stored: 64 leaves give 4 + 2 + 1.
    let stored: Vec<(u64, u32)> = {
        let tx = s.db.begin_read().unwrap();
        let t = tx.open_table(AUDIT_NODES).unwrap();
        t.iter().unwrap().map(|e| e.unwrap().0.value()).collect()
    };
    assert_eq!(
        stored,
        [
            (15, 4),
            (31, 4),
            (31, 5),
            (47, 4),
            (63, 4),
            (63, 5),
            (63, 6)
        ]
    );
    let agency = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert!(s.audit_verify(&agency).unwrap().problems.is_empty());
    // A database written before kept the small subtrees too: a right one passes, and a
    // wrong stored hash at any level is found.
    let put = |key: (u64, u32), hash: [u8; 32]| {
        let tx = s.db.begin_write().unwrap();
        tx.open_table(AUDIT_NODES)
            .unwrap()
            .insert(key, hash)
            .unwrap();
        tx.commit().unwrap();
    };
    put(subtree_key(1, 3), tree.perfect(1, 3).unwrap());
    assert!(s.audit_verify(&agency).unwrap().problems.is_empty());
    put(subtree_key(0, 9), [7; 32]);
    put(subtree_key(5, 0), [7; 32]);
    let problems = s.audit_verify(&agency).unwrap().problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("1-leaf subtree ending at entry 9"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("32-leaf subtree ending at entry 31"),
        "{problems:?}"
    );
}

#[test]
fn heads_come_once_a_second_and_on_demand() {
    use crate::registry::eligibility::{CheckKey, CheckRequest};
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let req = CheckRequest {
        institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
        key: CheckKey::MedicalId(MedicalId::from_body(12_345)),
        date: chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        visit_consent: false,
        idempotency_key: None,
    };
    // Heads are signed at most once per wall-clock second: the loop may cross a
    // second's boundary however fast it is.
    let first = crate::registry::now();
    for _ in 0..40 {
        s.check(&req, 0).unwrap();
    }
    let seconds = (crate::registry::now() - first) as usize;
    assert_eq!(s.audit_size().unwrap(), 40);
    let heads = || {
        use redb::ReadableTableMetadata;
        let tx = s.db.begin_read().unwrap();
        let n = tx.open_table(AUDIT_HEADS).unwrap().len().unwrap();
        n as usize
    };
    // The first commit signs; later ones only in a later second.
    assert!((1..=seconds + 1).contains(&heads()), "{} heads", heads());
    // Someone who needs the whole log covered gets a head for it at once.
    let last = 39;
    let agency = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert_eq!(
        crate::store::Front::prove_entry(&s, last, &agency).unwrap(),
        Some(40)
    );
    assert!(!s.head_pending().unwrap());
    assert!(!s.sign_pending_head().unwrap(), "nothing left to sign");
    let report = s.audit_verify(&agency).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
