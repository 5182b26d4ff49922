//! The plain PostgreSQL baseline the PostgreSQL backend is measured against, in the same
//! run and the same database (`iryo-directory bench --database`): what the server does
//! with no iryo code in the way.
//!
//! - a binary COPY of person-sized rows into a table with three unique indexes (the
//!   shape of `persons`, `my_numbers` and `medical_ids` in one), as bulk enrollment's
//!   ceiling;
//! - transactions of one indexed lookup and one insert, committed durably, from many
//!   connections at once, as a durable eligibility check's ceiling (what `pgbench`
//!   with such a script measures).
//!
//! The tables live in a schema of their own, dropped afterwards.

use super::{DatabaseUrl, PgError};
use futures::pin_mut;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// Bytes of the record each baseline row carries, about a person's encoded record.
const RECORD_BYTES: usize = 300;

/// What a timed run of transactions did.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

async fn fresh_schema(c: &tokio_postgres::Client) -> Result<(), PgError> {
    c.batch_execute(
        "DROP SCHEMA IF EXISTS iryo_baseline CASCADE;
         CREATE SCHEMA iryo_baseline;
         CREATE TABLE iryo_baseline.persons (
             pid bigint PRIMARY KEY, my_number bigint UNIQUE NOT NULL,
             medical_id bigint UNIQUE NOT NULL, record bytea NOT NULL);
         CREATE TABLE iryo_baseline.uses (
             id bigserial PRIMARY KEY, pid bigint NOT NULL, at bigint NOT NULL);",
    )
    .await?;
    Ok(())
}

/// Rows a second of a binary COPY of `rows` rows into the indexed table, made durable
/// by its commit. Leaves the rows for `lookup_insert`.
pub async fn copy_rate(url: &DatabaseUrl, rows: u64) -> Result<f64, PgError> {
    let mut c = url.connect().await?;
    fresh_schema(&c).await?;
    // One statement for every row: at 10 million, longer than a request may take.
    c.batch_execute("SET statement_timeout = 0").await?;
    let record = vec![0x5au8; RECORD_BYTES];
    let started = Instant::now();
    let tx = c.transaction().await?;
    let sink = tx
        .copy_in(
            "COPY iryo_baseline.persons (pid, my_number, medical_id, record) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8, Type::BYTEA]);
    pin_mut!(writer);
    for i in 0..rows as i64 {
        // Keys in no order, as My Numbers and FF1 IDs arrive.
        let scrambled = (i.wrapping_mul(0x9e37_79b9) & 0x7fff_ffff_ffff) | (1 << 40);
        writer
            .as_mut()
            .write(&[&i, &scrambled, &(scrambled ^ 0x55_5555), &record])
            .await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Durable transactions a second, each one indexed lookup and one insert, from
/// `clients` connections for `seconds`; `copy_rate` must have filled the table with
/// `rows` rows.
pub async fn lookup_insert(
    url: &DatabaseUrl,
    rows: u64,
    clients: usize,
    seconds: u64,
) -> Result<Rate, PgError> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = url.connect().await?;
            let mut latencies = Vec::new();
            let mut i = k as i64;
            while Instant::now() < until {
                let key = ((i * 7919) % rows.max(1) as i64).wrapping_mul(0x9e37_79b9)
                    & 0x7fff_ffff_ffff
                    | (1 << 40);
                let t = Instant::now();
                let tx = c.transaction().await?;
                let pid: Option<i64> = tx
                    .query_opt(
                        "SELECT pid FROM iryo_baseline.persons WHERE medical_id = $1",
                        &[&(key ^ 0x55_5555)],
                    )
                    .await?
                    .map(|r| r.get(0));
                tx.execute(
                    "INSERT INTO iryo_baseline.uses (pid, at) VALUES ($1, $2)",
                    &[&pid.unwrap_or(-1), &i],
                )
                .await?;
                tx.commit().await?;
                latencies.push(t.elapsed());
                i += clients as i64;
            }
            Ok::<_, PgError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let latencies = t
            .await
            .map_err(|e| PgError::Inconsistent(format!("a baseline client failed: {e}")))??;
        all.extend(latencies);
    }
    all.sort();
    let pick = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Rate {
        per_second: all.len() as f64 / seconds as f64,
        p50: pick(0.5),
        p99: pick(0.99),
    })
}

/// Drops the baseline's schema.
pub async fn clean(url: &DatabaseUrl) -> Result<(), PgError> {
    let c = url.connect().await?;
    c.batch_execute("DROP SCHEMA IF EXISTS iryo_baseline CASCADE")
        .await?;
    Ok(())
}
