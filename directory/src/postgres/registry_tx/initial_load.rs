//! The initial load on PostgreSQL: a nation's files enrolled into an empty registry in
//! one transaction, each table's new rows written by one binary COPY in key order.
//!
//! The rows are gathered and judged as on redb (`store::initial_load`): a row whose My
//! Number, card and first candidate ID occur in no other row is fresh and can only
//! become a new person. Then two passes over the spilled rows:
//! 1. in application order, each fresh row takes the next pid and every other row the
//!    ordinary rules (`apply_row`), a chunk at a time: the chunk's keys read ahead, its
//!    rows applied, what they changed written (so memory holds one chunk);
//! 2. the fresh rows' records, encoded while the files were read, stream into
//!    `persons` by one COPY in pid order, while their My Number, medical ID and card
//!    entries go to external sorts; each of those tables then gets its entries by one
//!    COPY in key order, so every index grows at its right edge instead of at random
//!    pages.
//!
//! The registry must be empty: then nothing a row's rules read can be a fresh row's,
//! so the fresh rows' entries may wait for their COPYs. The rules' writes reach the
//! tables first; at about one row in a hundred they cost the COPYs little.

use super::{db, PgTx, PID};
use crate::issuance::Issuer;
use crate::postgres::sql;
use crate::registry::merge::RowOutcome;
use crate::registry::{EnrollmentRow, IdEntry, IdStatus, Timestamp};
use crate::store::initial_load::{taken_for_new, Bytes, IndexSorts, Next, Repeated, Spilled};
use crate::store::registry_tx::RegistryTx;
use crate::store::{apply_row, encode, Gathered, LoadProgress, Result, StoreError};
use futures::pin_mut;
use iryo_proto::MedicalId;
use std::io;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

/// Rows that take the ordinary rules, read ahead at a time.
const AHEAD: usize = 10_000;

/// Whether the registry's four tables hold no row.
pub(crate) const REGISTRY_EMPTY: &str = "SELECT NOT (EXISTS (SELECT 1 FROM persons)
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
        let pids = self.apply_in_order(g, &repeated, issuer, progress, outcome)?;
        let fresh = self.copy_persons(g, &repeated, pids, progress)?;
        self.copy_indexes(fresh, progress)?;
        progress.stage("committing", 0);
        Ok(())
    }

    /// Every row in application order: a fresh row takes the next pid, any other row
    /// the ordinary rules, a chunk at a time — the chunk's keys read ahead, its rows
    /// applied, what they changed written and forgotten — so that memory holds one
    /// chunk whatever the size of the load. Returns where fresh rows' pids do not
    /// follow on from the one before.
    fn apply_in_order(
        &mut self,
        g: &Gathered,
        repeated: &Repeated,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<FreshPids> {
        let mut pids = FreshPids::default();
        let (mut spill, mut ahead) = (g.spilled()?, g.spilled()?);
        // Rows of lower rank than this that take the rules are read ahead.
        let mut read_until = 0;
        progress.stage("applying rows", g.len());
        let mut at: Timestamp = crate::registry::now();
        let io = |e| StoreError::File(g.scratch().to_path_buf(), e);
        while let Some(next) = spill.next(repeated, false).map_err(io)? {
            let (rank, file, result) = match next {
                Next::Skipped { rank, file } => {
                    pids.take(rank, self.next(PID)?);
                    (rank, file, RowOutcome::New)
                }
                Next::Ruled(r) => {
                    if r.rank >= read_until {
                        self.write_kept()?;
                        read_until = self.read_ahead(g, &mut ahead, repeated)?;
                    }
                    let source = g.source(r.file, r.row.line);
                    let result = apply_row(self, &source, &r.row, Some(r.candidate), issuer, at)?;
                    (r.rank, r.file, result)
                }
                Next::Fresh(r) => (r.rank, r.file, RowOutcome::New),
            };
            if rank.is_multiple_of(4096) {
                at = crate::registry::now();
                progress.at(rank);
            }
            outcome(file, &result);
        }
        self.write_kept()?;
        Ok(pids)
    }

    /// Reads ahead the keys of the next `AHEAD` rows that take the rules, from
    /// `ahead`; returns the rank after the last of them.
    fn read_ahead(
        &mut self,
        g: &Gathered,
        ahead: &mut Spilled,
        repeated: &Repeated,
    ) -> Result<u64> {
        let (mut rows, mut candidates): (Vec<EnrollmentRow>, Vec<MedicalId>) = (vec![], vec![]);
        let io = |e| StoreError::File(g.scratch().to_path_buf(), e);
        let mut until = u64::MAX;
        while rows.len() < AHEAD {
            match ahead.next(repeated, false).map_err(io)? {
                Some(Next::Ruled(r)) => {
                    until = r.rank + 1;
                    rows.push(r.row);
                    candidates.push(r.candidate);
                }
                Some(_) => {}
                None => {
                    until = u64::MAX;
                    break;
                }
            }
        }
        if !rows.is_empty() {
            self.prefetch_rows(&rows, Some(&candidates))?;
        }
        Ok(until)
    }

    /// Streams the fresh rows' records into `persons` by one COPY, in pid order, as
    /// they are read back, and sorts their index entries for the next COPYs.
    fn copy_persons(
        &mut self,
        g: &Gathered,
        repeated: &Repeated,
        mut pids: FreshPids,
        progress: &dyn LoadProgress,
    ) -> Result<IndexSorts> {
        let mut entries = IndexSorts::new(g);
        let mut spill = g.spilled()?;
        let io = |e| StoreError::File(g.scratch().to_path_buf(), e);
        progress.stage("writing the persons", pids.count);
        let tx = self.tx;
        self.rt.block_on(async {
            let err = refused("person");
            let sink = tx.copy_in(PERSONS_COPY).await.map_err(db)?;
            let w =
                BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::INT8, Type::BYTEA]);
            pin_mut!(w);
            let mut n = 0u64;
            while let Some(next) = spill.next(repeated, true).map_err(io)? {
                let Next::Fresh(row) = next else {
                    continue;
                };
                let pid = pids.of(row.rank)?;
                let record = row.record(pid);
                // PostgreSQL's card rows name the holder beside the standing.
                let mut card = pid.to_le_bytes().to_vec();
                card.extend_from_slice(&row.standing(pid));
                entries.push(pid, &row, card).map_err(io)?;
                let (pid, number, id) =
                    (sql(pid)?, sql(row.my_number)?, sql(row.candidate.as_u64())?);
                let cells: [&(dyn ToSql + Sync); 4] = [&pid, &number, &id, &record];
                w.as_mut().write(&cells).await.map_err(&err)?;
                tick(progress, n);
                n += 1;
            }
            w.finish().await.map_err(&err)?;
            if n != pids.count {
                return Err(StoreError::Inconsistent(format!(
                    "{} fresh rows read back for {} pids",
                    n, pids.count
                )));
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(entries)
    }

    /// Writes the fresh rows' index entries, each table by one COPY in key order.
    fn copy_indexes(&mut self, entries: IndexSorts, progress: &dyn LoadProgress) -> Result<()> {
        let IndexSorts {
            scratch,
            my_numbers,
            medical_ids,
            cards,
        } = entries;
        let io = |e: io::Error| StoreError::File(scratch.clone(), e);
        let tx = self.tx;
        self.rt.block_on(async {
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
            taken_for_new(what)
        } else {
            db(e)
        }
    }
}

/// Fresh rows' pids, which rise with their rank: kept only where one does not follow
/// on from the one before (a row taking the rules took a pid between them).
#[derive(Default)]
struct FreshPids {
    /// (rank, pid) of each fresh row whose pid is not the previous fresh row's plus one.
    breaks: std::collections::VecDeque<(u64, u64)>,
    /// The last pid taken.
    last: Option<u64>,
    /// The last pid handed out by `of`.
    cursor: Option<u64>,
    count: u64,
}

impl FreshPids {
    /// The fresh row of rank `rank` took `pid`; ranks come in order.
    fn take(&mut self, rank: u64, pid: u64) {
        if self.last.map(|l| l + 1) != Some(pid) {
            self.breaks.push_back((rank, pid));
        }
        self.last = Some(pid);
        self.count += 1;
    }

    /// The pid of the fresh row of rank `rank`, asked in the same order once every
    /// `take` is done.
    fn of(&mut self, rank: u64) -> Result<u64> {
        let pid = match (self.breaks.front(), self.cursor) {
            (Some(&(r, pid)), _) if r == rank => {
                self.breaks.pop_front();
                pid
            }
            (_, Some(previous)) => previous + 1,
            _ => {
                return Err(StoreError::Inconsistent(format!(
                    "no pid for the fresh row of rank {rank}"
                )))
            }
        };
        self.cursor = Some(pid);
        Ok(pid)
    }
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
