//! Group commit for eligibility checks arriving over the network: one thread takes
//! whatever checks are waiting, decides and records them in one transaction, and only
//! then answers each, so every answer's service use is durable.

use crate::registry::now;
use crate::store::{Store, StoreError};
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<CheckAnswer, String>>;

#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(CheckRequest, Reply)>,
}

impl GroupCommitter {
    /// Starts the committing thread; it ends when every handle is dropped.
    pub fn start(store: Arc<Store>, max_group: usize) -> Self {
        let (tx, rx) = mpsc::channel::<(CheckRequest, Reply)>();
        std::thread::Builder::new()
            .name("check-commit".into())
            .spawn(move || {
                let max = max_group.max(1);
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < max {
                        match rx.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    let (reqs, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                    match store.check_batch(&reqs, now()) {
                        Ok(answers) => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, checks = reqs.len(), "eligibility group failed");
                            for reply in replies {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the check-commit thread"));
        Self { tx }
    }

    pub async fn check(&self, req: CheckRequest) -> Result<CheckAnswer, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((req, reply)).map_err(|_| {
            StoreError::Refused("the check-commit thread has stopped".into()).to_string()
        })?;
        answer
            .await
            .map_err(|_| "the check-commit thread dropped the check".to_string())?
    }
}
