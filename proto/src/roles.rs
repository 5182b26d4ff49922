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
}

impl NoticeKind {
    /// The medical IDs the notice names.
    pub fn medical_ids(&self) -> Vec<MedicalId> {
        match self {
            NoticeKind::IdChanged { old, new } => vec![*old, *new],
            NoticeKind::Died { medical_id, .. }
            | NoticeKind::DeathWithdrawn { medical_id }
            | NoticeKind::Retired { medical_id }
            | NoticeKind::VisitConsent { medical_id, .. } => vec![*medical_id],
        }
    }
}
