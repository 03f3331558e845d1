//! Payment's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PaymentError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("gateway storage failed: {0}")]
    GatewayStorage(#[from] sled::Error),
    #[error("gateway ledger is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}
