//! The saga's flows end to end: a real nats-server, the three services in-process, real sled.

use shop_events::api::checkout::OrderStatus;
use shop_events::api::payment::PaymentStatus;
use shop_events::{CancelReason, ProblemCode};
use std::time::Duration;

use async_nats::jetstream;
use shop_harness::scenario::{
    order, payment, place, replenish, request_cancellation, stock, wait_for_status, wait_for_stock,
    wait_settled,
};
use shop_harness::{events_about, eventually, world, Service, ShopConfig};

const SETTLE: Duration = Duration::from_secs(20);

async fn kinds(js: &jetstream::Context, key: &str) -> anyhow::Result<Vec<String>> {
    Ok(events_about(js, key)
        .await?
        .iter()
        .filter_map(|e| e.kind_name().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn a_paid_order_with_stock_is_confirmed_and_its_stock_sold() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-a", 10).await?;
    wait_for_stock(&w.client, "sku-a", 10, 0, SETTLE).await?;
    place(&w.js, order("o-happy", &[("sku-a", 3, 1250)], "tok_visa")).await?;

    let view = wait_for_status(&w.client, "o-happy", OrderStatus::Confirmed, SETTLE).await?;
    assert_eq!(view.total, 3750);
    wait_for_stock(&w.client, "sku-a", 7, 0, SETTLE).await?;
    let pay = payment(&w.client, "o-happy")
        .await?
        .expect("payment record");
    assert_eq!(pay.status, PaymentStatus::Captured);
    assert_eq!(pay.captured, 3750);
    let trail = eventually(SETTLE, "StockCommitted", || async {
        let k = kinds(&w.js, "o-happy").await.ok()?;
        k.contains(&"StockCommitted".to_owned()).then_some(k)
    })
    .await?;
    for expected in [
        "OrderPlaced",
        "StockReserved",
        "PaymentCaptured",
        "OrderConfirmed",
        "StockCommitted",
    ] {
        assert!(
            trail.contains(&expected.to_owned()),
            "missing {expected} in {trail:?}"
        );
    }
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_order_without_enough_stock_is_cancelled_and_nothing_is_charged() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-b", 1).await?;
    wait_for_stock(&w.client, "sku-b", 1, 0, SETTLE).await?;
    place(
        &w.js,
        order(
            "o-short",
            &[("sku-b", 2, 100), ("sku-missing", 1, 100)],
            "tok_visa",
        ),
    )
    .await?;

    let view = wait_for_status(&w.client, "o-short", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::OutOfStock));
    let events = events_about(&w.js, "o-short").await?;
    let failed = events
        .iter()
        .find_map(|e| match &e.envelope()?.event {
            shop_events::Event::StockReservationFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("StockReservationFailed");
    assert_eq!(
        failed.shortages.len(),
        2,
        "every shortage is listed: {failed:?}"
    );
    assert_eq!(stock(&w.client, "sku-b").await?, Some((1, 0, 1)));
    let pay = payment(&w.client, "o-short").await?;
    assert!(
        pay.as_ref().is_none_or(|p| p.captured == 0),
        "nothing charged: {pay:?}"
    );
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_declined_card_cancels_the_order_and_releases_its_stock() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-c", 5).await?;
    wait_for_stock(&w.client, "sku-c", 5, 0, SETTLE).await?;
    place(
        &w.js,
        order(
            "o-declined",
            &[("sku-c", 2, 500)],
            "tok_chargeDeclinedInsufficientFunds",
        ),
    )
    .await?;

    let view = wait_for_status(&w.client, "o-declined", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::PaymentDeclined));
    wait_for_stock(&w.client, "sku-c", 5, 0, SETTLE).await?;
    let pay = payment(&w.client, "o-declined")
        .await?
        .expect("payment record");
    assert_eq!(pay.status, PaymentStatus::Declined);
    assert_eq!(pay.decline_reason.as_deref(), Some("insufficient_funds"));
    eventually(SETTLE, "StockReleased", || async {
        kinds(&w.js, "o-declined")
            .await
            .ok()?
            .contains(&"StockReleased".to_owned())
            .then_some(())
    })
    .await?;
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_order_past_its_deadline_is_cancelled_and_compensated() -> anyhow::Result<()> {
    const DEADLINE: Duration = Duration::from_secs(30);
    // Checkout's time stands still until the test moves it past the deadline.
    let clock = shop_harness::shop::ManualClock::default();
    let mut w = world(
        ShopConfig::in_process()
            .order_deadline(DEADLINE)
            .manual_clock(&clock),
    )
    .await?;
    // Payment is down, so the order cannot settle before its deadline.
    w.shop.stop_service(Service::Payment).await?;
    replenish(&w.js, "sku-d", 4).await?;
    wait_for_stock(&w.client, "sku-d", 4, 0, SETTLE).await?;
    place(&w.js, order("o-late", &[("sku-d", 1, 900)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-late", OrderStatus::Pending, SETTLE).await?;

    clock.advance(DEADLINE);
    let view = wait_for_status(&w.client, "o-late", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::Timeout));
    wait_for_stock(&w.client, "sku-d", 4, 0, SETTLE).await?;
    // Payment comes back and sees StockReserved and OrderCancelled: it must never charge.
    w.shop.start_service(Service::Payment).await?;
    let pay = eventually(SETTLE, "payment to know the order", || async {
        payment(&w.client, "o-late").await.ok()?
    })
    .await?;
    assert_eq!(pay.captured, 0, "{pay:?}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_confirmed_order_cancelled_by_the_customer_is_refunded_and_restocked(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-e", 3).await?;
    wait_for_stock(&w.client, "sku-e", 3, 0, SETTLE).await?;
    place(
        &w.js,
        order("o-regret", &[("sku-e", 2, 700)], "tok_mastercard"),
    )
    .await?;
    wait_for_status(&w.client, "o-regret", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-e", 1, 0, SETTLE).await?;

    request_cancellation(&w.js, "o-regret").await?;
    let view = wait_for_status(&w.client, "o-regret", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::CustomerRequest));
    wait_for_stock(&w.client, "sku-e", 3, 0, SETTLE).await?;
    let pay = eventually(SETTLE, "refund", || async {
        let p = payment(&w.client, "o-regret").await.ok()??;
        (p.status == PaymentStatus::Refunded).then_some(p)
    })
    .await?;
    assert_eq!(pay.refunded, 1400);
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_invalid_order_is_rejected_with_every_problem_and_nothing_reserved() -> anyhow::Result<()>
{
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-f", 5).await?;
    wait_for_stock(&w.client, "sku-f", 5, 0, SETTLE).await?;
    let mut bad = order("o-bad", &[("sku-f", 0, 100), ("sku-f", 1, -5)], "");
    bad.total = 7;
    place(&w.js, bad).await?;

    let view = wait_settled(&w.client, "o-bad", SETTLE).await?;
    assert_eq!(view.status, OrderStatus::Rejected);
    let codes: Vec<ProblemCode> = view.problems.iter().map(|p| p.code).collect();
    for code in [
        ProblemCode::QuantityOutOfRange,
        ProblemCode::NegativeUnitPrice,
        ProblemCode::DuplicateSku,
        ProblemCode::TotalMismatch,
        ProblemCode::MissingPaymentToken,
    ] {
        assert!(codes.contains(&code), "{code:?} missing from {codes:?}");
    }
    assert_eq!(stock(&w.client, "sku-f").await?, Some((5, 0, 5)));
    w.shop.shutdown().await?;
    Ok(())
}
