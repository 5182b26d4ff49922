//! Statements prepared once per connection. `execute` given a query's text prepares it
//! first — a round trip of its own, every time — and only then sends it; a statement
//! prepared before goes out with its parameters at once, so the statements a group
//! commit sends together really cost one round trip.

use super::audit::{APPEND, LOG_STATE, LOG_WRITE};
use super::registry_tx::intake::INTAKE_WRITE;
use super::registry_tx::{
    CARDS_AHEAD, CARD_WRITE, CONFLICT_KEY_WRITE, CONFLICT_WRITE, CONSENT_WRITE, COUNTER_WRITE,
    IDS_AHEAD, ID_WRITE, MY_NUMBER_WRITE, PERSON_WRITE, SERVICE_USE_WRITE,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio_postgres::{GenericClient, Statement};

pub const BEGIN: &str = "BEGIN";
pub const COMMIT: &str = "COMMIT";

/// What a group commit sends: warmed at the start of every transaction, free once
/// prepared.
pub const HOT: &[&str] = &[
    BEGIN,
    COMMIT,
    APPEND,
    LOG_STATE,
    CARDS_AHEAD,
    IDS_AHEAD,
    PERSON_WRITE,
    CARD_WRITE,
    MY_NUMBER_WRITE,
    ID_WRITE,
    CONFLICT_WRITE,
    CONFLICT_KEY_WRITE,
    SERVICE_USE_WRITE,
    CONSENT_WRITE,
    COUNTER_WRITE,
    LOG_WRITE,
    INTAKE_WRITE,
];

#[derive(Default)]
pub struct Prepared {
    statements: Mutex<HashMap<&'static str, Statement>>,
    /// Set once `warm` prepared the hot path's statements.
    warm: AtomicBool,
}

type Params<'p> = &'p [&'p (dyn tokio_postgres::types::ToSql + Sync)];

impl Prepared {
    /// Prepares those of `sqls` not prepared yet, all in one round trip. Statements
    /// sent together reach the server in the order they are polled only if none of
    /// them waits for its preparation first, so a pipeline that depends on order (a
    /// lock before reads, COMMIT after the writes) warms its statements before.
    pub async fn warm(
        &self,
        c: &(impl GenericClient + Sync),
        sqls: &[&'static str],
    ) -> Result<(), tokio_postgres::Error> {
        if !self.warm.load(Ordering::Relaxed) {
            futures::future::try_join_all(sqls.iter().map(|sql| self.get(c, sql))).await?;
            self.warm.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// `sql` prepared on this connection, preparing it the first time.
    pub async fn get(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        let known = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned());
        if let Some(s) = known {
            return Ok(s);
        }
        // A hot statement missed by `warm` would be sent a round trip late, after
        // statements polled after it.
        debug_assert!(
            !self.warm.load(Ordering::Relaxed) || !HOT.contains(&sql),
            "a hot statement was not warmed: {sql}"
        );
        let s = c.prepare(sql).await?;
        if let Ok(mut m) = self.statements.lock() {
            m.insert(sql, s.clone());
        }
        Ok(s)
    }

    /// `execute` of `sql`, prepared once.
    pub async fn execute(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let s = self.get(c, sql).await?;
        c.execute(&s, params).await
    }

    /// `query` of `sql`, prepared once.
    pub async fn query(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let s = self.get(c, sql).await?;
        c.query(&s, params).await
    }

    /// `query_one` of `sql`, prepared once.
    pub async fn query_one(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let s = self.get(c, sql).await?;
        c.query_one(&s, params).await
    }

    /// `query_opt` of `sql`, prepared once.
    pub async fn query_opt(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let s = self.get(c, sql).await?;
        c.query_opt(&s, params).await
    }
}
