//! The storage under the per-person index file (`folding`): the file, written out to
//! the disk at a bounded pace.
//!
//! Why: the folder commits in bursts, a merge writing tens of megabytes, and redb hands
//! them all to the file system just before it syncs. On this virtual disk a sync waits
//! for everything written before it, so while such a burst was going out every intake
//! file's sync waited behind it, and the checks queued behind those syncs: without the
//! folder, a steady 20,000 checks/s answered with p99.9 4.4–4.7 ms instead of
//! 10–15 ms. Here the folder's writes go out in small pieces, each awaited before the
//! next is sent, and no faster than `RATE`, so another file's sync finds at most one
//! piece ahead of it: p99.9 4.6–7.3 ms with the folder running (docs/performance.md,
//! paced writeback). The folder's thread waits, and it has nothing else to do; at this
//! pace it still keeps up with 20,000 checks/s.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes handed to the disk at once.
const PIECE: u64 = 128 << 10;
/// Bytes a second the folder's file may take of the disk.
const RATE: f64 = 32.0 * 1024.0 * 1024.0;

#[derive(Debug)]
pub(super) struct Paced {
    data: FileBackend,
    /// The same open file as `data`, for starting and awaiting its writeback.
    file: File,
    pace: Mutex<Pace>,
}

#[derive(Debug)]
struct Pace {
    /// Bytes written to the page cache and not yet sent to the disk.
    unsent: u64,
    /// When the next piece may go.
    next: Instant,
    /// Pieces sent since the last sync.
    pieces: u64,
}

impl Paced {
    pub(super) fn new(file: File) -> io::Result<Self> {
        let data =
            FileBackend::new(file.try_clone()?).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            data,
            file,
            pace: Mutex::new(Pace {
                unsent: 0,
                next: Instant::now(),
                pieces: 0,
            }),
        })
    }

    /// Writes the file's dirty pages to the disk and waits for them, after waiting for
    /// the pace to allow it.
    fn send(&self, pace: &mut Pace) {
        let now = Instant::now();
        if pace.next > now {
            std::thread::sleep(pace.next - now);
        }
        // Elsewhere than Linux the pieces are only paced; the commit's sync writes them.
        if let Err(e) = crate::sys::write_back(&self.file) {
            // Only the pace is lost: the commit's own sync still makes it durable.
            tracing::debug!(error = %e, "sync_file_range on the index file");
        }
        pace.next = pace.next.max(now) + Duration::from_secs_f64(pace.unsent as f64 / RATE);
        pace.unsent = 0;
        pace.pieces += 1;
    }

    fn pace(&self) -> io::Result<std::sync::MutexGuard<'_, Pace>> {
        self.pace
            .lock()
            .map_err(|_| io::Error::other("a writer of the index file panicked"))
    }
}

impl StorageBackend for Paced {
    fn len(&self) -> Result<u64, io::Error> {
        self.data.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.data.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.data.set_len(len)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.data.write(offset, data)?;
        let mut pace = self.pace()?;
        pace.unsent += data.len() as u64;
        if pace.unsent >= PIECE {
            self.send(&mut pace);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        {
            let mut pace = self.pace()?;
            if pace.unsent > 0 {
                self.send(&mut pace);
            }
            tracing::trace!(pieces = pace.pieces, "index commit written out");
            pace.pieces = 0;
        }
        self.data.sync_data()
    }

    fn close(&self) -> Result<(), io::Error> {
        self.data.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.data.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.data.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.data.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.data.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.data.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.data.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn file(path: &std::path::Path) -> File {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(path).unwrap()
    }

    #[test]
    fn writes_go_out_in_pieces_before_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = Paced::new(file(&dir.path().join("f"))).unwrap();
        let page = vec![7u8; 4096];
        for i in 0..100u64 {
            p.write(i * 4096, &page).unwrap();
        }
        // 400 KiB: three whole pieces sent, the rest left for the sync.
        let pace = p.pace().unwrap();
        assert_eq!((pace.pieces, pace.unsent), (3, 400 * 1024 - 3 * PIECE));
        drop(pace);
        p.sync_data().unwrap();
        let pace = p.pace().unwrap();
        assert_eq!((pace.pieces, pace.unsent), (0, 0));
        let mut back = vec![0u8; 4096];
        p.read(99 * 4096, &mut back).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn a_database_on_it_keeps_its_commits_and_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let open = || Database::builder().create_with_backend(Paced::new(file(&path)).unwrap());
        let value = vec![1u8; 3000];
        {
            let db = open().unwrap();
            assert!(matches!(
                open(),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
            ));
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(T).unwrap();
                for k in 0..1000u64 {
                    t.insert(k, value.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let db = open().unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 1000);
        assert_eq!(t.get(999).unwrap().unwrap().value(), value.as_slice());
    }
}
