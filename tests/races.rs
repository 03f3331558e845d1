//! Duplicates, out-of-order delivery, restarts and contention: the normal case, not the exception.

use shop_events::api::checkout::OrderStatus;
use shop_events::api::payment::PaymentStatus;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use shop_events::{CancelReason, Envelope, Event, OrderCancelled, OrderId};
use shop_harness::scenario::{
    order, payment, place, replenish, stock, wait_for_status, wait_for_stock, wait_settled,
};
use shop_harness::{
    events_about, eventually, publish_event, publish_raw, world, Service, ShopConfig,
};

const SETTLE: Duration = Duration::from_secs(30);

async fn count_kind(js: &jetstream::Context, key: &str, kind: &str) -> anyhow::Result<usize> {
    Ok(events_about(js, key)
        .await?
        .iter()
        .filter(|e| e.kind_name() == Some(kind))
        .count())
}

#[tokio::test]
async fn every_event_of_a_saga_delivered_again_is_applied_once() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-dup", 5).await?;
    wait_for_stock(&w.client, "sku-dup", 5, 0, SETTLE).await?;
    place(&w.js, order("o-dup", &[("sku-dup", 2, 300)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-dup", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-dup", 3, 0, SETTLE).await?;
    let original = eventually(SETTLE, "the whole saga", || async {
        let events = events_about(&w.js, "o-dup").await.ok()?;
        (events.len() >= 5).then_some(events)
    })
    .await?;

    // Redeliver every stored event with a fresh Nats-Msg-Id, so JetStream's window
    // does not drop them and only the services' inboxes stand in the way.
    for stored in &original {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("redelivery-{}", stored.sequence).as_str(),
        );
        publish_raw(&w.js, &stored.subject, headers, stored.payload.clone()).await?;
    }
    let replenishments = events_about(&w.js, "sku-dup").await?;
    for stored in &replenishments {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("redelivery-sku-{}", stored.sequence).as_str(),
        );
        publish_raw(&w.js, &stored.subject, headers, stored.payload.clone()).await?;
    }

    // The duplicates are consumed (every consumer drains) and change nothing.
    eventually(SETTLE, "duplicates to be consumed", || async {
        let mut drained = true;
        for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
            let mut s = w.js.get_stream(stream).await.ok()?;
            let mut consumers = s.consumers();
            use futures::StreamExt;
            while let Some(Ok(info)) = consumers.next().await {
                drained &= info.num_pending == 0 && info.num_ack_pending == 0;
            }
            let _ = s.info().await.ok()?;
        }
        drained.then_some(())
    })
    .await?;
    assert_eq!(stock(&w.client, "sku-dup").await?, Some((3, 0, 3)));
    let pay = payment(&w.client, "o-dup").await?.expect("payment");
    assert_eq!((pay.status, pay.captured), (PaymentStatus::Captured, 600));
    let all = events_about(&w.js, "o-dup").await?;
    assert_eq!(
        all.len(),
        original.len() * 2,
        "only the re-published copies were added: no new reactions"
    );
    assert_eq!(
        count_kind(&w.js, "o-dup", "PaymentCaptured").await?,
        2,
        "the original and its re-published copy"
    );
    let ids: std::collections::HashSet<String> = all
        .iter()
        .filter_map(|e| e.envelope().map(|env| env.meta.id.clone()))
        .collect();
    assert_eq!(
        ids.len(),
        original.len(),
        "no event with a new id was produced"
    );
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_cancellation_seen_before_its_order_means_nothing_is_reserved_or_charged(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-early", 5).await?;
    wait_for_stock(&w.client, "sku-early", 5, 0, SETTLE).await?;
    // OrderCancelled overtakes OrderPlaced on its way to inventory and payment.
    let cancelled = Envelope::new(
        "checkout",
        Event::OrderCancelled(OrderCancelled {
            order_id: OrderId::parse("o-early")?,
            reason: CancelReason::CustomerRequest,
            detail: "raced ahead".into(),
        }),
    );
    publish_event(&w.js, &cancelled).await?;
    eventually(SETTLE, "payment to record the tombstone", || async {
        let p = payment(&w.client, "o-early").await.ok()??;
        (p.status == PaymentStatus::Cancelled).then_some(())
    })
    .await?;
    place(
        &w.js,
        order("o-early", &[("sku-early", 1, 100)], "tok_visa"),
    )
    .await?;
    // Checkout settles the order (pending until its deadline, or cancelled); inventory and payment never act.
    eventually(SETTLE, "payment to learn the order's terms", || async {
        let p = payment(&w.client, "o-early").await.ok()??;
        (p.currency.as_deref() == Some("EUR")).then_some(())
    })
    .await?;
    assert_eq!(stock(&w.client, "sku-early").await?, Some((5, 0, 5)));
    assert_eq!(count_kind(&w.js, "o-early", "StockReserved").await?, 0);
    assert_eq!(count_kind(&w.js, "o-early", "PaymentCaptured").await?, 0);
    let pay = payment(&w.client, "o-early").await?.expect("payment");
    assert_eq!(pay.captured, 0);
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_service_stopped_mid_saga_picks_up_where_it_left_off() -> anyhow::Result<()> {
    let mut w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-restart", 10).await?;
    wait_for_stock(&w.client, "sku-restart", 10, 0, SETTLE).await?;
    w.shop.stop_service(Service::Payment).await?;
    for n in 0..5 {
        place(
            &w.js,
            order(
                &format!("o-restart-{n}"),
                &[("sku-restart", 1, 100)],
                "tok_visa",
            ),
        )
        .await?;
    }
    eventually(SETTLE, "stock reserved while payment is down", || async {
        let (_, reserved, _) = stock(&w.client, "sku-restart").await.ok()??;
        (reserved == 5).then_some(())
    })
    .await?;
    w.shop.start_service(Service::Payment).await?;
    for n in 0..5 {
        wait_for_status(
            &w.client,
            &format!("o-restart-{n}"),
            OrderStatus::Confirmed,
            SETTLE,
        )
        .await?;
    }
    w.shop.stop_service(Service::Inventory).await?;
    w.shop.start_service(Service::Inventory).await?;
    wait_for_stock(&w.client, "sku-restart", 5, 0, SETTLE).await?;
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn two_hundred_orders_racing_for_fifty_units_confirm_exactly_fifty() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process().order_deadline(Duration::from_secs(60))).await?;
    replenish(&w.js, "sku-hot", 50).await?;
    wait_for_stock(&w.client, "sku-hot", 50, 0, SETTLE).await?;
    let publishes = (0..200).map(|n| {
        let js = w.js.clone();
        async move {
            place(
                &js,
                order(&format!("o-hot-{n}"), &[("sku-hot", 1, 1000)], "tok_visa"),
            )
            .await
        }
    });
    for result in futures::future::join_all(publishes).await {
        result?;
    }
    let mut confirmed = 0;
    let mut out_of_stock = 0;
    for n in 0..200 {
        let view = wait_settled(&w.client, &format!("o-hot-{n}"), Duration::from_secs(60)).await?;
        match (view.status, view.reason) {
            (OrderStatus::Confirmed, _) => confirmed += 1,
            (OrderStatus::Cancelled, Some(CancelReason::OutOfStock)) => out_of_stock += 1,
            other => panic!("unexpected outcome for o-hot-{n}: {other:?}"),
        }
    }
    assert_eq!((confirmed, out_of_stock), (50, 150));
    wait_for_stock(&w.client, "sku-hot", 0, 0, SETTLE).await?;
    let mut captured = 0;
    for n in 0..200 {
        if let Some(p) = payment(&w.client, &format!("o-hot-{n}")).await? {
            captured += p.captured - p.refunded;
        }
    }
    assert_eq!(
        captured,
        50 * 1000,
        "net captures equal the confirmed orders"
    );
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_deadline_that_passes_while_checkout_is_down_still_cancels_the_order(
) -> anyhow::Result<()> {
    const DEADLINE: Duration = Duration::from_secs(30);
    // Checkout's time stands still until the test moves it: the deadline can only
    // pass when the test says so, here while checkout is down.
    let clock = shop_harness::shop::ManualClock::default();
    let mut w = world(
        ShopConfig::in_process()
            .order_deadline(DEADLINE)
            .manual_clock(&clock),
    )
    .await?;
    w.shop.stop_service(Service::Payment).await?;
    replenish(&w.js, "sku-late", 3).await?;
    wait_for_stock(&w.client, "sku-late", 3, 0, SETTLE).await?;
    place(&w.js, order("o-down", &[("sku-late", 1, 400)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-down", OrderStatus::Pending, SETTLE).await?;

    // The deadline is only in checkout's sled index while checkout is away.
    w.shop.stop_service(Service::Checkout).await?;
    clock.advance(DEADLINE);
    w.shop.start_service(Service::Checkout).await?;
    assert_eq!(w.shop.starts().get(&Service::Checkout), Some(&2));

    let view = wait_for_status(&w.client, "o-down", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::Timeout));
    wait_for_stock(&w.client, "sku-late", 3, 0, SETTLE).await?;
    w.shop.start_service(Service::Payment).await?;
    let pay = eventually(SETTLE, "payment to see the cancellation", || async {
        let p = payment(&w.client, "o-down").await.ok()??;
        (p.status == PaymentStatus::Cancelled || p.status == PaymentStatus::Voided).then_some(p)
    })
    .await?;
    assert_eq!(pay.captured, 0);
    w.shop.shutdown().await?;
    Ok(())
}

/// Checkout's saved position of its consumer `durable` on `stream`, once it is past 0:
/// a consumer saves its ack floor within its saving period once the floor moved.
async fn saved_position(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> anyhow::Result<shop_runtime::changelog::Position> {
    let bucket = js
        .get_key_value(shop_events::partition::state_bucket("checkout"))
        .await?;
    let key = format!("_positions.{stream}.{durable}");
    Ok(eventually(SETTLE, "checkout's position saved", || async {
        let bytes = bucket.get(&key).await.ok()??;
        let position: shop_runtime::changelog::Position = serde_json::from_slice(&bytes).ok()?;
        (position.ack_floor > 0).then_some(position)
    })
    .await?)
}

/// How the consumer `durable` on `stream` was declared again: its start sequence if
/// it starts from one, and whether its state is in memory.
async fn declared_again(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> anyhow::Result<(Option<u64>, bool)> {
    let stream = js.get_stream(stream).await?;
    Ok(eventually(SETTLE, "the consumer declared again", || async {
        let info = stream.consumer_info(durable).await.ok()?;
        let start = match info.config.deliver_policy {
            jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => {
                Some(start_sequence)
            }
            _ => None,
        };
        Some((start, info.config.memory_storage))
    })
    .await?)
}

/// Places `orders` of one unit of `sku` each and waits until every one is confirmed,
/// then checks that each was confirmed and captured exactly once.
async fn confirm_each_once(
    w: &shop_harness::World,
    orders: &[String],
    sku: &str,
) -> anyhow::Result<()> {
    for o in orders {
        place(&w.js, order(o, &[(sku, 1, 100)], "tok_visa")).await?;
    }
    for o in orders {
        wait_for_status(&w.client, o, OrderStatus::Confirmed, SETTLE).await?;
    }
    for o in orders {
        assert_eq!(count_kind(&w.js, o, "OrderConfirmed").await?, 1, "{o}");
        assert_eq!(count_kind(&w.js, o, "PaymentCaptured").await?, 1, "{o}");
    }
    Ok(())
}

/// The services' consumers keep their state in the broker's memory, so a broker restart
/// forgets them. Each is declared again from the position its service saved in its
/// changelog bucket (not from the stream's first message), and orders placed after the
/// restart settle, each applied once.
#[tokio::test]
async fn after_a_broker_restart_each_consumer_starts_again_from_its_saved_position(
) -> anyhow::Result<()> {
    use shop_events::partition::{partition_consumer, partition_of_key};
    use shop_events::subjects::ORDERS_STREAM;

    let mut w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-pos", 20).await?;
    wait_for_stock(&w.client, "sku-pos", 20, 0, SETTLE).await?;
    let first: Vec<String> = (1..=3).map(|n| format!("o-pos-{n}")).collect();
    confirm_each_once(&w, &first, "sku-pos").await?;
    // Checkout reads OrderPlaced from ORDERS on the order's partition.
    let durable = partition_consumer("checkout", Some(partition_of_key("o-pos-1")));
    let before = saved_position(&w.js, ORDERS_STREAM, &durable).await?;

    w.server.restart().await?;

    let (start, memory) = declared_again(&w.js, ORDERS_STREAM, &durable).await?;
    assert!(
        start.is_some_and(|s| s > before.ack_floor) && memory,
        "declared again at {start:?} (memory: {memory}), saved floor {}",
        before.ack_floor
    );
    let after: Vec<String> = (4..=6).map(|n| format!("o-pos-{n}")).collect();
    confirm_each_once(&w, &after, "sku-pos").await?;
    wait_for_stock(&w.client, "sku-pos", 14, 0, SETTLE).await?;
    // The restart's replay applied nothing of the first orders a second time.
    for o in &first {
        assert_eq!(count_kind(&w.js, o, "OrderConfirmed").await?, 1, "{o}");
        assert_eq!(count_kind(&w.js, o, "PaymentCaptured").await?, 1, "{o}");
    }
    Ok(())
}

/// An operator who deletes a consumer (`nats consumer rm`, or to move one declared on file
/// by an earlier version to memory) loses nothing: the service declares it again from the
/// position it saved, and orders keep settling, each applied once.
#[tokio::test]
async fn a_deleted_consumer_is_declared_again_from_its_saved_position() -> anyhow::Result<()> {
    use shop_events::partition::{partition_consumer, partition_of_key};
    use shop_events::subjects::PAYMENTS_STREAM;

    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-rm", 10).await?;
    wait_for_stock(&w.client, "sku-rm", 10, 0, SETTLE).await?;
    confirm_each_once(&w, &["o-rm-1".to_owned()], "sku-rm").await?;
    // Checkout reads PaymentCaptured from PAYMENTS on the order's partition.
    let partition = partition_of_key("o-rm-1");
    let durable = partition_consumer("checkout", Some(partition));
    let before = saved_position(&w.js, PAYMENTS_STREAM, &durable).await?;

    let stream = w.js.get_stream(PAYMENTS_STREAM).await?;
    assert!(stream.delete_consumer(&durable).await?.success);

    let (start, memory) = declared_again(&w.js, PAYMENTS_STREAM, &durable).await?;
    assert!(
        start.is_some_and(|s| s > before.ack_floor) && memory,
        "declared again at {start:?} (memory: {memory}), saved floor {}",
        before.ack_floor
    );
    // The next order of the same partition goes through the consumer declared again.
    let next = (2..500)
        .map(|n| format!("o-rm-{n}"))
        .find(|o| partition_of_key(o) == partition)
        .expect("an order id in the same partition");
    confirm_each_once(&w, std::slice::from_ref(&next), "sku-rm").await?;
    wait_for_stock(&w.client, "sku-rm", 8, 0, SETTLE).await?;
    assert_eq!(count_kind(&w.js, "o-rm-1", "OrderConfirmed").await?, 1);
    Ok(())
}
