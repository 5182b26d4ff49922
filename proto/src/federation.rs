//! The statements the agency and the institutions sign: memberships (who may take part),
//! access grants (who may read whose records, why, until when), exchange notifications
//! (who did read them) and the audit log's tree heads.

use crate::signed::{Signed, Statement};
use crate::{InstitutionCode, MedicalId, PointTableKind};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Seconds since the Unix epoch, UTC.
pub type Time = i64;

/// Why records are asked for; consent is given per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Care of the patient at the requesting institution.
    Treatment,
    /// A referral from or to the requesting institution.
    Referral,
    /// Research; asked for and consented to separately.
    Research,
    /// Break-glass: served without consent, with a written reason, flagged in the log.
    Emergency,
}

impl Purpose {
    /// Every purpose, in order.
    pub const ALL: [Purpose; 4] = [
        Purpose::Treatment,
        Purpose::Referral,
        Purpose::Research,
        Purpose::Emergency,
    ];

    /// The name used in configuration, on the wire and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::Referral => "referral",
            Purpose::Research => "research",
            Purpose::Emergency => "emergency",
        }
    }

    /// The purpose named `s` (`treatment`, `referral`, `research`, `emergency`).
    pub fn parse(s: &str) -> Option<Self> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// What a member institution may do in exchanges.
pub enum Role {
    /// Serves its patients' records to other institutions.
    Source,
    /// Asks other institutions for records.
    Requester,
}

/// What an institution's node sends to be registered: its code, name, key and where it
/// listens, signed by the node's own key to prove it holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The institution code the node asks to represent.
    pub code: InstitutionCode,
    /// The institution's name, as the node's operator typed it.
    pub name: String,
    /// The node's Ed25519 public key.
    pub public_key: [u8; 32],
    /// libp2p multiaddrs peers should dial.
    pub addresses: Vec<String>,
    /// When the request was made.
    pub at: Time,
}

impl Statement for Registration {
    const DOMAIN: &'static str = "iryo/registration/1";
}

/// The agency's word that a key speaks for an institution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The member institution.
    pub code: InstitutionCode,
    /// Its name, as registered.
    pub name: String,
    /// Its fee schedule, from the code.
    pub kind: PointTableKind,
    /// The Ed25519 key its node proves in every TLS handshake.
    pub public_key: [u8; 32],
    /// libp2p multiaddrs the node listens on.
    pub addresses: Vec<String>,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The agency's serial number of this membership.
    pub serial: u64,
    /// Valid from this moment.
    pub not_before: Time,
    /// Valid until this moment.
    pub not_after: Time,
}

impl Statement for Membership {
    const DOMAIN: &'static str = "iryo/membership/1";
}

impl Membership {
    /// Whether the membership is valid at `now`.
    pub fn valid_at(&self, now: Time) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether the membership is valid at `now` give or take `tolerance` seconds of
    /// clock difference with the agency that signed it.
    pub fn valid_within(&self, now: Time, tolerance: Time) -> bool {
        self.not_before <= now.saturating_add(tolerance)
            && now.saturating_sub(tolerance) <= self.not_after
    }
}

/// The layout of grant and notification ids: the moment of issue in microseconds,
/// big-endian, then eight random bytes. Tables keyed by these ids (grants and their
/// pairing, single-use marks, de-duplication) then take each new key at their end, so a
/// commit rewrites the last few B-tree pages instead of one random page per key; the
/// random half keeps ids unique and unguessable.
pub fn ordered_id(micros: u64, random: [u8; 8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&micros.to_be_bytes());
    id[8..].copy_from_slice(&random);
    id
}

/// Permission for one requester to fetch one patient's records from one source, for one
/// purpose, once, within minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Unique and unguessable (`ordered_id`); also the nonce that makes the grant
    /// single-use.
    pub id: [u8; 16],
    /// The institution allowed to fetch.
    pub requester: InstitutionCode,
    /// The key its node must authenticate with.
    pub requester_key: [u8; 32],
    /// The institution that serves the records.
    pub source: InstitutionCode,
    /// The patient.
    pub medical_id: MedicalId,
    /// Why the records are fetched.
    pub purpose: Purpose,
    /// The written reason, required for emergency access.
    pub reason: Option<String>,
    /// When the agency issued the grant.
    pub issued_at: Time,
    /// When it stops being valid (at most `MAX_GRANT_SECONDS` later).
    pub expires_at: Time,
}

impl Statement for Grant {
    const DOMAIN: &'static str = "iryo/grant/1";
}

/// Where the agency logged a grant it issued: the index of the grant's entry in the
/// audit log. Signed beside the grant (a grant is stored whole, so its position cannot
/// be one of its fields); anyone holding the log can check that the entry at `index`
/// names `grant_id`, so a position that lies is the agency's own signed evidence
/// against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantPosition {
    /// The grant's id.
    pub grant_id: [u8; 16],
    /// Its entry's index in the audit log, from 0.
    pub index: u64,
}

impl Statement for GrantPosition {
    const DOMAIN: &'static str = "iryo/grant-position/1";
}

/// A grant as the directory hands it out: signed, with its signed log position
/// (`None` from a directory that does not state it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedGrant {
    /// The grant.
    pub grant: Signed<Grant>,
    /// Where its issue is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Signed<GrantPosition>>,
}

/// Longest validity the agency gives a grant.
pub const MAX_GRANT_SECONDS: i64 = 300;
/// Clock difference tolerated between agency and nodes unless a node is configured
/// otherwise (`FetchContext::clock_tolerance`).
pub const CLOCK_SKEW_SECONDS: i64 = 30;
/// The largest clock tolerance a node may be configured with: past it, an expired
/// grant would stay usable for longer than grants last.
pub const MAX_CLOCK_TOLERANCE_SECONDS: i64 = MAX_GRANT_SECONDS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Why a source refuses a grant.
pub enum GrantRefusal {
    #[error("the grant is not signed by the agency")]
    /// Signed by a key other than the agency's.
    NotAgency,
    #[error("the grant's signature does not verify")]
    /// The signature does not verify.
    BadSignature,
    #[error("the grant is for another requester")]
    /// Issued for another requester's key.
    OtherRequester,
    #[error("the grant is for another source")]
    /// Issued for another source.
    OtherSource,
    #[error("the grant is for another patient")]
    /// Issued for another patient.
    OtherPatient,
    #[error("the grant is for another purpose")]
    /// Issued for another purpose.
    OtherPurpose,
    #[error("the grant has expired")]
    /// Past its expiry (and the clock skew allowed).
    Expired,
    #[error("the grant is not valid yet")]
    /// Issued in the future (beyond the clock skew allowed).
    NotYetValid,
    #[error("the grant was used before")]
    /// Used before at this source.
    Replayed,
    #[error("the grant's validity is longer than the agency gives")]
    /// Valid for longer than the agency ever grants.
    TooLong,
}

/// What the source node knows when a fetch arrives: who is asking (the key TLS
/// authenticated), who it is, and what was asked for.
pub struct FetchContext {
    /// The agency's key, configured at the node.
    pub agency: VerifyingKey,
    /// The requester's key, as TLS authenticated it.
    pub requester_key: [u8; 32],
    /// This source's institution code.
    pub me: InstitutionCode,
    /// The patient asked for.
    pub medical_id: MedicalId,
    /// The purpose asked for.
    pub purpose: Purpose,
    /// The source's clock.
    pub now: Time,
    /// Seconds of clock difference with the agency tolerated (`CLOCK_SKEW_SECONDS`
    /// unless configured).
    pub clock_tolerance: Time,
}

/// Verifies a grant offline at the source: agency signature, bound to the authenticated
/// requester, to this source, to the patient and purpose asked, within its time. The
/// caller checks single use against its own record of grant ids.
pub fn check_grant(g: &Signed<Grant>, cx: &FetchContext) -> Result<Grant, GrantRefusal> {
    if g.signer != cx.agency.to_bytes() {
        return Err(GrantRefusal::NotAgency);
    }
    let grant = g
        .verify(&cx.agency)
        .map_err(|_| GrantRefusal::BadSignature)?;
    if grant.requester_key != cx.requester_key {
        return Err(GrantRefusal::OtherRequester);
    }
    if grant.source != cx.me {
        return Err(GrantRefusal::OtherSource);
    }
    if grant.medical_id != cx.medical_id {
        return Err(GrantRefusal::OtherPatient);
    }
    if grant.purpose != cx.purpose {
        return Err(GrantRefusal::OtherPurpose);
    }
    if grant.expires_at - grant.issued_at > MAX_GRANT_SECONDS {
        return Err(GrantRefusal::TooLong);
    }
    if cx.now.saturating_add(cx.clock_tolerance) < grant.issued_at {
        return Err(GrantRefusal::NotYetValid);
    }
    if cx.now > grant.expires_at.saturating_add(cx.clock_tolerance) {
        return Err(GrantRefusal::Expired);
    }
    Ok(grant)
}

/// The log position of `grant` when `position` is the agency's statement about it;
/// `None` for anything else (another signer, another grant, a bad signature), which a
/// source treats as a position not stated.
pub fn grant_position(
    position: Option<&Signed<GrantPosition>>,
    grant: &Grant,
    agency: &VerifyingKey,
) -> Option<u64> {
    let p = position?.verify(agency).ok()?;
    (p.grant_id == grant.id).then_some(p.index)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Which end of an exchange reports it.
pub enum Side {
    /// Written by the source: records left here.
    Disclosed,
    /// Written by the requester: records arrived here.
    Received,
}

/// One end's signed account of an exchange. Never carries clinical content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique id of the notification (`ordered_id`).
    pub id: [u8; 16],
    /// Which end writes it.
    pub side: Side,
    /// The grant the exchange used.
    pub grant_id: [u8; 16],
    /// The patient.
    pub medical_id: MedicalId,
    /// The institution the records came from.
    pub source: InstitutionCode,
    /// The institution that asked for them.
    pub requester: InstitutionCode,
    /// Why they were asked for.
    pub purpose: Purpose,
    /// Whether it was emergency access without consent.
    pub emergency: bool,
    /// How many FHIR resources crossed.
    pub record_count: u32,
    /// FHIR resource types, e.g. "Observation", never their content.
    pub resource_types: Vec<String>,
    /// When the exchange happened at this end.
    pub at: Time,
}

impl Statement for Notification {
    const DOMAIN: &'static str = "iryo/notification/1";
}

/// A source's signed account of a fetch it refused: attempted access, which the
/// patient and the agency see in the audit log. What the grant claimed is reported as
/// claimed; the key is the one TLS authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalReport {
    /// Unique id of the report (`ordered_id`).
    pub id: [u8; 16],
    /// The id the grant carried (all zeros when its body did not decode).
    pub grant_id: [u8; 16],
    /// The patient the fetch asked for.
    pub medical_id: MedicalId,
    /// The institution that refused: the reporter.
    pub source: InstitutionCode,
    /// The requester the grant named, when its body decoded.
    pub requester: Option<InstitutionCode>,
    /// The key the requester's node authenticated with.
    pub requester_key: [u8; 32],
    /// The purpose the fetch asked for.
    pub purpose: Purpose,
    /// Why it was refused.
    pub reason: crate::wire::RefusalReason,
    /// When.
    pub at: Time,
}

impl Statement for RefusalReport {
    const DOMAIN: &'static str = "iryo/refusal/1";
}

/// The agency's signed statement of the audit log's size and root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// The number of entries in the log.
    pub size: u64,
    /// The RFC 6962 root hash of those entries.
    pub root: [u8; 32],
    /// When the head was signed.
    pub at: Time,
}

impl Statement for TreeHead {
    const DOMAIN: &'static str = "iryo/tree-head/1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn grant(agency: &SigningKey, requester: &SigningKey) -> (Signed<Grant>, FetchContext) {
        let g = Grant {
            id: [9; 16],
            requester: InstitutionCode::parse("0110113719").unwrap(),
            requester_key: requester.verifying_key().to_bytes(),
            source: InstitutionCode::from_parts(13, PointTableKind::Medical, 1).unwrap(),
            medical_id: MedicalId::from_body(42),
            purpose: Purpose::Treatment,
            reason: None,
            issued_at: 1000,
            expires_at: 1300,
        };
        let cx = FetchContext {
            agency: agency.verifying_key(),
            requester_key: g.requester_key,
            me: g.source,
            medical_id: g.medical_id,
            purpose: g.purpose,
            now: 1100,
            clock_tolerance: CLOCK_SKEW_SECONDS,
        };
        (Signed::sign(&g, agency), cx)
    }

    #[test]
    fn a_good_grant_passes_and_every_misbinding_is_refused() {
        let agency = SigningKey::from_bytes(&[1; 32]);
        let requester = SigningKey::from_bytes(&[2; 32]);
        let (g, cx) = grant(&agency, &requester);
        assert!(check_grant(&g, &cx).is_ok());
        let refuse = |f: &dyn Fn(&mut FetchContext)| {
            let (g, mut cx) = grant(&agency, &requester);
            f(&mut cx);
            check_grant(&g, &cx).unwrap_err()
        };
        assert_eq!(
            refuse(&|c| c.requester_key = [3; 32]),
            GrantRefusal::OtherRequester
        );
        assert_eq!(
            refuse(&|c| c.me = InstitutionCode::parse("0110113719").unwrap()),
            GrantRefusal::OtherSource
        );
        assert_eq!(
            refuse(&|c| c.medical_id = MedicalId::from_body(43)),
            GrantRefusal::OtherPatient
        );
        assert_eq!(
            refuse(&|c| c.purpose = Purpose::Research),
            GrantRefusal::OtherPurpose
        );
        assert_eq!(refuse(&|c| c.now = 2000), GrantRefusal::Expired);
        assert_eq!(refuse(&|c| c.now = 900), GrantRefusal::NotYetValid);
        // The tolerance is the context's: 1300 + 10 is the last second at 10 s.
        let tolerant = |now, tol| {
            let (g, mut cx) = grant(&agency, &requester);
            (cx.now, cx.clock_tolerance) = (now, tol);
            check_grant(&g, &cx)
        };
        assert!(tolerant(1310, 10).is_ok());
        assert_eq!(tolerant(1311, 10).unwrap_err(), GrantRefusal::Expired);
        assert!(tolerant(1311, 30).is_ok());
        assert!(tolerant(990, 10).is_ok());
        assert_eq!(tolerant(989, 10).unwrap_err(), GrantRefusal::NotYetValid);
        // Signed by someone other than the agency, even with the same content.
        let forger = SigningKey::from_bytes(&[4; 32]);
        let (forged, cx) = grant(&forger, &requester);
        let cx = FetchContext {
            agency: agency.verifying_key(),
            ..cx
        };
        assert_eq!(
            check_grant(&forged, &cx).unwrap_err(),
            GrantRefusal::NotAgency
        );
    }

    proptest::proptest! {
        /// A later moment sorts after an earlier one whatever the random halves, and
        /// the random half survives intact, so ids of one moment still differ.
        #[test]
        fn ordered_ids_sort_by_time(a in 0u64..u64::MAX, ra: [u8; 8], rb: [u8; 8]) {
            let (x, y) = (ordered_id(a, ra), ordered_id(a + 1, rb));
            proptest::prop_assert!(x < y);
            proptest::prop_assert_eq!(&x[8..], &ra[..]);
        }
    }
}
