//! Eligibility checks (seed 3, 4-1, 2-5): the read path, and the recording path that
//! appends service use and mismatches for a whole batch of checks in one commit.

use super::tables::*;
use super::{decode, encode, Counts, Result, Store, StoreError};
use crate::registry::eligibility::{decide, CheckAnswer, CheckKey, CheckRequest, Reason};
use crate::registry::{
    Card, CaseStatus, Conflict, IdEntry, IdStatus, Mismatch, Notice, Person, Recipient, ServiceUse,
    Timestamp,
};
use iryo_proto::{MedicalId, MyNumber};
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
};

/// Who a check's key points at.
enum Found {
    Person(Person),
    Refused(Reason, Option<MedicalId>),
}

/// Resolves a check key with any table handles, read-only or inside a write.
fn find(
    persons: &impl ReadableTable<u64, &'static [u8]>,
    cards: &impl ReadableTable<&'static [u8], u64>,
    ids: &impl ReadableTable<u64, &'static [u8]>,
    key: &CheckKey,
) -> Result<Found> {
    let pid = match key {
        CheckKey::Card {
            insurer,
            symbol,
            number,
            branch: Some(branch),
            ..
        } => {
            let card = Card {
                insurer: insurer.clone(),
                symbol: symbol.clone(),
                number: number.clone(),
                branch: *branch,
            };
            cards.get(card.key().as_slice())?.map(|g| g.value())
        }
        CheckKey::Card {
            insurer,
            symbol,
            number,
            branch: None,
            ..
        } => {
            let prefix = Card::prefix(insurer, symbol, number);
            let mut holders = Vec::new();
            for item in cards.range(prefix.as_slice()..)? {
                let (k, v) = item?;
                if !k.value().starts_with(&prefix) || holders.len() > 1 {
                    break;
                }
                holders.push(v.value());
            }
            match holders.as_slice() {
                [pid] => Some(*pid),
                [] => None,
                _ => return Ok(Found::Refused(Reason::BranchRequired, None)),
            }
        }
        CheckKey::MedicalId(id) => match ids.get(id.as_u64())? {
            None => None,
            Some(v) => {
                let e: IdEntry = decode(v.value())?;
                if let IdStatus::Changed { .. } = e.status {
                    let p = person(persons, e.pid)?;
                    return Ok(Found::Refused(Reason::IdChanged, Some(p.medical_id)));
                }
                Some(e.pid)
            }
        },
    };
    match pid {
        Some(pid) => Ok(Found::Person(person(persons, pid)?)),
        None => Ok(Found::Refused(Reason::NotFound, None)),
    }
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
    cards: ReadOnlyTable<&'static [u8], u64>,
    ids: ReadOnlyTable<u64, &'static [u8]>,
    tx: ReadTransaction,
    retention_years: u32,
}

impl Store {
    pub fn reader(&self) -> Result<Reader> {
        let tx = self.db.begin_read()?;
        Ok(Reader {
            persons: tx.open_table(PERSONS)?,
            cards: tx.open_table(CARDS)?,
            ids: tx.open_table(MEDICAL_IDS)?,
            tx,
            retention_years: self.retention_years,
        })
    }

    /// One check, recorded durably before the answer returns.
    pub fn check(&self, req: &CheckRequest, at: Timestamp) -> Result<CheckAnswer> {
        let mut answers = self.check_batch(std::slice::from_ref(req), at)?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Inconsistent("a check produced no answer".into()))
    }

    /// Answers many checks and records all their service use in one commit: the group
    /// commit that lets durable checks run at the speed of the read path.
    pub fn check_batch(&self, reqs: &[CheckRequest], at: Timestamp) -> Result<Vec<CheckAnswer>> {
        let retention = self.retention_years;
        self.write(|t| {
            let mut out = Vec::with_capacity(reqs.len());
            for req in reqs {
                out.push(check_in(t, req, retention, at)?);
            }
            Ok(out)
        })
    }
}

fn check_in(
    t: &mut Tables<'_>,
    req: &CheckRequest,
    retention: u32,
    at: Timestamp,
) -> Result<CheckAnswer> {
    let person = match find(&t.persons, &t.cards, &t.medical_ids, &req.key)? {
        Found::Person(p) => p,
        Found::Refused(reason, id) => {
            if let (Reason::IdChanged, Some(current)) = (reason, id) {
                if let Some(e) = t.id_entry(current)? {
                    record_use(t, e.pid, req, false, at)?;
                }
            }
            return Ok(CheckAnswer::refused(reason, id));
        }
    };
    let mut answer = decide(&person, &req.key, req.date, retention);
    record_use(t, person.pid, req, answer.eligible, at)?;
    if let CheckKey::Card {
        presented: Some(presented),
        ..
    } = &req.key
    {
        if *presented != person.medical_id {
            answer.mismatch = Some(record_mismatch(t, &person, req, *presented, at)?);
        }
    }
    Ok(answer)
}

fn record_use(
    t: &mut Tables<'_>,
    pid: u64,
    req: &CheckRequest,
    eligible: bool,
    at: Timestamp,
) -> Result<()> {
    let seq = t.next(SERVICE_SEQ)?;
    let u = ServiceUse {
        institution: req.institution,
        date: req.date,
        eligible,
        at,
    };
    t.service_use.insert((pid, seq), encode(&u)?.as_slice())?;
    Ok(())
}

/// Records a presented ID that differs from the registry, once while it is open, and
/// queues notices to the person and the insurer (seed 2-5).
fn record_mismatch(
    t: &mut Tables<'_>,
    person: &Person,
    req: &CheckRequest,
    presented: MedicalId,
    at: Timestamp,
) -> Result<u64> {
    let card = match (
        &req.key,
        person.coverage_on(req.date).or(person.coverages.last()),
    ) {
        (
            CheckKey::Card {
                insurer,
                symbol,
                number,
                branch,
                ..
            },
            fallback,
        ) => match (branch, fallback) {
            (Some(b), _) => Card {
                insurer: insurer.clone(),
                symbol: symbol.clone(),
                number: number.clone(),
                branch: *b,
            },
            (None, Some(c)) => c.card.clone(),
            (None, None) => {
                return Err(StoreError::Inconsistent(format!(
                    "pid {} has a card but no coverage",
                    person.pid
                )))
            }
        },
        (CheckKey::MedicalId(_), _) => {
            return Err(StoreError::Inconsistent("mismatch without a card".into()))
        }
    };
    let mut key = card.key();
    key.extend_from_slice(&presented.as_u64().to_be_bytes());
    if let Some(id) = t.mismatch_keys.get(key.as_slice())?.map(|g| g.value()) {
        return Ok(id);
    }
    let id = t.next(MISMATCH_SEQ)?;
    let m = Mismatch {
        id,
        institution: req.institution,
        card: card.clone(),
        presented,
        registered: person.medical_id,
        date: req.date,
        status: CaseStatus::Open,
        at,
    };
    t.mismatches.insert(id, encode(&m)?.as_slice())?;
    t.mismatch_keys.insert(key.as_slice(), id)?;
    let texts = [
        (
            Recipient::Person {
                medical_id: person.medical_id,
            },
            format!(
                "医療機関 {} で提示された医療等番号 {} は登録内容と異なります。 / The medical ID {} presented at institution {} does not match our records.",
                req.institution,
                presented.grouped(),
                presented.grouped(),
                req.institution
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
        t.notices.insert(nid, encode(&n)?.as_slice())?;
    }
    Ok(id)
}

impl Reader {
    /// The read path of a check: the same decision, nothing recorded.
    pub fn check(&self, req: &CheckRequest) -> Result<CheckAnswer> {
        Ok(
            match find(&self.persons, &self.cards, &self.ids, &req.key)? {
                Found::Person(p) => decide(&p, &req.key, req.date, self.retention_years),
                Found::Refused(reason, id) => CheckAnswer::refused(reason, id),
            },
        )
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

    pub fn service_uses(&self, pid: u64) -> Result<Vec<ServiceUse>> {
        let t = self.tx.open_table(SERVICE_USE)?;
        let mut out = Vec::new();
        for item in t.range((pid, 0)..=(pid, u64::MAX))? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    pub fn counts(&self) -> Result<Counts> {
        Ok(Counts {
            persons: self.persons.len()?,
            issued_ids: self.ids.len()?,
            cards: self.cards.len()?,
            service_uses: self.tx.open_table(SERVICE_USE)?.len()?,
            open_conflicts: self.count_open(CONFLICTS, |c: Conflict| c.status)?,
            open_mismatches: self.count_open(MISMATCHES, |m: Mismatch| m.status)?,
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
