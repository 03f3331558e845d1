//! Inventory's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
}
