//! Deciding a grant inside a write: the requester's and the source's memberships as
//! the transaction sees them, the patient's ID state and consent, the decision logged
//! and, when given, the grant kept for a keyed retry with its log position.

use super::federation::{GrantQuery, GrantRecord};
use super::registry_tx::RegistryTx;
use super::{Result, StoreError};
use crate::access::{consent_allows, decide_grant, GrantAsk};
use crate::audit::LogEntry;
use crate::registry::{IdEntry, IdStatus};
use ed25519_dalek::SigningKey;
use iryo_proto::federation::{
    Grant, GrantPosition, LoggedGrant, Membership, Purpose, Role, Time, MAX_GRANT_SECONDS,
};
use iryo_proto::signed::Signed;
use iryo_proto::wire::{Refusal, RefusalReason};

/// A grant decided and logged, not yet signed.
#[derive(Debug, Clone)]
pub struct IssuedGrant {
    /// The grant.
    pub grant: Grant,
    /// Its entry's index in the audit log; `None` for a grant kept for a retry from
    /// before positions were kept.
    pub index: Option<u64>,
}

impl IssuedGrant {
    /// The grant and its position, signed by `agency`.
    pub fn sign(&self, agency: &SigningKey) -> LoggedGrant {
        LoggedGrant {
            grant: Signed::sign(&self.grant, agency),
            position: self.index.map(|index| {
                Signed::sign(
                    &GrantPosition {
                        grant_id: self.grant.id,
                        index,
                    },
                    agency,
                )
            }),
        }
    }
}

/// Decides a grant inside a write, logs the decision, and signs the grant when given.
/// `rules` are the retention years, the default consent policy and the seconds a grant
/// lasts (capped at `MAX_GRANT_SECONDS`).
pub(crate) fn grant_in(
    t: &mut (impl RegistryTx + ?Sized),
    requester: &Membership,
    query: &GrantQuery,
    now: Time,
    (retention, policy, grant_seconds): (u32, crate::access::DefaultPolicy, i64),
) -> Result<std::result::Result<IssuedGrant, Refusal>> {
    let GrantQuery {
        medical_id,
        source,
        purpose,
        ref reason,
        ..
    } = *query;
    let scope = super::idempotency::grant_scope(requester.code, query)?;
    if let Some(scope) = &scope {
        if let Some(grant) = super::idempotency::kept_grant(t, scope, now)? {
            return Ok(Ok(grant));
        }
    }

    let ask = GrantAsk {
        requester: requester.code,
        source,
        purpose,
        reason: reason.clone(),
    };
    let decision = (|| -> Result<std::result::Result<(), Refusal>> {
        // The requester's membership as this transaction sees it: the caller's copy may
        // predate a revocation by another process on the same database.
        match t.institution(requester.code)? {
            Some(r) => {
                if let Err(refusal) = crate::service::handler::admit(&r, now) {
                    return Ok(Err(refusal));
                }
            }
            None => {
                return Ok(Err(Refusal::new(
                    RefusalReason::NotMember,
                    "no membership for the requester",
                )));
            }
        }
        if !requester.roles.contains(&Role::Requester) {
            return Ok(Err(Refusal::new(
                RefusalReason::RoleMissing,
                "the requester may not request records",
            )));
        }
        match t.institution(source)? {
            Some(r)
                if r.active(now)?
                    .is_some_and(|m| m.roles.contains(&Role::Source)) => {}
            Some(_) => {
                return Ok(Err(Refusal::new(
                    RefusalReason::UnknownInstitution,
                    format!("source {source} is revoked, expired or serves no records"),
                )))
            }
            None => {
                return Ok(Err(Refusal::new(
                    RefusalReason::UnknownInstitution,
                    format!("source {source} is not registered"),
                )))
            }
        }
        let mut entry = t.id_entry(medical_id)?;
        if entry.is_none() && t.role() == crate::config::ServiceRole::Authority {
            // The authority does not learn which IDs were issued (docs/roles.md).
            let s = super::subjects::subject_for(t, medical_id)?;
            entry = Some(IdEntry {
                pid: s.pid,
                status: IdStatus::Current,
            });
        }
        let Some(entry) = entry else {
            return Ok(Err(Refusal::new(
                RefusalReason::UnknownPatient,
                format!("medical ID {medical_id} is not registered"),
            )));
        };
        if let IdStatus::Changed { successor } = entry.status {
            return Ok(Err(Refusal::new(
                RefusalReason::UnknownPatient,
                format!("medical ID {medical_id} was replaced by {successor}"),
            )));
        }
        let state = super::subjects::state_of(t, entry.pid, crate::registry::today(), retention)?;
        let consented = consent_allows(
            &t.consents_of(entry.pid)?,
            requester.code,
            purpose,
            now,
            policy,
        );
        Ok(decide_grant(&ask, state, consented))
    })()?;
    match decision {
        Ok(()) => {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(|e| StoreError::Random(e.to_string()))?;
            let micros = chrono::Utc::now().timestamp_micros().max(0) as u64;
            let id = iryo_proto::federation::ordered_id(micros, random);
            let grant = Grant {
                id,
                requester: requester.code,
                requester_key: requester.public_key,
                source,
                medical_id,
                purpose,
                reason: if purpose == Purpose::Emergency {
                    reason.clone()
                } else {
                    None
                },
                issued_at: now,
                expires_at: now + grant_seconds.clamp(1, MAX_GRANT_SECONDS),
            };
            let index = t.audit_append(&LogEntry::GrantIssued {
                grant_id: id,
                requester: requester.code,
                source,
                medical_id,
                purpose,
                emergency_reason: grant.reason.clone(),
                at: now,
            })?;
            let record = GrantRecord {
                grant: grant.clone(),
                disclosed: None,
                received: None,
            };
            t.put_grant(&record)?;
            if let Some(scope) = scope {
                super::idempotency::keep(
                    t,
                    scope,
                    super::idempotency::Kept::LoggedGrant(Box::new(grant.clone()), index),
                    now,
                )?;
            }
            Ok(Ok(IssuedGrant {
                grant,
                index: Some(index),
            }))
        }
        Err(refusal) => {
            t.audit_append(&LogEntry::GrantRefused {
                requester: requester.code,
                source,
                medical_id,
                purpose,
                reason: refusal.reason,
                at: now,
            })?;
            Ok(Err(refusal))
        }
    }
}
