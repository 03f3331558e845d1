//! Hostile input against a running shop (real nats-server, the services in-process, real
//! sled): ids that would break a NATS subject, from a request or inside an event, and
//! events crafted to make a service choke on its own reaction.
//!
//! An id with `.`, `*`, `>`, whitespace, a control or a non-ASCII character would split a
//! subject (`events.orders.placed.o.1`) or turn it into a wildcard, so one order's events
//! could land on, or be read from, another's subject. The contract refuses such ids
//! (`shop_events::ids::check_token`); these tests prove every entry point applies it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::{json, Value};
use shop_events::api::checkout::{
    OrderStatus, ORDERS_CANCEL, ORDERS_GET, ORDERS_LIST, ORDERS_PLACE,
};
use shop_events::api::deadletters::{
    discard_subject, list_subject, replay_subject, HDR_SEQUENCE, HDR_SERVICE, HDR_STREAM,
};
use shop_events::api::inventory::{STOCK_GET, STOCK_LIST, STOCK_REPLENISH};
use shop_events::api::payment::{GATEWAY_LEDGER, PAYMENTS_GET};
use shop_events::api::{all_endpoints, service};
use shop_events::subjects::{event_subject, DEADLETTER_STREAM, ORDERS_STREAM};
use shop_events::{DecodeError, EventKind, OrderPlaced, ProblemCode};
use shop_harness::scenario::{order, replenish, wait_for_status, wait_for_stock};
use shop_harness::{eventually, publish_raw, stream_message_count, ShopConfig};

use common::world;

/// How long an asynchronous outcome may take on a small, shared machine.
const SETTLE: Duration = Duration::from_secs(60);
/// How long an endpoint may take to answer.
// Generous: the machine is shared, and a missing answer is what these tests look for.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);
/// The service error code for bad input (`Nats-Service-Error-Code`).
const BAD_REQUEST: u16 = 400;
/// The service error code for an unknown order or sku.
const NOT_FOUND: u16 = 404;

/// Ids that must never reach a subject, each for a different reason.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "o.1",
        "o.",
        ".o",
        "o*",
        "*",
        ">",
        "o.>",
        "o.*.1",
        "o 1",
        " o-1",
        "o-1 ",
        "o\t1",
        "o\n1",
        "o\r\n1",
        "o\u{0}1",
        "o\u{7f}1",
        "ö-1",
        "o-1é",
        "o-\u{200b}1",
        "о-1",
        "",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // One byte past the 64 the contract allows.
    ids.push("o".repeat(65));
    ids
}

/// What an endpoint answered: its JSON reply, or (service error code, description).
type Answer = Result<Value, (u16, String)>;

/// Sends `body` as it is (any bytes) and reads the micro reply; no reply in time is an error.
async fn request_bytes(
    client: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
) -> anyhow::Result<Answer> {
    let reply = tokio::time::timeout(
        ANSWER_WITHIN,
        client.request(subject.to_owned(), body.into()),
    )
    .await
    .with_context(|| format!("{subject} did not answer within {ANSWER_WITHIN:?}"))??;
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    if let Some(code) = header("Nats-Service-Error-Code") {
        let description = header("Nats-Service-Error").unwrap_or_default();
        return Ok(Err((code.parse()?, description)));
    }
    Ok(Ok(serde_json::from_slice(&reply.payload)?))
}

async fn request(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
) -> anyhow::Result<Answer> {
    request_bytes(client, subject, serde_json::to_vec(body)?).await
}

/// The service error code of an answer, or `None` for a success.
fn code(answer: &Answer) -> Option<u16> {
    answer.as_ref().err().map(|(code, _)| *code)
}

/// A placed order that passes every rule, as JSON, so a test can spoil one field.
fn valid_order_json(order_id: &str) -> Value {
    serde_json::to_value(order(order_id, &[("sku-h", 1, 100)], "tok_visa")).unwrap_or_default()
}

/// The request bodies that put `id` where each endpoint takes an id; an endpoint that
/// takes none maps to an empty list. Keyed by subject.
fn requests_with_id(id: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_subject = BTreeMap::new();
    let mut add = |subject: &str, bodies: Vec<Value>| {
        by_subject.insert(subject.to_owned(), bodies);
    };
    let mut bad_order = valid_order_json("o-1");
    bad_order["order_id"] = json!(id);
    let mut bad_customer = valid_order_json("o-1");
    bad_customer["customer_id"] = json!(id);
    let mut bad_sku = valid_order_json("o-1");
    bad_sku["lines"][0]["sku"] = json!(id);
    add(ORDERS_PLACE.subject, vec![bad_order, bad_customer, bad_sku]);
    add(ORDERS_GET.subject, vec![json!({ "order_id": id })]);
    add(
        ORDERS_CANCEL.subject,
        vec![json!({ "order_id": id, "reason": "hostile" })],
    );
    add(STOCK_GET.subject, vec![json!({ "sku": id })]);
    add(
        STOCK_REPLENISH.subject,
        vec![json!({ "sku": id, "quantity": 5 })],
    );
    add(PAYMENTS_GET.subject, vec![json!({ "order_id": id })]);
    // These take no id: a status and a limit, or nothing at all.
    add(ORDERS_LIST.subject, Vec::new());
    add(STOCK_LIST.subject, Vec::new());
    add(GATEWAY_LEDGER.subject, Vec::new());
    by_subject
}

#[tokio::test]
async fn every_endpoint_that_takes_an_id_answers_400_to_one_that_would_break_a_subject(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    // Every endpoint of the contract is classified, so a new one cannot slip past.
    let classified: BTreeSet<String> = requests_with_id("o-1").into_keys().collect();
    let contract: BTreeSet<String> = all_endpoints()
        .iter()
        .map(|e| e.subject.to_owned())
        .collect();
    assert_eq!(
        classified, contract,
        "classify every endpoint of the contract"
    );

    let mut refused = 0;
    for id in hostile_ids() {
        for (subject, bodies) in requests_with_id(&id) {
            for body in bodies {
                let answer = request(&w.client, &subject, &body).await?;
                assert_eq!(
                    code(&answer),
                    Some(BAD_REQUEST),
                    "{subject} with id {id:?} answered {answer:?}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(refused, hostile_ids().len() * 8);

    // The contract's own typed verdict on the placed orders: the id newtype refuses the
    // order id while parsing, validation names the customer id and the sku.
    for id in hostile_ids() {
        let mut bad_order = valid_order_json("o-1");
        bad_order["order_id"] = json!(id);
        let parsed = serde_json::from_value::<OrderPlaced>(bad_order);
        assert!(parsed.is_err(), "order id {id:?} parsed");
        let mut bad_customer = valid_order_json("o-1");
        bad_customer["customer_id"] = json!(id);
        let mut bad_sku = valid_order_json("o-1");
        bad_sku["lines"][0]["sku"] = json!(id);
        for (body, field) in [(bad_customer, "customer_id"), (bad_sku, "lines[0].sku")] {
            let placed: OrderPlaced = serde_json::from_value(body)?;
            let problems = placed.validate().expect_err("a hostile id is a problem");
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == field && p.code == ProblemCode::InvalidId),
                "{field} {id:?}: {problems:?}"
            );
        }
    }

    // Nothing was published, so no hostile id reached any subject.
    for stream in shop_harness::EVENT_STREAMS
        .iter()
        .chain([&DEADLETTER_STREAM])
    {
        assert_eq!(stream_message_count(&w.js, stream).await?, 0, "{stream}");
    }

    // The same endpoints do take the longest and oddest ids the contract allows: the
    // refusals above are about the characters, not about every request failing.
    let edge = format!("A-z_0{}", "9".repeat(59));
    assert_eq!(edge.len(), 64);
    for subject in [ORDERS_GET.subject, PAYMENTS_GET.subject] {
        let answer = request(&w.client, subject, &json!({ "order_id": edge })).await?;
        assert_eq!(code(&answer), Some(NOT_FOUND), "{subject}: {answer:?}");
    }
    let answer = request(&w.client, STOCK_GET.subject, &json!({ "sku": edge })).await?;
    assert_eq!(code(&answer), Some(NOT_FOUND), "{answer:?}");
    let answer = request(
        &w.client,
        STOCK_REPLENISH.subject,
        &json!({ "sku": edge, "quantity": 5 }),
    )
    .await?;
    assert_eq!(code(&answer), None, "{answer:?}");
    let answer = request(&w.client, ORDERS_PLACE.subject, &valid_order_json(&edge)).await?;
    assert_eq!(code(&answer), None, "{answer:?}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_dead_letter_endpoints_answer_400_to_a_sequence_that_is_not_a_number(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let bad_seqs = [
        json!("1.5"),
        json!("o.1"),
        json!(-1),
        json!(1.5),
        json!(null),
        json!(">"),
    ];
    for name in service::ALL {
        for seq in &bad_seqs {
            for (subject, body) in [
                (replay_subject(name), json!({ "seq": seq })),
                (
                    discard_subject(name),
                    json!({ "seq": seq, "reason": "hostile" }),
                ),
            ] {
                let answer = request(&w.client, &subject, &body).await?;
                assert_eq!(
                    code(&answer),
                    Some(BAD_REQUEST),
                    "{subject} {body}: {answer:?}"
                );
            }
        }
        let answer = request(&w.client, &list_subject(name), &json!({ "limit": "all" })).await?;
        assert_eq!(code(&answer), Some(BAD_REQUEST), "{name} list: {answer:?}");
    }
    w.shop.shutdown().await?;
    Ok(())
}

/// Raw CloudEvents JSON around `data`, keyed by `key`, as an upstream might send it.
fn raw_event(kind: EventKind, key: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("hostile-{}", uuid_like(key)),
        "source": "storefront",
        "type": kind.type_name(),
        "subject": key,
        "time": "2026-12-02T10:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// A printable, unique event id derived from arbitrary text.
fn uuid_like(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// `(stream, stream sequence, service)` of every dead letter in DEADLETTER.
async fn dead_letter_origins(
    js: &jetstream::Context,
) -> anyhow::Result<BTreeSet<(String, u64, String)>> {
    Ok(common::dead_letters(js)
        .await?
        .iter()
        .map(|message| {
            let header = |name| common::header(message, name).to_owned();
            (
                header(HDR_STREAM),
                header(HDR_SEQUENCE).parse().unwrap_or(0),
                header(HDR_SERVICE),
            )
        })
        .collect())
}

#[tokio::test]
async fn an_event_whose_data_carries_a_subject_breaking_id_is_dead_lettered_by_every_consumer(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let mut expected = BTreeSet::new();
    for (i, id) in hostile_ids().into_iter().enumerate() {
        // The subject itself is well formed: only the data carries the hostile id.
        let key = format!("k-{i}");
        let mut placed = valid_order_json("o-1");
        placed["order_id"] = json!(id);
        let cases = [
            (
                EventKind::OrderPlaced,
                placed,
                &[service::CHECKOUT, service::INVENTORY, service::PAYMENT][..],
            ),
            (
                EventKind::StockReplenished,
                json!({ "sku": id, "quantity": 5 }),
                &[service::INVENTORY][..],
            ),
        ];
        for (kind, data, consumers) in cases {
            let subject = event_subject(kind, &key);
            let payload =
                serde_json::to_vec(&raw_event(kind, &format!("{key}-{}", kind.name()), data))?;
            // The contract's typed verdict; the services must act on the same one.
            assert!(
                matches!(
                    shop_events::decode(&subject, &payload),
                    Err(DecodeError::InvalidData { .. })
                ),
                "{kind:?} with {id:?}"
            );
            let ack = publish_raw(&w.js, &subject, HeaderMap::new(), payload).await?;
            for service in consumers {
                expected.insert((ack.stream.clone(), ack.sequence, (*service).to_owned()));
            }
        }
    }
    let waited = eventually(
        SETTLE,
        "every hostile event to be dead-lettered",
        || async {
            let parked = dead_letter_origins(&w.js).await.ok()?;
            expected.is_subset(&parked).then_some(parked)
        },
    )
    .await;
    let parked = dead_letter_origins(&w.js).await?;
    let missing: Vec<_> = expected.difference(&parked).collect();
    let extra: Vec<_> = parked.difference(&expected).collect();
    assert!(
        waited.is_ok() && missing.is_empty() && extra.is_empty(),
        "missing dead letters {missing:?}, unexpected {extra:?}"
    );
    // No service reacted: the only events stored are the hostile ones.
    let published = hostile_ids().len() as u64;
    assert_eq!(stream_message_count(&w.js, ORDERS_STREAM).await?, published);
    assert_eq!(stream_message_count(&w.js, "INVENTORY").await?, published);
    assert_eq!(stream_message_count(&w.js, "PAYMENTS").await?, 0);
    w.shop.shutdown().await?;
    Ok(())
}

/// Every durable consumer of every event stream has nothing pending or unacknowledged,
/// whatever the consumers are called (one per service, or one per partition).
async fn consumers_caught_up(js: &jetstream::Context) -> Option<()> {
    for name in shop_harness::EVENT_STREAMS {
        let stream = js.get_stream(name).await.ok()?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
    }
    Some(())
}

#[tokio::test]
async fn an_order_with_a_line_break_in_its_traceparent_still_settles() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-h", 10).await?;
    wait_for_stock(&w.client, "sku-h", 10, 0, SETTLE).await?;
    let data = valid_order_json("o-trace");
    let mut event = raw_event(EventKind::OrderPlaced, "o-trace", data);
    event["traceparent"] =
        json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nNats-Msg-Id: forged");
    let subject = event_subject(EventKind::OrderPlaced, "o-trace");
    publish_raw(
        &w.js,
        &subject,
        HeaderMap::new(),
        serde_json::to_vec(&event)?,
    )
    .await?;
    // Whatever the contract decides (dead letter or accept with the header dropped), the
    // shop must keep going: a later order is confirmed and nothing stays pending.
    let next = order("o-after", &[("sku-h", 1, 100)], "tok_visa");
    shop_harness::scenario::place(&w.js, next).await?;
    wait_for_status(&w.client, "o-after", OrderStatus::Confirmed, SETTLE).await?;
    eventually(SETTLE, "every consumer to catch up", || {
        consumers_caught_up(&w.js)
    })
    .await?;
    w.shop.shutdown().await?;
    Ok(())
}

/// An order with `lines` copies of one broken line: every copy is a duplicate sku with a
/// quantity and a price out of range, so validation reports three problems per line.
fn order_with_broken_lines(order_id: &str, lines: usize) -> Value {
    let mut placed = valid_order_json(order_id);
    placed["lines"] = Value::Array(vec![
        json!({ "sku": "s", "quantity": 0, "unit_price": -1 });
        lines
    ]);
    placed["total"] = json!(0);
    placed
}

#[tokio::test]
async fn a_placed_order_whose_problems_quote_a_line_break_still_gets_its_400() -> anyhow::Result<()>
{
    let w = world(ShopConfig::in_process()).await?;
    let mut bad_currency = valid_order_json("o-1");
    bad_currency["currency"] = json!("E\nR");
    let mut duplicated_sku = valid_order_json("o-1");
    duplicated_sku["lines"] = json!([
        { "sku": "s\n1", "quantity": 1, "unit_price": 100 },
        { "sku": "s\n1", "quantity": 1, "unit_price": 100 },
    ]);
    duplicated_sku["total"] = json!(200);
    for body in [bad_currency, duplicated_sku] {
        let answer = request(&w.client, ORDERS_PLACE.subject, &body).await?;
        assert_eq!(code(&answer), Some(BAD_REQUEST), "{body}: {answer:?}");
    }
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn placing_an_order_with_thousands_of_bad_lines_through_checkout_answers_400(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let body = serde_json::to_vec(&order_with_broken_lines("o-many", 15_000))?;
    assert!(
        body.len() < 1_000_000,
        "the request itself fits in max_payload"
    );
    let answer = request_bytes(&w.client, ORDERS_PLACE.subject, body).await?;
    assert_eq!(code(&answer), Some(BAD_REQUEST));
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_order_event_with_thousands_of_bad_lines_is_rejected_and_the_shop_keeps_going(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-h", 10).await?;
    wait_for_stock(&w.client, "sku-h", 10, 0, SETTLE).await?;
    let data = order_with_broken_lines("o-many", 15_000);
    let event = raw_event(EventKind::OrderPlaced, "o-many", data);
    let payload = serde_json::to_vec(&event)?;
    assert!(
        payload.len() < 1_000_000,
        "the event itself fits in max_payload"
    );
    let subject = event_subject(EventKind::OrderPlaced, "o-many");
    publish_raw(&w.js, &subject, HeaderMap::new(), payload).await?;
    wait_for_status(&w.client, "o-many", OrderStatus::Rejected, SETTLE).await?;
    let next = order("o-after", &[("sku-h", 1, 100)], "tok_visa");
    shop_harness::scenario::place(&w.js, next).await?;
    wait_for_status(&w.client, "o-after", OrderStatus::Confirmed, SETTLE).await?;
    eventually(SETTLE, "every consumer to catch up", || {
        consumers_caught_up(&w.js)
    })
    .await?;
    w.shop.shutdown().await?;
    Ok(())
}

/// A well-formed event of `kind` about `order_id` that claims to come from `source`.
fn forged_event(kind: EventKind, order_id: &str, source: &str, data: Value) -> Value {
    let mut event = raw_event(kind, &format!("{order_id}-{}", kind.name()), data);
    event["subject"] = json!(order_id);
    event["source"] = json!(source);
    event
}

#[tokio::test]
async fn events_from_a_source_that_does_not_publish_them_are_dead_lettered_and_change_nothing(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-src", 5).await?;
    wait_for_stock(&w.client, "sku-src", 5, 0, SETTLE).await?;
    // Before the order is placed, a "storefront" announces its stock failed and its card
    // was charged. Accepted, the first would cancel the order when it arrives (checkout
    // remembers a failure that overtook its order) and the second would confirm it unpaid.
    let forgeries = [
        (
            EventKind::StockReservationFailed,
            json!({ "order_id": "o-src", "shortages": [{ "sku": "sku-src", "requested": 1, "available": 0 }] }),
        ),
        (
            EventKind::PaymentCaptured,
            json!({ "order_id": "o-src", "payment_id": "pay-forged", "amount": 100, "currency": "EUR" }),
        ),
    ];
    let mut expected = BTreeSet::new();
    for (kind, data) in forgeries {
        let event = forged_event(kind, "o-src", "storefront", data);
        let subject = event_subject(kind, "o-src");
        let payload = serde_json::to_vec(&event)?;
        let decoded = shop_events::decode(&subject, &payload)?;
        assert!(
            matches!(
                decoded.check_source(),
                Err(DecodeError::UnexpectedSource { .. })
            ),
            "{kind:?}"
        );
        let ack = publish_raw(&w.js, &subject, HeaderMap::new(), payload).await?;
        expected.insert((ack.stream, ack.sequence, service::CHECKOUT.to_owned()));
    }
    eventually(SETTLE, "both forgeries to be dead-lettered", || async {
        let parked = dead_letter_origins(&w.js).await.ok()?;
        expected.is_subset(&parked).then_some(())
    })
    .await?;
    let placed = order("o-src", &[("sku-src", 1, 100)], "tok_visa");
    shop_harness::scenario::place(&w.js, placed).await?;
    wait_for_status(&w.client, "o-src", OrderStatus::Confirmed, SETTLE).await?;
    assert_eq!(dead_letter_origins(&w.js).await?, expected);
    w.shop.shutdown().await?;
    Ok(())
}
