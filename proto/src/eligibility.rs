//! Eligibility checks as institutions send them and the directory answers them
//! (proposal §3, 4-1): the card, the request and the answer.

use crate::{
    Branch, CardNumber, CardSymbol, InstitutionCode, InsurerKind, InsurerNumber, MedicalId,
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// An insurance card: insurer number, symbol, number and branch identify one person.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Card {
    /// The insurer number printed on the card.
    pub insurer: InsurerNumber,
    /// The card's symbol (記号).
    pub symbol: CardSymbol,
    /// The card's number (番号).
    pub number: CardNumber,
    /// The branch number (枝番) that tells apart the people on one card.
    pub branch: Branch,
}

impl Card {
    /// The key under which the card is indexed; its prefix without the branch finds
    /// every person on one card.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Self::prefix(&self.insurer, &self.symbol, &self.number);
        k.push(self.branch.value());
        k
    }

    /// The index key of every person on one card: insurer, symbol and number, each followed by a zero byte.
    pub fn prefix(insurer: &InsurerNumber, symbol: &CardSymbol, number: &CardNumber) -> Vec<u8> {
        let mut k = Vec::with_capacity(40);
        for part in [insurer.as_str(), symbol.as_str(), number.as_str()] {
            k.extend_from_slice(part.as_bytes());
            k.push(0);
        }
        k
    }

    /// The keys of one card's people, or of one person on it when `branch` is given.
    pub fn prefix_of(
        insurer: &InsurerNumber,
        symbol: &CardSymbol,
        number: &CardNumber,
        branch: Option<crate::Branch>,
    ) -> Vec<u8> {
        let mut k = Self::prefix(insurer, symbol, number);
        if let Some(b) = branch {
            k.push(b.value());
        }
        k
    }
}

impl std::fmt::Display for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}・{} ({})",
            self.insurer, self.symbol, self.number, self.branch
        )
    }
}

/// How the person is identified at the reception desk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKey {
    /// The insurance card, optionally with the medical ID the person presents.
    Card {
        /// The insurer number printed on the card.
        insurer: InsurerNumber,
        /// The card's symbol.
        symbol: CardSymbol,
        /// The card's number.
        number: CardNumber,
        /// The branch number; needed when several people share the card.
        branch: Option<Branch>,
        /// The medical ID the person showed with the card, compared with the registry.
        presented: Option<MedicalId>,
    },
    /// A medical ID card alone (proposal §4-1).
    MedicalId(MedicalId),
}

impl CheckKey {
    /// The key of a check by this card, with the medical ID the person presents if any.
    pub fn for_card(card: &Card, presented: Option<MedicalId>) -> Self {
        CheckKey::Card {
            insurer: card.insurer.clone(),
            symbol: card.symbol.clone(),
            number: card.number.clone(),
            branch: Some(card.branch),
            presented,
        }
    }

    /// Whether a coverage's card is the one presented; any card for a medical ID.
    pub fn matches(&self, card: &Card) -> bool {
        match self {
            CheckKey::Card {
                insurer,
                symbol,
                number,
                branch,
                ..
            } => {
                &card.insurer == insurer
                    && &card.symbol == symbol
                    && &card.number == number
                    && branch.is_none_or(|b| b == card.branch)
            }
            CheckKey::MedicalId(_) => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// An eligibility check as an institution's reception sends it.
pub struct CheckRequest {
    /// The institution asking; the directory uses the authenticated one.
    pub institution: InstitutionCode,
    /// How the person is identified.
    pub key: CheckKey,
    /// The date of service; never after today.
    pub date: NaiveDate,
    /// The patient agreed at the reception desk that this institution may obtain their
    /// records from others, as Japan's card readers ask.
    #[serde(default)]
    pub visit_consent: bool,
    /// The EMR's key for this check: the same check sent again with the same key
    /// (a retry) is answered as the first time and recorded once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<crate::IdempotencyKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Why a check answers as it does.
pub enum Reason {
    /// Covered on the date: eligible.
    Active,
    /// The coverage ended before the date.
    CoverageEnded,
    /// The coverage starts after the date.
    NotYetCovered,
    /// No registered person matches.
    NotFound,
    /// Several people share the card and no branch number was given.
    BranchRequired,
    /// The medical ID was replaced on application; the answer names its successor.
    IdChanged,
    /// The person has died; the ID serves research only.
    Deceased,
    /// The ID is retired for good.
    Retired,
}

impl Reason {
    /// Whether this reason means eligible.
    pub fn eligible(self) -> bool {
        matches!(self, Reason::Active)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The coverage a check found, without personal data.
pub struct CoverageSummary {
    /// The kind of insurer.
    pub kind: InsurerKind,
    /// The card of the coverage.
    pub card: Card,
    /// First day covered.
    pub from: NaiveDate,
    /// Last day covered; `None` while covered.
    pub until: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The directory's answer to a check.
pub struct CheckAnswer {
    /// Whether the person may be served under insurance on the date.
    pub eligible: bool,
    /// Why.
    pub reason: Reason,
    /// The person's medical ID (the successor, for `IdChanged`).
    pub medical_id: Option<MedicalId>,
    /// The coverage that answered, when one did.
    pub coverage: Option<CoverageSummary>,
    /// Set when the presented medical ID differed and a mismatch was recorded.
    pub mismatch: Option<u64>,
}

impl CheckAnswer {
    /// A not-eligible answer for `reason`, naming `medical_id` when known.
    pub fn refused(reason: Reason, medical_id: Option<MedicalId>) -> Self {
        Self {
            eligible: false,
            reason,
            medical_id,
            coverage: None,
            mismatch: None,
        }
    }
}
