//! `iryo-directory bench --database URL`: the same sample enrolled and checked on redb
//! and on PostgreSQL, beside the plain PostgreSQL baseline measured in the same run and
//! database (`postgres::baseline`), with the ratios between them.

use super::bench::BenchArgs;
use anyhow::{Context as _, Result};
use iryo_directory::context::Context;
use iryo_directory::enrollment::{
    ingest_all, initial_load, load_files, wants_initial_load, Encoding, IngestOptions, Progress,
    Summary,
};
use iryo_directory::measure::{card_checks, peak_rss_mib, percentile};
use iryo_directory::postgres::DatabaseUrl;
use iryo_directory::registry::eligibility::CheckRequest;
use iryo_directory::registry::now;
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_proto::{InstitutionCode, PointTableKind};
use std::time::{Duration, Instant};

/// Runs the comparison in the database at `url`, which must hold no registry.
pub(super) fn run(args: &BenchArgs, url: &DatabaseUrl) -> Result<()> {
    iryo_directory::postgres::PgStore::ensure_empty(url)
        .context("bench needs an empty database: it enrolls and checks a sample there")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("iryo-bench-{}", std::process::id())));
    let result = measure_postgres(args, url, &dir);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure_postgres(args: &BenchArgs, url: &DatabaseUrl, dir: &std::path::Path) -> Result<()> {
    use iryo_directory::postgres::{baseline, PgStore};
    println!(
        "iryo-directory bench --database {url} — {} persons, method {:?}",
        args.persons, args.method
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let sample = write_sample(&dir.join("sample"), &SampleOptions::clean(args.persons, 42))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let copy = rt.block_on(baseline::copy_rate(url, sample.rows))?;
    println!(
        "\n[baseline] binary COPY of {} rows into a table with 3 unique indexes: {copy:.0} rows/s",
        sample.rows
    );

    let ctx = Context::new(args.config(dir));
    let (redb, keys) = ctx.init()?;
    let issuer = ctx.issuer(&redb)?;
    let pg = PgStore::create(url, ctx.config.issuance.method)?.with_signer(keys.root.clone());
    let opts = IngestOptions {
        encoding: Some(Encoding::Utf8),
        batch_rows: args.batch_rows,
        only_insurer: None,
        max_line_bytes: 64 * 1024,
        source_name: None,
    };
    let enroll = |store: &dyn iryo_directory::store::EnrollBatch| -> Result<f64> {
        let t = Instant::now();
        let mut total = Summary::default();
        for s in ingest_all(store, &issuer, &sample.files, &opts)? {
            total.add(&s);
        }
        Ok(total.rows as f64 / t.elapsed().as_secs_f64())
    };
    let initial = wants_initial_load(&redb, &sample.files, args.initial_load.into())?;
    let on_redb = if initial {
        let t = Instant::now();
        let scratch = ctx.config.data_dir.join("initial-load");
        let summaries = initial_load(
            &redb,
            &issuer,
            &sample.files,
            &opts,
            &scratch,
            &Progress::Silent,
        )?;
        summaries.iter().map(|s| s.rows).sum::<u64>() as f64 / t.elapsed().as_secs_f64()
    } else {
        enroll(&redb)?
    };
    // The same choice on PostgreSQL: the database is empty, so `auto` takes it.
    let pg_initial = initial && pg.registry_empty()?;
    let on_pg = if pg_initial {
        let t = Instant::now();
        let load = pg.initial_load(&ctx.config.data_dir.join("initial-load-postgres"))?;
        let summaries = load_files(load, &issuer, &sample.files, &opts, &Progress::Silent)?;
        summaries.iter().map(|s| s.rows).sum::<u64>() as f64 / t.elapsed().as_secs_f64()
    } else {
        enroll(&pg)?
    };
    println!(
        "\n[enrollment, {} issuance, a durable commit every {} rows]",
        args.method_name(),
        args.batch_rows
    );
    println!(
        "  redb:       {on_redb:>8.0} rows/s  ({:.2}x the baseline's COPY){}",
        on_redb / copy,
        if initial {
            ", by the initial load (one commit, indexes built in key order)"
        } else {
            ""
        }
    );
    println!(
        "  PostgreSQL: {on_pg:>8.0} rows/s  ({:.2}x the baseline's COPY){}",
        on_pg / copy,
        if pg_initial {
            ", by the initial load (one commit, each table written by COPY in key order)"
        } else {
            ""
        }
    );

    let clinic = InstitutionCode::from_parts(13, PointTableKind::Medical, 1)?;
    let reqs = card_checks(
        &redb.reader()?.first_persons(100_000)?,
        clinic,
        iryo_directory::registry::today(),
    );
    anyhow::ensure!(!reqs.is_empty(), "no persons to check");
    println!("\n[checks, durable: one transaction per group, committed before the answers]");
    let n = (args.checks as usize).min(200_000);
    for batch in [100usize, 1000] {
        let run = |check: &dyn Fn(&[CheckRequest]) -> Result<()>| -> Result<(f64, Vec<Duration>)> {
            let mut latencies = Vec::new();
            let t = Instant::now();
            let mut done = 0usize;
            while done < n {
                let k = batch.min(n - done);
                let chunk: Vec<CheckRequest> = (done..done + k)
                    .map(|i| reqs[(i * 7919) % reqs.len()].clone())
                    .collect();
                let b = Instant::now();
                check(&chunk)?;
                latencies.push(b.elapsed());
                done += k;
            }
            latencies.sort();
            Ok((n as f64 / t.elapsed().as_secs_f64(), latencies))
        };
        let (r, rl) = run(&|c| redb.check_batch(c, now()).map(|_| ()).map_err(Into::into))?;
        let (p, pl) = run(&|c| pg.check_batch(c, now()).map(|_| ()).map_err(Into::into))?;
        let ms = |l: &[Duration], q| percentile(l, q).as_secs_f64() * 1e3;
        println!(
            "  group of {batch:>4}: redb {r:>7.0} checks/s (p50 {:.1} ms, p99 {:.1} ms); PostgreSQL {p:>7.0} checks/s (p50 {:.1} ms, p99 {:.1} ms), {:.2}x redb",
            ms(&rl, 0.5),
            ms(&rl, 0.99),
            ms(&pl, 0.5),
            ms(&pl, 0.99),
            p / r
        );
    }
    let clients = 16;
    let tps = rt.block_on(baseline::lookup_insert(url, sample.rows, clients, 10))?;
    println!(
        "\n[baseline] one lookup and one insert per durable transaction, {clients} connections: {:.0} transactions/s (p50 {:.2} ms, p99 {:.2} ms)",
        tps.per_second,
        tps.p50.as_secs_f64() * 1e3,
        tps.p99.as_secs_f64() * 1e3
    );
    rt.block_on(baseline::clean(url))?;
    println!(
        "\npeak RSS overall: {:.0} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
