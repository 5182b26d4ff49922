//! Streaming ingestion: a reader thread decodes, validates and pre-computes FF1
//! candidates while the calling thread commits batches, so memory stays bounded by
//! two batches in flight however large the file.

use super::text::{self, DetectError, Lines};
use super::{parse_row, Columns, Encoding, RowError};
use crate::issuance::Issuer;
use crate::registry::merge::RowOutcome;
use crate::registry::{now, today, EnrollmentRow};
use crate::store::{EnrollBatch, StoreError};
use iryo_proto::MedicalId;
use serde::Serialize;
use std::fs::File;
use std::io::{BufReader, BufWriter};
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
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            Progress::Bar(bar)
        } else {
            Progress::Log {
                every: std::time::Duration::from_secs(5),
            }
        }
    }
}

struct Chunk {
    rows: Vec<EnrollmentRow>,
    candidates: Vec<MedicalId>,
    errors: Vec<RowError>,
    rejected: u64,
    bytes: u64,
}

fn errors_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".errors.csv");
    PathBuf::from(p)
}

fn own_insurer(
    row: EnrollmentRow,
    only: Option<&iryo_proto::InsurerNumber>,
) -> Result<EnrollmentRow, Vec<RowError>> {
    match only {
        Some(n) if row.card.insurer != *n => Err(vec![RowError {
            line: row.line,
            field: "insurer_number".into(),
            value: row.card.insurer.to_string(),
            reason: format!("not this insurer's number (the uploader is insurer {n})"),
        }]),
        _ => Ok(row),
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
    let io = |source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let detected = text::detect(path, opts.encoding).map_err(|e| match e {
        DetectError::Io(source) => io(source),
        source => IngestError::Encoding {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let file = File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let decoder = encoding_rs_io::DecodeReaderBytesBuilder::new()
        .encoding(Some(detected.fallback().codec()))
        .bom_override(true)
        .build(BufReader::with_capacity(1 << 20, file));
    let lines = Lines::default();
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(lines.reader(decoder, opts.max_line_bytes.max(1024)));
    let cols = Columns::from_header(
        csv.headers()
            .map_err(|source| IngestError::Csv {
                path: path.to_path_buf(),
                source,
            })?
            .iter(),
    )
    .map_err(|reason| IngestError::Header {
        path: path.to_path_buf(),
        reason,
    })?;

    let name = opts
        .source_name
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    let err_path = errors_path(path);
    let mut summary = Summary {
        file: name.clone(),
        encoding: detected.describe(),
        ..Summary::default()
    };
    let mut err_out: Option<csv::Writer<BufWriter<File>>> = None;
    let batch_rows = opts.batch_rows.max(1);
    let started = Instant::now();
    let mut last_log = Instant::now();
    if let Progress::Bar(b) = progress {
        b.set_length(total);
        b.set_position(0);
        b.set_message(name.clone());
    }
    let today = today();

    std::thread::scope(|s| -> Result<(), IngestError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Chunk, IngestError>>(2);
        s.spawn(move || {
            let mut record = csv::StringRecord::new();
            let fpe = matches!(issuer, Issuer::Fpe(_));
            loop {
                let mut chunk = Chunk {
                    rows: Vec::with_capacity(batch_rows),
                    candidates: Vec::new(),
                    errors: Vec::new(),
                    rejected: 0,
                    bytes: 0,
                };
                let mut seen = 0usize;
                let mut done = false;
                while seen < batch_rows {
                    match csv.read_record(&mut record) {
                        Ok(false) => {
                            done = true;
                            break;
                        }
                        Ok(true) => {
                            seen += 1;
                            let line =
                                lines.line_at(record.position().map_or(0, csv::Position::byte));
                            if record.iter().all(|f| f.trim().is_empty()) {
                                seen -= 1;
                                continue;
                            }
                            match parse_row(&cols, &record, line, today)
                                .and_then(|row| own_insurer(row, opts.only_insurer.as_ref()))
                            {
                                Ok(row) => {
                                    if fpe {
                                        match issuer.candidate(row.my_number, 0) {
                                            Ok(c) => chunk.candidates.push(c),
                                            Err(e) => {
                                                let _ = tx.send(Err(IngestError::Store {
                                                    path: path.to_path_buf(),
                                                    source: e.into(),
                                                }));
                                                return;
                                            }
                                        }
                                    }
                                    chunk.rows.push(row);
                                }
                                Err(errs) => {
                                    chunk.rejected += 1;
                                    chunk.errors.extend(errs);
                                }
                            }
                        }
                        Err(e) if !matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                            seen += 1;
                            chunk.rejected += 1;
                            chunk.errors.push(RowError {
                                line: e.position().map_or(0, |p| lines.line_at(p.byte())),
                                field: "(row)".into(),
                                value: String::new(),
                                reason: e.to_string(),
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Err(IngestError::Csv {
                                path: path.to_path_buf(),
                                source: e,
                            }));
                            return;
                        }
                    }
                }
                chunk.bytes = csv.position().byte();
                if tx.send(Ok(chunk)).is_err() || done {
                    return;
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
                match outcome {
                    RowOutcome::New => summary.new += 1,
                    RowOutcome::Updated => summary.updated += 1,
                    RowOutcome::Unchanged => summary.unchanged += 1,
                    RowOutcome::Conflict(_) => summary.conflicts += 1,
                }
            }
            summary.rejected += chunk.rejected;
            summary.rows += report.outcomes.len() as u64 + chunk.rejected;
            if !chunk.errors.is_empty() {
                if err_out.is_none() {
                    let f = crate::files::create_private(&err_path).map_err(|source| {
                        IngestError::Io {
                            path: err_path.clone(),
                            source,
                        }
                    })?;
                    err_out = Some(csv::Writer::from_writer(BufWriter::new(f)));
                }
                if let Some(w) = err_out.as_mut() {
                    for e in &chunk.errors {
                        w.serialize(e).map_err(|source| IngestError::Csv {
                            path: err_path.clone(),
                            source,
                        })?;
                    }
                }
            }
            tracing::debug!(file = %name, rows = summary.rows, "batch committed");
            match progress {
                Progress::Bar(b) => b.set_position(chunk.bytes),
                Progress::Log { every } if last_log.elapsed() >= *every => {
                    last_log = Instant::now();
                    let pct = (chunk.bytes * 100).checked_div(total).unwrap_or(100);
                    tracing::info!(file = %name, rows = summary.rows, percent = pct, "enrolling");
                }
                _ => {}
            }
        }
        Ok(())
    })?;

    if let Some(mut w) = err_out {
        w.flush().map_err(|source| IngestError::Io {
            path: err_path.clone(),
            source,
        })?;
        summary.errors_file = Some(err_path);
    } else if err_path.exists() {
        // A clean re-run leaves no stale report of an earlier run behind.
        let _ = std::fs::remove_file(&err_path);
    }
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
