//! Streaming ingestion: a reader thread decodes, validates and pre-computes FF1
//! candidates while the calling thread commits batches, so memory stays bounded by
//! two batches in flight however large the file.

use super::reader::{Chunk, FileBatches, RejectedRows};
use super::Encoding;
use crate::issuance::Issuer;
use crate::registry::merge::RowOutcome;
use crate::registry::now;
use crate::store::{EnrollBatch, StoreError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("{path}: {source}")]
    Encoding {
        path: PathBuf,
        source: super::text::DetectError,
    },
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The encoding of files without a byte-order mark; `None` detects it.
    pub encoding: Option<Encoding>,
    pub batch_rows: usize,
    /// When an insurer uploads its own file, rows of any other insurer are rejected.
    pub only_insurer: Option<iryo_proto::InsurerNumber>,
    /// The longest line accepted, in bytes (`enrollment.max_line_bytes`).
    pub max_line_bytes: usize,
    /// What conflicts and the history call the file; its path when `None`. An upload
    /// is named by the insurer's own file name, never by where the server keeps it.
    pub source_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub file: String,
    pub rows: u64,
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub conflicts: u64,
    /// Where rejected rows were written, if any were.
    pub errors_file: Option<PathBuf>,
    /// The encoding the file was read in, and how it was known.
    #[serde(default)]
    pub encoding: String,
}

impl Summary {
    /// Counts one row's outcome.
    pub fn count(&mut self, outcome: &RowOutcome) {
        match outcome {
            RowOutcome::New => self.new += 1,
            RowOutcome::Updated => self.updated += 1,
            RowOutcome::Unchanged => self.unchanged += 1,
            RowOutcome::Conflict(_) => self.conflicts += 1,
        }
    }

    pub fn add(&mut self, other: &Summary) {
        self.rows += other.rows;
        self.new += other.new;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.rejected += other.rejected;
        self.conflicts += other.conflicts;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} rows — {} new, {} updated, {} unchanged, {} rejected, {} in conflict",
            self.file,
            self.rows,
            self.new,
            self.updated,
            self.unchanged,
            self.rejected,
            self.conflicts
        )?;
        if !self.encoding.is_empty() {
            write!(f, "; read as {}", self.encoding)?;
        }
        if let Some(e) = &self.errors_file {
            write!(f, " (rejected rows: {})", e.display())?;
        }
        Ok(())
    }
}

/// What a progress bar counts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Unit {
    Bytes,
    Things,
}

/// Reports progress: a bar on a terminal, a log line every few seconds otherwise.
pub enum Progress {
    Bar(indicatif::ProgressBar),
    Log { every: std::time::Duration },
    Silent,
}

impl Progress {
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::Bar(indicatif::ProgressBar::new(0))
        } else {
            Progress::Log {
                every: std::time::Duration::from_secs(5),
            }
        }
    }

    /// Starts the bar again for `what`, of `total` bytes read or things done.
    pub(super) fn begin(&self, what: &str, total: u64, unit: Unit) {
        if let Progress::Bar(b) = self {
            let counts = match unit {
                Unit::Bytes => "{bytes}/{total_bytes} {bytes_per_sec}",
                Unit::Things => "{human_pos}/{human_len} {per_sec}",
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{msg}} [{{bar:40}}] {counts} eta {{eta}}"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_length(total);
            b.set_position(0);
            b.set_message(what.to_string());
        }
    }

    /// Shows that `rows` rows of `file` are done, `bytes` of its `total` read: the
    /// bar moves, or a line is logged if the last was `every` ago.
    pub(super) fn show(&self, file: &str, rows: u64, bytes: u64, total: u64, last: &mut Instant) {
        match self {
            Progress::Bar(b) => b.set_position(bytes),
            Progress::Log { every } if last.elapsed() >= *every => {
                *last = Instant::now();
                let pct = (bytes * 100).checked_div(total).unwrap_or(100);
                tracing::info!(file, rows, percent = pct, "enrolling");
            }
            _ => {}
        }
    }
}

/// Ingests one file. Idempotent: the same file again changes nothing, and a run
/// killed half-way then repeated ends as one uninterrupted run would.
pub fn ingest_file(
    store: &(impl EnrollBatch + ?Sized),
    issuer: &Issuer,
    path: &Path,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<Summary, IngestError> {
    let mut file = FileBatches::open(path, opts)?;
    let total = file.total;
    let name = opts
        .source_name
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    let mut rejected = RejectedRows::beside(path);
    let mut summary = Summary {
        file: name.clone(),
        encoding: file.encoding.clone(),
        ..Summary::default()
    };
    let started = Instant::now();
    let mut last_log = Instant::now();
    progress.begin(&name, total, Unit::Bytes);

    std::thread::scope(|s| -> Result<(), IngestError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Chunk, IngestError>>(2);
        s.spawn(move || {
            let fpe = matches!(issuer, Issuer::Fpe(_));
            loop {
                match file.next_chunk(issuer, fpe) {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });

        for chunk in rx {
            let chunk = chunk?;
            let candidates = (!chunk.candidates.is_empty()).then_some(chunk.candidates.as_slice());
            let report = store
                .enroll_batch(&name, &chunk.rows, candidates, issuer, now())
                .map_err(|source| IngestError::Store {
                    path: path.to_path_buf(),
                    source,
                })?;
            for (_, outcome) in &report.outcomes {
                summary.count(outcome);
            }
            summary.rejected += chunk.rejected;
            summary.rows += report.outcomes.len() as u64 + chunk.rejected;
            rejected.add(&chunk.errors)?;
            tracing::debug!(file = %name, rows = summary.rows, "batch committed");
            progress.show(&name, summary.rows, chunk.bytes, total, &mut last_log);
        }
        Ok(())
    })?;

    summary.errors_file = rejected.finish()?;
    if let Progress::Bar(b) = progress {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::debug!(
        file = %name,
        rows = summary.rows,
        seconds = format!("{secs:.2}"),
        rows_per_sec = (summary.rows as f64 / secs.max(1e-9)) as u64,
        "file enrolled"
    );
    Ok(summary)
}

/// Ingests files one after the other, quietly; their summaries in order.
pub fn ingest_all(
    store: &(impl EnrollBatch + ?Sized),
    issuer: &Issuer,
    files: &[PathBuf],
    opts: &IngestOptions,
) -> Result<Vec<Summary>, IngestError> {
    files
        .iter()
        .map(|f| ingest_file(store, issuer, f, opts, &Progress::Silent))
        .collect()
}
