//! Partitioned ownership for a service that runs as several instances: keys hash into
//! a fixed number of partitions, and each partition has exactly one owner at a time,
//! fenced by a lease in a NATS KV bucket.
//!
//! Domain-free: the caller names the bucket, the group and the instance, and says which
//! partition a key is in (the contract's `partition_of`). The pieces: [`assign`] (the pure
//! balanced, sticky assignment), and [`Group`], the task that keeps a member's
//! heartbeat, watches members and leases, hands partitions over and takes them, and
//! publishes the [`Fence`]s the member may act under. See docs/architecture.md,
//! "Partitions and ownership (scale-out)", for the protocol and its bounds.

mod assign;
mod bucket;
mod coordinator;
mod error;
mod fence;
mod keys;
mod lease;
mod member;
mod view;

use std::time::Duration;

pub use assign::assign;
pub use coordinator::{Group, Handover, Handovers};
pub use error::{FenceError, GroupError};
pub use fence::Fence;
pub use view::{view, GroupView, LeaseView};

/// Partitions per group unless configured otherwise: enough to spread over a dozen
/// instances evenly, few enough that a rebalance is a handful of handovers.
pub const DEFAULT_PARTITIONS: u32 = 32;

/// How long a lease lives without renewal unless configured otherwise; with the bound
/// in the design notes, what a SIGKILLed instance's partitions wait.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How a member joins its group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The KV bucket holding the group's keys (created if absent; may hold other groups).
    pub bucket: String,
    /// The group, normally the service's name; a key token (no dots).
    pub group: String,
    /// This instance's name, unique in the group; a key token (no dots).
    pub instance: String,
    /// The partition count to record if the group has none yet; a recorded count wins.
    pub partitions: u32,
    /// How long a lease and a heartbeat live without renewal; whole seconds, at least 1
    /// (the server's per-message TTL is in seconds).
    pub lease_ttl: Duration,
    /// How often leases and the heartbeat are renewed.
    pub renew_every: Duration,
    /// How much earlier than the server's expiry a fence stops passing.
    pub safety_margin: Duration,
    /// Tells this run's leases from another run's under the same instance name. `None`
    /// (random) makes a restarted instance wait for its previous run's leases to expire;
    /// a value derived from the instance's own database lets it adopt them at once,
    /// which is safe because two processes cannot open one database.
    pub incarnation: Option<u64>,
    /// Copies of the bucket when this member creates it (3 on a three-node cluster).
    pub replicas: usize,
}

impl GroupConfig {
    /// The defaults: [`DEFAULT_PARTITIONS`], [`DEFAULT_LEASE_TTL`], renewal every third
    /// of the TTL, a margin of a fifth.
    pub fn new(
        bucket: impl Into<String>,
        group: impl Into<String>,
        instance: impl Into<String>,
    ) -> GroupConfig {
        GroupConfig {
            bucket: bucket.into(),
            group: group.into(),
            instance: instance.into(),
            partitions: DEFAULT_PARTITIONS,
            lease_ttl: DEFAULT_LEASE_TTL,
            renew_every: DEFAULT_LEASE_TTL / 3,
            safety_margin: DEFAULT_LEASE_TTL / 5,
            incarnation: None,
            replicas: 1,
        }
    }

    /// Creates the bucket (if this member is the first) with `replicas` copies.
    pub fn replicas(mut self, replicas: usize) -> GroupConfig {
        self.replicas = replicas.max(1);
        self
    }

    /// Identifies this run by `incarnation` (see [`GroupConfig::incarnation`]).
    pub fn incarnation(mut self, incarnation: u64) -> GroupConfig {
        self.incarnation = Some(incarnation);
        self
    }

    pub fn partitions(mut self, partitions: u32) -> GroupConfig {
        self.partitions = partitions;
        self
    }

    /// Sets the TTL, and the renewal interval and margin in proportion to it.
    pub fn lease_ttl(mut self, ttl: Duration) -> GroupConfig {
        self.lease_ttl = ttl;
        self.renew_every = ttl / 3;
        self.safety_margin = ttl / 5;
        self
    }

    /// Refuses what cannot work, so it fails at start rather than as lost leases.
    pub(crate) fn validate(&self) -> Result<(), GroupError> {
        for (what, name) in [("group", &self.group), ("instance", &self.instance)] {
            if !keys::is_token(name) {
                return Err(GroupError::config(format!(
                    "{what} name {name:?} must be letters, digits, '-', '_' or '='"
                )));
            }
        }
        if self.partitions == 0 {
            return Err(GroupError::config("a group needs at least one partition"));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(GroupError::config(format!(
                "lease TTL {:?} must be whole seconds, at least 1",
                self.lease_ttl
            )));
        }
        // A renewal sent on time must land before the fence it extends runs out.
        if self.renew_every.is_zero() || self.renew_every + self.safety_margin >= self.lease_ttl {
            return Err(GroupError::config(format!(
                "renewing every {:?} with a margin of {:?} cannot keep a {:?} lease",
                self.renew_every, self.safety_margin, self.lease_ttl
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let config = GroupConfig::new("groups", "checkout", "checkout-1");
        assert_eq!(config.partitions, 32);
        assert_eq!(config.lease_ttl, Duration::from_secs(10));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn names_that_are_not_key_tokens_are_refused() {
        let config = GroupConfig::new("groups", "checkout", "host.1");
        assert!(matches!(config.validate(), Err(GroupError::Config { .. })));
    }

    #[test]
    fn a_ttl_the_server_cannot_express_is_refused() {
        let config =
            GroupConfig::new("groups", "checkout", "c1").lease_ttl(Duration::from_millis(1500));
        assert!(matches!(config.validate(), Err(GroupError::Config { .. })));
    }

    #[test]
    fn a_renewal_slower_than_the_lease_is_refused() {
        let mut config = GroupConfig::new("groups", "checkout", "c1");
        config.renew_every = Duration::from_secs(9);
        assert!(matches!(config.validate(), Err(GroupError::Config { .. })));
    }
}
