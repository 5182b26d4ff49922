//! What `serve` asks of the store beyond the operator's operations: who a node's key
//! speaks for, the rules for stated dates, refusal reports, and the writers that
//! group-commit the network's checks, grants and notifications. Either backend.

use super::{InstitutionRecord, Operations, ReportsTaken, Result, Store, Writers};
use crate::registry::dates::DateRules;
use ed25519_dalek::SigningKey;
use iryo_proto::federation::{Membership, RefusalReport};
use iryo_proto::signed::Signed;
use iryo_proto::InstitutionCode;
use std::sync::Arc;
use std::time::Duration;

/// How often the redb store's folder builds the per-person indexes while serving.
const FOLD_EVERY: Duration = Duration::from_millis(500);

pub trait Serving: Operations + Send + Sync {
    fn institution(&self, code: InstitutionCode) -> Result<Option<InstitutionRecord>>;
    /// The institution a node's authenticated key speaks for, if any.
    fn institution_by_key(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>>;
    /// The record of `key` if it is held in memory and still fresh: never touches the
    /// database, so it may run on an async thread.
    fn cached_member(&self, key: &[u8; 32]) -> Option<InstitutionRecord>;
    /// The rules for stated dates as of today.
    fn date_rules(&self) -> DateRules;
    fn log_refusals(
        &self,
        member: &Membership,
        reports: &[Signed<RefusalReport>],
    ) -> Result<ReportsTaken>;
    /// Starts the threads that group-commit what nodes ask; `agency` signs grants.
    fn start_writers(self: Arc<Self>, agency: SigningKey, max_group: usize) -> Result<Writers>;
}

impl Serving for Store {
    fn institution(&self, code: InstitutionCode) -> Result<Option<InstitutionRecord>> {
        Store::institution(self, code)
    }

    fn institution_by_key(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>> {
        Store::institution_by_key(self, key)
    }

    fn cached_member(&self, key: &[u8; 32]) -> Option<InstitutionRecord> {
        Store::cached_member(self, key)
    }

    fn date_rules(&self) -> DateRules {
        Store::date_rules(self)
    }

    fn log_refusals(
        &self,
        member: &Membership,
        reports: &[Signed<RefusalReport>],
    ) -> Result<ReportsTaken> {
        Store::log_refusals(self, member, reports)
    }

    fn start_writers(self: Arc<Self>, agency: SigningKey, max_group: usize) -> Result<Writers> {
        Store::start_writers(&self, agency, max_group, FOLD_EVERY)
    }
}
