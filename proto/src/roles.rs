//! What the registry tells the exchange authority when the two run apart
//! (docs/roles.md): signed notices, numbered without gaps, naming medical IDs and
//! never a person.

use crate::federation::Time;
use crate::signed::Statement;
use crate::{InstitutionCode, MedicalId};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// One thing the registry tells the authority, signed by the registry's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryNotice {
    /// The notice's number: 1 for the registry's first, then one more each time.
    pub seq: u64,
    /// When the registry decided what it tells.
    pub at: Time,
    /// What it tells.
    pub kind: NoticeKind,
}

impl Statement for RegistryNotice {
    const DOMAIN: &'static str = "iryo/registry-notice/1";
}

/// What a registry notice says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeKind {
    /// `old` was replaced by `new`, for the same person.
    IdChanged {
        /// The ID given up.
        old: MedicalId,
        /// The ID that replaces it.
        new: MedicalId,
    },
    /// The person holding `medical_id` died on `date`.
    Died {
        /// The person's current ID.
        medical_id: MedicalId,
        /// The date of death.
        date: NaiveDate,
    },
    /// A death recorded in error was withdrawn.
    DeathWithdrawn {
        /// The person's current ID.
        medical_id: MedicalId,
    },
    /// The ID was retired for good.
    Retired {
        /// The ID.
        medical_id: MedicalId,
    },
    /// At an eligibility check the patient agreed that `institution` may obtain their
    /// records for treatment until `until` (consent given at the desk).
    VisitConsent {
        /// Where the patient was seen.
        institution: InstitutionCode,
        /// The patient's current ID.
        medical_id: MedicalId,
        /// When the consent lapses.
        until: Time,
    },
    /// The patient was seen at `institution` on `date`: an eligibility check named
    /// them, for My Portal's list of where they were served.
    Visited {
        /// Where the check was made.
        institution: InstitutionCode,
        /// The patient's current ID.
        medical_id: MedicalId,
        /// The day of the visit the institution stated.
        date: NaiveDate,
        /// Whether the patient was found covered.
        eligible: bool,
    },
    /// The registry's staff read the patient's registry record: what the patient's
    /// access log shows, at the authority where My Portal is.
    StaffRead {
        /// The patient's current ID.
        medical_id: MedicalId,
        /// The operator, as their client certificate or the command named them.
        operator: String,
        /// What they read, in the registry's words ("the registry record", …).
        what: String,
    },
    /// A letter gave the patient a one-time code to open My Portal. The notice carries
    /// the code's hash bound to the medical ID (`portal_code_hash`), never the code.
    PortalCode {
        /// The ID the letter was printed for.
        medical_id: MedicalId,
        /// `portal_code_hash(medical_id, code)`.
        hash: [u8; 32],
        /// When the code stops working.
        expires: Time,
    },
}

/// The hash by which the exchange authority knows a portal code: bound to the medical
/// ID, so that one hash never fits another patient, and to its purpose. Letters print
/// the code in groups (`ABCD-EFGH-JKMN`); spaces, hyphens and case do not count.
pub fn portal_code_hash(medical_id: MedicalId, code: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"iryo/portal-code/1\0");
    h.update(medical_id.as_u64().to_be_bytes());
    h.update(code_as_typed(code).as_bytes());
    h.finalize().into()
}

/// A code as it counts, however it was typed: its letters and digits, in upper case.
pub fn code_as_typed(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl NoticeKind {
    /// The medical IDs the notice names.
    pub fn medical_ids(&self) -> Vec<MedicalId> {
        match self {
            NoticeKind::IdChanged { old, new } => vec![*old, *new],
            NoticeKind::Died { medical_id, .. }
            | NoticeKind::DeathWithdrawn { medical_id }
            | NoticeKind::Retired { medical_id }
            | NoticeKind::VisitConsent { medical_id, .. }
            | NoticeKind::Visited { medical_id, .. }
            | NoticeKind::StaffRead { medical_id, .. }
            | NoticeKind::PortalCode { medical_id, .. } => vec![*medical_id],
        }
    }
}
