//! Waiting without sleeping blindly: poll a condition with a growing backoff until a deadline.
//!
//! The shop is asynchronous end to end, so a scenario cannot know when an
//! effect lands; it asks repeatedly instead, and a deadline turns "never" into
//! a readable [`HarnessError::Timeout`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::HarnessError;

/// First pause between probes: short, so fast outcomes are seen quickly.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause: keeps slow waits from hammering the server or the two shared cores.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Calls `probe` until it returns `Some`, or fails with [`HarnessError::Timeout`] after `deadline`.
///
/// The probe is always called at least once, and once more at the deadline, so a
/// condition that becomes true during the last pause is not reported as a timeout.
/// `what` completes the sentence "timed out waiting for …".
pub async fn eventually<F, Fut, T>(
    deadline: Duration,
    what: &str,
    mut probe: F,
) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up_at = Instant::now() + deadline;
    let mut backoff = Backoff::new();
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= give_up_at {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                after: deadline,
            });
        }
        // Never sleep past the deadline: the last probe happens right at it.
        tokio::time::sleep(backoff.next_pause().min(give_up_at - now)).await;
    }
}

/// Pauses that grow from 20 ms to 200 ms, shared by every polling loop in the harness.
#[derive(Debug)]
pub(crate) struct Backoff {
    pause: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { pause: FIRST_PAUSE }
    }

    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 3 / 2).min(MAX_PAUSE);
        pause
    }

    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}
