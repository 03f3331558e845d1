//! Checkout's one error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
}
