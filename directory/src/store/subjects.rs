//! The exchange authority's patients (docs/roles.md): what the registry's notices said
//! of each medical ID, kept without a My Number, name or address. Consents, service
//! uses, accounts and grants refer to a subject's number as they refer to a person's.

use super::registry_tx::RegistryTx;
use super::{Result, StoreError};
use crate::audit::LogEntry;
use crate::registry::{id_state, IdEntry, IdState, IdStatus};
use chrono::NaiveDate;
use ed25519_dalek::VerifyingKey;
use iryo_proto::roles::{NoticeKind, RegistryNotice};
use iryo_proto::signed::Signed;
use iryo_proto::MedicalId;
use serde::{Deserialize, Serialize};

/// A patient as the exchange authority knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The subject's number, from the same sequence as persons' on a store holding both.
    pub pid: u64,
    /// The medical IDs the registry named for this patient, the current one last.
    pub ids: Vec<MedicalId>,
    /// The date of death the registry reported.
    pub death: Option<NaiveDate>,
    /// Whether the registry retired the ID.
    pub retired: bool,
}

impl Subject {
    /// The state of the subject's ID on `date`, by the same rule as a person's.
    pub fn id_state(&self, date: NaiveDate, retention_years: u32) -> IdState {
        id_state(self.retired, self.death, date, retention_years)
    }
}

/// The counter of registry notices: the next number expected, plus one (counters start
/// at 1 on both backends, and so do notices).
pub(crate) const NEXT_NOTICE: &str = "next_registry_notice";

/// The counter of a registry's own notices: the number the next one gets.
pub(crate) const NEXT_TOLD: &str = "next_notice_told";

/// The number the next registry notice must carry.
pub(crate) fn expected_notice(t: &mut (impl RegistryTx + ?Sized)) -> Result<u64> {
    t.peek(NEXT_NOTICE)
}

/// The subject that `id` names, made when the ID is new to this store: the authority
/// does not learn which IDs were issued, only those it deals with.
pub(crate) fn subject_for(t: &mut (impl RegistryTx + ?Sized), id: MedicalId) -> Result<Subject> {
    if let Some(e) = t.id_entry(id)? {
        return t.subject(e.pid)?.ok_or_else(|| {
            StoreError::Inconsistent(format!(
                "medical ID {id} names subject {} that has no record",
                e.pid
            ))
        });
    }
    let pid = t.next(super::tables::PID)?;
    let s = Subject {
        pid,
        ids: vec![id],
        death: None,
        retired: false,
    };
    t.set_id_status(id, pid, IdStatus::Current)?;
    t.put_subject(&s)?;
    Ok(s)
}

/// What became of a notice offered to the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied and logged now.
    New,
    /// Applied before; nothing changed.
    Known,
}

/// Applies one notice from the registry, verified against `registry`, and logs it.
/// Notices apply in their order only: one beyond the next expected is refused, so that
/// none is ever skipped.
pub(crate) fn apply_notice(
    t: &mut (impl RegistryTx + ?Sized),
    signed: &Signed<RegistryNotice>,
    registry: &VerifyingKey,
) -> Result<Applied> {
    if signed.signer != registry.to_bytes() {
        return Err(StoreError::Notice(
            "signed by a key other than the registry's (registry.key)".into(),
        ));
    }
    let n = signed.verify(registry).map_err(|e| {
        StoreError::Notice(format!("the registry's signature does not verify: {e}"))
    })?;
    let expected = expected_notice(t)?;
    if n.seq < expected {
        return Ok(Applied::Known);
    }
    if n.seq > expected {
        return Err(StoreError::Notice(format!(
            "notice {} arrived before notice {expected}; the registry sends them again in order",
            n.seq
        )));
    }
    t.next(NEXT_NOTICE)?;
    match n.kind {
        NoticeKind::IdChanged { old, new } => {
            let mut s = subject_for(t, old)?;
            match t.id_entry(new)? {
                None => {}
                Some(IdEntry { pid, .. }) if pid == s.pid => {}
                Some(_) => {
                    return Err(StoreError::Notice(format!(
                    "medical ID {new} already names another patient here; it cannot replace {old}"
                )))
                }
            }
            t.set_id_status(old, s.pid, IdStatus::Changed { successor: new })?;
            t.set_id_status(new, s.pid, IdStatus::Current)?;
            if !s.ids.contains(&new) {
                s.ids.push(new);
            }
            t.put_subject(&s)?;
        }
        NoticeKind::Died { medical_id, date } => {
            let mut s = subject_for(t, medical_id)?;
            s.death = Some(date);
            t.put_subject(&s)?;
        }
        NoticeKind::DeathWithdrawn { medical_id } => {
            let mut s = subject_for(t, medical_id)?;
            s.death = None;
            t.put_subject(&s)?;
        }
        NoticeKind::Retired { medical_id } => {
            let mut s = subject_for(t, medical_id)?;
            s.retired = true;
            t.set_id_status(medical_id, s.pid, IdStatus::Retired)?;
            t.put_subject(&s)?;
        }
        NoticeKind::VisitConsent {
            institution,
            medical_id,
            until,
        } => {
            let s = subject_for(t, medical_id)?;
            super::federation::add_consent_for(
                t,
                s.pid,
                &crate::access::ConsentRecord {
                    institution: Some(institution),
                    purpose: Some(iryo_proto::federation::Purpose::Treatment),
                    allow: true,
                    expires_at: Some(until),
                    at: n.at,
                    origin: crate::access::ConsentOrigin::Visit(institution),
                },
            )?;
        }
        NoticeKind::Visited {
            institution,
            medical_id,
            date,
            eligible,
        } => {
            let s = subject_for(t, medical_id)?;
            t.append_service_use(
                s.pid,
                &crate::registry::ServiceUse {
                    institution,
                    date,
                    eligible,
                    at: n.at,
                },
            )?;
        }
        // Only logged: My Portal's access log shows it.
        NoticeKind::StaffRead { medical_id, .. } => {
            subject_for(t, medical_id)?;
        }
        NoticeKind::PortalCode {
            medical_id,
            hash,
            expires,
        } => {
            let s = subject_for(t, medical_id)?;
            super::portal::set_activation_hash(t, s.pid, hash, expires)?;
            // Not logged: the hash would let anyone who reads the log try codes
            // offline. The registry records the letter in the person's history.
            return Ok(Applied::New);
        }
    }
    t.audit_append(&LogEntry::RegistryNotice {
        notice: signed.clone(),
    })?;
    Ok(Applied::New)
}

/// Applies `notices` in one transaction; the number of the notice expected next.
pub(crate) fn apply_notices(
    t: &mut (impl RegistryTx + ?Sized),
    notices: &[Signed<RegistryNotice>],
    registry: &VerifyingKey,
) -> Result<u64> {
    for n in notices {
        apply_notice(t, n, registry)?;
    }
    expected_notice(t)
}

/// The state of the ID of the person or subject `pid` on `date`.
pub(crate) fn state_of(
    t: &mut (impl RegistryTx + ?Sized),
    pid: u64,
    date: NaiveDate,
    retention: u32,
) -> Result<IdState> {
    match t.subject(pid)? {
        Some(s) => Ok(s.id_state(date, retention)),
        None => Ok(t.person(pid)?.id_state(date, retention)),
    }
}

impl super::Store {
    /// Applies the registry's notices in order (docs/roles.md); the number expected next.
    pub fn accept_registry_notices(
        &self,
        notices: &[Signed<RegistryNotice>],
        registry: &VerifyingKey,
    ) -> Result<u64> {
        self.write(|t| apply_notices(t, notices, registry))
    }

    /// The subject `id` names, if this store has one.
    pub fn subject_by_medical_id(&self, id: MedicalId) -> Result<Option<Subject>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let entry: Option<IdEntry> = match tx
            .open_table(super::tables::MEDICAL_IDS)?
            .get(id.as_u64())?
        {
            Some(v) => Some(super::decode(v.value())?),
            None => None,
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        let subjects = match tx.open_table(super::tables::SUBJECTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match subjects.get(entry.pid)? {
            Some(v) => Ok(Some(super::decode(v.value())?)),
            None => Ok(None),
        }
    }
}

impl super::Store {
    /// Up to `n` of this registry's notices from number `from` on, oldest first.
    pub fn notices_to_tell(&self, from: u64, n: usize) -> Result<Vec<RegistryNotice>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(super::tables::REGISTRY_OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in t.range(from..)?.take(n) {
            out.push(super::decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// Forgets the notices numbered below `expected`, which the authority applied.
    pub fn forget_told(&self, expected: u64) -> Result<()> {
        self.write(|t| {
            let outbox = t.registry_outbox.open_mut()?;
            outbox.retain_in(..expected, |_, _| false)?;
            Ok(())
        })
    }
}
