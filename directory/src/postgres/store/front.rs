//! The HTTPS front's state on PostgreSQL (`store::front`): sessions, sign-in counts and
//! upload jobs in tables every `serve` on the database shares.

use super::PgStore;
use crate::postgres::PgError;
use crate::registry::Timestamp;
use crate::store::{
    decode, encode, job_from, portal, Account, Front, Holder, JobState, Result, SessionRecord,
    StoreError, TryCount, TryCounts,
};

/// The advisory lock every sign-in count is decided under ("iryo" and 2 in its bytes).
const TRIES_LOCK: i64 = 0x6972_796f_0000_0002;

impl TryCounts for PgStore {
    fn count_tries(
        &self,
        subjects: &[String],
        decide: &mut dyn FnMut(&mut [Option<TryCount>], u64),
    ) -> Result<()> {
        let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
        self.raw_transaction(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TRIES_LOCK])
                .await?;
            let rows = tx
                .query(
                    "SELECT subject, failures, since_ms, not_before_ms FROM sign_in_tries
                     WHERE subject = ANY($1)",
                    &[&names],
                )
                .await?;
            let mut counts: Vec<Option<TryCount>> = names
                .iter()
                .map(|n| {
                    rows.iter()
                        .find(|r| r.get::<_, &str>(0) == *n)
                        .map(|r| TryCount {
                            failures: u32::try_from(r.get::<_, i32>(1)).unwrap_or(u32::MAX),
                            since_ms: r.get(2),
                            not_before_ms: r.get(3),
                        })
                })
                .collect();
            let tracked = if counts.iter().any(Option::is_none) {
                let n: i64 = tx
                    .query_one("SELECT count(*) FROM sign_in_tries", &[])
                    .await?
                    .get(0);
                u64::try_from(n).unwrap_or(0)
            } else {
                0
            };
            decide(&mut counts, tracked);
            for (name, count) in names.iter().zip(&counts) {
                match count {
                    Some(c) => {
                        let failures = i32::try_from(c.failures).unwrap_or(i32::MAX);
                        tx.execute(
                            "INSERT INTO sign_in_tries (subject, failures, since_ms, not_before_ms)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (subject) DO UPDATE SET failures = $2, since_ms = $3,
                                 not_before_ms = $4",
                            &[name, &failures, &c.since_ms, &c.not_before_ms],
                        )
                        .await?;
                    }
                    None => {
                        tx.execute("DELETE FROM sign_in_tries WHERE subject = $1", &[name])
                            .await?;
                    }
                }
            }
            Ok(())
        })
    }

    fn forget_tries(&self, window_before: i64, wait_before: i64) -> Result<u64> {
        self.raw_transaction(async |tx| {
            Ok(tx
                .execute(
                    "DELETE FROM sign_in_tries WHERE since_ms < $1 AND not_before_ms < $2",
                    &[&window_before, &wait_before],
                )
                .await?)
        })
    }
}

impl Front for PgStore {
    fn account(&self, pid: u64) -> Result<Option<Account>> {
        PgStore::account(self, pid)
    }

    fn activate(&self, holder: &Holder, code: &str, phc: &str, at: Timestamp) -> Result<()> {
        self.write_unlogged(|t| portal::activate(t, holder, code, phc, at))
    }

    fn log_operator(&self, operator: &str, action: String) -> Result<u64> {
        if self.signer.is_none() {
            return Err(StoreError::NoSigner);
        }
        self.write(|t| {
            use crate::store::registry_tx::RegistryTx;
            t.audit_append(&crate::audit::LogEntry::Operator {
                operator: operator.into(),
                action,
                at: crate::registry::now(),
            })
        })
    }

    fn put_session(&self, token: &[u8; 32], session: &SessionRecord) -> Result<()> {
        let bytes = encode(session)?;
        let token = token.as_slice();
        self.raw_transaction(async |tx| {
            tx.execute(
                "INSERT INTO portal_sessions (token_hash, session, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (token_hash) DO UPDATE SET session = $2, expires_at = $3",
                &[&token, &bytes, &session.expires],
            )
            .await?;
            Ok(())
        })
    }

    fn session(&self, token: &[u8; 32]) -> Result<Option<SessionRecord>> {
        let token = token.as_slice();
        let bytes: Option<Vec<u8>> = self.read(async |c| {
            Ok(c.query_opt(
                "SELECT session FROM portal_sessions WHERE token_hash = $1",
                &[&token],
            )
            .await?
            .map(|r| r.get(0)))
        })?;
        bytes.map(|b| decode(&b)).transpose()
    }

    fn end_session(&self, token: &[u8; 32]) -> Result<()> {
        let token = token.as_slice();
        self.raw_transaction(async |tx| {
            tx.execute(
                "DELETE FROM portal_sessions WHERE token_hash = $1",
                &[&token],
            )
            .await?;
            Ok(())
        })
    }

    fn end_sessions_before(&self, at: Timestamp) -> Result<u64> {
        self.raw_transaction(async |tx| {
            Ok(tx
                .execute("DELETE FROM portal_sessions WHERE expires_at < $1", &[&at])
                .await?)
        })
    }

    fn put_job(&self, job: &JobState) -> Result<()> {
        let bytes = serde_json::to_vec(job)
            .map_err(|e| StoreError::Inconsistent(format!("upload job: {e}")))?;
        let at = crate::registry::now();
        self.raw_transaction(async |tx| {
            tx.execute(
                "INSERT INTO upload_jobs (id, insurer, state, job, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET state = $3, job = $4, updated_at = $5",
                &[&job.id, &job.insurer, &job.state, &bytes, &at],
            )
            .await?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> Result<Option<JobState>> {
        let bytes: Option<Vec<u8>> = self.read(async |c| {
            Ok(
                c.query_opt("SELECT job FROM upload_jobs WHERE id = $1", &[&id])
                    .await?
                    .map(|r| r.get(0)),
            )
        })?;
        bytes.map(|b| job_from(&b)).transpose()
    }
}

impl PgStore {
    /// The agency CA's latest revocation list published here, and its number.
    pub fn crl(&self) -> Result<Option<(u64, String)>> {
        let row: Option<(i64, String)> = self.read(async |c| {
            Ok(
                c.query_opt("SELECT number, pem FROM ca_crl WHERE id = 1", &[])
                    .await?
                    .map(|r| (r.get(0), r.get(1))),
            )
        })?;
        row.map(|(n, pem)| Ok((crate::postgres::unsql(n)?, pem)))
            .transpose()
    }

    /// Publishes revocation list `number` unless a newer one is published already.
    pub fn publish_crl(&self, number: u64, pem: &str) -> Result<()> {
        let number = crate::postgres::sql(number)?;
        self.raw_transaction(async |tx| {
            tx.execute(
                "INSERT INTO ca_crl (id, number, pem) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET number = $1, pem = $2 WHERE ca_crl.number < $1",
                &[&number, &pem],
            )
            .await?;
            Ok(())
        })
    }

    /// Runs `f` in one transaction of the front's own tables, which no registry rule
    /// reads, and commits it.
    pub(super) fn raw_transaction<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> std::result::Result<T, PgError>,
    ) -> Result<T> {
        let mut held = self.pool.get()?;
        let (rt, client) = held.conn()?.parts()?;
        Ok(super::off_async(|| {
            rt.block_on(async {
                let tx = client.transaction().await?;
                let out = f(&tx).await?;
                tx.commit().await?;
                Ok::<T, PgError>(out)
            })
        })?)
    }
}
