//! `shop audit`: clean books on a healthy run, and typed violations on forged ones.

mod common;

use shop_events::api::checkout::OrderStatus;
use std::time::Duration;

use common::{wait_outboxes_empty, wait_saga_settled, world, World, SETTLE};
use shop_events::{
    Currency, Envelope, Event, Money, OrderId, PaymentCaptured, PaymentId, Sku, StockCommitted,
    StockLine,
};
use shop_harness::scenario::{
    order, place, replenish, request_cancellation, wait_for_status, wait_for_stock, wait_settled,
};
use shop_harness::{publish_event, ShopConfig};
use shop_ops::{audit, AuditOptions, AuditReport, Rule};

/// The books are checked right away: the tests wait for the shop to be quiet first.
fn options() -> AuditOptions {
    AuditOptions {
        order_deadline: Duration::from_secs(30),
        grace: Duration::ZERO,
    }
}

async fn run_audit(w: &World) -> anyhow::Result<(AuditReport, String)> {
    let mut out = Vec::new();
    let report = audit(&w.client, options(), &mut out).await?;
    Ok((report, String::from_utf8(out)?))
}

/// One order of each kind, every saga settled and every outbox drained.
async fn healthy_shop() -> anyhow::Result<World> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-a", 10).await?;
    replenish(&w.js, "sku-b", 1).await?;
    wait_for_stock(&w.client, "sku-a", 10, 0, SETTLE).await?;
    wait_for_stock(&w.client, "sku-b", 1, 0, SETTLE).await?;
    place(&w.js, order("o-paid", &[("sku-a", 2, 1250)], "tok_visa")).await?;
    place(
        &w.js,
        order("o-declined", &[("sku-a", 1, 500)], "tok_chargeDeclined"),
    )
    .await?;
    place(&w.js, order("o-short", &[("sku-b", 2, 100)], "tok_visa")).await?;
    place(
        &w.js,
        order("o-regret", &[("sku-a", 3, 700)], "tok_mastercard"),
    )
    .await?;
    let mut bad = order("o-bad", &[("sku-a", 0, 100)], "");
    bad.total = 7;
    place(&w.js, bad).await?;
    wait_for_status(&w.client, "o-regret", OrderStatus::Confirmed, SETTLE).await?;
    request_cancellation(&w.js, "o-regret").await?;
    wait_for_status(&w.client, "o-regret", OrderStatus::Cancelled, SETTLE).await?;
    for id in ["o-paid", "o-declined", "o-short", "o-regret", "o-bad"] {
        wait_settled(&w.client, id, SETTLE).await?;
        wait_saga_settled(&w.client, id).await?;
    }
    wait_outboxes_empty(&w.client).await?;
    Ok(w)
}

fn rules(report: &AuditReport) -> Vec<Rule> {
    report.violations.iter().map(|v| v.rule).collect()
}

#[tokio::test]
async fn the_audit_of_a_healthy_shop_is_clean() -> anyhow::Result<()> {
    let w = healthy_shop().await?;
    let (report, text) = run_audit(&w).await?;
    assert!(report.is_clean(), "{text}");
    let c = &report.counts;
    assert_eq!(
        (
            c.orders,
            c.confirmed,
            c.cancelled,
            c.rejected,
            c.in_flight,
            c.unsettled
        ),
        (5, 1, 3, 1, 0, 0),
        "{text}"
    );
    assert_eq!(c.skus_checked, 2, "{text}");
    assert_eq!(c.ledger_entries, 3, "paid, declined, regret: {text}");
    assert!(text.contains("clean"), "{text}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_forged_second_capture_under_another_payment_id_is_a_double_capture() -> anyhow::Result<()>
{
    let w = healthy_shop().await?;
    // From payment's own source: a bug in payment, or its leaked key. A forgery from any
    // other source is dead-lettered by the services and never reaches the books.
    let forged = Envelope::new(
        shop_events::api::service::PAYMENT,
        Event::PaymentCaptured(PaymentCaptured {
            order_id: OrderId::parse("o-paid")?,
            payment_id: PaymentId::parse("pay_forged")?,
            amount: Money(2500),
            currency: Currency::parse("EUR")?,
        }),
    );
    publish_event(&w.js, &forged).await?;

    let (report, text) = run_audit(&w).await?;
    assert!(!report.is_clean());
    let double: Vec<_> = report.violations_of(Rule::DoubleCapture).collect();
    assert_eq!(double.len(), 1, "{text}");
    assert_eq!(double[0].subject, "o-paid");
    let found = rules(&report);
    for rule in [Rule::ConfirmedNotCapturedOnce, Rule::CaptureNotInLedger] {
        assert!(found.contains(&rule), "{rule:?} missing: {text}");
    }
    assert!(!found.contains(&Rule::OnHandMismatch), "{text}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_forged_sale_of_a_cancelled_order_breaks_the_stock_books() -> anyhow::Result<()> {
    let w = healthy_shop().await?;
    let forged = Envelope::new(
        shop_events::api::service::INVENTORY,
        Event::StockCommitted(StockCommitted {
            order_id: OrderId::parse("o-declined")?,
            lines: vec![StockLine {
                sku: Sku::parse("sku-a")?,
                quantity: 1,
            }],
        }),
    );
    publish_event(&w.js, &forged).await?;

    let (report, text) = run_audit(&w).await?;
    let on_hand: Vec<_> = report.violations_of(Rule::OnHandMismatch).collect();
    assert_eq!(on_hand.len(), 1, "{text}");
    assert_eq!(on_hand[0].subject, "sku-a");
    let stock: Vec<_> = report
        .violations_of(Rule::CancelledStockNotReturned)
        .collect();
    assert_eq!(stock.len(), 1, "{text}");
    assert_eq!(stock[0].subject, "o-declined");
    assert!(!rules(&report).contains(&Rule::DoubleCapture), "{text}");
    w.shop.shutdown().await?;
    Ok(())
}
