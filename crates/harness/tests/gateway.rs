//! The payment gateway simulator as the harness runs it: started before payment,
//! restarted on the same address with the same books while orders wait for it.

use std::time::Duration;

use shop_events::api::checkout::OrderStatus;
use shop_events::api::payment::{LedgerEntry, LedgerStatus, GATEWAY_LEDGER};
use shop_harness::scenario::{order, place, replenish, request_as, wait_for_status};
use shop_harness::{world, ShopConfig};

const SETTLE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn orders_wait_out_a_gateway_restart_and_its_books_survive_it() -> anyhow::Result<()> {
    let mut w = world(ShopConfig::in_process()).await?;
    let url = w.shop.gateway_url().expect("payment's gateway was started");
    replenish(&w.js, "sku-gw", 10).await?;
    place(&w.js, order("o-gw-1", &[("sku-gw", 1, 250)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-gw-1", OrderStatus::Confirmed, SETTLE).await?;

    // Orders placed while the gateway is down are charged once it is back.
    w.shop.kill_gateway().await?;
    assert!(!w.shop.is_gateway_running());
    place(&w.js, order("o-gw-2", &[("sku-gw", 1, 300)], "tok_visa")).await?;
    w.shop.restart_gateway().await?;
    assert_eq!(w.shop.gateway_url().as_deref(), Some(url.as_str()));
    wait_for_status(&w.client, "o-gw-2", OrderStatus::Confirmed, SETTLE).await?;

    let books: Vec<LedgerEntry> = request_as(&w.client, GATEWAY_LEDGER.subject, &()).await?;
    assert_eq!(books.len(), 2, "{books:?}");
    for entry in &books {
        assert!(
            matches!(entry.status, LedgerStatus::Captured { .. }),
            "{entry:?}"
        );
        assert_eq!(entry.charge_calls, 1, "{entry:?}");
    }
    w.shop.shutdown().await?;
    Ok(())
}
