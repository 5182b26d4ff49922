//! The directory as the node sees it: memberships resolved by institution code, checked
//! against the agency key, and cached for the refresh interval.

use crate::p2p::{P2p, P2pError};
use ed25519_dalek::VerifyingKey;
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::Membership;
use iryo_proto::wire::{DirectoryRequest, DirectoryResponse, Refusal, MAX_CHECKS_PER_REQUEST};
use iryo_proto::InstitutionCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("the directory is unreachable: {0}")]
    Unreachable(#[from] P2pError),
    #[error("the directory refused: {0}")]
    Refused(Refusal),
    #[error("the directory's answer is not signed by the agency")]
    BadSignature,
    #[error("unexpected answer from the directory")]
    Unexpected,
}

/// Why an eligibility check got no answer. One failed request fails every check it
/// carried, so the error is cheap to copy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error("the directory is unreachable: {0}")]
    Unreachable(String),
    #[error("the directory refused: {0}")]
    Refused(Refusal),
    #[error("unexpected answer from the directory")]
    Unexpected,
    #[error("the check batcher has stopped")]
    Stopped,
}

pub struct Directory {
    p2p: P2p,
    agency: VerifyingKey,
    refresh: Duration,
    /// Seconds of clock difference with the agency tolerated in memberships.
    tolerance: i64,
    cache: Mutex<HashMap<InstitutionCode, (Option<Membership>, Instant)>>,
    checks: mpsc::Sender<(CheckRequest, CheckReply)>,
}

impl Directory {
    /// Must be called inside the Tokio runtime: it starts the task that batches checks.
    pub fn new(p2p: P2p, agency: VerifyingKey, refresh: Duration, tolerance: i64) -> Self {
        let (checks, rx) = mpsc::channel(4096);
        tokio::spawn(batch_checks(p2p.clone(), rx));
        Self {
            p2p,
            agency,
            refresh,
            tolerance,
            cache: Mutex::new(HashMap::new()),
            checks,
        }
    }

    /// An eligibility check at the directory. Checks asked at the same moment travel
    /// in one request, so a busy reception desk costs one round trip, not one each.
    pub async fn check(&self, req: CheckRequest) -> Result<CheckAnswer, CheckError> {
        let (reply, answer) = oneshot::channel();
        self.checks
            .send((req, reply))
            .await
            .map_err(|_| CheckError::Stopped)?;
        answer.await.map_err(|_| CheckError::Stopped)?
    }

    /// The institution's active membership, `None` if it has none (unknown, revoked,
    /// expired). Answers from the cache while it is fresher than the refresh interval.
    pub async fn resolve(
        &self,
        code: InstitutionCode,
    ) -> Result<Option<Membership>, DirectoryError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((m, at)) = cache.get(&code) {
                if at.elapsed() < self.refresh {
                    return Ok(m.clone());
                }
            }
        }
        let m = match self
            .p2p
            .directory(DirectoryRequest::Resolve { code })
            .await?
        {
            DirectoryResponse::Membership(Some(signed)) => {
                let m = signed
                    .verify(&self.agency)
                    .map_err(|_| DirectoryError::BadSignature)?;
                let now = chrono::Utc::now().timestamp();
                (m.code == code && m.valid_within(now, self.tolerance)).then_some(m)
            }
            DirectoryResponse::Membership(None) => None,
            DirectoryResponse::Refused(r) => return Err(DirectoryError::Refused(r)),
            _ => return Err(DirectoryError::Unexpected),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(code, (m.clone(), Instant::now()));
        }
        Ok(m)
    }

    pub async fn request(
        &self,
        req: DirectoryRequest,
    ) -> Result<DirectoryResponse, DirectoryError> {
        match self.p2p.directory(req).await? {
            DirectoryResponse::Refused(r) => Err(DirectoryError::Refused(r)),
            other => Ok(other),
        }
    }
}

type CheckReply = oneshot::Sender<Result<CheckAnswer, CheckError>>;

/// Requests of checks in flight at once. One keeps every check that arrives during a
/// round trip for the next request, and a second goes only when the first is slow
/// (`STRAGGLER`): the checks behind a request held up by a slow sync at the directory
/// then go to its other intake writer instead of waiting a whole round trip more.
/// Measured with `iryo-bench-net` (docs/performance.md, a second request beside a
/// straggler): two or three
/// requests always in flight gave more, smaller requests for the same cores and no
/// better latency; a second (or third) only after a straggler of 0.5 ms lowered the
/// steady rate's p99 by about 0.13 ms and kept it within 3 ms in 20 of 21 runs, against
/// 13 of 21 with one. Two at most did as well and costs less at saturation, where
/// every request straggles: about a tenth of the checks a second.
const MOST_IN_FLIGHT: usize = 2;

/// How long the newest request may be out before the next is sent beside it: about
/// the slowest tenth of round trips at 20,000 checks/s. 0.3, 0.35, 0.7 and 0.8 ms
/// measured no better.
const STRAGGLER: Duration = Duration::from_micros(500);

/// Whether waiting checks go now, with `in_flight` requests out and the newest sent
/// `since` ago.
fn may_send(in_flight: usize, since: Duration) -> bool {
    in_flight == 0 || (in_flight < MOST_IN_FLIGHT && since >= STRAGGLER)
}

/// Sends whatever checks are waiting as one request, as `may_send` allows: checks that
/// arrive meanwhile wait and go together in the next. No timer decides when a
/// straggler is late (Tokio's is good to a millisecond): each arriving check, or an
/// answer coming back, looks again.
async fn batch_checks(p2p: P2p, mut rx: mpsc::Receiver<(CheckRequest, CheckReply)>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MOST_IN_FLIGHT));
    let answered = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut sent_at = Instant::now();
    let mut open = true;
    while let Some(first) = if open { rx.recv().await } else { None } {
        let mut group = vec![first];
        let permit = loop {
            let in_flight = MOST_IN_FLIGHT - slots.available_permits();
            if may_send(in_flight, sent_at.elapsed()) {
                if let Ok(p) = slots.clone().try_acquire_owned() {
                    break p;
                }
            }
            tokio::select! {
                () = answered.notified() => {}
                more = rx.recv(), if open && group.len() < MAX_CHECKS_PER_REQUEST => match more {
                    Some(m) => group.push(m),
                    None => open = false,
                },
            }
        };
        while group.len() < MAX_CHECKS_PER_REQUEST {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        sent_at = Instant::now();
        let answered = answered.clone();
        let p2p = p2p.clone();
        tokio::spawn(async move {
            // Declared first so that it drops last: the slot is free before the wake-up.
            let _answered = NotifyOnDrop(answered);
            let _permit = permit;
            let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let n = requests.len();
            let answers = match p2p
                .registry(DirectoryRequest::EligibilityBatch { requests })
                .await
            {
                Ok(DirectoryResponse::EligibilityBatch(a)) if a.len() == n => Ok(a),
                Ok(DirectoryResponse::Refused(r)) => Err(CheckError::Refused(r)),
                Ok(_) => Err(CheckError::Unexpected),
                Err(e) => Err(CheckError::Unreachable(e.to_string())),
            };
            match answers {
                Ok(a) => {
                    for (reply, answer) in replies.into_iter().zip(a) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Wakes the batching task when a request ends, however it ends.
struct NotifyOnDrop(std::sync::Arc<tokio::sync::Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_request_goes_only_beside_a_straggler() {
        let soon = STRAGGLER / 2;
        assert!(may_send(0, Duration::ZERO));
        assert!(may_send(0, soon));
        assert!(!may_send(1, soon));
        assert!(may_send(1, STRAGGLER));
        assert!(!may_send(MOST_IN_FLIGHT, STRAGGLER * 10));
    }
}
