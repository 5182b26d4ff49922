//! An institution's node, run beside its EMR: keeps the institution's FHIR records,
//! serves them to other institutions under an agency grant, fetches theirs, and reports
//! every exchange, signed, to the agency's audit log through a durable outbox.

#![forbid(unsafe_code)]

pub mod api;
pub mod backup;
pub mod clock;
pub mod config;
pub mod directory;
pub mod exchange;
pub mod fhir;
pub mod idempotency;
pub mod identity;
pub mod metrics;
pub mod outbox;
pub mod p2p;
pub mod serve_commit;
pub mod store;
pub mod witnessed;

use config::NodeConfig;
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_proto::InstitutionCode;
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    P2p(#[from] p2p::P2pError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("API listener {0}: {1}")]
    Api(String, std::io::Error),
}

/// What the parts of a running node share.
pub struct Node {
    pub code: InstitutionCode,
    pub key: SigningKey,
    pub agency: VerifyingKey,
    pub store: Arc<store::Store>,
    pub serving: serve_commit::ServeCommitter,
    pub p2p: p2p::P2p,
    pub directory: directory::Directory,
    pub api_token: String,
    /// Where the node's key is kept: a backup carries it.
    pub key_file: std::path::PathBuf,
    /// The tolerance with the agency's clock, and the drift last seen.
    pub clock: clock::Clock,
    /// Keyed fetches under way.
    pub fetching: idempotency::InFlight,
    /// The audit log as witnesses confirmed it to this node, when `[witnesses]` names
    /// any; records are served only while it allows.
    pub witnessed: Option<witnessed::Watch>,
}

/// A started node: where its API and its peers can reach it.
pub struct Running {
    pub api: SocketAddr,
    pub p2p: Vec<libp2p::Multiaddr>,
    pub node: Arc<Node>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The file in the data directory that holds the address the local API listens on.
pub const API_ADDR_FILE: &str = "api.addr";

/// Starts the node: the store, the P2P swarm, the outbox and the local API.
pub async fn start(config: NodeConfig) -> Result<Running, NodeError> {
    iryo_p2p::transport::refuse_key_log()?;
    let key = identity::load_key(&config.key_path())?;
    let agency = config.agency_key().map_err(NodeError::Config)?;
    let code = config.code;
    iryo_p2p::files::create_private_dir(&config.data_dir)
        .map_err(|e| NodeError::Config(format!("{}: {e}", config.data_dir.display())))?;
    let store = Arc::new(store::Store::open(&config.data_dir.join("node.redb"))?);
    let tolerance = config.directory.clock_tolerance_seconds;
    let serving = serve_commit::ServeCommitter::start(store.clone(), tolerance);
    let policy =
        witnessed::Policy::from_config(&agency, &config.witnesses).map_err(NodeError::Config)?;
    let watch = match policy {
        Some(p) => Some(witnessed::Watch::new(p, store.witnessed()?)),
        None => None,
    };
    let directory_addr = config.directory_addresses().map_err(NodeError::Config)?;
    let registry_addr = config.registry_addresses().map_err(NodeError::Config)?;
    let listen = config.listen_address().map_err(NodeError::Config)?;
    let (p2p, inbound, p2p_addrs, p2p_task) =
        p2p::start(&key, listen, &directory_addr, &registry_addr).await?;
    let node = Arc::new(Node {
        code,
        directory: directory::Directory::new(p2p.clone(), agency, config.refresh(), tolerance),
        key,
        agency,
        store,
        serving,
        p2p,
        api_token: config.api.token.clone(),
        key_file: config.key_path(),
        clock: clock::Clock::new(tolerance),
        fetching: idempotency::InFlight::default(),
        witnessed: watch,
    });
    let mut tasks = vec![p2p_task];
    if node.witnessed.is_some() {
        tasks.push(tokio::spawn(witnessed::follow(node.clone())));
    }
    tasks.push(tokio::spawn(exchange::serve_inbound(node.clone(), inbound)));
    tasks.push(tokio::spawn(outbox::deliver(
        node.clone(),
        config.outbox_interval(),
    )));
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .map_err(|e| NodeError::Api(config.api.listen.clone(), e))?;
    let api = listener
        .local_addr()
        .map_err(|e| NodeError::Api(config.api.listen.clone(), e))?;
    // Where the API really listens (the configured port may be 0): `iryo-node backup`
    // reads it to reach this node.
    let _ = iryo_p2p::files::create_private(&config.data_dir.join(API_ADDR_FILE))
        .and_then(|mut f| std::io::Write::write_all(&mut f, api.to_string().as_bytes()));
    let router = api::router(node.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "API server stopped");
        }
    }));
    tracing::info!(%code, %api, "node started");
    Ok(Running {
        api,
        p2p: p2p_addrs,
        node,
        tasks,
    })
}
