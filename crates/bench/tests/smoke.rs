//! The baseline phase end to end on a real nats-server, short enough for every CI run.
//! It checks that the bench works and reports sane numbers, never how fast anything is.

use shop_events::subjects::{ORDERS_STREAM, PAYMENTS_STREAM};
use std::time::Duration;

use async_nats::jetstream;
use shop_bench::{run_baseline, LoadSpec};
use shop_harness::{connect, stream_message_count, NatsServer};

#[tokio::test]
async fn the_baseline_chain_confirms_orders_and_reports_sane_figures() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    let spec = LoadSpec::new(4, Duration::from_millis(300), Duration::from_millis(1200));

    let run = run_baseline(&js, &spec).await?;

    assert!(run.orders > 0, "no order confirmed: {run:?}");
    assert!(run.orders_per_sec > 0.0);
    assert_eq!(run.failed, 0, "every order of the chain completes");
    let l = run.latency;
    assert_eq!(l.count as u64, run.orders);
    assert!(l.p50_ms > 0.0, "latencies are measured: {l:?}");
    assert!(l.p50_ms <= l.p95_ms && l.p95_ms <= l.p99_ms && l.p99_ms <= l.max_ms);
    assert!(run.cpu_s_per_1k.contains_key("bench"));
    // The chain stores the happy path's five events per order: placed and confirmed in
    // ORDERS, reserved and committed in INVENTORY, captured in PAYMENTS.
    let completed = run.completed_total;
    assert!(stream_message_count(&js, PAYMENTS_STREAM).await? >= completed);
    assert!(stream_message_count(&js, ORDERS_STREAM).await? >= 2 * completed);
    Ok(())
}
