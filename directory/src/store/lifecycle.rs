//! Change on application (proposal §2-6), My Number change, death and retirement (proposal §2-7).

use super::registry_tx::RegistryTx;
use super::tables::days;
use super::{status_name, Result, Store, StoreError};
use crate::audit::LogEntry;
use crate::issuance::Issuer;
use crate::registry::dates::DateError;
use crate::registry::dates::DateRules;
use crate::registry::{research_until, Event, IdStatus, Person, Timestamp};
use chrono::NaiveDate;
use iryo_proto::roles::NoticeKind;
use iryo_proto::{MedicalId, MyNumber};

fn needs_reason(reason: &str) -> Result<String> {
    match reason.trim() {
        "" => Err(StoreError::ReasonRequired("a correction")),
        r => Ok(r.to_string()),
    }
}

fn current_person(t: &mut (impl RegistryTx + ?Sized), id: MedicalId) -> Result<Person> {
    let e = t.id_entry(id)?.ok_or(StoreError::UnknownMedicalId(id))?;
    if e.status != IdStatus::Current {
        return Err(StoreError::NotCurrent {
            id,
            state: status_name(e.status),
        });
    }
    t.person(e.pid)
}

impl Store {
    /// Issues a new ID for a stated reason; the old one points to its successor and is
    /// never issued again.
    pub fn change_id(
        &self,
        id: MedicalId,
        reason: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<MedicalId> {
        self.write(|t| change_id(t, id, reason, issuer, at))
    }

    /// Replaces a person's My Number; the medical ID stays. The old number remains an
    /// alias so late files that still carry it reach the same person.
    pub fn change_my_number(
        &self,
        old: MyNumber,
        new: MyNumber,
        at: Timestamp,
    ) -> Result<MedicalId> {
        self.write(|t| change_my_number(t, old, new, at))
    }

    /// Records a death: eligibility ends, the ID serves research until the retention
    /// period ends. Returns that date. A date before birth or in the future is
    /// refused, and so is a second death: correct or revoke the first instead.
    pub fn record_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write(|t| record_death(t, id, date, by, at, &rules, retention))
    }

    /// Replaces the date of a recorded death; the retention period runs from the new
    /// date. The old date stays in the history, with the reason.
    pub fn correct_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write(|t| correct_death(t, id, date, reason, by, at, &rules, retention))
    }

    /// Undoes a death recorded in error: the person is eligible again as their
    /// coverages say. The ID must not have been retired (retirement is for ever).
    pub fn revoke_death(&self, id: MedicalId, reason: &str, by: &str, at: Timestamp) -> Result<()> {
        self.write(|t| revoke_death(t, id, reason, by, at))
    }

    /// Retires every ID whose retention period ended before `today`. Returns the IDs.
    /// Retirement is for ever, so it is never judged as of a day still to come.
    pub fn retire_due(&self, today: NaiveDate, at: Timestamp) -> Result<Vec<MedicalId>> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write(|t| retire_due(t, today, at, &rules, retention))
    }
}

/// The rules of `Store::change_id`, for either backend.
pub(crate) fn change_id(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    reason: &str,
    issuer: &Issuer,
    at: Timestamp,
) -> Result<MedicalId> {
    if reason.trim().is_empty() {
        return Err(StoreError::ReasonRequired("a change"));
    }
    let mut p = current_person(t, id)?;
    if p.retired || p.death.is_some() {
        return Err(StoreError::Deceased(id));
    }
    let (new, generation) = t.issue(issuer, p.my_number, p.pid, p.generation + 1, None)?;
    t.set_id_status(id, p.pid, IdStatus::Changed { successor: new })?;
    p.medical_id = new;
    p.generation = generation;
    p.history.push(Event::IdChanged {
        old: id,
        new,
        reason: reason.trim().to_string(),
        at,
    });
    t.save_person(&p)?;
    t.tell_authority(NoticeKind::IdChanged { old: id, new }, at)?;
    Ok(new)
}

/// The rules of `Store::change_my_number`, for either backend.
pub(crate) fn change_my_number(
    t: &mut (impl RegistryTx + ?Sized),
    old: MyNumber,
    new: MyNumber,
    at: Timestamp,
) -> Result<MedicalId> {
    let pid = t
        .pid_by_my_number(old)?
        .ok_or(StoreError::UnknownMyNumber(old))?;
    if t.pid_by_my_number(new)?.is_some() {
        return Err(StoreError::MyNumberTaken(new));
    }
    let mut p = t.person(pid)?;
    p.my_number = new;
    p.history.push(Event::MyNumberChanged { old, new, at });
    t.put_person(&p)?;
    t.put_my_number(new, pid)?;
    Ok(p.medical_id)
}

/// The rules of `Store::record_death`, for either backend.
pub(crate) fn record_death(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    date: NaiveDate,
    by: &str,
    at: Timestamp,
    rules: &DateRules,
    retention: u32,
) -> Result<NaiveDate> {
    let mut p = current_person(t, id)?;
    if let Some(recorded) = p.death {
        return Err(StoreError::DeathRecorded { id, date: recorded });
    }
    rules.death(date, p.identity.birth.date())?;
    p.death = Some(date);
    p.history.push(Event::Death { date, at });
    t.save_person(&p)?;
    t.mark_death(days(date), p.pid, true)?;
    tell_death(t, id, date, at)?;
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!("death of {} recorded: {date}", id.grouped()),
        at,
    })?;
    Ok(research_until(date, retention))
}

/// Tells the authority, on a registry run apart, of a death or its corrected date.
fn tell_death(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    date: NaiveDate,
    at: Timestamp,
) -> Result<()> {
    t.tell_authority(
        NoticeKind::Died {
            medical_id: id,
            date,
        },
        at,
    )
}

/// The rules of `Store::correct_death`, for either backend; `reason` is required.
#[allow(clippy::too_many_arguments)]
pub(crate) fn correct_death(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    date: NaiveDate,
    reason: &str,
    by: &str,
    at: Timestamp,
    rules: &DateRules,
    retention: u32,
) -> Result<NaiveDate> {
    let reason = needs_reason(reason)?;
    let mut p = current_person(t, id)?;
    let old = p.death.ok_or(StoreError::NoDeath(id))?;
    rules.death(date, p.identity.birth.date())?;
    t.mark_death(days(old), p.pid, false)?;
    t.mark_death(days(date), p.pid, true)?;
    p.death = Some(date);
    p.history.push(Event::DeathCorrected {
        old,
        new: date,
        reason: reason.clone(),
        by: by.into(),
        at,
    });
    t.save_person(&p)?;
    tell_death(t, id, date, at)?;
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!(
            "date of death of {} corrected from {old} to {date}: {reason}",
            id.grouped()
        ),
        at,
    })?;
    Ok(research_until(date, retention))
}

/// The rules of `Store::revoke_death`, for either backend; `reason` is required.
pub(crate) fn revoke_death(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    reason: &str,
    by: &str,
    at: Timestamp,
) -> Result<()> {
    let reason = needs_reason(reason)?;
    let mut p = current_person(t, id)?;
    let old = p.death.ok_or(StoreError::NoDeath(id))?;
    t.mark_death(days(old), p.pid, false)?;
    p.death = None;
    p.history.push(Event::DeathRevoked {
        old,
        reason: reason.clone(),
        by: by.into(),
        at,
    });
    t.save_person(&p)?;
    t.tell_authority(NoticeKind::DeathWithdrawn { medical_id: id }, at)?;
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!("death of {} ({old}) revoked: {reason}", id.grouped()),
        at,
    })?;
    Ok(())
}

/// Deaths the retirement sweep reads at a time.
const SWEEP_PAGE: usize = 1024;

/// The rules of `Store::retire_due`, for either backend.
pub(crate) fn retire_due(
    t: &mut (impl RegistryTx + ?Sized),
    today: NaiveDate,
    at: Timestamp,
    real: &DateRules,
    retention: u32,
) -> Result<Vec<MedicalId>> {
    if today > real.today {
        return Err(StoreError::Date(DateError::Future {
            what: "retirement date".into(),
            date: today,
            latest: real.today,
        }));
    }
    let mut due = Vec::new();
    let mut after = None;
    'sweep: loop {
        let page = t.deaths_after(after, SWEEP_PAGE)?;
        for &(d, pid) in &page {
            let death = NaiveDate::from_num_days_from_ce_opt(d as i32)
                .ok_or_else(|| StoreError::Inconsistent(format!("bad death day {d}")))?;
            if research_until(death, retention) >= today {
                break 'sweep;
            }
            due.push((d, pid));
        }
        match page.last() {
            Some(last) if page.len() == SWEEP_PAGE => after = Some(*last),
            _ => break,
        }
    }
    let mut retired = Vec::new();
    for (d, pid) in due {
        let mut p = t.person(pid)?;
        p.retired = true;
        p.history.push(Event::Retired { at });
        t.save_person(&p)?;
        t.set_id_status(p.medical_id, pid, IdStatus::Retired)?;
        t.mark_death(d, pid, false)?;
        t.tell_authority(
            NoticeKind::Retired {
                medical_id: p.medical_id,
            },
            at,
        )?;
        retired.push(p.medical_id);
    }
    Ok(retired)
}
