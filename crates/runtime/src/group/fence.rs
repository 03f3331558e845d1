//! A fence: the proof, checked locally and without a network round trip, that this
//! member still holds a partition's lease.
//!
//! The deadline is the local time the last successful renewal was *sent* plus the
//! lease TTL minus a safety margin. The server starts its TTL when it stores the
//! renewal, which is after we sent it, so the deadline falls before the server can
//! expire the lease and let another member create it, as long as the two clocks run
//! at nearly the same rate (the margin absorbs drift and the server's expiry timer).
//!
//! What a fence cannot close: work that passed `check()` and is then paused for
//! longer than the time left until the deadline still lands. Callers keep the gap
//! between `check()` and the write short (no I/O other than the write itself), and
//! downstream writes may carry [`Fence::epoch`] so a store can refuse older epochs.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::{Duration, Instant};

use super::error::FenceError;

/// A handle on one held lease; clones share the same state.
#[derive(Clone)]
pub struct Fence(Arc<State>);

struct State {
    partition: u32,
    epoch: u64,
    revision: AtomicU64,
    /// Deadlines are stored as an offset from `base` so they fit an atomic.
    base: Instant,
    deadline_nanos: AtomicU64,
    revoked: AtomicBool,
}

impl Fence {
    pub(crate) fn new(partition: u32, epoch: u64, revision: u64, deadline: Instant) -> Fence {
        let base = Instant::now();
        Fence(Arc::new(State {
            partition,
            epoch,
            revision: AtomicU64::new(revision),
            base,
            deadline_nanos: AtomicU64::new(nanos_after(base, deadline)),
            revoked: AtomicBool::new(false),
        }))
    }

    /// The partition this fence guards.
    pub fn partition(&self) -> u32 {
        self.0.partition
    }

    /// The KV revision at which this member acquired the lease: it grows with every new
    /// owner, so a store may refuse a write stamped with an older epoch.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// The revision of the last successful renewal.
    pub fn revision(&self) -> u64 {
        self.0.revision.load(Ordering::Acquire)
    }

    /// When the fence stops passing unless a renewal succeeds first.
    pub fn deadline(&self) -> Instant {
        self.0.base + Duration::from_nanos(self.0.deadline_nanos.load(Ordering::Acquire))
    }

    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    /// Call right before committing or publishing for this partition.
    pub fn check(&self) -> Result<(), FenceError> {
        let (partition, epoch) = (self.0.partition, self.0.epoch);
        if self.0.revoked.load(Ordering::Acquire) {
            return Err(FenceError::Revoked { partition, epoch });
        }
        if Instant::now() >= self.deadline() {
            return Err(FenceError::Expired { partition, epoch });
        }
        Ok(())
    }

    /// A renewal succeeded.
    pub(crate) fn extend(&self, revision: u64, deadline: Instant) {
        self.0.revision.store(revision, Ordering::Release);
        self.0
            .deadline_nanos
            .store(nanos_after(self.0.base, deadline), Ordering::Release);
    }

    /// The renewal revision moved without a new deadline (our own write, seen on the
    /// watch before its acknowledgement).
    pub(crate) fn observe_revision(&self, revision: u64) {
        self.0.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// The lease was released or lost: fail every later check at once.
    pub(crate) fn revoke(&self) {
        self.0.revoked.store(true, Ordering::Release);
    }
}

fn nanos_after(base: Instant, deadline: Instant) -> u64 {
    u64::try_from(deadline.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("partition", &self.0.partition)
            .field("epoch", &self.0.epoch)
            .field("revision", &self.revision())
            .field("deadline", &self.deadline())
            .field("revoked", &self.0.revoked.load(Ordering::Acquire))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fence_passes_until_its_deadline_then_fails_without_io() {
        let fence = Fence::new(3, 10, 10, Instant::now() + Duration::from_secs(8));
        assert_eq!(fence.check(), Ok(()));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(
            fence.check(),
            Err(FenceError::Expired {
                partition: 3,
                epoch: 10
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_moves_the_deadline_for_every_clone() {
        let fence = Fence::new(1, 5, 5, Instant::now() + Duration::from_secs(2));
        let held_by_consumer = fence.clone();
        tokio::time::advance(Duration::from_secs(1)).await;
        fence.extend(9, Instant::now() + Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(held_by_consumer.is_valid());
        assert_eq!(held_by_consumer.revision(), 9);
        assert_eq!(held_by_consumer.epoch(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_fence_fails_before_its_deadline() {
        let fence = Fence::new(2, 7, 7, Instant::now() + Duration::from_secs(60));
        fence.clone().revoke();
        assert_eq!(
            fence.check(),
            Err(FenceError::Revoked {
                partition: 2,
                epoch: 7
            })
        );
    }
}
