//! The directory's PostgreSQL schema on a throwaway cluster made from Debian's server
//! binaries: `iryo-directory migrate` applies the versioned migrations once, also when
//! two processes run it at once, and refuses a schema newer than it knows. Over a
//! network, connections use TLS checked against the configured CA.

use iryo_directory::postgres::prepared::Prepared;
use iryo_tests::pg::Cluster;
use iryo_tests::stores::query;
use iryo_tests::Directory;
use std::time::{Duration, Instant};

fn tables(url: &str) -> Vec<String> {
    query(url, async |c| {
        c.query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    })
}

#[test]
fn migrate_makes_the_schema_once_and_refuses_a_newer_one() {
    let mut pg = Cluster::start();
    let dir = Directory::new();
    let url = pg.url();

    let first = dir.ok(&["migrate", "--database", &url]);
    assert!(first.contains("schema version 0 → 5"), "{first}");
    for t in [
        "persons",
        "medical_ids",
        "cards",
        "service_uses",
        "audit_leaves",
        "audit_subtrees",
        "audit_heads",
        "portal_sessions",
        "upload_jobs",
        "idempotency",
        "witnessed_checkpoints",
        "subjects",
        "iryo_schema",
    ] {
        assert!(tables(&url).iter().any(|n| n == t), "{t} missing");
    }
    let again = dir.ok(&["migrate", "--database", &url]);
    assert!(again.contains("up to date"), "{again}");

    // Two processes migrating a new database at once: each migration applied once.
    query(&url, async |c| {
        c.batch_execute("CREATE DATABASE second").await.unwrap();
    });
    let second = url.replacen("/iryo?", "/second?", 1);
    let racing: Vec<_> = (0..2)
        .map(|_| {
            dir.command(&["migrate", "--database", &second])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in racing {
        assert!(p.wait().unwrap().success());
    }
    let rows: i64 = query(&second, async |c| {
        c.query_one("SELECT count(*) FROM iryo_schema", &[])
            .await
            .unwrap()
            .get(0)
    });
    let known = i64::try_from(iryo_directory::postgres::migrate::MIGRATIONS.len()).unwrap();
    assert_eq!(rows, known, "each migration applied once");

    // A schema from a newer binary is refused, saying what to do.
    query(&url, async |c| {
        c.batch_execute("INSERT INTO iryo_schema (version, name) VALUES (99, 'future')")
            .await
            .unwrap();
    });
    let refused = dir.fails(&["migrate", "--database", &url]);
    assert!(
        refused.contains("version 99, newer than this iryo-directory knows (5)"),
        "{refused}"
    );

    // A bad URL names what is wrong and never shows the password.
    let bad = dir.fails(&[
        "migrate",
        "--database",
        "postgresql://iryo:s3cret@/iryo?sslmode=sometimes",
    ]);
    assert!(
        bad.contains("expected postgresql://") && !bad.contains("s3cret"),
        "{bad}"
    );

    // A database that does not answer is an error naming it, not a hang.
    pg.stop(true);
    let started = Instant::now();
    let down = dir.fails(&["migrate", "--database", &url]);
    assert!(
        down.contains("PostgreSQL at postgresql://iryo@/iryo"),
        "{down}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Appenders on separate connections (as separate `serve` processes would be) take
/// turns on the log's lock: one gap-free RFC 6962 sequence, every head and proof right,
/// and a rolled-back append leaves nothing.
#[test]
fn appenders_on_many_connections_make_one_log_that_verifies() {
    use iryo_directory::audit::LogEntry;
    use iryo_directory::postgres::{audit, migrate, DatabaseUrl};
    use iryo_proto::merkle::{self, MemoryTree};

    let pg = Cluster::start();
    let url = DatabaseUrl::parse(&pg.url()).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let agency = key.verifying_key();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = url.connect().await.unwrap();
        migrate::migrate(&mut c).await.unwrap();
        let (appenders, transactions) = (4usize, 20usize);
        let tasks: Vec<_> = (0..appenders)
            .map(|p| {
                let (url, key) = (url.clone(), key.clone());
                tokio::spawn(async move {
                    let mut c = url.connect().await.unwrap();
                    let mut mine = Vec::new();
                    for t in 0..transactions {
                        let tx = c.transaction().await.unwrap();
                        let mut a = audit::begin(&tx, None, &Prepared::default()).await.unwrap();
                        for e in 0..=(p + t) % 7 {
                            let entry = LogEntry::Operator {
                                operator: format!("appender {p}"),
                                action: format!("{t}.{e}"),
                                at: 0,
                            };
                            mine.push((a.append(&entry).unwrap(), entry));
                        }
                        a.finish(&tx, Some((&key, t as i64)), &Prepared::default())
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|(i, _)| *i);
        assert!(
            all.iter().enumerate().all(|(i, (j, _))| i as u64 == *j),
            "each index once, none missing"
        );

        // An append rolled back leaves nothing; the next one takes the same index.
        let patient = iryo_proto::MedicalId::from_body(42);
        let read = LogEntry::OperatorRead {
            operator: "op".into(),
            medical_id: patient,
            what: "record".into(),
            at: 0,
        };
        let n = all.len() as u64;
        for commit in [false, true] {
            let tx = c.transaction().await.unwrap();
            let mut a = audit::begin(&tx, None, &Prepared::default()).await.unwrap();
            assert_eq!(a.append(&read).unwrap(), n);
            a.finish(&tx, Some((&key, 99)), &Prepared::default())
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
                assert_eq!(audit::size(&c).await.unwrap(), n);
            }
        }
        all.push((n, read));
        let n = n + 1;
        let listed = audit::for_patient(&c, &[patient]).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, n - 1);

        // Roots and proofs are those of the tree rebuilt in memory.
        let mut t = MemoryTree::default();
        for (_, e) in &all {
            t.push(&e.canonical());
        }
        let head = audit::latest_head(&c)
            .await
            .unwrap()
            .unwrap()
            .verify(&agency)
            .unwrap();
        assert_eq!((head.size, head.root), (n, merkle::root(&t, n).unwrap()));
        assert_eq!(audit::root(&c, n).await.unwrap(), head.root);
        for i in [0, 1, 15, 16, n / 2, n - 1] {
            let proof = audit::inclusion_proof(&c, i, n).await.unwrap();
            let leaf = merkle::leaf_hash(&all[i as usize].1.canonical());
            assert!(merkle::verify_inclusion(&leaf, i, n, &proof, &head.root));
        }
        for old in [1, 15, 16, 17, n / 3, n] {
            let proof = audit::consistency_proof(&c, old, n).await.unwrap();
            let old_root = merkle::root(&t, old).unwrap();
            assert!(merkle::verify_consistency(
                old, n, &old_root, &head.root, &proof
            ));
        }
        assert!(audit::inclusion_proof(&c, n, n).await.is_err());

        let report = audit::verify(&mut c, &agency).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.entries, n);
        assert_eq!(report.heads, (appenders * transactions + 1) as u64);

        // A rewritten entry is found.
        c.execute(
            "UPDATE audit_leaves SET entry = $1 WHERE leaf = 5",
            &[&b"rewritten".to_vec()],
        )
        .await
        .unwrap();
        let report = audit::verify(&mut c, &agency).await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("does not match")),
            "{:?}",
            report.problems
        );
    });
}

/// The two stores keep one log the same way: the entries of a redb store appended to
/// PostgreSQL give the same root at every size and the same proofs.
#[test]
fn both_stores_give_the_same_roots_and_proofs() {
    use iryo_directory::postgres::{audit, migrate, DatabaseUrl};
    use iryo_directory::store::Store;

    let dir = tempfile::tempdir().unwrap();
    let redb = Store::create(
        &dir.path().join("directory.redb"),
        16,
        iryo_directory::issuance::Method::Fpe,
    )
    .unwrap()
    .with_signer(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    for i in 0..40 {
        redb.log_operator("op", format!("action {i}")).unwrap();
    }
    let n = redb.audit_size().unwrap();
    let entries: Vec<_> = (0..n).map(|i| redb.audit_entry(i).unwrap()).collect();

    let pg = Cluster::start();
    let url = DatabaseUrl::parse(&pg.url()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = url.connect().await.unwrap();
        migrate::migrate(&mut c).await.unwrap();
        for chunk in entries.chunks(17) {
            let tx = c.transaction().await.unwrap();
            let mut a = audit::begin(&tx, None, &Prepared::default()).await.unwrap();
            for e in chunk {
                a.append(e).unwrap();
            }
            a.finish(&tx, None, &Prepared::default()).await.unwrap();
            tx.commit().await.unwrap();
        }
        for size in 0..=n {
            assert_eq!(
                audit::root(&c, size).await.unwrap(),
                redb.audit_root(size).unwrap(),
                "root at {size}"
            );
        }
        for (index, size) in [(0, n), (16, n), (31, 32), (n - 1, n)] {
            assert_eq!(
                audit::inclusion_proof(&c, index, size).await.unwrap(),
                redb.inclusion_proof(index, size).unwrap()
            );
        }
        for old in [1, 16, 17, n] {
            assert_eq!(
                audit::consistency_proof(&c, old, n).await.unwrap(),
                redb.consistency_proof(old, n).unwrap()
            );
        }
        let stored: i64 = c
            .query_one("SELECT count(*) FROM audit_subtrees", &[])
            .await
            .unwrap()
            .get(0);
        // Every complete subtree of 16 leaves or more, as the redb store keeps them.
        let complete: u64 = (4..64).map(|level| n >> level).sum();
        assert_eq!(stored as u64, complete);
    });
}

#[test]
fn tls_to_the_database_is_checked_against_the_configured_ca() {
    let mut pg = Cluster::start();
    // The database server's certificate, for 127.0.0.1, from a CA of its own (made the
    // way the agency makes its HTTPS front's), and another CA that did not sign it.
    let certs = Directory::new();
    certs.ok(&["ca", "init", "--host", "127.0.0.1"]);
    let stranger = Directory::new();
    stranger.ok(&["ca", "init"]);
    let port = pg.serve_tls(
        &certs.data.join("ca/server.pem"),
        &certs.data.join("ca/server.key"),
    );
    let d = Directory::new();
    let config = |name: &str, url: &str, ca: Option<&std::path::Path>| {
        let path = d.path(name);
        let ca = ca
            .map(|p| format!("ca_file = {:?}\n", p.display().to_string()))
            .unwrap_or_default();
        std::fs::write(&path, format!("[storage]\nurl = {url:?}\n{ca}")).unwrap();
        path.display().to_string()
    };
    let tcp = format!("postgresql://iryo@127.0.0.1:{port}/iryo");

    // Unencrypted over TCP: the server itself refuses it.
    let plain = config("plain.toml", &tcp, None);
    let err = d.fails(&["--config", &plain, "init"]);
    assert!(
        err.contains("no encryption") || err.contains("pg_hba"),
        "{err}"
    );
    // TLS asked for without a CA to check the server with: said so, before connecting.
    let asked = config("asked.toml", &format!("{tcp}?sslmode=require"), None);
    let err = d.fails(&["--config", &asked, "init"]);
    assert!(err.contains("ca_file"), "{err}");
    // A server whose certificate another CA signed is not trusted.
    let wrong = config("wrong.toml", &tcp, Some(&stranger.data.join("ca/ca.pem")));
    let err = d.fails(&["--config", &wrong, "init"]);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        !d.data.join("keys/agency-root.ed25519").exists(),
        "a refused database leaves no keys behind"
    );

    // With the right CA, every command works, over TLS: the server takes no other
    // connection over TCP.
    let right = config("right.toml", &tcp, Some(&certs.data.join("ca/ca.pem")));
    d.ok(&["--config", &right, "init"]);
    let file = d.path("a.csv");
    iryo_tests::write_enrollment(
        &file,
        &[&iryo_tests::https::row(
            &iryo_tests::https::kyokai(),
            "kyokai",
            0,
        )],
    );
    d.ok(&["--config", &right, "enroll", &file.display().to_string()]);
    assert_eq!(d.json(&["--config", &right, "status"])["persons"], 1);
}

#[test]
fn a_failed_transaction_leaves_its_connection_out_of_any_transaction() {
    use iryo_directory::store::Front;
    let pg = Cluster::start();
    let storage = iryo_directory::config::StorageConfig {
        pool_size: 1,
        ..Default::default()
    };
    let url = iryo_directory::postgres::DatabaseUrl::parse(&pg.url())
        .unwrap()
        .configured(&storage)
        .unwrap();
    let store =
        iryo_directory::postgres::PgStore::create(&url, iryo_directory::issuance::Method::Random)
            .unwrap()
            .with_signer(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let open = || -> i64 {
        query(&pg.url(), async |c| {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
        })
    };
    // A logged write that fails after BEGIN and the log's lock went out.
    let err = store
        .resolve_mismatch(
            99,
            iryo_directory::store::MismatchAction::Keep,
            "why",
            "op",
            0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
    assert_eq!(open(), 0, "the failed transaction was rolled back");
    // The one connection goes on: a write commits and is seen elsewhere.
    store.log_operator("op", "after a failure".into()).unwrap();
    assert_eq!(store.audit_size().unwrap(), 1);
    assert_eq!(open(), 0);
}
