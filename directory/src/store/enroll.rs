//! Applying a batch of enrollment rows in one durable transaction.

use super::registry_tx::RegistryTx;
use super::tables::{CONFLICT_SEQ, PID};
use super::{encode, Result, Store};
use crate::issuance::Issuer;
use crate::registry::merge::{conflict_for, merge_row, new_person, CardHolder, RowOutcome};
use crate::registry::{CaseStatus, Conflict, ConflictKind, EnrollmentRow, Timestamp};
use iryo_proto::MedicalId;

/// What each row of a batch did, in row order.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub outcomes: Vec<(u64, RowOutcome)>,
}

/// A store that enrolls batches of rows: either backend, for `ingest`.
pub trait EnrollBatch {
    /// Applies `rows` in order and commits once. `candidates`, when given, holds each
    /// row's generation-0 FF1 candidate computed on another thread.
    fn enroll_batch(
        &self,
        source: &str,
        rows: &[EnrollmentRow],
        candidates: Option<&[MedicalId]>,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<BatchReport>;
}

/// Both stores forward to their own `enroll_batch`, which applies `apply_batch`.
macro_rules! enroll_batch {
    ($($store:ty),*) => {$(
        impl EnrollBatch for $store {
            super::forward! {
                enroll_batch(source: &str, rows: &[EnrollmentRow], candidates: Option<&[MedicalId]>, issuer: &Issuer, at: Timestamp) -> Result<BatchReport>;
            }
        }
    )*};
}
enroll_batch!(Store, crate::postgres::PgStore);

impl Store {
    /// Applies `rows` in order and commits once. `candidates`, when given, holds each
    /// row's generation-0 FF1 candidate computed on another thread.
    pub fn enroll_batch(
        &self,
        source: &str,
        rows: &[EnrollmentRow],
        candidates: Option<&[MedicalId]>,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<BatchReport> {
        self.write(|t| apply_batch(t, source, rows, candidates, issuer, at))
    }
}

/// Applies `rows` in one transaction of either backend.
pub(crate) fn apply_batch(
    t: &mut (impl RegistryTx + ?Sized),
    source: &str,
    rows: &[EnrollmentRow],
    candidates: Option<&[MedicalId]>,
    issuer: &Issuer,
    at: Timestamp,
) -> Result<BatchReport> {
    t.prefetch_rows(rows, candidates)?;
    let mut outcomes = vec![RowOutcome::Unchanged; rows.len()];
    for i in application_order(rows) {
        let first = candidates.and_then(|c| c.get(i).copied());
        let row_source = format!("{source}:{}", rows[i].line);
        outcomes[i] = apply_row(t, &row_source, &rows[i], first, issuer, at)?;
    }
    Ok(BatchReport {
        outcomes: rows.iter().map(|r| r.line).zip(outcomes).collect(),
    })
}

/// The order a batch's rows are applied in, which decides the pids new persons get:
/// by My Number, which keeps the My Number index's pages hot. The sort is stable and
/// deterministic, so a re-run assigns the same pids, and both backends assign alike.
pub(crate) fn application_order(rows: &[EnrollmentRow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].my_number);
    order
}

/// The rules of proposal §2-1 against the tables: match by My Number, never overwrite
/// identity, hold disagreements as conflicts. `source` says where the row came from
/// (`FILE:LINE`, or an operator's case), for the history and the conflict.
pub(crate) fn apply_row(
    t: &mut (impl RegistryTx + ?Sized),
    source: &str,
    row: &EnrollmentRow,
    first: Option<MedicalId>,
    issuer: &Issuer,
    at: Timestamp,
) -> Result<RowOutcome> {
    let person = match t.pid_by_my_number(row.my_number)? {
        Some(pid) => Some(t.person(pid)?),
        None => None,
    };
    let holder = match t.card_holder(&row.card)? {
        None => CardHolder::Nobody,
        Some(pid) if Some(pid) == person.as_ref().map(|p| p.pid) => CardHolder::ThisPerson,
        Some(pid) => CardHolder::Other(t.person(pid)?.my_number),
    };
    if let Some(kind) = conflict_for(person.as_ref(), row, holder) {
        record_conflict(t, source, row, kind.clone(), at)?;
        return Ok(RowOutcome::Conflict(kind));
    }
    if let Some(mut p) = person {
        let outcome = merge_row(&mut p, row, source, at);
        if outcome == RowOutcome::Updated {
            t.save_person(&p)?;
        }
        Ok(outcome)
    } else {
        let pid = t.next(PID)?;
        let (id, generation) = t.issue(issuer, row.my_number, pid, 0, first)?;
        let p = new_person(pid, row, id, generation, at);
        t.save_person(&p)?;
        t.put_my_number(row.my_number, pid)?;
        Ok(RowOutcome::New)
    }
}

/// Records a conflict once, however often the same row arrives.
fn record_conflict(
    t: &mut (impl RegistryTx + ?Sized),
    source: &str,
    row: &EnrollmentRow,
    kind: ConflictKind,
    at: Timestamp,
) -> Result<()> {
    let mut canonical = row.clone();
    canonical.line = 0;
    let key = encode(&(&canonical, &kind))?;
    if t.conflict_by_key(&key)?.is_some() {
        return Ok(());
    }
    let id = t.next(CONFLICT_SEQ)?;
    let c = Conflict {
        id,
        kind,
        source: source.to_string(),
        row: row.clone(),
        status: CaseStatus::Open,
        at,
    };
    t.put_conflict(&c, &key)
}
