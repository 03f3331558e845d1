//! `eventually` polls until its probe answers, and turns "never" into a typed timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shop_harness::{eventually, HarnessError};

#[tokio::test]
async fn eventually_times_out_with_a_timeout_error_naming_what_it_waited_for() {
    let probes = AtomicU32::new(0);
    let result: Result<(), HarnessError> = eventually(
        Duration::from_millis(150),
        "a condition that never holds",
        || {
            probes.fetch_add(1, Ordering::SeqCst);
            async { None }
        },
    )
    .await;

    match result {
        Err(HarnessError::Timeout { what, after }) => {
            assert_eq!(what, "a condition that never holds");
            assert_eq!(after, Duration::from_millis(150));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        probes.load(Ordering::SeqCst) >= 2,
        "the probe is retried before giving up"
    );
}

#[tokio::test]
async fn eventually_returns_the_value_once_the_probe_finds_it() -> anyhow::Result<()> {
    let probes = AtomicU32::new(0);
    let found = eventually(Duration::from_secs(5), "the third probe", || {
        let n = probes.fetch_add(1, Ordering::SeqCst) + 1;
        async move { (n >= 3).then_some(n) }
    })
    .await?;

    assert_eq!(found, 3);
    Ok(())
}

#[tokio::test]
async fn eventually_probes_at_least_once_even_with_a_zero_deadline() -> anyhow::Result<()> {
    let value = eventually(Duration::ZERO, "an immediate answer", || async { Some(7) }).await?;
    assert_eq!(value, 7);
    Ok(())
}
