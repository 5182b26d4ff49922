//! Assignment files back to insurers (proposal §2-3) and the lists of letters to send
//! (proposal §2-4). Each is read first, written to its file by the caller, and only then
//! marked done, so a crash in between sends a row twice rather than never.

use super::registry_tx::RegistryTx;
use super::tables::*;
use super::{decode, Result, Store};
use crate::registry::eligibility::CardStanding;
use crate::registry::{Card, Event, Person, Timestamp};
use iryo_proto::{InsurerNumber, MedicalId, MyNumber};
use redb::ReadableDatabase;
use serde::Serialize;

/// The columns of an assignment file, in `AssignmentRow`'s order; written even when
/// there are no rows, so that an empty file still says what it is.
pub const ASSIGNMENT_HEADER: [&str; 6] = [
    "insurer_number",
    "card_symbol",
    "card_number",
    "branch",
    "my_number",
    "medical_id",
];

/// One line of an assignment file: a card, its holder's My Number and medical ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AssignmentRow {
    pub pid: u64,
    pub card: Card,
    pub my_number: MyNumber,
    pub medical_id: MedicalId,
}

impl AssignmentRow {
    /// The row's fields in `ASSIGNMENT_HEADER` order.
    pub fn record(&self) -> [String; 6] {
        [
            self.card.insurer.to_string(),
            self.card.symbol.to_string(),
            self.card.number.to_string(),
            self.card.branch.to_string(),
            self.my_number.to_string(),
            self.medical_id.to_string(),
        ]
    }

    /// Writes an assignment file: the header, then the rows.
    pub fn write_csv<W: std::io::Write>(out: W, rows: &[AssignmentRow]) -> csv::Result<W> {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(out);
        w.write_record(ASSIGNMENT_HEADER)?;
        for r in rows {
            w.write_record(r.record())?;
        }
        w.into_inner().map_err(|e| e.into_error().into())
    }
}

/// Who sends the letter that tells a person their medical ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Plan 1: each insurer sends letters to its insured.
    Insurer,
    /// Plan 2: the agency sends a card or postcard to each person's address.
    Agency,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LetterRow {
    #[serde(skip)]
    pub pid: u64,
    /// The insurer that sends it (plan 1), empty for the agency (plan 2).
    pub sender: String,
    pub name: String,
    pub kana_name: String,
    pub medical_id: String,
    pub address: String,
    pub card: String,
}

impl Store {
    /// Rows for `insurer` whose ID has not been sent yet (all rows with `all`).
    pub fn assignment_rows(
        &self,
        insurer: &InsurerNumber,
        all: bool,
    ) -> Result<Vec<AssignmentRow>> {
        let tx = self.db.begin_read()?;
        let cards = tx.open_table(CARDS)?;
        let persons = tx.open_table(PERSONS)?;
        let mut prefix = insurer.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in cards.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let pid = decode::<CardStanding>(v.value())?.pid;
            let Some(v) = persons.get(pid)? else { continue };
            out.extend(assignment_rows_of(&decode(v.value())?, k.value(), all));
        }
        Ok(out)
    }

    /// Records that these rows reached their insurer.
    pub fn mark_assigned(&self, rows: &[AssignmentRow], at: Timestamp) -> Result<()> {
        self.write(|t| mark_assigned(t, rows, at))
    }

    /// People not yet told their medical ID (everyone with `all`).
    pub fn letter_rows(
        &self,
        plan: Plan,
        all: bool,
        today: chrono::NaiveDate,
    ) -> Result<Vec<LetterRow>> {
        Ok(letter_rows(plan, all, self.persons()?, today))
    }

    /// The letter of one person, told before or not, to replace a lost letter or a
    /// forgotten password; an error says why there can be none.
    pub fn letter_row_of(
        &self,
        plan: Plan,
        id: iryo_proto::MedicalId,
        today: chrono::NaiveDate,
    ) -> Result<LetterRow> {
        let p = self.person_by_medical_id(id)?;
        letter_row(plan, &p, today).ok_or(super::StoreError::NoLetter(id))
    }

    /// The letters to these people were written: in one transaction each person's
    /// activation code (stored as a hash) takes effect and the person counts as told.
    /// Until this commit no code printed in them works, so letters that failed to be
    /// written leave no code issued; a rerun prints new ones.
    pub fn letters_sent(
        &self,
        plan: Plan,
        letters: &[(u64, String)],
        expires: Timestamp,
        at: Timestamp,
    ) -> Result<()> {
        self.write(|t| letters_sent(t, plan, letters, expires, at))
    }
}

/// The rows of one card's holder for an assignment file: each coverage on that card
/// not yet sent (every one with `all`).
pub(crate) fn assignment_rows_of<'a>(
    p: &'a Person,
    card_key: &'a [u8],
    all: bool,
) -> impl Iterator<Item = AssignmentRow> + 'a {
    p.coverages
        .iter()
        .filter(move |c| c.card.key().as_slice() == card_key && (all || c.assigned_at.is_none()))
        .map(|c| AssignmentRow {
            pid: p.pid,
            card: c.card.clone(),
            my_number: p.my_number,
            medical_id: p.medical_id,
        })
}

/// The rules of `Store::mark_assigned`, for either backend.
pub(crate) fn mark_assigned(
    t: &mut (impl RegistryTx + ?Sized),
    rows: &[AssignmentRow],
    at: Timestamp,
) -> Result<()> {
    for r in rows {
        let mut p = t.person(r.pid)?;
        if let Some(c) = p.coverage_mut(&r.card) {
            c.assigned_at = Some(at);
            t.put_person(&p)?;
        }
    }
    Ok(())
}

/// The letters of `persons` not yet told their ID (everyone with `all`).
pub(crate) fn letter_rows(
    plan: Plan,
    all: bool,
    persons: Vec<Person>,
    today: chrono::NaiveDate,
) -> Vec<LetterRow> {
    persons
        .iter()
        .filter(|p| all || p.notified_at.is_none())
        .filter_map(|p| letter_row(plan, p, today))
        .collect()
}

/// The rules of `Store::letters_sent`, for either backend.
pub(crate) fn letters_sent(
    t: &mut (impl RegistryTx + ?Sized),
    plan: Plan,
    letters: &[(u64, String)],
    expires: Timestamp,
    at: Timestamp,
) -> Result<()> {
    let plan = match plan {
        Plan::Insurer => "insurer",
        Plan::Agency => "agency",
    };
    for (pid, code) in letters {
        super::portal::set_activation(t, *pid, code, expires)?;
        let mut p = t.person(*pid)?;
        // Where My Portal is the exchange authority's, it learns the code's hash.
        t.tell_authority(
            iryo_proto::roles::NoticeKind::PortalCode {
                medical_id: p.medical_id,
                hash: iryo_proto::roles::portal_code_hash(p.medical_id, code),
                expires,
            },
            at,
        )?;
        p.notified_at = Some(at);
        p.history.push(Event::Notified {
            plan: plan.into(),
            at,
        });
        t.put_person(&p)?;
    }
    Ok(())
}

/// The letter of `p`, if one can be sent: not to a retired ID or a deceased person, by
/// the insurer only with a coverage, by the agency only to an address.
pub(crate) fn letter_row(
    plan: Plan,
    p: &crate::registry::Person,
    today: chrono::NaiveDate,
) -> Option<LetterRow> {
    if p.retired || p.death.is_some() {
        return None;
    }
    let coverage = p.coverage_on(today).or(p.coverages.last());
    let sender = match (plan, coverage) {
        (Plan::Insurer, Some(c)) => c.card.insurer.to_string(),
        (Plan::Insurer, None) => return None,
        (Plan::Agency, _) => String::new(),
    };
    if plan == Plan::Agency && p.address.is_none() {
        tracing::warn!(medical_id = %p.medical_id, "no address registered; no agency letter");
        return None;
    }
    Some(LetterRow {
        pid: p.pid,
        sender,
        name: p.identity.name.to_string(),
        kana_name: p.identity.kana.to_string(),
        medical_id: p.medical_id.grouped(),
        address: p.address.clone().unwrap_or_default(),
        card: coverage.map(|c| c.card.to_string()).unwrap_or_default(),
    })
}
