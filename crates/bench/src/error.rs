//! The one error type of the bench; each variant says what to look at.

use shop_harness::HarnessError;

/// Why a benchmark run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options make no sense (no in-flight levels, a zero level, a zero window).
    #[error("invalid bench options: {0}")]
    Options(String),

    /// Starting nats-server or the services, or talking to them through the harness.
    #[error(transparent)]
    Harness(#[from] HarnessError),

    /// A JetStream request (stream, consumer, purge) failed.
    #[error("JetStream request failed: {0}")]
    JetStream(String),

    /// A publish was refused or its PubAck never came.
    #[error("publish to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },

    /// The load generator saw no order complete in a measured window: the system under test
    /// is stuck (look at the service logs in the shop's data directory).
    #[error("no order completed during the {phase} window at {inflight} in flight ({failed} timed out or failed)")]
    NoProgress {
        phase: String,
        inflight: usize,
        failed: u64,
    },

    /// On the cluster, a stream or KV bucket of the run is not kept on every node, so
    /// the run did not measure what the report would claim.
    #[error("stream {stream} has {replicas} replica(s); the cluster bench keeps every stream on {wanted}")]
    NotReplicated {
        stream: String,
        replicas: usize,
        wanted: usize,
    },

    /// A service process could not be found or measured under `/proc`.
    #[error("measuring processes: {0}")]
    Proc(String),

    /// Local plumbing: temp directories, writing the report.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The report could not be rendered as JSON.
    #[error("rendering the JSON report: {0}")]
    Json(#[from] serde_json::Error),
}

impl BenchError {
    /// Whether a second run can succeed: a stuck system or a failed request may recover;
    /// bad options, missing processes and local plumbing will not.
    pub fn is_transient(&self) -> bool {
        match self {
            BenchError::Harness(e) => e.is_transient(),
            BenchError::JetStream(_)
            | BenchError::Publish { .. }
            | BenchError::NoProgress { .. } => true,
            BenchError::Options(_)
            | BenchError::NotReplicated { .. }
            | BenchError::Proc(_)
            | BenchError::Io { .. }
            | BenchError::Json(_) => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn js(context: &str, e: impl std::fmt::Display) -> BenchError {
        BenchError::JetStream(format!("{context}: {e}"))
    }
}
