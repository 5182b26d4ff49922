//! Change on application (proposal §2-6), My Number change, death and retirement (proposal §2-7).

use super::registry_tx::RegistryTx;
use super::tables::*;
use super::{status_name, Result, Store, StoreError};
use crate::audit::LogEntry;
use crate::issuance::Issuer;
use crate::registry::dates::DateError;
use crate::registry::{research_until, Event, IdStatus, Person, Timestamp};
use chrono::NaiveDate;
use iryo_proto::{MedicalId, MyNumber};
use redb::ReadableTable;

fn needs_reason(reason: &str) -> Result<String> {
    match reason.trim() {
        "" => Err(StoreError::ReasonRequired("a correction")),
        r => Ok(r.to_string()),
    }
}

fn current_person(t: &Tables<'_>, id: MedicalId) -> Result<Person> {
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
        if reason.trim().is_empty() {
            return Err(StoreError::ReasonRequired("a change"));
        }
        self.write(|t| {
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
            Ok(new)
        })
    }

    /// Replaces a person's My Number; the medical ID stays. The old number remains an
    /// alias so late files that still carry it reach the same person.
    pub fn change_my_number(
        &self,
        old: MyNumber,
        new: MyNumber,
        at: Timestamp,
    ) -> Result<MedicalId> {
        self.write(|t| {
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
            t.my_numbers.open_mut()?.insert(new.as_u64(), pid)?;
            Ok(p.medical_id)
        })
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
        let retention = self.retention_years;
        let rules = self.date_rules();
        self.write(|t| {
            let mut p = current_person(t, id)?;
            if let Some(recorded) = p.death {
                return Err(StoreError::DeathRecorded { id, date: recorded });
            }
            rules.death(date, p.identity.birth.date())?;
            p.death = Some(date);
            p.history.push(Event::Death { date, at });
            t.save_person(&p)?;
            t.deaths.open_mut()?.insert((days(date), p.pid), ())?;
            t.audit_append(&LogEntry::Operator {
                operator: by.into(),
                action: format!("death of {} recorded: {date}", id.grouped()),
                at,
            })?;
            Ok(research_until(date, retention))
        })
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
        let reason = needs_reason(reason)?;
        let retention = self.retention_years;
        let rules = self.date_rules();
        self.write(|t| {
            let mut p = current_person(t, id)?;
            let old = p.death.ok_or(StoreError::NoDeath(id))?;
            rules.death(date, p.identity.birth.date())?;
            t.deaths.open_mut()?.remove((days(old), p.pid))?;
            t.deaths.open_mut()?.insert((days(date), p.pid), ())?;
            p.death = Some(date);
            p.history.push(Event::DeathCorrected {
                old,
                new: date,
                reason: reason.clone(),
                by: by.into(),
                at,
            });
            t.save_person(&p)?;
            t.audit_append(&LogEntry::Operator {
                operator: by.into(),
                action: format!(
                    "date of death of {} corrected from {old} to {date}: {reason}",
                    id.grouped()
                ),
                at,
            })?;
            Ok(research_until(date, retention))
        })
    }

    /// Undoes a death recorded in error: the person is eligible again as their
    /// coverages say. The ID must not have been retired (retirement is for ever).
    pub fn revoke_death(&self, id: MedicalId, reason: &str, by: &str, at: Timestamp) -> Result<()> {
        let reason = needs_reason(reason)?;
        self.write(|t| {
            let mut p = current_person(t, id)?;
            let old = p.death.ok_or(StoreError::NoDeath(id))?;
            t.deaths.open_mut()?.remove((days(old), p.pid))?;
            p.death = None;
            p.history.push(Event::DeathRevoked {
                old,
                reason: reason.clone(),
                by: by.into(),
                at,
            });
            t.save_person(&p)?;
            t.audit_append(&LogEntry::Operator {
                operator: by.into(),
                action: format!("death of {} ({old}) revoked: {reason}", id.grouped()),
                at,
            })?;
            Ok(())
        })
    }

    /// Retires every ID whose retention period ended before `today`. Returns the IDs.
    /// Retirement is for ever, so it is never judged as of a day still to come.
    pub fn retire_due(&self, today: NaiveDate, at: Timestamp) -> Result<Vec<MedicalId>> {
        let retention = self.retention_years;
        let real = self.date_rules();
        if today > real.today {
            return Err(StoreError::Date(DateError::Future {
                what: "retirement date".into(),
                date: today,
                latest: real.today,
            }));
        }
        self.write(|t| {
            let mut due = Vec::new();
            for item in t.deaths.open()?.iter()? {
                let (k, _) = item?;
                let (d, pid) = k.value();
                let death = NaiveDate::from_num_days_from_ce_opt(d as i32)
                    .ok_or_else(|| StoreError::Inconsistent(format!("bad death day {d}")))?;
                if research_until(death, retention) >= today {
                    break;
                }
                due.push((d, pid));
            }
            let mut retired = Vec::new();
            for (d, pid) in due {
                let mut p = t.person(pid)?;
                p.retired = true;
                p.history.push(Event::Retired { at });
                t.save_person(&p)?;
                t.set_id_status(p.medical_id, pid, IdStatus::Retired)?;
                t.deaths.open_mut()?.remove((d, pid))?;
                retired.push(p.medical_id);
            }
            Ok(retired)
        })
    }
}
