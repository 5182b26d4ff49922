//! An enrollment file as text: which encoding it is in, and on which physical line
//! each record starts.
//!
//! The csv crate counts only `\n` when it reports a record's line, so a CRLF file's
//! lines come out one low after any quoted field with a line break, and a file with
//! bare CR line ends reports every record as line 1. Insurers fix the line an error
//! report names, so the line is counted here, from the decoded text, for LF, CRLF
//! and CR alike.

use super::Encoding;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// The encoding a file was read in, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A byte-order mark said so.
    Bom(&'static encoding_rs::Encoding),
    /// The operator or the configuration said so.
    Given(Encoding),
    /// No mark: the bytes are valid in this encoding (strict UTF-8 first).
    Sniffed(Encoding),
}

impl Detected {
    /// The encoding to decode with when no byte-order mark overrides it.
    pub fn fallback(self) -> Encoding {
        match self {
            Detected::Given(e) | Detected::Sniffed(e) => e,
            Detected::Bom(_) => Encoding::Utf8,
        }
    }

    /// How the summary names it: `utf-8`, `shift_jis`, `utf-8 (byte-order mark)`.
    pub fn describe(self) -> String {
        match self {
            Detected::Bom(e) => format!("{} (byte-order mark)", e.name().to_ascii_lowercase()),
            Detected::Given(e) => e.name().to_string(),
            Detected::Sniffed(e) => format!("{} (detected)", e.name()),
        }
    }
}

/// Why a file could not be read as text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(
        "is neither UTF-8 nor Shift_JIS (CP932): the bytes near offset {offset} are text in neither; \
         convert the file, or give --encoding to read it as one of them anyway"
    )]
    Neither { offset: u64 },
}

/// How much text past the first non-ASCII byte decides the encoding: enough for
/// hundreds of rows of names and addresses, little against a file of millions.
const SNIFF_WINDOW: usize = 1 << 20;

/// Decides a file's encoding: its byte-order mark, else `given`, else strict UTF-8
/// if the first non-ASCII text is valid UTF-8, else Shift_JIS if it decodes cleanly
/// as that, else neither (refused). An ASCII-only file is UTF-8.
pub fn detect(path: &Path, given: Option<Encoding>) -> Result<Detected, DetectError> {
    let mut file = std::fs::File::open(path)?;
    let mut head = [0u8; 3];
    let n = read_full(&mut file, &mut head)?;
    if let Some((bom, _)) = encoding_rs::Encoding::for_bom(&head[..n]) {
        return Ok(Detected::Bom(bom));
    }
    if let Some(e) = given {
        return Ok(Detected::Given(e));
    }
    let mut window = head[..n].to_vec();
    let mut offset = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut eof = n < head.len();
    // Skip ASCII-only text, keeping the window's start at a line start.
    while !eof && window.is_ascii() {
        offset += window.len() as u64;
        window.clear();
        let n = read_full(&mut file, &mut buf)?;
        eof = n < buf.len();
        window.extend_from_slice(&buf[..n]);
    }
    if window.is_ascii() {
        return Ok(Detected::Sniffed(Encoding::Utf8));
    }
    while !eof && window.len() < SNIFF_WINDOW {
        let n = read_full(&mut file, &mut buf)?;
        eof = n < buf.len();
        window.extend_from_slice(&buf[..n]);
    }
    if !eof {
        // Cut at the last line end: neither a UTF-8 sequence nor a Shift_JIS pair
        // spans one, so the window ends on a whole character in both.
        if let Some(end) = window.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            window.truncate(end + 1);
        }
    }
    // The window may begin inside a character: start it after the last line end
    // before the first non-ASCII byte.
    let first = window.iter().position(|b| !b.is_ascii()).unwrap_or(0);
    let start = window[..first]
        .iter()
        .rposition(|&b| b == b'\n' || b == b'\r')
        .map_or(0, |p| p + 1);
    let sample = &window[start..];
    let offset = offset + start as u64;
    if std::str::from_utf8(sample).is_ok() {
        return Ok(Detected::Sniffed(Encoding::Utf8));
    }
    let (_, had_errors) = encoding_rs::SHIFT_JIS.decode_without_bom_handling(sample);
    if !had_errors {
        return Ok(Detected::Sniffed(Encoding::ShiftJis));
    }
    let bad = std::str::from_utf8(sample)
        .err()
        .map_or(0, |e| e.valid_up_to() as u64);
    Err(DetectError::Neither {
        offset: offset + bad,
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where line terminators start in the decoded text, as far as it has been read.
#[derive(Debug, Default)]
struct Terminators {
    /// Start offset and length (1, or 2 for CRLF) of terminators not yet passed.
    pending: VecDeque<(u64, u64)>,
    /// Terminators before the last record asked about.
    passed: u64,
    /// Bytes read so far.
    read: u64,
    /// The last byte read was a CR (a CRLF's LF is not a second terminator).
    after_cr: bool,
    /// Bytes read since the last terminator.
    line_len: usize,
    /// Terminators read so far.
    read_lines: u64,
}

/// The physical line on which a record starting at a byte offset of the decoded text
/// begins; shared between the reader the csv parser reads through and its caller.
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<Mutex<Terminators>>);

impl Lines {
    /// The 1-based line of a record that starts at `offset`. Offsets must not
    /// decrease from one call to the next (records come in file order). The parser
    /// places a record after blank lines at the first blank line; those are skipped.
    pub fn line_at(&self, offset: u64) -> u64 {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Every terminator before the record, and those it starts on: the parser
        // may place a record on the LF of a CRLF or at blank lines before it.
        let mut cursor = offset;
        while let Some(&(o, len)) = t.pending.front() {
            if o > cursor {
                break;
            }
            cursor = cursor.max(o + len);
            t.pending.pop_front();
            t.passed += 1;
        }
        t.passed + 1
    }

    /// Wraps the decoded text so that its terminators are counted as it is read. A
    /// line longer than `max_line` bytes stops the reading with an error naming it:
    /// the csv parser would otherwise hold the whole line in memory.
    pub fn reader<R: Read>(&self, inner: R, max_line: usize) -> LineReader<R> {
        LineReader {
            inner,
            lines: self.clone(),
            max_line,
        }
    }
}

pub struct LineReader<R> {
    inner: R,
    lines: Lines,
    max_line: usize,
}

impl<R: Read> Read for LineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self.lines.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = t.read + i as u64;
            match b {
                b'\r' => {
                    t.pending.push_back((at, 1));
                    t.after_cr = true;
                    t.line_len = 0;
                    t.read_lines += 1;
                }
                b'\n' if t.after_cr => {
                    t.after_cr = false;
                    if let Some(last) = t.pending.back_mut() {
                        last.1 = 2;
                    }
                }
                b'\n' => {
                    t.pending.push_back((at, 1));
                    t.line_len = 0;
                    t.read_lines += 1;
                }
                _ => {
                    t.after_cr = false;
                    t.line_len += 1;
                    if t.line_len > self.max_line {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "line {} is longer than {} bytes; a row is a few hundred bytes, so this is not an enrollment file (or its line ends are missing)",
                                t.read_lines + 1,
                                self.max_line
                            ),
                        ));
                    }
                }
            }
        }
        t.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line of each record as the csv parser positions them, through `Lines`.
    fn record_lines(text: &str) -> Vec<u64> {
        let lines = Lines::default();
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(7)
            .from_reader(lines.reader(text.as_bytes(), 1 << 16));
        let mut out = Vec::new();
        let mut rec = csv::StringRecord::new();
        while csv.read_record(&mut rec).unwrap() {
            out.push(lines.line_at(rec.position().unwrap().byte()));
        }
        out
    }

    #[test]
    fn lf_crlf_and_cr_files_give_physical_lines() {
        let rows = ["h1,h2", "a,b", "\"multi", "line\",c", "", "d,e"];
        for end in ["\n", "\r\n", "\r"] {
            let text = rows.join(end) + end;
            assert_eq!(record_lines(&text), [2, 3, 6], "line end {end:?}");
        }
    }

    #[test]
    fn a_line_too_long_stops_the_file_naming_it() {
        let lines = Lines::default();
        let text = format!("a,b\n1,2\n{}\n", "x".repeat(100));
        let mut r = lines.reader(text.as_bytes(), 50);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert!(
            e.to_string().starts_with("line 3 is longer than 50 bytes"),
            "{e}"
        );
    }

    fn sniff(bytes: &[u8]) -> Result<Detected, DetectError> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let mut f = crate::files::create_private(tmp.path()).unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        detect(tmp.path(), None)
    }

    #[test]
    fn the_encoding_is_detected_or_the_file_refused() {
        let text = "name\n山田 太郎\nﾔﾏﾀﾞ\n".repeat(3);
        assert_eq!(
            sniff(text.as_bytes()).unwrap(),
            Detected::Sniffed(Encoding::Utf8)
        );
        let sjis = encoding_rs::SHIFT_JIS.encode(&text).0;
        assert_eq!(sniff(&sjis).unwrap(), Detected::Sniffed(Encoding::ShiftJis));
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(&sjis);
        assert!(matches!(sniff(&bom).unwrap(), Detected::Bom(_)));
        // ASCII for longer than one read, then Shift_JIS.
        let mut long = "a,b,c\n".repeat(20_000).into_bytes();
        long.extend_from_slice(&sjis);
        assert_eq!(sniff(&long).unwrap(), Detected::Sniffed(Encoding::ShiftJis));
        assert!(matches!(
            sniff(b"a,b\n\x81\x20\n"),
            Err(DetectError::Neither { offset: 4 })
        ));
        assert_eq!(sniff(b"a,b\n").unwrap(), Detected::Sniffed(Encoding::Utf8));
    }
}
