//! Group commit at a source node: fetches that arrive together are served in one
//! transaction (single-use marks, records read, disclosures queued) and one durable
//! commit, instead of one commit each behind the node's single writer.

use crate::store::{Record, ServeJob, Store, StoreError};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Vec<Record>, StoreError>>;

pub struct ServeCommitter {
    tx: mpsc::Sender<(ServeJob, Reply)>,
}

/// Most fetches committed together.
const MAX_GROUP: usize = 256;

impl ServeCommitter {
    /// `tolerance`: the clock difference with the agency tolerated, in seconds.
    pub fn start(store: Arc<Store>, tolerance: i64) -> Self {
        let (tx, rx) = mpsc::channel::<(ServeJob, Reply)>();
        let spawned = std::thread::Builder::new()
            .name("serve-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (jobs, replies): (Vec<_>, Vec<_>) =
                        iryo_p2p::batch::gather(first, &rx, MAX_GROUP)
                            .into_iter()
                            .unzip();
                    match store.serve_grants(jobs, forget_before(tolerance)) {
                        Ok(results) => {
                            for (reply, r) in replies.into_iter().zip(results) {
                                let _ = reply.send(r);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "serving a group of fetches failed");
                            let msg = e.to_string();
                            for reply in replies {
                                let _ = reply.send(Err(StoreError::GroupFailed(msg.clone())));
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the serve-commit thread");
        }
        Self { tx }
    }

    pub async fn serve(&self, job: ServeJob) -> Result<Vec<Record>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Served grants that expired before this are forgotten: the offline checks refuse a
/// grant past its expiry plus the clock tolerance, and the tolerance again is kept for
/// a clock that steps back.
fn forget_before(tolerance: i64) -> i64 {
    chrono::Utc::now().timestamp() - 2 * tolerance
}
