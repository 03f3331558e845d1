//! Bad input never crashes a service, blocks a consumer or disappears: it is parked in
//! DEADLETTER with its reason and origin, duplicates are applied once, and operators
//! can list, replay and discard what was parked.

mod common;

use shop_events::api::checkout::OrderStatus;
use shop_events::api::checkout::ORDERS_GET;
use shop_events::api::inventory::STOCK_LIST;
use shop_events::api::payment::PaymentStatus;
use shop_events::api::payment::GATEWAY_LEDGER;
use std::collections::BTreeSet;

use async_nats::jetstream::{self, message::StreamMessage};
use async_nats::HeaderMap;
use serde_json::{json, Value};
use shop_events::api::deadletters::{
    discard_subject, list_subject, replay_subject, HDR_CONSUMER, HDR_PREFIX, HDR_REASON,
    HDR_REPLAYED_FROM, HDR_SEQUENCE, HDR_SERVICE, HDR_STREAM, HDR_SUBJECT, HDR_TRUNCATED,
};
use shop_events::envelope::new_event_id;
use shop_events::subjects::{deadletter_subject, ORDERS_STREAM};
use shop_events::{Envelope, Event, EventKind, OrderPlaced};
use shop_harness::scenario::{
    order, order_status, payment, place, replenish, request_cancellation, stock, wait_for_status,
    wait_for_stock, wait_settled, STOREFRONT,
};
use shop_harness::{events_about, eventually, publish_raw, Service, ShopConfig};

use common::{
    as_published, call_err, call_ok, consumer_of, counter, dead_letters, header, wait_dead_letter,
    wait_idle, world, SETTLE,
};

const CONSUMERS: [&str; 3] = ["checkout", "inventory", "payment"];

/// The structured-mode JSON of an `OrderPlaced`, to tamper with.
fn placed_json(placed: OrderPlaced) -> Value {
    let bytes = Envelope::new(STOREFRONT, Event::OrderPlaced(placed)).to_json();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("envelope is JSON: {e}"))
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Publishes bytes under a fresh `Nats-Msg-Id`: a redelivery the stream's duplicate
/// window cannot catch, as after a producer retry outside the window.
async fn publish_again(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("again-{}", new_event_id()).as_str());
    let ack = publish_raw(js, subject, headers, payload).await?;
    assert!(!ack.duplicate, "a fresh Nats-Msg-Id is stored");
    Ok(ack.sequence)
}

fn assert_parked_as(
    letter: &StreamMessage,
    consumer: &str,
    subject: &str,
    sequence: u64,
    payload: &[u8],
) {
    assert_eq!(
        letter.subject.as_str(),
        deadletter_subject(consumer, ORDERS_STREAM)
    );
    assert!(!header(letter, HDR_REASON).trim().is_empty(), "a reason");
    assert_eq!(as_published(header(letter, HDR_SUBJECT)), subject);
    assert_eq!(header(letter, HDR_STREAM), ORDERS_STREAM);
    assert_eq!(header(letter, HDR_SEQUENCE), sequence.to_string());
    assert!(consumer_of(header(letter, HDR_CONSUMER), consumer));
    assert_eq!(header(letter, HDR_SERVICE), consumer);
    assert_eq!(
        letter.payload.as_ref(),
        payload,
        "the original bytes are kept"
    );
}

#[tokio::test]
async fn hostile_messages_are_dead_lettered_by_every_consumer_and_block_nothing(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-h", 5).await?;
    wait_for_stock(&w.client, "sku-h", 5, 0, SETTLE).await?;

    let mut unknown_type = placed_json(order("o-unknown", &[("sku-h", 1, 10)], "tok_visa"));
    unknown_type["type"] = json!("shop.OrderShipped.v1");
    let mut next_major = placed_json(order("o-v2", &[("sku-h", 1, 10)], "tok_visa"));
    next_major["type"] = json!("shop.OrderPlaced.v2");
    let elsewhere = placed_json(order("o-mine", &[("sku-h", 1, 10)], "tok_visa"));
    let hostile: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "malformed JSON",
            "events.orders.placed.o-broken",
            b"{\"specversion\": \"1.0\", \"id\": ".to_vec(),
            "JSON",
        ),
        (
            "an unknown type",
            "events.orders.placed.o-unknown",
            to_bytes(&unknown_type),
            "OrderShipped",
        ),
        (
            "an unknown major version",
            "events.orders.placed.o-v2",
            to_bytes(&next_major),
            "v2",
        ),
        (
            "a subject that does not match the data",
            "events.orders.placed.o-theirs",
            to_bytes(&elsewhere),
            "o-theirs",
        ),
    ];
    let mut published = Vec::new();
    for (what, subject, payload, _) in &hostile {
        let ack = publish_raw(&w.js, subject, HeaderMap::new(), payload.clone()).await?;
        published.push(ack.sequence);
        assert!(!ack.duplicate, "{what}");
    }
    place(&w.js, order("o-after", &[("sku-h", 2, 100)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-after", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-h", 3, 0, SETTLE).await?;

    for ((what, subject, payload, mentions), sequence) in hostile.iter().zip(&published) {
        for consumer in CONSUMERS {
            let letter = wait_dead_letter(&w.js, ORDERS_STREAM, *sequence, consumer).await?;
            assert_parked_as(&letter, consumer, subject, *sequence, payload);
            let reason = header(&letter, HDR_REASON);
            assert!(
                reason.contains(mentions),
                "{consumer} on {what}: `{reason}` should mention {mentions}"
            );
        }
    }
    for order_id in ["o-broken", "o-unknown", "o-v2", "o-mine", "o-theirs"] {
        let (code, _) = call_err(
            &w.client,
            ORDERS_GET.subject,
            json!({ "order_id": order_id }),
        )
        .await?;
        assert_eq!(code, 404, "{order_id} never became an order");
    }
    for service in Service::ALL {
        let parked = eventually(SETTLE, "the dead-letter counter", || async {
            let n = counter(&w.client, service, "events_dead_lettered")
                .await
                .ok()?;
            (n >= hostile.len() as u64).then_some(n)
        })
        .await?;
        assert_eq!(parked, hostile.len() as u64, "{service}: once each");
    }
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_conflicting_order_is_dead_lettered_by_checkout_and_the_first_order_stands(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-c", 10).await?;
    wait_for_stock(&w.client, "sku-c", 10, 0, SETTLE).await?;
    place(&w.js, order("o-first", &[("sku-c", 2, 500)], "tok_visa")).await?;
    let before = wait_for_status(&w.client, "o-first", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-c", 8, 0, SETTLE).await?;

    let conflicting = place(&w.js, order("o-first", &[("sku-c", 5, 500)], "tok_visa")).await?;
    let sequence = events_about(&w.js, "o-first")
        .await?
        .iter()
        .find(|e| {
            e.envelope()
                .is_some_and(|e| e.meta.id == conflicting.meta.id)
        })
        .map(|e| e.sequence)
        .expect("the conflicting event is stored");
    let letter = wait_dead_letter(&w.js, ORDERS_STREAM, sequence, "checkout").await?;
    assert_parked_as(
        &letter,
        "checkout",
        "events.orders.placed.o-first",
        sequence,
        &conflicting.to_json(),
    );
    let reason = header(&letter, HDR_REASON);
    assert!(reason.contains("o-first"), "{reason}");

    wait_idle(&w.client, &w.js).await?;
    let parked = dead_letters(&w.js).await?;
    assert_eq!(
        parked.len(),
        1,
        "inventory and payment keep the first order without complaint"
    );
    for service in ["inventory", "payment"] {
        let theirs = call_ok(&w.client, &list_subject(service), json!({})).await?;
        assert_eq!(theirs, json!([]), "{service}");
    }
    let after = order_status(&w.client, "o-first").await?;
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "the first order is untouched"
    );
    assert_eq!(before.total, 1000);
    assert_eq!(stock(&w.client, "sku-c").await?, Some((8, 0, 8)));
    let pay = payment(&w.client, "o-first").await?.expect("payment");
    assert_eq!(pay.captured, 1000);

    // An operator replays it: still conflicting, so checkout parks it again under its
    // new sequence, while inventory and payment skip it as an event they already had.
    let duplicates_before = counter(&w.client, Service::Inventory, "events_duplicate").await?;
    let replayed = call_ok(
        &w.client,
        &replay_subject("checkout"),
        json!({"seq": letter.sequence}),
    )
    .await?;
    assert_eq!(replayed["resolution"]["status"], "replayed", "{replayed}");
    let republished = replayed["resolution"]["republished_as"]
        .as_u64()
        .expect("republished_as");
    let again = wait_dead_letter(&w.js, ORDERS_STREAM, republished, "checkout").await?;
    assert_eq!(again.payload, letter.payload);
    assert_eq!(
        header(&again, HDR_REPLAYED_FROM),
        letter.sequence.to_string()
    );
    wait_idle(&w.client, &w.js).await?;
    assert!(counter(&w.client, Service::Inventory, "events_duplicate").await? > duplicates_before);
    assert_eq!(dead_letters(&w.js).await?.len(), 2);
    let after = order_status(&w.client, "o-first").await?;
    assert_eq!(after, Some(before), "the first order is still untouched");
    assert_eq!(stock(&w.client, "sku-c").await?, Some((8, 0, 8)));

    // Then discards it, saying why.
    let discarded = call_ok(
        &w.client,
        &discard_subject("checkout"),
        json!({"seq": again.sequence, "reason": "storefront bug SF-12: order id reused"}),
    )
    .await?;
    assert_eq!(discarded["resolution"]["status"], "discarded");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_same_order_placed_again_under_a_new_event_id_changes_nothing() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-s", 4).await?;
    wait_for_stock(&w.client, "sku-s", 4, 0, SETTLE).await?;
    let placed = order("o-same", &[("sku-s", 1, 250)], "tok_visa");
    let first = place(&w.js, placed.clone()).await?;
    let before = wait_for_status(&w.client, "o-same", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-s", 3, 0, SETTLE).await?;
    wait_idle(&w.client, &w.js).await?;

    let second = place(&w.js, placed).await?;
    assert_ne!(first.meta.id, second.meta.id);
    wait_idle(&w.client, &w.js).await?;

    assert!(dead_letters(&w.js).await?.is_empty(), "nothing is parked");
    let after = order_status(&w.client, "o-same").await?;
    assert_eq!(after, Some(before));
    assert_eq!(stock(&w.client, "sku-s").await?, Some((3, 0, 3)));
    let ledger = call_ok(&w.client, GATEWAY_LEDGER.subject, json!({})).await?;
    assert_eq!(ledger.as_array().map(Vec::len), Some(1), "{ledger}");
    assert_eq!(ledger[0]["charge_calls"], 1, "{ledger}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_replenishment_delivered_twice_adds_its_stock_once() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let envelope = replenish(&w.js, "sku-twice", 5).await?;
    publish_again(&w.js, &envelope.subject(), envelope.to_json()).await?;
    wait_idle(&w.client, &w.js).await?;
    assert_eq!(stock(&w.client, "sku-twice").await?, Some((5, 0, 5)));
    assert_eq!(
        counter(&w.client, Service::Inventory, "events_duplicate").await?,
        1
    );
    assert_eq!(
        counter(&w.client, Service::Inventory, "events_processed").await?,
        1
    );
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_order_delivered_twice_reserves_and_charges_once() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-o2", 6).await?;
    wait_for_stock(&w.client, "sku-o2", 6, 0, SETTLE).await?;
    let envelope = place(&w.js, order("o-twice", &[("sku-o2", 2, 800)], "tok_visa")).await?;
    publish_again(&w.js, &envelope.subject(), envelope.to_json()).await?;
    wait_for_status(&w.client, "o-twice", OrderStatus::Confirmed, SETTLE).await?;
    wait_for_stock(&w.client, "sku-o2", 4, 0, SETTLE).await?;
    wait_idle(&w.client, &w.js).await?;

    assert_eq!(stock(&w.client, "sku-o2").await?, Some((4, 0, 4)));
    let kinds: Vec<&str> = events_about(&w.js, "o-twice")
        .await?
        .iter()
        .filter_map(|e| e.kind_name())
        .collect();
    let count = |name: &str| kinds.iter().filter(|k| **k == name).count();
    assert_eq!(count("OrderPlaced"), 2, "{kinds:?}");
    assert_eq!(count("StockReserved"), 1, "{kinds:?}");
    assert_eq!(count("PaymentCaptured"), 1, "{kinds:?}");
    assert_eq!(count("OrderConfirmed"), 1, "{kinds:?}");
    let pay = payment(&w.client, "o-twice").await?.expect("payment");
    assert_eq!(pay.captured, 1600);
    let ledger = call_ok(&w.client, GATEWAY_LEDGER.subject, json!({})).await?;
    assert_eq!(ledger[0]["charge_calls"], 1, "{ledger}");
    for service in Service::ALL {
        assert!(
            counter(&w.client, service, "events_duplicate").await? >= 1,
            "{service} saw the second delivery as a duplicate"
        );
    }
    assert!(dead_letters(&w.js).await?.is_empty());
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn every_event_type_delivered_again_is_applied_once() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-e", 3).await?;
    wait_for_stock(&w.client, "sku-e", 3, 0, SETTLE).await?;
    // Between them these orders publish every event type of the saga.
    place(&w.js, order("o-kept", &[("sku-e", 1, 100)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-kept", OrderStatus::Confirmed, SETTLE).await?;
    place(&w.js, order("o-regret", &[("sku-e", 1, 100)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-regret", OrderStatus::Confirmed, SETTLE).await?;
    request_cancellation(&w.js, "o-regret").await?;
    wait_for_status(&w.client, "o-regret", OrderStatus::Cancelled, SETTLE).await?;
    place(
        &w.js,
        order(
            "o-declined",
            &[("sku-e", 1, 100)],
            "tok_chargeDeclinedInsufficientFunds",
        ),
    )
    .await?;
    wait_for_status(&w.client, "o-declined", OrderStatus::Cancelled, SETTLE).await?;
    place(&w.js, order("o-short", &[("sku-e", 50, 100)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-short", OrderStatus::Cancelled, SETTLE).await?;
    place(&w.js, order("o-invalid", &[("sku-e", 0, 100)], "tok_visa")).await?;
    wait_settled(&w.client, "o-invalid", SETTLE).await?;
    eventually(SETTLE, "the refund", || async {
        let p = payment(&w.client, "o-regret").await.ok()??;
        (p.status == PaymentStatus::Refunded).then_some(())
    })
    .await?;
    wait_for_stock(&w.client, "sku-e", 2, 0, SETTLE).await?;
    wait_idle(&w.client, &w.js).await?;

    let keys = [
        "sku-e",
        "o-kept",
        "o-regret",
        "o-declined",
        "o-short",
        "o-invalid",
    ];
    let orders = &keys[1..];
    let views_before = snapshot(&w.client, orders).await?;
    let mut processed_before = Vec::new();
    for service in Service::ALL {
        processed_before.push(counter(&w.client, service, "events_processed").await?);
    }

    let mut kinds = BTreeSet::new();
    let mut republished = 0;
    for key in keys {
        for event in events_about(&w.js, key).await? {
            kinds.insert(event.kind_name().expect("the saga's own events decode"));
            publish_again(&w.js, &event.subject, event.payload.to_vec()).await?;
            republished += 1;
        }
    }
    let all: BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(kinds, all, "every event type is delivered again");
    wait_idle(&w.client, &w.js).await?;

    for (service, before) in Service::ALL.into_iter().zip(processed_before) {
        assert_eq!(
            counter(&w.client, service, "events_processed").await?,
            before,
            "{service} applied nothing new out of {republished} redeliveries"
        );
        assert!(counter(&w.client, service, "events_duplicate").await? > 0);
    }
    assert_eq!(snapshot(&w.client, orders).await?, views_before);
    assert!(dead_letters(&w.js).await?.is_empty());
    w.shop.shutdown().await?;
    Ok(())
}

/// What operators can see of some orders: checkout's views, their payments, the
/// gateway's books and every stock level.
async fn snapshot(client: &async_nats::Client, orders: &[&str]) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for order_id in orders {
        out.push(call_ok(client, ORDERS_GET.subject, json!({ "order_id": order_id })).await?);
        out.push(json!(payment(client, order_id).await?));
    }
    out.push(call_ok(client, GATEWAY_LEDGER.subject, json!({})).await?);
    out.push(call_ok(client, STOCK_LIST.subject, json!({})).await?);
    Ok(Value::Array(out))
}

#[tokio::test]
async fn operators_list_discard_and_replay_a_services_dead_letters() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let empty = call_ok(&w.client, &list_subject("checkout"), json!({})).await?;
    assert_eq!(empty, json!([]));

    let broken: &[u8] = b"{\"specversion\": \"1.0\", \"id\": ";
    let first = publish_raw(
        &w.js,
        "events.orders.placed.o-dl-1",
        HeaderMap::new(),
        broken.to_vec(),
    )
    .await?
    .sequence;
    let second = publish_raw(
        &w.js,
        "events.orders.placed.o-dl-2",
        HeaderMap::new(),
        b"[]".to_vec(),
    )
    .await?
    .sequence;
    let first_letter = wait_dead_letter(&w.js, ORDERS_STREAM, first, "checkout").await?;
    let second_letter = wait_dead_letter(&w.js, ORDERS_STREAM, second, "checkout").await?;
    let inventorys = wait_dead_letter(&w.js, ORDERS_STREAM, first, "inventory").await?;

    let list = call_ok(&w.client, &list_subject("checkout"), json!({})).await?;
    let letters = list.as_array().expect("a list");
    assert_eq!(letters.len(), 2, "only checkout's own: {list}");
    // Listed in dead-letter order; the two orders' partitions park them independently.
    let mut expected = [
        (&first_letter, "events.orders.placed.o-dl-1", first),
        (&second_letter, "events.orders.placed.o-dl-2", second),
    ];
    expected.sort_by_key(|(letter, _, _)| letter.sequence);
    for (view, (letter, subject, sequence)) in letters.iter().zip(expected) {
        assert_eq!(view["seq"], letter.sequence, "{view:?}");
        assert_eq!(
            as_published(view["subject"].as_str().unwrap_or("")),
            subject
        );
        assert_eq!(view["stream"], ORDERS_STREAM);
        assert_eq!(view["stream_sequence"], sequence);
        assert!(consumer_of(
            view["consumer"].as_str().unwrap_or(""),
            "checkout"
        ));
        assert!(view["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(
            view["payload"],
            String::from_utf8_lossy(&letter.payload).as_ref()
        );
        assert_eq!(view["truncated"], false);
        assert!(view["resolution"].is_null());
    }
    let limited = call_ok(&w.client, &list_subject("checkout"), json!({"limit": 1})).await?;
    assert_eq!(limited.as_array().map(Vec::len), Some(1));
    let theirs = call_ok(&w.client, &list_subject("inventory"), json!({})).await?;
    assert!(theirs
        .as_array()
        .into_iter()
        .flatten()
        .all(|v| consumer_of(v["consumer"].as_str().unwrap_or(""), "inventory")));

    // Discarding needs a reason, an existing letter, and the right service.
    let discard = &discard_subject("checkout");
    let (code, description) =
        call_err(&w.client, discard, json!({"seq": first_letter.sequence})).await?;
    assert_eq!(code, 400);
    assert!(description.contains("reason"), "{description}");
    let (code, _) = call_err(
        &w.client,
        discard,
        json!({"seq": first_letter.sequence, "reason": "   "}),
    )
    .await?;
    assert_eq!(code, 400);
    let (code, _) = call_err(
        &w.client,
        discard,
        json!({"seq": 999_999, "reason": "gone"}),
    )
    .await?;
    assert_eq!(code, 404);
    let (code, _) = call_err(&w.client, discard, json!({"reason": "which one?"})).await?;
    assert_eq!(code, 400);
    let (code, description) = call_err(
        &w.client,
        discard,
        json!({"seq": inventorys.sequence, "reason": "not mine"}),
    )
    .await?;
    assert_eq!(code, 400, "{description}");

    let reason = "storefront sent a truncated body; order re-entered by support";
    let discarded = call_ok(
        &w.client,
        discard,
        json!({"seq": first_letter.sequence, "reason": reason}),
    )
    .await?;
    assert_eq!(discarded["resolution"]["status"], "discarded");
    assert_eq!(discarded["resolution"]["reason"], reason);
    let list = call_ok(&w.client, &list_subject("checkout"), json!({})).await?;
    let by_seq = |seq: u64| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|v| v["seq"] == seq)
            .cloned()
            .unwrap_or_default()
    };
    let first_view = by_seq(first_letter.sequence);
    assert_eq!(first_view["resolution"]["status"], "discarded", "{list}");
    assert_eq!(first_view["resolution"]["reason"], reason);
    assert!(by_seq(second_letter.sequence)["resolution"].is_null());

    // Replaying republishes the original bytes on the original subject.
    let replay = &replay_subject("checkout");
    let (code, _) = call_err(&w.client, replay, json!({"seq": 999_999})).await?;
    assert_eq!(code, 404);
    let (code, _) = call_err(&w.client, replay, json!({})).await?;
    assert_eq!(code, 400);
    let orders_before = shop_harness::stream_message_count(&w.js, ORDERS_STREAM).await?;
    let replayed = call_ok(&w.client, replay, json!({"seq": second_letter.sequence})).await?;
    assert_eq!(replayed["seq"], second_letter.sequence);
    assert_eq!(replayed["resolution"]["status"], "replayed", "{replayed}");
    let republished = replayed["resolution"]["republished_as"]
        .as_u64()
        .expect("republished_as");
    assert_eq!(
        shop_harness::stream_message_count(&w.js, ORDERS_STREAM).await?,
        orders_before + 1
    );
    let copy =
        w.js.get_stream(ORDERS_STREAM)
            .await?
            .get_raw_message(republished)
            .await?;
    // Replayed on the subject it was stored under (with its partition token).
    assert_eq!(
        as_published(copy.subject.as_str()),
        "events.orders.placed.o-dl-2"
    );
    assert_eq!(copy.payload.as_ref(), b"[]");
    assert_eq!(
        header(&copy, HDR_REPLAYED_FROM),
        second_letter.sequence.to_string()
    );
    assert!(
        copy.headers.iter().all(|(name, _)| {
            let name: &str = name.as_ref();
            !name.starts_with(HDR_PREFIX)
        }),
        "the dead-letter headers stay behind"
    );
    // Still not an event, so it comes back, under its new sequence.
    wait_dead_letter(&w.js, ORDERS_STREAM, republished, "checkout").await?;

    // A second replay inside the duplicate window does not publish it twice.
    let again = call_ok(&w.client, replay, json!({"seq": second_letter.sequence})).await?;
    assert_eq!(again["resolution"]["republished_as"], republished);
    assert_eq!(
        shop_harness::stream_message_count(&w.js, ORDERS_STREAM).await?,
        orders_before + 1
    );
    let list = call_ok(&w.client, &list_subject("checkout"), json!({})).await?;
    let second_view = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["seq"] == second_letter.sequence)
        .cloned()
        .unwrap_or_default();
    assert_eq!(second_view["resolution"]["status"], "replayed", "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_oversized_message_is_dead_lettered_and_blocks_nothing() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-big", 2).await?;
    wait_for_stock(&w.client, "sku-big", 2, 0, SETTLE).await?;

    // 900 KB of JSON that is no event: parked whole.
    let big = to_bytes(&json!({ "padding": "x".repeat(900 * 1024) }));
    let big_seq = publish_raw(
        &w.js,
        "events.orders.placed.o-big",
        HeaderMap::new(),
        big.clone(),
    )
    .await?
    .sequence;
    // As large as the server accepts: with the dead-letter headers added it no longer
    // fits, so a truncated copy is parked and the original stays in ORDERS.
    let max_payload = w.client.max_payload();
    let huge = vec![b'x'; max_payload - 64];
    let huge_seq = publish_raw(
        &w.js,
        "events.orders.placed.o-huge",
        HeaderMap::new(),
        huge.clone(),
    )
    .await?
    .sequence;
    place(&w.js, order("o-small", &[("sku-big", 1, 100)], "tok_visa")).await?;
    wait_for_status(&w.client, "o-small", OrderStatus::Confirmed, SETTLE).await?;

    for consumer in CONSUMERS {
        let letter = wait_dead_letter(&w.js, ORDERS_STREAM, big_seq, consumer).await?;
        assert_parked_as(
            &letter,
            consumer,
            "events.orders.placed.o-big",
            big_seq,
            &big,
        );
        assert_eq!(header(&letter, HDR_TRUNCATED), "");

        let letter = wait_dead_letter(&w.js, ORDERS_STREAM, huge_seq, consumer).await?;
        assert_eq!(header(&letter, HDR_TRUNCATED), "true");
        assert_eq!(
            as_published(header(&letter, HDR_SUBJECT)),
            "events.orders.placed.o-huge"
        );
        assert_eq!(header(&letter, HDR_SEQUENCE), huge_seq.to_string());
        assert!(!header(&letter, HDR_REASON).is_empty());
        assert!(
            huge.starts_with(&letter.payload) && !letter.payload.is_empty(),
            "a prefix of the original"
        );
    }
    let original =
        w.js.get_stream(ORDERS_STREAM)
            .await?
            .get_raw_message(huge_seq)
            .await?;
    assert_eq!(original.payload, huge, "the original stays where it was");

    // A truncated copy cannot be replayed; the operator is told where the original is.
    let views = call_ok(&w.client, &list_subject("checkout"), json!({})).await?;
    let truncated = views
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["truncated"] == true)
        .expect("the truncated copy is listed")
        .clone();
    let (code, description) = call_err(
        &w.client,
        &replay_subject("checkout"),
        json!({"seq": truncated["seq"]}),
    )
    .await?;
    assert_eq!(code, 400, "{description}");
    assert!(description.contains(&huge_seq.to_string()), "{description}");
    w.shop.shutdown().await?;
    Ok(())
}
