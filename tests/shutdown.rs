//! Graceful shutdown of the real processes (SIGTERM) while orders are in flight loses
//! nothing: every service exits 0, and after a restart every order settles with stock
//! and payments balanced.

mod common;

use shop_events::api::checkout::{OrderStatus, OrderView};
use shop_events::api::payment::PaymentStatus;
use shop_events::api::payment::GATEWAY_LEDGER;
use shop_events::CancelReason;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shop_harness::scenario::{
    order, payment, place, replenish, stock, wait_for_stock, wait_settled,
};
use shop_harness::shop::SimulatorConfig;
use shop_harness::{events_about, eventually, Service, ShopConfig};

use common::{call_ok, dead_letters, wait_idle, world, SETTLE};

const ORDERS: usize = 100;
const INITIAL_STOCK: i64 = 80;
const UNIT_PRICE: i64 = 125;

/// Process mode running `shop run --services <name>` from this very build.
///
/// The directory holds only a link to the `shop` binary cargo built for this test, so
/// the harness cannot pick up stale `checkout`/`inventory`/`payment` binaries that a
/// `cargo test -p shop` does not rebuild.
fn fresh_processes() -> anyhow::Result<(tempfile::TempDir, ShopConfig)> {
    let dir = tempfile::Builder::new().prefix("shop-bin-").tempdir()?;
    let shop = dir.path().join("shop");
    std::os::unix::fs::symlink(Path::new(env!("CARGO_BIN_EXE_shop")), &shop)?;
    // Slow card calls keep payments in flight when SIGTERM arrives.
    let config = ShopConfig::processes_next_to(&shop).gateway(SimulatorConfig {
        latency: Duration::from_millis(250),
        failure_rate: 0.0,
    });
    Ok((dir, config))
}

fn order_id(i: usize) -> String {
    format!("o-sd-{i:03}")
}

/// Every tenth order is paid with a card that is declined.
fn token(i: usize) -> &'static str {
    if i % 10 == 9 {
        "tok_chargeDeclinedInsufficientFunds"
    } else {
        "tok_visa"
    }
}

#[tokio::test]
async fn sigterm_with_orders_in_flight_loses_nothing() -> anyhow::Result<()> {
    let (_bin, config) = fresh_processes()?;
    let mut w = world(config).await?;
    replenish(&w.js, "sku-sd", INITIAL_STOCK as u32).await?;
    wait_for_stock(&w.client, "sku-sd", INITIAL_STOCK, 0, SETTLE).await?;

    // More orders than stock: some sell, some are short, some are declined.
    for i in 0..ORDERS {
        place(
            &w.js,
            order(&order_id(i), &[("sku-sd", 1, UNIT_PRICE)], token(i)),
        )
        .await?;
    }
    // Payment first, while its gateway calls are under way; stop_service fails unless
    // the process exits 0 after SIGTERM.
    for service in [Service::Payment, Service::Inventory, Service::Checkout] {
        w.shop
            .stop_service(service)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", w.shop.log_tail(service)))?;
    }
    let mut settled_before_restart = 0;
    for i in 0..ORDERS {
        let settled = events_about(&w.js, &order_id(i))
            .await?
            .iter()
            .any(|e| matches!(e.kind_name(), Some("OrderConfirmed" | "OrderCancelled")));
        settled_before_restart += usize::from(settled);
    }
    assert!(
        settled_before_restart < ORDERS,
        "the services were stopped with orders still in flight"
    );
    for service in Service::ALL {
        w.shop.start_service(service).await?;
    }

    let mut outcomes: BTreeMap<String, OrderView> = BTreeMap::new();
    for i in 0..ORDERS {
        let view = wait_settled(&w.client, &order_id(i), SETTLE).await?;
        outcomes.insert(order_id(i), view);
    }
    let confirmed: Vec<&String> = outcomes
        .iter()
        .filter(|(_, v)| v.status == OrderStatus::Confirmed)
        .map(|(id, _)| id)
        .collect();
    for i in 0..ORDERS {
        let view = &outcomes[&order_id(i)];
        let declined_card = token(i) != "tok_visa";
        match (view.status, view.reason) {
            (OrderStatus::Confirmed, _) => assert!(!declined_card, "{view:?}"),
            (OrderStatus::Cancelled, reason) if declined_card => assert!(
                matches!(
                    reason,
                    Some(CancelReason::PaymentDeclined | CancelReason::OutOfStock)
                ),
                "{view:?}"
            ),
            (OrderStatus::Cancelled, reason) => {
                assert_eq!(reason, Some(CancelReason::OutOfStock), "{view:?}")
            }
            _ => panic!("no order is rejected or left pending: {view:?}"),
        }
    }
    assert!(!confirmed.is_empty());
    assert!(confirmed.len() as i64 <= INITIAL_STOCK, "never oversold");

    // Stock: what was confirmed left the shelf, nothing else is held.
    wait_for_stock(
        &w.client,
        "sku-sd",
        INITIAL_STOCK - confirmed.len() as i64,
        0,
        SETTLE,
    )
    .await?;

    // Payments: each confirmed order captured exactly its total, every other order
    // nets to nothing once compensation is done.
    for (id, view) in &outcomes {
        let pay = eventually(SETTLE, &format!("{id}'s payment to settle"), || async {
            let p = payment(&w.client, id).await.ok()?;
            let net = p.as_ref().map(|p| p.captured - p.refunded).unwrap_or(0);
            let wanted = if view.status == OrderStatus::Confirmed {
                UNIT_PRICE
            } else {
                0
            };
            (net == wanted).then_some(p)
        })
        .await?;
        if view.status == OrderStatus::Confirmed {
            let pay = pay.expect("a confirmed order has a payment");
            assert_eq!(pay.status, PaymentStatus::Captured, "{id}: {pay:?}");
            assert_eq!(pay.refunded, 0, "{id}: {pay:?}");
        }
    }
    wait_idle(&w.client, &w.js).await?;
    let ledger = call_ok(&w.client, GATEWAY_LEDGER.subject, serde_json::json!({})).await?;
    let captured: Vec<&Value> = ledger
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["status"]["status"] == "captured")
        .collect();
    let captured_total: i64 = captured
        .iter()
        .map(|e| e["amount"].as_i64().unwrap_or(0) - e["refunded"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        captured_total,
        confirmed.len() as i64 * UNIT_PRICE,
        "the gateway's books match the confirmed orders: {ledger}"
    );
    for id in &confirmed {
        let entries = captured
            .iter()
            .filter(|e| e["order_id"] == id.as_str())
            .count();
        assert_eq!(entries, 1, "{id} captured exactly once");
    }
    assert_eq!(
        stock(&w.client, "sku-sd").await?,
        Some((
            INITIAL_STOCK - confirmed.len() as i64,
            0,
            INITIAL_STOCK - confirmed.len() as i64
        ))
    );
    assert!(dead_letters(&w.js).await?.is_empty(), "nothing was parked");
    w.shop.shutdown().await?;
    Ok(())
}
