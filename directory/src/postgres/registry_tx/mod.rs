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
        let (keys, ids) = check_keys(reqs)?;
        let known = self.edge.take();
        let (tx, rt, prepared, begun) = (self.tx, self.rt, self.prepared, self.begun);
        let (_, appender, (cards, entries)) = rt.block_on(async {
            futures::try_join!(
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
            )
        })?;
        self.begun = true;
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
    /// (with `sign`), and commits.
    /// Commits; the log's right edge as this transaction left it, if it held the
    /// append lock.
    pub(super) fn commit(
        mut self,
        sign: Option<(&SigningKey, i64)>,
    ) -> Result<Option<iryo_proto::merkle::Frontier>> {
        let rt = self.rt;
        let appender = self.appender.take();
        let edge = appender.as_ref().map(|a| a.frontier().clone());
        // Entries are never written without a head that signs them.
        let appended = match appender {
            Some(a) if a.appended() => Some((a, sign.ok_or(crate::store::StoreError::NoSigner)?)),
            _ => None,
        };
        let (w, counters) = (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.counters),
        );
        self.begin_now()?;
        let (tx, prepared) = (self.tx, self.prepared);
        // The registry's writes, the log's and COMMIT go out together: one round trip.
        // Every statement is prepared (`prepared::HOT`), so each is sent when it is
        // first polled, in this order, and COMMIT reaches the server last; if any
        // failed, the server rolls the transaction back and its error is returned.
        rt.block_on(async {
            futures::try_join!(
                write_out(tx, w, counters, prepared),
                async {
                    match appended {
                        Some((a, sign)) => a
                            .finish(tx, Some(sign), prepared)
                            .await
                            .map(|_| ())
                            .map_err(crate::store::StoreError::from),
                        None => Ok(()),
                    }
                },
                async { prepared.execute(tx, COMMIT, &[]).await.map_err(db) },
            )
        })?;
        self.done = true;
        Ok(edge)
    }
}

impl PgTx<'_> {
    /// Writes what the transaction kept so far, before its commit, and forgets what it
    /// read: later reads go to the database, which now holds those writes. For a long
    /// transaction (the initial load), so that its memory holds a chunk of its rows,
    /// not all of them. Counters are written at the commit.
    pub(super) fn write_kept(&mut self) -> Result<()> {
        let w = std::mem::take(&mut self.out);
        self.rt
            .block_on(write_out(self.tx, w, BTreeMap::new(), self.prepared))?;
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

/// Writes everything a transaction kept, one statement per table, all at once.
async fn write_out(
    tx: &Client,
    w: Writes,
    counters: BTreeMap<&'static str, u64>,
    prepared: &Prepared,
) -> Result<()> {
    {
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
        let ids = (
            ints(&w.ids.iter().map(|i| i.0).collect::<Vec<_>>())?,
            ints(&w.ids.iter().map(|i| i.1).collect::<Vec<_>>())?,
            w.ids.iter().map(|i| i.2.as_slice()).collect::<Vec<_>>(),
        );
        let conflicts = (
            ints(&w.conflicts.iter().map(|c| c.0).collect::<Vec<_>>())?,
            w.conflicts
                .iter()
                .map(|c| c.1.as_slice())
                .collect::<Vec<_>>(),
            w.conflicts
                .iter()
                .map(|c| c.2.as_slice())
                .collect::<Vec<_>>(),
        );
        let (use_pids, uses): (Vec<i64>, Vec<Vec<u8>>) = w.service_uses.into_iter().unzip();
        let (intake_pids, intake): (Vec<Option<i64>>, Vec<Vec<u8>>) = w.intake.into_iter().unzip();
        let consents = (
            w.consents.iter().map(|c| c.0).collect::<Vec<_>>(),
            w.consents.iter().map(|c| c.1).collect::<Vec<_>>(),
            w.consents
                .iter()
                .map(|c| c.2.as_slice())
                .collect::<Vec<_>>(),
        );
        let counters: Vec<(&str, i64)> = counters
            .into_iter()
            .map(|(name, value)| Ok((name, sql(value)?)))
            .collect::<Result<_>>()?;

        // Every table's writes go out together: tokio-postgres pipelines futures polled
        // at once, so a commit costs one round trip for all of them, not one each.
        type Write<'w> = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<u64, tokio_postgres::Error>>
                    + Send
                    + 'w,
            >,
        >;
        let mut writes: Vec<Write<'_>> = Vec::new();
        if !persons.0.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(
                        tx,
                        PERSON_WRITE,
                        &[&persons.0, &persons.1, &persons.2, &persons.3],
                    )
                    .await
            }));
        }
        if !cards.0.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, CARD_WRITE, &[&cards.0, &cards.1, &cards.2])
                    .await
            }));
        }
        if !my_numbers.0.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, MY_NUMBER_WRITE, &[&my_numbers.0, &my_numbers.1])
                    .await
            }));
        }
        if !ids.0.is_empty() {
            // A plain insert: an ID claimed by another transaction meanwhile fails this
            // one rather than being issued twice.
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, ID_WRITE, &[&ids.0, &ids.1, &ids.2])
                    .await
            }));
        }
        if !conflicts.0.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, CONFLICT_WRITE, &[&conflicts.0, &conflicts.1])
                    .await
            }));
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, CONFLICT_KEY_WRITE, &[&conflicts.2, &conflicts.0])
                    .await
            }));
        }
        if !use_pids.is_empty() {
            // The sequence numbers the history in the order the rows are scanned,
            // which is the order they were appended.
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, SERVICE_USE_WRITE, &[&use_pids, &uses])
                    .await
            }));
        }
        if !consents.0.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, CONSENT_WRITE, &[&consents.0, &consents.1, &consents.2])
                    .await
            }));
        }
        if !intake.is_empty() {
            writes.push(Box::pin(async {
                prepared
                    .execute(tx, intake::INTAKE_WRITE, &[&intake_pids, &intake])
                    .await
            }));
        }
        for (name, value) in &counters {
            writes.push(Box::pin(async move {
                prepared.execute(tx, COUNTER_WRITE, &[name, value]).await
            }));
        }
        futures::future::try_join_all(writes).await.map_err(db)?;
        Ok(())
    }
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
            self.rt
                .block_on(begin(self.tx, self.prepared, false))
                .map_err(db)?;
            self.begun = true;
        }
        Ok(())
    }

    /// Takes the audit log's append lock for the rest of the transaction, once.
    pub(super) fn begin_audit(&mut self) -> Result<()> {
        if self.appender.is_none() {
            let known = self.edge.take();
            let (tx, prepared, begun) = (self.tx, self.prepared, self.begun);
            let (_, appender) = self.rt.block_on(async {
                futures::try_join!(
                    async { begin(tx, prepared, begun).await.map_err(PgError::Db) },
                    audit::begin(tx, known.as_ref(), prepared),
                )
            })?;
            self.begun = true;
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
