//! Delivers the outbox to the directory. An entry leaves the outbox only when the
//! directory has acknowledged it; failures back off up to half a minute.

use crate::Node;
use iryo_proto::wire::{DirectoryRequest, DirectoryResponse, MAX_NOTIFICATIONS_PER_REQUEST};
use std::sync::Arc;
use std::time::Duration;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Pause after a delivery that did not fill a request, so that a busy node sends what
/// its exchanges queue meanwhile together: one request, one verification batch, one
/// group-commit job and one acknowledgement for many, rather than for a few. The log
/// learns of an exchange this much later, which nothing waits for. With `iryo-bench-net`
/// (16 requesters fetching from one source), 100 ms rather than 20 ms gave more fetches
/// a second in eight of nine alternating pairs, 1,950–2,237 against 1,858–2,015 in the
/// machine's fast state (docs/performance.md, the outbox's gathering pause).
const GATHER: Duration = Duration::from_millis(100);

/// Sends the refusal reports waiting, if any; whether they all went.
async fn deliver_refusals(node: &Arc<Node>) -> bool {
    let worker = node.clone();
    let Ok(Ok(reports)) =
        tokio::task::spawn_blocking(move || worker.store.refusals(MAX_NOTIFICATIONS_PER_REQUEST))
            .await
    else {
        return false;
    };
    if reports.is_empty() {
        return true;
    }
    let n = reports.len();
    match node
        .p2p
        .directory(DirectoryRequest::ReportRefusals { reports })
        .await
    {
        Ok(DirectoryResponse::Acknowledged { ids }) => {
            let worker = node.clone();
            let cleared =
                tokio::task::spawn_blocking(move || worker.store.acknowledge_refusals(&ids)).await;
            if matches!(cleared, Ok(Ok(()))) {
                tracing::debug!(delivered = n, "refusal reports delivered");
                true
            } else {
                tracing::error!("cannot clear acknowledged refusal reports");
                false
            }
        }
        other => {
            tracing::warn!(pending = n, answer = ?other, "refusal reports not delivered");
            false
        }
    }
}

pub async fn deliver(node: Arc<Node>, interval: Duration) {
    let mut backoff = interval;
    loop {
        // Rare, and as important to the patient as what was disclosed.
        if !deliver_refusals(&node).await {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        let worker = node.clone();
        let batch =
            tokio::task::spawn_blocking(move || worker.store.outbox(MAX_NOTIFICATIONS_PER_REQUEST))
                .await;
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            // Idle: answers kept for retries are forgotten once past their time.
            let worker = node.clone();
            let now = chrono::Utc::now().timestamp();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || worker.store.forget_kept(now)).await
            {
                tracing::error!(error = %e, "cannot forget kept answers");
            }
            tokio::time::sleep(interval).await;
            continue;
        }
        let n = batch.len();
        match node
            .p2p
            .directory(DirectoryRequest::Notify {
                notifications: batch,
            })
            .await
        {
            Ok(DirectoryResponse::Acknowledged { ids }) => {
                let worker = node.clone();
                if let Ok(Ok(())) =
                    tokio::task::spawn_blocking(move || worker.store.acknowledge(&ids)).await
                {
                    crate::metrics::metrics()
                        .notifications_delivered
                        .inc_by(n as u64);
                    tracing::debug!(delivered = n, "notifications delivered");
                } else {
                    tracing::error!("cannot clear acknowledged notifications");
                }
                backoff = interval;
                if n < MAX_NOTIFICATIONS_PER_REQUEST {
                    tokio::time::sleep(GATHER.min(interval)).await;
                }
            }
            other => {
                tracing::warn!(pending = n, answer = ?other, retry_in = ?backoff, "notifications not delivered");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
