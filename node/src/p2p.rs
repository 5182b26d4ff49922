//! The node's libp2p swarm: TCP, TLS 1.3 with both peers' keys authenticated, yamux;
//! `/iryo/directory/1` as a client and `/iryo/exchange/1` both ways, each a session of
//! many requests on one stream per peer (`iryo_p2p::session`). One task owns the swarm and dials
//! for the sessions; everything else goes through `P2p`.

use ed25519_dalek::SigningKey;
use iryo_p2p::session::Sessions;
pub use iryo_p2p::transport::peer_key;
pub use iryo_p2p::P2pError;
use iryo_proto::wire::*;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
pub use libp2p_stream::IncomingStreams;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct P2p {
    directory: Arc<Sessions<DirectoryRequest, DirectoryResponse>>,
    exchange: Arc<Sessions<ExchangeRequest, ExchangeResponse>>,
    /// The agency's directory processes, each a peer with its addresses, in the order
    /// node.toml lists them.
    directories: Peers,
    /// The registry's, where the agency runs it apart (eligibility checks); empty when
    /// the directory answers them.
    registries: Peers,
}

/// Processes of one service, in the order node.toml lists them, and the one requests
/// go to while it answers.
#[derive(Clone)]
struct Peers {
    list: Arc<[(PeerId, Vec<Multiaddr>)]>,
    current: Arc<AtomicUsize>,
}

impl Peers {
    /// Addresses of one peer (one key on several hosts) dialled together.
    fn new(addresses: &[Multiaddr], what: &str) -> Result<Self, P2pError> {
        let mut list: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for address in addresses {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = address.iter().last() else {
                return Err(P2pError::Transport(format!(
                    "{what} address {address} lacks /p2p/<peer id>"
                )));
            };
            match list.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, addresses)) => addresses.push(address.clone()),
                None => list.push((peer, vec![address.clone()])),
            }
        }
        Ok(Self {
            list: list.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl P2p {
    /// Asks the directory process in use; one that cannot be reached (nothing was
    /// sent) gives way to the next listed, which is then kept. A request that was sent
    /// and got no answer is not sent again elsewhere: it may have been done, and the
    /// caller knows whether it can be repeated.
    pub async fn directory(&self, req: DirectoryRequest) -> Result<DirectoryResponse, P2pError> {
        self.ask(&self.directories, req).await
    }

    /// Asks the registry where the agency runs it apart, else the directory.
    pub async fn registry(&self, req: DirectoryRequest) -> Result<DirectoryResponse, P2pError> {
        if self.registries.list.is_empty() {
            return self.directory(req).await;
        }
        self.ask(&self.registries, req).await
    }

    async fn ask(
        &self,
        peers: &Peers,
        req: DirectoryRequest,
    ) -> Result<DirectoryResponse, P2pError> {
        let n = peers.list.len();
        let first = peers.current.load(Ordering::Relaxed);
        let mut last = P2pError::Unreachable("no directory address is configured".into());
        for step in 0..n {
            let i = (first + step) % n;
            let (peer, addresses) = &peers.list[i];
            match self.directory.request(*peer, addresses, &req).await {
                Err(P2pError::Unreachable(why)) => {
                    tracing::warn!(directory = %peer, why, "directory process unreachable; trying the next");
                    last = P2pError::Unreachable(why);
                }
                answered => {
                    if step > 0 {
                        tracing::info!(directory = %peer, "now using this directory process");
                        peers.current.store(i, Ordering::Relaxed);
                    }
                    return answered;
                }
            }
        }
        Err(last)
    }

    pub async fn fetch(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        req: ExchangeRequest,
    ) -> Result<ExchangeResponse, P2pError> {
        self.exchange.request(peer, &addresses, &req).await
    }
}

/// A connection with no open stream is closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// Starts the swarm. Returns the handle, the streams other nodes open to fetch, the
/// listen addresses (each ending in /p2p/<peer id>) and the task.
pub async fn start(
    key: &SigningKey,
    listen: Multiaddr,
    directory: &[Multiaddr],
    registry: &[Multiaddr],
) -> Result<
    (
        P2p,
        IncomingStreams,
        Vec<Multiaddr>,
        tokio::task::JoinHandle<()>,
    ),
    P2pError,
> {
    let (swarm, addresses) =
        iryo_p2p::transport::listening(key.to_bytes(), listen, IDLE_CONNECTION).await?;
    let directories = Peers::new(directory, "directory")?;
    let registries = Peers::new(registry, "registry")?;
    let mut control = swarm.behaviour().new_control();
    let inbound = control
        .accept(StreamProtocol::new(EXCHANGE_PROTOCOL))
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let (dial, dials) = mpsc::channel(64);
    let p2p = P2p {
        directory: Arc::new(Sessions::new(
            DIRECTORY_PROTOCOL,
            (MAX_DIRECTORY_REQUEST, MAX_DIRECTORY_RESPONSE),
            control.clone(),
            dial.clone(),
        )),
        exchange: Arc::new(Sessions::new(
            EXCHANGE_PROTOCOL,
            (MAX_EXCHANGE_REQUEST, MAX_EXCHANGE_RESPONSE),
            control,
            dial,
        )),
        directories,
        registries,
    };
    let task = tokio::spawn(iryo_p2p::transport::drive(swarm, dials));
    Ok((p2p, inbound, addresses, task))
}
