//! `iryo-directory bench`: enrollment rate, peak memory and eligibility-check rates on
//! this machine, printed as a report for BENCHMARKS.md. Targets are checked here, never
//! by timed assertions in tests.

use anyhow::{Context as _, Result};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::enrollment::{
    ingest_all, initial_load, wants_initial_load, Encoding, IngestOptions, Progress, Summary,
};
use iryo_directory::issuance::Method;
use iryo_directory::measure::{card_checks, disk_floor, peak_rss_mib, percentile};
use iryo_directory::registry::eligibility::CheckRequest;
use iryo_directory::registry::now;
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_proto::{InstitutionCode, PointTableKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub(super) struct BenchArgs {
    /// Persons in the generated national sample.
    #[arg(long, default_value_t = 1_000_000)]
    pub persons: u64,
    /// Eligibility checks per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub checks: u64,
    /// Rows per durable enrollment transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch_rows: usize,
    /// On the embedded store, enroll the sample by the initial load (one transaction,
    /// indexes built in key order) or batch by batch; `auto` takes the initial load,
    /// the registry being empty.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub initial_load: super::registry::InitialLoadArg,
    /// Letters printed (PDF with the font subset, and the vendor CSV) to measure letters/s.
    #[arg(long, default_value_t = 10_000)]
    pub letters: usize,
    /// redb cache in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mib: usize,
    /// Issuance method to measure: fpe (FF1) or random.
    #[arg(long, value_enum, default_value = "fpe")]
    pub method: BenchMethod,
    /// Working directory (removed afterwards unless --keep); a temp dir by default.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum BenchMethod {
    Fpe,
    Random,
}

pub(super) fn run(args: &BenchArgs) -> Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("iryo-bench-{}", std::process::id())));
    if dir.join("data").exists() {
        anyhow::bail!(
            "{} holds a database already; give an empty --dir",
            dir.display()
        );
    }
    let result = measure(args, &dir);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure(args: &BenchArgs, dir: &std::path::Path) -> Result<()> {
    println!(
        "iryo-directory bench — {} persons, method {:?}",
        args.persons, args.method
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "\n[disk] 8 KiB appends, each made durable (fdatasync) before the next: {}",
        disk_floor(dir, 20_000)?
    );

    let t = Instant::now();
    let sample = write_sample(&dir.join("sample"), &SampleOptions::clean(args.persons, 42))?;
    println!(
        "sample: {} rows written in {:.1} s (not timed below)",
        sample.rows,
        t.elapsed().as_secs_f64()
    );

    let ctx = Context::new(args.config(dir));
    let (store, _) = ctx.init()?;
    let issuer = ctx.issuer(&store)?;
    let opts = IngestOptions {
        encoding: Some(Encoding::Utf8),
        batch_rows: args.batch_rows,
        only_insurer: None,
        max_line_bytes: 64 * 1024,
        source_name: None,
    };
    let mut total = Summary::default();
    let t = Instant::now();
    let initial = wants_initial_load(&store, &sample.files, args.initial_load.into())?;
    let summaries = if initial {
        let scratch = ctx.config.data_dir.join("initial-load");
        initial_load(
            &store,
            &issuer,
            &sample.files,
            &opts,
            &scratch,
            &Progress::Silent,
        )?
    } else {
        ingest_all(&store, &issuer, &sample.files, &opts)?
    };
    for s in summaries {
        total.add(&s);
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "\n[enrollment] {} rows ({} new persons) in {:.2} s",
        total.rows, total.new, secs
    );
    if initial {
        println!(
            "  {:.0} rows/s including {} issuance, by the initial load (one durable commit, indexes built in key order)",
            total.rows as f64 / secs,
            args.method_name(),
        );
    } else {
        println!(
            "  {:.0} rows/s including {} issuance and a durable commit every {} rows",
            total.rows as f64 / secs,
            args.method_name(),
            args.batch_rows
        );
    }
    println!(
        "  peak RSS after enrollment: {:.0} MiB (redb cache {} MiB)",
        peak_rss_mib().unwrap_or(f64::NAN),
        args.cache_mib
    );
    let db_size = std::fs::metadata(ctx.config.db_path()).map_or(0, |m| m.len());
    println!(
        "  database file: {:.0} MiB",
        db_size as f64 / (1 << 20) as f64
    );

    letters(&store, &ctx.config, args.letters, dir)?;

    let clinic = InstitutionCode::from_parts(13, PointTableKind::Medical, 1)?;
    let reader = store.reader()?;
    let people = reader.first_persons(100_000)?;
    let reqs = card_checks(&people, clinic, iryo_directory::registry::today());
    drop(people);
    anyhow::ensure!(!reqs.is_empty(), "no persons to check");

    let t = Instant::now();
    let mut eligible = 0u64;
    for i in 0..args.checks {
        if reader
            .check(&reqs[(i as usize * 7919) % reqs.len()])?
            .eligible
        {
            eligible += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "\n[checks, read path] {} checks on one thread in {:.2} s: {:.0} checks/s ({} eligible)",
        args.checks,
        secs,
        args.checks as f64 / secs,
        eligible
    );
    drop(reader);

    let store = std::sync::Arc::new(store);
    let folder = store
        .start_folding(Duration::from_millis(200))
        .context("starting the folder")?;
    println!("\n[checks, durable: service use committed before the answer]");
    for batch in [1usize, 100, 1000, 5000] {
        let n = if batch == 1 {
            2000
        } else {
            args.checks as usize
        };
        let mut latencies = Vec::new();
        let t = Instant::now();
        let mut done = 0usize;
        while done < n {
            let k = batch.min(n - done);
            let chunk: Vec<CheckRequest> = (done..done + k)
                .map(|i| reqs[(i * 7919) % reqs.len()].clone())
                .collect();
            let b = Instant::now();
            store
                .check_batch(&chunk, now())
                .context("durable check batch")?;
            latencies.push(b.elapsed());
            done += k;
        }
        let secs = t.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "  group of {batch:>5}: {:>8.0} checks/s; commit latency p50 {:.2} ms, p99 {:.2} ms",
            n as f64 / secs,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    println!(
        "  (service use not yet in the per-person index: {})",
        store.unfolded_linkage()?
    );
    drop(store);
    drop(folder);
    println!(
        "\npeak RSS overall: {:.0} MiB",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Prints `n` letters of the enrolled people (codes drawn, not stored) and reports
/// letters/s and the bytes a letter takes.
fn letters(
    store: &iryo_directory::store::Store,
    config: &Config,
    n: usize,
    dir: &std::path::Path,
) -> Result<()> {
    use iryo_directory::letters::{write_letters, Letter};
    use iryo_directory::store::Plan;
    if !config.letters.font.exists() {
        println!(
            "\n[letters] skipped: no font at {}",
            config.letters.font.display()
        );
        return Ok(());
    }
    let rows = store.letter_rows(Plan::Agency, true, iryo_directory::registry::today())?;
    let letters: Vec<Letter> = rows
        .into_iter()
        .take(n)
        .map(|row| Letter {
            pid: row.pid,
            row,
            code: "ABCD-EFGH-JKMN".into(),
            expires: "2027-03-31".into(),
            expires_at: 1_806_451_200,
        })
        .collect();
    let out = dir.join("letters");
    let t = Instant::now();
    let files = write_letters(&out, &letters, Plan::Agency, &config.letters)?;
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "pdf"))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "\n[letters] {} letters in {} PDF files of {} in {:.2} s: {:.0} letters/s, {:.1} KiB a letter",
        letters.len(),
        files.len().saturating_sub(1),
        config.letters.per_file,
        secs,
        letters.len() as f64 / secs,
        bytes as f64 / letters.len().max(1) as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

impl BenchArgs {
    /// The configuration of the measured redb store, in `dir/data`.
    pub(super) fn config(&self, dir: &std::path::Path) -> Config {
        let mut config = Config {
            data_dir: dir.join("data"),
            ..Config::default()
        };
        config.registry.cache_mib = self.cache_mib;
        config.issuance.method = match self.method {
            BenchMethod::Fpe => Method::Fpe,
            BenchMethod::Random => Method::Random,
        };
        config
    }

    pub(super) fn method_name(&self) -> &'static str {
        match self.method {
            BenchMethod::Fpe => "FF1",
            BenchMethod::Random => "random",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_floor_orders_its_quantiles_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let f = disk_floor(dir.path(), 40).unwrap();
        assert!(f.syncs_per_s > 0.0);
        assert!(f.p50 <= f.p99 && f.p99 <= f.p999 && f.p999 <= f.max);
        assert!(f.over_5ms_per_10s <= f.over_2_5ms_per_10s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(f.to_string().contains("syncs/s"), "{f}");
    }
}
