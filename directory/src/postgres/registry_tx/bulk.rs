//! Enrollment batches on PostgreSQL, set-based.
//!
//! Most rows of an insurer's file name someone the registry has never seen: a My
//! Number, a card and a first-generation medical ID that no table holds and no other
//! row of the batch repeats. Such a row can only become a new person and needs no rule
//! of its own: its rows go into `persons`, `my_numbers`, `medical_ids` and `cards` by
//! binary COPY, each table's rows in key order. Every other row — a person already
//! registered, a card another person holds, a key the batch repeats, a taken ID — goes
//! through the row rules (`apply_row`) exactly as on the ordinary path, read ahead
//! together.
//!
//! Whether a row's keys are known is decided one of two ways (`Lookup`):
//! - `Numbers`: the batch's My Numbers are looked up in one statement — a person
//!   enrolled before is the one case common in insurers' files. A card another
//!   person holds and a taken candidate ID are rare: the tables' unique indexes check
//!   those as the COPY writes the new rows, and if one refuses a row, the transaction
//!   is rolled back (`PgError::KnownAfterAll`) and the batch applied again with `All`.
//! - `All`: My Numbers, cards and candidate IDs are all looked up first
//!   (`prefetch_rows`), so no index refuses a row.
//!
//! Rows are applied in the ordinary path's order (`application_order`), so new persons
//! get the pids they would get on either backend, and each row's outcome is the rules'
//! own. The one difference is unobservable in practice: a row whose first candidate ID
//! was taken and whose next candidate equals another new row's first (FF1 outputs
//! colliding across generations) takes the one after.

use super::{db, ints, PgTx, PID};
use crate::issuance::Issuer;
use crate::postgres::PgError;
use crate::registry::eligibility::CardStanding;
use crate::registry::merge::{new_person, RowOutcome};
use crate::registry::{EnrollmentRow, IdEntry, IdStatus, Person, Timestamp};
use crate::store::registry_tx::RegistryTx;
use crate::store::{application_order, apply_row, encode, BatchReport, Result};
use futures::pin_mut;
use iryo_proto::MedicalId;
use std::collections::HashMap;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// How a batch learns which of its rows the registry knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Look the My Numbers up; the unique indexes check cards and IDs.
    Numbers,
    /// Look every key up before applying.
    All,
}

/// Applies `rows` in one transaction, set-based where a row can only be new.
pub(crate) fn enroll(
    t: &mut PgTx<'_>,
    source: &str,
    rows: &[EnrollmentRow],
    candidates: Option<&[MedicalId]>,
    issuer: &Issuer,
    at: Timestamp,
    lookup: Lookup,
) -> Result<BatchReport> {
    let candidates: Vec<MedicalId> = match candidates {
        Some(c) if c.len() == rows.len() => c.to_vec(),
        _ => rows
            .iter()
            .map(|r| issuer.candidate(r.my_number, 0))
            .collect::<std::result::Result<_, _>>()?,
    };
    let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.card.key()).collect();
    let mut fresh = unrepeated(rows, &keys, &candidates);
    // The person counter's row lock first: an enrollment committed meanwhile by
    // another process is then seen by what follows.
    t.load_counter(PID)?;
    if lookup == Lookup::All {
        t.prefetch_rows(rows, Some(&candidates))?;
        for (i, f) in fresh.iter_mut().enumerate() {
            *f = *f && t.unknown(&rows[i], &keys[i], candidates[i]);
        }
    } else {
        t.read_my_numbers(rows)?;
        for (f, r) in fresh.iter_mut().zip(rows) {
            *f = *f && t.my_numbers.get(&r.my_number.as_u64()) == Some(&None);
        }
        let (others, their_candidates): (Vec<EnrollmentRow>, Vec<MedicalId>) = (0..rows.len())
            .filter(|&i| !fresh[i])
            .map(|i| (rows[i].clone(), candidates[i]))
            .unzip();
        t.prefetch_rows(&others, Some(&their_candidates))?;
    }
    // A later row's next-generation candidate must not take a new person's ID.
    for (i, c) in candidates.iter().enumerate() {
        if fresh[i] {
            t.ids_taken.insert(c.as_u64());
        }
    }

    let mut new = NewPersons::default();
    let mut outcomes = vec![RowOutcome::Unchanged; rows.len()];
    for i in application_order(rows) {
        outcomes[i] = if fresh[i] {
            let pid = t.next(PID)?;
            new.push(&new_person(pid, &rows[i], candidates[i], 0, at))?;
            RowOutcome::New
        } else {
            let row_source = format!("{source}:{}", rows[i].line);
            apply_row(t, &row_source, &rows[i], Some(candidates[i]), issuer, at)?
        };
    }
    t.copy_new(new)?;
    Ok(BatchReport {
        outcomes: rows.iter().map(|r| r.line).zip(outcomes).collect(),
    })
}

/// Whether each row's My Number, card and candidate ID appear in no other row of the
/// batch: a repeated key is for the row rules, which apply the rows one by one.
fn unrepeated(rows: &[EnrollmentRow], keys: &[Vec<u8>], candidates: &[MedicalId]) -> Vec<bool> {
    let mut numbers: HashMap<u64, u32> = HashMap::with_capacity(rows.len());
    let mut cards: HashMap<&[u8], u32> = HashMap::with_capacity(rows.len());
    let mut ids: HashMap<u64, u32> = HashMap::with_capacity(rows.len());
    for ((r, k), c) in rows.iter().zip(keys).zip(candidates) {
        *numbers.entry(r.my_number.as_u64()).or_default() += 1;
        *cards.entry(k.as_slice()).or_default() += 1;
        *ids.entry(c.as_u64()).or_default() += 1;
    }
    rows.iter()
        .zip(keys)
        .zip(candidates)
        .map(|((r, k), c)| {
            numbers[&r.my_number.as_u64()] == 1 && cards[k.as_slice()] == 1 && ids[&c.as_u64()] == 1
        })
        .collect()
}

/// What the new persons of a batch write: each table's rows, sent in key order.
#[derive(Default)]
struct NewPersons {
    persons: Vec<(i64, i64, i64, Vec<u8>)>,
    my_numbers: Vec<(i64, i64)>,
    ids: Vec<(i64, i64, Vec<u8>)>,
    cards: Vec<(Vec<u8>, i64, Vec<u8>)>,
}

impl NewPersons {
    /// The rows `apply_row` writes for a new person: the record, its My Number, its
    /// issued ID and each card's standing.
    fn push(&mut self, p: &Person) -> Result<()> {
        let [pid, my_number, id] = ints(&[p.pid, p.my_number.as_u64(), p.medical_id.as_u64()])?
            .try_into()
            .map_err(|_| super::PgError::Inconsistent("three numbers expected".into()))?;
        self.persons.push((pid, my_number, id, encode(p)?));
        self.my_numbers.push((my_number, pid));
        let entry = IdEntry {
            pid: p.pid,
            status: IdStatus::Current,
        };
        self.ids.push((id, pid, encode(&entry)?));
        for c in &p.coverages {
            self.cards
                .push((c.card.key(), pid, encode(&CardStanding::of(p, c))?));
        }
        Ok(())
    }
}

impl PgTx<'_> {
    /// Whether the read-ahead found nothing under the row's My Number, card and
    /// candidate ID.
    fn unknown(&self, row: &EnrollmentRow, key: &[u8], candidate: MedicalId) -> bool {
        self.my_numbers.get(&row.my_number.as_u64()) == Some(&None)
            && self.cards.get(key) == Some(&None)
            && self.ids_free.contains(&candidate.as_u64())
    }

    /// Writes the new persons' rows, a binary COPY per table in key order (appends to
    /// each index's pages in turn rather than all over them).
    fn copy_new(&mut self, mut new: NewPersons) -> Result<()> {
        if new.persons.is_empty() {
            return Ok(());
        }
        new.my_numbers.sort_unstable_by_key(|r| r.0);
        new.ids.sort_unstable_by_key(|r| r.0);
        new.cards.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let tx = self.tx;
        self.rt
            .block_on(async {
                copy(
                    tx,
                    "COPY persons (pid, my_number, medical_id, record) FROM STDIN BINARY",
                    &[Type::INT8, Type::INT8, Type::INT8, Type::BYTEA],
                    new.persons
                        .iter()
                        .map(|(p, m, i, r)| [p as &(dyn ToSql + Sync), m, i, r]),
                )
                .await?;
                copy(
                    tx,
                    "COPY my_numbers (my_number, pid) FROM STDIN BINARY",
                    &[Type::INT8, Type::INT8],
                    new.my_numbers
                        .iter()
                        .map(|(m, p)| [m as &(dyn ToSql + Sync), p]),
                )
                .await?;
                copy(
                    tx,
                    "COPY medical_ids (medical_id, pid, entry) FROM STDIN BINARY",
                    &[Type::INT8, Type::INT8, Type::BYTEA],
                    new.ids
                        .iter()
                        .map(|(i, p, e)| [i as &(dyn ToSql + Sync), p, e]),
                )
                .await?;
                copy(
                    tx,
                    "COPY cards (card_key, pid, standing) FROM STDIN BINARY",
                    &[Type::BYTEA, Type::INT8, Type::BYTEA],
                    new.cards
                        .iter()
                        .map(|(k, p, s)| [k as &(dyn ToSql + Sync), p, s]),
                )
                .await
            })
            .map_err(|e| match e.code() {
                Some(&SqlState::UNIQUE_VIOLATION) => PgError::KnownAfterAll.into(),
                _ => db(e),
            })?;
        Ok(())
    }
}

/// One binary COPY of `rows` by `statement`, inside the open transaction.
async fn copy<'v, const N: usize>(
    tx: &Client,
    statement: &str,
    types: &[Type],
    rows: impl Iterator<Item = [&'v (dyn ToSql + Sync); N]>,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, types);
    pin_mut!(writer);
    for row in rows {
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}
