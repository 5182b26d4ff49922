//! Eligibility checks (proposal §3, 4-1, 2-5): the read path, and the recording path that
//! appends service use and mismatches for a whole batch of checks in one commit.

use super::registry_tx::RegistryTx;
use super::tables::*;
use super::{decode, linkage, Counts, Job, Outcome, Result, Store, StoreError};
use crate::access::{ConsentOrigin, ConsentRecord};
use crate::audit::LogEntry;
use crate::registry::eligibility::{
    decide, decide_by_card, CardStanding, CheckAnswer, CheckKey, CheckRequest, Reason,
};
use crate::registry::{
    Card, CaseStatus, Conflict, IdEntry, IdStatus, Mismatch, Notice, Person, Recipient, ServiceUse,
    Timestamp,
};
use iryo_proto::federation::Purpose;
use iryo_proto::{MedicalId, MyNumber};
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
};

/// Who a check's key points at.
pub(crate) enum Found {
    /// By card: the card's standing and its exact key.
    Card(CardStanding, Card),
    /// By medical ID: the whole record.
    Person(Person),
    /// A medical ID replaced on application: who holds it now, under which ID.
    Changed(u64, MedicalId),
    Refused(Reason, Option<MedicalId>),
}

/// What resolving a check key reads, on either backend.
pub(crate) trait Lookup {
    /// A card's standing by its exact key.
    fn standing(&self, card_key: &[u8]) -> Result<Option<CardStanding>>;
    /// The standings of the first `n` cards whose keys start with `prefix`, in key order.
    fn standings_with_prefix(&self, prefix: &[u8], n: usize) -> Result<Vec<CardStanding>>;
    /// What the table of every ID ever issued says of `id`.
    fn issued(&self, id: MedicalId) -> Result<Option<IdEntry>>;
    /// A person's record.
    fn record_of(&self, pid: u64) -> Result<Person>;
}

/// Resolves a check key.
pub(crate) fn find(l: &(impl Lookup + ?Sized), key: &CheckKey) -> Result<Found> {
    match key {
        CheckKey::Card {
            insurer,
            symbol,
            number,
            branch,
            ..
        } => {
            let prefix = Card::prefix(insurer, symbol, number);
            let card = |branch| Card {
                insurer: insurer.clone(),
                symbol: symbol.clone(),
                number: number.clone(),
                branch,
            };
            if let Some(b) = branch {
                let mut k = prefix;
                k.push(b.value());
                return Ok(match l.standing(&k)? {
                    Some(s) => Found::Card(s, card(*b)),
                    None => Found::Refused(Reason::NotFound, None),
                });
            }
            let holders = l.standings_with_prefix(&prefix, 2)?;
            Ok(match holders.as_slice() {
                [s] => Found::Card(*s, card(s.branch)),
                [] => Found::Refused(Reason::NotFound, None),
                _ => Found::Refused(Reason::BranchRequired, None),
            })
        }
        CheckKey::MedicalId(id) => match l.issued(*id)? {
            None => Ok(Found::Refused(Reason::NotFound, None)),
            Some(e) => {
                let p = l.record_of(e.pid)?;
                if let IdStatus::Changed { .. } = e.status {
                    return Ok(Found::Changed(p.pid, p.medical_id));
                }
                Ok(Found::Person(p))
            }
        },
    }
}

impl Lookup for Reader {
    fn standing(&self, card_key: &[u8]) -> Result<Option<CardStanding>> {
        self.cards
            .get(card_key)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn standings_with_prefix(&self, prefix: &[u8], n: usize) -> Result<Vec<CardStanding>> {
        let mut holders = Vec::new();
        for item in self.cards.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) || holders.len() >= n {
                break;
            }
            holders.push(decode::<CardStanding>(v.value())?);
        }
        Ok(holders)
    }

    fn issued(&self, id: MedicalId) -> Result<Option<IdEntry>> {
        self.ids
            .get(id.as_u64())?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn record_of(&self, pid: u64) -> Result<Person> {
        person(&self.persons, pid)
    }
}

/// A check decided against a snapshot, waiting to be recorded.
pub(crate) struct Resolved {
    answer: CheckAnswer,
    /// Whose service use it is; a replaced ID still names a person who was served.
    pid: Option<u64>,
    card: Option<Card>,
}

impl Resolved {
    pub(crate) fn into_answer(self) -> CheckAnswer {
        self.answer
    }
}

/// The answer for what `find` found.
pub(crate) fn answer(found: Found, req: &CheckRequest, retention: u32) -> Resolved {
    let (answer, pid, card) = match found {
        Found::Card(s, card) => (
            decide_by_card(
                &s,
                &card.insurer,
                &card.symbol,
                &card.number,
                req.date,
                retention,
            ),
            Some(s.pid),
            Some(card),
        ),
        Found::Person(p) => (decide(&p, &req.key, req.date, retention), Some(p.pid), None),
        Found::Changed(pid, current) => (
            CheckAnswer::refused(Reason::IdChanged, Some(current)),
            Some(pid),
            None,
        ),
        Found::Refused(reason, id) => (CheckAnswer::refused(reason, id), None, None),
    };
    Resolved { answer, pid, card }
}

fn person(persons: &impl ReadableTable<u64, &'static [u8]>, pid: u64) -> Result<Person> {
    match persons.get(pid)? {
        Some(v) => decode(v.value()),
        None => Err(StoreError::Inconsistent(format!("pid {pid} has no record"))),
    }
}

/// A read transaction with the tables a check or a lookup needs, opened once.
pub struct Reader {
    persons: ReadOnlyTable<u64, &'static [u8]>,
    cards: ReadOnlyTable<&'static [u8], &'static [u8]>,
    ids: ReadOnlyTable<u64, &'static [u8]>,
    tx: ReadTransaction,
    /// Read before `tx`, so that it never covers entries `tx` does not have.
    linkage: ReadTransaction,
    retention_years: u32,
}

impl Store {
    pub fn reader(&self) -> Result<Reader> {
        let linkage = self.linkage.begin_read()?;
        let tx = self.db.begin_read()?;
        Ok(Reader {
            persons: tx.open_table(PERSONS)?,
            cards: tx.open_table(CARDS)?,
            ids: tx.open_table(MEDICAL_IDS)?,
            tx,
            linkage,
            retention_years: self.retention_years,
        })
    }

    /// One check, recorded durably before the answer returns.
    /// A date of service after today (plus the allowance for clocks) is refused.
    pub fn check(&self, req: &CheckRequest, at: Timestamp) -> Result<CheckAnswer> {
        self.date_rules().not_future("date of service", req.date)?;
        let mut answers = self.check_batch(std::slice::from_ref(req), at)?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Inconsistent("a check produced no answer".into()))
    }

    /// Answers many checks and records all their service use in one commit: the group
    /// commit that lets durable checks run near the speed of the read path. Answers are
    /// decided on one snapshot; the write transaction only appends.
    pub fn check_batch(&self, reqs: &[CheckRequest], at: Timestamp) -> Result<Vec<CheckAnswer>> {
        match self.commit_group(&[Job::Checks(reqs.to_vec())], at)?.pop() {
            Some(Outcome::Checks(answers)) => Ok(answers),
            _ => Err(StoreError::Inconsistent(
                "checks answered as something else".into(),
            )),
        }
    }
}

/// Decides a check inside a write and records it: for a backend that reads and writes
/// in one transaction.
pub(crate) fn decide_and_record(
    t: &mut (impl RegistryTx + Lookup + ?Sized),
    req: &CheckRequest,
    retention: u32,
    visit_days: u32,
    at: Timestamp,
) -> Result<CheckAnswer> {
    let resolved = answer(find(t, &req.key)?, req, retention);
    record(t, req, resolved, visit_days, at)
}

/// Records a decided check: its service use, and a mismatch when the presented ID is
/// not the registered one.
pub(crate) fn record(
    t: &mut (impl RegistryTx + ?Sized),
    req: &CheckRequest,
    r: Resolved,
    visit_days: u32,
    at: Timestamp,
) -> Result<CheckAnswer> {
    let scope = super::idempotency::check_scope(req)?;
    if let Some(scope) = &scope {
        if let Some(answer) = super::idempotency::kept_check(t, scope, at)? {
            return Ok(answer);
        }
    }
    let answer = record_new(t, req, r, visit_days, at)?;
    if let Some(scope) = scope {
        super::idempotency::keep(
            t,
            scope,
            super::idempotency::Kept::Check(answer.clone()),
            at,
        )?;
    }
    Ok(answer)
}

/// Records a check not recorded before.
fn record_new(
    t: &mut (impl RegistryTx + ?Sized),
    req: &CheckRequest,
    r: Resolved,
    visit_days: u32,
    at: Timestamp,
) -> Result<CheckAnswer> {
    append_entries(t, &entries(req, &r, at))?;
    let mut answer = r.answer;
    if let Some(pid) = r.pid {
        if req.visit_consent && answer.eligible {
            let until = at + i64::from(visit_days) * 86_400;
            if let Some(medical_id) = answer.medical_id {
                t.tell_authority(
                    iryo_proto::roles::NoticeKind::VisitConsent {
                        institution: req.institution,
                        medical_id,
                        until,
                    },
                    at,
                )?;
            }
            super::federation::add_consent_for(
                t,
                pid,
                &ConsentRecord {
                    institution: Some(req.institution),
                    purpose: Some(Purpose::Treatment),
                    allow: true,
                    expires_at: Some(until),
                    at,
                    origin: ConsentOrigin::Visit(req.institution),
                },
            )?;
        }
    }
    if let (
        CheckKey::Card {
            presented: Some(presented),
            ..
        },
        Some(card),
        Some(registered),
    ) = (&req.key, r.card, answer.medical_id)
    {
        if *presented != registered {
            answer.mismatch = Some(record_mismatch(t, card, registered, req, *presented, at)?);
        }
    }
    Ok(answer)
}

/// What every check appends, whatever else it changes: its audit entry, and its
/// service use when the key named a person.
pub(crate) type Entries = (LogEntry, Option<(u64, ServiceUse)>);

pub(crate) fn entries(req: &CheckRequest, r: &Resolved, at: Timestamp) -> Entries {
    let entry = LogEntry::Eligibility {
        institution: req.institution,
        medical_id: r.answer.medical_id,
        reason: r.answer.reason,
        at,
    };
    let used = r.pid.map(|pid| {
        let u = ServiceUse {
            institution: req.institution,
            date: req.date,
            eligible: r.answer.eligible,
            at,
        };
        (pid, u)
    });
    (entry, used)
}

pub(crate) fn append_entries(
    t: &mut (impl RegistryTx + ?Sized),
    (entry, used): &Entries,
) -> Result<()> {
    t.audit_append(entry)?;
    if let Some((pid, u)) = used {
        t.append_service_use(*pid, u)?;
        // Where My Portal is the exchange authority's, it shows the visit there.
        if let LogEntry::Eligibility {
            medical_id: Some(medical_id),
            ..
        } = entry
        {
            t.tell_authority(
                iryo_proto::roles::NoticeKind::Visited {
                    institution: u.institution,
                    medical_id: *medical_id,
                    date: u.date,
                    eligible: u.eligible,
                },
                u.at,
            )?;
        }
    }
    Ok(())
}

/// Records a presented ID that differs from the registry, once while it is open, and
/// queues notices to the person and the insurer (proposal §2-5).
fn record_mismatch(
    t: &mut (impl RegistryTx + ?Sized),
    card: Card,
    registered: MedicalId,
    req: &CheckRequest,
    presented: MedicalId,
    at: Timestamp,
) -> Result<u64> {
    let mut key = card.key();
    key.extend_from_slice(&presented.as_u64().to_be_bytes());
    if let Some(id) = t.mismatch_by_key(&key)? {
        return Ok(id);
    }
    let id = t.next(MISMATCH_SEQ)?;
    let m = Mismatch {
        id,
        institution: req.institution,
        card: card.clone(),
        presented,
        registered,
        date: req.date,
        status: CaseStatus::Open,
        at,
    };
    t.put_mismatch(&m, &key)?;
    let texts = [
        (
            Recipient::Person {
                medical_id: registered,
            },
            // Only the person's own data: the ID that was presented may be someone
            // else's, and a notice must not disclose it.
            format!(
                "医療機関 {} で、あなたの保険証とともに、登録と異なる医療等番号が提示されました。あなたの医療等番号は {} です。心当たりがない場合は保険者にご連絡ください。 / At institution {}, a medical ID other than yours was presented with your insurance card. Your medical ID is {}. If you do not know why, please contact your insurer.",
                req.institution,
                registered.grouped(),
                req.institution,
                registered.grouped()
            ),
        ),
        (
            Recipient::Insurer {
                insurer: card.insurer.clone(),
            },
            format!(
                "被保険者証 {card} について、医療機関 {} で登録と異なる医療等番号が提示されました（照合番号 {id}）。 / A medical ID that differs from the registry was presented for card {card} at institution {} (case {id}).",
                req.institution, req.institution
            ),
        ),
    ];
    for (to, text) in texts {
        let nid = t.next(NOTICE_SEQ)?;
        let n = Notice {
            id: nid,
            to,
            mismatch: id,
            text,
            at,
        };
        t.put_notice(&n)?;
    }
    Ok(id)
}

impl Reader {
    /// The read path of a check: the same decision, nothing recorded.
    pub fn check(&self, req: &CheckRequest) -> Result<CheckAnswer> {
        Ok(self.resolve(req)?.answer)
    }

    pub(super) fn resolve(&self, req: &CheckRequest) -> Result<Resolved> {
        let found = find(self, &req.key)?;
        Ok(answer(found, req, self.retention_years))
    }

    pub fn person_by_medical_id(&self, id: MedicalId) -> Result<Person> {
        match self.ids.get(id.as_u64())? {
            Some(v) => {
                let e: IdEntry = decode(v.value())?;
                person(&self.persons, e.pid)
            }
            None => Err(StoreError::UnknownMedicalId(id)),
        }
    }

    pub fn person_by_my_number(&self, n: MyNumber) -> Result<Person> {
        let t = self.tx.open_table(MY_NUMBERS)?;
        let pid = t.get(n.as_u64())?.map(|g| g.value());
        match pid {
            Some(pid) => person(&self.persons, pid),
            None => Err(StoreError::UnknownMyNumber(n)),
        }
    }

    pub fn persons(&self) -> Result<Vec<Person>> {
        self.first_persons(usize::MAX)
    }

    /// The first `n` persons in pid order.
    pub fn first_persons(&self, n: usize) -> Result<Vec<Person>> {
        let mut out = Vec::new();
        for item in self.persons.iter()?.take(n) {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    pub fn id_entry(&self, id: MedicalId) -> Result<Option<IdEntry>> {
        match self.ids.get(id.as_u64())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Everyone on a card (one person when the branch is given).
    pub fn persons_by_card(
        &self,
        insurer: &iryo_proto::InsurerNumber,
        symbol: &iryo_proto::CardSymbol,
        number: &iryo_proto::CardNumber,
        branch: Option<iryo_proto::Branch>,
    ) -> Result<Vec<Person>> {
        let prefix = Card::prefix_of(insurer, symbol, number, branch);
        let mut out: Vec<Person> = Vec::new();
        for item in self.cards.range(prefix.as_slice()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let pid = decode::<CardStanding>(v.value())?.pid;
            if out.iter().all(|p| p.pid != pid) {
                if let Some(p) = self.persons.get(pid)? {
                    out.push(decode(p.value())?);
                }
            }
        }
        Ok(out)
    }

    /// The person's service history in the order it happened.
    pub fn service_uses(&self, pid: u64) -> Result<Vec<ServiceUse>> {
        linkage::of_person(&self.linkage, &self.tx, pid)
    }

    pub fn counts(&self) -> Result<Counts> {
        Ok(Counts {
            persons: self.persons.len()?,
            issued_ids: self.ids.len()?,
            cards: self.cards.len()?,
            service_uses: linkage::count(&self.tx)?,
            open_conflicts: self.count_open(CONFLICTS, |c: Conflict| c.status)?,
            open_mismatches: self.count_open(MISMATCHES, |m: Mismatch| m.status)?,
            notices_waiting: match self.tx.open_table(REGISTRY_OUTBOX) {
                Ok(t) => t.len()?,
                Err(redb::TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            },
        })
    }

    fn count_open<T: serde::de::DeserializeOwned>(
        &self,
        def: redb::TableDefinition<u64, &[u8]>,
        status: fn(T) -> CaseStatus,
    ) -> Result<u64> {
        let mut n = 0;
        for item in self.tx.open_table(def)?.iter()? {
            if status(decode(item?.1.value())?) == CaseStatus::Open {
                n += 1;
            }
        }
        Ok(n)
    }
}
