//! The registry's domain: people, their cards and coverages, their medical IDs, and the
//! rules that decide what an enrollment row or an eligibility check does. No I/O here;
//! `crate::store` persists these types.

pub mod dates;
pub mod eligibility;
pub mod merge;

use chrono::NaiveDate;
use iryo_proto::{
    BirthDate, InsurerKind, InsurerNumber, KanaName, MedicalId, MyNumber, PersonName, Relation, Sex,
};
use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch, UTC.
pub type Timestamp = i64;

pub fn now() -> Timestamp {
    chrono::Utc::now().timestamp()
}

pub fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

pub fn format_time(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}

pub use iryo_proto::eligibility::Card;

/// What the insurer states about who the person is; it must agree across insurers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: PersonName,
    pub kana: KanaName,
    pub birth: BirthDate,
    pub sex: Sex,
}

impl Identity {
    /// The names of the fields in which `other` disagrees with `self`.
    pub fn differences(&self, other: &Identity) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.name != other.name {
            out.push("name");
        }
        if self.kana != other.kana {
            out.push("kana_name");
        }
        if self.birth != other.birth {
            out.push("birth_date");
        }
        if self.sex != other.sex {
            out.push("sex");
        }
        out
    }
}

/// One validated row of an enrollment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRow {
    pub line: u64,
    pub kind: InsurerKind,
    pub card: Card,
    pub relation: Relation,
    pub my_number: MyNumber,
    pub identity: Identity,
    pub address: Option<String>,
    pub from: NaiveDate,
    pub until: Option<NaiveDate>,
}

/// A period of insurance under one card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub kind: InsurerKind,
    pub card: Card,
    pub relation: Relation,
    pub from: NaiveDate,
    pub until: Option<NaiveDate>,
    /// When the medical ID was sent back to this insurer (proposal §2-3).
    pub assigned_at: Option<Timestamp>,
}

impl Coverage {
    pub fn covers(&self, date: NaiveDate) -> bool {
        self.from <= date && self.until.is_none_or(|u| date <= u)
    }
}

/// What happened to a person's registration, kept for ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Issued {
        id: MedicalId,
        at: Timestamp,
    },
    CoverageAdded {
        card: Card,
        at: Timestamp,
    },
    CoverageUpdated {
        card: Card,
        at: Timestamp,
    },
    IdChanged {
        old: MedicalId,
        new: MedicalId,
        reason: String,
        at: Timestamp,
    },
    MyNumberChanged {
        old: MyNumber,
        new: MyNumber,
        at: Timestamp,
    },
    Death {
        date: NaiveDate,
        at: Timestamp,
    },
    Retired {
        at: Timestamp,
    },
    Corrected {
        what: String,
        reason: String,
        at: Timestamp,
    },
    Notified {
        plan: String,
        at: Timestamp,
    },
    /// A stored value changed: which, from what to what, and what said so (an
    /// enrollment file and its line, or an operator's case and reason).
    Changed {
        field: String,
        old: String,
        new: String,
        source: String,
        at: Timestamp,
    },
    /// A recorded date of death replaced by an operator.
    DeathCorrected {
        old: NaiveDate,
        new: NaiveDate,
        reason: String,
        by: String,
        at: Timestamp,
    },
    /// A death recorded in error, undone by an operator.
    DeathRevoked {
        old: NaiveDate,
        reason: String,
        by: String,
        at: Timestamp,
    },
}

impl Event {
    pub fn at(&self) -> Timestamp {
        match self {
            Event::Issued { at, .. }
            | Event::CoverageAdded { at, .. }
            | Event::CoverageUpdated { at, .. }
            | Event::IdChanged { at, .. }
            | Event::MyNumberChanged { at, .. }
            | Event::Death { at, .. }
            | Event::Retired { at }
            | Event::Corrected { at, .. }
            | Event::Notified { at, .. }
            | Event::Changed { at, .. }
            | Event::DeathCorrected { at, .. }
            | Event::DeathRevoked { at, .. } => *at,
        }
    }
}

/// Everything the directory holds on one insured person (proposal §5's basic info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub pid: u64,
    pub my_number: MyNumber,
    pub medical_id: MedicalId,
    /// Bumped each time an ID is issued to this person; the FF1 tweak.
    pub generation: u32,
    pub identity: Identity,
    pub address: Option<String>,
    pub coverages: Vec<Coverage>,
    pub death: Option<NaiveDate>,
    pub retired: bool,
    pub notified_at: Option<Timestamp>,
    pub history: Vec<Event>,
}

impl Person {
    pub fn coverage_mut(&mut self, card: &Card) -> Option<&mut Coverage> {
        self.coverages.iter_mut().find(|c| &c.card == card)
    }

    /// The coverage in force on `date`, the most recently started one first.
    pub fn coverage_on(&self, date: NaiveDate) -> Option<&Coverage> {
        self.coverages
            .iter()
            .filter(|c| c.covers(date))
            .max_by_key(|c| c.from)
    }

    /// The state of the person's medical ID on `date` given the retention period
    /// after death (proposal §2-7).
    pub fn id_state(&self, date: NaiveDate, retention_years: u32) -> IdState {
        id_state(self.retired, self.death, date, retention_years)
    }
}

/// The state of a medical ID on `date`: retired for good, or serving research for
/// `retention_years` after death, or active.
pub fn id_state(
    retired: bool,
    death: Option<NaiveDate>,
    date: NaiveDate,
    retention_years: u32,
) -> IdState {
    if retired {
        return IdState::Retired;
    }
    match death {
        Some(d) if d <= date => {
            let until = research_until(d, retention_years);
            if date > until {
                IdState::Retired
            } else {
                IdState::Deceased {
                    research_until: until,
                }
            }
        }
        _ => IdState::Active,
    }
}

pub fn research_until(death: NaiveDate, retention_years: u32) -> NaiveDate {
    death
        .checked_add_months(chrono::Months::new(retention_years.saturating_mul(12)))
        .unwrap_or(NaiveDate::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum IdState {
    Active,
    /// Insurance has ended; the ID serves research until the retention period ends.
    Deceased {
        research_until: NaiveDate,
    },
    Retired,
}

/// The status of an issued medical ID. Every ID ever issued stays in the table, so no
/// ID is issued twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdStatus {
    Current,
    Changed { successor: MedicalId },
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdEntry {
    pub pid: u64,
    pub status: IdStatus,
}

/// Why an enrollment row could not be applied without overwriting something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictKind {
    /// The My Number is registered with other name, kana, birth date or sex.
    IdentityMismatch { fields: Vec<String> },
    /// The card is already bound to a person with another My Number.
    CardHeldByOther { holder: MyNumber },
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConflictKind::IdentityMismatch { fields } => {
                write!(f, "registered {} differ", fields.join(", "))
            }
            ConflictKind::CardHeldByOther { holder } => {
                write!(f, "card is registered to My Number {holder}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaseStatus {
    Open,
    Resolved {
        action: String,
        reason: String,
        by: String,
        at: Timestamp,
    },
}

/// An enrollment row held for an operator (proposal §2-1's registration errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub id: u64,
    pub kind: ConflictKind,
    pub source: String,
    pub row: EnrollmentRow,
    pub status: CaseStatus,
    pub at: Timestamp,
}

/// A medical ID presented at an institution that differs from the registry (proposal §2-5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub id: u64,
    pub institution: iryo_proto::InstitutionCode,
    pub card: Card,
    pub presented: MedicalId,
    pub registered: MedicalId,
    pub date: NaiveDate,
    pub status: CaseStatus,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recipient {
    Person { medical_id: MedicalId },
    Insurer { insurer: InsurerNumber },
}

/// A notice queued for a person or an insurer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub id: u64,
    pub to: Recipient,
    pub mismatch: u64,
    pub text: String,
    pub at: Timestamp,
}

/// One line of the linkage DB's service history (proposal §4-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUse {
    pub institution: iryo_proto::InstitutionCode,
    pub date: NaiveDate,
    pub eligible: bool,
    pub at: Timestamp,
}
