//! Group commit for what nodes ask over the network: one thread takes whatever checks
//! and grant requests are waiting, decides them in one transaction, commits once, and
//! only then answers each — so every answer is durable, and a commit's cost is shared.
//! Checks that only append to the logs go to the intake files instead, one thread per
//! file taking whatever is waiting (`store::intake`); the main thread moves them into
//! the logs with its next commit, or after `MOVE_EVERY` without one.

use crate::registry::now;
use crate::store::{Job, Outcome, Store, StoreError};
use ed25519_dalek::SigningKey;
use iryo_proto::federation::Grant;
use iryo_proto::signed::Signed;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Outcome, String>>;
type Queue = mpsc::Receiver<(Job, Reply)>;

/// How long checks may wait in the intake files when nothing else is committed: the
/// delay before they show in the audit log and the patient's history.
const MOVE_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(Job, Reply)>,
    intake: mpsc::Sender<(Job, Reply)>,
    /// Signs grants once their commit is done, on the asking task's thread: the
    /// writer is what every answer waits for, and a signature there would be time
    /// taken from all of them.
    agency: Arc<SigningKey>,
}

impl GroupCommitter {
    /// Starts the committing threads; they end when every handle is dropped.
    pub fn start(store: Arc<Store>, agency: SigningKey, max_group: usize) -> Self {
        let max = max_group.max(1);
        let (tx, rx) = mpsc::channel::<(Job, Reply)>();
        let (intake, waiting) = mpsc::channel::<(Job, Reply)>();
        let waiting = Arc::new(Mutex::new(waiting));
        let main = {
            let store = store.clone();
            std::thread::Builder::new()
                .name("group-commit".into())
                .spawn(move || commit_main(&store, &rx, max))
        };
        let files = (0..store.intake_files()).map(|file| {
            let (store, waiting) = (store.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("intake-{file}"))
                .spawn(move || commit_intake(&store, file, &waiting, max))
        });
        for spawned in std::iter::once(main).chain(files) {
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a group-commit thread");
            }
        }
        Self {
            tx,
            intake,
            agency: Arc::new(agency),
        }
    }

    /// A grant decided by `submit`, signed by the agency.
    pub fn sign(&self, grant: &Grant) -> Signed<Grant> {
        Signed::sign(grant, &self.agency)
    }

    pub async fn submit(&self, job: Job) -> Result<Outcome, String> {
        let (reply, answer) = oneshot::channel();
        let queue = if crate::store::fits_intake(&job) {
            &self.intake
        } else {
            &self.tx
        };
        queue.send((job, reply)).map_err(|_| {
            StoreError::Refused("the group-commit thread has stopped".into()).to_string()
        })?;
        answer
            .await
            .map_err(|_| "the group-commit thread dropped the request".to_string())?
    }
}

/// Takes the first job and whatever else is waiting behind it, up to `max`.
fn gather(first: (Job, Reply), queue: &Queue, max: usize) -> (Vec<Job>, Vec<Reply>) {
    iryo_p2p::batch::gather(first, queue, max)
        .into_iter()
        .unzip()
}

fn answer(replies: Vec<Reply>, outcomes: Result<Vec<Outcome>, StoreError>, jobs: usize) {
    match outcomes {
        Ok(outcomes) => {
            for (reply, o) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(o));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs, "group commit failed");
            for reply in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}

fn commit_main(store: &Store, queue: &Queue, max: usize) {
    loop {
        match queue.recv_timeout(MOVE_EVERY) {
            Ok(first) => {
                let (jobs, replies) = gather(first, queue, max);
                answer(replies, store.commit_group(&jobs, now()), jobs.len());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = store.move_intake() {
                    tracing::error!(error = %e, "moving checks from the intake files failed");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // What the last checks left behind, before the service is gone.
    if let Err(e) = store.drain_intake() {
        tracing::error!(error = %e, "moving checks from the intake files failed");
    }
}

/// One intake file's writer. The queue is shared: while one file waits for its disk,
/// the next checks go to a file whose writer is free.
fn commit_intake(store: &Store, file: usize, queue: &Mutex<Queue>, max: usize) {
    loop {
        let (jobs, replies) = {
            let Ok(queue) = queue.lock() else { return };
            let Ok(first) = queue.recv() else { return };
            gather(first, &queue, max)
        };
        answer(replies, store.check_into(file, &jobs, now()), jobs.len());
    }
}
