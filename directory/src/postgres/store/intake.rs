//! The network's checks on PostgreSQL: the main writer's groups (`commit_group`) and
//! the intake lanes, as the embedded store has them (`store::commit`).
//!
//! A plain check (`store::intake::fits`) is decided and written to `check_intake` in a
//! transaction of its own lane, without the audit log's lock: lanes commit side by
//! side, and the server flushes their commits to the WAL together, where a group of
//! the main writer would wait for the group before it to take the lock. The main
//! writer moves the rows into the logs every `MOVE_EVERY` (`move_intake`).

use super::PgStore;
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::Timestamp;
use crate::store::intake::{answer_plain, fits, not_plain};
use crate::store::{checks, Committing, Job, Outcome, Result, StoreError};

/// Rows one move takes at most, so that a grant committed behind a move waits for a
/// bounded one.
const MOVE_AT_ONCE: i64 = 4_000;

/// The checks among `jobs`, in order.
pub(super) fn checks_in(jobs: &[Job]) -> Vec<CheckRequest> {
    jobs.iter()
        .flat_map(|j| match j {
            Job::Check(req) => std::slice::from_ref(req),
            Job::Checks(reqs) => reqs.as_slice(),
            Job::Grant(..) | Job::Notify(..) => &[],
        })
        .cloned()
        .collect()
}

impl PgStore {
    /// Answers plain checks (no consent given at the visit, no presented ID, no
    /// idempotency key) and makes them durable in the intake, as the network's intake
    /// lanes do; they reach the logs with the next `move_intake`.
    pub fn check_plain(&self, reqs: &[CheckRequest], at: Timestamp) -> Result<Vec<CheckAnswer>> {
        match self.check_into(&[Job::Checks(reqs.to_vec())], at)?.pop() {
            Some(Outcome::Checks(answers)) => Ok(answers),
            _ => Err(StoreError::Inconsistent(
                "the intake answered a job of another kind".into(),
            )),
        }
    }

    /// Decides plain checks and makes them durable in the intake, then answers them.
    /// Only jobs that `fits` accepts, as `GroupCommitter` routes them; anything else
    /// is refused.
    pub(crate) fn check_into(&self, jobs: &[Job], at: Timestamp) -> Result<Vec<Outcome>> {
        if !jobs.iter().all(fits) {
            return Err(not_plain());
        }
        let retention = self.retention_years;
        let asked = checks_in(jobs);
        self.write_grouped(|t| {
            t.begin_and_prefetch(&asked, false)?;
            answer_plain(jobs, |req| {
                let r = checks::answer(checks::find(t, &req.key)?, req, retention);
                t.keep_for_intake(&checks::entries(req, &r, at))?;
                Ok(r.into_answer())
            })
        })
    }

    /// Moves up to `MOVE_AT_ONCE` rows of the intake into the audit log and the
    /// service uses, in one transaction under the log's lock. Returns how many moved.
    pub fn move_intake(&self) -> Result<u64> {
        if !self.intake_waiting()? {
            return Ok(0);
        }
        self.write(|t| {
            let taken = t.take_intake(MOVE_AT_ONCE)?;
            for entries in &taken {
                checks::append_entries(t, entries)?;
            }
            Ok(taken.len() as u64)
        })
    }

    /// Moves everything the intake holds, in as many transactions as it takes.
    pub fn drain_intake(&self) -> Result<u64> {
        crate::store::intake::drain(|| self.move_intake())
    }

    /// Whether any row waits in the intake; asked without the log's lock, so an idle
    /// process does not take it every `MOVE_EVERY`.
    fn intake_waiting(&self) -> Result<bool> {
        self.read(async |c| {
            Ok(
                c.query_one("SELECT EXISTS (SELECT 1 FROM check_intake)", &[])
                    .await?
                    .get(0),
            )
        })
    }
}

impl Committing for PgStore {
    fn commit_groups(
        &self,
        first: Vec<Job>,
        next: &mut dyn FnMut() -> Vec<Job>,
        answer: &mut dyn FnMut(Result<Vec<Outcome>>),
    ) {
        PgStore::commit_groups(self, first, next, answer);
    }

    fn intake_lanes(&self) -> usize {
        self.url.intake_lanes()
    }

    fn check_into(&self, _lane: usize, jobs: &[Job], at: Timestamp) -> Result<Vec<Outcome>> {
        PgStore::check_into(self, jobs, at)
    }

    fn move_intake(&self) -> Result<u64> {
        PgStore::move_intake(self)
    }
}
