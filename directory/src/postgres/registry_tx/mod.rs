//! The registry's write transaction on PostgreSQL (`RegistryTx`): the same rules as
//! on redb, against the tables of migration 0001.
//!
//! A round trip per lookup would make a batch of rows cost thousands of them, so a
//! batch is read ahead in a few set-based statements (`prefetch_rows`), every write is
//! kept in memory, and the writes go out at commit in one `INSERT … SELECT unnest(…)`
//! per table. Reads see the transaction's own writes first.
//!
//! Concurrency: whoever takes the person counter (`next_pid`) holds its row lock to
//! the end of the transaction, and a batch takes it before it reads anything, so two
//! processes enrolling at once take turns and each sees what the other committed. A
//! person's record is read `FOR UPDATE`, so a change of the same person by another
//! writer waits rather than being overwritten.

use super::prepared::{Prepared, BEGIN, COMMIT};
use super::{audit, sql, unsql, PgError};
use crate::registry::eligibility::CardStanding;
use crate::registry::eligibility::{CheckKey, CheckRequest};
use crate::registry::{Card, IdEntry, Person};
use crate::store::{decode, Result};
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

pub(crate) mod bulk;
pub(crate) mod initial_load;
pub(crate) mod intake;
mod primitives;

// The statements of the group commit's hot path (`prepared::HOT`).
pub(crate) const CARDS_AHEAD: &str =
    "SELECT card_key, standing FROM cards WHERE card_key = ANY($1)";
pub(crate) const IDS_AHEAD: &str = "SELECT m.medical_id, m.entry, p.pid, p.record
     FROM medical_ids m LEFT JOIN persons p ON p.pid = m.pid
     WHERE m.medical_id = ANY($1)";
pub(crate) const PERSON_WRITE: &str = "INSERT INTO persons (pid, my_number, medical_id, record)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[])
     ON CONFLICT (pid) DO UPDATE SET my_number = excluded.my_number,
     medical_id = excluded.medical_id, record = excluded.record";
pub(crate) const CARD_WRITE: &str = "INSERT INTO cards (card_key, pid, standing)
     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[])
     ON CONFLICT (card_key) DO UPDATE SET pid = excluded.pid,
     standing = excluded.standing";
pub(crate) const MY_NUMBER_WRITE: &str = "INSERT INTO my_numbers (my_number, pid)
     SELECT * FROM unnest($1::bigint[], $2::bigint[])";
pub(crate) const ID_WRITE: &str = "INSERT INTO medical_ids (medical_id, pid, entry)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])";
pub(crate) const CONFLICT_WRITE: &str = "INSERT INTO conflicts (id, conflict)
     SELECT * FROM unnest($1::bigint[], $2::bytea[])";
pub(crate) const CONFLICT_KEY_WRITE: &str = "INSERT INTO conflict_keys (row_key, id)
     SELECT * FROM unnest($1::bytea[], $2::bigint[])";
pub(crate) const SERVICE_USE_WRITE: &str = "INSERT INTO service_uses (pid, seq, service_use)
     SELECT pid, nextval('service_use_seq'), u
     FROM unnest($1::bigint[], $2::bytea[]) AS x(pid, u)";
pub(crate) const CONSENT_WRITE: &str = "INSERT INTO consents (pid, seq, record)
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])";
pub(crate) const COUNTER_WRITE: &str = "INSERT INTO counters (name, value) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";

/// The counter whose row lock serialises enrollment (`tables::PID`).
const PID: &str = "next_pid";

pub(crate) struct PgTx<'a> {
    rt: &'a Runtime,
    /// The connection the transaction is open on. BEGIN goes out with the
    /// transaction's first statements and COMMIT with its last (`commit`): two round
    /// trips fewer than a `tokio_postgres::Transaction`'s.
    tx: &'a Client,
    /// BEGIN was sent; COMMIT succeeded. Dropped begun but not done, the
    /// transaction is rolled back before the connection serves anyone else.
    begun: bool,
    done: bool,
    /// The connection's prepared statements, for the group commit's hot path.
    prepared: &'a Prepared,
    /// My Number → pid (None: known to name no one).
    my_numbers: HashMap<u64, Option<u64>>,
    /// pid → the record as read or written in this transaction.
    persons: HashMap<u64, Person>,
    /// Card key → its holder (None: known to be free).
    cards: HashMap<Vec<u8>, Option<u64>>,
    /// Medical IDs known to be issued, and known to be free.
    ids_taken: HashSet<u64>,
    ids_free: HashSet<u64>,
    counters: BTreeMap<&'static str, u64>,
    out: Writes,
    appender: Option<audit::Appender>,
    /// The log's right edge this process last committed (`begin_audit`).
    edge: Option<iryo_proto::merkle::Frontier>,
    /// What a group of checks will read, read ahead (`prefetch_checks`): card
    /// standings by key, issued IDs, and persons' records as they stand, unlocked.
    standings: HashMap<Vec<u8>, Option<CardStanding>>,
    issued: HashMap<u64, Option<IdEntry>>,
    records: HashMap<u64, Person>,
    /// The service the store is kept for (`RegistryTx::role`).
    pub(crate) role: crate::config::ServiceRole,
}

/// What this transaction will write at commit.
#[derive(Default)]
struct Writes {
    /// pid → (My Number, medical ID, record).
    persons: BTreeMap<u64, (u64, u64, Vec<u8>)>,
    cards: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    my_numbers: Vec<(u64, u64)>,
    ids: Vec<(u64, u64, Vec<u8>)>,
    conflicts: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// (pid, ServiceUse) in the order they happened.
    service_uses: Vec<(i64, Vec<u8>)>,
    consents: Vec<(i64, i64, Vec<u8>)>,
    /// Checks' entries for the intake (`intake`): (pid of the service use, entries).
    intake: Vec<(Option<i64>, Vec<u8>)>,
}

fn db(e: tokio_postgres::Error) -> crate::store::StoreError {
    PgError::Db(e).into()
}

fn ints(v: &[u64]) -> Result<Vec<i64>> {
    v.iter().map(|&n| Ok(sql(n)?)).collect()
}

impl<'a> PgTx<'a> {
    /// A transaction on `tx`; `edge` is the audit log's right edge as this process
    /// last committed it, used if no one appended since.
    pub(super) fn new(
        rt: &'a Runtime,
        tx: &'a Client,
        edge: Option<iryo_proto::merkle::Frontier>,
        prepared: &'a Prepared,
    ) -> Self {
        Self {
            rt,
            tx,
            begun: false,
            done: false,
            prepared,
            my_numbers: HashMap::new(),
            persons: HashMap::new(),
            cards: HashMap::new(),
            ids_taken: HashSet::new(),
            ids_free: HashSet::new(),
            counters: BTreeMap::new(),
            out: Writes::default(),
            appender: None,
            edge,
            standings: HashMap::new(),
            issued: HashMap::new(),
            records: HashMap::new(),
            role: crate::config::ServiceRole::All,
        }
    }

    /// Opens the transaction, takes the audit log's append lock if `lock`, and reads
    /// ahead what resolving `reqs` will look up — the cards named with their branch (a
    /// card's standing answers for it without its holder's record), and the medical IDs
    /// with their holders' records — all in one round trip: the server runs them in
    /// the order sent, so the lock is still the transaction's first. A group of checks
    /// then costs a few statements instead of a few round trips per check.
    pub(super) fn begin_and_prefetch(&mut self, reqs: &[CheckRequest], lock: bool) -> Result<()> {
        let rt = self.rt;
        rt.block_on(self.prefetch(reqs, lock, None))
    }

    /// `begin_and_prefetch`, to be sent behind the COMMIT of the transaction before it
    /// on the same connection (`pipeline`): `after` is that COMMIT's `Sealed::send`
    /// flag. If it was not sent yet, nothing is sent and `PgError::OutOfOrder` returned,
    /// since BEGIN would then land inside the transaction before.
    pub(super) async fn prefetch(
        &mut self,
        reqs: &[CheckRequest],
        lock: bool,
        after: Option<&AtomicBool>,
    ) -> Result<()> {
        if after.is_some_and(|sent| !sent.load(Ordering::Acquire)) {
            return Err(PgError::OutOfOrder.into());
        }
        let (keys, ids) = check_keys(reqs)?;
        let known = self.edge.take();
        let (tx, prepared, begun) = (self.tx, self.prepared, self.begun);
        // Set before BEGIN goes out: if anything after it fails, the transaction is
        // open on the server and must be rolled back.
        self.begun = true;
        let (_, appender, (cards, entries)) = futures::try_join!(
            async { begin(tx, prepared, begun).await.map_err(db) },
            async {
                if !lock {
                    return Ok(None);
                }
                audit::begin(tx, known.as_ref(), prepared)
                    .await
                    .map(Some)
                    .map_err(crate::store::StoreError::from)
            },
            async { read_checks(tx, &keys, &ids, prepared).await.map_err(db) },
        )?;
        if appender.is_some() {
            self.appender = appender;
        }
        for k in keys {
            self.standings.insert(k, None);
        }
        for id in &ids {
            self.issued.insert(unsql(*id)?, None);
        }
        for r in &cards {
            self.standings
                .insert(r.get(0), Some(decode(r.get::<_, &[u8]>(1))?));
        }
        for r in &entries {
            self.issued
                .insert(unsql(r.get(0))?, Some(decode(r.get::<_, &[u8]>(1))?));
        }
        for r in &entries {
            if let (Some(pid), Some(record)) =
                (r.get::<_, Option<i64>>(2), r.get::<_, Option<&[u8]>>(3))
            {
                self.records.insert(unsql(pid)?, decode(record)?);
            }
        }
        Ok(())
    }

    /// Writes everything kept, signs a head over what was appended to the audit log
    /// (with `sign`), and commits; the log's right edge as this transaction left it,
    /// if it held the append lock.
    pub(super) fn commit(
        self,
        sign: Option<(&SigningKey, i64)>,
    ) -> Result<Option<iryo_proto::merkle::Frontier>> {
        let rt = self.rt;
        let sealed = self.seal(sign)?;
        let sent = AtomicBool::new(false);
        let (client, edge) = (sealed.tx, sealed.edge().cloned());
        let out = rt.block_on(sealed.send(&sent));
        rollback_unless(rt, client, &sent);
        out.map(|()| edge)
    }

    /// The transaction's writes, the log's and a head signed with `sign`, encoded and
    /// ready to be sent with COMMIT (`Sealed::send`). Nothing is sent yet; whatever can
    /// fail before the server sees them fails here, and rolls the transaction back.
    pub(super) fn seal(mut self, sign: Option<(&SigningKey, i64)>) -> Result<Sealed<'a>> {
        // Entries are never written without a head that signs them.
        let log = match self.appender.take() {
            Some(a) if a.appended() => {
                let sign = sign.ok_or(crate::store::StoreError::NoSigner)?;
                Log::Appended(Box::new(a.seal(Some(sign))?))
            }
            Some(a) => Log::Unchanged(a.frontier().clone()),
            None => Log::Unlocked,
        };
        let (w, counters) = (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.counters),
        );
        let writes = encode_writes(w, counters)?;
        self.begin_now()?;
        // From here the transaction ends with the COMMIT `Sealed::send` sends, or with
        // the ROLLBACK of `rollback_unless` if it was never sent.
        self.done = true;
        Ok(Sealed {
            tx: self.tx,
            prepared: self.prepared,
            writes,
            log,
        })
    }
}

/// What a sealed transaction appends to the audit log.
enum Log {
    /// It did not take the log's lock.
    Unlocked,
    /// It held the lock and appended nothing; the edge it found.
    Unchanged(iryo_proto::merkle::Frontier),
    Appended(Box<audit::SealedLog>),
}

/// A transaction's last statements, encoded: its writes, the log's, and COMMIT.
pub(crate) struct Sealed<'a> {
    tx: &'a Client,
    prepared: &'a Prepared,
    writes: Encoded,
    log: Log,
}

impl Sealed<'_> {
    /// The log's right edge once this transaction commits, if it held the log's lock.
    pub(crate) fn edge(&self) -> Option<&iryo_proto::merkle::Frontier> {
        match &self.log {
            Log::Unlocked => None,
            Log::Unchanged(f) => Some(f),
            Log::Appended(a) => Some(a.frontier()),
        }
    }

    /// Sends the writes, the log's and COMMIT together: one round trip. Every
    /// statement is prepared (`prepared::HOT`), so each is sent when it is first
    /// polled, in this order, and COMMIT reaches the server last; if any failed, the
    /// server rolls the transaction back and its error is returned. `sent` is set as
    /// COMMIT goes out: whatever is pipelined behind it may go out after it.
    pub(crate) async fn send(self, sent: &AtomicBool) -> Result<()> {
        let (tx, prepared) = (self.tx, self.prepared);
        futures::try_join!(
            send_writes(tx, &self.writes, prepared),
            async {
                match self.log {
                    Log::Appended(a) => a
                        .send(tx, prepared)
                        .await
                        .map(|_| ())
                        .map_err(crate::store::StoreError::from),
                    Log::Unlocked | Log::Unchanged(_) => Ok(()),
                }
            },
            async {
                sent.store(true, Ordering::Release);
                prepared.execute(tx, COMMIT, &[]).await.map_err(db)
            },
        )?;
        Ok(())
    }
}

/// Rolls back a sealed transaction whose COMMIT was never sent (a statement before it
/// failed as it was encoded), before the connection serves anything else.
pub(crate) fn rollback_unless(rt: &Runtime, tx: &Client, sent: &AtomicBool) {
    if !sent.load(Ordering::Acquire) {
        let _ = rt.block_on(tx.batch_execute("ROLLBACK"));
    }
}

impl PgTx<'_> {
    /// Writes what the transaction kept so far, before its commit, and forgets what it
    /// read: later reads go to the database, which now holds those writes. For a long
    /// transaction (the initial load), so that its memory holds a chunk of its rows,
    /// not all of them. Counters are written at the commit.
    pub(super) fn write_kept(&mut self) -> Result<()> {
        let w = encode_writes(std::mem::take(&mut self.out), BTreeMap::new())?;
        self.rt.block_on(send_writes(self.tx, &w, self.prepared))?;
        self.persons = HashMap::new();
        self.my_numbers = HashMap::new();
        self.cards = HashMap::new();
        self.ids_taken = HashSet::new();
        self.ids_free = HashSet::new();
        Ok(())
    }
}

/// Sends BEGIN unless `begun`: the first statement of a pipeline that opens the
/// transaction.
async fn begin(
    tx: &Client,
    prepared: &Prepared,
    begun: bool,
) -> std::result::Result<u64, tokio_postgres::Error> {
    if begun {
        return Ok(0);
    }
    prepared.execute(tx, BEGIN, &[]).await
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if self.begun && !self.done {
            // Before the connection serves another transaction; a lost connection is
            // made again by the pool.
            let _ = self.rt.block_on(self.tx.batch_execute("ROLLBACK"));
        }
    }
}

/// The keys a group of checks looks up: card keys with their branch, medical IDs.
fn check_keys(reqs: &[CheckRequest]) -> Result<(Vec<Vec<u8>>, Vec<i64>)> {
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for r in reqs {
        match &r.key {
            CheckKey::Card {
                insurer,
                symbol,
                number,
                branch: Some(b),
                ..
            } => {
                let mut k = Card::prefix(insurer, symbol, number);
                k.push(b.value());
                keys.push(k);
            }
            CheckKey::Card { branch: None, .. } => {}
            CheckKey::MedicalId(id) => ids.push(sql(id.as_u64())?),
        }
    }
    Ok((keys, ids))
}

/// The cards of `check_keys`, and its medical IDs each with its holder's pid and record.
async fn read_checks(
    tx: &Client,
    keys: &[Vec<u8>],
    ids: &[i64],
    prepared: &Prepared,
) -> std::result::Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), tokio_postgres::Error>
{
    let (keys, ids): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) = ([&keys], [&ids]);
    futures::try_join!(
        prepared.query(tx, CARDS_AHEAD, &keys,),
        prepared.query(tx, IDS_AHEAD, &ids,),
    )
}

/// A transaction's writes as the statements' parameters (`encode_writes`).
struct Encoded {
    persons: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Vec<u8>>),
    cards: (Vec<Vec<u8>>, Vec<i64>, Vec<Vec<u8>>),
    my_numbers: (Vec<i64>, Vec<i64>),
    ids: (Vec<i64>, Vec<i64>, Vec<Vec<u8>>),
    conflicts: (Vec<i64>, Vec<Vec<u8>>, Vec<Vec<u8>>),
    uses: (Vec<i64>, Vec<Vec<u8>>),
    intake: (Vec<Option<i64>>, Vec<Vec<u8>>),
    consents: (Vec<i64>, Vec<i64>, Vec<Vec<u8>>),
    counters: Vec<(&'static str, i64)>,
}

/// Everything a transaction kept, as one array per column.
fn encode_writes(w: Writes, counters: BTreeMap<&'static str, u64>) -> Result<Encoded> {
    let mut persons = (vec![], vec![], vec![], vec![]);
    for (pid, (my_number, medical_id, record)) in w.persons {
        persons.0.push(sql(pid)?);
        persons.1.push(sql(my_number)?);
        persons.2.push(sql(medical_id)?);
        persons.3.push(record);
    }
    let mut cards = (vec![], vec![], vec![]);
    for (key, (pid, standing)) in w.cards {
        cards.0.push(key);
        cards.1.push(sql(pid)?);
        cards.2.push(standing);
    }
    let my_numbers = (
        ints(&w.my_numbers.iter().map(|m| m.0).collect::<Vec<_>>())?,
        ints(&w.my_numbers.iter().map(|m| m.1).collect::<Vec<_>>())?,
    );
    let mut ids = (vec![], vec![], vec![]);
    for (id, pid, entry) in w.ids {
        ids.0.push(sql(id)?);
        ids.1.push(sql(pid)?);
        ids.2.push(entry);
    }
    let mut conflicts = (vec![], vec![], vec![]);
    for (id, conflict, key) in w.conflicts {
        conflicts.0.push(sql(id)?);
        conflicts.1.push(conflict);
        conflicts.2.push(key);
    }
    let mut consents = (vec![], vec![], vec![]);
    for (pid, seq, record) in w.consents {
        consents.0.push(pid);
        consents.1.push(seq);
        consents.2.push(record);
    }
    Ok(Encoded {
        persons,
        cards,
        my_numbers,
        ids,
        conflicts,
        uses: w.service_uses.into_iter().unzip(),
        intake: w.intake.into_iter().unzip(),
        consents,
        counters: counters
            .into_iter()
            .map(|(name, value)| Ok((name, sql(value)?)))
            .collect::<Result<_>>()?,
    })
}

/// Sends a transaction's writes, one statement per table, all at once: tokio-postgres
/// pipelines futures polled together, so they cost one round trip, not one each.
async fn send_writes(tx: &Client, w: &Encoded, prepared: &Prepared) -> Result<()> {
    let mut writes: Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    let mut add = |sql, params| writes.push((sql, params));
    let (p, c, m, i, k) = (&w.persons, &w.cards, &w.my_numbers, &w.ids, &w.conflicts);
    if !p.0.is_empty() {
        add(PERSON_WRITE, vec![&p.0, &p.1, &p.2, &p.3]);
    }
    if !c.0.is_empty() {
        add(CARD_WRITE, vec![&c.0, &c.1, &c.2]);
    }
    if !m.0.is_empty() {
        add(MY_NUMBER_WRITE, vec![&m.0, &m.1]);
    }
    if !i.0.is_empty() {
        // A plain insert: an ID claimed by another transaction meanwhile fails this
        // one rather than being issued twice.
        add(ID_WRITE, vec![&i.0, &i.1, &i.2]);
    }
    if !k.0.is_empty() {
        add(CONFLICT_WRITE, vec![&k.0, &k.1]);
        add(CONFLICT_KEY_WRITE, vec![&k.2, &k.0]);
    }
    if !w.uses.0.is_empty() {
        // The sequence numbers the history in the order the rows are scanned, which
        // is the order they were appended.
        add(SERVICE_USE_WRITE, vec![&w.uses.0, &w.uses.1]);
    }
    if !w.consents.0.is_empty() {
        let c = &w.consents;
        add(CONSENT_WRITE, vec![&c.0, &c.1, &c.2]);
    }
    if !w.intake.1.is_empty() {
        add(intake::INTAKE_WRITE, vec![&w.intake.0, &w.intake.1]);
    }
    for (name, value) in &w.counters {
        add(COUNTER_WRITE, vec![name, value]);
    }
    futures::future::try_join_all(
        writes
            .iter()
            .map(|(sql, params)| prepared.execute(tx, sql, params)),
    )
    .await
    .map_err(db)?;
    Ok(())
}

impl PgTx<'_> {
    /// The value of the row numbered `id`, read by `query`, decoded.
    fn one<T: serde::de::DeserializeOwned>(&self, query: &str, id: u64) -> Result<Option<T>> {
        let row = self
            .rt
            .block_on(self.tx.query_opt(query, &[&sql(id)?]))
            .map_err(db)?;
        row.map(|r| decode(r.get::<_, &[u8]>(0))).transpose()
    }

    /// Runs `statement` with a row's number and value at once, inside the transaction.
    fn now(&self, statement: &str, id: u64, value: &[u8]) -> Result<()> {
        self.rt
            .block_on(self.tx.execute(statement, &[&sql(id)?, &value]))
            .map_err(db)?;
        Ok(())
    }

    /// Opens the transaction now, unless it is open.
    pub(super) fn begin_now(&mut self) -> Result<()> {
        if !self.begun {
            // Set first: a BEGIN that reached the server and then failed to answer
            // still leaves a transaction to roll back.
            self.begun = true;
            self.rt
                .block_on(begin(self.tx, self.prepared, false))
                .map_err(db)?;
        }
        Ok(())
    }

    /// Takes the audit log's append lock for the rest of the transaction, once.
    pub(super) fn begin_audit(&mut self) -> Result<()> {
        if self.appender.is_none() {
            let known = self.edge.take();
            let (tx, prepared, begun) = (self.tx, self.prepared, self.begun);
            // Set before BEGIN goes out: a lock or read that fails after it leaves
            // the transaction open on the server, to be rolled back.
            self.begun = true;
            let (_, appender) = self.rt.block_on(async {
                futures::try_join!(
                    async { begin(tx, prepared, begun).await.map_err(PgError::Db) },
                    audit::begin(tx, known.as_ref(), prepared),
                )
            })?;
            self.appender = Some(appender);
        }
        Ok(())
    }

    /// Reads a counter and holds its row until the transaction ends.
    fn load_counter(&mut self, name: &'static str) -> Result<u64> {
        if let Some(v) = self.counters.get(name) {
            return Ok(*v);
        }
        let row = self
            .rt
            .block_on(self.tx.query_opt(
                "SELECT value FROM counters WHERE name = $1 FOR UPDATE",
                &[&name],
            ))
            .map_err(db)?;
        let v = match row {
            Some(r) => unsql(r.get(0))?,
            None => 1,
        };
        self.counters.insert(name, v);
        Ok(v)
    }

    /// Reads which of the rows' My Numbers name someone, into the read-ahead (a number
    /// that names no one is kept as such); the pids they name.
    fn read_my_numbers(&mut self, rows: &[crate::registry::EnrollmentRow]) -> Result<Vec<u64>> {
        let numbers: Vec<u64> = rows.iter().map(|r| r.my_number.as_u64()).collect();
        let found = self
            .rt
            .block_on(self.tx.query(
                "SELECT my_number, pid FROM my_numbers WHERE my_number = ANY($1)",
                &[&ints(&numbers)?],
            ))
            .map_err(db)?;
        for n in numbers {
            self.my_numbers.entry(n).or_insert(None);
        }
        let mut pids = Vec::with_capacity(found.len());
        for r in found {
            let pid = unsql(r.get(1))?;
            self.my_numbers.insert(unsql(r.get(0))?, Some(pid));
            pids.push(pid);
        }
        Ok(pids)
    }

    fn read_persons(&mut self, pids: &[u64]) -> Result<()> {
        let wanted: Vec<u64> = pids
            .iter()
            .copied()
            .filter(|p| !self.persons.contains_key(p))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = self
            .rt
            .block_on(self.tx.query(
                "SELECT pid, record FROM persons WHERE pid = ANY($1) ORDER BY pid FOR UPDATE",
                &[&ints(&wanted)?],
            ))
            .map_err(db)?;
        for r in rows {
            let pid = unsql(r.get(0))?;
            self.persons.insert(pid, decode(r.get::<_, &[u8]>(1))?);
        }
        Ok(())
    }
}
