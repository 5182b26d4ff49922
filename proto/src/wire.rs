//! What travels between nodes and the directory: protocol names, the request and
//! response of each protocol, and the size limit of each message. Bodies are CBOR on the
//! wire (libp2p request-response); statements inside them are signed postcard.

use crate::eligibility::{CheckAnswer, CheckRequest};
use crate::federation::{Grant, GrantRefusal, Membership, Notification, Purpose, Time};
use crate::signed::Signed;
use crate::{InstitutionCode, MedicalId};
use serde::{Deserialize, Serialize};

pub const DIRECTORY_PROTOCOL: &str = "/iryo/directory/1";
pub const EXCHANGE_PROTOCOL: &str = "/iryo/exchange/1";

/// A batch of notifications is the largest directory request.
pub const MAX_DIRECTORY_REQUEST: u64 = 512 * 1024;
pub const MAX_DIRECTORY_RESPONSE: u64 = 256 * 1024;
/// A fetch carries one grant.
pub const MAX_EXCHANGE_REQUEST: u64 = 16 * 1024;
/// One patient's records from one institution.
pub const MAX_EXCHANGE_RESPONSE: u64 = 16 * 1024 * 1024;
/// Eligibility checks a node sends in one request.
pub const MAX_CHECKS_PER_REQUEST: usize = 512;
/// Notifications a node sends in one request.
pub const MAX_NOTIFICATIONS_PER_REQUEST: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryRequest {
    /// The membership of an institution, to find and trust its node.
    Resolve { code: InstitutionCode },
    /// An eligibility check; it may carry the consent the patient gave at the
    /// reception desk (`CheckRequest::visit_consent`).
    Eligibility { request: CheckRequest },
    /// Checks that arrived at a node together, sent as one request (at most
    /// `MAX_CHECKS_PER_REQUEST`); answered in the same order.
    EligibilityBatch { requests: Vec<CheckRequest> },
    /// The patient's consent as recorded.
    Consent { medical_id: MedicalId },
    /// Permission to fetch a patient's records from a source.
    Grant {
        medical_id: MedicalId,
        source: InstitutionCode,
        purpose: Purpose,
        reason: Option<String>,
    },
    /// Signed notifications of exchanges, from the outbox.
    Notify {
        notifications: Vec<Signed<Notification>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryResponse {
    /// `None` when the code is unknown, revoked or expired.
    Membership(Option<Signed<Membership>>),
    Eligibility(CheckAnswer),
    EligibilityBatch(Vec<CheckAnswer>),
    Consent(Vec<ConsentView>),
    Grant(Signed<Grant>),
    /// Ids the directory now holds (newly logged or logged before).
    Acknowledged {
        ids: Vec<[u8; 16]>,
    },
    Refused(Refusal),
}

/// One consent record as the directory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    /// `None` for every institution.
    pub institution: Option<InstitutionCode>,
    /// `None` for every purpose.
    pub purpose: Option<Purpose>,
    pub allow: bool,
    pub expires_at: Option<Time>,
    pub at: Time,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeRequest {
    /// The records of `medical_id` for `purpose`, under `grant`.
    Fetch {
        medical_id: MedicalId,
        purpose: Purpose,
        grant: Signed<Grant>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExchangeResponse {
    /// A FHIR R4 Bundle (JSON).
    Records {
        #[serde(with = "serde_bytes")]
        bundle: Vec<u8>,
    },
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    #[error("not a member")]
    NotMember,
    #[error("membership revoked")]
    Revoked,
    #[error("no consent")]
    NoConsent,
    #[error("unknown patient")]
    UnknownPatient,
    #[error("medical ID retired")]
    Retired,
    #[error("deceased: research only")]
    Deceased,
    #[error("emergency access needs a written reason")]
    ReasonRequired,
    #[error("unknown institution")]
    UnknownInstitution,
    #[error("the institution may not do this")]
    RoleMissing,
    #[error("grant refused: {0}")]
    Grant(GrantRefusal),
    #[error("bad request")]
    BadRequest,
    #[error("internal error")]
    Internal,
}
