//! `shop trace`: one order's saga read back from a real shop, settled, cancelled and stuck.

mod common;

use shop_events::api::checkout::OrderStatus;
use std::time::Duration;

use common::{wait_saga_settled, world, SETTLE};
use shop_events::CancelReason;
use shop_harness::scenario::{order, place, replenish, wait_for_status, wait_for_stock};
use shop_harness::{eventually, Service, ShopConfig};
use shop_ops::{trace, trace_with, OpsError, Outcome, Trace, TraceStatus};

fn kinds(trace: &Trace) -> Vec<&str> {
    trace.events.iter().map(|e| e.event_type.as_str()).collect()
}

/// Every cause named by an event is in the trace, earlier than the event itself.
fn assert_causal_order(trace: &Trace) {
    for (i, event) in trace.events.iter().enumerate() {
        let Some(cause) = &event.causation_id else {
            continue;
        };
        let position = trace
            .events
            .iter()
            .position(|e| e.id.as_ref() == Some(cause))
            .unwrap_or_else(|| panic!("cause {cause} of {} is not in the trace", event.event_type));
        assert!(position < i, "{} comes before its cause", event.event_type);
        assert_eq!(
            event.cause_type.as_deref(),
            Some(trace.events[position].event_type.as_str())
        );
    }
}

#[tokio::test]
async fn a_confirmed_order_is_traced_settled_with_its_events_in_causal_order() -> anyhow::Result<()>
{
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-a", 10).await?;
    wait_for_stock(&w.client, "sku-a", 10, 0, SETTLE).await?;
    place(&w.js, order("o-happy", &[("sku-a", 3, 1250)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-happy", OrderStatus::Confirmed, SETTLE).await?;
    wait_saga_settled(&w.client, "o-happy").await?;

    let mut out = Vec::new();
    let trace = trace(&w.client, "o-happy", &mut out, false).await?;
    assert_eq!(
        trace.status,
        TraceStatus::Settled {
            outcome: Outcome::Confirmed
        }
    );
    assert_eq!(trace.expected_next, None);
    assert_eq!(
        kinds(&trace),
        [
            "OrderPlaced",
            "StockReserved",
            "PaymentCaptured",
            "OrderConfirmed",
            "StockCommitted"
        ]
    );
    assert_causal_order(&trace);
    assert!(trace.events.iter().all(|e| !e.duplicate));
    assert!(trace
        .events
        .windows(2)
        .all(|w| w[0].offset_ms <= w[1].offset_ms));
    assert_eq!(
        trace.checkout.as_ref().map(|c| c.status),
        Some(shop_events::api::checkout::OrderStatus::Confirmed)
    );
    let text = String::from_utf8(out)?;
    assert!(text.contains("└─"), "a timeline is drawn:\n{text}");
    assert!(text.contains("captured 3750 EUR"), "{text}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_declined_order_is_traced_cancelled_with_its_stock_released() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-c", 5).await?;
    wait_for_stock(&w.client, "sku-c", 5, 0, SETTLE).await?;
    place(
        &w.js,
        order("o-declined", &[("sku-c", 2, 500)], "tok_chargeDeclined"),
    )
    .await?;
    wait_for_status(&w.client, "o-declined", OrderStatus::Cancelled, SETTLE).await?;
    wait_saga_settled(&w.client, "o-declined").await?;

    let trace = trace(&w.client, "o-declined", &mut Vec::new(), true).await?;
    assert_eq!(
        trace.status,
        TraceStatus::Settled {
            outcome: Outcome::Cancelled {
                reason: CancelReason::PaymentDeclined
            }
        }
    );
    let kinds = kinds(&trace);
    for expected in ["PaymentDeclined", "OrderCancelled", "StockReleased"] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert!(!kinds.contains(&"PaymentCaptured"));
    assert_causal_order(&trace);
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_order_whose_payment_service_is_down_is_traced_stuck_waiting_for_payment(
) -> anyhow::Result<()> {
    let mut w = world(ShopConfig::in_process()).await?;
    w.shop.stop_service(Service::Payment).await?;
    replenish(&w.js, "sku-d", 4).await?;
    wait_for_stock(&w.client, "sku-d", 4, 0, SETTLE).await?;
    place(&w.js, order("o-stuck", &[("sku-d", 1, 900)], "tok_visa")).await?;

    let stuck_after = Duration::from_millis(300);
    let (trace, out) = eventually(SETTLE, "the trace to call the saga stuck", || async {
        let mut out = Vec::new();
        let trace = trace_with(&w.client, "o-stuck", stuck_after, &mut out, false)
            .await
            .ok()?;
        matches!(trace.status, TraceStatus::Stuck { .. }).then_some((trace, out))
    })
    .await?;
    match &trace.status {
        TraceStatus::Stuck {
            waiting_for,
            since_ms,
            answers_ping,
            ..
        } => {
            assert_eq!(waiting_for, "payment");
            assert!(*since_ms >= 300, "{since_ms}");
            assert!(
                !answers_ping,
                "payment is stopped, so it cannot answer PING"
            );
        }
        other => panic!("expected stuck, got {other:?}"),
    }
    assert_eq!(trace.expected_next.as_deref(), Some("payment"));
    assert_eq!(kinds(&trace).last(), Some(&"StockReserved"));
    let text = String::from_utf8(out)?;
    assert!(
        text.contains("STUCK: payment has not reacted to StockReserved"),
        "{text}"
    );
    assert!(text.contains("payment is not answering PING"), "{text}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn tracing_an_order_nobody_knows_is_an_unknown_order_error() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let result = trace(&w.client, "o-nobody", &mut Vec::new(), false).await;
    assert!(
        matches!(result, Err(OpsError::UnknownOrder { .. })),
        "{result:?}"
    );
    w.shop.shutdown().await?;
    Ok(())
}
