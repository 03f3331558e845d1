//! The simulator's one error type; each variant says whether trying again can help.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GatewaySimError {
    /// The ledger's database could not be opened (in use by another simulator, say).
    #[error("cannot open the gateway ledger in {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// Reading or writing the ledger failed.
    #[error("gateway ledger storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// The flush ran on a blocking thread that panicked or was cancelled.
    #[error("gateway ledger flush did not finish: {0}")]
    FlushTask(#[source] tokio::task::JoinError),
    /// An entry in the books does not decode: a bug or a damaged disk, not a retry.
    #[error("gateway ledger entry `{key}` is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode a gateway ledger entry: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the gateway made an invalid payment id: {0}")]
    PaymentId(#[source] shop_events::DecodeError),
    /// The listen address is taken or not ours to bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gateway simulator's server task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl GatewaySimError {
    /// Whether the same call could succeed later: storage hiccups can, bugs and bad settings cannot.
    pub fn is_transient(&self) -> bool {
        match self {
            GatewaySimError::Storage(_) | GatewaySimError::FlushTask(_) => true,
            GatewaySimError::Open { .. }
            | GatewaySimError::Corrupt { .. }
            | GatewaySimError::Encode(_)
            | GatewaySimError::PaymentId(_)
            | GatewaySimError::Bind { .. }
            | GatewaySimError::Task(_) => false,
        }
    }
}
