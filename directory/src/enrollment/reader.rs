//! Reading an enrollment file in batches: decoded, its rows validated, each row's first
//! FF1 candidate computed where the issuance method allows it. Both the ordinary
//! ingestion and the initial load read through here, so a file is cut into the same
//! batches, and its rows judged alike, whichever path enrolls it.

use super::text::{self, DetectError, Lines};
use super::{parse_row, Columns, IngestError, IngestOptions, RowError};
use crate::enrollment::text::LineReader;
use crate::issuance::Issuer;
use crate::registry::EnrollmentRow;
use iryo_proto::MedicalId;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

type Decoded = encoding_rs_io::DecodeReaderBytes<BufReader<File>, Vec<u8>>;

/// One batch of a file: its valid rows, with their first candidates when computed,
/// and what was wrong with the rows it rejected.
pub(super) struct Chunk {
    pub rows: Vec<EnrollmentRow>,
    pub candidates: Vec<MedicalId>,
    pub errors: Vec<RowError>,
    pub rejected: u64,
    /// How far into the file the batch ends, for progress.
    pub bytes: u64,
}

/// An enrollment file opened for reading, its encoding known and its header read.
pub(super) struct FileBatches<'a> {
    path: &'a Path,
    csv: csv::Reader<LineReader<Decoded>>,
    lines: Lines,
    cols: Columns,
    record: csv::StringRecord,
    today: chrono::NaiveDate,
    only_insurer: Option<iryo_proto::InsurerNumber>,
    batch_rows: usize,
    /// The file's size in bytes.
    pub total: u64,
    /// The encoding the file is read in, and how it was known.
    pub encoding: String,
    done: bool,
}

impl<'a> FileBatches<'a> {
    pub(super) fn open(path: &'a Path, opts: &IngestOptions) -> Result<Self, IngestError> {
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
        Ok(Self {
            path,
            csv,
            lines,
            cols,
            record: csv::StringRecord::new(),
            today: crate::registry::today(),
            only_insurer: opts.only_insurer.clone(),
            batch_rows: opts.batch_rows.max(1),
            total,
            encoding: detected.describe(),
            done: false,
        })
    }

    /// The next batch of up to `batch_rows` rows (valid or rejected; blank lines do
    /// not count), or `None` after the last. `candidates` asks for each valid row's
    /// generation-0 medical ID candidate.
    pub(super) fn next_chunk(
        &mut self,
        issuer: &Issuer,
        candidates: bool,
    ) -> Result<Option<Chunk>, IngestError> {
        if self.done {
            return Ok(None);
        }
        let mut chunk = Chunk {
            rows: Vec::with_capacity(self.batch_rows),
            candidates: Vec::new(),
            errors: Vec::new(),
            rejected: 0,
            bytes: 0,
        };
        let mut seen = 0usize;
        while seen < self.batch_rows {
            match self.csv.read_record(&mut self.record) {
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Ok(true) => {
                    if self.record.iter().all(|f| f.trim().is_empty()) {
                        continue;
                    }
                    seen += 1;
                    let line = self
                        .lines
                        .line_at(self.record.position().map_or(0, csv::Position::byte));
                    match parse_row(&self.cols, &self.record, line, self.today)
                        .and_then(|row| own_insurer(row, self.only_insurer.as_ref()))
                    {
                        Ok(row) => chunk.rows.push(row),
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
                        line: e.position().map_or(0, |p| self.lines.line_at(p.byte())),
                        field: "(row)".into(),
                        value: String::new(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => {
                    self.done = true;
                    return Err(IngestError::Csv {
                        path: self.path.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        chunk.bytes = self.csv.position().byte();
        if candidates {
            chunk.fill_candidates(issuer, self.path)?;
        }
        Ok(Some(chunk))
    }
}

impl Chunk {
    /// Computes each row's generation-0 medical ID candidate (FF1), in row order.
    pub(super) fn fill_candidates(
        &mut self,
        issuer: &Issuer,
        path: &Path,
    ) -> Result<(), IngestError> {
        self.candidates = self
            .rows
            .iter()
            .map(|r| issuer.candidate(r.my_number, 0))
            .collect::<Result<_, _>>()
            .map_err(|e| IngestError::Store {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        Ok(())
    }
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

/// The rejected rows of a file, written beside it as `FILE.errors.csv` (mode 0600:
/// the rows hold personal data) when the first one comes.
pub(super) struct RejectedRows {
    path: PathBuf,
    out: Option<csv::Writer<BufWriter<File>>>,
}

impl RejectedRows {
    pub(super) fn beside(file: &Path) -> Self {
        let mut p = file.as_os_str().to_owned();
        p.push(".errors.csv");
        Self {
            path: PathBuf::from(p),
            out: None,
        }
    }

    pub(super) fn add(&mut self, errors: &[RowError]) -> Result<(), IngestError> {
        if errors.is_empty() {
            return Ok(());
        }
        if self.out.is_none() {
            let f = crate::files::create_private(&self.path).map_err(|source| IngestError::Io {
                path: self.path.clone(),
                source,
            })?;
            self.out = Some(csv::Writer::from_writer(BufWriter::new(f)));
        }
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        for e in errors {
            out.serialize(e).map_err(|source| IngestError::Csv {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Flushes the rows written, and says where they are; with none, removes the
    /// report an earlier run may have left, so a clean re-run leaves no stale one.
    pub(super) fn finish(self) -> Result<Option<PathBuf>, IngestError> {
        if let Some(mut w) = self.out {
            w.flush().map_err(|source| IngestError::Io {
                path: self.path.clone(),
                source,
            })?;
            return Ok(Some(self.path));
        }
        if self.path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(None)
    }
}
