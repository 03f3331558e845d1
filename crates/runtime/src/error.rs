//! The runtime's one error type; each variant says whether retrying can help.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("NATS connection failed: {0}")]
    Connect(String),
    #[error("JetStream request failed: {0}")]
    JetStream(String),
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("storage transaction failed: {0}")]
    Transaction(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("micro service setup failed: {0}")]
    Service(String),
    #[error("request {subject} got no answer: {reason}")]
    NoAnswer { subject: String, reason: String },
    #[error("request {subject} got a reply that is not JSON: {reason}")]
    UnexpectedReply { subject: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl RuntimeError {
    /// Wraps any displayable NATS error as a JetStream failure.
    pub fn js(e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::JetStream(e.to_string())
    }
}
