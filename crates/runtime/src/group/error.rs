//! What can go wrong while joining, running or leaving a group, and what a fence says
//! when its partition is no longer ours; each says whether retrying can help.

use thiserror::Error;

use crate::BoxError;

/// A group operation failed.
#[derive(Debug, Error)]
pub enum GroupError {
    /// The configuration cannot work (a name that is not a key token, a TTL the server
    /// cannot express, a renewal that could not keep a lease alive).
    #[error("group configuration is invalid: {reason}")]
    Config { reason: String },
    /// The group's bucket could not be opened or created.
    #[error("cannot open KV bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: BoxError,
    },
    /// The bucket exists but was created without per-message TTLs and delete markers,
    /// so leases would never expire; an operator must recreate it.
    #[error("KV bucket {bucket} does not allow per-message TTLs (create it with limit markers)")]
    BucketWithoutTtl { bucket: String },
    /// A read, write or watch on the bucket failed.
    #[error("KV {action} of {key} failed: {source}")]
    Kv {
        action: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    /// A record in the bucket does not decode: written by something else, or damaged.
    #[error("KV record {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: BoxError,
    },
    /// The group's task stopped abnormally (it panicked or was cancelled).
    #[error("the group task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl GroupError {
    pub(crate) fn kv(action: &'static str, key: &str, source: impl Into<BoxError>) -> GroupError {
        GroupError::Kv {
            action,
            key: key.to_owned(),
            source: source.into(),
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> GroupError {
        GroupError::Config {
            reason: reason.into(),
        }
    }

    /// Whether trying again can succeed: yes for the broker and the network, no for
    /// configuration, a bucket set up the wrong way, corrupt records and a dead task.
    pub fn is_transient(&self) -> bool {
        match self {
            GroupError::Bucket { .. } | GroupError::Kv { .. } => true,
            GroupError::Config { .. }
            | GroupError::BucketWithoutTtl { .. }
            | GroupError::Corrupt { .. }
            | GroupError::Task(_) => false,
        }
    }
}

/// A fence refused: this member may no longer act for the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FenceError {
    /// The local deadline passed without a renewal (a freeze, a slow broker, a
    /// partition from NATS): the lease may already belong to someone else.
    #[error("lease on partition {partition} (epoch {epoch}) expired locally")]
    Expired { partition: u32, epoch: u64 },
    /// The lease was handed over or found taken.
    #[error("lease on partition {partition} (epoch {epoch}) was given up or lost")]
    Revoked { partition: u32, epoch: u64 },
}

impl FenceError {
    /// Always `true`: the work is not wrong, it belongs to the partition's next owner,
    /// so the message should be released (nak) for redelivery rather than dropped.
    pub fn is_transient(&self) -> bool {
        true
    }

    pub fn partition(&self) -> u32 {
        match self {
            FenceError::Expired { partition, .. } | FenceError::Revoked { partition, .. } => {
                *partition
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_faults_are_transient_and_setup_faults_are_not() {
        assert!(
            GroupError::kv("renewal", "g.leases.3", std::io::Error::other("timeout"))
                .is_transient()
        );
        assert!(GroupError::Bucket {
            bucket: "groups".to_owned(),
            source: Box::new(std::io::Error::other("no JetStream")),
        }
        .is_transient());
        assert!(!GroupError::config("instance name has a dot").is_transient());
        assert!(!GroupError::BucketWithoutTtl {
            bucket: "groups".to_owned()
        }
        .is_transient());
    }

    #[test]
    fn a_kv_error_keeps_its_source() {
        use std::error::Error as _;
        let error = GroupError::kv("watch", "g.>", std::io::Error::other("gone"));
        assert!(error
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()));
    }

    #[test]
    fn a_refused_fence_names_its_partition_and_asks_for_redelivery() {
        let refused = FenceError::Expired {
            partition: 7,
            epoch: 12,
        };
        assert_eq!(refused.partition(), 7);
        assert!(refused.is_transient());
    }
}
