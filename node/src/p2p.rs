//! The node's libp2p swarm: TCP, TLS 1.3 with both peers' keys authenticated, yamux;
//! `/iryo/directory/1` as a client and `/iryo/exchange/1` both ways. One task owns the
//! swarm; everything else talks to it through `P2p`.

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use iryo_proto::wire::*;
use libp2p::request_response::{self as rr, cbor, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity, Multiaddr, PeerId, StreamProtocol, Swarm};
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

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

#[derive(NetworkBehaviour)]
struct Behaviour {
    directory: cbor::Behaviour<DirectoryRequest, DirectoryResponse>,
    exchange: cbor::Behaviour<ExchangeRequest, ExchangeResponse>,
}

/// A fetch from another node that waits for an answer.
pub struct Inbound {
    pub peer: PeerId,
    pub request: ExchangeRequest,
    pub reply: oneshot::Sender<ExchangeResponse>,
}

enum Command {
    Directory(
        DirectoryRequest,
        oneshot::Sender<Result<DirectoryResponse, P2pError>>,
    ),
    Fetch(
        PeerId,
        Vec<Multiaddr>,
        ExchangeRequest,
        oneshot::Sender<Result<ExchangeResponse, P2pError>>,
    ),
}

#[derive(Clone)]
pub struct P2p {
    commands: mpsc::Sender<Command>,
}

impl P2p {
    pub async fn directory(&self, req: DirectoryRequest) -> Result<DirectoryResponse, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Directory(req, tx))
            .await
            .map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)?
    }

    pub async fn fetch(
        &self,
        peer: PeerId,
        addresses: Vec<Multiaddr>,
        req: ExchangeRequest,
    ) -> Result<ExchangeResponse, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Fetch(peer, addresses, req, tx))
            .await
            .map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)?
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

fn protocol<Req, Resp>(
    name: &'static str,
    support: ProtocolSupport,
    max_req: u64,
    max_resp: u64,
) -> cbor::Behaviour<Req, Resp>
where
    Req: serde::Serialize + serde::de::DeserializeOwned + Send + std::fmt::Debug + 'static,
    Resp: serde::Serialize + serde::de::DeserializeOwned + Send + std::fmt::Debug + 'static,
{
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(max_req)
        .set_response_size_maximum(max_resp);
    rr::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(name), support)],
        rr::Config::default().with_request_timeout(Duration::from_secs(30)),
    )
}

/// Starts the swarm. Returns the handle, the stream of inbound fetches, the listen
/// addresses (each ending in /p2p/<peer id>) and the task.
pub async fn start(
    key: &SigningKey,
    listen: Multiaddr,
    directory: Multiaddr,
) -> Result<
    (
        P2p,
        mpsc::Receiver<Inbound>,
        Vec<Multiaddr>,
        tokio::task::JoinHandle<()>,
    ),
    P2pError,
> {
    let mut secret = key.to_bytes();
    let keypair = identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| P2pError::Transport(e.to_string()))?;
    let mut swarm: Swarm<Behaviour> = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::tls::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_behaviour(|_| Behaviour {
            directory: protocol(
                DIRECTORY_PROTOCOL,
                ProtocolSupport::Outbound,
                MAX_DIRECTORY_REQUEST,
                MAX_DIRECTORY_RESPONSE,
            ),
            exchange: protocol(
                EXCHANGE_PROTOCOL,
                ProtocolSupport::Full,
                MAX_EXCHANGE_REQUEST,
                MAX_EXCHANGE_RESPONSE,
            ),
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
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
            SwarmEvent::ListenerError { error, .. } => {
                return Err(P2pError::Listen(listen.to_string(), error.to_string()))
            }
            _ => {}
        }
    }
    let directory_peer = match directory.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => {
            return Err(P2pError::Transport(
                "directory address lacks /p2p/<peer id>".into(),
            ))
        }
    };
    let (commands, rx) = mpsc::channel(1024);
    let (inbound_tx, inbound_rx) = mpsc::channel(1024);
    let task = tokio::spawn(run(swarm, (directory_peer, directory), rx, inbound_tx));
    Ok((P2p { commands }, inbound_rx, addresses, task))
}

enum Pending {
    Directory(oneshot::Sender<Result<DirectoryResponse, P2pError>>),
    Exchange(oneshot::Sender<Result<ExchangeResponse, P2pError>>),
}

/// Tells the swarm where `peer` is before each request. The request-response
/// behaviour forgets a peer's addresses when a dial fails, so a node that only told it
/// once would never find a directory or peer again after it was down.
fn remember(swarm: &mut Swarm<Behaviour>, peer: PeerId, addresses: Vec<Multiaddr>) {
    for a in addresses {
        swarm.add_peer_address(peer, a);
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    (directory, directory_addr): (PeerId, Multiaddr),
    mut commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut pending: HashMap<OutboundRequestId, Pending> = HashMap::new();
    let (answered_tx, mut answered) =
        mpsc::unbounded_channel::<(rr::ResponseChannel<ExchangeResponse>, ExchangeResponse)>();
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Directory(req, reply)) => {
                    remember(&mut swarm, directory, vec![directory_addr.clone()]);
                    let id = swarm.behaviour_mut().directory.send_request(&directory, req);
                    pending.insert(id, Pending::Directory(reply));
                }
                Some(Command::Fetch(peer, addrs, req, reply)) => {
                    remember(&mut swarm, peer, addrs);
                    let id = swarm.behaviour_mut().exchange.send_request(&peer, req);
                    pending.insert(id, Pending::Exchange(reply));
                }
            },
            Some((channel, response)) = answered.recv() => {
                if swarm.behaviour_mut().exchange.send_response(channel, response).is_err() {
                    tracing::debug!("a requester left before its answer");
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Directory(rr::Event::Message { message: rr::Message::Response { request_id, response }, .. })) => {
                    if let Some(Pending::Directory(reply)) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Exchange(rr::Event::Message { message: rr::Message::Response { request_id, response }, .. })) => {
                    if let Some(Pending::Exchange(reply)) = pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Exchange(rr::Event::Message { peer, message: rr::Message::Request { request, channel, .. }, .. })) => {
                    let (reply, answer) = oneshot::channel();
                    if inbound.send(Inbound { peer, request, reply }).await.is_err() {
                        break;
                    }
                    let answered_tx = answered_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(response) = answer.await {
                            let _ = answered_tx.send((channel, response));
                        }
                    });
                }
                SwarmEvent::Behaviour(BehaviourEvent::Directory(rr::Event::OutboundFailure { request_id, error, .. }))
                | SwarmEvent::Behaviour(BehaviourEvent::Exchange(rr::Event::OutboundFailure { request_id, error, .. })) => {
                    match pending.remove(&request_id) {
                        Some(Pending::Directory(reply)) => { let _ = reply.send(Err(P2pError::Request(error.to_string()))); }
                        Some(Pending::Exchange(reply)) => { let _ = reply.send(Err(P2pError::Request(error.to_string()))); }
                        None => {}
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(peer = ?peer_id, %error, "cannot connect");
                }
                SwarmEvent::Behaviour(BehaviourEvent::Exchange(rr::Event::InboundFailure { peer, error, .. })) => {
                    tracing::warn!(%peer, %error, "inbound exchange failed (undecodable, oversize or timed out)");
                }
                _ => {}
            }
        }
    }
}
