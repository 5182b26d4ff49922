//! The federation on PostgreSQL, against the embedded store: memberships, consent,
//! grants and their refusals, notifications (retried and forged), unmatched grants
//! and their closing, and the audit log's heads, proofs and verification come out the
//! same on both, by the same rules (`RegistryTx`).

use chrono::NaiveDate;
use ed25519_dalek::SigningKey;
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::issuance::{Issuer, Method};
use iryo_directory::postgres::{DatabaseUrl, PgStore};
use iryo_directory::registry::Person;
use iryo_directory::store::{GrantQuery, NotifyOutcome, Operations, Store, StoreError};
use iryo_proto::federation::{
    LoggedGrant, Membership, Notification, Purpose, Registration, Role, Side,
};
use iryo_proto::merkle;
use iryo_proto::roles::{NoticeKind, RegistryNotice};
use iryo_proto::signed::Signed;
use iryo_proto::wire::Refusal;
use iryo_proto::{InstitutionCode, MedicalId, PointTableKind};
use iryo_tests::pg::Cluster;
use iryo_tests::stores::{enroll, sample};

/// The exchange's operations the directory serves to nodes, as both stores offer them.
trait Exchange: Operations {
    fn grant(
        &self,
        requester: &Membership,
        query: &GrantQuery,
        agency: &SigningKey,
        now: i64,
    ) -> Result<Result<LoggedGrant, Refusal>, StoreError>;
    fn notify(
        &self,
        from: &Membership,
        batch: &[Signed<Notification>],
    ) -> Result<NotifyOutcome, StoreError>;
}

macro_rules! exchange {
    ($t:ty) => {
        impl Exchange for $t {
            fn grant(
                &self,
                requester: &Membership,
                query: &GrantQuery,
                agency: &SigningKey,
                now: i64,
            ) -> Result<Result<LoggedGrant, Refusal>, StoreError> {
                self.request_grant(requester, query, agency, now)
            }
            fn notify(
                &self,
                from: &Membership,
                batch: &[Signed<Notification>],
            ) -> Result<NotifyOutcome, StoreError> {
                self.accept_notifications(from, batch)
            }
        }
    };
}
exchange!(Store);
exchange!(PgStore);

/// Registers institution `n` as source and requester; its node key and membership.
fn register(s: &dyn Exchange, agency: &SigningKey, n: u32) -> (SigningKey, Membership) {
    let key = SigningKey::from_bytes(&[n as u8 + 40; 32]);
    let reg = Registration {
        code: InstitutionCode::from_parts(13, PointTableKind::Medical, n).unwrap(),
        name: format!("病院{n} <script>"),
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
            1_800_000_000,
            "op",
        )
        .unwrap();
    (key, m)
}

/// Memberships, consent, grants, notifications, unmatched grants and the audit log's
/// proofs, on one store: what happened, in words that do not depend on the grant ids
/// the store drew.
fn exchange_on(s: &dyn Exchange, agency: &SigningKey, people: &[Person]) -> Vec<String> {
    let mut seen = Vec::new();
    let (_, a) = register(s, agency, 11);
    let (b_key, b) = register(s, agency, 12);
    let (_, c) = register(s, agency, 13);
    seen.push(format!("{a:?} {b:?}"));
    let now = 1_800_000_100;
    let allowed = people[0].medical_id;
    s.add_consent(
        allowed,
        &ConsentRecord {
            institution: Some(a.code),
            purpose: None,
            allow: true,
            expires_at: None,
            at: now,
            origin: ConsentOrigin::Operator("op".into()),
        },
    )
    .unwrap();
    seen.push(format!("{:?}", s.consents(allowed).unwrap()));
    let ask = |medical_id, source| GrantQuery {
        medical_id,
        source,
        purpose: Purpose::Treatment,
        reason: None,
        idempotency_key: None,
    };
    let granted = s.grant(&a, &ask(allowed, b.code), agency, now).unwrap();
    let refused = s
        .grant(&a, &ask(people[1].medical_id, b.code), agency, now)
        .unwrap();
    s.revoke_institution(c.code, now, "op").unwrap();
    let revoked = s.grant(&a, &ask(allowed, c.code), agency, now).unwrap();
    seen.push(format!(
        "{:?} {:?}",
        refused.as_ref().map(|_| ()),
        revoked.as_ref().map(|_| ())
    ));
    let grant = granted.unwrap().grant.open_unverified().unwrap();
    seen.push(format!(
        "{} {} {} {:?} {}",
        grant.requester,
        grant.source,
        grant.medical_id,
        grant.purpose,
        grant.expires_at - grant.issued_at
    ));
    // The source reports it served the grant, twice (a retry), and an impostor's
    // report is refused; the requester never reports.
    let disclosed = Notification {
        id: [9; 16],
        side: Side::Disclosed,
        grant_id: grant.id,
        medical_id: allowed,
        source: b.code,
        requester: a.code,
        purpose: Purpose::Treatment,
        emergency: false,
        record_count: 3,
        resource_types: vec!["Observation".into()],
        at: now + 5,
    };
    let signed = Signed::sign(&disclosed, &b_key);
    let first = s.notify(&b, &[signed.clone(), signed.clone()]).unwrap();
    let again = s.notify(&b, std::slice::from_ref(&signed)).unwrap();
    let forged = s.notify(&a, std::slice::from_ref(&signed)).unwrap();
    seen.push(format!("{first:?} {again:?} {}", forged.refused.len()));
    let unmatched = s.unmatched(now + 100, 30).unwrap();
    seen.push(format!("{} unmatched", unmatched.len()));
    s.close_unmatched(grant.id, "the requester's node was lost", "op", now + 200)
        .unwrap();
    seen.push(format!(
        "{} unmatched",
        s.unmatched(now + 300, 30).unwrap().len()
    ));
    seen.push(format!("{} institutions", s.institutions().unwrap().len()));

    // The audit log: the same size, every head and proof right.
    let report = s.audit_verify(&agency.verifying_key()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let (head, size) = s.current_head().unwrap();
    let head = head.verify(&agency.verifying_key()).unwrap();
    assert_eq!(head.size, size);
    for index in [0, size / 2, size - 1] {
        let leaf = merkle::leaf_hash(&s.audit_entry(index).unwrap().canonical());
        let proof = s.inclusion_proof(index, size).unwrap();
        assert!(merkle::verify_inclusion(
            &leaf, index, size, &proof, &head.root
        ));
    }
    let old = size / 3;
    let proof = s.consistency_proof(old, size).unwrap();
    assert!(merkle::verify_consistency(
        old,
        size,
        &s.audit_root(old).unwrap(),
        &head.root,
        &proof
    ));
    seen.push(format!(
        "log of {size}; {} entries about the patient",
        s.audit_for_person(&people[0]).unwrap().len()
    ));
    let verified = s.verify_records(&agency.verifying_key()).unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    seen
}

#[test]
fn the_federation_on_postgres_works_as_on_redb() {
    let pg = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let files = sample(tmp.path(), 100);
    let issuer = Issuer::fpe(&[3; 32]);
    let agency = SigningKey::from_bytes(&[5; 32]);
    let redb = Store::create(&tmp.path().join("directory.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(agency.clone());
    let postgres = PgStore::create(&DatabaseUrl::parse(&pg.url()).unwrap(), Method::Fpe)
        .unwrap()
        .with_signer(agency.clone());
    enroll(&redb, &issuer, &files);
    enroll(&postgres, &issuer, &files);
    let people = redb.persons().unwrap();
    let on_redb = exchange_on(&redb, &agency, &people);
    let on_postgres = exchange_on(&postgres, &agency, &people);
    assert_eq!(on_redb, on_postgres);
    let key = SigningKey::from_bytes(&[52; 32]).verifying_key().to_bytes();
    assert_eq!(
        redb.institution_by_key(&key).unwrap(),
        postgres.institution_by_key(&key).unwrap()
    );
    assert!(postgres.institution_by_key(&key).unwrap().is_some());
}

/// The registry's notice `seq`, signed by `key`.
fn notice(seq: u64, kind: NoticeKind, key: &SigningKey) -> Signed<RegistryNotice> {
    Signed::sign(
        &RegistryNotice {
            seq,
            at: 1_800_000_000 + i64::try_from(seq).unwrap(),
            kind,
        },
        key,
    )
}

/// An exchange authority's store, which holds no person, told by the registry of an
/// ID change, a death, its withdrawal and a retirement: what grants it then gives.
fn notices_on(s: &dyn Exchange, authority: &SigningKey) -> Vec<String> {
    let registry = SigningKey::from_bytes(&[7; 32]);
    let rkey = registry.verifying_key();
    let (_, a) = register(s, authority, 21);
    let (_, b) = register(s, authority, 22);
    let (old, new) = (
        MedicalId::from_body(1_234_567),
        MedicalId::from_body(7_654_321),
    );
    let mut seen = Vec::new();
    let apply = |seen: &mut Vec<String>, n: Signed<RegistryNotice>| {
        let before = s.audit_size().unwrap();
        let out = s.accept_registry_notices(std::slice::from_ref(&n), &rkey);
        seen.push(format!(
            "{:?}, {} logged",
            out.map_err(|e| e.to_string()),
            s.audit_size().unwrap() - before
        ));
    };
    // Out of order, or signed by another key (the authority's own), refused.
    apply(
        &mut seen,
        notice(2, NoticeKind::Retired { medical_id: old }, &registry),
    );
    apply(
        &mut seen,
        notice(1, NoticeKind::Retired { medical_id: old }, authority),
    );
    // In order: the first applies, again it changes nothing.
    let changed = notice(1, NoticeKind::IdChanged { old, new }, &registry);
    apply(&mut seen, changed.clone());
    apply(&mut seen, changed);
    seen.push(format!("{:?}", s.subject_by_medical_id(old).unwrap()));
    assert_eq!(
        s.subject_by_medical_id(old).unwrap(),
        s.subject_by_medical_id(new).unwrap()
    );
    // Consent given under the new ID is the patient's, whichever ID is asked about.
    s.add_consent(
        new,
        &ConsentRecord {
            institution: Some(a.code),
            purpose: None,
            allow: true,
            expires_at: None,
            at: 1_800_000_050,
            origin: ConsentOrigin::Operator("op".into()),
        },
    )
    .unwrap();
    assert_eq!(s.consents(old).unwrap(), s.consents(new).unwrap());
    let now = 1_800_000_100;
    let grant = |seen: &mut Vec<String>, id, purpose| {
        let q = GrantQuery {
            medical_id: id,
            source: b.code,
            purpose,
            reason: Some("搬送".into()),
            idempotency_key: None,
        };
        seen.push(match s.grant(&a, &q, authority, now).unwrap() {
            Ok(_) => "granted".into(),
            Err(r) => format!("refused: {:?} {}", r.reason, r.detail),
        });
    };
    grant(&mut seen, new, Purpose::Treatment);
    grant(&mut seen, old, Purpose::Treatment);
    let died = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
    apply(
        &mut seen,
        notice(
            2,
            NoticeKind::Died {
                medical_id: new,
                date: died,
            },
            &registry,
        ),
    );
    grant(&mut seen, new, Purpose::Treatment);
    grant(&mut seen, new, Purpose::Emergency);
    apply(
        &mut seen,
        notice(3, NoticeKind::DeathWithdrawn { medical_id: new }, &registry),
    );
    grant(&mut seen, new, Purpose::Treatment);
    apply(
        &mut seen,
        notice(4, NoticeKind::Retired { medical_id: new }, &registry),
    );
    grant(&mut seen, new, Purpose::Treatment);
    seen.push(format!("{:?}", s.subject_by_medical_id(new).unwrap()));
    assert_eq!(
        s.counts().unwrap().persons,
        0,
        "the authority holds no person"
    );
    let notices = (0..s.audit_size().unwrap())
        .filter(|i| {
            matches!(
                s.audit_entry(*i).unwrap(),
                iryo_directory::audit::LogEntry::RegistryNotice { .. }
            )
        })
        .count();
    seen.push(format!("{notices} notices logged"));
    let report = s.audit_verify(&authority.verifying_key()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    seen
}

#[test]
fn registry_notices_apply_in_order_and_decide_grants_on_both_backends() {
    let pg = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let authority = SigningKey::from_bytes(&[6; 32]);
    let redb = Store::create(&tmp.path().join("authority.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(authority.clone());
    let postgres = PgStore::create(&DatabaseUrl::parse(&pg.url()).unwrap(), Method::Fpe)
        .unwrap()
        .with_signer(authority.clone());
    let on_redb = notices_on(&redb, &authority);
    let on_postgres = notices_on(&postgres, &authority);
    let text = on_redb.join("\n");
    for want in [
        "Err(\"registry notice refused: notice 2 arrived before notice 1",
        "Err(\"registry notice refused: signed by a key other than the registry's",
        "Ok(2), 1 logged\nOk(2), 0 logged",
        "granted\nrefused: UnknownPatient medical ID 0000000012345671 was replaced by 0000000076543216",
        "refused: Deceased",
        "Ok(4), 1 logged\ngranted",
        "refused: Retired",
        "4 notices logged",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert_eq!(on_redb, on_postgres);
}

/// Under a burst the group commit begins each group behind the COMMIT of the one
/// before it, on one connection. A group the server refuses in between (a trigger
/// refuses one person's service use) is answered with the failure, and the groups
/// behind it find the log as it really is: every other check is answered, recorded
/// once and logged once, and the log verifies.
#[test]
fn pipelined_groups_stay_whole_when_one_between_them_fails() {
    use iryo_directory::store::Serving;
    use std::sync::Arc;

    let pg = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let files = sample(tmp.path(), 200);
    let issuer = Issuer::fpe(&[3; 32]);
    let agency = SigningKey::from_bytes(&[5; 32]);
    let store = Arc::new(
        PgStore::create(&DatabaseUrl::parse(&pg.url()).unwrap(), Method::Fpe)
            .unwrap()
            .with_signer(agency.clone()),
    );
    enroll(&*store, &issuer, &files);
    let people = store.persons().unwrap();
    let refused = people[0].clone();
    iryo_tests::stores::query(&pg.url(), async |c| {
        c.batch_execute(&format!(
            "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.pid = {} THEN RAISE EXCEPTION 'refused by the test'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_one BEFORE INSERT ON service_uses
             FOR EACH ROW EXECUTE FUNCTION refuse_one();",
            refused.pid
        ))
        .await
        .unwrap();
    });
    let institution = InstitutionCode::from_parts(13, PointTableKind::Medical, 7).unwrap();
    let today = chrono::Local::now().date_naive();
    let checks = iryo_directory::measure::card_checks(&people, institution, today);
    let before = store.audit_size().unwrap();

    let writers = store.clone().start_writers(agency.clone(), 64).unwrap();
    let committer = writers.committer();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answers = rt.block_on(async {
        let tasks: Vec<_> = (0..5)
            .flat_map(|_| checks.iter().cloned())
            .map(|req| {
                let committer = committer.clone();
                tokio::spawn(async move {
                    let about = req.clone();
                    (about, committer.check(req).await)
                })
            })
            .collect();
        futures::future::join_all(tasks).await
    });
    drop(writers);

    let refused_card =
        iryo_directory::measure::card_checks(std::slice::from_ref(&refused), institution, today)
            .remove(0)
            .key;
    let (mut ok, mut failed) = (0u64, 0u64);
    for answer in answers {
        let (req, answer) = answer.unwrap();
        match answer {
            Ok(a) => {
                assert_ne!(
                    req.key, refused_card,
                    "the refused person's check was answered"
                );
                assert!(a.medical_id.is_some());
                ok += 1;
            }
            Err(_) => failed += 1,
        }
    }
    assert!(failed >= 5, "the refused person's five checks fail");
    assert!(ok > 0, "the groups without the refused person commit");
    assert!(
        store.groups_pipelined() > 0,
        "a burst of 1,000 checks in groups of 64 pipelines"
    );
    let after = store.audit_size().unwrap();
    assert_eq!(
        after - before,
        ok,
        "one audit entry per answered check, no more"
    );
    let uses: i64 = iryo_tests::stores::query(&pg.url(), async |c| {
        c.query_one("SELECT count(*) FROM service_uses", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(uses as u64, ok, "one service use per answered check");
    let report = store.audit_verify(&agency.verifying_key()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries, after);
}
