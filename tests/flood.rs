//! A flood of hostile input mixed with real orders (issue #13, "A flood"): 20,000 hostile
//! messages spread over every consumer subject and every endpoint, while 2,000 real
//! orders run through the saga, on a real nats-server with the services in-process.
//!
//! Afterwards every real order must have settled as its card and stock say, the audit must
//! be clean, every hostile message must be accounted for exactly (dead-lettered by each
//! service that consumes its subject, refused at publish, dropped as a duplicate by
//! JetStream or by a service's inbox, or answered with a 400), no service may have
//! restarted, and every consumer of every stream must have caught up.
//!
//! It takes a few minutes on two cores, so it is `#[ignore]`d: `make flood` runs it and
//! prints the figures (docs/RELIABILITY.md, "Flood").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use shop_events::api::checkout::{OrderStatus, ORDERS_PLACE};
use shop_events::api::deadletters::{
    discard_subject, list_subject, replay_subject, HDR_REASON, HDR_SEQUENCE, HDR_SERVICE,
    HDR_STREAM,
};
use shop_events::api::inventory::STOCK_REPLENISH;
use shop_events::api::{all_endpoints, service};
use shop_events::partition::{partition_consumer, PARTITIONS};
use shop_events::rights_names::consumed_domains;
use shop_events::subjects::{event_subject, DEADLETTER_STREAM};
use shop_events::{CancelReason, Envelope, EventKind};
use shop_harness::scenario::{order, order_status, place, replenish, wait_for_stock, STOREFRONT};
use shop_harness::{eventually, publish_raw, world, Service, ShopConfig};
use shop_ops::{audit, AuditOptions};

/// How many hostile messages in all: events on consumer subjects, then requests.
const HOSTILE_EVENTS: usize = 12_000;
const HOSTILE_REQUESTS: usize = 8_000;
/// How many real orders run through the saga meanwhile.
const REAL_ORDERS: usize = 2_000;
/// Skus the good orders buy from, each stocked for all of them.
const SKUS: usize = 10;
/// A sku nobody replenishes: orders for it are cancelled out of stock.
const EMPTY_SKU: &str = "fl-empty";
/// Bodies just under the server's 1 MB max_payload, and one just over it.
const HUGE: usize = 900_000;
const TOO_BIG: usize = 1_100_000;
/// Far deeper than serde_json's recursion limit (128).
const DEEP: usize = 5_000;
/// How long the flood may take to drain on two shared cores.
const DRAIN: Duration = Duration::from_secs(600);
/// One made-up attack in this many rounds is a huge body: they cost a megabyte each of
/// the test server's 1 GB store (and of traffic), and a few hundred prove the point.
const HUGE_EVERY: usize = 12;
/// How many requests are in flight at once.
const IN_FLIGHT: usize = 32;

/// What a real order must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Confirmed,
    Cancelled(CancelReason),
}

/// Which hostile event a message is; each is refused for a different reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EventAttack {
    MalformedJson,
    WrongTypes,
    DeeplyNested,
    Huge,
    TooBig,
    /// The subject's key is not the event's.
    SubjectKeyMismatch,
    /// The subject names another kind of event than the body.
    SubjectKindMismatch,
    UnknownMajorVersion,
    /// A well-formed event from a source that does not publish that kind.
    ForgedSource,
    /// A real event again with its `Nats-Msg-Id`: JetStream's duplicate window drops it.
    Duplicate,
    /// A real event again under a new `Nats-Msg-Id`: stored, and each consumer's inbox skips it.
    Replay,
}

impl EventAttack {
    /// The attacks made up from nothing, in the order they are spread over the subjects;
    /// duplicates and replays follow the real orders they copy.
    const MADE_UP: [EventAttack; 9] = [
        EventAttack::MalformedJson,
        EventAttack::WrongTypes,
        EventAttack::DeeplyNested,
        EventAttack::Huge,
        EventAttack::TooBig,
        EventAttack::SubjectKeyMismatch,
        EventAttack::SubjectKindMismatch,
        EventAttack::UnknownMajorVersion,
        EventAttack::ForgedSource,
    ];
}

/// Which hostile request a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum RequestAttack {
    MalformedJson,
    WrongTypes,
    SubjectBreakingId,
    DeeplyNested,
    Huge,
}

impl RequestAttack {
    const ALL: [RequestAttack; 5] = [
        RequestAttack::MalformedJson,
        RequestAttack::WrongTypes,
        RequestAttack::SubjectBreakingId,
        RequestAttack::DeeplyNested,
        RequestAttack::Huge,
    ];
}

/// Which services consume each event kind, read from the live consumers' filters, so the
/// count holds whatever the consumers are called (one per service, or one per partition).
/// `None` until every service has all its consumers on every stream it reads
/// (`rights_names::consumed_domains`): a partitioned service creates them as it claims
/// its partitions, after it answers PING.
async fn consumers_by_kind(
    js: &jetstream::Context,
) -> anyhow::Result<Option<BTreeMap<EventKind, BTreeSet<String>>>> {
    let mut by_kind: BTreeMap<EventKind, BTreeSet<String>> = BTreeMap::new();
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    for name in shop_harness::EVENT_STREAMS {
        let stream = js.get_stream(name).await?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info?;
            let owner = service::ALL
                .iter()
                .find(|s| info.name == **s || info.name.starts_with(&format!("{s}-")))
                .with_context(|| format!("consumer {} belongs to no service", info.name))?;
            names.insert((name.to_string(), info.name.clone()));
            let mut filters = info.config.filter_subjects.clone();
            filters.push(info.config.filter_subject.clone());
            for filter in filters.iter().filter(|f| !f.is_empty()) {
                let tokens: Vec<&str> = filter.split('.').collect();
                let kind = EventKind::ALL
                    .iter()
                    .copied()
                    .find(|k| {
                        tokens.get(1) == Some(&k.domain()) && tokens.get(2) == Some(&k.verb())
                    })
                    .with_context(|| format!("filter {filter} names no event kind"))?;
                by_kind.entry(kind).or_default().insert((*owner).to_owned());
            }
        }
    }
    for owner in service::ALL {
        for domain in consumed_domains(owner) {
            let has = |consumer: String| names.contains(&(domain.stream().to_owned(), consumer));
            let whole = has(partition_consumer(owner, None));
            let every_partition = (0..PARTITIONS).all(|p| has(partition_consumer(owner, Some(p))));
            if !whole && !every_partition {
                return Ok(None);
            }
        }
    }
    Ok(Some(by_kind))
}

/// Raw CloudEvents JSON of `kind` about `key`, with `data`, as any upstream could send.
fn raw_event(id: &str, source: &str, ty: &str, key: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": ty,
        "subject": key,
        "time": "2026-12-02T10:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// The sku made-up events name, apart from the real orders' skus, so whatever a forged
/// event does to stock shows up on it alone.
const HOSTILE_SKU: &str = "fl-hsku";

/// Well-formed data of `kind` about `key` (an order id, or a sku for replenishments).
fn sample_data(kind: EventKind, key: &str) -> Value {
    let lines = json!([{ "sku": HOSTILE_SKU, "quantity": 1 }]);
    match kind {
        EventKind::OrderPlaced => json!({
            "order_id": key, "customer_id": "c-1", "currency": "EUR",
            "lines": [{ "sku": HOSTILE_SKU, "quantity": 1, "unit_price": 100 }],
            "total": 100, "payment_token": "tok_visa",
        }),
        EventKind::OrderRejected => json!({ "order_id": key, "problems": [] }),
        EventKind::OrderConfirmed => json!({ "order_id": key, "total": 100, "currency": "EUR" }),
        EventKind::OrderCancelled => json!({ "order_id": key, "reason": "timeout" }),
        EventKind::OrderCancellationRequested => json!({ "order_id": key, "reason": "x" }),
        EventKind::StockReserved | EventKind::StockReleased | EventKind::StockCommitted => {
            json!({ "order_id": key, "lines": lines })
        }
        EventKind::StockReservationFailed => json!({
            "order_id": key,
            "shortages": [{ "sku": HOSTILE_SKU, "requested": 1, "available": 0 }],
        }),
        EventKind::StockReplenished => json!({ "sku": key, "quantity": 1 }),
        EventKind::PaymentCaptured | EventKind::PaymentRefunded => json!({
            "order_id": key, "payment_id": "pay-forged", "amount": 100, "currency": "EUR",
        }),
        EventKind::PaymentDeclined => {
            json!({ "order_id": key, "reason": "card_declined", "amount": 100 })
        }
    }
}

/// The source that really publishes `kind`; a forged event names another.
fn forged_source(kind: EventKind) -> &'static str {
    match kind.domain() {
        "payments" => STOREFRONT,
        _ => "mallory",
    }
}

/// The hostile message `attack` on `kind`'s subject, numbered `n`: (subject, headers, body).
fn hostile_event(attack: EventAttack, kind: EventKind, n: usize) -> (String, HeaderMap, Vec<u8>) {
    let key = format!("fl-h{n}");
    let id = format!("fl-hostile-{n}");
    let ty = kind.type_name();
    let subject = event_subject(kind, &key);
    let body = match attack {
        EventAttack::MalformedJson => {
            format!("{{\"specversion\":\"1.0\",\"id\":\"{id}\",").into_bytes()
        }
        EventAttack::WrongTypes => {
            let mut data = sample_data(kind, &key);
            for value in data
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                // Every field the wrong type: strings become numbers, the rest strings.
                *value = if value.is_string() {
                    json!(42)
                } else {
                    json!("forty-two")
                };
            }
            serde_json::to_vec(&raw_event(&id, "storefront", &ty, &key, data)).unwrap_or_default()
        }
        EventAttack::DeeplyNested => {
            let mut text =
                serde_json::to_string(&raw_event(&id, "storefront", &ty, &key, json!(0)))
                    .unwrap_or_default();
            let nested = format!("{}0{}", "[".repeat(DEEP), "]".repeat(DEEP));
            text = text.replace("\"data\":0", &format!("\"data\":{nested}"));
            text.into_bytes()
        }
        EventAttack::Huge | EventAttack::TooBig => {
            let size = if attack == EventAttack::Huge {
                HUGE
            } else {
                TOO_BIG
            };
            // An event id far beyond the 128 characters allowed.
            let long_id = "x".repeat(size);
            serde_json::to_vec(&raw_event(
                &long_id,
                "storefront",
                &ty,
                &key,
                sample_data(kind, &key),
            ))
            .unwrap_or_default()
        }
        EventAttack::SubjectKeyMismatch => {
            let other = format!("fl-other-{n}");
            serde_json::to_vec(&raw_event(
                &id,
                "storefront",
                &ty,
                &key,
                sample_data(kind, &other),
            ))
            .unwrap_or_default()
        }
        EventAttack::SubjectKindMismatch => {
            // A well-formed event of another kind, on this kind's subject.
            let other = EventKind::ALL
                .iter()
                .copied()
                .find(|k| *k != kind && !k.keyed_by_sku())
                .unwrap_or(EventKind::OrderRejected);
            serde_json::to_vec(&raw_event(
                &id,
                "storefront",
                &other.type_name(),
                &key,
                sample_data(other, &key),
            ))
            .unwrap_or_default()
        }
        EventAttack::UnknownMajorVersion => {
            let ty = format!("shop.{}.v9", kind.name());
            serde_json::to_vec(&raw_event(
                &id,
                "storefront",
                &ty,
                &key,
                sample_data(kind, &key),
            ))
            .unwrap_or_default()
        }
        EventAttack::ForgedSource => serde_json::to_vec(&raw_event(
            &id,
            forged_source(kind),
            &ty,
            &key,
            sample_data(kind, &key),
        ))
        .unwrap_or_default(),
        EventAttack::Duplicate | EventAttack::Replay => Vec::new(),
    };
    (subject, HeaderMap::new(), body)
}

/// A request body for `attack` on `subject`; `None` when the attack does not apply
/// (an endpoint whose request names no id).
fn hostile_request(attack: RequestAttack, subject: &str, n: usize) -> Option<Vec<u8>> {
    let bytes = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    // The field that carries an id, for the endpoints that take one.
    let id_field = if subject == ORDERS_PLACE.subject
        || subject.ends_with(".orders.get")
        || subject.ends_with(".orders.cancel")
        || subject.ends_with(".payments.get")
    {
        Some("order_id")
    } else if subject.ends_with(".stock.get") || subject == STOCK_REPLENISH.subject {
        Some("sku")
    } else {
        None
    };
    Some(match attack {
        RequestAttack::MalformedJson => format!("{{\"order_id\":\"o-{n}\",").into_bytes(),
        RequestAttack::WrongTypes => bytes(json!({
            "order_id": n, "sku": [n], "quantity": "many", "limit": "all",
            "status": 7, "seq": "first", "reason": {}, "lines": "none",
        })),
        RequestAttack::SubjectBreakingId => {
            let field = id_field?;
            let ids = ["o.1", "*", ">", "o 1", "o\n1", "ö-1", "o.>"];
            let mut body = if subject == ORDERS_PLACE.subject {
                serde_json::to_value(order("fl-x", &[("fl-sku-0", 1, 100)], "tok_visa")).ok()?
            } else {
                json!({ "quantity": 1, "reason": "x" })
            };
            body[field] = json!(format!("{}{n}", ids[n % ids.len()]));
            bytes(body)
        }
        RequestAttack::DeeplyNested => {
            // In every field an endpoint reads, so none can skip it as an unknown field.
            let nested = format!("{}0{}", "[".repeat(DEEP), "]".repeat(DEEP));
            let fields = ["order_id", "sku", "limit", "seq", "status"];
            let body: Vec<String> = fields.iter().map(|f| format!("\"{f}\":{nested}")).collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }
        RequestAttack::Huge => bytes(json!({
            "order_id": n, "sku": n, "seq": "x", "limit": "all", "pad": "x".repeat(HUGE),
        })),
    })
}

/// Every endpoint of every service: the contract's, and the dead-letter ones each serves.
fn every_endpoint() -> Vec<String> {
    let mut subjects: Vec<String> = all_endpoints()
        .iter()
        .map(|e| e.subject.to_owned())
        .collect();
    for name in service::ALL {
        subjects.extend([
            list_subject(name),
            replay_subject(name),
            discard_subject(name),
        ]);
    }
    subjects
}

/// What a request came to: the service error code, or `None` for a success.
async fn request_code(
    client: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
) -> anyhow::Result<Option<u16>> {
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(subject.to_owned(), body.into()),
    )
    .await
    .with_context(|| format!("{subject} did not answer"))??;
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().parse::<u16>())
        .transpose()?;
    Ok(code)
}

/// `(stream, stream sequence, service)` → reason of every dead letter, read in one pass.
async fn dead_letters(
    js: &jetstream::Context,
) -> anyhow::Result<BTreeMap<(String, u64, String), String>> {
    let stream = js.get_stream(DEADLETTER_STREAM).await?;
    let total = stream.get_info().await?.state.messages;
    let mut out = BTreeMap::new();
    if total == 0 {
        return Ok(out);
    }
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = reader.messages().await?;
    let mut read = 0;
    while read < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading DEADLETTER stalled")?
            .context("DEADLETTER reader ended")??;
        read += 1;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.insert(
            (
                header(HDR_STREAM),
                header(HDR_SEQUENCE).parse().unwrap_or(0),
                header(HDR_SERVICE),
            ),
            header(HDR_REASON),
        );
    }
    Ok(out)
}

/// Σ pending and Σ awaiting-ack over every consumer of every event stream.
async fn lag(js: &jetstream::Context) -> anyhow::Result<(u64, u64, usize)> {
    let (mut pending, mut unacked, mut consumers_seen) = (0, 0, 0);
    for name in shop_harness::EVENT_STREAMS {
        let stream = js.get_stream(name).await?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info?;
            pending += info.num_pending;
            unacked += info.num_ack_pending as u64;
            consumers_seen += 1;
        }
    }
    Ok((pending, unacked, consumers_seen))
}

/// One STATS counter summed over the three services.
async fn counter_sum(client: &async_nats::Client, name: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for service in Service::ALL {
        let subject = format!("$SRV.STATS.{}", service.name());
        let reply = client.request(subject.clone(), "".into()).await?;
        let stats: Value = serde_json::from_slice(&reply.payload)?;
        total += stats["endpoints"][0]["data"][name]
            .as_u64()
            .with_context(|| format!("{service} STATS has no {name}: {stats}"))?;
    }
    Ok(total)
}

#[tokio::test]
#[ignore = "a few minutes on two cores: run with `make flood`"]
async fn a_flood_of_hostile_input_is_accounted_for_and_real_orders_settle() -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = Duration::from_secs(300);
    let w = world(ShopConfig::in_process().order_deadline(deadline)).await?;
    let by_kind = eventually(
        Duration::from_secs(60),
        "every consumer to exist",
        || async { consumers_by_kind(&w.js).await.ok().flatten() },
    )
    .await?;
    let consumed: Vec<EventKind> = by_kind.keys().copied().collect();
    assert!(!consumed.is_empty(), "no consumer found");

    for i in 0..SKUS {
        replenish(&w.js, &format!("fl-sku-{i}"), REAL_ORDERS as u32).await?;
    }
    for i in 0..SKUS {
        wait_for_stock(
            &w.client,
            &format!("fl-sku-{i}"),
            REAL_ORDERS as i64,
            0,
            Duration::from_secs(30),
        )
        .await?;
    }

    // What each hostile message must come to, filled as they are sent.
    let mut expected_dead: BTreeMap<(String, u64, String), EventAttack> = BTreeMap::new();
    let mut sent_events: BTreeMap<EventAttack, u64> = BTreeMap::new();
    let mut refused_at_publish: BTreeMap<EventAttack, u64> = BTreeMap::new();
    let mut broker_duplicates = 0u64;
    let mut expected_inbox_duplicates = 0u64;
    let mut expected_orders: BTreeMap<String, Expect> = BTreeMap::new();
    let duplicates_before = counter_sum(&w.client, "events_duplicate").await?;

    // The real orders, each followed in turn by a duplicate or a replay of its event, and
    // the made-up hostile events spread evenly between them.
    let made_up = HOSTILE_EVENTS - REAL_ORDERS;
    let hostile_per_order = made_up / REAL_ORDERS;
    let placed_consumers = by_kind
        .get(&EventKind::OrderPlaced)
        .map(BTreeSet::len)
        .unwrap_or(0) as u64;
    let mut n = 0usize;
    let send_events = async {
        for i in 0..REAL_ORDERS {
            let order_id = format!("fl-o{i}");
            let (sku, token, expect) = match i % 10 {
                8 => (
                    "fl-sku-1".to_owned(),
                    "tok_chargeDeclined",
                    Expect::Cancelled(CancelReason::PaymentDeclined),
                ),
                9 => (
                    EMPTY_SKU.to_owned(),
                    "tok_visa",
                    Expect::Cancelled(CancelReason::OutOfStock),
                ),
                _ => (
                    format!("fl-sku-{}", i % SKUS),
                    "tok_visa",
                    Expect::Confirmed,
                ),
            };
            let envelope: Envelope =
                place(&w.js, order(&order_id, &[(&sku, 1, 250)], token)).await?;
            expected_orders.insert(order_id, expect);
            let subject = envelope.subject();
            let payload = envelope.to_json();
            if i % 2 == 0 {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", envelope.meta.id.as_str());
                let ack = publish_raw(&w.js, &subject, headers, payload).await?;
                anyhow::ensure!(ack.duplicate, "a duplicate within the window was stored");
                broker_duplicates += 1;
                *sent_events.entry(EventAttack::Duplicate).or_default() += 1;
            } else {
                publish_raw(&w.js, &subject, HeaderMap::new(), payload).await?;
                expected_inbox_duplicates += placed_consumers;
                *sent_events.entry(EventAttack::Replay).or_default() += 1;
            }
            for _ in 0..hostile_per_order {
                let round = n / EventAttack::MADE_UP.len();
                let attack = match EventAttack::MADE_UP[n % EventAttack::MADE_UP.len()] {
                    EventAttack::Huge if !round.is_multiple_of(HUGE_EVERY) => {
                        EventAttack::WrongTypes
                    }
                    EventAttack::TooBig if !round.is_multiple_of(HUGE_EVERY) => {
                        EventAttack::DeeplyNested
                    }
                    attack => attack,
                };
                let kind = consumed[round % consumed.len()];
                let (subject, headers, body) = hostile_event(attack, kind, n);
                n += 1;
                *sent_events.entry(attack).or_default() += 1;
                match publish_raw(&w.js, &subject, headers, body).await {
                    Ok(ack) => {
                        for service in by_kind.get(&kind).into_iter().flatten() {
                            expected_dead.insert(
                                (ack.stream.clone(), ack.sequence, service.clone()),
                                attack,
                            );
                        }
                    }
                    Err(_) if attack == EventAttack::TooBig => {
                        *refused_at_publish.entry(attack).or_default() += 1;
                    }
                    Err(e) => {
                        return Err(
                            anyhow::Error::from(e).context(format!("{attack:?} on {subject}"))
                        )
                    }
                }
            }
        }
        anyhow::Ok(())
    };

    // The hostile requests, every attack on every endpoint in turn, a few in flight.
    let endpoints = every_endpoint();
    let answers: BTreeMap<(RequestAttack, &'static str), AtomicU64> = RequestAttack::ALL
        .iter()
        .flat_map(|a| ["400", "other"].map(|o| ((*a, o), AtomicU64::new(0))))
        .collect();
    let mut plan = Vec::with_capacity(HOSTILE_REQUESTS);
    let mut k = 0usize;
    while plan.len() < HOSTILE_REQUESTS {
        let subject = &endpoints[k % endpoints.len()];
        let round = k / endpoints.len();
        let attack = match RequestAttack::ALL[round % RequestAttack::ALL.len()] {
            RequestAttack::Huge if round % HUGE_EVERY != RequestAttack::ALL.len() - 1 => {
                RequestAttack::WrongTypes
            }
            attack => attack,
        };
        if let Some(body) = hostile_request(attack, subject, k) {
            plan.push((attack, subject.clone(), body));
        }
        k += 1;
    }
    let mut wrong_answers: Vec<String> = Vec::new();
    let send_requests = async {
        let results: Vec<anyhow::Result<(RequestAttack, String, Option<u16>)>> = stream::iter(plan)
            .map(|(attack, subject, body)| {
                let client = w.client.clone();
                async move {
                    let code = request_code(&client, &subject, body).await?;
                    Ok((attack, subject, code))
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for result in results {
            let (attack, subject, code) = result?;
            let outcome = match code {
                Some(400) => "400",
                _ => {
                    wrong_answers.push(format!("{attack:?} on {subject} answered {code:?}"));
                    "other"
                }
            };
            if let Some(count) = answers.get(&(attack, outcome)) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    };
    let (events, requests) = tokio::join!(send_events, send_requests);
    events?;
    requests?;
    let sent_at = started.elapsed();

    // Every real order settles as its card and stock say.
    let mut unsettled: BTreeSet<String> = expected_orders.keys().cloned().collect();
    let mut wrong_outcomes = Vec::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let settle_started = Instant::now();
    while !unsettled.is_empty() {
        anyhow::ensure!(
            settle_started.elapsed() < DRAIN,
            "{} orders never settled, e.g. {:?}",
            unsettled.len(),
            unsettled.first()
        );
        let mut still = BTreeSet::new();
        for order_id in &unsettled {
            let Some(view) = order_status(&w.client, order_id).await? else {
                still.insert(order_id.clone());
                continue;
            };
            let got = match (view.status, view.reason) {
                (OrderStatus::Pending, _) => {
                    still.insert(order_id.clone());
                    continue;
                }
                (OrderStatus::Confirmed, _) => Expect::Confirmed,
                (OrderStatus::Cancelled, Some(reason)) => Expect::Cancelled(reason),
                (status, reason) => {
                    wrong_outcomes.push(format!("{order_id}: {status:?} {reason:?}"));
                    continue;
                }
            };
            *outcomes.entry(format!("{got:?}")).or_default() += 1;
            if expected_orders.get(order_id) != Some(&got) {
                wrong_outcomes.push(format!(
                    "{order_id}: expected {:?}, got {got:?}",
                    expected_orders.get(order_id)
                ));
            }
        }
        if !still.is_empty() {
            // Polling with a pause, not a fixed wait for an outcome: the loop ends on state.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        unsettled = still;
    }
    let settled_at = started.elapsed();

    // Consumer lag back to zero over every consumer of every stream.
    let (lag_pending, lag_unacked, consumer_count) =
        eventually(DRAIN, "consumer lag to return to 0", || async {
            let (pending, unacked, consumers) = lag(&w.js).await.ok()?;
            (pending == 0 && unacked == 0).then_some((pending, unacked, consumers))
        })
        .await?;
    let drained_at = started.elapsed();

    // Every hostile event dead-lettered by each service that consumes its subject.
    let parked = eventually(
        Duration::from_secs(60),
        "every hostile event to be dead-lettered",
        || async {
            let parked = dead_letters(&w.js).await.ok()?;
            expected_dead
                .keys()
                .all(|k| parked.contains_key(k))
                .then_some(parked)
        },
    )
    .await;
    let parked = match parked {
        Ok(parked) => parked,
        Err(_) => dead_letters(&w.js).await?,
    };
    let mut dead_by_attack: BTreeMap<EventAttack, u64> = BTreeMap::new();
    let mut missing_dead: BTreeMap<EventAttack, u64> = BTreeMap::new();
    for (origin, attack) in &expected_dead {
        match parked.get(origin) {
            Some(reason) if !reason.is_empty() => *dead_by_attack.entry(*attack).or_default() += 1,
            _ => *missing_dead.entry(*attack).or_default() += 1,
        }
    }
    let unexpected_dead: Vec<_> = parked
        .keys()
        .filter(|k| !expected_dead.contains_key(k))
        .collect();
    let inbox_duplicates = counter_sum(&w.client, "events_duplicate").await? - duplicates_before;
    let redelivered = counter_sum(&w.client, "events_redelivered").await?;

    let report = audit(
        &w.client,
        AuditOptions {
            order_deadline: deadline,
            grace: Duration::from_secs(10),
        },
        &mut std::io::sink(),
    )
    .await?;
    let restarts: Vec<_> = w.shop.starts().iter().filter(|(_, n)| **n != 1).collect();
    let all_running = Service::ALL.iter().all(|s| w.shop.is_running(*s));

    println!("flood figures:");
    println!(
        "  sent in {sent_at:.1?}, orders settled at {settled_at:.1?}, lag 0 at {drained_at:.1?}"
    );
    println!("  real orders {}: {outcomes:?}", expected_orders.len());
    println!(
        "  hostile events sent {}: {sent_events:?}",
        sent_events.values().sum::<u64>()
    );
    println!("  dead letters expected {} (messages × consuming services), parked {} per attack: {dead_by_attack:?}", expected_dead.len(), parked.len());
    println!(
        "  missing dead letters per attack: {missing_dead:?}; unexpected dead letters: {}",
        unexpected_dead.len()
    );
    println!(
        "  refused at publish: {refused_at_publish:?}; JetStream duplicates: {broker_duplicates}"
    );
    println!("  inbox duplicates: {inbox_duplicates} (expected {expected_inbox_duplicates}), redelivered {redelivered}");
    let answered: BTreeMap<_, _> = answers
        .iter()
        .map(|(k, v)| (*k, v.load(Ordering::Relaxed)))
        .filter(|(_, v)| *v > 0)
        .collect();
    println!(
        "  hostile requests sent {}: {answered:?}",
        answered.values().sum::<u64>()
    );
    println!("  consumers {consumer_count}, pending {lag_pending}, unacked {lag_unacked}; audit: {:?}; violations {}", report.counts, report.violations.len());

    let mut failures = Vec::new();
    if !wrong_outcomes.is_empty() {
        failures.push(format!("orders settled wrongly: {wrong_outcomes:?}"));
    }
    if !missing_dead.is_empty() {
        failures.push(format!(
            "hostile events not dead-lettered: {missing_dead:?}"
        ));
    }
    if !unexpected_dead.is_empty() {
        failures.push(format!(
            "dead letters of no hostile event: {:?}",
            &unexpected_dead[..unexpected_dead.len().min(5)]
        ));
    }
    let accounted_events = (expected_dead
        .keys()
        .map(|(s, q, _)| (s, q))
        .collect::<BTreeSet<_>>()
        .len() as u64)
        + refused_at_publish.values().sum::<u64>()
        + broker_duplicates
        + sent_events.get(&EventAttack::Replay).copied().unwrap_or(0);
    if accounted_events != sent_events.values().sum::<u64>() {
        failures.push(format!(
            "hostile events accounted {accounted_events} of {}",
            sent_events.values().sum::<u64>()
        ));
    }
    // A late ack makes a legitimate redelivery the inbox also skips; none is expected here.
    if inbox_duplicates != expected_inbox_duplicates {
        failures.push(format!("inbox duplicates {inbox_duplicates}, expected {expected_inbox_duplicates} (redelivered {redelivered})"));
    }
    if !wrong_answers.is_empty() {
        failures.push(format!(
            "{} requests not answered 400: {:?}",
            wrong_answers.len(),
            &wrong_answers[..wrong_answers.len().min(10)]
        ));
    }
    if answered.values().sum::<u64>() != HOSTILE_REQUESTS as u64 {
        failures.push("hostile requests unaccounted for".to_owned());
    }
    // Forged events are about keys of their own (`fl-h…`), so what they cause is told
    // apart from what happened to the real orders and skus.
    let (forged, real): (Vec<_>, Vec<_>) = report
        .violations
        .iter()
        .partition(|v| v.subject.starts_with("fl-h"));
    if !real.is_empty() {
        failures.push(format!(
            "audit violations about real orders: {:?}",
            &real[..real.len().min(10)]
        ));
    }
    if !forged.is_empty() {
        let rules: BTreeSet<_> = forged.iter().map(|v| v.rule).collect();
        failures.push(format!(
            "{} audit violations caused by accepted forged events: {rules:?}",
            forged.len()
        ));
    }
    if !restarts.is_empty() || !all_running {
        failures.push(format!(
            "services restarted or stopped: {restarts:?}, all running {all_running}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    w.shop.shutdown().await?;
    Ok(())
}
