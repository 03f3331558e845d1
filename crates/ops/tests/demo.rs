//! `shop demo` against an in-process shop: every order settles and the numbers add up.

mod common;

use std::time::Duration;

use common::{wait_outboxes_empty, world};
use shop_harness::{eventually, ShopConfig};
use shop_ops::{audit, demo, AuditOptions, DemoOptions, Scenario};

#[tokio::test]
async fn a_small_demo_settles_every_order_and_its_counts_add_up() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let mut out = Vec::new();
    let opts = DemoOptions {
        orders: 20,
        concurrency: 8,
        settle_timeout: Duration::from_secs(30),
        progress: false,
    };
    let report = demo(&w.client, opts, &mut out).await?;
    let text = String::from_utf8(out)?;

    assert_eq!(report.orders, 20);
    assert_eq!(report.accounted(), 20, "{text}");
    assert_eq!((report.still_pending, report.errors), (0, 0), "{text}");
    let planned = |s: Scenario| report.planned.get(&s).copied().unwrap_or(0);
    let cancelled = |r: &str| report.cancelled.get(r).copied().unwrap_or(0);
    assert_eq!(report.confirmed, planned(Scenario::Paid), "{text}");
    assert_eq!(
        cancelled("payment_declined"),
        planned(Scenario::Declined),
        "{text}"
    );
    assert_eq!(
        cancelled("out_of_stock"),
        planned(Scenario::OutOfStock),
        "{text}"
    );
    assert_eq!(
        cancelled("customer_request"),
        planned(Scenario::CancelPending) + planned(Scenario::CancelConfirmed),
        "{text}"
    );
    assert_eq!(report.rejected_at_api, planned(Scenario::Invalid), "{text}");
    assert_eq!(report.latency.samples, 20 - report.rejected_at_api);
    assert!(report.latency.p50_ms <= report.latency.p99_ms);
    assert!(report.latency.p99_ms <= report.latency.max_ms);
    assert!(text.contains("confirmed"), "{text}");

    // What the demo leaves behind balances once the compensations have landed.
    wait_outboxes_empty(&w.client).await?;
    let opts = AuditOptions {
        order_deadline: Duration::from_secs(30),
        grace: Duration::ZERO,
    };
    eventually(
        Duration::from_secs(20),
        "the demo's books to balance",
        || async {
            let report = audit(&w.client, opts, &mut Vec::new()).await.ok()?;
            report.is_clean().then_some(())
        },
    )
    .await?;
    w.shop.shutdown().await?;
    Ok(())
}
