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
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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

/// A connection with no open stream is closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);

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
    let (swarm, addresses) =
        iryo_p2p::transport::listening(key.to_bytes(), listen, IDLE_CONNECTION).await?;
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
    let task = tokio::spawn(iryo_p2p::transport::drive(swarm, dials));
    Ok((p2p, inbound, addresses, task))
}
