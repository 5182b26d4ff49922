//! Enrolling files into an empty or nearly empty embedded registry by the initial
//! load (`store::initial_load`): the files are read in the ordinary path's batches,
//! their rows judged alike and rejected rows written beside them alike, then the
//! registry applies them all in one transaction and builds its indexes in key order.

use super::ingest::Unit;
use super::reader::{Chunk, FileBatches, RejectedRows};
use super::{IngestError, IngestOptions, Progress, Summary};
use crate::issuance::Issuer;
use crate::store::{Gathered, Load, LoadProgress, Store};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Whether `enroll` takes the initial load (`--initial-load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialLoadChoice {
    /// When the registry holds fewer persons than the files hold rows.
    #[default]
    Auto,
    Always,
    Never,
}

/// The fewest bytes a row of an enrollment file takes, its header's columns filled
/// with the shortest values a valid row can have: a file of `n` bytes holds fewer
/// than `n / MIN_ROW_BYTES` rows.
const MIN_ROW_BYTES: u64 = 80;

/// Whether loading `files` into `store` should be an initial load: asked for, or the
/// registry is small beside what the files may hold, so that reading its keys once
/// costs less than the random inserts the load saves.
pub fn wants_initial_load(
    store: &Store,
    files: &[PathBuf],
    choice: InitialLoadChoice,
) -> Result<bool, IngestError> {
    match choice {
        InitialLoadChoice::Always => Ok(true),
        InitialLoadChoice::Never => Ok(false),
        InitialLoadChoice::Auto => {
            let bytes: u64 = files
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
            let persons = store.person_count().map_err(|source| IngestError::Store {
                path: files.first().cloned().unwrap_or_default(),
                source,
            })?;
            // Fewer than a tenth of the rows the files could hold.
            Ok(persons.saturating_mul(10) < bytes / MIN_ROW_BYTES)
        }
    }
}

/// Enrolls `files` by one initial load whose temporary files go to `scratch`; their
/// summaries in order. Nothing is enrolled unless everything is: a load that stops
/// leaves the registry as it was.
pub fn initial_load(
    store: &Store,
    issuer: &Issuer,
    files: &[PathBuf],
    opts: &IngestOptions,
    scratch: &Path,
    progress: &Progress,
) -> Result<Vec<Summary>, IngestError> {
    initial_load_sorting_in(store, issuer, files, opts, scratch, None, progress)
}

/// `initial_load` whose sorts hold at most `sort_memory` bytes each, if given.
pub(crate) fn initial_load_sorting_in(
    store: &Store,
    issuer: &Issuer,
    files: &[PathBuf],
    opts: &IngestOptions,
    scratch: &Path,
    sort_memory: Option<usize>,
    progress: &Progress,
) -> Result<Vec<Summary>, IngestError> {
    let first = files.first().map_or(Path::new(""), PathBuf::as_path);
    let mut load = store
        .initial_load(scratch)
        .map_err(|source| IngestError::Store {
            path: first.to_path_buf(),
            source,
        })?;
    if let Some(bytes) = sort_memory {
        load = load.with_sort_memory(bytes);
    }
    load_files(load, issuer, files, opts, progress)
}

/// Reads `files` into `load`, then has the backend apply them all in one
/// transaction; their summaries in order.
pub fn load_files(
    mut load: impl Load,
    issuer: &Issuer,
    files: &[PathBuf],
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<Vec<Summary>, IngestError> {
    let started = Instant::now();
    let first = files.first().map_or(Path::new(""), PathBuf::as_path);
    let mut summaries = Vec::with_capacity(files.len());
    for path in files {
        let name = opts
            .source_name
            .clone()
            .unwrap_or_else(|| path.display().to_string());
        load.gathered().file(&name);
        let summary = read_file(load.gathered(), issuer, path, &name, opts, progress)?;
        summaries.push(summary);
    }
    let reporter = Reporter {
        progress,
        last: std::cell::Cell::new(Instant::now()),
        stage: std::cell::Cell::new(("", 0)),
    };
    let mut outcome = |file: usize, o: &crate::registry::merge::RowOutcome| {
        if let Some(s) = summaries.get_mut(file) {
            s.count(o);
        }
    };
    load.finish(issuer, &reporter, &mut outcome)
        .map_err(|source| IngestError::Store {
            path: first.to_path_buf(),
            source,
        })?;
    if let Progress::Bar(b) = progress {
        b.finish_and_clear();
    }
    let rows: u64 = summaries.iter().map(|s| s.rows).sum();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        files = files.len(),
        rows,
        seconds = format!("{secs:.2}"),
        rows_per_sec = (rows as f64 / secs.max(1e-9)) as u64,
        "initial load committed"
    );
    Ok(summaries)
}

/// Reads one file into the load: its valid rows added in batches, its rejected rows
/// written beside it. Reading and validating, and FF1, run on two threads of their own,
/// one batch after the other: FF1 costs about twice the reading, and on two cores the
/// three stages overlap where one reader thread doing both kept the load waiting.
fn read_file(
    load: &mut Gathered,
    issuer: &Issuer,
    path: &Path,
    name: &str,
    opts: &IngestOptions,
    progress: &Progress,
) -> Result<Summary, IngestError> {
    let mut file = FileBatches::open(path, opts)?;
    let total = file.total;
    let mut rejected = RejectedRows::beside(path);
    let mut summary = Summary {
        file: name.to_string(),
        encoding: file.encoding.clone(),
        ..Summary::default()
    };
    progress.begin(name, total, Unit::Bytes);
    let mut last_log = Instant::now();
    std::thread::scope(|s| -> Result<(), IngestError> {
        let (tx, read) = mpsc::sync_channel::<Result<Chunk, IngestError>>(2);
        s.spawn(move || loop {
            let next = file.next_chunk(issuer, false);
            let end = !matches!(next, Ok(Some(_)));
            if let Some(chunk) = next.transpose() {
                if tx.send(chunk).is_err() {
                    return;
                }
            }
            if end {
                return;
            }
        });
        let (tx, issued) = mpsc::sync_channel::<Result<Chunk, IngestError>>(2);
        s.spawn(move || {
            for chunk in read {
                let chunk = chunk.and_then(|mut c| c.fill_candidates(issuer, path).map(|()| c));
                if tx.send(chunk).is_err() {
                    return;
                }
            }
        });
        for chunk in issued {
            let chunk = chunk?;
            load.add(&chunk.rows, &chunk.candidates)
                .map_err(|source| IngestError::Store {
                    path: path.to_path_buf(),
                    source,
                })?;
            summary.rejected += chunk.rejected;
            summary.rows += chunk.rows.len() as u64 + chunk.rejected;
            rejected.add(&chunk.errors)?;
            progress.show(name, summary.rows, chunk.bytes, total, &mut last_log);
        }
        Ok(())
    })?;
    summary.errors_file = rejected.finish()?;
    Ok(summary)
}

/// The load's stages on the progress bar, or in the log.
struct Reporter<'p> {
    progress: &'p Progress,
    last: std::cell::Cell<Instant>,
    /// The stage under way and its total.
    stage: std::cell::Cell<(&'static str, u64)>,
}

impl LoadProgress for Reporter<'_> {
    fn stage(&self, what: &'static str, total: u64) {
        tracing::debug!(stage = what, total, "initial load");
        self.progress.begin(what, total, Unit::Things);
        self.last.set(Instant::now());
        self.stage.set((what, total));
    }

    fn at(&self, done: u64) {
        match self.progress {
            Progress::Bar(b) => b.set_position(done),
            Progress::Log { every } if self.last.get().elapsed() >= *every => {
                self.last.set(Instant::now());
                let (stage, total) = self.stage.get();
                tracing::info!(stage, done, total, "initial load");
            }
            _ => {}
        }
    }
}
