//! Group commit for what nodes ask over the network: one thread takes whatever checks
//! and grant requests are waiting, decides them in one transaction, commits once, and
//! only then answers each — so every answer is durable, and a commit's cost is shared.
//! Checks that only append to the logs go to the intake files instead, one thread per
//! file taking whatever is waiting (`store::intake`); the main thread moves them into
//! the logs with its next commit, or after `MOVE_EVERY` without one.

use crate::registry::now;
use crate::store::{GrantQuery, Job, Outcome, Store, StoreError, Verified};
use ed25519_dalek::SigningKey;
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::{Grant, Membership};
use iryo_proto::signed::Signed;
use iryo_proto::wire::Refusal;
use iryo_proto::InstitutionCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a job submitted to group commit got no outcome. Its text is for the logs; a
/// peer is told only that the directory could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error("the group-commit thread has stopped")]
    Stopped,
    #[error("the commit failed: {0}")]
    Store(Arc<StoreError>),
    #[error("the commit answered a job of another kind")]
    Mismatched,
}

type Answer<T> = oneshot::Sender<Result<T, CommitError>>;

/// The reply a submitter waits for, typed by the kind of its job.
enum Reply {
    Check(Answer<CheckAnswer>),
    Checks(Answer<Vec<CheckAnswer>>),
    Grant(Answer<Result<Grant, Refusal>>),
    Notify(Answer<Vec<[u8; 16]>>),
}

impl Reply {
    /// Hands the job's outcome, or the group's failure, to its submitter.
    fn send(self, outcome: Result<Outcome, CommitError>) {
        fn give<T>(to: Answer<T>, v: Result<T, CommitError>) {
            let _ = to.send(v);
        }
        match (self, outcome) {
            (Reply::Check(to), Ok(Outcome::Check(a))) => give(to, Ok(a)),
            (Reply::Checks(to), Ok(Outcome::Checks(a))) => give(to, Ok(a)),
            (Reply::Grant(to), Ok(Outcome::Grant(g))) => give(to, Ok(g)),
            (Reply::Notify(to), Ok(Outcome::Notified(ids))) => give(to, Ok(ids)),
            (reply, outcome) => {
                let e = outcome.err().unwrap_or(CommitError::Mismatched);
                match reply {
                    Reply::Check(to) => give(to, Err(e)),
                    Reply::Checks(to) => give(to, Err(e)),
                    Reply::Grant(to) => give(to, Err(e)),
                    Reply::Notify(to) => give(to, Err(e)),
                }
            }
        }
    }
}

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

    /// A grant decided by `grant`, signed by the agency.
    pub fn sign(&self, grant: &Grant) -> Signed<Grant> {
        Signed::sign(grant, &self.agency)
    }

    /// One check, durable before its answer.
    pub async fn check(&self, request: CheckRequest) -> Result<CheckAnswer, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Check(request), Reply::Check(reply), answer)
            .await
    }

    /// The checks of one request, decided and made durable together.
    pub async fn checks(
        &self,
        requests: Vec<CheckRequest>,
    ) -> Result<Vec<CheckAnswer>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Checks(requests), Reply::Checks(reply), answer)
            .await
    }

    /// A grant decided and logged (not yet signed: `sign`), or the refusal.
    pub async fn grant(
        &self,
        member: Membership,
        query: GrantQuery,
    ) -> Result<Result<Grant, Refusal>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.submit(
            Job::Grant(Box::new(member), query),
            Reply::Grant(reply),
            answer,
        )
        .await
    }

    /// Verified notifications from one sender, appended to the audit log; the ids
    /// logged now or before.
    pub async fn notify(
        &self,
        from: InstitutionCode,
        valid: Verified,
    ) -> Result<Vec<[u8; 16]>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Notify(from, valid), Reply::Notify(reply), answer)
            .await
    }

    async fn submit<T>(
        &self,
        job: Job,
        reply: Reply,
        answer: oneshot::Receiver<Result<T, CommitError>>,
    ) -> Result<T, CommitError> {
        let queue = if crate::store::fits_intake(&job) {
            &self.intake
        } else {
            &self.tx
        };
        queue.send((job, reply)).map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
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
                reply.send(Ok(o));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs, "group commit failed");
            let e = CommitError::Store(Arc::new(e));
            for reply in replies {
                reply.send(Err(e.clone()));
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
