//! What the audit log records (proposal §4-3, 5): every exchange as both ends reported it,
//! every grant the agency issued or refused, and every eligibility check. Each entry is
//! a leaf of the RFC 6962 tree; its canonical encoding is what the leaf hash covers.

use iryo_proto::eligibility::Reason;
use iryo_proto::federation::{Notification, Purpose, Time};
use iryo_proto::signed::Signed;
use iryo_proto::wire::RefusalReason;
use iryo_proto::{InstitutionCode, MedicalId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// A node's signed account of an exchange, as received and verified.
    Notification {
        from: InstitutionCode,
        notification: Signed<Notification>,
    },
    GrantIssued {
        grant_id: [u8; 16],
        requester: InstitutionCode,
        source: InstitutionCode,
        medical_id: MedicalId,
        purpose: Purpose,
        emergency_reason: Option<String>,
        at: Time,
    },
    GrantRefused {
        requester: InstitutionCode,
        source: InstitutionCode,
        medical_id: MedicalId,
        purpose: Purpose,
        reason: RefusalReason,
        at: Time,
    },
    Eligibility {
        institution: InstitutionCode,
        medical_id: Option<MedicalId>,
        reason: Reason,
        at: Time,
    },
    /// An operator's action on the registry, with the operator's identity.
    Operator {
        operator: String,
        action: String,
        at: Time,
    },
}

impl LogEntry {
    /// The patient this entry concerns, for the per-patient index.
    pub fn medical_id(&self) -> Option<MedicalId> {
        match self {
            LogEntry::Notification { notification, .. } => {
                notification.open_unverified().ok().map(|n| n.medical_id)
            }
            LogEntry::GrantIssued { medical_id, .. }
            | LogEntry::GrantRefused { medical_id, .. } => Some(*medical_id),
            LogEntry::Eligibility { .. } | LogEntry::Operator { .. } => None,
        }
    }

    pub fn canonical(&self) -> Vec<u8> {
        iryo_proto::signed::canonical(self)
    }
}
