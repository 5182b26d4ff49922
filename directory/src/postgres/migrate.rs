//! Versioned SQL migrations. `iryo-directory migrate` applies those a database lacks,
//! all in one transaction under an advisory lock, so two processes migrating at once
//! apply each once; a process refuses a schema newer than it knows, or older than it
//! needs.

use super::PgError;

/// One schema change, applied once, in version order.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "front state",
        sql: include_str!("migrations/0002_front_state.sql"),
    },
    Migration {
        version: 3,
        name: "check intake",
        sql: include_str!("migrations/0003_check_intake.sql"),
    },
    Migration {
        version: 4,
        name: "witnessed checkpoints",
        sql: include_str!("migrations/0004_witnessed_checkpoints.sql"),
    },
    Migration {
        version: 5,
        name: "subjects",
        sql: include_str!("migrations/0005_subjects.sql"),
    },
];

/// The schema version this binary works with.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The advisory lock key migrations hold ("iryo" and 1 in its bytes).
const LOCK: i64 = 0x6972_796f_0000_0001;

const VERSIONS: &str = "CREATE TABLE IF NOT EXISTS iryo_schema (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What `migrate` did: the version found and the version now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: i32,
    pub to: i32,
}

/// Applies the migrations the database lacks.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Applied, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(VERSIONS).await?;
    let from = current(&tx).await?;
    let known = latest();
    if from > known {
        return Err(PgError::Newer { found: from, known });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tracing::info!(version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO iryo_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Applied { from, to: known })
}

/// Refuses a database whose schema is not the one this binary works with.
pub async fn check(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('iryo_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let found = if exists { current(client).await? } else { 0 };
    let known = latest();
    match found.cmp(&known) {
        std::cmp::Ordering::Greater => Err(PgError::Newer { found, known }),
        std::cmp::Ordering::Less => Err(PgError::Older { found, known }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

async fn current(c: &impl tokio_postgres::GenericClient) -> Result<i32, PgError> {
    let v: Option<i32> = c
        .query_one("SELECT max(version) FROM iryo_schema", &[])
        .await?
        .get(0);
    Ok(v.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
        assert_eq!(latest(), MIGRATIONS.len() as i32);
    }
}
