//! What the audit log records (proposal §4-3, 5): every exchange as both ends reported it,
//! every grant the agency issued or refused, and every eligibility check. Each entry is
//! a leaf of the RFC 6962 tree; its canonical encoding is what the leaf hash covers.

use iryo_proto::eligibility::Reason;
use iryo_proto::federation::{Notification, Purpose, Time, TreeHead};
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
    /// An operator read a person's data: bound to the person, so that it shows in
    /// their access log. Names what was read, never the data itself (no My Number).
    OperatorRead {
        operator: String,
        medical_id: MedicalId,
        what: String,
        at: Time,
    },
    /// A source's signed report of a fetch it refused: attempted access.
    AccessRefused {
        from: InstitutionCode,
        report: Signed<iryo_proto::federation::RefusalReport>,
    },
    /// What the registry told the exchange authority, as signed and received.
    RegistryNotice {
        notice: Signed<iryo_proto::roles::RegistryNotice>,
    },
}

impl LogEntry {
    /// The patient this entry concerns, for the per-patient index.
    pub fn medical_id(&self) -> Option<MedicalId> {
        match self {
            LogEntry::Notification { notification, .. } => {
                notification.open_unverified().ok().map(|n| n.medical_id)
            }
            LogEntry::AccessRefused { report, .. } => {
                report.open_unverified().ok().map(|r| r.medical_id)
            }
            LogEntry::GrantIssued { medical_id, .. }
            | LogEntry::GrantRefused { medical_id, .. }
            | LogEntry::OperatorRead { medical_id, .. } => Some(*medical_id),
            LogEntry::RegistryNotice { notice } => notice
                .open_unverified()
                .ok()
                .and_then(|n| n.kind.medical_ids().first().copied()),
            LogEntry::Eligibility { .. } | LogEntry::Operator { .. } => None,
        }
    }

    pub fn canonical(&self) -> Vec<u8> {
        iryo_proto::signed::canonical(self)
    }
}

/// A signed tree head as a third party reads it: size, root and time, and the
/// signature with the key that made it and the bytes it covers (domain ‖ 0x00 ‖ body),
/// every hash and key in hex.
pub fn head_json(head: &Signed<TreeHead>) -> serde_json::Value {
    use iryo_proto::merkle::to_hex;
    use iryo_proto::signed::Statement;
    let opened = head.open_unverified().ok();
    serde_json::json!({
        "size": opened.as_ref().map(|h| h.size),
        "root": opened.as_ref().map(|h| to_hex(&h.root)),
        "at": opened.as_ref().map(|h| h.at),
        "domain": TreeHead::DOMAIN,
        "body": to_hex(&head.body),
        "signer": to_hex(&head.signer),
        "signature": to_hex(&head.signature),
    })
}

/// An entry with its RFC 6962 inclusion proof against a signed head, as a third party
/// checks it: the entry's bytes and leaf hash, the path, the head (`head_json`).
pub fn proof_json(
    index: u64,
    entry: &LogEntry,
    head: &Signed<TreeHead>,
    proof: &[iryo_proto::merkle::Hash],
) -> serde_json::Value {
    use iryo_proto::merkle::{leaf_hash, to_hex};
    let bytes = entry.canonical();
    serde_json::json!({
        "index": index,
        "entry": entry,
        "entry_hex": to_hex(&bytes),
        "leaf_hash": to_hex(&leaf_hash(&bytes)),
        "tree_head": head_json(head),
        "proof": proof.iter().map(|h| to_hex(h)).collect::<Vec<_>>(),
    })
}
