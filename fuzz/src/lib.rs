//! What every shop fuzz target checks, shared so each target is one line: the entry
//! points a hostile client reaches (an event's envelope, each event kind's data, each
//! micro endpoint's request), driven exactly as the services drive them, with the
//! properties that must hold for whatever bytes arrive.
//!
//! A target fails (and libFuzzer keeps the input) on a panic anywhere in the contract,
//! or when an assertion below does not hold: an id that reaches a subject must be a
//! single safe token, what the shop accepts it must be able to write and read back
//! unchanged, and an order that passes validation must really follow the rules.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shop_events::api::checkout::{CancelRequest, ListRequest as OrderListRequest};
use shop_events::api::deadletters::{
    DiscardRequest, ListRequest as DeadLetterListRequest, ReplayRequest, MAX_LIST_LIMIT,
};
use shop_events::api::inventory::{ReplenishRequest, SkuRef, MAX_REPLENISH};
use shop_events::api::OrderRef;
use shop_events::envelope::MAX_EVENT_ID_LEN;
use shop_events::ids::MAX_ID_LEN;
use shop_events::subjects::parse_event_subject;
use shop_events::validation::{MAX_LINES, MAX_PAYMENT_TOKEN_LEN, MAX_QUANTITY};
use shop_events::{decode, Event, OrderId, OrderPlaced, Sku};

/// The subject rule, restated independently of `ids::check_token`: a token that reaches a
/// subject is non-empty, at most 64 bytes, and holds no `.`, `*`, `>`, whitespace,
/// control or non-ASCII character (any of them would split the subject or make it a
/// wildcard, so a message could land on, or be read from, another order's subject).
pub fn assert_subject_token(token: &str) {
    assert!(!token.is_empty(), "empty token reached a subject");
    assert!(
        token.len() <= MAX_ID_LEN,
        "token longer than {MAX_ID_LEN}: {token:?}"
    );
    for c in token.chars() {
        assert!(
            c.is_ascii() && c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>'),
            "unsafe character {c:?} in subject token {token:?}"
        );
    }
}

/// The consumer's entry point: `shop_events::decode(subject, payload)`, which
/// `shop_shell::decode_incoming` calls for every consumed message. The input is the
/// subject, a newline, then the payload, so the fuzzer mutates both.
pub fn decode_envelope(data: &[u8]) {
    let (subject, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    // NATS hands the consumer its subject as a `&str`; other bytes never arrive.
    let Ok(subject) = std::str::from_utf8(subject) else {
        return;
    };
    let Ok(envelope) = decode(subject, payload) else {
        return;
    };
    let key = envelope.event.key();
    assert_subject_token(key);
    let published = envelope.subject();
    assert_eq!(published.split('.').count(), 4, "{published}");
    assert_eq!(
        parse_event_subject(&published),
        Some((envelope.kind(), key)),
        "the subject an accepted event is republished on parses back to it"
    );
    // The id becomes `Nats-Msg-Id` and an inbox key: one printable line.
    assert!(envelope.meta.id.len() <= MAX_EVENT_ID_LEN);
    assert!(envelope.meta.id.bytes().all(|b| b.is_ascii_graphic()));
    #[cfg(feature = "header-values")]
    if let Some(traceparent) = &envelope.meta.traceparent {
        // Reactions carry the traceparent as a NATS header, whose values async-nats
        // refuses (with a panic) when they hold a line break.
        assert!(
            !traceparent.contains(['\r', '\n']),
            "a traceparent with a line break was accepted: {traceparent:?}"
        );
    }
    // What a service publishes from an accepted event, the next service accepts as is.
    let again = decode(&published, &envelope.to_json())
        .unwrap_or_else(|e| panic!("an accepted event does not decode after encoding: {e}"));
    assert_eq!(again, envelope);
}

/// One event kind's data, parsed the way `decode` parses it (JSON to a value, then the
/// typed data with its id newtypes); `OrderPlaced` is validated as every service does.
pub fn validate_event<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + Into<Event>,
{
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(typed) = serde_json::from_value::<T>(value) else {
        return;
    };
    let event: Event = typed.into();
    assert_subject_token(event.key());
    // What the shop writes it reads back unchanged.
    let written = event.data_json();
    let back: T = serde_json::from_value(written).unwrap_or_else(|e| {
        panic!(
            "accepted {} data does not read back: {e}",
            event.kind().name()
        )
    });
    assert_eq!(back.into(), event);
    if let Event::OrderPlaced(placed) = &event {
        check_order(placed);
    }
}

/// `OrderPlaced::validate`: an order it accepts follows every rule, one it refuses says why.
pub fn check_order(placed: &OrderPlaced) {
    match placed.validate() {
        Ok(valid) => {
            assert_subject_token(valid.order_id.as_str());
            assert_subject_token(valid.customer_id.as_str());
            assert!(valid
                .currency
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase()));
            assert!(!valid.lines.is_empty() && valid.lines.len() <= MAX_LINES);
            assert_eq!(valid.lines.len(), placed.lines.len(), "a line was dropped");
            let mut skus = std::collections::HashSet::new();
            let mut sum: i64 = 0;
            for line in &valid.lines {
                assert_subject_token(line.sku.as_str());
                assert!(skus.insert(line.sku.as_str()), "duplicate sku accepted");
                assert!((1..=MAX_QUANTITY).contains(&i64::from(line.quantity)));
                assert!(line.unit_price.minor_units() >= 0);
                sum = i64::from(line.quantity)
                    .checked_mul(line.unit_price.minor_units())
                    .and_then(|x| sum.checked_add(x))
                    .expect("an accepted order's total overflows");
            }
            assert_eq!(sum, valid.total.minor_units(), "total does not add up");
            assert!(!valid.payment_token.trim().is_empty());
            assert!(valid.payment_token.len() <= MAX_PAYMENT_TOKEN_LEN);
        }
        Err(problems) => assert!(!problems.is_empty(), "refused without a problem"),
    }
}

/// A request body as every endpoint reads it: `shop_runtime::micro::parse_request`
/// treats an all-whitespace body as `{}`, then parses JSON into the request type.
/// (Restated here so the fuzz build does not instrument the runtime's NATS client,
/// sled and tokio; the two lines are all there is to it.)
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).ok()
}

/// `checkout.orders.place`: the body is an `OrderPlaced`, then validated.
pub fn request_orders_place(body: &[u8]) {
    if let Some(placed) = parse_request::<OrderPlaced>(body) {
        assert_subject_token(placed.order_id.as_str());
        check_order(&placed);
    }
}

/// The id check of every endpoint that names an order (`checkout.orders.get`,
/// `checkout.orders.cancel`, `payment.payments.get`): what passes is a safe token.
fn check_order_id(text: String) {
    if let Ok(order_id) = OrderId::parse(text) {
        assert_subject_token(order_id.as_str());
    }
}

/// `checkout.orders.get` and `payment.payments.get`: an `OrderRef`.
pub fn request_order_ref(body: &[u8]) {
    if let Some(request) = parse_request::<OrderRef>(body) {
        check_order_id(request.order_id);
    }
}

/// `checkout.orders.cancel`: a `CancelRequest`.
pub fn request_orders_cancel(body: &[u8]) {
    if let Some(request) = parse_request::<CancelRequest>(body) {
        check_order_id(request.order_id);
    }
}

/// `checkout.orders.list`: a `ListRequest` (status and limit).
pub fn request_orders_list(body: &[u8]) {
    if let Some(request) = parse_request::<OrderListRequest>(body) {
        // The reply is serialised with the status the request names.
        if let Some(status) = request.status {
            assert!(!status.as_str().is_empty());
        }
    }
}

/// `inventory.stock.get`: a `SkuRef`.
pub fn request_stock_get(body: &[u8]) {
    if let Some(request) = parse_request::<SkuRef>(body) {
        if let Ok(sku) = Sku::parse(request.sku) {
            assert_subject_token(sku.as_str());
        }
    }
}

/// `inventory.stock.replenish`: a `ReplenishRequest`; the sku becomes the subject of the
/// `StockReplenished` it publishes, the quantity a `u32` once in range.
pub fn request_stock_replenish(body: &[u8]) {
    if let Some(request) = parse_request::<ReplenishRequest>(body) {
        if let Ok(sku) = Sku::parse(request.sku) {
            assert_subject_token(sku.as_str());
        }
        if (1..=i64::from(MAX_REPLENISH)).contains(&request.quantity) {
            assert!(u32::try_from(request.quantity).is_ok());
        }
    }
}

/// `<service>.deadletters.list`: the limit is capped whatever is asked.
pub fn request_deadletters_list(body: &[u8]) {
    if let Some(request) = parse_request::<DeadLetterListRequest>(body) {
        assert!(request.effective_limit() <= MAX_LIST_LIMIT);
    }
}

/// `<service>.deadletters.replay`: a `ReplayRequest`.
pub fn request_deadletters_replay(body: &[u8]) {
    let _ = parse_request::<ReplayRequest>(body);
}

/// `<service>.deadletters.discard`: a `DiscardRequest`.
pub fn request_deadletters_discard(body: &[u8]) {
    let _ = parse_request::<DiscardRequest>(body);
}
