//! Sample data and the narrated demo.

use anyhow::{bail, Result};
use clap::Args;
use iryo_directory::enrollment::Encoding;
use iryo_directory::sample::{write_sample, SampleOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct SampleArgs {
    /// How many people the files describe.
    #[arg(long, default_value_t = 1000)]
    persons: u64,
    /// Seed of the generator: the same seed writes the same files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory to write the files into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Percentage of rows to break on purpose (bad check digits, impossible dates, ...).
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    bad_rows: f64,
    /// Encoding to write: utf-8 or shift_jis (CP932, as insurers' systems export).
    #[arg(long, value_parser = encoding, default_value = "utf-8")]
    encoding: Encoding,
}

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Working directory for the demo; emptied first.
    #[arg(long, default_value = "iryo-demo")]
    dir: PathBuf,
    /// How many sample people to enroll.
    #[arg(long, default_value_t = 2000)]
    persons: u64,
}

fn encoding(s: &str) -> Result<Encoding, String> {
    Encoding::parse(s).ok_or_else(|| format!("{s:?}: write utf-8 or shift_jis"))
}

pub(super) fn rebuild_linkage(config: &iryo_directory::config::Config) -> Result<ExitCode> {
    let db = config.db_path();
    tracing::info!(database = %db.display(), "rebuilding linkage.redb from the logs");
    let (_store, folded) =
        iryo_directory::store::Store::rebuild_linkage(&db, config.registry.cache_mib)?;
    println!("linkage.redb rebuilt from {folded} log entries");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn backup(
    config: &iryo_directory::config::Config,
    out: &std::path::Path,
) -> Result<ExitCode> {
    use iryo_directory::admin::{AdminRequest, AdminResponse};
    // `serve` may write it: give it a path that does not depend on where it runs.
    let out = std::env::current_dir()?.join(out);
    let t = std::time::Instant::now();
    let m = super::ask!(config, &super::operator(), AdminRequest::Backup { out: out.clone() }, AdminResponse::BackedUp(m) => m);
    let bytes = m.bytes();
    println!(
        "backup written to {} in {:.1} s: {} persons, {} audit log entries, {} files, {:.1} MiB (manifest.json lists each with its SHA-256)",
        out.display(),
        t.elapsed().as_secs_f64(),
        m.count("persons"),
        m.count("audit_entries"),
        m.files.len(),
        bytes as f64 / f64::from(1 << 20)
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn restore(
    config: &iryo_directory::config::Config,
    from: &std::path::Path,
) -> Result<ExitCode> {
    let (m, folded) =
        iryo_directory::store::backup::restore(from, &config.data_dir, config.registry.cache_mib)?;
    println!(
        "restored into {}: {} persons, {} audit log entries as of the backup; linkage.redb made again from {folded} log entries",
        config.data_dir.display(),
        m.count("persons"),
        m.count("audit_entries")
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn verify_store(config: &iryo_directory::config::Config) -> Result<ExitCode> {
    use iryo_directory::admin::{AdminRequest, AdminResponse};
    let r = super::ask!(config, &super::operator(), AdminRequest::VerifyStore, AdminResponse::Verified(r) => r);
    println!(
        "pages: every file's checksums checked when the store was opened\n\
         records: {} persons, {} conflicts, {} mismatches, {} institutions decoded\n\
         audit log: {} entries, {} signed heads",
        r.persons, r.conflicts, r.mismatches, r.institutions, r.audit_entries, r.audit_heads
    );
    if r.problems.is_empty() {
        println!("store verified: nothing wrong");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &r.problems {
            eprintln!("problem: {p}");
        }
        eprintln!(
            "{} problem(s): stop the directory and restore the data directory from a backup",
            r.problems.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

pub(super) fn sample(a: SampleArgs) -> Result<ExitCode> {
    if !(0.0..=100.0).contains(&a.bad_rows) {
        bail!("--bad-rows is a percentage from 0 to 100");
    }
    let r = write_sample(
        &a.out,
        &SampleOptions {
            persons: a.persons,
            seed: a.seed,
            bad_rows_percent: a.bad_rows,
            encoding: a.encoding,
        },
    )?;
    println!(
        "{} rows ({} persons, {} insurer changes, {} broken on purpose) in {} files under {}",
        r.rows,
        a.persons,
        r.movers,
        r.bad_rows,
        r.files.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn demo(a: DemoArgs) -> Result<ExitCode> {
    super::demo::run(&a.dir, a.persons)?;
    Ok(ExitCode::SUCCESS)
}
