//! A registry run apart admits nodes by the memberships the exchange authority keeps
//! (docs/roles.md): asked by key over the registry's session, and kept for the refresh
//! interval, so that a revocation reaches the registry within it.

use crate::tell::Authority;
use iryo_proto::federation::{Membership, Time};
use iryo_proto::wire::{Refusal, RefusalReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys asked about and kept at once, at most: a stranger's key is kept too (its
/// answer is no), and strangers must not grow the cache without bound.
const MOST_KEPT: usize = 100_000;

/// What the authority said of a key (`None`: no active membership), and when.
type Heard = (Option<Membership>, Instant);

pub struct RemoteMembers {
    authority: Arc<Authority>,
    refresh: Duration,
    kept: Mutex<HashMap<[u8; 32], Heard>>,
}

impl RemoteMembers {
    pub fn new(authority: Arc<Authority>, refresh: Duration) -> Self {
        Self {
            authority,
            refresh,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// What was last heard of `key`, while it is fresh.
    fn kept(&self, key: &[u8; 32]) -> Option<Heard> {
        let kept = self.kept.lock().ok()?;
        kept.get(key)
            .filter(|(_, at)| at.elapsed() < self.refresh)
            .cloned()
    }

    fn keep(&self, key: [u8; 32], m: Option<Membership>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= MOST_KEPT {
                let refresh = self.refresh;
                kept.retain(|_, (_, at)| at.elapsed() < refresh);
                if kept.len() >= MOST_KEPT {
                    kept.clear();
                }
            }
            kept.insert(key, (m, Instant::now()));
        }
    }

    /// The member behind an authenticated key, as the authority says, or why there
    /// is none.
    pub async fn authorise(&self, key: Option<[u8; 32]>, now: Time) -> Result<Membership, Refusal> {
        let key = key.ok_or_else(|| {
            Refusal::new(RefusalReason::NotMember, "the peer's key is not Ed25519")
        })?;
        let m = if let Some((m, _)) = self.kept(&key) {
            m
        } else {
            let asked = self.authority.member(key).await.map_err(|e| {
                tracing::warn!(error = %e, "a membership could not be confirmed with the exchange authority");
                Refusal::new(
                    RefusalReason::Internal,
                    "the registry cannot confirm this membership with the exchange authority now; try again later",
                )
            })?;
            // The session is the authority's (its peer id is in roles.authority): what
            // it says needs no second signature check here.
            let m = asked
                .and_then(|s| s.open_unverified().ok())
                .filter(|m| m.public_key == key);
            self.keep(key, m.clone());
            m
        };
        match m {
            Some(m) if m.valid_within(now, 0) => Ok(m),
            _ => Err(Refusal::new(
                RefusalReason::NotMember,
                "no active membership for this key at the exchange authority",
            )),
        }
    }
}
