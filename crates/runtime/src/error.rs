//! The runtime's one error type: every variant keeps its source, and
//! [`RuntimeError::is_transient`] says whether retrying the same work can help.
//!
//! The text of each variant includes its source's, so a log line or a STATS
//! `last_error` stands alone; `source()` still gives the typed cause.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Any error, boxed: for the many distinct error types async-nats returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// NATS did not answer before shutdown was requested.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request (stream, consumer, pull, direct get) failed.
    #[error("JetStream {action} failed: {source}")]
    JetStream {
        action: String,
        #[source]
        source: BoxError,
    },
    /// A publish, or the PubAck it waits for, failed.
    #[error("publish to {subject} failed: {source}")]
    Publish {
        subject: String,
        #[source]
        source: BoxError,
    },
    /// sled failed; see [`RuntimeError::is_transient`] for which of its faults pass.
    #[error("storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// The store is in a storage fault (see `store::StorageFault`) and refuses work
    /// until it is reopened; the text is sled's I/O error.
    #[error("storage is faulted until the disk takes writes again: {0}")]
    StorageFaulted(String),
    /// The blocking task that flushes sled died before it finished.
    #[error("flush task failed: {0}")]
    FlushTask(#[from] tokio::task::JoinError),
    /// A stored record does not decode: a bug or disk damage, never the input's fault.
    #[error("stored record {record} is corrupt: {source}")]
    Corrupt {
        record: String,
        #[source]
        source: BoxError,
    },
    /// A value could not be serialised; the same value never will be.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Registering the micro service or one of its endpoints failed.
    #[error("micro service {what} failed: {source}")]
    Service {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A request failed before any reply arrived (no responders, connection lost).
    #[error("request {subject} got no answer: {source}")]
    NoAnswer {
        subject: String,
        #[source]
        source: async_nats::RequestError,
    },
    /// A request got no reply in time.
    #[error("request {subject} got no reply within {within:?}")]
    NoReplyWithin { subject: String, within: Duration },
    /// The reply arrived but is not JSON.
    #[error("request {subject} got a reply that is not JSON: {source}")]
    UnexpectedReply {
        subject: String,
        #[source]
        source: serde_json::Error,
    },
    /// The service's data directory cannot be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Joining, running or leaving a partitioned group failed; it says whether to retry.
    #[error("{0}")]
    Group(#[from] crate::group::GroupError),
    /// The partition this work belongs to is no longer (or not yet) ours.
    #[error("{0}")]
    Fenced(#[from] crate::group::FenceError),
    /// The server refused a changelog write because the partition's last epoch record is
    /// not the one this owner last knew: another owner took it, or our own epoch write
    /// landed twice. The relay looks again before it gives up.
    #[error("the epoch record of partition {partition} is not the one this owner wrote last")]
    EpochMismatch { partition: u32 },
    /// A read of a partition's changelog did not reach the epoch record the reader
    /// wrote before it: the server (a replica of a clustered bucket) that served it was
    /// behind, and the read may miss the last owner's final writes. Read again.
    #[error("the changelog of partition {partition} was read up to epoch record {read}, before ours at {expected}")]
    StaleRead {
        partition: u32,
        read: u64,
        expected: u64,
    },
    /// Something the broker should have delivered did not arrive in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// A partition's records could not be written back into the local store.
    #[error("restoring a partition failed: {0}")]
    Restore(String),
}

impl RuntimeError {
    /// Wraps a failed JetStream request, saying what was being done:
    /// `.map_err(RuntimeError::js("getting stream ORDERS"))`.
    pub fn js<E: Into<BoxError>>(action: impl Into<String>) -> impl FnOnce(E) -> RuntimeError {
        let action = action.into();
        move |source| RuntimeError::JetStream {
            action,
            source: source.into(),
        }
    }

    /// Wraps a failed publish to `subject`.
    pub fn publish(subject: impl Into<String>, source: impl Into<BoxError>) -> RuntimeError {
        RuntimeError::Publish {
            subject: subject.into(),
            source: source.into(),
        }
    }

    /// Whether doing the same work again can succeed: `true` for the network, the broker
    /// and disk I/O; `false` for corrupt records, values that do not encode, replies
    /// that are not JSON and configuration the process cannot fix by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            RuntimeError::Connect { .. }
            | RuntimeError::JetStream { .. }
            | RuntimeError::Publish { .. }
            | RuntimeError::FlushTask(_)
            | RuntimeError::StorageFaulted(_)
            | RuntimeError::Service { .. }
            | RuntimeError::NoAnswer { .. }
            | RuntimeError::NoReplyWithin { .. }
            | RuntimeError::Timeout(_)
            | RuntimeError::Fenced(_)
            | RuntimeError::EpochMismatch { .. }
            | RuntimeError::StaleRead { .. } => true,
            // I/O may pass (a full disk gets space); sled's corruption, unsupported
            // operations and reported bugs stay what they are.
            RuntimeError::Storage(e) => matches!(e, sled::Error::Io(_)),
            RuntimeError::Corrupt { .. }
            | RuntimeError::Encode { .. }
            | RuntimeError::UnexpectedReply { .. }
            | RuntimeError::DataDir { .. }
            | RuntimeError::Restore(_) => false,
            RuntimeError::Group(e) => e.is_transient(),
        }
    }

    /// Whether this is the service's own disk failing (I/O, or the store waiting to be
    /// reopened after such a failure): a fault of the service, not of the message, so
    /// the consumer stops taking messages until the store has recovered.
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self,
            RuntimeError::Storage(sled::Error::Io(_)) | RuntimeError::StorageFaulted(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_json() -> serde_json::Error {
        match serde_json::from_str::<u8>("not json") {
            Err(e) => e,
            Ok(_) => panic!("`not json` parsed"),
        }
    }

    #[test]
    fn broker_and_network_faults_are_transient() {
        let faults = [
            RuntimeError::js("getting stream ORDERS")(std::io::Error::other("timed out")),
            RuntimeError::publish("events.orders.placed.o-1", std::io::Error::other("no ack")),
            RuntimeError::NoReplyWithin {
                subject: "checkout.orders.get".to_owned(),
                within: Duration::from_secs(5),
            },
            RuntimeError::Service {
                what: "registration of checkout".to_owned(),
                source: Box::new(std::io::Error::other("disconnected")),
            },
        ];
        for fault in faults {
            assert!(fault.is_transient(), "{fault:?}");
        }
    }

    #[test]
    fn disk_io_is_transient_but_sled_damage_and_bugs_are_not() {
        let io = RuntimeError::from(sled::Error::Io(std::io::Error::other("disk full")));
        assert!(io.is_transient());
        let bug = RuntimeError::from(sled::Error::ReportableBug("oops".to_owned()));
        assert!(!bug.is_transient());
        let unsupported = RuntimeError::from(sled::Error::Unsupported("no".to_owned()));
        assert!(!unsupported.is_transient());
        let faulted = RuntimeError::StorageFaulted("No space left on device".to_owned());
        assert!(faulted.is_transient() && faulted.is_storage_fault() && io.is_storage_fault());
        assert!(!bug.is_storage_fault());
    }

    #[test]
    fn corrupt_records_unencodable_values_and_non_json_replies_are_permanent() {
        let faults = [
            RuntimeError::Corrupt {
                record: "order-1".to_owned(),
                source: Box::new(not_json()),
            },
            RuntimeError::Encode {
                what: "a record".to_owned(),
                source: not_json(),
            },
            RuntimeError::UnexpectedReply {
                subject: "checkout.orders.get".to_owned(),
                source: not_json(),
            },
            RuntimeError::DataDir {
                path: PathBuf::from("/nowhere"),
                source: std::io::Error::other("read-only"),
            },
        ];
        for fault in faults {
            assert!(!fault.is_transient(), "{fault:?}");
        }
    }

    #[test]
    fn every_error_keeps_its_source() {
        use std::error::Error as _;
        let wrapped = RuntimeError::js("declaring stream ORDERS")(std::io::Error::other("gone"));
        let source = wrapped.source();
        assert!(source.is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()));
        let encode = RuntimeError::Encode {
            what: "a record".to_owned(),
            source: not_json(),
        };
        assert!(encode
            .source()
            .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));
    }
}
