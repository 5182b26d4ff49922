//! Group commit for what nodes ask over the network: one thread takes whatever checks
//! and grant requests are waiting, decides them in one transaction, commits once, and
//! only then answers each — so every answer is durable, and a commit's cost is shared.

use crate::registry::now;
use crate::store::{Job, Outcome, Store, StoreError};
use ed25519_dalek::SigningKey;
use iryo_proto::federation::Grant;
use iryo_proto::signed::Signed;
use std::sync::mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Outcome, String>>;

#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(Job, Reply)>,
    /// Signs grants once their commit is done, on the asking task's thread: the
    /// writer is what every answer waits for, and a signature there would be time
    /// taken from all of them.
    agency: Arc<SigningKey>,
}

impl GroupCommitter {
    /// Starts the committing thread; it ends when every handle is dropped.
    pub fn start(store: Arc<Store>, agency: SigningKey, max_group: usize) -> Self {
        let (tx, rx) = mpsc::channel::<(Job, Reply)>();
        let agency = Arc::new(agency);
        let spawned = std::thread::Builder::new()
            .name("group-commit".into())
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
                    let (jobs, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                    match store.commit_group(&jobs, now()) {
                        Ok(outcomes) => {
                            for (reply, o) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(o));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, jobs = jobs.len(), "group commit failed");
                            for reply in replies {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the group-commit thread");
        }
        Self { tx, agency }
    }

    /// A grant decided by `submit`, signed by the agency.
    pub fn sign(&self, grant: &Grant) -> Signed<Grant> {
        Signed::sign(grant, &self.agency)
    }

    pub async fn submit(&self, job: Job) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((job, reply)).map_err(|_| {
            StoreError::Refused("the group-commit thread has stopped".into()).to_string()
        })?;
        answer
            .await
            .map_err(|_| "the group-commit thread dropped the request".to_string())?
    }
}
