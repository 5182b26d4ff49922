//! The typed operations of `RegistryTx` and `Lookup` on PostgreSQL: reads through
//! what the transaction wrote and read ahead, writes kept for the commit (`Writes`),
//! rare changes sent at once.

use super::{db, ints, PgTx, PID};
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::postgres::{sql, unsql, PgError};
use crate::registry::eligibility::CardStanding;
use crate::registry::{
    Card, Conflict, EnrollmentRow, IdEntry, IdStatus, Mismatch, Notice, Person, ServiceUse,
};
use crate::store::{decode, encode, GrantRecord, InstitutionRecord, Result};
use iryo_proto::{InstitutionCode, MedicalId, MyNumber};
use std::collections::HashSet;

impl crate::store::checks::Lookup for PgTx<'_> {
    fn standing(&self, card_key: &[u8]) -> Result<Option<CardStanding>> {
        if let Some((_, standing)) = self.out.cards.get(card_key) {
            return Ok(Some(decode(standing)?));
        }
        if let Some(read) = self.standings.get(card_key) {
            return Ok(*read);
        }
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT standing FROM cards WHERE card_key = $1",
                &[&card_key],
            ))
            .map_err(db)?;
        row.map(|r| decode(r.get::<_, &[u8]>(0))).transpose()
    }

    fn standings_with_prefix(&self, prefix: &[u8], n: usize) -> Result<Vec<CardStanding>> {
        // bytea orders as its bytes do, so the keys with a prefix are one range.
        let rows = self
            .rt
            .block_on(self.tx.query(
                "SELECT card_key, standing FROM cards WHERE card_key >= $1
                 ORDER BY card_key LIMIT $2",
                &[&prefix, &(n as i64)],
            ))
            .map_err(db)?;
        rows.iter()
            .take_while(|r| r.get::<_, &[u8]>(0).starts_with(prefix))
            .map(|r| decode(r.get::<_, &[u8]>(1)))
            .collect()
    }

    fn issued(&self, id: MedicalId) -> Result<Option<IdEntry>> {
        let n = id.as_u64();
        if let Some(claimed) = self.out.ids.iter().find(|c| c.0 == n) {
            return Ok(Some(decode(&claimed.2)?));
        }
        if let Some(read) = self.issued.get(&n) {
            return Ok(*read);
        }
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT entry FROM medical_ids WHERE medical_id = $1",
                &[&sql(n)?],
            ))
            .map_err(db)?;
        row.map(|r| decode(r.get::<_, &[u8]>(0))).transpose()
    }

    fn record_of(&self, pid: u64) -> Result<Person> {
        if let Some(p) = self.persons.get(&pid).or_else(|| self.records.get(&pid)) {
            return Ok(p.clone());
        }
        let row = self
            .rt
            .block_on(
                self.tx
                    .query_opt("SELECT record FROM persons WHERE pid = $1", &[&sql(pid)?]),
            )
            .map_err(db)?;
        match row {
            Some(r) => decode(r.get::<_, &[u8]>(0)),
            None => Err(PgError::Inconsistent(format!("pid {pid} has no record")).into()),
        }
    }
}

impl crate::store::registry_tx::RegistryTx for PgTx<'_> {
    fn pid_by_my_number(&mut self, n: MyNumber) -> Result<Option<u64>> {
        if let Some(v) = self.my_numbers.get(&n.as_u64()) {
            return Ok(*v);
        }
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT pid FROM my_numbers WHERE my_number = $1",
                &[&sql(n.as_u64())?],
            ))
            .map_err(db)?;
        let pid = row.map(|r| unsql(r.get(0))).transpose()?;
        self.my_numbers.insert(n.as_u64(), pid);
        Ok(pid)
    }

    fn person(&mut self, pid: u64) -> Result<Person> {
        self.read_persons(&[pid])?;
        self.persons
            .get(&pid)
            .cloned()
            .ok_or_else(|| PgError::Inconsistent(format!("pid {pid} has no record")).into())
    }

    fn card_holder(&mut self, card: &Card) -> Result<Option<u64>> {
        let key = card.key();
        if let Some(v) = self.cards.get(&key) {
            return Ok(*v);
        }
        let row = self
            .rt
            .block_on(
                self.tx
                    .query_opt("SELECT pid FROM cards WHERE card_key = $1", &[&key]),
            )
            .map_err(db)?;
        let pid = row.map(|r| unsql(r.get(0))).transpose()?;
        self.cards.insert(key, pid);
        Ok(pid)
    }

    fn put_person(&mut self, p: &Person) -> Result<()> {
        let record = encode(p)?;
        self.out
            .persons
            .insert(p.pid, (p.my_number.as_u64(), p.medical_id.as_u64(), record));
        self.persons.insert(p.pid, p.clone());
        Ok(())
    }

    fn save_person(&mut self, p: &Person) -> Result<()> {
        self.put_person(p)?;
        for c in &p.coverages {
            let key = c.card.key();
            let standing = encode(&CardStanding::of(p, c))?;
            self.cards.insert(key.clone(), Some(p.pid));
            self.out.cards.insert(key, (p.pid, standing));
        }
        Ok(())
    }

    fn put_my_number(&mut self, n: MyNumber, pid: u64) -> Result<()> {
        self.my_numbers.insert(n.as_u64(), Some(pid));
        self.out.my_numbers.push((n.as_u64(), pid));
        Ok(())
    }

    fn next(&mut self, counter: &'static str) -> Result<u64> {
        let v = self.load_counter(counter)?;
        self.counters.insert(counter, v + 1);
        Ok(v)
    }

    fn claim_id(&mut self, id: MedicalId, entry: &IdEntry) -> Result<bool> {
        let n = id.as_u64();
        if self.ids_taken.contains(&n) {
            return Ok(false);
        }
        if !self.ids_free.remove(&n) {
            let row = self
                .rt
                .block_on(self.tx.query_opt(
                    "SELECT 1 FROM medical_ids WHERE medical_id = $1",
                    &[&sql(n)?],
                ))
                .map_err(db)?;
            if row.is_some() {
                self.ids_taken.insert(n);
                return Ok(false);
            }
        }
        self.ids_taken.insert(n);
        self.out.ids.push((n, entry.pid, encode(entry)?));
        Ok(true)
    }

    fn conflict_by_key(&mut self, key: &[u8]) -> Result<Option<u64>> {
        if let Some(c) = self.out.conflicts.iter().find(|c| c.2 == key) {
            return Ok(Some(c.0));
        }
        let row = self
            .rt
            .block_on(
                self.tx
                    .query_opt("SELECT id FROM conflict_keys WHERE row_key = $1", &[&key]),
            )
            .map_err(db)?;
        Ok(row.map(|r| unsql(r.get(0))).transpose()?)
    }

    fn put_conflict(&mut self, c: &Conflict, key: &[u8]) -> Result<()> {
        self.out.conflicts.push((c.id, encode(c)?, key.to_vec()));
        Ok(())
    }

    fn audit_append(&mut self, entry: &LogEntry) -> Result<u64> {
        self.begin_audit()?;
        match self.appender.as_mut() {
            Some(a) => Ok(a.append(entry)?),
            None => Err(PgError::Inconsistent("the audit appender did not start".into()).into()),
        }
    }

    fn id_entry(&mut self, id: MedicalId) -> Result<Option<IdEntry>> {
        crate::store::checks::Lookup::issued(self, id)
    }

    // Changes of status, deaths and their sweep are rare and few per transaction:
    // they go to the database at once, inside the transaction, rather than wait.
    fn set_id_status(&mut self, id: MedicalId, pid: u64, status: IdStatus) -> Result<()> {
        let n = id.as_u64();
        let entry = encode(&IdEntry { pid, status })?;
        if let Some(claimed) = self.out.ids.iter_mut().find(|c| c.0 == n) {
            claimed.2 = entry;
            return Ok(());
        }
        self.rt
            .block_on(self.tx.execute(
                "INSERT INTO medical_ids (medical_id, pid, entry) VALUES ($1, $2, $3)
                 ON CONFLICT (medical_id) DO UPDATE SET pid = excluded.pid, entry = excluded.entry",
                &[&sql(n)?, &sql(pid)?, &entry],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn mark_death(&mut self, day: i64, pid: u64, present: bool) -> Result<()> {
        let statement = if present {
            "INSERT INTO deaths (died_day, pid) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM deaths WHERE died_day = $1 AND pid = $2"
        };
        self.rt
            .block_on(self.tx.execute(statement, &[&day, &sql(pid)?]))
            .map_err(db)?;
        Ok(())
    }

    fn kept_entry(&mut self, scope: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT kept FROM idempotency WHERE scope = $1",
                &[&scope.as_slice()],
            ))
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn keep_entry(&mut self, scope: [u8; 32], at: i64, entry: &[u8]) -> Result<()> {
        let (tx, rt) = (&self.tx, self.rt);
        rt.block_on(async {
            tx.execute(
                "INSERT INTO idempotency (scope, kept_at, kept) VALUES ($1, $2, $3)
                 ON CONFLICT (scope) DO UPDATE SET kept_at = excluded.kept_at, kept = excluded.kept",
                &[&scope.as_slice(), &at, &entry],
            )
            .await?;
            tx.execute(
                "DELETE FROM idempotency WHERE scope IN (
                     SELECT scope FROM idempotency WHERE kept_at < $1 ORDER BY kept_at LIMIT $2)",
                &[
                    &(at - crate::store::idempotency::KEPT_SECONDS),
                    &(crate::store::idempotency::FORGET_AT_ONCE as i64),
                ],
            )
            .await
        })
        .map_err(db)?;
        Ok(())
    }

    fn append_service_use(&mut self, pid: u64, u: &ServiceUse) -> Result<()> {
        self.out.service_uses.push((sql(pid)?, encode(u)?));
        Ok(())
    }

    fn put_consent(&mut self, pid: u64, seq: u64, r: &ConsentRecord) -> Result<()> {
        self.out.consents.push((sql(pid)?, sql(seq)?, encode(r)?));
        Ok(())
    }

    fn mismatch_by_key(&mut self, key: &[u8]) -> Result<Option<u64>> {
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT id FROM mismatch_keys WHERE card_and_id = $1",
                &[&key],
            ))
            .map_err(db)?;
        Ok(row.map(|r| unsql(r.get(0))).transpose()?)
    }

    // Mismatches and notices are rare: they go to the database at once.
    fn put_mismatch(&mut self, m: &Mismatch, key: &[u8]) -> Result<()> {
        let (tx, rt) = (&self.tx, self.rt);
        let (id, value) = (sql(m.id)?, encode(m)?);
        rt.block_on(async {
            tx.execute(
                "INSERT INTO mismatches (id, mismatch) VALUES ($1, $2)",
                &[&id, &value],
            )
            .await?;
            tx.execute(
                "INSERT INTO mismatch_keys (card_and_id, id) VALUES ($1, $2)",
                &[&key, &id],
            )
            .await
        })
        .map_err(db)?;
        Ok(())
    }

    fn put_notice(&mut self, n: &Notice) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(
                "INSERT INTO notices (id, notice) VALUES ($1, $2)",
                &[&sql(n.id)?, &encode(n)?],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn conflict(&mut self, id: u64) -> Result<Option<Conflict>> {
        if let Some(pending) = self.out.conflicts.iter().find(|c| c.0 == id) {
            return Ok(Some(decode(&pending.1)?));
        }
        self.one("SELECT conflict FROM conflicts WHERE id = $1", id)
    }

    fn save_conflict(&mut self, c: &Conflict) -> Result<()> {
        if let Some(pending) = self.out.conflicts.iter_mut().find(|p| p.0 == c.id) {
            pending.1 = encode(c)?;
            return Ok(());
        }
        self.now(
            "UPDATE conflicts SET conflict = $2 WHERE id = $1",
            c.id,
            &encode(c)?,
        )
    }

    fn mismatch(&mut self, id: u64) -> Result<Option<Mismatch>> {
        self.one("SELECT mismatch FROM mismatches WHERE id = $1", id)
    }

    fn save_mismatch(&mut self, m: &Mismatch) -> Result<()> {
        self.now(
            "UPDATE mismatches SET mismatch = $2 WHERE id = $1",
            m.id,
            &encode(m)?,
        )
    }

    fn forget_mismatch_key(&mut self, key: &[u8]) -> Result<()> {
        self.rt
            .block_on(
                self.tx
                    .execute("DELETE FROM mismatch_keys WHERE card_and_id = $1", &[&key]),
            )
            .map_err(db)?;
        Ok(())
    }

    fn unbind_card(&mut self, card: &Card) -> Result<()> {
        let key = card.key();
        self.out.cards.remove(&key);
        self.rt
            .block_on(
                self.tx
                    .execute("DELETE FROM cards WHERE card_key = $1", &[&key]),
            )
            .map_err(db)?;
        self.cards.insert(key, None);
        Ok(())
    }

    fn role(&self) -> crate::config::ServiceRole {
        self.role
    }

    fn peek(&mut self, counter: &'static str) -> Result<u64> {
        self.load_counter(counter)
    }

    fn subject(&mut self, pid: u64) -> Result<Option<crate::store::subjects::Subject>> {
        self.one("SELECT body FROM subjects WHERE pid = $1", pid)
    }

    fn put_subject(&mut self, s: &crate::store::subjects::Subject) -> Result<()> {
        self.now(
            "INSERT INTO subjects (pid, body) VALUES ($1, $2)
             ON CONFLICT (pid) DO UPDATE SET body = excluded.body",
            s.pid,
            &encode(s)?,
        )
    }

    fn tell_authority(&mut self, kind: iryo_proto::roles::NoticeKind, at: i64) -> Result<()> {
        if self.role != crate::config::ServiceRole::Registry {
            return Ok(());
        }
        let seq = self.next(crate::store::subjects::NEXT_TOLD)?;
        let n = iryo_proto::roles::RegistryNotice { seq, at, kind };
        self.now(
            "INSERT INTO registry_outbox (seq, notice) VALUES ($1, $2)",
            seq,
            &encode(&n)?,
        )
    }

    fn account(&mut self, pid: u64) -> Result<Option<crate::store::Account>> {
        self.one("SELECT account FROM portal_accounts WHERE pid = $1", pid)
    }

    fn put_account(&mut self, pid: u64, a: &crate::store::Account) -> Result<()> {
        self.now(
            "INSERT INTO portal_accounts (pid, account) VALUES ($1, $2)
             ON CONFLICT (pid) DO UPDATE SET account = excluded.account",
            pid,
            &encode(a)?,
        )
    }

    fn institution(&mut self, code: InstitutionCode) -> Result<Option<InstitutionRecord>> {
        self.one(
            "SELECT record FROM institutions WHERE code = $1",
            code.as_u64(),
        )
    }

    fn put_institution(&mut self, code: InstitutionCode, r: &InstitutionRecord) -> Result<()> {
        self.now(
            "INSERT INTO institutions (code, record) VALUES ($1, $2)
             ON CONFLICT (code) DO UPDATE SET record = excluded.record",
            code.as_u64(),
            &encode(r)?,
        )
    }

    fn put_institution_key(&mut self, key: [u8; 32], code: InstitutionCode) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(
                "INSERT INTO institution_keys (public_key, code) VALUES ($1, $2)
                 ON CONFLICT (public_key) DO UPDATE SET code = excluded.code",
                &[&key.as_slice(), &sql(code.as_u64())?],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn forget_institution_key(&mut self, key: &[u8; 32]) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(
                "DELETE FROM institution_keys WHERE public_key = $1",
                &[&key.as_slice()],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn consents_of(&mut self, pid: u64) -> Result<Vec<ConsentRecord>> {
        let n = sql(pid)?;
        let rows = self
            .rt
            .block_on(self.tx.query(
                "SELECT record FROM consents WHERE pid = $1 ORDER BY seq",
                &[&n],
            ))
            .map_err(db)?;
        let mut out = rows
            .iter()
            .map(|r| decode(r.get::<_, &[u8]>(0)))
            .collect::<Result<Vec<ConsentRecord>>>()?;
        // Decisions recorded earlier in this transaction come after every stored one.
        for (p, _, record) in &self.out.consents {
            if *p == n {
                out.push(decode(record)?);
            }
        }
        Ok(out)
    }

    fn grant(&mut self, id: &[u8; 16]) -> Result<Option<GrantRecord>> {
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT record FROM grants WHERE grant_id = $1",
                &[&id.as_slice()],
            ))
            .map_err(db)?;
        row.map(|r| decode(r.get::<_, &[u8]>(0))).transpose()
    }

    fn put_grant(&mut self, g: &GrantRecord) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(
                "INSERT INTO grants (grant_id, medical_id, record) VALUES ($1, $2, $3)
                 ON CONFLICT (grant_id) DO UPDATE SET record = excluded.record",
                &[
                    &g.grant.id.as_slice(),
                    &sql(g.grant.medical_id.as_u64())?,
                    &encode(g)?,
                ],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn notification_leaf(&mut self, id: &[u8; 16]) -> Result<Option<u64>> {
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT leaf FROM notification_ids WHERE id = $1",
                &[&id.as_slice()],
            ))
            .map_err(db)?;
        Ok(row.map(|r| unsql(r.get(0))).transpose()?)
    }

    fn put_notification_leaf(&mut self, id: [u8; 16], leaf: u64) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(
                "INSERT INTO notification_ids (id, leaf) VALUES ($1, $2)",
                &[&id.as_slice(), &sql(leaf)?],
            ))
            .map_err(db)?;
        Ok(())
    }

    fn close_grant(&mut self, id: [u8; 16], closed: &[u8]) -> Result<bool> {
        let inserted = self
            .rt
            .block_on(self.tx.execute(
                "INSERT INTO closed_grants (grant_id, record) VALUES ($1, $2)
                 ON CONFLICT (grant_id) DO NOTHING",
                &[&id.as_slice(), &closed],
            ))
            .map_err(db)?;
        Ok(inserted == 1)
    }

    fn deaths_after(&mut self, after: Option<(i64, u64)>, n: usize) -> Result<Vec<(i64, u64)>> {
        let (day, pid) = match after {
            Some((d, p)) => (d, sql(p)?),
            None => (i64::MIN, -1),
        };
        let rows = self
            .rt
            .block_on(self.tx.query(
                "SELECT died_day, pid FROM deaths WHERE (died_day, pid) > ($1, $2)
                 ORDER BY died_day, pid LIMIT $3",
                &[&day, &pid, &(n as i64)],
            ))
            .map_err(db)?;
        rows.iter()
            .map(|r| Ok((r.get(0), unsql(r.get(1))?)))
            .collect()
    }

    fn prefetch_rows(
        &mut self,
        rows: &[EnrollmentRow],
        candidates: Option<&[MedicalId]>,
    ) -> Result<()> {
        self.load_counter(PID)?;
        let mut pids = self.read_my_numbers(rows)?;
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.card.key()).collect();
        let held = self
            .rt
            .block_on(self.tx.query(
                "SELECT card_key, pid FROM cards WHERE card_key = ANY($1)",
                &[&keys],
            ))
            .map_err(db)?;
        keys.into_iter().for_each(|k| {
            self.cards.entry(k).or_insert(None);
        });
        for r in held {
            let pid = unsql(r.get(1))?;
            self.cards.insert(r.get::<_, Vec<u8>>(0), Some(pid));
            pids.push(pid);
        }
        pids.sort_unstable();
        pids.dedup();
        self.read_persons(&pids)?;
        if let Some(candidates) = candidates {
            let wanted: Vec<u64> = candidates.iter().map(|c| c.as_u64()).collect();
            let taken = self
                .rt
                .block_on(self.tx.query(
                    "SELECT medical_id FROM medical_ids WHERE medical_id = ANY($1)",
                    &[&ints(&wanted)?],
                ))
                .map_err(db)?;
            let mut free: HashSet<u64> = wanted.into_iter().collect();
            for r in taken {
                let id = unsql(r.get(0))?;
                free.remove(&id);
                self.ids_taken.insert(id);
            }
            self.ids_free.extend(free);
        }
        Ok(())
    }
}
