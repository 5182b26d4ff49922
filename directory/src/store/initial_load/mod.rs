//! The initial load: enrolling a nation's files into an empty (or nearly empty)
//! registry with its indexes built in key order rather than by random inserts.
//!
//! A row whose My Number, card and first medical ID candidate appear in no other row
//! of the load and nowhere in the registry can only become a new person, and nothing
//! another row does can depend on its index entries. Such rows ("fresh") are written
//! as records at once (pids rise, so the persons table grows at its end) and their
//! My Number, medical ID and card entries go to external sorts; every other row takes
//! the ordinary rules (`apply_row`) in the same order as the ordinary path, so pids,
//! outcomes and conflicts are the same. At the end the three sorted streams are
//! inserted in key order, each B-tree growing at one edge instead of at random pages.
//!
//! It all happens in one write transaction: a load stopped at any point, killed or
//! failed, leaves the registry as it was, and the rerun starts again from the start.
//! redb writes the transaction's pages out as its cache fills, so memory stays bounded.
//!
//! The gathering and judging (`Gathered`, the spill file in `spill`, the sorts in
//! `sort`) serve PostgreSQL's initial load too (`postgres/registry_tx/initial_load.rs`),
//! which writes the same rows by COPY; the `Load` trait is what `enroll` sees of either.

mod sort;
mod spill;

use super::enroll::{application_order, apply_row};
use super::tables::{Tables, PID};
use super::{encode, Result, Store, StoreError};
use crate::issuance::Issuer;
use crate::registry::merge::RowOutcome;
use crate::registry::{EnrollmentRow, IdEntry, IdStatus, Timestamp};
use iryo_proto::MedicalId;
use redb::{ReadableTable, ReadableTableMetadata};
pub(crate) use sort::{Bytes, Sorter};
pub(crate) use spill::{FreshRow, Next, Spilled};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// What each external sort may hold in memory before it writes a run.
const SORT_MEMORY: usize = 48 << 20;

/// The three keys a row is judged fresh by, as the high bits of a key record.
const MY_NUMBER: u128 = 0;
const CARD: u128 = 1;
const CANDIDATE: u128 = 2;
/// The rank that marks a key the registry holds already.
const IN_REGISTRY: u64 = (1 << 62) - 1;

/// One key of one row: which key (2 bits), its value (64 bits; a card by its hash),
/// the row's rank in application order (62 bits). Sorting them puts every key's
/// occurrences side by side.
fn key_record(which: u128, key: u64, rank: u64) -> u128 {
    (which << 126) | (u128::from(key) << 62) | u128::from(rank & IN_REGISTRY)
}

/// A card's key folded to 64 bits. Two cards that fold alike are only taken for one
/// card repeated, which sends both rows the ordinary way: slower, never wrong.
fn card_hash(key: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

/// What the load reports as it goes: a stage begun with its total, then progress.
pub trait LoadProgress {
    fn stage(&self, what: &'static str, total: u64);
    fn at(&self, done: u64);
}

/// Rows gathered for an initial load, on either backend: in application order in a
/// spill file, their keys in an external sort. Everything lies in a private scratch
/// directory that is removed when the rows are dropped.
pub struct Gathered {
    scratch: PathBuf,
    spill: BufWriter<File>,
    /// Taken when the rows are read back.
    keys: Option<Sorter<u128>>,
    rows: u64,
    names: Vec<String>,
    scratch_bytes: Vec<u8>,
    /// What each external sort may hold in memory.
    sort_memory: usize,
}

/// An initial load into the embedded store under way.
pub struct InitialLoad<'s> {
    store: &'s Store,
    gathered: Gathered,
}

impl Store {
    /// Persons in the registry: what decides whether a load is an initial one.
    pub fn person_count(&self) -> Result<u64> {
        let tx = redb::ReadableDatabase::begin_read(&self.db)?;
        Ok(tx.open_table(super::tables::PERSONS)?.len()?)
    }

    /// Begins an initial load whose temporary files go to `scratch`, a directory
    /// made for it (mode 0700: it holds rows with personal data) and removed after.
    pub fn initial_load(&self, scratch: &Path) -> Result<InitialLoad<'_>> {
        Ok(InitialLoad {
            store: self,
            gathered: Gathered::new(scratch)?,
        })
    }
}

impl Gathered {
    /// Rows to be gathered in `scratch`, a directory made for them (mode 0700: they
    /// hold personal data) and removed after.
    pub fn new(scratch: &Path) -> Result<Self> {
        let file_error = |e| StoreError::File(scratch.to_path_buf(), e);
        if scratch.exists() {
            // Left by a load that was killed: nothing in it is needed.
            std::fs::remove_dir_all(scratch).map_err(file_error)?;
        }
        crate::files::create_private_dir(scratch).map_err(file_error)?;
        let spill_path = scratch.join("rows");
        let spill = crate::files::create_private(&spill_path)
            .map_err(|e| StoreError::File(spill_path.clone(), e))?;
        Ok(Gathered {
            scratch: scratch.to_path_buf(),
            spill: BufWriter::with_capacity(1 << 20, spill),
            keys: Some(Sorter::new(scratch, "keys", SORT_MEMORY)),
            rows: 0,
            names: Vec::new(),
            scratch_bytes: Vec::new(),
            sort_memory: SORT_MEMORY,
        })
    }

    /// Bounds what each sort holds in memory before it writes a run to disk.
    #[must_use]
    pub fn with_sort_memory(mut self, bytes: usize) -> Self {
        self.sort_memory = bytes;
        if let Some(keys) = self.keys.as_mut() {
            keys.set_limit(bytes);
        }
        self
    }

    fn io(&self, e: io::Error) -> StoreError {
        StoreError::File(self.scratch.clone(), e)
    }

    /// Starts the next file, named `name` in conflicts and history; its rows follow.
    pub fn file(&mut self, name: &str) {
        self.names.push(name.to_string());
    }

    /// Adds a batch of the current file, as the ordinary path would apply it, with
    /// each row's generation-0 candidate.
    pub fn add(&mut self, rows: &[EnrollmentRow], candidates: &[MedicalId]) -> Result<()> {
        if candidates.len() != rows.len() {
            return Err(StoreError::Inconsistent(
                "an initial load needs every row's first candidate".into(),
            ));
        }
        let file = u32::try_from(self.names.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let at = crate::registry::now();
        for i in application_order(rows) {
            let (row, candidate) = (&rows[i], candidates[i]);
            let rank = self.rows;
            self.rows += 1;
            let mut pushed = match self.keys.as_mut() {
                Some(keys) => [
                    key_record(MY_NUMBER, row.my_number.as_u64(), rank),
                    key_record(CARD, card_hash(&row.card.key()), rank),
                    key_record(CANDIDATE, candidate.as_u64(), rank),
                ]
                .into_iter()
                .try_for_each(|k| keys.push(k)),
                None => Err(io::Error::other("rows added to a finished load")),
            };
            if pushed.is_ok() {
                self.scratch_bytes.clear();
                pushed = spill::put(&mut self.scratch_bytes, file, candidate, row, at)
                    .and_then(|()| self.spill.write_all(&self.scratch_bytes));
            }
            pushed.map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// The scratch directory, for the backend's own sorts and files.
    pub(crate) fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The name a row of the `file`th file goes by in conflicts and history.
    pub(crate) fn source(&self, file: usize, line: u64) -> String {
        let name = self.names.get(file).map_or("", String::as_str);
        format!("{name}:{line}")
    }

    /// Rows added so far.
    pub(crate) fn len(&self) -> u64 {
        self.rows
    }

    /// Sorts the keys of every row added, with those `registry` adds (the keys the
    /// registry holds already), and marks the ranks of rows that share one: what makes
    /// the other rows fresh.
    pub(crate) fn mark_repeated(
        &mut self,
        registry: impl FnOnce(&mut Sorter<u128>) -> Result<io::Result<()>>,
        progress: &dyn LoadProgress,
    ) -> Result<Repeated> {
        self.spill.flush().map_err(|e| self.io(e))?;
        let mut keys = self
            .keys
            .take()
            .ok_or_else(|| StoreError::Inconsistent("a load finished twice".into()))?;
        registry(&mut keys)?.map_err(|e| self.io(e))?;
        progress.stage("finding repeated keys", keys.len());
        let bits = repeated_ranks(keys, self.rows, progress).map_err(|e| self.io(e))?;
        Ok(Repeated(bits))
    }

    /// The rows added, read back from the spill file in application order.
    pub(crate) fn spilled(&self) -> Result<Spilled> {
        let path = self.scratch.join("rows");
        let file = File::open(&path).map_err(|e| self.io(e))?;
        Ok(Spilled::new(file, self.rows))
    }
}

/// Which ranks share a key with another row or with the registry: one bit each.
pub(crate) struct Repeated(Vec<u64>);

impl Repeated {
    /// Whether the row of rank `rank` is fresh: none of its keys occurs elsewhere.
    pub(crate) fn fresh(&self, rank: u64) -> bool {
        self.0
            .get((rank / 64) as usize)
            .is_none_or(|w| w & (1 << (rank % 64)) == 0)
    }
}

/// An initial load on one backend: the rows gathered, then applied in one transaction.
pub trait Load {
    /// Where the reading side adds the files' rows.
    fn gathered(&mut self) -> &mut Gathered;

    /// Applies every row gathered and commits once. `outcome` hears each row's outcome
    /// with the index of its file, in application order.
    fn finish(
        self,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<()>;
}

impl Load for InitialLoad<'_> {
    fn gathered(&mut self) -> &mut Gathered {
        &mut self.gathered
    }

    fn finish(
        self,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<()> {
        InitialLoad::finish(self, issuer, progress, outcome)
    }
}

impl InitialLoad<'_> {
    /// Bounds what each sort holds in memory before it writes a run to disk.
    #[must_use]
    pub fn with_sort_memory(mut self, bytes: usize) -> Self {
        self.gathered = self.gathered.with_sort_memory(bytes);
        self
    }

    /// Applies every row added and commits once. `outcome` hears each row's outcome
    /// with the index of its file, in application order.
    pub fn finish(
        mut self,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<()> {
        let tx = self.store.db.begin_write()?;
        {
            let mut t = Tables::open(&tx)?;
            let repeated = self
                .gathered
                .mark_repeated(|keys| registry_keys(&mut t, keys), progress)?;
            let built = self.apply(&mut t, &repeated, issuer, progress, outcome)?;
            built.insert(&mut t, progress)?;
            t.flush_counters()?;
        }
        progress.stage("committing", 0);
        tx.commit()?;
        Ok(())
    }

    /// Every row in application order: fresh ones written as records with their index
    /// entries sorted for later, the rest through the ordinary rules.
    fn apply(
        &self,
        t: &mut Tables<'_>,
        repeated: &Repeated,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<IndexSorts> {
        let g = &self.gathered;
        let mut built = IndexSorts::new(g);
        let mut spill = g.spilled()?;
        progress.stage("applying rows", g.rows);
        let mut at: Timestamp = crate::registry::now();
        while let Some(next) = spill.next(repeated, true).map_err(|e| g.io(e))? {
            let (rank, file, result) = match next {
                Next::Fresh(r) => (r.rank, r.file, built.fresh(t, &r)?),
                Next::Ruled(r) => {
                    let source = g.source(r.file, r.row.line);
                    let result = apply_row(t, &source, &r.row, Some(r.candidate), issuer, at)?;
                    (r.rank, r.file, result)
                }
                Next::Skipped { .. } => continue,
            };
            if rank.is_multiple_of(4096) {
                at = crate::registry::now();
                progress.at(rank);
            }
            outcome(file, &result);
        }
        Ok(built)
    }
}

impl Drop for Gathered {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The keys the registry holds already, so that no row sharing one is fresh.
fn registry_keys(t: &mut Tables<'_>, keys: &mut Sorter<u128>) -> Result<io::Result<()>> {
    for item in t.my_numbers.open()?.iter()? {
        if let Err(e) = keys.push(key_record(MY_NUMBER, item?.0.value(), IN_REGISTRY)) {
            return Ok(Err(e));
        }
    }
    for item in t.cards.open()?.iter()? {
        let card = card_hash(item?.0.value());
        if let Err(e) = keys.push(key_record(CARD, card, IN_REGISTRY)) {
            return Ok(Err(e));
        }
    }
    for item in t.medical_ids.open()?.iter()? {
        if let Err(e) = keys.push(key_record(CANDIDATE, item?.0.value(), IN_REGISTRY)) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// The ranks of rows one of whose keys occurs more than once (in the load or in the
/// registry), one bit each.
fn repeated_ranks(
    keys: Sorter<u128>,
    rows: u64,
    progress: &dyn LoadProgress,
) -> io::Result<Vec<u64>> {
    let mut repeated = vec![0u64; usize::try_from(rows.div_ceil(64)).unwrap_or(0) + 1];
    let mut mark = |rank: u64| {
        if rank != IN_REGISTRY {
            repeated[(rank / 64) as usize] |= 1 << (rank % 64);
        }
    };
    let mut group: Option<(u128, u64)> = None;
    let mut group_repeated = false;
    for (n, k) in keys.sorted()?.enumerate() {
        let k = k?;
        let (key, rank) = (k >> 62, (k as u64) & IN_REGISTRY);
        match group {
            Some((g, first)) if g == key => {
                if !group_repeated {
                    mark(first);
                    group_repeated = true;
                }
                mark(rank);
            }
            _ => {
                group = Some((key, rank));
                group_repeated = false;
            }
        }
        if n.is_multiple_of(1 << 16) {
            progress.at(n as u64);
        }
    }
    Ok(repeated)
}

/// The index entries of fresh persons, sorted for insertion in key order.
pub(crate) struct IndexSorts {
    pub(crate) scratch: PathBuf,
    pub(crate) my_numbers: Sorter<(u64, u64)>,
    pub(crate) medical_ids: Sorter<(u64, u64)>,
    /// Card key → what the backend keeps for the card.
    pub(crate) cards: Sorter<Bytes>,
}

/// A fresh row found taken after all (an FF1 candidate of a later generation, say):
/// the load stops, and its transaction with it.
pub(crate) fn taken_for_new(what: &str) -> StoreError {
    StoreError::Inconsistent(format!(
        "the initial load found a {what} in the registry that it took for new; \
         nothing was enrolled: enroll the files with --initial-load never"
    ))
}

impl IndexSorts {
    pub(crate) fn new(g: &Gathered) -> Self {
        Self {
            my_numbers: Sorter::new(&g.scratch, "my_numbers", g.sort_memory),
            medical_ids: Sorter::new(&g.scratch, "medical_ids", g.sort_memory),
            cards: Sorter::new(&g.scratch, "cards", g.sort_memory),
            scratch: g.scratch.clone(),
        }
    }

    /// A fresh row's entries under `pid`: its My Number, its issued ID, and its card
    /// with `card` as the value.
    pub(crate) fn push(&mut self, pid: u64, row: &FreshRow, card: Vec<u8>) -> io::Result<()> {
        self.my_numbers.push((row.my_number, pid))?;
        self.medical_ids.push((row.candidate.as_u64(), pid))?;
        self.cards.push(Bytes {
            key: row.card_key.clone(),
            value: card,
        })
    }

    /// Writes a fresh row's person and sorts its index entries for later.
    fn fresh(&mut self, t: &mut Tables<'_>, row: &FreshRow) -> Result<RowOutcome> {
        let pid = t.next(PID)?;
        t.put_record(pid, &row.record(pid))?;
        self.push(pid, row, row.standing(pid))
            .map_err(|e| StoreError::File(self.scratch.clone(), e))?;
        Ok(RowOutcome::New)
    }

    /// Inserts the sorted entries, each table in key order. A key found there already
    /// means a fresh row was not: the load stops, and its transaction is dropped.
    fn insert(self, t: &mut Tables<'_>, progress: &dyn LoadProgress) -> Result<()> {
        let scratch = self.scratch.clone();
        let io = |e: io::Error| StoreError::File(scratch.clone(), e);
        let taken = taken_for_new;
        progress.stage("building the My Number index", self.my_numbers.len());
        let table = t.my_numbers.open_mut()?;
        for (n, item) in self.my_numbers.sorted().map_err(io)?.enumerate() {
            let (number, pid) = item.map_err(io)?;
            if table.insert(number, pid)?.is_some() {
                return Err(taken("My Number"));
            }
            tick(progress, n);
        }
        progress.stage("building the medical ID index", self.medical_ids.len());
        let table = t.medical_ids.open_mut()?;
        for (n, item) in self.medical_ids.sorted().map_err(io)?.enumerate() {
            let (id, pid) = item.map_err(io)?;
            let entry = encode(&IdEntry {
                pid,
                status: IdStatus::Current,
            })?;
            if table.insert(id, entry.as_slice())?.is_some() {
                return Err(taken("medical ID"));
            }
            tick(progress, n);
        }
        progress.stage("building the card index", self.cards.len());
        let table = t.cards.open_mut()?;
        for (n, item) in self.cards.sorted().map_err(io)?.enumerate() {
            let Bytes { key, value } = item.map_err(io)?;
            if table.insert(key.as_slice(), value.as_slice())?.is_some() {
                return Err(taken("card"));
            }
            tick(progress, n);
        }
        Ok(())
    }
}

fn tick(progress: &dyn LoadProgress, n: usize) {
    if n.is_multiple_of(1 << 16) {
        progress.at(n as u64);
    }
}

#[cfg(test)]
mod tests;
