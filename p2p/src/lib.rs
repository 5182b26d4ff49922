//! What the agency's directory and the institutions' nodes share on the network, so
//! that neither depends on the other: the libp2p transport (`transport`), many
//! requests on one long-lived stream per peer and protocol, shaped as rust-libp2p's
//! protocols are: `session` asks (one `Sessions` per protocol, the behaviour), `answer`
//! serves one stream (the handler), `codec` frames them as `iryo_proto::wire`
//! describes; `transport::drive` runs the swarm, gathering waiting
//! work into one batch (`batch`), files of personal data and secrets created 0600
//! (`files`), the Prometheus plumbing (`metrics`), logging and the
//! shutdown signal.

#![forbid(unsafe_code)]

pub mod answer;
pub mod backup;
pub mod batch;
mod codec;
pub mod files;
pub mod logging;
pub mod metrics;
pub mod session;
pub mod shutdown;
pub mod storage;
pub mod transport;

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum P2pError {
    #[error("SSLKEYLOGFILE is set: TLS session keys would be written to disk; unset it")]
    KeyLogFile,
    #[error("libp2p: {0}")]
    Transport(String),
    #[error("listen address {0}: {1}")]
    Listen(String, String),
    #[error("the network task has stopped")]
    Stopped,
    #[error("request failed: {0}")]
    Request(String),
    /// No session could be opened: nothing was sent, so the request may go elsewhere.
    #[error("{0}")]
    Unreachable(String),
}
