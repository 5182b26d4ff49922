//! The operator's queue: enrollment conflicts, mismatches found at institutions, and
//! the notices they caused (proposal §2-1, 2-5).

use super::enroll::apply_row;
use super::registry_tx::RegistryTx;
use super::tables::*;
use super::{decode, Result, Store, StoreError};
use crate::audit::LogEntry;
use crate::issuance::Issuer;
use crate::registry::merge::{drop_card, RowOutcome};
use crate::registry::{
    CaseStatus, Conflict, Event, IdStatus, Mismatch, Notice, Recipient, Timestamp,
};
use iryo_proto::InsurerNumber;
use redb::{ReadableDatabase, ReadableTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConflictAction {
    /// The row is right: correct the registry to it.
    Apply,
    /// The registry is right: close the case, change nothing.
    Dismiss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MismatchAction {
    /// The registry is right; the person or institution had a wrong ID.
    Keep,
    /// The card belongs to the person whose ID was presented: move it there.
    Rebind,
}

fn resolved(action: &str, reason: &str, by: &str, at: Timestamp) -> Result<CaseStatus> {
    if reason.trim().is_empty() {
        return Err(StoreError::ReasonRequired("a resolution"));
    }
    Ok(CaseStatus::Resolved {
        action: action.into(),
        reason: reason.trim().into(),
        by: by.into(),
        at,
    })
}

impl Store {
    pub fn conflicts(&self, open_only: bool) -> Result<Vec<Conflict>> {
        self.list(CONFLICTS, open_only, |c: &Conflict| &c.status)
    }

    pub fn mismatches(&self, open_only: bool) -> Result<Vec<Mismatch>> {
        self.list(MISMATCHES, open_only, |m: &Mismatch| &m.status)
    }

    fn list<T: serde::de::DeserializeOwned>(
        &self,
        def: redb::TableDefinition<u64, &[u8]>,
        open_only: bool,
        status: fn(&T) -> &CaseStatus,
    ) -> Result<Vec<T>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in tx.open_table(def)?.iter()? {
            let c: T = decode(item?.1.value())?;
            if !open_only || *status(&c) == CaseStatus::Open {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Notices queued, all or only those for one insurer.
    pub fn notices(&self, insurer: Option<&InsurerNumber>) -> Result<Vec<Notice>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in tx.open_table(NOTICES)?.iter()? {
            let n: Notice = decode(item?.1.value())?;
            if notice_for(&n, insurer) {
                out.push(n);
            }
        }
        Ok(out)
    }

    pub fn resolve_conflict(
        &self,
        id: u64,
        action: ConflictAction,
        reason: &str,
        by: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<Conflict> {
        self.write(|t| resolve_conflict(t, id, action, reason, by, issuer, at))
    }

    pub fn resolve_mismatch(
        &self,
        id: u64,
        action: MismatchAction,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<Mismatch> {
        self.write(|t| resolve_mismatch(t, id, action, reason, by, at))
    }
}

/// The rules of `Store::resolve_conflict`, for either backend.
pub(crate) fn resolve_conflict(
    t: &mut (impl RegistryTx + ?Sized),
    id: u64,
    action: ConflictAction,
    reason: &str,
    by: &str,
    issuer: &Issuer,
    at: Timestamp,
) -> Result<Conflict> {
    let mut c = t.conflict(id)?.ok_or(StoreError::NoSuchCase {
        what: "conflict",
        id,
    })?;
    if c.status != CaseStatus::Open {
        return Err(StoreError::CaseClosed {
            what: "conflict",
            id,
        });
    }
    let name = match action {
        ConflictAction::Apply => "apply",
        ConflictAction::Dismiss => "dismiss",
    };
    c.status = resolved(name, reason, by, at)?;
    if action == ConflictAction::Apply {
        apply_correction(t, &c, reason, by, issuer, at)?;
    }
    t.save_conflict(&c)?;
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!("conflict {id} resolved ({name}): {}", reason.trim()),
        at,
    })?;
    Ok(c)
}

/// The rules of `Store::resolve_mismatch`, for either backend.
pub(crate) fn resolve_mismatch(
    t: &mut (impl RegistryTx + ?Sized),
    id: u64,
    action: MismatchAction,
    reason: &str,
    by: &str,
    at: Timestamp,
) -> Result<Mismatch> {
    let mut m = t.mismatch(id)?.ok_or(StoreError::NoSuchCase {
        what: "mismatch",
        id,
    })?;
    if m.status != CaseStatus::Open {
        return Err(StoreError::CaseClosed {
            what: "mismatch",
            id,
        });
    }
    let name = match action {
        MismatchAction::Keep => "keep",
        MismatchAction::Rebind => "rebind",
    };
    m.status = resolved(name, reason, by, at)?;
    if action == MismatchAction::Rebind {
        rebind(t, &m, reason, at)?;
    }
    let mut key = m.card.key();
    key.extend_from_slice(&m.presented.as_u64().to_be_bytes());
    t.forget_mismatch_key(&key)?;
    t.save_mismatch(&m)?;
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!("mismatch {id} resolved ({name}): {}", reason.trim()),
        at,
    })?;
    Ok(m)
}

/// Whether a notice is listed for `insurer` (every notice without one).
pub(crate) fn notice_for(n: &Notice, insurer: Option<&InsurerNumber>) -> bool {
    match (insurer, &n.to) {
        (None, _) => true,
        (Some(i), Recipient::Insurer { insurer }) => i == insurer,
        (Some(_), Recipient::Person { .. }) => false,
    }
}

/// Makes the registry agree with a conflicting row: the card leaves its other holder,
/// the identity takes the row's values, then the row applies as enrollment would.
/// Every value replaced stays in the history with its new value and the case.
fn apply_correction(
    t: &mut (impl RegistryTx + ?Sized),
    c: &Conflict,
    reason: &str,
    by: &str,
    issuer: &Issuer,
    at: Timestamp,
) -> Result<()> {
    let row = &c.row;
    let case = format!(
        "conflict {} ({}, by {by}): {}",
        c.id,
        c.source,
        reason.trim()
    );
    if let Some(holder_pid) = t.card_holder(&row.card)? {
        let mut holder = t.person(holder_pid)?;
        if holder.my_number != row.my_number {
            drop_card(&mut holder, &row.card);
            holder.history.push(Event::Corrected {
                what: format!("card {} removed (conflict {})", row.card, c.id),
                reason: reason.into(),
                at,
            });
            t.unbind_card(&row.card)?;
            t.save_person(&holder)?;
        }
    }
    if let Some(pid) = t.pid_by_my_number(row.my_number)? {
        let mut p = t.person(pid)?;
        let old = p.identity.clone();
        let new = &row.identity;
        let fields = old.differences(new);
        if !fields.is_empty() {
            for field in &fields {
                let (was, now) = match *field {
                    "name" => (old.name.to_string(), new.name.to_string()),
                    "kana_name" => (old.kana.to_string(), new.kana.to_string()),
                    "birth_date" => (old.birth.to_string(), new.birth.to_string()),
                    _ => (old.sex.code().to_string(), new.sex.code().to_string()),
                };
                p.history.push(Event::Changed {
                    field: (*field).to_string(),
                    old: was,
                    new: now,
                    source: case.clone(),
                    at,
                });
            }
            p.identity = new.clone();
            t.save_person(&p)?;
        }
    }
    match apply_row(t, &case, row, None, issuer, at)? {
        RowOutcome::Conflict(k) => Err(StoreError::StillConflicts(k)),
        _ => Ok(()),
    }
}

/// Moves the mismatched card from the registered person to the presented ID's person.
fn rebind(
    t: &mut (impl RegistryTx + ?Sized),
    m: &Mismatch,
    reason: &str,
    at: Timestamp,
) -> Result<()> {
    let target = t
        .id_entry(m.presented)?
        .ok_or(StoreError::UnknownMedicalId(m.presented))?;
    if target.status != IdStatus::Current {
        return Err(StoreError::NotCurrent {
            id: m.presented,
            state: super::status_name(target.status),
        });
    }
    let from_pid = t
        .card_holder(&m.card)?
        .ok_or_else(|| StoreError::CardNotRegistered(m.card.clone()))?;
    if from_pid == target.pid {
        return Ok(());
    }
    let mut from = t.person(from_pid)?;
    let coverage = drop_card(&mut from, &m.card)
        .ok_or_else(|| StoreError::Inconsistent(format!("card {} has no coverage", m.card)))?;
    let what = format!(
        "card {} moved to {} (mismatch {})",
        m.card, m.presented, m.id
    );
    from.history.push(Event::Corrected {
        what: what.clone(),
        reason: reason.into(),
        at,
    });
    t.unbind_card(&m.card)?;
    t.save_person(&from)?;
    let mut to = t.person(target.pid)?;
    to.coverages.push(coverage);
    to.history.push(Event::Corrected {
        what,
        reason: reason.into(),
        at,
    });
    t.save_person(&to)?;
    Ok(())
}
