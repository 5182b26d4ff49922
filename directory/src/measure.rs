//! Measuring helpers the benchmarks share (`iryo-directory bench`, `iryo-bench-net`):
//! memory, percentiles, the checks they send, and what a durable write costs on the
//! disk underneath. Reports go to BENCHMARKS.md; nothing here is a test.

use crate::registry::eligibility::{CheckKey, CheckRequest};
use iryo_proto::InstitutionCode;
use std::time::{Duration, Instant};

/// Peak resident set size of this process, from /proc (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What the benchmarks send: a check by card at `institution` on `date`, for each
/// person's latest coverage.
pub fn card_checks(
    people: &[crate::registry::Person],
    institution: InstitutionCode,
    date: chrono::NaiveDate,
) -> Vec<CheckRequest> {
    people
        .iter()
        .filter_map(|p| p.coverages.last())
        .map(|c| CheckRequest {
            institution,
            key: CheckKey::for_card(&c.card, None),
            date,
            visit_consent: false,
            idempotency_key: None,
        })
        .collect()
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What durable commits cost on this disk before any database is involved: `count`
/// appends of 8 KiB, each followed by `fdatasync`, on a file in `dir`. Every answer that
/// waits for a commit waits at least this long, and the disk's stalls (a few a second
/// on the machine of BENCHMARKS.md, some over 5 ms) reach every commit waiting at the
/// time; this puts figures on both.
pub struct DiskFloor {
    pub syncs_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    /// Syncs slower than 2.5 ms and 5 ms, per 10 s of syncing.
    pub over_2_5ms_per_10s: f64,
    pub over_5ms_per_10s: f64,
}

pub fn disk_floor(dir: &std::path::Path, count: usize) -> std::io::Result<DiskFloor> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join("disk-floor.tmp");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let page = [0x5au8; 8192];
    let mut lat = Vec::with_capacity(count);
    let t = Instant::now();
    for i in 0..count {
        let s = Instant::now();
        file.write_all_at(&page, (i * page.len()) as u64)?;
        file.sync_data()?;
        lat.push(s.elapsed());
    }
    let secs = t.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    lat.sort();
    let per_10s = |limit: Duration| lat.iter().filter(|d| **d > limit).count() as f64 * 10.0 / secs;
    Ok(DiskFloor {
        syncs_per_s: count as f64 / secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        max: lat.last().copied().unwrap_or_default(),
        over_2_5ms_per_10s: per_10s(Duration::from_micros(2500)),
        over_5ms_per_10s: per_10s(Duration::from_millis(5)),
    })
}

impl std::fmt::Display for DiskFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{:.0} syncs/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; per 10 s, {:.0} over 2.5 ms and {:.0} over 5 ms",
            self.syncs_per_s,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.over_2_5ms_per_10s,
            self.over_5ms_per_10s
        )
    }
}
