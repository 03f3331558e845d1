//! The one error type of the operator tools; each variant tells the operator what to look at.

use std::time::Duration;

/// Why an operator command could not do its job.
///
/// Findings (a stuck saga, a broken invariant) are not errors: they are the
/// answer, reported in [`crate::Trace`] or [`crate::AuditReport`]. These
/// variants are for when the tool could not look at all.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The options make no sense (zero orders, zero concurrency…); fix the command line.
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// A service did not answer in time or the connection failed; is it running?
    #[error("request {subject} got no answer: {reason}")]
    NoAnswer { subject: String, reason: String },

    /// A service answered with a micro-service error the tool cannot work around.
    #[error("{subject} answered {code}: {description}")]
    Refused {
        subject: String,
        code: u16,
        description: String,
    },

    /// A service answered, but not with the JSON this version of the tools expects.
    #[error("{subject} answered with unexpected JSON: {reason}")]
    UnexpectedReply { subject: String, reason: String },

    /// A service the command needs does not answer PING.
    #[error("{service} does not answer PING; start it first")]
    ServiceDown { service: String },

    /// Reading a JetStream stream failed (missing stream, server error).
    #[error("reading stream {stream}: {reason}")]
    Stream { stream: String, reason: String },

    /// Something the command waits for did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },

    /// Nothing at all is known about the order: no event, no dead letter, checkout does not know it.
    #[error("nothing is known about order `{order_id}`: no event, no dead letter, and checkout does not know it")]
    UnknownOrder { order_id: String },

    /// The report could not be written (closed pipe, full disk).
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
}

impl OpsError {
    /// Whether running the same command again can give a different answer: a service
    /// that was down or slow may answer, a stream may become readable. Bad options, an
    /// unknown order, a refusal or a reply this version cannot read will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            OpsError::NoAnswer { .. }
            | OpsError::ServiceDown { .. }
            | OpsError::Stream { .. }
            | OpsError::Timeout { .. } => true,
            OpsError::InvalidOptions(_)
            | OpsError::Refused { .. }
            | OpsError::UnexpectedReply { .. }
            | OpsError::UnknownOrder { .. }
            | OpsError::Output(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_service_is_worth_asking_again_but_a_refusal_is_not() {
        let silent = OpsError::NoAnswer {
            subject: "checkout.orders.get".into(),
            reason: "timed out".into(),
        };
        let refused = OpsError::Refused {
            subject: "checkout.orders.get".into(),
            code: 400,
            description: "order_id: bad".into(),
        };
        assert!(silent.is_transient());
        assert!(!refused.is_transient());
        assert!(!OpsError::UnknownOrder {
            order_id: "o-1".into()
        }
        .is_transient());
    }
}
