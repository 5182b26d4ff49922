//! Answers to directory requests from members. Every request is authorised first: the
//! peer's TLS-authenticated key must belong to an active membership.

use crate::store::{InstitutionRecord, Serving};
use iryo_proto::federation::{Membership, Time};
use iryo_proto::wire::{DirectoryRequest, DirectoryResponse, Refusal, RefusalReason};

/// The member behind an authenticated key, or why there is none.
pub fn authorise(
    store: &dyn Serving,
    key: Option<[u8; 32]>,
    now: Time,
) -> Result<Membership, Refusal> {
    let key =
        key.ok_or_else(|| Refusal::new(RefusalReason::NotMember, "the peer's key is not Ed25519"))?;
    let record: Option<InstitutionRecord> = store
        .institution_by_key(&key)
        .map_err(|e| Refusal::new(RefusalReason::Internal, e.to_string()))?;
    let Some(record) = record else {
        return Err(Refusal::new(
            RefusalReason::NotMember,
            "no membership for this key",
        ));
    };
    admit(&record, now)
}

/// Whether a member's record lets it act now: not revoked, within its validity.
pub fn admit(record: &InstitutionRecord, now: Time) -> Result<Membership, Refusal> {
    if record.revoked_at.is_some() {
        return Err(Refusal::new(
            RefusalReason::Revoked,
            "the membership was revoked",
        ));
    }
    match record.active(now) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Refusal::new(
            RefusalReason::NotMember,
            "the membership has expired",
        )),
        Err(e) => {
            tracing::error!(error = %e, "a stored membership does not open");
            Err(Refusal::new(
                RefusalReason::Internal,
                "the directory could not answer",
            ))
        }
    }
}

fn internal(e: impl std::fmt::Display) -> DirectoryResponse {
    tracing::error!(error = %e, "directory request failed");
    DirectoryResponse::Refused(Refusal::new(
        RefusalReason::Internal,
        "the directory could not answer",
    ))
}

/// Every request but checks, grants and notifications, which go through group commit.
pub fn handle(store: &dyn Serving, request: DirectoryRequest, now: Time) -> DirectoryResponse {
    match request {
        DirectoryRequest::Resolve { code } => match store.institution(code) {
            Ok(Some(r)) => match r.active(now) {
                Ok(Some(_)) => DirectoryResponse::Membership(Some(r.membership)),
                Ok(None) => DirectoryResponse::Membership(None),
                Err(e) => internal(e),
            },
            Ok(None) => DirectoryResponse::Membership(None),
            Err(e) => internal(e),
        },
        DirectoryRequest::Consent { medical_id } => match store.consents(medical_id) {
            Ok(list) => DirectoryResponse::Consent(
                list.iter()
                    .map(super::super::access::ConsentRecord::view)
                    .collect(),
            ),
            Err(crate::store::StoreError::UnknownMedicalId(_)) => {
                DirectoryResponse::Refused(Refusal::new(
                    RefusalReason::UnknownPatient,
                    format!("{medical_id} is not registered"),
                ))
            }
            Err(e) => internal(e),
        },
        DirectoryRequest::TreeHead => match store.current_head() {
            Ok((head, _)) => DirectoryResponse::TreeHead(head),
            Err(crate::store::StoreError::EmptyLog) => DirectoryResponse::Refused(Refusal::new(
                RefusalReason::BadRequest,
                "the audit log is empty",
            )),
            Err(e) => internal(e),
        },
        DirectoryRequest::WitnessedCheckpoint { from } => {
            let found = store.witnessed(None).and_then(|kept| match kept {
                Some((size, note)) if from > 0 && from < size => {
                    Ok((Some(note), store.consistency_proof(from, size)?))
                }
                Some((_, note)) => Ok((Some(note), Vec::new())),
                None => Ok((None, Vec::new())),
            });
            match found {
                Ok((note, proof)) => DirectoryResponse::WitnessedCheckpoint { note, proof },
                Err(e) => internal(e),
            }
        }
        DirectoryRequest::AuditProof { index } => {
            let proved = store.current_head().and_then(|(head, size)| {
                Ok((
                    store.audit_entry(index)?,
                    store.inclusion_proof(index, size)?,
                    head,
                ))
            });
            match proved {
                Ok((entry, proof, head)) => DirectoryResponse::AuditProof {
                    index,
                    entry: entry.canonical(),
                    proof,
                    head,
                },
                Err(
                    e @ (crate::store::StoreError::NoAuditEntry(_)
                    | crate::store::StoreError::NotInLog { .. }
                    | crate::store::StoreError::EmptyLog),
                ) => DirectoryResponse::Refused(Refusal::new(
                    RefusalReason::BadRequest,
                    e.to_string(),
                )),
                Err(e) => internal(e),
            }
        }
        DirectoryRequest::ReportRefusals { .. } => DirectoryResponse::Refused(Refusal::new(
            RefusalReason::Internal,
            "refusal reports are taken with the sender's membership",
        )),
        DirectoryRequest::RegistryNotices { .. } | DirectoryRequest::MemberByKey { .. } => {
            DirectoryResponse::Refused(Refusal::new(
                RefusalReason::NotMember,
                "asked by the registry's key alone",
            ))
        }
        DirectoryRequest::Eligibility { .. }
        | DirectoryRequest::EligibilityBatch { .. }
        | DirectoryRequest::Grant { .. }
        | DirectoryRequest::Notify { .. } => DirectoryResponse::Refused(Refusal::new(
            RefusalReason::Internal,
            "checks, grants and notifications are answered by group commit",
        )),
    }
}
