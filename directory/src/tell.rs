//! The registry's side of the split (docs/roles.md): the notices its ID changes,
//! deaths and retirements queued, signed and sent in order to the exchange authority
//! until it has applied them; then forgotten here.

use crate::store::Operations;
use ed25519_dalek::SigningKey;
use iryo_p2p::session::Sessions;
use iryo_p2p::P2pError;
use iryo_proto::signed::Signed;
use iryo_proto::wire::{
    DirectoryRequest, DirectoryResponse, DIRECTORY_PROTOCOL, MAX_DIRECTORY_REQUEST,
    MAX_DIRECTORY_RESPONSE, MAX_NOTIFICATIONS_PER_REQUEST,
};
use libp2p::{Multiaddr, PeerId};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TellError {
    #[error("roles.authority {0:?} is not a libp2p address with /p2p/<peer id>: {1}")]
    Address(String, String),
    #[error("the exchange authority is unreachable: {0}")]
    Unreachable(#[from] P2pError),
    #[error("the exchange authority refused the notices: {0}")]
    Refused(String),
    #[error("the exchange authority answered something else")]
    Unexpected,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("a blocking task failed: {0}")]
    Task(String),
}

/// A connection with no open stream is closed after this long.
const IDLE: Duration = Duration::from_secs(120);

/// The exchange authority as the registry reaches it.
pub struct Authority {
    sessions: Sessions<DirectoryRequest, DirectoryResponse>,
    peer: PeerId,
    addresses: Vec<Multiaddr>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Authority {
    /// Reaches the authority at `address` under `identity`, the registry's service key:
    /// the one the authority admits the registry's session by (`roles.registry_peer`).
    /// Must be called inside the Tokio runtime.
    pub fn new(address: &str, identity: [u8; 32]) -> Result<Self, TellError> {
        let bad = |why: String| TellError::Address(address.to_string(), why);
        let addr: Multiaddr = address.trim().parse().map_err(|e| bad(format!("{e}")))?;
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(bad("it lacks /p2p/<peer id>".into()));
        };
        let swarm = iryo_p2p::transport::dialling(identity, IDLE)?;
        let control = swarm.behaviour().new_control();
        let (dial, dials) = tokio::sync::mpsc::channel(8);
        let sessions = Sessions::new(
            DIRECTORY_PROTOCOL,
            (MAX_DIRECTORY_REQUEST, MAX_DIRECTORY_RESPONSE),
            control,
            dial,
        );
        let driver = tokio::spawn(iryo_p2p::transport::drive(swarm, dials));
        Ok(Self {
            sessions,
            peer,
            addresses: vec![addr],
            driver,
        })
    }

    /// The active membership the authority keeps for a node's `key`, if any.
    pub async fn member(
        &self,
        key: [u8; 32],
    ) -> Result<Option<Signed<iryo_proto::federation::Membership>>, TellError> {
        let answer = self
            .sessions
            .request(
                self.peer,
                &self.addresses,
                &DirectoryRequest::MemberByKey { key },
            )
            .await?;
        match answer {
            DirectoryResponse::Membership(m) => Ok(m),
            DirectoryResponse::Refused(r) => Err(TellError::Refused(r.to_string())),
            _ => Err(TellError::Unexpected),
        }
    }

    /// Sends `notices` (may be empty) and returns the number the authority expects next.
    pub async fn send(
        &self,
        notices: Vec<Signed<iryo_proto::roles::RegistryNotice>>,
    ) -> Result<u64, TellError> {
        let answer = self
            .sessions
            .request(
                self.peer,
                &self.addresses,
                &DirectoryRequest::RegistryNotices { notices },
            )
            .await?;
        match answer {
            DirectoryResponse::NoticesApplied { expected } => Ok(expected),
            DirectoryResponse::Refused(r) => Err(TellError::Refused(r.to_string())),
            _ => Err(TellError::Unexpected),
        }
    }
}

type Store = Arc<dyn Operations + Send + Sync>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::store::Result<T> + Send + 'static,
) -> Result<T, TellError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TellError::Task(e.to_string()))?
        .map_err(TellError::from)
}

/// Sends every notice waiting, in batches, until the authority has them all; forgets
/// those it applied. Returns how many were applied.
pub async fn tell_once(
    store: &Store,
    authority: &Authority,
    key: &SigningKey,
) -> Result<u64, TellError> {
    let mut expected = authority.send(Vec::new()).await?;
    let first = expected;
    loop {
        let (s, from) = (store.clone(), expected);
        blocking(move || s.forget_told(from)).await?;
        let (s, from) = (store.clone(), expected);
        let waiting =
            blocking(move || s.notices_to_tell(from, MAX_NOTIFICATIONS_PER_REQUEST)).await?;
        if waiting.is_empty() {
            return Ok(expected - first);
        }
        let signed = waiting.iter().map(|n| Signed::sign(n, key)).collect();
        let next = authority.send(signed).await?;
        if next <= expected {
            return Err(TellError::Refused(format!(
                "the authority still expects notice {next}"
            )));
        }
        expected = next;
    }
}

/// Tells the authority now and every `every`; logs a failure when it starts and when
/// it ends, not at every round.
pub async fn tell_loop(store: Store, authority: Arc<Authority>, key: SigningKey, every: Duration) {
    let mut failing: Option<String> = None;
    loop {
        match tell_once(&store, &authority, &key).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        applied = n,
                        "the exchange authority applied the registry's notices"
                    );
                }
                if failing.take().is_some() {
                    tracing::info!("the exchange authority takes the registry's notices again");
                }
            }
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "the registry's notices did not reach the exchange authority; they wait and are sent again");
                }
                failing = Some(why);
            }
        }
        tokio::time::sleep(every).await;
    }
}
