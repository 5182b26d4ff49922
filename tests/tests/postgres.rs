//! The directory's PostgreSQL schema on a throwaway cluster made from Debian's server
//! binaries: `iryo-directory migrate` applies the versioned migrations once, also when
//! two processes run it at once, and refuses a schema newer than it knows.

use iryo_tests::pg::Cluster;
use iryo_tests::Directory;
use std::time::{Duration, Instant};

fn query<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        f(&client).await
    })
}

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
    assert!(first.contains("schema version 0 → 1"), "{first}");
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
    assert_eq!(rows, 1);

    // A schema from a newer binary is refused, saying what to do.
    query(&url, async |c| {
        c.batch_execute("INSERT INTO iryo_schema (version, name) VALUES (99, 'future')")
            .await
            .unwrap();
    });
    let refused = dir.fails(&["migrate", "--database", &url]);
    assert!(
        refused.contains("version 99, newer than this iryo-directory knows (1)"),
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
