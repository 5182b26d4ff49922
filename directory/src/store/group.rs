//! Group commit of what nodes ask the directory over the network: eligibility checks,
//! grants and notifications decided together, in one write transaction and one durable commit, so that the
//! cost of a commit is shared by everything waiting for it.

use super::checks::record;
use super::federation::{append_notifications, grant_in, GrantQuery, Verified};
use super::{Result, Store};
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::{Membership, Time};
use iryo_proto::wire::Refusal;
use iryo_proto::InstitutionCode;

pub(crate) enum Job {
    Check(CheckRequest),
    /// The checks of one request, answered together.
    Checks(Vec<CheckRequest>),
    Grant(Box<Membership>, GrantQuery),
    /// Notifications from one sender, verified already (outside the writer).
    Notify(InstitutionCode, Verified),
}

pub(crate) enum Outcome {
    Check(CheckAnswer),
    Checks(Vec<CheckAnswer>),
    /// Decided and logged; not signed yet, which the caller does outside the writer.
    Grant(std::result::Result<super::federation::IssuedGrant, Refusal>),
    /// Ids logged now or before.
    Notified(Vec<[u8; 16]>),
}

impl Store {
    /// Decides `jobs` and commits all their effects at once. Checks are decided on one
    /// read snapshot first, as `check_batch` does.
    pub(crate) fn commit_group(&self, jobs: &[Job], at: Time) -> Result<Vec<Outcome>> {
        // Every check of every job, decided on one snapshot.
        let mut resolved = {
            let reader = self.reader()?;
            jobs.iter()
                .map(|j| match j {
                    Job::Check(req) => Ok(vec![reader.resolve(req)?]),
                    Job::Checks(reqs) => reqs.iter().map(|r| reader.resolve(r)).collect(),
                    Job::Grant(..) | Job::Notify(..) => Ok(Vec::new()),
                })
                .collect::<Result<Vec<_>>>()?
        };
        let visit_days = self.policy.visit_consent_days;
        let rules = (
            self.retention_years,
            self.policy.default,
            self.policy.grant_seconds,
        );
        let (out, (moved, _)) = self.write(|t| {
            let mut out = Vec::with_capacity(jobs.len());
            for (job, r) in jobs.iter().zip(resolved.iter_mut()) {
                let mut decided = std::mem::take(r).into_iter();
                out.push(match job {
                    Job::Check(req) => {
                        let r = decided.next().ok_or_else(|| {
                            super::StoreError::Inconsistent("a check was not decided".into())
                        })?;
                        Outcome::Check(record(t, req, r, visit_days, at)?)
                    }
                    Job::Checks(reqs) => Outcome::Checks(
                        reqs.iter()
                            .zip(decided)
                            .map(|(req, r)| record(t, req, r, visit_days, at))
                            .collect::<Result<_>>()?,
                    ),
                    Job::Grant(member, query) => {
                        Outcome::Grant(grant_in(t, member, query, at, rules)?)
                    }
                    Job::Notify(from, valid) => {
                        Outcome::Notified(append_notifications(t, *from, valid)?)
                    }
                });
            }
            // Checks waiting in the intake files share this commit.
            Ok((out, super::intake::move_into(t, &self.intake)?))
        })?;
        super::intake::publish(&self.intake, &moved);
        Ok(out)
    }
}
