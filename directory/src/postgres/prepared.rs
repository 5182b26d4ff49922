//! Statements prepared once per connection. `execute` given a query's text prepares it
//! first — a round trip of its own, every time — and only then sends it; a statement
//! prepared before goes out with its parameters at once, so the statements a group
//! commit sends together really cost one round trip.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio_postgres::{GenericClient, Statement};

#[derive(Default)]
pub struct Prepared(Mutex<HashMap<&'static str, Statement>>);

impl Prepared {
    /// `sql` prepared on this connection, preparing it the first time.
    pub async fn get(
        &self,
        c: &(impl GenericClient + Sync),
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        let known = self.0.lock().ok().and_then(|m| m.get(sql).cloned());
        if let Some(s) = known {
            return Ok(s);
        }
        let s = c.prepare(sql).await?;
        if let Ok(mut m) = self.0.lock() {
            m.insert(sql, s.clone());
        }
        Ok(s)
    }
}

type Params<'p> = &'p [&'p (dyn tokio_postgres::types::ToSql + Sync)];

impl Prepared {
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
