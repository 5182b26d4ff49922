//! What an enrollment row does to the registry: the rules of proposal §2-1 as plain functions.

use super::{Card, ConflictKind, Coverage, EnrollmentRow, Event, Person, Timestamp};
use iryo_proto::{MedicalId, MyNumber};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    New,
    Updated,
    Unchanged,
    Conflict(ConflictKind),
}

/// The card index's answer for the row's card.
pub enum CardHolder {
    Nobody,
    ThisPerson,
    Other(MyNumber),
}

/// Decides whether a row may be applied at all; `None` means go ahead.
pub fn conflict_for(
    person: Option<&Person>,
    row: &EnrollmentRow,
    card: CardHolder,
) -> Option<ConflictKind> {
    if let CardHolder::Other(holder) = card {
        if holder != row.my_number {
            return Some(ConflictKind::CardHeldByOther { holder });
        }
    }
    let person = person?;
    let fields = person.identity.differences(&row.identity);
    if fields.is_empty() {
        None
    } else {
        Some(ConflictKind::IdentityMismatch {
            fields: fields.into_iter().map(String::from).collect(),
        })
    }
}

/// Applies a row whose identity agrees with the registered person. A person who moves
/// insurer gains a coverage; the old one keeps its dates. `source` names the file and
/// line, and goes into the history beside every value the row changes.
///
/// A row of a coverage that a later-starting coverage has superseded is old news (an
/// insurer re-sending an old file): it may close its coverage, but it changes neither
/// the address nor anything else the newer coverage's rows supplied.
pub fn merge_row(
    person: &mut Person,
    row: &EnrollmentRow,
    source: &str,
    at: Timestamp,
) -> RowOutcome {
    let superseded = person
        .coverages
        .iter()
        .any(|c| c.card != row.card && c.from > row.from);
    let mut changes: Vec<(String, String, String)> = Vec::new();
    if let Some(a) = &row.address {
        if !superseded && person.address.as_ref() != Some(a) {
            changes.push((
                "address".into(),
                person.address.clone().unwrap_or_default(),
                a.clone(),
            ));
            person.address = Some(a.clone());
        }
    }
    if let Some(c) = person.coverage_mut(&row.card) {
        let old = terms(c.kind, c.relation, c.from, c.until);
        if superseded {
            // Only an end date the registry lacks is news from an older coverage.
            if c.until.is_none() && row.until.is_some() {
                c.until = row.until;
            }
        } else {
            c.kind = row.kind;
            c.relation = row.relation;
            c.from = row.from;
            c.until = row.until;
        }
        let new = terms(c.kind, c.relation, c.from, c.until);
        if new != old {
            changes.push((format!("coverage {}", row.card), old, new));
        }
    } else {
        person.coverages.push(coverage_from(row));
        person.history.push(Event::CoverageAdded {
            card: row.card.clone(),
            at,
        });
        changes.push((
            format!("coverage {}", row.card),
            String::new(),
            terms(row.kind, row.relation, row.from, row.until),
        ));
    }
    if changes.is_empty() {
        return RowOutcome::Unchanged;
    }
    for (field, old, new) in changes {
        person.history.push(Event::Changed {
            field,
            old,
            new,
            source: source.to_string(),
            at,
        });
    }
    RowOutcome::Updated
}

/// A coverage's terms as one line of history.
fn terms(
    kind: iryo_proto::InsurerKind,
    relation: iryo_proto::Relation,
    from: chrono::NaiveDate,
    until: Option<chrono::NaiveDate>,
) -> String {
    format!(
        "{} {} from {} until {}",
        kind.as_str(),
        relation.as_str(),
        from,
        until.map_or("-".to_string(), |u| u.to_string())
    )
}

pub fn coverage_from(row: &EnrollmentRow) -> Coverage {
    Coverage {
        kind: row.kind,
        card: row.card.clone(),
        relation: row.relation,
        from: row.from,
        until: row.until,
        assigned_at: None,
    }
}

/// A person registered for the first time, with the medical ID just issued.
pub fn new_person(
    pid: u64,
    row: &EnrollmentRow,
    medical_id: MedicalId,
    generation: u32,
    at: Timestamp,
) -> Person {
    Person {
        pid,
        my_number: row.my_number,
        medical_id,
        generation,
        identity: row.identity.clone(),
        address: row.address.clone(),
        coverages: vec![coverage_from(row)],
        death: None,
        retired: false,
        notified_at: None,
        // The first coverage is in `coverages`; repeating its card here would double
        // the size of every new record.
        history: vec![Event::Issued { id: medical_id, at }],
    }
}

/// Removes a card's coverage from its holder, for a correction by an operator.
pub fn drop_card(person: &mut Person, card: &Card) -> Option<Coverage> {
    let pos = person.coverages.iter().position(|c| &c.card == card)?;
    Some(person.coverages.remove(pos))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::registry::Identity;
    use chrono::NaiveDate;
    use iryo_proto::*;

    pub(crate) fn row(my_number: &str, insurer: &str, number: &str) -> EnrollmentRow {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        EnrollmentRow {
            line: 2,
            kind: InsurerKind::Kyokai,
            card: Card {
                insurer: InsurerNumber::parse(insurer).unwrap(),
                symbol: CardSymbol::parse("1234").unwrap(),
                number: CardNumber::parse(number).unwrap(),
                branch: Branch::new(0).unwrap(),
            },
            relation: Relation::Insured,
            my_number: MyNumber::parse(my_number).unwrap(),
            identity: Identity {
                name: PersonName::parse("山田 太郎").unwrap(),
                kana: KanaName::parse("ヤマダ タロウ").unwrap(),
                birth: BirthDate::parse("1980-04-01", today).unwrap(),
                sex: Sex::Male,
            },
            address: None,
            from: NaiveDate::from_ymd_opt(2020, 4, 1).unwrap(),
            until: None,
        }
    }

    #[test]
    fn same_row_twice_is_unchanged() {
        let r = row("983205673214", "01130012", "5");
        let mut p = new_person(1, &r, MedicalId::from_body(7), 0, 0);
        assert_eq!(merge_row(&mut p, &r, "a.csv:2", 1), RowOutcome::Unchanged);
        assert_eq!(p.history.len(), 1);
    }

    #[test]
    fn moving_insurer_keeps_old_coverage_dates() {
        let mut old = row("983205673214", "01130012", "5");
        old.until = NaiveDate::from_ymd_opt(2025, 3, 31);
        let mut p = new_person(1, &old, MedicalId::from_body(7), 0, 0);
        let new = row("983205673214", "33120015", "77");
        assert!(conflict_for(Some(&p), &new, CardHolder::Nobody).is_none());
        assert_eq!(merge_row(&mut p, &new, "b.csv:2", 1), RowOutcome::Updated);
        assert_eq!(p.coverages.len(), 2);
        assert_eq!(p.coverages[0].until, NaiveDate::from_ymd_opt(2025, 3, 31));
        let d = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        assert_eq!(p.coverage_on(d).unwrap().card.insurer.as_str(), "33120015");
    }

    #[test]
    fn an_old_file_sent_again_does_not_overwrite_the_present() {
        let mut old = row("983205673214", "01130012", "5");
        old.address = Some("旧住所".into());
        let mut p = new_person(1, &old, MedicalId::from_body(7), 0, 0);
        let mut ended = old.clone();
        ended.until = NaiveDate::from_ymd_opt(2023, 3, 31);
        assert_eq!(
            merge_row(&mut p, &ended, "2023.csv:4", 1),
            RowOutcome::Updated
        );
        let mut new = row("983205673214", "33120015", "77");
        new.from = NaiveDate::from_ymd_opt(2023, 4, 1).unwrap();
        new.address = Some("新住所".into());
        assert_eq!(
            merge_row(&mut p, &new, "2024.csv:9", 2),
            RowOutcome::Updated
        );
        let history = p.history.len();
        // The 2022 file again: open-ended coverage, old address.
        assert_eq!(
            merge_row(&mut p, &old, "2022.csv:3", 3),
            RowOutcome::Unchanged
        );
        assert_eq!(p.address.as_deref(), Some("新住所"));
        assert_eq!(p.coverages[0].until, NaiveDate::from_ymd_opt(2023, 3, 31));
        assert_eq!(p.history.len(), history);
        // Every change so far left old value, new value and source.
        assert!(p.history.iter().any(|e| matches!(e,
            Event::Changed { field, old, new, source, .. }
                if field == "address" && old == "旧住所" && new == "新住所" && source == "2024.csv:9")));
        assert!(p.history.iter().any(|e| matches!(e,
            Event::Changed { field, new, source, .. }
                if field.starts_with("coverage") && new.ends_with("until 2023-03-31") && source == "2023.csv:4")));
    }

    #[test]
    fn identity_disagreement_is_a_conflict() {
        let r = row("983205673214", "01130012", "5");
        let p = new_person(1, &r, MedicalId::from_body(7), 0, 0);
        let mut other = r.clone();
        other.identity.sex = Sex::Female;
        other.identity.kana = KanaName::parse("ヤマダ ハナコ").unwrap();
        assert_eq!(
            conflict_for(Some(&p), &other, CardHolder::ThisPerson),
            Some(ConflictKind::IdentityMismatch {
                fields: vec!["kana_name".into(), "sex".into()]
            })
        );
        let holder = MyNumber::from_body(1);
        assert!(matches!(
            conflict_for(None, &r, CardHolder::Other(holder)),
            Some(ConflictKind::CardHeldByOther { .. })
        ));
    }
}
