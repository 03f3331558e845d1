//! Start-up steps that wait out a broker not ready yet, written once: a fresh or
//! restarting cluster answers "no responders" or "no suitable peers for placement" for
//! a few seconds, and a service that exited on the first such answer made a cluster
//! test fail (the group bucket first, later the changelog bucket).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How long a start-up step waits out transient broker faults (a bucket just created on
/// a cluster answers "no responders" until its stream has a leader; an R3 create fails
/// while a peer is offline) before it gives up.
pub(crate) const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `step` until it succeeds, retrying the faults `is_transient` accepts with
/// backoff for [`STARTUP_PATIENCE`] and saying what it waits for; any other fault, or one
/// past the patience, is returned.
pub(crate) async fn patiently<T, E, F, Fut>(
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut step: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let give_up = tokio::time::Instant::now() + STARTUP_PATIENCE;
    let mut pause = Duration::from_millis(200);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if is_transient(&e) && tokio::time::Instant::now() + pause < give_up => {
                tracing::warn!(error = %e, "starting: waiting for {what}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Fault {
        Transient,
        Permanent,
    }

    impl Display for Fault {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn transient(fault: &Fault) -> bool {
        *fault == Fault::Transient
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_refused_for_a_while_is_tried_until_it_succeeds() {
        let mut calls = 0;
        let answer = patiently("a bucket", transient, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 5 {
                    Err(Fault::Transient)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer, Ok(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_fault_is_returned_at_once() {
        let mut calls = 0;
        let answer: Result<(), Fault> = patiently("a bucket", transient, || {
            calls += 1;
            async { Err(Fault::Permanent) }
        })
        .await;
        assert_eq!(answer, Err(Fault::Permanent));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_fault_past_the_patience_is_returned() {
        let started = tokio::time::Instant::now();
        let answer: Result<(), Fault> =
            patiently("a bucket", transient, || async { Err(Fault::Transient) }).await;
        assert_eq!(answer, Err(Fault::Transient));
        assert!(started.elapsed() <= STARTUP_PATIENCE);
        assert!(started.elapsed() >= STARTUP_PATIENCE - Duration::from_secs(2));
    }
}
