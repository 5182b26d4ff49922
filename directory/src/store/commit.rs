//! What a serving store runs beside it, started and stopped as one (`Writers`, a drop
//! guard as mini-redis's `DbDropGuard` is), on either backend (`Committing`):
//! - group commit for what nodes ask over the network: one thread takes whatever checks
//!   and grant requests are waiting, decides them in one transaction, commits once, and
//!   only then answers each — so every answer is durable, and a commit's cost is shared;
//! - checks that only append to the logs go to the intake lanes instead (redb's intake
//!   files, `intake`; PostgreSQL's intake table, when it has lanes), one thread per lane
//!   taking whatever is waiting; the main thread moves them into the logs at least every
//!   `MOVE_EVERY`;
//! - on redb, the folder, which builds the per-person indexes from the logs
//!   (`folding`), and a signer of the audit log's head for the entries a burst left
//!   unsigned.
//!
//! Where a job goes is decided once, when it is submitted (`intake::fits`).

use super::federation::IssuedGrant;
use super::{GrantQuery, Job, Outcome, Store, StoreError, Verified};
use crate::registry::{now, Timestamp};
use ed25519_dalek::SigningKey;
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::Membership;
use iryo_proto::wire::Refusal;
use iryo_proto::InstitutionCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
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
    Grant(Answer<Result<IssuedGrant, Refusal>>),
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

/// How often a move is tried again after one failed (the database is unreachable, or
/// the disk refuses writes): the checks wait where they are, durable.
const MOVE_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(Job, Reply)>,
    intake: mpsc::Sender<(Job, Reply)>,
    /// Signs grants once their commit is done, on the asking task's thread: the
    /// writer is what every answer waits for, and a signature there would be time
    /// taken from all of them.
    agency: Arc<SigningKey>,
}

/// The store's background threads while it serves. Dropping it stops them: queued
/// jobs not yet taken are answered `CommitError::Stopped`, the threads are joined, the
/// intake files are drained into the logs and the last entries get a signed head.
pub struct Writers {
    committer: GroupCommitter,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// What the backend does once its threads are joined.
    finish: Option<Box<dyn FnOnce() + Send>>,
}

/// How often the head signer looks for entries a burst left without a signed head.
const SIGN_EVERY: Duration = Duration::from_secs(1);

/// What a backend's group commit runs on: the main writer's transactions, and the
/// intake lanes where checks that only append to the logs are made durable without
/// waiting for the main writer (`intake::fits` decides which).
pub(crate) trait Committing: Send + Sync + 'static {
    /// Decides `first` and commits all its effects in one transaction, then each
    /// group `next` gives, until it gives none; each group's outcomes, or why it
    /// failed, go to `answer` in order once committed. A backend may start a group
    /// while the one before commits.
    fn commit_groups(
        &self,
        first: Vec<Job>,
        next: &mut dyn FnMut() -> Vec<Job>,
        answer: &mut dyn FnMut(Result<Vec<Outcome>, StoreError>),
    );
    /// How many intake lanes write at once.
    fn intake_lanes(&self) -> usize;
    /// Decides plain checks and makes them durable in intake lane `lane`.
    fn check_into(
        &self,
        lane: usize,
        jobs: &[Job],
        at: Timestamp,
    ) -> Result<Vec<Outcome>, StoreError>;
    /// Moves what waits in the intake into the logs; how many entries moved.
    fn move_intake(&self) -> Result<u64, StoreError>;
}

impl Committing for Store {
    fn commit_groups(
        &self,
        first: Vec<Job>,
        next: &mut dyn FnMut() -> Vec<Job>,
        answer: &mut dyn FnMut(Result<Vec<Outcome>, StoreError>),
    ) {
        let mut jobs = first;
        while !jobs.is_empty() {
            answer(Store::commit_group(self, &jobs, now()));
            jobs = next();
        }
    }

    fn intake_lanes(&self) -> usize {
        self.intake_files()
    }

    fn check_into(
        &self,
        lane: usize,
        jobs: &[Job],
        at: Timestamp,
    ) -> Result<Vec<Outcome>, StoreError> {
        Store::check_into(self, lane, jobs, at)
    }

    fn move_intake(&self) -> Result<u64, StoreError> {
        Store::move_intake(self)
    }
}

/// A thread that runs beside the writers until they stop: it is handed the stop flag.
pub(crate) type Beside = (&'static str, Box<dyn FnOnce(Arc<AtomicBool>) + Send>);

impl Store {
    /// Starts what serving needs: the group-commit writer, one writer per intake file,
    /// the folder (every `fold_every`) and the head signer. `agency` signs grants.
    pub fn start_writers(
        self: &Arc<Self>,
        agency: SigningKey,
        max_group: usize,
        fold_every: Duration,
    ) -> Result<Writers, StoreError> {
        self.mark_intake_in_use(true)?;
        let folder = self.clone();
        let signer = self.clone();
        let beside: Vec<Beside> = vec![
            (
                "folder",
                Box::new(move |stop: Arc<AtomicBool>| {
                    super::folding::fold_until(&folder, fold_every, &stop);
                }),
            ),
            (
                "head-signer",
                Box::new(move |stop: Arc<AtomicBool>| {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(SIGN_EVERY);
                        if let Err(e) = signer.sign_pending_head() {
                            tracing::error!(error = %e, "signing the audit log's head failed");
                        }
                    }
                }),
            ),
        ];
        let store = self.clone();
        // What the last checks left in the intake files, and the last entries' head,
        // before the store is left alone.
        let finish = Box::new(move || {
            match store.drain_intake() {
                Ok(_) => {
                    if let Err(e) = store.mark_intake_in_use(false) {
                        tracing::error!(error = %e, "recording that the intake files are drained failed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "moving checks from the intake files failed");
                }
            }
            if let Err(e) = store.sign_pending_head() {
                tracing::error!(error = %e, "signing the audit log's head failed");
            }
        });
        Ok(Writers::start(self, agency, max_group, beside, finish))
    }
}

impl Writers {
    /// Starts the group-commit writer of `backend`, one writer per intake lane, and
    /// the threads `beside`; `finish` runs once they have all stopped.
    pub(crate) fn start<B: Committing>(
        backend: &Arc<B>,
        agency: SigningKey,
        max_group: usize,
        beside: Vec<Beside>,
        finish: Box<dyn FnOnce() + Send>,
    ) -> Self {
        let max = max_group.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(Job, Reply)>();
        let (intake, waiting) = mpsc::channel::<(Job, Reply)>();
        let waiting = Arc::new(Mutex::new(waiting));
        let mut spawned = Vec::new();
        {
            let (backend, stop) = (backend.clone(), stop.clone());
            spawned.push(thread("group-commit", move || {
                commit_main(&*backend, &rx, max, &stop);
            }));
        }
        for lane in 0..backend.intake_lanes() {
            let (backend, waiting, stop) = (backend.clone(), waiting.clone(), stop.clone());
            spawned.push(thread(&format!("intake-{lane}"), move || {
                commit_intake(&*backend, lane, &waiting, max, &stop);
            }));
        }
        for (name, run) in beside {
            let stop = stop.clone();
            spawned.push(thread(name, move || run(stop)));
        }
        Writers {
            committer: GroupCommitter {
                // Without lanes, the main writer takes every job.
                intake: if backend.intake_lanes() == 0 {
                    tx.clone()
                } else {
                    intake
                },
                tx,
                agency: Arc::new(agency),
            },
            stop,
            threads: spawned.into_iter().flatten().collect(),
            finish: Some(finish),
        }
    }
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.into()).spawn(f) {
        Ok(t) => Some(t),
        Err(e) => {
            // Without the folder or the signer readers are slower and heads later;
            // without a writer its jobs are answered `Stopped`.
            tracing::error!(error = %e, thread = name, "cannot start a store thread");
            None
        }
    }
}

impl Writers {
    /// A handle to submit jobs with; as many as wanted, for as long as `self` lives.
    pub fn committer(&self) -> GroupCommitter {
        self.committer.clone()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in &self.threads {
            t.thread().unpark();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a store thread panicked");
            }
        }
        if let Some(finish) = self.finish.take() {
            finish();
        }
    }
}

impl GroupCommitter {
    /// A grant decided by `grant`, signed by the agency with its log position.
    pub fn sign(&self, grant: &IssuedGrant) -> iryo_proto::federation::LoggedGrant {
        grant.sign(&self.agency)
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
    ) -> Result<Result<IssuedGrant, Refusal>, CommitError> {
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
        let queue = if super::intake::fits(&job) {
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

fn commit_main(backend: &impl Committing, queue: &Queue, max: usize, stop: &AtomicBool) {
    // Moved when nothing else is waiting, and at least every `MOVE_EVERY` under a
    // steady stream of other jobs; after a failure, every `MOVE_AFTER_FAILURE`.
    let (mut last, mut failing) = (std::time::Instant::now(), false);
    while !stop.load(Ordering::Acquire) {
        let wait = if failing {
            MOVE_AFTER_FAILURE
        } else {
            MOVE_EVERY
        };
        match queue.recv_timeout(MOVE_EVERY) {
            Ok(first) => {
                let (jobs, replies) = gather(first, queue, max);
                // Groups are answered in the order they were taken.
                let waiting = std::cell::RefCell::new(std::collections::VecDeque::from([replies]));
                // Whatever waits when a group is sealed, until the intake's move is due.
                let mut next = || {
                    if last.elapsed() >= wait {
                        return Vec::new();
                    }
                    match queue.try_recv() {
                        Ok(first) => {
                            let (jobs, replies) = gather(first, queue, max);
                            waiting.borrow_mut().push_back(replies);
                            jobs
                        }
                        Err(_) => Vec::new(),
                    }
                };
                backend.commit_groups(jobs, &mut next, &mut |outcomes| {
                    let replies = waiting.borrow_mut().pop_front().unwrap_or_default();
                    let n = replies.len();
                    answer(replies, outcomes, n);
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last.elapsed() < wait {
            continue;
        }
        match (backend.move_intake(), failing) {
            (Ok(_), true) => {
                tracing::info!("moving checks from the intake again");
                failing = false;
            }
            // Once per outage: the store's own errors say what is wrong meanwhile.
            (Err(e), false) => {
                tracing::error!(error = %e, "moving checks from the intake failed; trying again every second");
                failing = true;
            }
            (Ok(_), false) | (Err(_), true) => {}
        }
        last = std::time::Instant::now();
    }
}

/// One intake lane's writer. The queue is shared: while one lane waits for its disk,
/// the next checks go to a lane whose writer is free.
fn commit_intake(
    backend: &impl Committing,
    lane: usize,
    queue: &Mutex<Queue>,
    max: usize,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let (jobs, replies) = {
            let Ok(queue) = queue.lock() else { return };
            match queue.recv_timeout(MOVE_EVERY) {
                Ok(first) => gather(first, &queue, max),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        answer(replies, backend.check_into(lane, &jobs, now()), jobs.len());
    }
}
