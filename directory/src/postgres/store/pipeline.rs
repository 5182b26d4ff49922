//! The network's group commit on PostgreSQL, pipelined on one connection.
//!
//! A group is two round trips: BEGIN with the log's lock and the reads ahead, then the
//! writes with COMMIT, whose answer waits for the WAL flush. Under load the next group
//! is already waiting when one seals its writes, so its first statements go out right
//! behind that COMMIT. The server runs a connection's statements in the order sent: the
//! next group begins once the one before has committed, takes the log's lock after it
//! and reads what it wrote, and its reads come back with that commit's answer. A group
//! then waits one round trip and the flush, not two round trips.
//!
//! The next group is told the log's right edge as the one before will leave it. If
//! that one failed instead, the size and the latest head it finds under the lock do
//! not match, and it reads the edge from the database (`audit::begin`).

use super::pool::Conn;
use super::{off_async, PgStore};
use crate::postgres::prepared::HOT;
use crate::postgres::registry_tx::{rollback_unless, PgTx};
use crate::postgres::PgError;
use crate::store::federation;
use crate::store::{checks, Job, Outcome, Result, StoreError};
use iryo_proto::federation::Time;
use iryo_proto::merkle::Frontier;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Runtime;
use tokio_postgres::Client;

/// What answers a group: its outcomes once committed, or why it was not.
pub(crate) type Answer<'a> = &'a mut dyn FnMut(Result<Vec<Outcome>>);

impl PgStore {
    /// Decides `first` — the network's checks, grants and notifications — and commits
    /// all their effects in one transaction; then each group `next` gives while the
    /// one before commits, until it gives none. Each group is answered in order, once
    /// its rows are committed.
    pub(crate) fn commit_groups(
        &self,
        first: Vec<Job>,
        next: &mut dyn FnMut() -> Vec<Job>,
        answer: Answer<'_>,
    ) {
        off_async(|| {
            let mut held = match self.pool.get() {
                Ok(held) => held,
                Err(e) => return answer(Err(e)),
            };
            match held.conn().and_then(Conn::all) {
                Ok((rt, client, prepared)) => {
                    let on = On {
                        store: self,
                        rt,
                        client: &*client,
                        prepared,
                    };
                    on.pipeline(first, next, answer);
                }
                Err(e) => answer(Err(e)),
            }
        });
    }
}

/// The store and the connection a pipeline runs on.
struct On<'a> {
    store: &'a PgStore,
    rt: &'a Runtime,
    client: &'a Client,
    prepared: &'a crate::postgres::prepared::Prepared,
}

impl<'a> On<'a> {
    fn tx(&self, edge: Option<Frontier>) -> PgTx<'a> {
        let mut t = PgTx::new(self.rt, self.client, edge, self.prepared);
        t.role = self.store.role;
        t
    }

    fn kept_edge(&self) -> Option<Frontier> {
        self.store.edge.lock().ok().and_then(|e| e.clone())
    }

    fn pipeline(&self, first: Vec<Job>, next: &mut dyn FnMut() -> Vec<Job>, answer: Answer<'_>) {
        let (rt, client) = (self.rt, self.client);
        let mut jobs = first;
        let mut t = self.tx(self.kept_edge());
        let mut begun = rt.block_on(async {
            self.prepared.warm(client, HOT).await.map_err(PgError::Db)?;
            t.prefetch(&super::intake::checks_in(&jobs), true, None)
                .await
        });
        loop {
            if let Err(e) = begun {
                drop(t);
                return answer(Err(e));
            }
            let outcomes = match self.decide(&mut t, &jobs, crate::registry::now()) {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    drop(t);
                    return answer(Err(e));
                }
            };
            let at = crate::registry::now();
            let sealed = match t.seal(self.store.signer.as_ref().map(|k| (k, at))) {
                Ok(sealed) => sealed,
                Err(e) => return answer(Err(e)),
            };
            // Taken once this group can no longer fail before it is sent, so that every
            // group taken is answered.
            let following = next();
            let edge = sealed.edge().cloned();
            let sent = AtomicBool::new(false);
            if following.is_empty() {
                let committed = rt.block_on(sealed.send(&sent));
                rollback_unless(rt, client, &sent);
                return self.settle(committed, edge, outcomes, answer);
            }
            let asked = super::intake::checks_in(&following);
            let mut after = self.tx(edge.clone());
            self.store.pipelined.fetch_add(1, Ordering::Relaxed);
            // The group is answered as soon as its COMMIT comes back, not when the
            // next group's reads do.
            let ((), next_begun) = rt.block_on(async {
                futures::join!(
                    async {
                        let committed = sealed.send(&sent).await;
                        self.settle(committed, edge, outcomes, &mut *answer);
                    },
                    after.prefetch(&asked, true, Some(&sent))
                )
            });
            rollback_unless(rt, client, &sent);
            begun = next_begun;
            if let Err(StoreError::Postgres(PgError::OutOfOrder)) = begun {
                // Nothing of it was sent; it begins on its own.
                after = self.tx(self.kept_edge());
                begun = rt.block_on(after.prefetch(&asked, true, None));
            }
            (t, jobs) = (after, following);
        }
    }

    /// Decides a group's jobs in `t`, whose reads ahead are done.
    fn decide(&self, t: &mut PgTx<'_>, jobs: &[Job], at: Time) -> Result<Vec<Outcome>> {
        let s = self.store;
        let (retention, visit_days) = (s.retention_years, s.policy.visit_consent_days);
        let rules = (retention, s.policy.default, s.policy.grant_seconds);
        let check =
            |t: &mut PgTx<'_>, req| checks::decide_and_record(t, req, retention, visit_days, at);
        jobs.iter()
            .map(|job| {
                Ok(match job {
                    Job::Check(req) => Outcome::Check(check(t, req)?),
                    Job::Checks(reqs) => {
                        Outcome::Checks(reqs.iter().map(|r| check(t, r)).collect::<Result<_>>()?)
                    }
                    Job::Grant(member, query) => {
                        Outcome::Grant(federation::grant_in(t, member, query, at, rules)?)
                    }
                    Job::Notify(from, valid) => {
                        Outcome::Notified(federation::append_notifications(t, *from, valid)?)
                    }
                })
            })
            .collect()
    }

    /// Answers a group whose COMMIT came back, and keeps the log's edge it left.
    fn settle(
        &self,
        committed: Result<()>,
        edge: Option<Frontier>,
        outcomes: Vec<Outcome>,
        answer: Answer<'_>,
    ) {
        match committed {
            Ok(()) => {
                if let (Some(edge), Ok(mut kept)) = (edge, self.store.edge.lock()) {
                    *kept = Some(edge);
                }
                answer(Ok(outcomes));
            }
            Err(e) => answer(Err(e)),
        }
    }
}
