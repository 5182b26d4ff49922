//! The directory's store on PostgreSQL: the operations that run on it so far, with
//! the same rules as the redb store (`store::registry_tx`).
//!
//! The store is synchronous, as the redb store is: it owns a single-threaded Tokio
//! runtime for its connection, which the calling thread drives while it waits
//! (`Runtime::block_on`, from a command's thread, a `spawn_blocking` thread or the
//! group-commit thread in `serve`).

mod exchange;
mod front;
pub(crate) mod initial_load;
mod intake;
mod pipeline;
mod pool;

use super::registry_tx::PgTx;
use super::{migrate, unsql, DatabaseUrl, PgError};
use crate::issuance::{Issuer, Method};
use crate::postgres::prepared::HOT;
use crate::registry::dates::DateRules;
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::{
    CaseStatus, Conflict, EnrollmentRow, Mismatch, Notice, Person, ServiceUse, Timestamp,
};
use crate::store::{
    assign, cases, checks, decode, lifecycle, AccessPolicy, AssignmentRow, BatchReport,
    ConflictAction, Counts, InstitutionRecord, LetterRow, MismatchAction, Plan, Result, StoreError,
};
use chrono::NaiveDate;
use ed25519_dalek::SigningKey;
use iryo_proto::{InsurerNumber, MedicalId, MyNumber};
use pool::{Conn, Pool};
use std::sync::Mutex;
use tokio_postgres::Client;

/// The counters a registry starts with, each at 1 (`store::tables`): their rows exist
/// from the start, so the first writers to take one queue on its row lock.
const COUNTERS: [&str; 6] = [
    "next_pid",
    "next_conflict",
    "next_mismatch",
    "next_notice",
    "next_consent",
    "next_membership_serial",
];

pub struct PgStore {
    url: DatabaseUrl,
    pool: Pool,
    signer: Option<SigningKey>,
    retention_years: u32,
    date_allowance_days: u32,
    policy: AccessPolicy,
    /// The audit log's right edge as this process last committed it: the next
    /// appending transaction reads it again only if another process appended since.
    edge: Mutex<Option<iryo_proto::merkle::Frontier>>,
    /// Groups whose first statements went out behind the COMMIT of the one before
    /// (`pipeline`).
    pipelined: std::sync::atomic::AtomicU64,
    /// Memberships by node key, with when they were read (`cached_member`).
    members: Mutex<std::collections::HashMap<[u8; 32], (std::time::Instant, InstitutionRecord)>>,
    /// The service this store is kept for (`Store::with_role`).
    role: crate::config::ServiceRole,
}

/// How long a membership read from the database is trusted without reading it again:
/// the longest a revocation by another process takes to reach this one.
const MEMBER_SECONDS: std::time::Duration = std::time::Duration::from_secs(2);

/// How a transaction opens.
#[derive(Clone, Copy)]
enum Begin {
    /// With the audit log's lock, in one round trip: it may append.
    Logged,
    /// At once: it appends nothing to the log.
    Now,
    /// With the first statements its closure sends (`write_grouped`).
    WithReads,
}

/// Runs `f`, which waits on the store's own runtime, from any thread: on a worker
/// thread of a multi-threaded runtime (an HTTPS handler that did not move its call to
/// a blocking thread) the worker first hands its other tasks on, since a runtime may
/// not be waited on from inside another's worker.
fn off_async<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl PgStore {
    /// Prepares an empty database as a new registry that issues IDs by `method`:
    /// applies the migrations, then records the method. Refuses a database that holds
    /// a registry already.
    pub fn create(url: &DatabaseUrl, method: Method) -> Result<Self> {
        let mut conn = Conn::connect(url)?;
        let (rt, client) = conn.parts()?;
        rt.block_on(async {
            migrate::migrate(client).await?;
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    "INSERT INTO settings (name, value) VALUES ('issuance_method', $1)
                     ON CONFLICT (name) DO NOTHING",
                    &[&method.as_str()],
                )
                .await?;
            if inserted == 0 {
                return Err(PgError::Initialised(url.to_string()));
            }
            for name in COUNTERS {
                tx.execute(
                    "INSERT INTO counters (name, value) VALUES ($1, 1) ON CONFLICT DO NOTHING",
                    &[&name],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, PgError>(())
        })?;
        Ok(Self::on(url, conn))
    }

    /// The store on `url`, with `conn` its first connection and the defaults that
    /// `with_*` change.
    fn on(url: &DatabaseUrl, conn: Conn) -> Self {
        Self {
            url: url.clone(),
            pool: Pool::new(url, conn, url.pool_size()),
            signer: None,
            retention_years: 10,
            date_allowance_days: 1,
            policy: AccessPolicy::default(),
            members: Mutex::default(),
            edge: Mutex::default(),
            pipelined: Default::default(),
            role: crate::config::ServiceRole::All,
        }
    }

    /// Refuses a database that cannot be reached or holds a registry already, before
    /// anything is written for it (`init`).
    pub fn ensure_empty(url: &DatabaseUrl) -> Result<()> {
        let mut conn = Conn::connect(url)?;
        let (rt, client) = conn.parts()?;
        let initialised = rt.block_on(async {
            let has_settings: bool = client
                .query_one("SELECT to_regclass('settings') IS NOT NULL", &[])
                .await?
                .get(0);
            if !has_settings {
                return Ok::<_, PgError>(false);
            }
            Ok(client
                .query_opt("SELECT 1 FROM settings WHERE name = 'issuance_method'", &[])
                .await?
                .is_some())
        })?;
        if initialised {
            return Err(PgError::Initialised(url.to_string()).into());
        }
        Ok(())
    }

    /// Opens a registry `create` prepared, refusing a schema this binary does not know.
    pub fn open(url: &DatabaseUrl) -> Result<Self> {
        let mut conn = Conn::connect(url)?;
        let (rt, client) = conn.parts()?;
        rt.block_on(migrate::check(client))?;
        let store = Self::on(url, conn);
        store.method()?;
        Ok(store)
    }

    /// Lets this store append to the audit log, signing each new head with `key`.
    pub fn with_signer(mut self, key: SigningKey) -> Self {
        self.signer = Some(key);
        self
    }

    /// The service this store is kept for (`Store::with_role`).
    pub fn with_role(mut self, role: crate::config::ServiceRole) -> Self {
        self.role = role;
        self
    }

    /// Years after death an ID still serves research (`registry.retention_years`).
    pub fn with_retention(mut self, years: u32) -> Self {
        self.retention_years = years;
        self
    }

    /// Days past today a stated date may lie (`registry.date_allowance_days`).
    pub fn with_date_allowance(mut self, days: u32) -> Self {
        self.date_allowance_days = days;
        self
    }

    /// The consent rules (`[access]`).
    pub fn with_policy(mut self, policy: AccessPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// One check, recorded durably before the answer returns (`Store::check`).
    pub fn check(&self, req: &CheckRequest, at: Timestamp) -> Result<CheckAnswer> {
        self.date_rules().not_future("date of service", req.date)?;
        let mut answers = self.check_batch(std::slice::from_ref(req), at)?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Inconsistent("a check produced no answer".into()))
    }

    /// Answers many checks and records them all in one transaction, by the same rules
    /// as the redb store: service use, the audit log, visit consent, mismatches and
    /// their notices, and the answers kept for idempotency keys.
    pub fn check_batch(&self, reqs: &[CheckRequest], at: Timestamp) -> Result<Vec<CheckAnswer>> {
        let (retention, visit_days) = (self.retention_years, self.policy.visit_consent_days);
        self.write_grouped(|t| {
            t.begin_and_prefetch(reqs, true)?;
            reqs.iter()
                .map(|req| checks::decide_and_record(t, req, retention, visit_days, at))
                .collect()
        })
    }

    /// How many of the network's groups began behind the COMMIT of the group before
    /// them on the same connection, since the store was opened.
    pub fn groups_pipelined(&self) -> u64 {
        self.pipelined.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn retention_years(&self) -> u32 {
        self.retention_years
    }

    pub(crate) fn date_rules(&self) -> DateRules {
        DateRules {
            today: crate::registry::today(),
            allowance_days: self.date_allowance_days,
        }
    }

    /// Issues a new ID for a stated reason (`Store::change_id`).
    pub fn change_id(
        &self,
        id: MedicalId,
        reason: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<MedicalId> {
        self.write_unlogged(|t| lifecycle::change_id(t, id, reason, issuer, at))
    }

    /// Replaces a person's My Number (`Store::change_my_number`).
    pub fn change_my_number(
        &self,
        old: MyNumber,
        new: MyNumber,
        at: Timestamp,
    ) -> Result<MedicalId> {
        self.write_unlogged(|t| lifecycle::change_my_number(t, old, new, at))
    }

    /// Records a death (`Store::record_death`).
    pub fn record_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write(|t| lifecycle::record_death(t, id, date, by, at, &rules, retention))
    }

    /// Corrects the date of a recorded death (`Store::correct_death`).
    pub fn correct_death(
        &self,
        id: MedicalId,
        date: NaiveDate,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<NaiveDate> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write(|t| lifecycle::correct_death(t, id, date, reason, by, at, &rules, retention))
    }

    /// Undoes a death recorded in error (`Store::revoke_death`).
    pub fn revoke_death(&self, id: MedicalId, reason: &str, by: &str, at: Timestamp) -> Result<()> {
        self.write(|t| lifecycle::revoke_death(t, id, reason, by, at))
    }

    /// Retires the IDs whose retention period ended before `today` (`Store::retire_due`).
    pub fn retire_due(&self, today: NaiveDate, at: Timestamp) -> Result<Vec<MedicalId>> {
        let (rules, retention) = (self.date_rules(), self.retention_years);
        self.write_unlogged(|t| lifecycle::retire_due(t, today, at, &rules, retention))
    }

    /// The database, as it may be shown (no password).
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Runs `f` in one transaction that may append to the audit log, and commits it
    /// with a head signed over what it appended. The log's lock is the transaction's
    /// first: every lock a transaction takes after it is taken in the same order by
    /// every other appender (the person it changes, a counter), so two such
    /// transactions — in this process or another — never wait on each other in a circle.
    fn write<T>(&self, f: impl FnOnce(&mut PgTx<'_>) -> Result<T>) -> Result<T> {
        self.transaction(Begin::Logged, f)
    }

    /// Runs `f` in one transaction that appends nothing to the audit log: enrollment
    /// and bookkeeping, which then never wait for the log's appenders.
    fn write_unlogged<T>(&self, f: impl FnOnce(&mut PgTx<'_>) -> Result<T>) -> Result<T> {
        self.transaction(Begin::Now, f)
    }

    /// Runs `f`, whose first step is `PgTx::begin_and_prefetch`, in one
    /// transaction: BEGIN, the log's lock and the reads ahead go out together.
    fn write_grouped<T>(&self, f: impl FnOnce(&mut PgTx<'_>) -> Result<T>) -> Result<T> {
        self.transaction(Begin::WithReads, f)
    }

    fn transaction<T>(
        &self,
        begin: Begin,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        off_async(|| self.transaction_here(begin, f))
    }

    fn transaction_here<T>(
        &self,
        begin: Begin,
        f: impl FnOnce(&mut PgTx<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut held = self.pool.get()?;
        let (rt, client, prepared) = held.conn()?.all()?;
        rt.block_on(prepared.warm(&*client, HOT))
            .map_err(PgError::Db)?;
        let edge = self.edge.lock().ok().and_then(|e| e.clone());
        let mut t = PgTx::new(rt, client, edge, prepared);
        t.role = self.role;
        match begin {
            Begin::Logged => t.begin_audit()?,
            Begin::Now => t.begin_now()?,
            Begin::WithReads => {}
        }
        let out = f(&mut t)?;
        let at = crate::registry::now();
        // Kept only once committed: a transaction rolled back leaves the log as it was.
        if let Some(edge) = t.commit(self.signer.as_ref().map(|k| (k, at)))? {
            if let Ok(mut kept) = self.edge.lock() {
                *kept = Some(edge);
            }
        }
        Ok(out)
    }

    /// Runs one read on the connection.
    fn read<T>(
        &self,
        f: impl AsyncFnOnce(&Client) -> std::result::Result<T, PgError>,
    ) -> Result<T> {
        let mut held = self.pool.get()?;
        let (rt, client) = held.conn()?.parts()?;
        Ok(off_async(|| rt.block_on(f(client)))?)
    }

    pub fn method(&self) -> Result<Method> {
        let v: Option<String> = self.read(async |c| {
            Ok(c.query_opt(
                "SELECT value FROM settings WHERE name = 'issuance_method'",
                &[],
            )
            .await?
            .map(|r| r.get(0)))
        })?;
        let v = v.ok_or_else(|| PgError::NotInitialised(self.url.to_string()))?;
        Method::parse(&v).ok_or(StoreError::Inconsistent(format!("unknown method {v}")))
    }

    /// Applies `rows` in order and commits once, by the same rules as the redb store.
    pub fn enroll_batch(
        &self,
        source: &str,
        rows: &[EnrollmentRow],
        candidates: Option<&[MedicalId]>,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<BatchReport> {
        use super::registry_tx::bulk::{enroll, Lookup};
        let apply = |lookup| {
            self.write_unlogged(|t| enroll(t, source, rows, candidates, issuer, at, lookup))
        };
        match apply(Lookup::Numbers) {
            Err(StoreError::Postgres(PgError::KnownAfterAll)) => {
                tracing::debug!(
                    source,
                    "a card or ID of a new row is taken; looking all keys up"
                );
                apply(Lookup::All)
            }
            done => done,
        }
    }

    /// The person a lookup table's row names, if it names one.
    fn person_named(&self, query: &str, key: u64) -> Result<Option<Person>> {
        let key = super::sql(key)?;
        let Some(pid) = self.ints(query, &[&key])?.pop() else {
            return Ok(None);
        };
        match self
            .values("SELECT record FROM persons WHERE pid = $1", &[&pid])?
            .pop()
        {
            Some(p) => Ok(Some(p)),
            None => Err(StoreError::Inconsistent(format!("pid {pid} has no record"))),
        }
    }

    pub fn person_by_medical_id(&self, id: MedicalId) -> Result<Person> {
        self.person_named(
            "SELECT pid FROM medical_ids WHERE medical_id = $1",
            id.as_u64(),
        )?
        .ok_or(StoreError::UnknownMedicalId(id))
    }

    pub fn person_by_my_number(&self, n: MyNumber) -> Result<Person> {
        self.person_named(
            "SELECT pid FROM my_numbers WHERE my_number = $1",
            n.as_u64(),
        )?
        .ok_or(StoreError::UnknownMyNumber(n))
    }

    /// The first `n` persons in pid order.
    pub fn first_persons(&self, n: usize) -> Result<Vec<Person>> {
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        self.values(
            "SELECT record FROM persons ORDER BY pid LIMIT $1",
            &[&limit],
        )
    }

    /// Every person in pid order.
    pub fn persons(&self) -> Result<Vec<Person>> {
        self.values("SELECT record FROM persons ORDER BY pid", &[])
    }

    /// Every conflict, or the open ones, in the order they were recorded.
    pub fn conflicts(&self, open_only: bool) -> Result<Vec<Conflict>> {
        self.cases(
            "SELECT conflict FROM conflicts ORDER BY id",
            open_only,
            |c: &Conflict| &c.status,
        )
    }

    /// Every mismatch, or the open ones, in the order they were recorded.
    pub fn mismatches(&self, open_only: bool) -> Result<Vec<Mismatch>> {
        self.cases(
            "SELECT mismatch FROM mismatches ORDER BY id",
            open_only,
            |m: &Mismatch| &m.status,
        )
    }

    fn cases<T: serde::de::DeserializeOwned>(
        &self,
        query: &'static str,
        open_only: bool,
        status: fn(&T) -> &CaseStatus,
    ) -> Result<Vec<T>> {
        let all: Vec<T> = self.values(query, &[])?;
        Ok(all
            .into_iter()
            .filter(|case| !open_only || *status(case) == CaseStatus::Open)
            .collect())
    }

    /// Notices queued, all or only those for one insurer.
    pub fn notices(&self, insurer: Option<&InsurerNumber>) -> Result<Vec<Notice>> {
        let all: Vec<Notice> = self.values("SELECT notice FROM notices ORDER BY id", &[])?;
        Ok(all
            .into_iter()
            .filter(|n| crate::store::notice_for(n, insurer))
            .collect())
    }

    /// Resolves a conflict (`Store::resolve_conflict`).
    pub fn resolve_conflict(
        &self,
        id: u64,
        action: ConflictAction,
        reason: &str,
        by: &str,
        issuer: &Issuer,
        at: Timestamp,
    ) -> Result<Conflict> {
        self.write(|t| cases::resolve_conflict(t, id, action, reason, by, issuer, at))
    }

    /// Resolves a mismatch (`Store::resolve_mismatch`).
    pub fn resolve_mismatch(
        &self,
        id: u64,
        action: MismatchAction,
        reason: &str,
        by: &str,
        at: Timestamp,
    ) -> Result<Mismatch> {
        self.write(|t| cases::resolve_mismatch(t, id, action, reason, by, at))
    }

    /// Rows for `insurer` whose ID has not been sent yet (all rows with `all`).
    pub fn assignment_rows(
        &self,
        insurer: &InsurerNumber,
        all: bool,
    ) -> Result<Vec<AssignmentRow>> {
        // An insurer's cards are the keys from "number\0" up to "number\x01".
        let mut from = insurer.as_str().as_bytes().to_vec();
        let mut to = from.clone();
        from.push(0);
        to.push(1);
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.read(async |c| {
            Ok(c.query(
                "SELECT c.card_key, p.record FROM cards c JOIN persons p ON p.pid = c.pid
                 WHERE c.card_key >= $1 AND c.card_key < $2 ORDER BY c.card_key",
                &[&from, &to],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })?;
        let mut out = Vec::new();
        for (key, record) in &rows {
            out.extend(assign::assignment_rows_of(&decode(record)?, key, all));
        }
        Ok(out)
    }

    /// Records that these rows reached their insurer (`Store::mark_assigned`).
    pub fn mark_assigned(&self, rows: &[AssignmentRow], at: Timestamp) -> Result<()> {
        self.write_unlogged(|t| assign::mark_assigned(t, rows, at))
    }

    /// People not yet told their medical ID (everyone with `all`).
    pub fn letter_rows(&self, plan: Plan, all: bool, today: NaiveDate) -> Result<Vec<LetterRow>> {
        Ok(assign::letter_rows(plan, all, self.persons()?, today))
    }

    /// The letter of one person (`Store::letter_row_of`).
    pub fn letter_row_of(&self, plan: Plan, id: MedicalId, today: NaiveDate) -> Result<LetterRow> {
        let p = self.person_by_medical_id(id)?;
        assign::letter_row(plan, &p, today).ok_or(StoreError::NoLetter(id))
    }

    /// The letters were written: their codes take effect (`Store::letters_sent`).
    pub fn letters_sent(
        &self,
        plan: Plan,
        letters: &[(u64, String)],
        expires: Timestamp,
        at: Timestamp,
    ) -> Result<()> {
        self.write_unlogged(|t| assign::letters_sent(t, plan, letters, expires, at))
    }

    /// A person's My Portal account, if one was made.
    pub fn account(&self, pid: u64) -> Result<Option<crate::store::Account>> {
        let pid = super::sql(pid)?;
        Ok(self
            .values(
                "SELECT account FROM portal_accounts WHERE pid = $1",
                &[&pid],
            )?
            .pop())
    }

    /// The values of the first column `query` returns, decoded.
    fn values<T: serde::de::DeserializeOwned>(
        &self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<T>> {
        let rows: Vec<Vec<u8>> = self.read(async |c| {
            Ok(c.query(query, params)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        rows.iter().map(|r| decode(r)).collect()
    }

    /// The numbers in the first column `query` returns.
    fn ints(
        &self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<i64>> {
        self.read(async |c| {
            Ok(c.query(query, params)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    /// Everyone holding a card whose key begins with `prefix`, in pid order.
    pub fn persons_by_card_key(&self, prefix: &[u8]) -> Result<Vec<Person>> {
        // The keys that begin with `prefix` lie between it and its successor: the
        // prefix with its last byte below 0xff raised by one and the rest cut off.
        let mut end = prefix.to_vec();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let end = end.last_mut().map(|b| *b += 1).map(|()| end.clone());
        self.values(
            "SELECT p.record FROM persons p WHERE p.pid IN (
                 SELECT pid FROM cards WHERE card_key >= $1 AND ($2::bytea IS NULL OR card_key < $2))
             ORDER BY p.pid",
            &[&prefix, &end],
        )
    }

    /// A person's service history, in the order it was recorded.
    pub fn service_uses(&self, pid: u64) -> Result<Vec<ServiceUse>> {
        let pid = super::sql(pid)?;
        self.values(
            "SELECT service_use FROM service_uses WHERE pid = $1 ORDER BY seq",
            &[&pid],
        )
    }

    pub fn counts(&self) -> Result<Counts> {
        let n: Vec<i64> = self.read(async |c| {
            let r = c
                .query_one(
                    "SELECT (SELECT count(*) FROM persons), (SELECT count(*) FROM medical_ids),
                            (SELECT count(*) FROM cards),
                            (SELECT count(*) FROM service_uses)
                              + (SELECT count(pid) FROM check_intake),
                            (SELECT count(*) FROM registry_outbox)",
                    &[],
                )
                .await?;
            Ok((0..5).map(|i| r.get(i)).collect())
        })?;
        let count = |i: usize| unsql(n[i]);
        Ok(Counts {
            persons: count(0)?,
            issued_ids: count(1)?,
            cards: count(2)?,
            service_uses: count(3)?,
            open_conflicts: self.conflicts(true)?.len() as u64,
            open_mismatches: self.mismatches(true)?.len() as u64,
            notices_waiting: count(4)?,
        })
    }
}
