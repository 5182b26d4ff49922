//! What travels between nodes and the directory: protocol names, the request and
//! response of each protocol, the size limit of each message, and how a message is
//! framed. Bodies are CBOR; statements inside them are signed postcard.
//!
//! A peer keeps one long-lived libp2p stream per protocol to each peer it asks, and
//! many requests share it: each message is a length-delimited frame (the length is the
//! transport's, see `FRAME_LENGTH_BYTES`) holding a request id and the CBOR body, and a
//! response carries the id of its request. The answering side opens with one empty
//! frame, its welcome, once it has taken the stream on. A stream per request, as libp2p's
//! request-response does, cost a stream's opening, negotiation and closing for every
//! request: more than a third of the CPU of a fetch.

use crate::eligibility::{CheckAnswer, CheckRequest};
use crate::federation::{
    Grant, GrantPosition, GrantRefusal, LoggedGrant, Membership, Notification, Purpose,
    RefusalReport, Time, TreeHead,
};
use crate::signed::Signed;
use crate::{InstitutionCode, MedicalId};
use serde::{Deserialize, Serialize};

/// The protocol nodes use to ask the directory.
pub const DIRECTORY_PROTOCOL: &str = "/iryo/directory/1";
/// The protocol requesters use to fetch records from sources.
pub const EXCHANGE_PROTOCOL: &str = "/iryo/exchange/1";

/// A batch of notifications is the largest directory request.
pub const MAX_DIRECTORY_REQUEST: u64 = 512 * 1024;
/// The largest directory answer.
pub const MAX_DIRECTORY_RESPONSE: u64 = 256 * 1024;
/// A fetch carries one grant.
pub const MAX_EXCHANGE_REQUEST: u64 = 16 * 1024;
/// One patient's records from one institution.
pub const MAX_EXCHANGE_RESPONSE: u64 = 16 * 1024 * 1024;
/// Eligibility checks a node sends in one request.
pub const MAX_CHECKS_PER_REQUEST: usize = 512;
/// Notifications a node sends in one request.
pub const MAX_NOTIFICATIONS_PER_REQUEST: usize = 512;

/// Bytes of the big-endian length that precedes every frame on a stream.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Bytes of the request id that opens every frame.
pub const FRAME_ID_BYTES: usize = 8;

/// The largest frame that may carry a message of at most `max_message` bytes.
pub const fn max_frame(max_message: u64) -> usize {
    max_message as usize + FRAME_ID_BYTES
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
/// Why a frame could not be made or read.
pub enum FrameError {
    /// A frame of this many bytes cannot hold the 8-byte request id.
    #[error("frame of {0} bytes is shorter than its request id")]
    Short(usize),
    /// A message over the protocol's size limit.
    #[error("message of {size} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The limit in bytes.
        max: u64,
    },
    /// Bytes that are not a CBOR message of the expected type.
    #[error("undecodable message: {0}")]
    Undecodable(String),
}

/// A frame's body: the request id, then `message` as CBOR. Refuses a message larger
/// than `max_message`, as the receiver would.
pub fn encode_frame<T: Serialize>(
    id: u64,
    message: &T,
    max_message: u64,
) -> Result<Vec<u8>, FrameError> {
    let mut out = id.to_be_bytes().to_vec();
    out =
        cbor4ii::serde::to_vec(out, message).map_err(|e| FrameError::Undecodable(e.to_string()))?;
    let size = out.len() - FRAME_ID_BYTES;
    if size as u64 > max_message {
        return Err(FrameError::TooLarge {
            size,
            max: max_message,
        });
    }
    Ok(out)
}

/// The request id of a frame, readable even when its message is not.
pub fn frame_id(frame: &[u8]) -> Result<u64, FrameError> {
    let id: [u8; FRAME_ID_BYTES] = frame
        .get(..FRAME_ID_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Short(frame.len()))?;
    Ok(u64::from_be_bytes(id))
}

/// The request id and message of a frame.
pub fn decode_frame<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<(u64, T), FrameError> {
    let id = frame_id(frame)?;
    let message = cbor4ii::serde::from_slice(&frame[FRAME_ID_BYTES..])
        .map_err(|e| FrameError::Undecodable(e.to_string()))?;
    Ok((id, message))
}

/// A response that can say no: what a peer answers to a request it cannot read or
/// cannot answer in full.
pub trait Answer: Serialize + Sized {
    /// The refusal as this protocol's response.
    fn refused(refusal: Refusal) -> Self;
}

impl Answer for DirectoryResponse {
    fn refused(refusal: Refusal) -> Self {
        DirectoryResponse::Refused(refusal)
    }
}

impl Answer for ExchangeResponse {
    fn refused(refusal: Refusal) -> Self {
        ExchangeResponse::Refused(refusal)
    }
}

/// Reads a request frame. A frame whose message cannot be read gets, as `Err`, the
/// frame of a refusal to send back under the same id, so the asker is not left
/// waiting; `None` when the frame is too short to carry an id.
pub fn read_request<Req: serde::de::DeserializeOwned, Resp: Answer>(
    frame: &[u8],
) -> Result<(u64, Req), Option<Vec<u8>>> {
    decode_frame(frame).map_err(|e| {
        let id = frame_id(frame).ok()?;
        let refusal = Resp::refused(Refusal::new(RefusalReason::BadRequest, e.to_string()));
        encode_frame(id, &refusal, u64::MAX).ok()
    })
}

/// The frame of a response; one too large to send becomes a refusal that says so.
pub fn response_frame<Resp: Answer>(id: u64, response: &Resp, max_response: u64) -> Vec<u8> {
    encode_frame(id, response, max_response).unwrap_or_else(|e| {
        let refusal = Resp::refused(Refusal::new(RefusalReason::Internal, e.to_string()));
        // A refusal is a short message; if even it cannot be encoded, the asker gets
        // an empty frame, which it reads as undecodable.
        encode_frame(id, &refusal, u64::MAX).unwrap_or_default()
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// What a node asks the directory (`DIRECTORY_PROTOCOL`).
pub enum DirectoryRequest {
    /// The membership of an institution, to find and trust its node.
    Resolve {
        /// The institution asked about.
        code: InstitutionCode,
    },
    /// An eligibility check; it may carry the consent the patient gave at the
    /// reception desk (`CheckRequest::visit_consent`).
    Eligibility {
        /// The check.
        request: CheckRequest,
    },
    /// Checks that arrived at a node together, sent as one request (at most
    /// `MAX_CHECKS_PER_REQUEST`); answered in the same order.
    EligibilityBatch {
        /// The checks, in the order their answers come back.
        requests: Vec<CheckRequest>,
    },
    /// The patient's consent as recorded.
    Consent {
        /// The patient.
        medical_id: MedicalId,
    },
    /// Permission to fetch a patient's records from a source.
    Grant {
        /// The patient.
        medical_id: MedicalId,
        /// The institution that holds the records.
        source: InstitutionCode,
        /// Why they are asked for.
        purpose: Purpose,
        /// The written reason; required for `Purpose::Emergency`.
        reason: Option<String>,
        /// The EMR's key for this fetch: asked again with the same key and the same
        /// request while the grant it got is still valid, the directory answers with
        /// that grant and logs nothing new.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<crate::IdempotencyKey>,
    },
    /// Signed notifications of exchanges, from the outbox.
    Notify {
        /// At most `MAX_NOTIFICATIONS_PER_REQUEST`, each signed by the sender.
        notifications: Vec<Signed<Notification>>,
    },
    /// A source's signed reports of fetches it refused, from its outbox.
    ReportRefusals {
        /// At most `MAX_NOTIFICATIONS_PER_REQUEST`, each signed by the sender.
        reports: Vec<Signed<RefusalReport>>,
    },
    /// The latest signed head of the audit log.
    TreeHead,
    /// An audit log entry with its inclusion proof against the latest signed head.
    AuditProof {
        /// The entry's index, from 0.
        index: u64,
    },
    /// The latest checkpoint witnesses cosigned (c2sp.org/tlog-checkpoint), with a
    /// consistency proof from the tree of `from` entries, the one the asker kept.
    WitnessedCheckpoint {
        /// The size of the checkpoint the asker kept (0 for none).
        from: u64,
    },
    /// The registry's notices to the exchange authority, in order, when the two run
    /// apart (`crate::roles`); sent over a session under the registry's own key. Empty,
    /// it asks which number the authority expects next.
    RegistryNotices {
        /// At most `MAX_NOTIFICATIONS_PER_REQUEST`, each signed by the registry.
        notices: Vec<Signed<crate::roles::RegistryNotice>>,
    },
    /// The active membership of the node whose key this is, for a registry run apart
    /// that admits nodes' eligibility checks; asked over the registry's session.
    MemberByKey {
        /// The node's Ed25519 key, as its TLS handshake authenticated it.
        key: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The directory's answers, one kind per request.
pub enum DirectoryResponse {
    /// `None` when the code is unknown, revoked or expired.
    Membership(Option<Signed<Membership>>),
    /// The answer to `Eligibility`.
    Eligibility(CheckAnswer),
    /// The answers to `EligibilityBatch`, in request order.
    EligibilityBatch(Vec<CheckAnswer>),
    /// The patient's consent records.
    Consent(Vec<ConsentView>),
    /// A grant, signed by the agency, with its signed log position.
    Grant(LoggedGrant),
    /// Ids the directory now holds (newly logged or logged before).
    Acknowledged {
        /// The notification ids held.
        ids: Vec<[u8; 16]>,
    },
    /// The request was refused.
    Refused(Refusal),
    /// The answer to `TreeHead`: signed by the agency.
    TreeHead(Signed<TreeHead>),
    /// The answer to `WitnessedCheckpoint`.
    WitnessedCheckpoint {
        /// The checkpoint as a signed note with its cosignatures; `None` while none
        /// has been cosigned.
        note: Option<String>,
        /// RFC 6962 consistency proof from `from` entries to the checkpoint's size
        /// (empty when `from` is 0 or not smaller).
        proof: Vec<[u8; 32]>,
    },
    /// The answer to `AuditProof`.
    AuditProof {
        /// The entry's index.
        index: u64,
        /// The entry as the log holds it (postcard); its leaf hash is
        /// SHA-256(0x00 ‖ entry).
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
        /// The RFC 6962 inclusion proof, from the leaf up.
        proof: Vec<[u8; 32]>,
        /// The signed head the proof leads to.
        head: Signed<TreeHead>,
    },
    /// The number of the registry notice the authority expects next: every one
    /// before it is applied.
    NoticesApplied {
        /// The next number.
        expected: u64,
    },
}

/// One consent record as the directory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    /// `None` for every institution.
    pub institution: Option<InstitutionCode>,
    /// `None` for every purpose.
    pub purpose: Option<Purpose>,
    /// Whether it allows or refuses.
    pub allow: bool,
    /// When it lapses; `None` for never.
    pub expires_at: Option<Time>,
    /// When it was recorded.
    pub at: Time,
    /// Who recorded it (the patient in the portal, an operator, a visit).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// What a requester asks a source (`EXCHANGE_PROTOCOL`).
pub enum ExchangeRequest {
    /// The records of `medical_id` for `purpose`, under `grant`.
    Fetch {
        /// The patient.
        medical_id: MedicalId,
        /// Why.
        purpose: Purpose,
        /// The agency's grant for this requester, source, patient and purpose.
        grant: Signed<Grant>,
        /// The agency's statement of where the grant is logged: a source that
        /// relies on witnesses serves a grant whose entry is not yet inside a
        /// witnessed checkpoint only while its witnesses are fresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Signed<GrantPosition>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A source's answer to a fetch.
pub enum ExchangeResponse {
    /// A FHIR R4 Bundle (JSON).
    Records {
        #[serde(with = "serde_bytes")]
        /// The Bundle's JSON bytes.
        bundle: Vec<u8>,
    },
    /// The fetch was refused.
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {detail}")]
/// A refusal: a reason to act on and a detail for people.
pub struct Refusal {
    /// What was refused, in a word a program can act on.
    pub reason: RefusalReason,
    /// More, for people; never internal error text.
    pub detail: String,
}

impl Refusal {
    /// A refusal for `reason` with `detail`.
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
/// Why a request was refused (docs/PROTOCOL.md, section 3).
pub enum RefusalReason {
    #[error("not a member")]
    /// The asking key has no valid membership.
    NotMember,
    #[error("membership revoked")]
    /// The membership was revoked.
    Revoked,
    #[error("no consent")]
    /// The patient's consent does not cover the request.
    NoConsent,
    #[error("unknown patient")]
    /// No such medical ID.
    UnknownPatient,
    #[error("medical ID retired")]
    /// The medical ID is retired.
    Retired,
    #[error("deceased: research only")]
    /// The patient has died; research only.
    Deceased,
    #[error("emergency access needs a written reason")]
    /// Emergency access needs a written reason.
    ReasonRequired,
    #[error("unknown institution")]
    /// No such institution.
    UnknownInstitution,
    #[error("the institution may not do this")]
    /// The institution's roles do not allow the request.
    RoleMissing,
    #[error("grant refused: {0}")]
    /// The source refused the grant.
    Grant(GrantRefusal),
    #[error("bad request")]
    /// The request was not understood or breaks a limit.
    BadRequest,
    #[error("internal error")]
    /// The peer could not answer now; try again later.
    Internal,
    #[error("the audit log is not witnessed")]
    /// The source has no checkpoint recent enough that enough witnesses cosigned, or
    /// saw the audit log fork: it serves no records until that is resolved.
    Unwitnessed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_read_back_as_written(id in any::<u64>(), pref in 1u8..=47, n in 0u32..1_000_000, bundle in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let code = InstitutionCode::from_parts(pref, crate::ids::PointTableKind::Medical, n).expect("code");
            let req = DirectoryRequest::Resolve { code };
            let frame = encode_frame(id, &req, MAX_DIRECTORY_REQUEST).expect("fits");
            prop_assert_eq!(frame_id(&frame).expect("id"), id);
            prop_assert_eq!(decode_frame::<DirectoryRequest>(&frame).expect("decodes"), (id, req));
            let resp = ExchangeResponse::Records { bundle };
            let frame = encode_frame(id, &resp, MAX_EXCHANGE_RESPONSE).expect("fits");
            prop_assert!(frame.len() <= max_frame(MAX_EXCHANGE_RESPONSE));
            prop_assert_eq!(decode_frame::<ExchangeResponse>(&frame).expect("decodes"), (id, resp));
        }

        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            match decode_frame::<DirectoryRequest>(&bytes) {
                Ok((id, _)) => prop_assert_eq!(Ok(id), frame_id(&bytes)),
                Err(FrameError::Short(n)) => prop_assert!(n < FRAME_ID_BYTES),
                Err(e) => prop_assert!(matches!(e, FrameError::Undecodable(_)), "{e}"),
            }
        }
    }

    #[test]
    fn oversize_messages_are_not_framed() {
        let resp = ExchangeResponse::Records {
            bundle: vec![b'x'; 2048],
        };
        assert!(matches!(
            encode_frame(1, &resp, 1024),
            Err(FrameError::TooLarge { max: 1024, .. })
        ));
    }

    #[test]
    fn an_unreadable_request_is_refused_under_its_id() {
        let mut frame = 7u64.to_be_bytes().to_vec();
        frame.extend_from_slice(b"GET /records");
        let refusal = read_request::<ExchangeRequest, ExchangeResponse>(&frame)
            .expect_err("not a request")
            .expect("has an id");
        match decode_frame::<ExchangeResponse>(&refusal) {
            Ok((7, ExchangeResponse::Refused(r))) => {
                assert_eq!(r.reason, RefusalReason::BadRequest);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_request::<ExchangeRequest, ExchangeResponse>(&[0; 3]),
            Err(None)
        );
    }

    #[test]
    fn a_response_too_large_becomes_a_refusal() {
        let resp = ExchangeResponse::Records {
            bundle: vec![b'x'; 2048],
        };
        match decode_frame::<ExchangeResponse>(&response_frame(9, &resp, 1024)) {
            Ok((9, ExchangeResponse::Refused(r))) => assert_eq!(r.reason, RefusalReason::Internal),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_shorter_than_an_id_is_refused() {
        assert_eq!(frame_id(&[1, 2, 3]), Err(FrameError::Short(3)));
    }
}
