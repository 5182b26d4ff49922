//! The answer to an eligibility check (proposal §3), decided from what the registry holds.

use super::{id_state, Card, Coverage, IdState, Person};
use chrono::NaiveDate;
pub use iryo_proto::eligibility::{CheckAnswer, CheckKey, CheckRequest, CoverageSummary, Reason};
use iryo_proto::{Branch, CardNumber, CardSymbol, InsurerKind, InsurerNumber, MedicalId};
use serde::{Deserialize, Serialize};

/// Everything a check by card needs, kept in the card index beside the card so that
/// the hottest query of the system is one B-tree lookup and an allocation-free decode.
/// Dates are days from the Common Era, as `chrono` counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardStanding {
    pub pid: u64,
    pub medical_id: MedicalId,
    pub kind: InsurerKind,
    pub branch: Branch,
    pub from: i32,
    pub until: Option<i32>,
    pub death: Option<i32>,
    pub retired: bool,
}

fn day(d: NaiveDate) -> i32 {
    chrono::Datelike::num_days_from_ce(&d)
}

fn date_of(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days).unwrap_or(NaiveDate::MIN)
}

impl CardStanding {
    pub fn of(person: &Person, coverage: &Coverage) -> Self {
        Self {
            pid: person.pid,
            medical_id: person.medical_id,
            kind: coverage.kind,
            branch: coverage.card.branch,
            from: day(coverage.from),
            until: coverage.until.map(day),
            death: person.death.map(day),
            retired: person.retired,
        }
    }
}

/// Decides a check by card from the card's standing; the same answer [`decide`] gives
/// from the whole person record.
pub fn decide_by_card(
    s: &CardStanding,
    insurer: &InsurerNumber,
    symbol: &CardSymbol,
    number: &CardNumber,
    date: NaiveDate,
    retention_years: u32,
) -> CheckAnswer {
    let id = Some(s.medical_id);
    match id_state(s.retired, s.death.map(date_of), date, retention_years) {
        IdState::Retired => return CheckAnswer::refused(Reason::Retired, id),
        IdState::Deceased { .. } => return CheckAnswer::refused(Reason::Deceased, id),
        IdState::Active => {}
    }
    let (from, until) = (date_of(s.from), s.until.map(date_of));
    if from > date {
        return CheckAnswer::refused(Reason::NotYetCovered, id);
    }
    if until.is_some_and(|u| date > u) {
        return CheckAnswer::refused(Reason::CoverageEnded, id);
    }
    CheckAnswer {
        eligible: true,
        reason: Reason::Active,
        medical_id: id,
        coverage: Some(CoverageSummary {
            kind: s.kind,
            card: Card {
                insurer: insurer.clone(),
                symbol: symbol.clone(),
                number: number.clone(),
                branch: s.branch,
            },
            from,
            until,
        }),
        mismatch: None,
    }
}

/// Decides eligibility for a found person on `date`. A card answers for its own
/// coverage: an old card stays ended after its holder moved to another insurer.
pub fn decide(
    person: &Person,
    key: &CheckKey,
    date: NaiveDate,
    retention_years: u32,
) -> CheckAnswer {
    let id = Some(person.medical_id);
    match person.id_state(date, retention_years) {
        IdState::Retired => return CheckAnswer::refused(Reason::Retired, id),
        IdState::Deceased { .. } => return CheckAnswer::refused(Reason::Deceased, id),
        IdState::Active => {}
    }
    let presented = || person.coverages.iter().filter(|c| key.matches(&c.card));
    if let Some(c) = presented()
        .filter(|c| c.covers(date))
        .max_by_key(|c| c.from)
    {
        return CheckAnswer {
            eligible: true,
            reason: Reason::Active,
            medical_id: id,
            coverage: Some(CoverageSummary {
                kind: c.kind,
                card: c.card.clone(),
                from: c.from,
                until: c.until,
            }),
            mismatch: None,
        };
    }
    let reason = if presented().any(|c| c.from > date) {
        Reason::NotYetCovered
    } else {
        Reason::CoverageEnded
    };
    CheckAnswer::refused(reason, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::merge::{new_person, tests::row};

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn reasons() {
        let mut r = row("983205673214", "01130012", "5");
        r.until = Some(d("2024-03-31"));
        let mut p = new_person(1, &r, MedicalId::from_body(9), 0, 0);
        let k = CheckKey::MedicalId(p.medical_id);
        assert_eq!(decide(&p, &k, d("2023-01-01"), 5).reason, Reason::Active);
        assert!(decide(&p, &k, d("2023-01-01"), 5).eligible);
        assert_eq!(
            decide(&p, &k, d("2025-01-01"), 5).reason,
            Reason::CoverageEnded
        );
        assert_eq!(
            decide(&p, &k, d("2019-01-01"), 5).reason,
            Reason::NotYetCovered
        );
        p.death = Some(d("2023-06-01"));
        assert_eq!(decide(&p, &k, d("2023-06-02"), 5).reason, Reason::Deceased);
        assert_eq!(decide(&p, &k, d("2023-05-31"), 5).reason, Reason::Active);
        assert_eq!(decide(&p, &k, d("2028-06-02"), 5).reason, Reason::Retired);
    }

    #[test]
    fn an_old_card_answers_for_itself() {
        let mut old = row("983205673214", "01130012", "5");
        old.until = Some(d("2024-03-31"));
        let mut p = new_person(1, &old, MedicalId::from_body(9), 0, 0);
        let new = row("983205673214", "33120015", "77");
        crate::registry::merge::merge_row(&mut p, &new, "b.csv:2", 0);
        let card_key = |c: &Card| CheckKey::Card {
            insurer: c.insurer.clone(),
            symbol: c.symbol.clone(),
            number: c.number.clone(),
            branch: None,
            presented: None,
        };
        let today = d("2026-01-01");
        assert_eq!(
            decide(&p, &card_key(&old.card), today, 5).reason,
            Reason::CoverageEnded
        );
        assert_eq!(
            decide(&p, &card_key(&new.card), today, 5).reason,
            Reason::Active
        );
        assert_eq!(
            decide(&p, &CheckKey::MedicalId(p.medical_id), today, 5).reason,
            Reason::Active
        );
    }
}
