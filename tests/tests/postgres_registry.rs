//! The registry on PostgreSQL, against the embedded store: the same files enrolled into
//! both give the same persons, medical IDs, conflicts and counts (the rules are one
//! code, `RegistryTx`); enrollment on PostgreSQL is idempotent, two processes may
//! enroll at once, and the commands that run there so far work from the command line.

use chrono::Datelike;
use ed25519_dalek::SigningKey;
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::issuance::{Issuer, Method};
use iryo_directory::postgres::{DatabaseUrl, PgStore};
use iryo_directory::registry::eligibility::{CheckKey, CheckRequest};
use iryo_directory::registry::{Person, ServiceUse};
use iryo_directory::store::{plain_check, ConflictAction, MismatchAction, Plan, Store, StoreError};
use iryo_proto::{IdempotencyKey, InstitutionCode, MedicalId, MyNumber};
use iryo_tests::pg::Cluster;
use iryo_tests::stores::{database, enroll, query, same, sample};
use iryo_tests::Directory;
use std::path::{Path, PathBuf};

/// The lifecycle operations, as both stores offer them.
trait Lifecycle {
    fn change(
        &self,
        id: MedicalId,
        reason: &str,
        issuer: &Issuer,
        at: i64,
    ) -> Result<MedicalId, StoreError>;
    fn number(&self, old: MyNumber, new: MyNumber, at: i64) -> Result<MedicalId, StoreError>;
    fn death(&self, id: MedicalId, date: chrono::NaiveDate, at: i64) -> Result<(), StoreError>;
    fn retire(&self, today: chrono::NaiveDate, at: i64) -> Result<Vec<MedicalId>, StoreError>;
}

macro_rules! lifecycle {
    ($t:ty) => {
        impl Lifecycle for $t {
            fn change(
                &self,
                id: MedicalId,
                reason: &str,
                issuer: &Issuer,
                at: i64,
            ) -> Result<MedicalId, StoreError> {
                self.change_id(id, reason, issuer, at)
            }
            fn number(
                &self,
                old: MyNumber,
                new: MyNumber,
                at: i64,
            ) -> Result<MedicalId, StoreError> {
                self.change_my_number(old, new, at)
            }
            fn death(
                &self,
                id: MedicalId,
                date: chrono::NaiveDate,
                at: i64,
            ) -> Result<(), StoreError> {
                self.record_death(id, date, "operator", at).map(|_| ())
            }
            fn retire(
                &self,
                today: chrono::NaiveDate,
                at: i64,
            ) -> Result<Vec<MedicalId>, StoreError> {
                self.retire_due(today, at)
            }
        }
    };
}
lifecycle!(Store);
lifecycle!(PgStore);

#[test]
fn enrollment_on_postgres_decides_as_redb_does() {
    let mut pg = Cluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let files = sample(tmp.path(), 1500);
    let issuer = Issuer::fpe(&[3; 32]);

    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let redb = Store::create(&tmp.path().join("directory.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(key.clone());
    let on_redb = enroll(&redb, &issuer, &files);
    let url = database(&pg, "same_rules");
    let postgres = PgStore::create(&url, Method::Fpe).unwrap().with_signer(key);
    let on_postgres = enroll(&postgres, &issuer, &files);

    assert_eq!(on_redb, on_postgres, "the summaries differ");
    assert!(on_redb.iter().map(|s| s.new).sum::<u64>() >= 1400);
    assert!(on_redb.iter().map(|s| s.rejected).sum::<u64>() > 0);
    // Under another name, and a stranger with someone's card.
    assert_eq!(on_redb.last().unwrap().conflicts, 2, "{on_redb:?}");
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());
    same(
        &redb.conflicts(false).unwrap(),
        &postgres.conflicts(false).unwrap(),
    );
    assert_eq!(redb.counts().unwrap(), postgres.counts().unwrap());
    let someone = &redb.persons().unwrap()[17];
    same(
        &[postgres.person_by_medical_id(someone.medical_id).unwrap()],
        std::slice::from_ref(someone),
    );
    same(
        &[postgres.person_by_my_number(someone.my_number).unwrap()],
        std::slice::from_ref(someone),
    );

    // The same files again change nothing, and record each conflict once.
    let again = enroll(&postgres, &issuer, &files);
    for s in &again {
        assert_eq!((s.new, s.updated), (0, 0), "{s:?}");
    }
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());
    assert_eq!(postgres.conflicts(false).unwrap().len(), 2);

    // Assignment files and letters: the same rows, marked the same way.
    let insurer = redb.persons().unwrap()[0].coverages[0].card.insurer.clone();
    let rows = redb.assignment_rows(&insurer, false).unwrap();
    assert!(rows.len() > 100, "{}", rows.len());
    assert_eq!(rows, postgres.assignment_rows(&insurer, false).unwrap());
    redb.mark_assigned(&rows[..50], 1_800_000_000).unwrap();
    postgres.mark_assigned(&rows[..50], 1_800_000_000).unwrap();
    assert_eq!(
        redb.assignment_rows(&insurer, false).unwrap(),
        postgres.assignment_rows(&insurer, false).unwrap()
    );
    assert_eq!(
        postgres.assignment_rows(&insurer, false).unwrap().len(),
        rows.len() - 50
    );
    assert_eq!(postgres.assignment_rows(&insurer, true).unwrap(), rows);
    let today = iryo_directory::registry::today();
    let letters = redb.letter_rows(Plan::Agency, false, today).unwrap();
    assert_eq!(
        letters,
        postgres.letter_rows(Plan::Agency, false, today).unwrap()
    );
    let sent: Vec<(u64, String)> = letters[..20]
        .iter()
        .map(|l| (l.pid, format!("CODE-{}", l.pid)))
        .collect();
    redb.letters_sent(Plan::Agency, &sent, 1_900_000_000, 1_800_000_000)
        .unwrap();
    postgres
        .letters_sent(Plan::Agency, &sent, 1_900_000_000, 1_800_000_000)
        .unwrap();
    assert_eq!(
        redb.letter_rows(Plan::Agency, false, today).unwrap(),
        postgres.letter_rows(Plan::Agency, false, today).unwrap()
    );
    assert_eq!(
        redb.account(sent[3].0).unwrap(),
        postgres.account(sent[3].0).unwrap()
    );
    assert!(postgres.account(sent[3].0).unwrap().is_some());
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());

    // The conflict resolved by applying the row: the registry follows it on both.
    let issuer_ref = &issuer;
    let apply = |s: &dyn Fn(u64) -> Result<iryo_directory::registry::Conflict, StoreError>| s(1);
    let on_redb = apply(&|id| {
        redb.resolve_conflict(
            id,
            ConflictAction::Apply,
            "本人確認済み",
            "op",
            issuer_ref,
            1_800_000_000,
        )
    })
    .unwrap();
    let on_postgres = apply(&|id| {
        postgres.resolve_conflict(
            id,
            ConflictAction::Apply,
            "本人確認済み",
            "op",
            issuer_ref,
            1_800_000_000,
        )
    })
    .unwrap();
    same(&[on_redb], &[on_postgres]);
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());
    assert_eq!(redb.counts().unwrap(), postgres.counts().unwrap());

    let key = |p: &Person| (p.my_number, p.medical_id);
    let mut enrolled: Vec<_> = redb.persons().unwrap().iter().map(key).collect();
    enrolled.sort();
    let enrolled_ids = redb.counts().unwrap().issued_ids;

    // Changes, My Number changes, deaths and retirement: the same rules on both.
    let people = redb.persons().unwrap();
    let elder = people
        .iter()
        .find(|p| p.identity.birth.date().year() < 1980)
        .unwrap();
    let died = chrono::NaiveDate::from_ymd_opt(2001, 4, 1).unwrap();
    let today = iryo_directory::registry::today();
    let new_number = MyNumber::from_body(98_765_432_101);
    for (name, lifecycle) in [
        ("redb", &redb as &dyn Lifecycle),
        ("postgres", &postgres as &dyn Lifecycle),
    ] {
        let at = 1_800_000_000;
        let successor = lifecycle
            .change(people[3].medical_id, "card lost and misused", &issuer, at)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_ne!(successor, people[3].medical_id);
        assert!(lifecycle
            .change(people[3].medical_id, "again", &issuer, at)
            .is_err());
        assert_eq!(
            lifecycle
                .number(people[4].my_number, new_number, at)
                .unwrap(),
            people[4].medical_id
        );
        lifecycle.death(elder.medical_id, died, at).unwrap();
        assert_eq!(
            lifecycle.retire(today, at).unwrap(),
            vec![elder.medical_id],
            "{name}"
        );
        assert!(lifecycle.retire(today, at).unwrap().is_empty(), "{name}");
    }
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());
    assert_eq!(
        postgres
            .person_by_medical_id(people[3].medical_id)
            .unwrap()
            .pid,
        people[3].pid,
        "a replaced ID still finds its person"
    );
    assert_eq!(
        postgres.person_by_my_number(new_number).unwrap().pid,
        people[4].pid
    );
    assert_eq!(redb.counts().unwrap(), postgres.counts().unwrap());

    // Two stores (as two processes would be) enrolling the same files at once, in
    // opposite orders, take turns on the database: each person is created once, and
    // no ID is issued twice. (Without the contradicting file, whose stranger would be
    // the card's holder if enrolled first.)
    let url = database(&pg, "at_once");
    drop(PgStore::create(&url, Method::Fpe).unwrap());
    let forward = files[..files.len() - 1].to_vec();
    let reversed: Vec<PathBuf> = forward.iter().rev().cloned().collect();
    std::thread::scope(|s| {
        for order in [&forward, &reversed] {
            let url = url.clone();
            let issuer = &issuer;
            s.spawn(move || enroll(&PgStore::open(&url).unwrap(), issuer, order));
        }
    });
    let together = PgStore::open(&url).unwrap();
    let mut found: Vec<_> = together.persons().unwrap().iter().map(key).collect();
    found.sort();
    assert_eq!(enrolled, found);
    assert_eq!(together.counts().unwrap().issued_ids, enrolled_ids);
    pg.stop(true);
}

#[test]
fn registry_commands_run_on_postgres() {
    let pg = Cluster::start();
    let dir = Directory::new();
    let url = pg.url();
    fn on<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        [&["--database", url][..], args].concat()
    }
    let with = |args: &[&'static str]| on(&url, args);

    // A database that cannot be reached leaves no keys behind.
    let nowhere = format!("postgresql://iryo@/iryo?host={}/none", pg.socket_dir());
    let refused = dir.fails(&on(&nowhere, &["init"]));
    assert!(refused.contains("PostgreSQL at"), "{refused}");
    assert!(!dir.data.join("keys").exists());

    let init = dir.ok(&with(&["init"]));
    assert!(
        init.contains("prepared the registry in postgresql://"),
        "{init}"
    );
    let files = sample(&dir.path("in"), 300);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = on(&url, &["enroll"]);
    args.extend(names.iter().map(String::as_str));
    let out = dir.run(&args);
    // Rejected rows give exit code 3; the rest is enrolled.
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let status = dir.json(&with(&["status"]));
    assert!(status["persons"].as_u64().unwrap() >= 280, "{status}");
    assert_eq!(status["open_conflicts"], 2, "{status}");
    let conflicts = dir.ok(&with(&["conflicts", "list"]));
    assert!(conflicts.contains("別人"), "{conflicts}");

    // `show` finds a person and writes the operator's read to the audit log.
    let person = csv_field(&files[0], "my_number");
    let shown = dir.json(&on(&url, &["show", "--my-number", &person, "--json"]));
    assert_eq!(shown["person"]["my_number"], person.as_str(), "{shown}");
    let counts = dir.json(&with(&["status"]));
    assert_eq!(counts, status);
    let medical_id: i64 = shown["person"]["medical_id"]
        .as_str()
        .and_then(|s| s.replace('-', "").parse().ok())
        .unwrap_or_else(|| panic!("{shown}"));
    let (reads, heads): (i64, i64) = query(&url, async |c| {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM audit_leaves WHERE medical_id = $1),
                        (SELECT count(*) FROM audit_heads)",
                &[&medical_id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    });
    assert_eq!(
        (reads, heads),
        (1, 1),
        "the read is logged under a signed head"
    );

    // A check, recorded in the service history and the audit log.
    let id = shown["person"]["medical_id"].as_str().unwrap().to_string();
    let answer = dir.answer(&on(
        &url,
        &[
            "check",
            "--institution",
            "1310000011",
            "--medical-id",
            &id,
            "--json",
        ],
    ));
    assert_eq!(answer["eligible"], true, "{answer}");
    assert_eq!(dir.json(&with(&["status"]))["service_uses"], 1);

    // The operator's queue: the conflict dismissed, with its reason.
    let dismissed = dir.ok(&on(
        &url,
        &[
            "conflicts",
            "resolve",
            "1",
            "--dismiss",
            "--reason",
            "別人の誤記",
        ],
    ));
    assert!(dismissed.contains("別人の誤記"), "{dismissed}");
    assert_eq!(dir.json(&with(&["status"]))["open_conflicts"], 1);
    assert!(dir.ok(&with(&["notices"])).contains("no notices"));

    // An insurer's assignment file, written and marked sent.
    let insurer = csv_field(&files[0], "insurer_number");
    let out = dir.path("assignment.csv").display().to_string();
    let assigned = dir.ok(&on(&url, &["assign", "--insurer", &insurer, "--out", &out]));
    assert!(
        assigned.contains(&format!("for insurer {insurer}")),
        "{assigned}"
    );
    let again = dir.ok(&on(&url, &["assign", "--insurer", &insurer, "--out", &out]));
    assert!(again.starts_with("0 rows"), "{again}");

    // The lifecycle commands, on the database directly.
    let changed = dir.ok(&on(
        &url,
        &["change", "--medical-id", &id, "--reason", "カード紛失"],
    ));
    assert!(changed.contains("replaced; successor"), "{changed}");
    let successor = changed.rsplit(' ').next().unwrap().trim().to_string();
    let died = dir.ok(&on(
        &url,
        &["death", "--medical-id", &successor, "--date", "2001-04-01"],
    ));
    assert!(died.contains("death recorded"), "{died}");
    let retired = dir.ok(&with(&["retire-due"]));
    assert!(retired.starts_with("1 medical IDs retired"), "{retired}");
    let again = dir.fails(&on(&url, &["change", "--medical-id", &id, "--reason", "x"]));
    assert!(again.contains("cannot be changed"), "{again}");

    // A second `init` is refused without touching the registry or the keys.
    let other = Directory::new();
    let twice = other.fails(&with(&["init"]));
    assert!(twice.contains("holds a registry already"), "{twice}");
    // What does not run on PostgreSQL yet says so and what to do.
    let out = dir.path("backup").display().to_string();
    let later = dir.fails(&on(&url, &["backup", "--out", &out]));
    assert!(
        later.contains("backup (use pg_basebackup or pg_dump")
            && later.contains("does not run on PostgreSQL yet"),
        "{later}"
    );
    // The audit log and the whole store check out.
    let verified = dir.ok(&with(&["audit", "verify"]));
    assert!(verified.contains("audit log verified"), "{verified}");
    dir.ok(&with(&["verify-store"]));
    let later = dir.fails(&with(&["rebuild-linkage"]));
    assert!(
        later.contains("rebuild-linkage (there is no linkage.redb on PostgreSQL) does not run"),
        "{later}"
    );
    // The variable names the database as well as the flag does.
    let by_env = dir
        .command(&["status"])
        .env("IRYO_DATABASE", &url)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{by_env:?}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&by_env.stdout).unwrap(),
        dir.json(&with(&["status"]))
    );
}

/// The first data row's value of `column` in a CSV file.
fn csv_field(file: &Path, column: &str) -> String {
    let mut r = csv::Reader::from_path(file).unwrap();
    let at = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == column)
        .unwrap();
    r.records().next().unwrap().unwrap()[at].to_string()
}

/// Every kind of check, against both stores: by card with and without a branch, by
/// medical ID, by a replaced ID, for no one, with a presented ID that is not the
/// registered one, with consent given at the desk, and retried with a key.
fn checks(people: &[Person], replaced: MedicalId) -> Vec<CheckRequest> {
    let institution = InstitutionCode::parse("1310000011").unwrap();
    let today = iryo_directory::registry::today();
    let request = |key| CheckRequest {
        institution,
        key,
        date: today,
        visit_consent: false,
        idempotency_key: None,
    };
    let by_card = |p: &Person, branch: bool, presented: Option<MedicalId>| {
        let c = &p.coverages[0].card;
        CheckKey::Card {
            insurer: c.insurer.clone(),
            symbol: c.symbol.clone(),
            number: c.number.clone(),
            branch: branch.then_some(c.branch),
            presented,
        }
    };
    let mut out = Vec::new();
    for p in people.iter().take(40) {
        out.push(request(by_card(p, true, None)));
        out.push(request(by_card(p, false, None)));
        out.push(request(CheckKey::MedicalId(p.medical_id)));
    }
    out.push(request(CheckKey::MedicalId(replaced)));
    out.push(request(CheckKey::MedicalId(MedicalId::from_body(12_345))));
    let wrong = Some(people[1].medical_id);
    out.push(request(by_card(&people[0], true, wrong)));
    out.push(request(by_card(&people[0], true, wrong)));
    let mut at_desk = request(by_card(&people[2], true, None));
    at_desk.visit_consent = true;
    out.push(at_desk);
    let mut keyed = request(CheckKey::MedicalId(people[5].medical_id));
    keyed.idempotency_key = Some(IdempotencyKey::parse("visit-7f3a").unwrap());
    out.push(keyed.clone());
    out.push(keyed);
    out
}

/// A sample of `n` people enrolled into redb and into PostgreSQL alike, one of whose
/// medical IDs was then replaced on both.
struct Enrolled {
    redb: Store,
    postgres: PgStore,
    url: DatabaseUrl,
    key: SigningKey,
    people: Vec<Person>,
    replaced: MedicalId,
    _tmp: tempfile::TempDir,
}

const AT: i64 = 1_800_000_000;

fn enrolled_on_both(pg: &Cluster, n: u64) -> Enrolled {
    let tmp = tempfile::tempdir().unwrap();
    let files = sample(tmp.path(), n);
    let issuer = Issuer::fpe(&[3; 32]);
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let redb = Store::create(&tmp.path().join("directory.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(key.clone());
    let url = DatabaseUrl::parse(&pg.url()).unwrap();
    let postgres = PgStore::create(&url, Method::Fpe)
        .unwrap()
        .with_signer(key.clone());
    enroll(&redb, &issuer, &files);
    enroll(&postgres, &issuer, &files);
    let people = redb.persons().unwrap();
    let replaced = people[9].medical_id;
    redb.change_id(replaced, "lost", &issuer, AT).unwrap();
    postgres.change_id(replaced, "lost", &issuer, AT).unwrap();
    Enrolled {
        redb,
        postgres,
        url,
        key,
        people,
        replaced,
        _tmp: tmp,
    }
}

#[test]
fn checks_on_postgres_answer_and_record_as_redb_does() {
    let pg = Cluster::start();
    let Enrolled {
        redb,
        postgres,
        url,
        people,
        replaced,
        ..
    } = enrolled_on_both(&pg, 400);
    let at = AT;

    let asked = checks(&people, replaced);
    let on_redb = redb.check_batch(&asked, at).unwrap();
    let on_postgres = postgres.check_batch(&asked, at).unwrap();
    assert_eq!(on_redb, on_postgres);
    // One at a time, as `check` asks: the same again.
    for req in &asked[..6] {
        assert_eq!(
            redb.check(req, at + 1).unwrap(),
            postgres.check(req, at + 1).unwrap()
        );
    }
    let reasons: std::collections::BTreeSet<String> =
        on_redb.iter().map(|a| format!("{:?}", a.reason)).collect();
    for expected in ["Active", "NotFound", "IdChanged", "BranchRequired"] {
        assert!(
            reasons.contains(expected),
            "no {expected} among {reasons:?}"
        );
    }
    assert!(on_redb.iter().any(|a| a.mismatch.is_some()));

    assert_eq!(redb.counts().unwrap(), postgres.counts().unwrap());
    same(
        &redb.mismatches(false).unwrap(),
        &postgres.mismatches(false).unwrap(),
    );
    for p in &people[..6] {
        assert_eq!(
            redb.person_by_medical_id(p.medical_id)
                .map(|p| p.pid)
                .unwrap(),
            p.pid
        );
        let uses = |s: &dyn Fn(u64) -> Vec<ServiceUse>| s(p.pid);
        assert_eq!(
            uses(&|pid| redb.reader().unwrap().service_uses(pid).unwrap()),
            uses(&|pid| postgres.service_uses(pid).unwrap()),
        );
    }
    assert_eq!(
        redb.audit_size().unwrap(),
        postgres.audit_size().unwrap(),
        "one audit entry per check recorded, on both"
    );

    // The mismatch resolved by moving the card: the same persons after it on both.
    let case = redb.mismatches(true).unwrap()[0].id;
    let on_redb = redb
        .resolve_mismatch(case, MismatchAction::Rebind, "家族の取り違え", "op", at)
        .unwrap();
    let on_postgres = postgres
        .resolve_mismatch(case, MismatchAction::Rebind, "家族の取り違え", "op", at)
        .unwrap();
    assert_eq!(on_redb, on_postgres);
    same(&redb.persons().unwrap(), &postgres.persons().unwrap());
    assert!(postgres
        .resolve_mismatch(case, MismatchAction::Keep, "again", "op", at)
        .is_err());
    assert_eq!(redb.counts().unwrap(), postgres.counts().unwrap());
    assert_eq!(redb.notices(None).unwrap(), postgres.notices(None).unwrap());

    // Checks that record consent given at the desk, and an operator's consent
    // decisions, from two connections at once: both take the audit log's lock and the
    // consent counter, always in that order, so neither waits on the other for ever.
    let second = PgStore::open(&url)
        .unwrap()
        .with_signer(SigningKey::from_bytes(&[5; 32]));
    let at_desk: Vec<CheckRequest> = asked
        .iter()
        .filter(|r| matches!(r.key, CheckKey::MedicalId(_)))
        .take(8)
        .map(|r| CheckRequest {
            visit_consent: true,
            ..r.clone()
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..30 {
                postgres.check_batch(&at_desk, at + i).unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..30 {
                second
                    .add_consent(
                        people[i % 5].medical_id,
                        &ConsentRecord {
                            institution: None,
                            purpose: None,
                            allow: true,
                            expires_at: None,
                            at,
                            origin: ConsentOrigin::Operator("op".into()),
                        },
                    )
                    .unwrap();
            }
        });
    });
}

/// The network's plain checks go to the intake (`check_intake`) without the audit
/// log's lock, and are moved into the logs later by whichever process holds it. The
/// answers are those of the main writer's path on redb; every check reaches the logs
/// exactly once while two processes check and move at once; the counts include what
/// waits; and a check that changes the registry is refused there.
#[test]
fn plain_checks_wait_in_the_intake_and_reach_the_logs_once() {
    let pg = Cluster::start();
    let Enrolled {
        redb,
        postgres: first,
        url,
        key,
        people,
        replaced,
        ..
    } = enrolled_on_both(&pg, 200);
    let at = AT;
    let second = PgStore::open(&url).unwrap().with_signer(key.clone());
    let plain: Vec<CheckRequest> = checks(&people, replaced)
        .into_iter()
        .filter(plain_check)
        .collect();
    let (audit, uses) = (first.audit_size().unwrap(), first.counts().unwrap());

    // Answered as the main writer answers them, and counted while they wait.
    let on_redb = redb.check_batch(&plain, at).unwrap();
    assert_eq!(first.check_plain(&plain, at).unwrap(), on_redb);
    assert_eq!(
        first.audit_size().unwrap(),
        audit,
        "not in the log before a move"
    );
    assert_eq!(
        first.counts().unwrap(),
        redb.counts().unwrap(),
        "waiting service uses are counted"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM check_intake"),
        plain.len().to_string()
    );

    // Two processes check and move at once; each check is moved once.
    let rounds = 15;
    std::thread::scope(|s| {
        for store in [&first, &second] {
            let plain = &plain;
            s.spawn(move || {
                for i in 0..rounds {
                    store.check_plain(plain, at + i).unwrap();
                    store.move_intake().unwrap();
                }
            });
        }
    });
    // What the last round of each left behind.
    second.drain_intake().unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM check_intake"), "0");
    let checked = plain.len() as u64 * (1 + 2 * rounds as u64);
    assert_eq!(first.audit_size().unwrap(), audit + checked);
    let named = on_redb.iter().filter(|a| a.medical_id.is_some()).count() as u64;
    assert_eq!(
        first.counts().unwrap().service_uses,
        uses.service_uses + named * (1 + 2 * rounds as u64)
    );
    let report = first.audit_verify(&key.verifying_key()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // The checks made before the two stores ran, moved first, match redb's, person by person.
    for p in &people[..6] {
        let mine = first.service_uses(p.pid).unwrap();
        let theirs = redb.reader().unwrap().service_uses(p.pid).unwrap();
        assert_eq!(mine[..theirs.len()], theirs[..], "{}", p.medical_id);
    }

    // What changes the registry stays with the main writer.
    let mut at_desk = plain[0].clone();
    at_desk.visit_consent = true;
    assert!(first.check_plain(&[at_desk], at).is_err());
    assert_eq!(pg.sql("SELECT count(*) FROM check_intake"), "0");
}
