//! Checkout's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl CheckoutError {
    /// Whether starting again can help: the runtime's faults say so themselves; a bad
    /// configuration stays bad.
    pub fn is_transient(&self) -> bool {
        match self {
            CheckoutError::Runtime(e) => e.is_transient(),
            CheckoutError::Config(_) => false,
        }
    }
}
