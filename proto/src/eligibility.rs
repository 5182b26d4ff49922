//! Eligibility checks as institutions send them and the directory answers them
//! (seed 3, 4-1): the card, the request and the answer.

use crate::{
    Branch, CardNumber, CardSymbol, InstitutionCode, InsurerKind, InsurerNumber, MedicalId,
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// An insurance card: insurer number, symbol, number and branch identify one person.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Card {
    pub insurer: InsurerNumber,
    pub symbol: CardSymbol,
    pub number: CardNumber,
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

    pub fn prefix(insurer: &InsurerNumber, symbol: &CardSymbol, number: &CardNumber) -> Vec<u8> {
        let mut k = Vec::with_capacity(40);
        for part in [insurer.as_str(), symbol.as_str(), number.as_str()] {
            k.extend_from_slice(part.as_bytes());
            k.push(0);
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
        insurer: InsurerNumber,
        symbol: CardSymbol,
        number: CardNumber,
        branch: Option<Branch>,
        presented: Option<MedicalId>,
    },
    /// A medical ID card alone (seed 4-1).
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
pub struct CheckRequest {
    pub institution: InstitutionCode,
    pub key: CheckKey,
    pub date: NaiveDate,
    /// The patient agreed at the reception desk that this institution may obtain their
    /// records from others, as Japan's card readers ask.
    #[serde(default)]
    pub visit_consent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Active,
    CoverageEnded,
    NotYetCovered,
    NotFound,
    /// Several people share the card and no branch number was given.
    BranchRequired,
    /// The medical ID was replaced on application; the answer names its successor.
    IdChanged,
    Deceased,
    Retired,
}

impl Reason {
    pub fn eligible(self) -> bool {
        matches!(self, Reason::Active)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageSummary {
    pub kind: InsurerKind,
    pub card: Card,
    pub from: NaiveDate,
    pub until: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    pub eligible: bool,
    pub reason: Reason,
    pub medical_id: Option<MedicalId>,
    pub coverage: Option<CoverageSummary>,
    /// Set when the presented medical ID differed and a mismatch was recorded.
    pub mismatch: Option<u64>,
}

impl CheckAnswer {
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
