//! Every subject and stream name of the shop is built here and nowhere else.
//!
//! Event subjects are `events.<domain>.<verb>.<key>`; the key (order id or sku)
//! is always a valid token because ids are restricted to `[A-Za-z0-9_-]`.
//!
//! Producers publish to those four-token subjects. Each event stream *stores* them with
//! a fifth token, the key's partition (`events.orders.placed.o-1.12`), added by the
//! stream's subject transform with nats-server's `partition(n, token)` function, so a
//! service instance can consume exactly the partitions it owns (see
//! [`crate::partition`]). Consumers accept both forms.

use std::time::Duration;

use crate::events::{Event, EventKind};
use crate::partition::{partition_of_key, PARTITIONS};
pub use crate::stream::{
    Domain, DEADLETTER_STREAM, EVENT_STREAMS, INVENTORY_STREAM, ORDERS_STREAM, PAYMENTS_STREAM,
};

/// How a stream is configured, as plain data; the runtime turns it into a JetStream config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: &'static str,
    pub subjects: Vec<String>,
    pub description: &'static str,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    /// A subject transform applied as messages are stored: (source, destination).
    pub subject_transform: Option<(String, String)>,
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The event streams plus the dead-letter stream. `event_max_age` defaults to 7 days.
pub fn stream_specs(event_max_age: Duration) -> Vec<StreamSpec> {
    let mut specs: Vec<StreamSpec> = Domain::ALL
        .iter()
        .map(|d| StreamSpec {
            name: d.stream(),
            subjects: vec![d.wildcard()],
            description: match d {
                Domain::Orders => "Order lifecycle events (checkout and upstream storefronts)",
                Domain::Inventory => "Stock reservation, release, sale and replenishment events",
                Domain::Payments => "Payment capture, decline and refund events",
            },
            max_age: event_max_age,
            duplicate_window: Duration::from_secs(120),
            subject_transform: Some(partition_transform(*d)),
        })
        .collect();
    specs.push(StreamSpec {
        name: DEADLETTER_STREAM,
        subjects: vec!["deadletter.>".to_owned()],
        description: "Events a service could not process, with reason, origin and original bytes",
        max_age: 30 * DAY,
        duplicate_window: Duration::from_secs(120),
        subject_transform: None,
    });
    specs
}

/// Default retention of the event streams.
pub const DEFAULT_EVENT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// `events.<domain>.<verb>.<key>`.
pub fn event_subject(kind: EventKind, key: &str) -> String {
    format!("events.{}.{}.{}", kind.domain(), kind.verb(), key)
}

impl Event {
    /// The full NATS subject this event is published on.
    pub fn subject(&self) -> String {
        event_subject(self.kind(), self.key())
    }
}

/// The stream's subject transform for `domain`: `events.<domain>.<verb>.<key>` is stored
/// as `events.<domain>.<verb>.<key>.<partition>`, with [`PARTITIONS`] partitions of the
/// key token — the same arithmetic as [`crate::partition::partition_of`].
pub fn partition_transform(domain: Domain) -> (String, String) {
    let token = domain.token();
    (
        format!("events.{token}.*.*"),
        format!("events.{token}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({PARTITIONS},2)}}}}"),
    )
}

/// The subject an event is stored under: its published subject plus its key's partition.
pub fn stored_event_subject(kind: EventKind, key: &str) -> String {
    format!("{}.{}", event_subject(kind, key), partition_of_key(key))
}

/// `events.<domain>.<verb>.*.*`: every stored event of one kind, in every partition,
/// for consumer filters.
pub fn event_filter(kind: EventKind) -> String {
    format!("events.{}.{}.*.*", kind.domain(), kind.verb())
}

/// `events.<domain>.<verb>.*`: every event of one kind as published, for core NATS
/// subscriptions (which see the published subject; the partition token is added only
/// when the stream stores it).
pub fn published_filter(kind: EventKind) -> String {
    format!("events.{}.{}.*", kind.domain(), kind.verb())
}

/// `events.<domain>.<verb>.*.<partition>`: the stored events of one kind in one partition.
pub fn partition_filter(kind: EventKind, partition: u32) -> String {
    format!("events.{}.{}.*.{partition}", kind.domain(), kind.verb())
}

/// `events.*.*.<key>.*`: every stored event about one order (or sku), for
/// `nats stream view` and traces.
pub fn events_about(key: &str) -> String {
    format!("events.*.*.{key}.*")
}

/// Splits an event subject into its kind and key, or `None` if it is not one.
///
/// Both forms are events: the published `events.<domain>.<verb>.<key>` and the stored
/// `events.<domain>.<verb>.<key>.<partition>`, whose partition must be the key's own
/// (a message published straight to a stored-form subject with another partition would
/// reach the wrong instance, so it is not an event of the contract).
pub fn parse_event_subject(subject: &str) -> Option<(EventKind, &str)> {
    let mut parts = subject.split('.');
    let (events, domain, verb, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if events != "events" || key.is_empty() {
        return None;
    }
    if let Some(partition) = parts.next() {
        if parts.next().is_some() || partition != partition_of_key(key).to_string() {
            return None;
        }
    }
    let kind = EventKind::ALL
        .iter()
        .copied()
        .find(|k| k.domain() == domain && k.verb() == verb)?;
    Some((kind, key))
}

/// `deadletter.<service>.<stream>`: where a service parks what it could not process.
pub fn deadletter_subject(service: &str, stream: &str) -> String {
    format!("deadletter.{service}.{stream}")
}

/// Every dead letter of one service.
pub fn deadletter_filter(service: &str) -> String {
    format!("deadletter.{service}.>")
}
