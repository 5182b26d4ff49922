//! `iryo-directory serve`: the directory on the federation's network. libp2p over TCP,
//! TLS 1.3 authenticating both peers' keys, yamux; the `/iryo/directory/1` protocol,
//! each node's requests on one long-lived stream with CBOR bodies and size limits
//! (`iryo_proto::wire`, answered by `iryo_p2p::answer::answer`).

pub mod handler;
pub mod roles;

pub use roles::Admission;

pub use crate::store::{CommitError, GroupCommitter};

use crate::registry::now;
use crate::store::{GrantQuery, Serving};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use iryo_proto::wire::{
    DirectoryRequest, DirectoryResponse, DIRECTORY_PROTOCOL, MAX_DIRECTORY_REQUEST,
    MAX_DIRECTORY_RESPONSE,
};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    P2p(#[from] iryo_p2p::P2pError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A node's connection with no open stream is closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(120);

/// A running directory service.
pub struct Running {
    pub peer_id: PeerId,
    /// Where it listens, each ending in `/p2p/<peer id>`, as nodes must dial it.
    pub addresses: Vec<Multiaddr>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.done).await;
    }

    /// Waits until the service ends (it ends when `stop` is called or on ctrl-c by the
    /// caller dropping it).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts serving on `listen`; returns once the listen addresses are known.
pub async fn start(
    store: Arc<dyn Serving>,
    agency: SigningKey,
    identity_secret: [u8; 32],
    listen: Multiaddr,
    max_group: usize,
    admission: Admission,
) -> Result<Running, ServiceError> {
    let (swarm, addresses) =
        iryo_p2p::transport::listening(identity_secret, listen, IDLE_CONNECTION).await?;
    let peer_id = *swarm.local_peer_id();
    for a in &addresses {
        tracing::info!(address = %a, "directory listening");
    }
    let sessions = swarm
        .behaviour()
        .new_control()
        .accept(StreamProtocol::new(DIRECTORY_PROTOCOL))
        .map_err(|e| iryo_p2p::P2pError::Transport(e.to_string()))?;
    let (stop, stopped) = oneshot::channel();
    let writers = store.clone().start_writers(agency, max_group)?;
    let done = tokio::spawn(serve(
        swarm,
        sessions,
        store,
        writers,
        stopped,
        Arc::new(admission),
    ));
    Ok(Running {
        peer_id,
        addresses,
        stop: Some(stop),
        done,
    })
}

async fn serve(
    mut swarm: Swarm<libp2p_stream::Behaviour>,
    mut sessions: libp2p_stream::IncomingStreams,
    store: Arc<dyn Serving>,
    writers: crate::store::Writers,
    mut stopped: oneshot::Receiver<()>,
    admission: Arc<Admission>,
) {
    let committer = writers.committer();
    let mut answering = tokio::task::JoinSet::new();
    let strangers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some((peer, stream)) = sessions.next() => {
                let (store, committer) = (store.clone(), committer.clone());
                // Decoding the key decompresses a curve point: once a session, not once
                // a request (3 % of the async workers' time at 20,000 checks/s).
                let key = iryo_p2p::transport::peer_key(&peer);
                let strangers = strangers.clone();
                let admission = admission.clone();
                answering.spawn(async move {
                    // Membership first, before any frame is read: a stranger's frames
                    // are bounded to what a refusal needs, and strangers' sessions in
                    // all are bounded too.
                    let member = admission.is_registry(key) || match &admission.members {
                        Some(m) => m.authorise(key, now()).await.is_ok(),
                        None => is_member(&store, key).await,
                    };
                    let _stranger = if member {
                        None
                    } else {
                        let Some(s) = Stranger::admit(&strangers) else {
                            crate::metrics::metrics().refused("strangers_at_capacity");
                            return;
                        };
                        Some(s)
                    };
                    let limits = if member {
                        (MAX_DIRECTORY_REQUEST, MAX_DIRECTORY_RESPONSE)
                    } else {
                        (STRANGER_REQUEST, MAX_DIRECTORY_RESPONSE)
                    };
                    iryo_p2p::answer::answer(peer, stream, limits, move |request| {
                        let (store, committer) = (store.clone(), committer.clone());
                        let admission = admission.clone();
                        async move {
                            let started = std::time::Instant::now();
                            let kind = crate::metrics::request_kind(&request);
                            let response = if admission.is_registry(key) {
                                roles::registry_session(store, &admission, request).await
                            } else {
                                answer(store, committer, (peer, key), request, &admission).await
                            };
                            crate::metrics::metrics().observe_directory(kind, &response, started.elapsed());
                            response
                        }
                    })
                    .await;
                });
            }
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
            event = swarm.select_next_some() => match event {
                SwarmEvent::IncomingConnectionError { error, .. } => {
                    tracing::debug!(%error, "incoming connection failed");
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    tracing::debug!(%peer_id, ?cause, "connection closed");
                }
                _ => {}
            }
        }
    }
    // Sessions end with the swarm; their answers already in the group commit finish.
    answering.abort_all();
    drop(committer);
    // Stopping the store's threads drains the intake files and signs the last head:
    // blocking work, off the async threads.
    if tokio::task::spawn_blocking(move || drop(writers))
        .await
        .is_err()
    {
        tracing::error!("stopping the store's threads failed");
    }
    drop(store);
    tracing::info!("directory service stopped");
}

/// Verifies a node's notifications off the async threads and outside the writer, then
/// logs them in the next group commit. Refused ones are acknowledged too: they will
/// never become valid, and the sender must not retry them for ever.
async fn notify(
    committer: GroupCommitter,
    member: iryo_proto::federation::Membership,
    notifications: Vec<iryo_proto::signed::Signed<iryo_proto::federation::Notification>>,
) -> DirectoryResponse {
    let from = member.code;
    let verified = tokio::task::spawn_blocking(move || {
        crate::store::verify_notifications(&member, &notifications)
    })
    .await;
    let (valid, out) = match verified {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    for (id, why) in &out.refused {
        tracing::warn!(%from, id = %iryo_proto::merkle::to_hex(id), why, "notification refused");
    }
    match committer.notify(from, valid).await {
        Ok(mut ids) => {
            ids.extend(out.refused.into_iter().map(|(id, _)| id));
            DirectoryResponse::Acknowledged { ids }
        }
        Err(e) => internal(e),
    }
}

/// What a peer is told when the directory failed: that it could not answer, never
/// why — the reason goes to the log.
fn internal(e: impl std::fmt::Display) -> DirectoryResponse {
    tracing::error!(error = %e, "directory request failed");
    DirectoryResponse::Refused(iryo_proto::wire::Refusal::new(
        iryo_proto::wire::RefusalReason::Internal,
        "the directory could not answer; try again later",
    ))
}

/// The largest request a peer without a valid membership may send: enough to ask and
/// be told it is not a member, never enough to make the directory buffer much.
const STRANGER_REQUEST: u64 = 4 * 1024;

/// Sessions of peers without a valid membership open at once, at most.
const MAX_STRANGERS: usize = 64;

/// One stranger's session, counted while it lasts.
struct Stranger(Arc<std::sync::atomic::AtomicUsize>);

impl Stranger {
    fn admit(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let n = count.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_STRANGERS {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(count.clone()))
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether the peer's key holds a valid membership now.
async fn is_member(store: &Arc<dyn Serving>, key: Option<[u8; 32]>) -> bool {
    let t = now();
    if let Some(record) = key.and_then(|k| store.cached_member(&k)) {
        return handler::admit(&record, t).is_ok();
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || handler::authorise(&*store, key, t).is_ok())
        .await
        .unwrap_or(false)
}

fn bad_request(detail: String) -> DirectoryResponse {
    DirectoryResponse::Refused(iryo_proto::wire::Refusal::new(
        iryo_proto::wire::RefusalReason::BadRequest,
        detail,
    ))
}

async fn answer(
    store: Arc<dyn Serving>,
    committer: GroupCommitter,
    (peer, key): (PeerId, Option<[u8; 32]>),
    request: DirectoryRequest,
    admission: &Admission,
) -> DirectoryResponse {
    let t = now();
    let auth_store = store.clone();
    // A member seen before is admitted without a thread hop; the cache is cleared by
    // every registration and revocation. A registry run apart asks the authority.
    let cached = key.and_then(|k| store.cached_member(&k));
    let admitted = match (&admission.members, cached) {
        (Some(members), _) => Ok(members.authorise(key, t).await),
        (None, Some(record)) => Ok(handler::admit(&record, t)),
        (None, None) => {
            tokio::task::spawn_blocking(move || handler::authorise(&*auth_store, key, t)).await
        }
    };
    let member = match admitted {
        Ok(Ok(m)) => m,
        Ok(Err(refusal)) => {
            tracing::warn!(%peer, reason = %refusal.reason, "request refused: {}", refusal.detail);
            return DirectoryResponse::Refused(refusal);
        }
        Err(e) => return internal(e),
    };
    if let Some(refused) = admission.refuses(&request) {
        return refused;
    }
    match request {
        DirectoryRequest::Eligibility { mut request } => {
            if let Err(e) = store
                .date_rules()
                .not_future("date of service", request.date)
            {
                return bad_request(e.to_string());
            }
            // The institution asking is the authenticated one, whatever the body says.
            request.institution = member.code;
            match committer.check(request).await {
                Ok(a) => DirectoryResponse::Eligibility(a),
                Err(e) => internal(e),
            }
        }
        DirectoryRequest::EligibilityBatch { requests } => {
            if requests.len() > iryo_proto::wire::MAX_CHECKS_PER_REQUEST {
                return DirectoryResponse::Refused(iryo_proto::wire::Refusal::new(
                    iryo_proto::wire::RefusalReason::BadRequest,
                    format!(
                        "at most {} checks per request",
                        iryo_proto::wire::MAX_CHECKS_PER_REQUEST
                    ),
                ));
            }
            let rules = store.date_rules();
            if let Some(e) = requests
                .iter()
                .find_map(|r| rules.not_future("date of service", r.date).err())
            {
                return bad_request(e.to_string());
            }
            // One job: decided and made durable in one group commit, answered at once.
            let requests = requests
                .into_iter()
                .map(|mut request| {
                    request.institution = member.code;
                    request
                })
                .collect();
            match committer.checks(requests).await {
                Ok(answers) => DirectoryResponse::EligibilityBatch(answers),
                Err(e) => internal(e),
            }
        }
        DirectoryRequest::Grant {
            medical_id,
            source,
            purpose,
            reason,
            idempotency_key,
        } => {
            let code = member.code;
            let query = GrantQuery {
                medical_id,
                source,
                purpose,
                reason,
                idempotency_key,
            };
            match committer.grant(member, query).await {
                Ok(Ok(grant)) => DirectoryResponse::Grant(committer.sign(&grant)),
                Ok(Err(refusal)) => {
                    tracing::info!(requester = %code, %source, reason = %refusal.reason, "grant refused");
                    DirectoryResponse::Refused(refusal)
                }
                Err(e) => internal(e),
            }
        }
        DirectoryRequest::Notify { notifications } => {
            if notifications.len() > iryo_proto::wire::MAX_NOTIFICATIONS_PER_REQUEST {
                return DirectoryResponse::Refused(iryo_proto::wire::Refusal::new(
                    iryo_proto::wire::RefusalReason::BadRequest,
                    format!(
                        "at most {} notifications per request",
                        iryo_proto::wire::MAX_NOTIFICATIONS_PER_REQUEST
                    ),
                ));
            }
            notify(committer, member, notifications).await
        }
        DirectoryRequest::ReportRefusals { reports } => {
            if reports.len() > iryo_proto::wire::MAX_NOTIFICATIONS_PER_REQUEST {
                return bad_request(format!(
                    "at most {} reports per request",
                    iryo_proto::wire::MAX_NOTIFICATIONS_PER_REQUEST
                ));
            }
            let logged =
                tokio::task::spawn_blocking(move || store.log_refusals(&member, &reports)).await;
            match logged {
                Ok(Ok((mut ids, refused))) => {
                    for (id, why) in &refused {
                        tracing::warn!(id = %iryo_proto::merkle::to_hex(id), why, "refusal report refused");
                    }
                    ids.extend(refused.into_iter().map(|(id, _)| id));
                    DirectoryResponse::Acknowledged { ids }
                }
                Ok(Err(e)) => internal(e),
                Err(e) => internal(e),
            }
        }
        other => tokio::task::spawn_blocking(move || handler::handle(&*store, other, t))
            .await
            .unwrap_or_else(internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_and_never_told_to_the_peer() {
        let DirectoryResponse::Refused(r) =
            internal("database: I/O error in /srv/iryo/directory.redb")
        else {
            panic!("not a refusal");
        };
        assert_eq!(r.reason, iryo_proto::wire::RefusalReason::Internal);
        assert!(
            !r.detail.contains("/srv") && !r.detail.contains("I/O"),
            "{r:?}"
        );
        let e = CommitError::Store(Arc::new(crate::store::StoreError::NoSigner));
        let DirectoryResponse::Refused(r) = internal(e) else {
            panic!("not a refusal");
        };
        assert!(!r.detail.contains("agency key"), "{r:?}");
    }
}
