//! An external sort: records gathered in memory up to a limit, each full buffer sorted
//! and written to a run file, the runs merged in order when read back. What the
//! initial load holds in memory is thus bounded by the limit, whatever the file's size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A record a run file can hold.
pub(crate) trait Record: Ord + Sized {
    /// Appends the record's encoding to `out`.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads the next record, or `None` at the end of the run.
    fn take(r: &mut impl BufRead) -> io::Result<Option<Self>>;
    /// About what the record costs in memory, for the limit.
    fn size(&self) -> usize;
}

/// True at the end of a run; an error if a record was cut short.
fn at_end(r: &mut impl BufRead) -> io::Result<bool> {
    Ok(r.fill_buf()?.is_empty())
}

impl Record for u128 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn take(r: &mut impl BufRead) -> io::Result<Option<Self>> {
        if at_end(r)? {
            return Ok(None);
        }
        let mut b = [0u8; 16];
        r.read_exact(&mut b)?;
        Ok(Some(u128::from_le_bytes(b)))
    }
    fn size(&self) -> usize {
        16
    }
}

impl Record for (u64, u64) {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
        out.extend_from_slice(&self.1.to_le_bytes());
    }
    fn take(r: &mut impl BufRead) -> io::Result<Option<Self>> {
        if at_end(r)? {
            return Ok(None);
        }
        let mut b = [0u8; 16];
        r.read_exact(&mut b)?;
        let (k, v) = b.split_at(8);
        let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        Ok(Some((word(k), word(v))))
    }
    fn size(&self) -> usize {
        16
    }
}

/// A key and its value as bytes, ordered by key (then value), as redb orders a table
/// keyed by bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bytes {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Record for Bytes {
    fn put(&self, out: &mut Vec<u8>) {
        for part in [&self.key, &self.value] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    fn take(r: &mut impl BufRead) -> io::Result<Option<Self>> {
        if at_end(r)? {
            return Ok(None);
        }
        let mut part = || -> io::Result<Vec<u8>> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)?;
            let mut v = vec![0u8; u32::from_le_bytes(len) as usize];
            r.read_exact(&mut v)?;
            Ok(v)
        };
        let key = part()?;
        let value = part()?;
        Ok(Some(Bytes { key, value }))
    }
    fn size(&self) -> usize {
        // The two vectors' headers and allocations beside the bytes.
        self.key.len() + self.value.len() + 64
    }
}

/// Records gathered for sorting, spilled to run files in `dir` (mode 0600: they may
/// hold personal data) whenever `limit` bytes are held.
pub(crate) struct Sorter<T> {
    dir: PathBuf,
    name: &'static str,
    limit: usize,
    held: Vec<T>,
    bytes: usize,
    runs: Vec<PathBuf>,
    count: u64,
}

impl<T: Record> Sorter<T> {
    pub(crate) fn new(dir: &Path, name: &'static str, limit: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name,
            limit: limit.max(1),
            held: Vec::new(),
            bytes: 0,
            runs: Vec::new(),
            count: 0,
        }
    }

    pub(crate) fn push(&mut self, t: T) -> io::Result<()> {
        self.bytes += t.size();
        self.count += 1;
        self.held.push(t);
        if self.bytes >= self.limit {
            self.spill()?;
        }
        Ok(())
    }

    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// How many records were pushed.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    fn spill(&mut self) -> io::Result<()> {
        self.held.sort_unstable();
        let path = self
            .dir
            .join(format!("{}.run{}", self.name, self.runs.len()));
        let mut w = BufWriter::with_capacity(1 << 20, crate::files::create_private(&path)?);
        let mut scratch = Vec::with_capacity(64);
        for t in self.held.drain(..) {
            scratch.clear();
            t.put(&mut scratch);
            w.write_all(&scratch)?;
        }
        w.flush()?;
        self.runs.push(path);
        self.bytes = 0;
        Ok(())
    }

    /// Every record pushed, in order.
    pub(crate) fn sorted(mut self) -> io::Result<Sorted<T>> {
        if self.runs.is_empty() {
            let mut held = std::mem::take(&mut self.held);
            held.sort_unstable();
            return Ok(Sorted::Held(held.into_iter()));
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut readers = Vec::with_capacity(self.runs.len());
        let mut heap = BinaryHeap::with_capacity(self.runs.len());
        for (i, path) in self.runs.iter().enumerate() {
            let mut r = BufReader::with_capacity(256 << 10, File::open(path)?);
            if let Some(t) = T::take(&mut r)? {
                heap.push(Reverse((t, i)));
            }
            readers.push(r);
        }
        Ok(Sorted::Merged {
            readers,
            heap,
            runs: std::mem::take(&mut self.runs),
        })
    }
}

impl<T> Drop for Sorter<T> {
    fn drop(&mut self) {
        for path in &self.runs {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The records of a `Sorter` in order: from memory, or merged from its runs.
pub(crate) enum Sorted<T> {
    Held(std::vec::IntoIter<T>),
    Merged {
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<(T, usize)>>,
        runs: Vec<PathBuf>,
    },
}

impl<T: Record> Iterator for Sorted<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Held(it) => it.next().map(Ok),
            Sorted::Merged { readers, heap, .. } => {
                let Reverse((t, i)) = heap.pop()?;
                match T::take(&mut readers[i]) {
                    Ok(Some(next)) => heap.push(Reverse((next, i))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                Some(Ok(t))
            }
        }
    }
}

impl<T> Drop for Sorted<T> {
    fn drop(&mut self) {
        if let Sorted::Merged { runs, .. } = self {
            for path in runs.iter() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted<T: Record + Clone>(items: &[T], limit: usize) -> Vec<T> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(dir.path(), "t", limit);
        for t in items {
            s.push(t.clone()).unwrap();
        }
        let out: Vec<T> = s.sorted().unwrap().map(Result::unwrap).collect();
        // Runs are removed once read.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        out
    }

    proptest! {
        #[test]
        fn runs_merge_into_one_order(items in prop::collection::vec(any::<(u64, u64)>(), 0..400), limit in 16usize..2_000) {
            let mut expected = items.clone();
            expected.sort_unstable();
            prop_assert_eq!(sorted(&items, limit), expected);
        }

        #[test]
        fn byte_records_order_as_redb_orders_keys(items in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..6)), 0..200), limit in 64usize..4_000) {
            let items: Vec<Bytes> = items.into_iter().map(|(key, value)| Bytes { key, value }).collect();
            let mut expected = items.clone();
            expected.sort_unstable();
            prop_assert_eq!(sorted(&items, limit), expected);
        }

        #[test]
        fn wide_records_survive_their_runs(items in prop::collection::vec(any::<u128>(), 0..300), limit in 16usize..1_000) {
            let mut expected = items.clone();
            expected.sort_unstable();
            prop_assert_eq!(sorted(&items, limit), expected);
        }
    }

    #[test]
    fn a_run_cut_short_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(dir.path(), "t", 32);
        for i in 0..4u64 {
            s.push((2 * i, 2 * i + 1)).unwrap();
        }
        let run = dir.path().join("t.run1");
        let bytes = std::fs::read(&run).unwrap();
        std::fs::write(&run, &bytes[..26]).unwrap();
        let out: Vec<io::Result<(u64, u64)>> = s.sorted().unwrap().collect();
        assert!(out.iter().any(Result::is_err), "{out:?}");
    }
}
