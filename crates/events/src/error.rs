//! The one error type of the contract: why a message is not a valid shop event.
//!
//! Each variant is a reason to dead-letter a message; consumers match on the
//! variant, operators read the `Display` text in the dead-letter headers.

use thiserror::Error;

/// Why bytes received on a subject are not a shop event this version understands.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("CloudEvents attribute `{0}` is missing")]
    MissingAttribute(&'static str),
    #[error("CloudEvents attribute `{name}` is invalid: {reason}")]
    InvalidAttribute { name: &'static str, reason: String },
    #[error("unsupported CloudEvents specversion `{0}` (expected 1.0)")]
    UnsupportedSpecVersion(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("event `{event}` has unsupported major version v{version}")]
    UnsupportedVersion { event: String, version: String },
    #[error("data of `{event}` does not match its schema: {reason}")]
    InvalidData { event: &'static str, reason: String },
    #[error("subject `{subject}` is not a shop event subject")]
    UnknownSubject { subject: String },
    #[error("subject `{subject}` carries `{found}` but the event is `{expected}`")]
    SubjectTypeMismatch {
        subject: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("subject key mismatch: subject token `{token}`, subject attribute `{attribute}`, data key `{data}`")]
    SubjectKeyMismatch {
        token: String,
        attribute: String,
        data: String,
    },
    #[error("`{event}` comes only from {expected}, not from source `{claimed}`")]
    UnexpectedSource {
        event: &'static str,
        /// The `source` attribute the event carries (a field called `source` would be
        /// taken by thiserror for the error's cause).
        claimed: String,
        expected: String,
    },
    #[error("invalid {kind} `{value}`: {reason}")]
    InvalidId {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl DecodeError {
    /// Never: the same bytes decode the same way every time, so a message that does not
    /// decode is dead-lettered at once rather than retried.
    pub fn is_transient(&self) -> bool {
        false
    }
}
