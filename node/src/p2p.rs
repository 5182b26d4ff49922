//! The node's libp2p swarm: TCP, TLS 1.3 with both peers' keys authenticated, yamux;
//! `/iryo/directory/1` as a client and `/iryo/exchange/1` both ways, each a session of
//! many requests on one stream per peer (`session`). One task owns the swarm and dials
//! for the sessions; everything else goes through `P2p`.

use crate::session::{Dial, Sessions};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use iryo_proto::wire::*;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, Multiaddr, PeerId, StreamProtocol, Swarm};
pub use libp2p_stream::IncomingStreams;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

#[derive(Debug, Error)]
pub enum P2pError {
    #[error("libp2p: {0}")]
    Transport(String),
    #[error("listen address {0}: {1}")]
    Listen(String, String),
    #[error("the network task has stopped")]
    Stopped,
    #[error("request failed: {0}")]
    Request(String),
}

#[derive(Clone)]
pub struct P2p {
    directory: Arc<Sessions<DirectoryRequest, DirectoryResponse>>,
    exchange: Arc<Sessions<ExchangeRequest, ExchangeResponse>>,
    directory_peer: PeerId,
    directory_addr: Vec<Multiaddr>,
}

impl P2p {
    pub async fn directory(&self, req: DirectoryRequest) -> Result<DirectoryResponse, P2pError> {
        self.directory
            .request(self.directory_peer, &self.directory_addr, &req)
            .await
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

/// The Ed25519 public key a peer proved in the TLS handshake.
pub fn peer_key(peer: &PeerId) -> Option<[u8; 32]> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// A connection with no open stream is closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// A swarm with `secret` as its identity (TCP, TLS 1.3, yamux, `libp2p-stream`),
/// listening on `listen`, and its listen addresses, each ending in /p2p/<peer id>. The
/// directory's service starts the same way.
pub async fn listening(
    mut secret: [u8; 32],
    listen: Multiaddr,
    idle: Duration,
) -> Result<(Swarm<libp2p_stream::Behaviour>, Vec<Multiaddr>), P2pError> {
    let keypair = identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::tls::Config::new,
            || BufferedYamux(libp2p::yamux::Config::default()),
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    swarm
        .listen_on(listen.clone())
        .map_err(|e| P2pError::Listen(listen.to_string(), e.to_string()))?;
    let me = *swarm.local_peer_id();
    let mut addresses = Vec::new();
    while addresses.is_empty() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                addresses.push(address.with(libp2p::multiaddr::Protocol::P2p(me)))
            }
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => return Err(P2pError::Listen(listen.to_string(), error.to_string())),
            _ => {}
        }
    }
    Ok((swarm, addresses))
}

/// Starts the swarm. Returns the handle, the streams other nodes open to fetch, the
/// listen addresses (each ending in /p2p/<peer id>) and the task.
pub async fn start(
    key: &SigningKey,
    listen: Multiaddr,
    directory: Multiaddr,
) -> Result<
    (
        P2p,
        IncomingStreams,
        Vec<Multiaddr>,
        tokio::task::JoinHandle<()>,
    ),
    P2pError,
> {
    let (swarm, addresses) = listening(key.to_bytes(), listen, IDLE_CONNECTION).await?;
    let directory_peer = match directory.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => {
            return Err(P2pError::Transport(
                "directory address lacks /p2p/<peer id>".into(),
            ))
        }
    };
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
        directory_peer,
        directory_addr: vec![directory],
    };
    let task = tokio::spawn(run(swarm, dials));
    Ok((p2p, inbound, addresses, task))
}

/// Drives the swarm: connects where a session asks to, and logs what fails.
async fn run(mut swarm: Swarm<libp2p_stream::Behaviour>, mut dials: mpsc::Receiver<Dial>) {
    loop {
        tokio::select! {
            dial = dials.recv() => match dial {
                None => break,
                Some((peer, addresses, started)) => {
                    // Already connected or dialling is not an error: the session opens
                    // its stream on whichever connection is there.
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addresses)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::trace!(%peer, %e, "no new dial");
                    }
                    let _ = started.send(());
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(peer = ?peer_id, %error, "cannot connect");
                }
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
}

/// yamux writes each frame's 12-byte header and its body as two writes, and TLS turns
/// each write into a record and a system call of its own. Behind a small write buffer
/// the two go out as one record in one call when yamux flushes, which it does after
/// every frame. The protocol on the wire is yamux's, unchanged. Measured with
/// `iryo-bench-net`: 40 % fewer `writev` calls at 20,000 checks/s.
#[derive(Clone)]
struct BufferedYamux(libp2p::yamux::Config);

/// Enough for a frame of checks or a grant; bigger writes pass straight through.
const WRITE_BUFFER: usize = 8 * 1024;

impl libp2p::core::UpgradeInfo for BufferedYamux {
    type Info = <libp2p::yamux::Config as libp2p::core::UpgradeInfo>::Info;
    type InfoIter = <libp2p::yamux::Config as libp2p::core::UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C> libp2p::core::upgrade::InboundConnectionUpgrade<C> for BufferedYamux
where
    C: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    type Output = libp2p::yamux::Muxer<futures::io::BufWriter<C>>;
    type Error = std::io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        let io = futures::io::BufWriter::with_capacity(WRITE_BUFFER, io);
        self.0.upgrade_inbound(io, info)
    }
}

impl<C> libp2p::core::upgrade::OutboundConnectionUpgrade<C> for BufferedYamux
where
    C: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    type Output = libp2p::yamux::Muxer<futures::io::BufWriter<C>>;
    type Error = std::io::Error;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        let io = futures::io::BufWriter::with_capacity(WRITE_BUFFER, io);
        self.0.upgrade_outbound(io, info)
    }
}
