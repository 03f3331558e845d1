//! Inventory's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl InventoryError {
    /// Whether starting again can help: the runtime's faults say so themselves; a bad
    /// configuration stays bad.
    pub fn is_transient(&self) -> bool {
        match self {
            InventoryError::Runtime(e) => e.is_transient(),
            InventoryError::Config(_) => false,
        }
    }
}
