//! Payment's one error type; [`PaymentError::is_transient`] says whether a retry can help.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PaymentError {
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `SHOP_GATEWAY_URL` is not a plain `http://host:port` base URL.
    #[error("invalid payment gateway URL `{url}`: {reason}")]
    GatewayUrl { url: String, reason: String },
    /// No connection, or it broke before the answer came.
    #[error("payment gateway at {url} unreachable: {source}")]
    GatewayUnreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer's body broke off.
    #[error("reading the payment gateway's answer failed: {0}")]
    GatewayBody(#[source] hyper::Error),
    #[error("payment gateway did not answer {call} within {after:?}")]
    GatewayTimeout { call: String, after: Duration },
    /// A 5xx: the gateway failed, the call may or may not have had its effect.
    #[error("payment gateway failed {call} with {status}: {body}")]
    GatewayFailed {
        call: String,
        status: u16,
        body: String,
    },
    /// A 4xx other than 402: our request is wrong, a bug on our side.
    #[error("payment gateway refused {call} with {status}, a bug in our request: {body}")]
    GatewayRejected {
        call: String,
        status: u16,
        body: String,
    },
    /// A 200 (or 402) whose body is not what the API promises.
    #[error("payment gateway answered {call} with a body we cannot read: {source}")]
    GatewayAnswer {
        call: String,
        #[source]
        source: serde_json::Error,
    },
    /// The gateway has no `GET /v1/ledger` (a real provider keeps its books to itself).
    #[error("the payment gateway at {url} offers no ledger endpoint (GET /v1/ledger answered 404); a real provider's books are read in its own dashboard and reports")]
    LedgerNotOffered { url: String },
}

impl PaymentError {
    /// Whether calling again can succeed. Every failed gateway call is worth retrying
    /// under the same idempotency key: even a request the gateway calls wrong, which
    /// is logged loudly, may pass once a fixed payment is deployed, and giving up
    /// would leave the order's money undecided.
    pub fn is_transient(&self) -> bool {
        match self {
            PaymentError::Runtime(e) => e.is_transient(),
            PaymentError::GatewayUnreachable { .. }
            | PaymentError::GatewayBody(_)
            | PaymentError::GatewayTimeout { .. }
            | PaymentError::GatewayFailed { .. }
            | PaymentError::GatewayRejected { .. }
            | PaymentError::GatewayAnswer { .. } => true,
            PaymentError::Config(_)
            | PaymentError::GatewayUrl { .. }
            | PaymentError::LedgerNotOffered { .. } => false,
        }
    }
}
