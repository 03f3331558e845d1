//! The clock checkout reads "now" from: the system's in production, a manual one in
//! tests, so a test can move past an order's deadline instead of waiting for it.
//!
//! Only the shell reads it; the pure domain gets the time through its `Ctx`.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where the current time comes from, in milliseconds since the Unix epoch.
pub trait Clock: Debug + Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        shop_shell::now_ms()
    }
}

/// The clock a service uses unless told otherwise.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that stands still until it is advanced; clones share the same time.
///
/// It starts at the wall-clock time of its creation, so timestamps in records and
/// replies still look like real dates.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::at(shop_shell::now_ms())
    }
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn at(now_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(AtomicI64::new(now_ms)),
        }
    }

    /// Moves the time forward by `by` (saturating at the end of time).
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_advanced_and_clones_share_it() {
        let clock = ManualClock::at(1_000);
        let shared = clock.clone();
        assert_eq!(shared.now_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(shared.now_ms(), 1_250);
        clock.advance(Duration::MAX);
        assert_eq!(shared.now_ms(), i64::MAX, "saturates instead of wrapping");
    }
}
