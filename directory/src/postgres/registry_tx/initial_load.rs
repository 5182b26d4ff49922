//! The initial load on PostgreSQL: a nation's files enrolled into an empty registry in
//! one transaction, each table's new rows written by one binary COPY in key order.
//!
//! The rows are gathered and judged as on redb (`store::initial_load`): a row whose My
//! Number, card and first candidate ID occur in no other row is fresh and can only
//! become a new person. Fresh rows take their pids in application order and their rows
//! go to a file (the records, in pid order) and to three external sorts (the My
//! Number, medical ID and card entries); every other row takes the ordinary rules
//! (`apply_row`), its keys read ahead in chunks, its writes kept until the commit. At
//! the end each table gets its fresh rows by one COPY in key order, so each index
//! grows at its right edge instead of at random pages, and the kept writes follow.
//!
//! The registry must be empty: then nothing a row's rules read can be a fresh row's,
//! and the tables stay empty until the COPYs, so the rules' reads cost nothing.

use super::{db, PgTx, PID};
use crate::issuance::Issuer;
use crate::postgres::sql;
use crate::registry::merge::RowOutcome;
use crate::registry::{EnrollmentRow, IdEntry, IdStatus, Timestamp};
use crate::store::initial_load::{Bytes, FreshRow, Next, Repeated, Sorter};
use crate::store::registry_tx::RegistryTx;
use crate::store::{apply_row, encode, Gathered, LoadProgress, Result, StoreError};
use futures::pin_mut;
use iryo_proto::MedicalId;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// Rows that take the ordinary rules, read ahead at a time.
const AHEAD: usize = 10_000;

const REGISTRY_EMPTY: &str = "SELECT NOT (EXISTS (SELECT 1 FROM persons)
     OR EXISTS (SELECT 1 FROM my_numbers) OR EXISTS (SELECT 1 FROM medical_ids)
     OR EXISTS (SELECT 1 FROM cards))";

impl PgTx<'_> {
    /// Whether the registry's four tables hold no row.
    pub(crate) fn registry_empty(&self) -> Result<bool> {
        let row = self
            .rt
            .block_on(self.tx.query_one(REGISTRY_EMPTY, &[]))
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// Applies every row `g` gathered, in this transaction; the caller commits.
    pub(crate) fn initial_load(
        &mut self,
        g: &mut Gathered,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<()> {
        self.begin_now()?;
        // One transaction for the whole load: longer than any request may take.
        self.rt
            .block_on(self.tx.batch_execute("SET LOCAL statement_timeout = 0"))
            .map_err(db)?;
        // The person counter's row lock first: another process enrolling waits.
        self.load_counter(PID)?;
        if !self.registry_empty()? {
            return Err(StoreError::RegistryNotEmpty);
        }
        let repeated = g.mark_repeated(|_| Ok(Ok(())), progress)?;
        self.read_ahead_ruled(g, &repeated)?;
        let mut fresh = FreshRows::new(g)?;
        let mut spill = g.spilled()?;
        progress.stage("applying rows", g.len());
        let mut at: Timestamp = crate::registry::now();
        let io = |e| StoreError::File(g.scratch().to_path_buf(), e);
        while let Some(next) = spill.next(&repeated, true).map_err(io)? {
            let (rank, file, result) = match next {
                Next::Fresh(r) => {
                    fresh.push(self.next(PID)?, &r)?;
                    (r.rank, r.file, RowOutcome::New)
                }
                Next::Ruled(r) => {
                    let source = g.source(r.file, r.row.line);
                    let result = apply_row(self, &source, &r.row, Some(r.candidate), issuer, at)?;
                    (r.rank, r.file, result)
                }
                Next::Skipped => continue,
            };
            if rank.is_multiple_of(4096) {
                at = crate::registry::now();
                progress.at(rank);
            }
            outcome(file, &result);
        }
        self.copy_fresh(fresh, progress)?;
        progress.stage("committing", 0);
        Ok(())
    }

    /// Reads ahead the keys of every row that takes the ordinary rules, in chunks.
    fn read_ahead_ruled(&mut self, g: &Gathered, repeated: &Repeated) -> Result<()> {
        let mut spill = g.spilled()?;
        let (mut rows, mut candidates): (Vec<EnrollmentRow>, Vec<MedicalId>) = (vec![], vec![]);
        let io = |e| StoreError::File(g.scratch().to_path_buf(), e);
        while let Some(next) = spill.next(repeated, false).map_err(io)? {
            if let Next::Ruled(r) = next {
                rows.push(r.row);
                candidates.push(r.candidate);
            }
            if rows.len() == AHEAD {
                self.prefetch_rows(&rows, Some(&candidates))?;
                rows.clear();
                candidates.clear();
            }
        }
        if !rows.is_empty() {
            self.prefetch_rows(&rows, Some(&candidates))?;
        }
        Ok(())
    }

    /// Writes the fresh rows: the records in pid order, then each index's entries in
    /// key order, one COPY per table.
    fn copy_fresh(&mut self, fresh: FreshRows, progress: &dyn LoadProgress) -> Result<()> {
        let FreshRows {
            scratch,
            persons,
            count,
            my_numbers,
            medical_ids,
            cards,
        } = fresh;
        let io = |e: io::Error| StoreError::File(scratch.clone(), e);
        let path = scratch.join("persons");
        persons.into_inner().map_err(|e| io(e.into_error()))?;
        let mut records = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io)?);
        let tx = self.tx;
        self.rt.block_on(async {
            progress.stage("writing the persons", count);
            let err = refused("person");
            let sink = tx.copy_in(PERSONS_COPY).await.map_err(db)?;
            let w =
                BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8, Type::BYTEA]);
            pin_mut!(w);
            for n in 0..count {
                let ([pid, my_number, id], record) = read_person(&mut records).map_err(io)?;
                let row: [&(dyn ToSql + Sync); 4] = [&pid, &my_number, &id, &record];
                w.as_mut().write(&row).await.map_err(&err)?;
                tick(progress, n);
            }
            w.finish().await.map_err(&err)?;

            progress.stage("building the My Number index", my_numbers.len());
            let sorted = my_numbers.sorted().map_err(io)?;
            let err = refused("My Number");
            let sink = tx.copy_in(MY_NUMBERS_COPY).await.map_err(db)?;
            let w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8]);
            pin_mut!(w);
            for (n, item) in sorted.enumerate() {
                let (number, pid) = item.map_err(io)?;
                let (number, pid) = (sql(number)?, sql(pid)?);
                let row: [&(dyn ToSql + Sync); 2] = [&number, &pid];
                w.as_mut().write(&row).await.map_err(&err)?;
                tick(progress, n as u64);
            }
            w.finish().await.map_err(&err)?;

            progress.stage("building the medical ID index", medical_ids.len());
            let sorted = medical_ids.sorted().map_err(io)?;
            let err = refused("medical ID");
            let sink = tx.copy_in(MEDICAL_IDS_COPY).await.map_err(db)?;
            let w = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::BYTEA]);
            pin_mut!(w);
            for (n, item) in sorted.enumerate() {
                let (id, pid) = item.map_err(io)?;
                let entry = encode(&IdEntry {
                    pid,
                    status: IdStatus::Current,
                })?;
                let (id, pid) = (sql(id)?, sql(pid)?);
                let row: [&(dyn ToSql + Sync); 3] = [&id, &pid, &entry];
                w.as_mut().write(&row).await.map_err(&err)?;
                tick(progress, n as u64);
            }
            w.finish().await.map_err(&err)?;

            progress.stage("building the card index", cards.len());
            let sorted = cards.sorted().map_err(io)?;
            let err = refused("card");
            let sink = tx.copy_in(CARDS_COPY).await.map_err(db)?;
            let w = BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::INT8, Type::BYTEA]);
            pin_mut!(w);
            for (n, item) in sorted.enumerate() {
                let Bytes { key, value } = item.map_err(io)?;
                let (pid, standing) = split_pid(&value).map_err(io)?;
                let row: [&(dyn ToSql + Sync); 3] = [&key, &pid, &standing];
                w.as_mut().write(&row).await.map_err(&err)?;
                tick(progress, n as u64);
            }
            w.finish().await.map_err(&err)?;
            Ok(())
        })
    }
}

const PERSONS_COPY: &str = "COPY persons (pid, my_number, medical_id, record) FROM STDIN BINARY";
const MY_NUMBERS_COPY: &str = "COPY my_numbers (my_number, pid) FROM STDIN BINARY";
const MEDICAL_IDS_COPY: &str = "COPY medical_ids (medical_id, pid, entry) FROM STDIN BINARY";
const CARDS_COPY: &str = "COPY cards (card_key, pid, standing) FROM STDIN BINARY";

/// A COPY's error; a key the table holds already means a row taken for fresh was
/// not, and the load stops with its transaction.
fn refused(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            StoreError::Inconsistent(format!(
                "the initial load found a {what} in the registry that it took for new; \
                 nothing was enrolled: enroll the files with --initial-load never"
            ))
        } else {
            db(e)
        }
    }
}

/// Fresh rows' writes, kept on disk until the COPYs: the records in pid order, the
/// index entries in external sorts.
struct FreshRows {
    scratch: PathBuf,
    persons: BufWriter<File>,
    count: u64,
    my_numbers: Sorter<(u64, u64)>,
    medical_ids: Sorter<(u64, u64)>,
    /// Card key → the holder's pid (8 bytes) and the card's standing.
    cards: Sorter<Bytes>,
}

impl FreshRows {
    fn new(g: &Gathered) -> Result<Self> {
        let scratch = g.scratch().to_path_buf();
        let path = scratch.join("persons");
        let file = crate::files::create_private(&path).map_err(|e| StoreError::File(path, e))?;
        let memory = g.sort_memory();
        Ok(Self {
            persons: BufWriter::with_capacity(1 << 20, file),
            count: 0,
            my_numbers: Sorter::new(&scratch, "my_numbers", memory),
            medical_ids: Sorter::new(&scratch, "medical_ids", memory),
            cards: Sorter::new(&scratch, "cards", memory),
            scratch,
        })
    }

    /// A fresh row's writes under `pid`: its record, its My Number, its issued ID and
    /// its card's standing, as `apply_row` would write them for a new person.
    fn push(&mut self, pid: u64, row: &FreshRow) -> Result<()> {
        let record = row.record(pid);
        let id = row.candidate.as_u64();
        let mut out = || -> io::Result<()> {
            let len = u32::try_from(record.len()).map_err(io::Error::other)?;
            for v in [pid, row.my_number, id] {
                self.persons.write_all(&v.to_le_bytes())?;
            }
            self.persons.write_all(&len.to_le_bytes())?;
            self.persons.write_all(&record)?;
            self.my_numbers.push((row.my_number, pid))?;
            self.medical_ids.push((id, pid))?;
            let mut value = pid.to_le_bytes().to_vec();
            value.extend_from_slice(&row.standing(pid));
            self.cards.push(Bytes {
                key: row.card_key.clone(),
                value,
            })
        };
        out().map_err(|e| StoreError::File(self.scratch.clone(), e))?;
        self.count += 1;
        Ok(())
    }
}

/// The next record of the persons file: pid, My Number, medical ID, and the record.
fn read_person(r: &mut impl Read) -> io::Result<([i64; 3], Vec<u8>)> {
    let mut head = [0u8; 28];
    r.read_exact(&mut head)?;
    let word = |i: usize| -> io::Result<i64> {
        let bytes: [u8; 8] = head[i * 8..i * 8 + 8]
            .try_into()
            .map_err(io::Error::other)?;
        i64::try_from(u64::from_le_bytes(bytes)).map_err(io::Error::other)
    };
    let numbers = [word(0)?, word(1)?, word(2)?];
    let len = u32::from_le_bytes([head[24], head[25], head[26], head[27]]) as usize;
    let mut record = vec![0u8; len];
    r.read_exact(&mut record)?;
    Ok((numbers, record))
}

/// A card entry's value: the holder's pid, then the standing.
fn split_pid(value: &[u8]) -> io::Result<(i64, &[u8])> {
    let (pid, standing) = value
        .split_at_checked(8)
        .ok_or_else(|| io::Error::other("a card entry cut short"))?;
    let pid: [u8; 8] = pid.try_into().map_err(io::Error::other)?;
    let pid = i64::try_from(u64::from_le_bytes(pid)).map_err(io::Error::other)?;
    Ok((pid, standing))
}

fn tick(progress: &dyn LoadProgress, n: u64) {
    if n.is_multiple_of(1 << 16) {
        progress.at(n);
    }
}
