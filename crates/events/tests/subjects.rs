//! Subject and stream names.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use shop_events::partition::{partition_of_key, PARTITIONS};
use shop_events::subjects::*;
use shop_events::*;

#[test]
fn every_event_subject_parses_back_to_its_kind_and_key() {
    for &kind in EventKind::ALL {
        for key in ["o-1001", "sku_blue_mug", "A", &"x".repeat(64)] {
            let subject = event_subject(kind, key);
            assert_eq!(
                parse_event_subject(&subject),
                Some((kind, key)),
                "{subject}"
            );
        }
        let event = common::sample(kind);
        assert_eq!(
            parse_event_subject(&event.subject()),
            Some((kind, event.key()))
        );
    }
}

#[test]
fn event_subjects_follow_events_domain_verb_key() {
    let expected = [
        (EventKind::OrderPlaced, "events.orders.placed.k"),
        (EventKind::OrderRejected, "events.orders.rejected.k"),
        (EventKind::OrderConfirmed, "events.orders.confirmed.k"),
        (EventKind::OrderCancelled, "events.orders.cancelled.k"),
        (
            EventKind::OrderCancellationRequested,
            "events.orders.cancellation_requested.k",
        ),
        (EventKind::StockReserved, "events.inventory.reserved.k"),
        (
            EventKind::StockReservationFailed,
            "events.inventory.reservation_failed.k",
        ),
        (EventKind::StockReleased, "events.inventory.released.k"),
        (EventKind::StockCommitted, "events.inventory.committed.k"),
        (
            EventKind::StockReplenished,
            "events.inventory.replenished.k",
        ),
        (EventKind::PaymentCaptured, "events.payments.captured.k"),
        (EventKind::PaymentDeclined, "events.payments.declined.k"),
        (EventKind::PaymentRefunded, "events.payments.refunded.k"),
    ];
    assert_eq!(expected.len(), EventKind::ALL.len());
    for (kind, subject) in expected {
        assert_eq!(event_subject(kind, "k"), subject);
    }
}

#[test]
fn no_two_kinds_share_a_subject() {
    let filters: HashSet<String> = EventKind::ALL.iter().map(|&k| event_filter(k)).collect();
    assert_eq!(filters.len(), EventKind::ALL.len());
    let names: HashSet<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names.len(), EventKind::ALL.len());
}

#[test]
fn strings_that_are_not_event_subjects_do_not_parse() {
    for subject in [
        "",
        "events",
        "events.orders.placed",
        "events.orders.placed.",
        "events.orders.placed.o-1.extra",
        "events.orders.reserved.o-1",
        "events.shipping.sent.o-1",
        "event.orders.placed.o-1",
        "deadletter.checkout.ORDERS",
        "checkout.orders.get",
    ] {
        assert_eq!(parse_event_subject(subject), None, "{subject:?}");
    }
}

#[test]
fn an_event_filter_matches_every_stored_key_of_one_kind() {
    assert_eq!(
        event_filter(EventKind::OrderPlaced),
        "events.orders.placed.*.*"
    );
    assert_eq!(
        event_filter(EventKind::StockReplenished),
        "events.inventory.replenished.*.*"
    );
    for &kind in EventKind::ALL {
        let filter = event_filter(kind);
        let prefix = filter
            .strip_suffix("*.*")
            .expect("ends with the key and partition wildcards");
        assert!(stored_event_subject(kind, "o-1").starts_with(prefix));
        // The filter lies inside the kind's stream.
        let stream_prefix = format!("events.{}.", kind.domain());
        assert!(filter.starts_with(&stream_prefix));
    }
}

#[test]
fn a_stored_subject_ends_with_the_partition_of_its_key() {
    let key = "o-1001";
    let partition = partition_of_key(key);
    assert_eq!(
        stored_event_subject(EventKind::OrderPlaced, key),
        format!("events.orders.placed.o-1001.{partition}")
    );
    assert_eq!(
        partition_filter(EventKind::OrderPlaced, partition),
        format!("events.orders.placed.*.{partition}")
    );
    // Both forms parse to the same kind and key.
    for subject in [
        event_subject(EventKind::OrderPlaced, key),
        stored_event_subject(EventKind::OrderPlaced, key),
    ] {
        assert_eq!(
            parse_event_subject(&subject),
            Some((EventKind::OrderPlaced, key))
        );
    }
}

#[test]
fn a_stored_subject_with_another_partition_is_not_an_event() {
    let key = "o-1001";
    let wrong = (partition_of_key(key) + 1) % PARTITIONS;
    let subject = format!("events.orders.placed.{key}.{wrong}");
    assert_eq!(parse_event_subject(&subject), None);
}

#[test]
fn the_streams_store_the_partition_the_contract_computes() {
    // The server computes `partition(16, key)`; the transform must name the same count.
    let (source, destination) = partition_transform(Domain::Orders);
    assert_eq!(source, "events.orders.*.*");
    assert_eq!(
        destination,
        format!("events.orders.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({PARTITIONS},2)}}}}")
    );
}

#[test]
fn events_about_one_key_span_every_domain() {
    assert_eq!(events_about("o-1001"), "events.*.*.o-1001.*");
}

#[test]
fn kinds_know_their_type_name_and_stream() {
    for &kind in EventKind::ALL {
        assert_eq!(
            kind.type_name(),
            format!("shop.{}.v{CURRENT_MAJOR}", kind.name())
        );
        assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        let expected_stream = match kind.domain() {
            "orders" => ORDERS_STREAM,
            "inventory" => INVENTORY_STREAM,
            "payments" => PAYMENTS_STREAM,
            other => panic!("unexpected domain {other}"),
        };
        assert_eq!(kind.stream(), expected_stream);
        assert_eq!(kind.keyed_by_sku(), kind == EventKind::StockReplenished);
    }
    assert_eq!(CURRENT_MAJOR, 1);
    assert_eq!(EventKind::from_name("OrderExploded"), None);
    assert_eq!(EventKind::from_name("orderplaced"), None);
}

#[test]
fn there_are_four_streams_with_upper_case_names() {
    let specs = stream_specs(DEFAULT_EVENT_MAX_AGE);
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    assert_eq!(names, ["ORDERS", "INVENTORY", "PAYMENTS", "DEADLETTER"]);
    for spec in &specs {
        assert_eq!(spec.name, spec.name.to_uppercase());
        assert!(!spec.description.is_empty());
        assert!(
            spec.duplicate_window >= Duration::from_secs(120),
            "{} dedupes for at least 2 minutes",
            spec.name
        );
    }
}

#[test]
fn event_streams_capture_their_domain_and_keep_events_for_the_given_age() {
    assert_eq!(DEFAULT_EVENT_MAX_AGE, Duration::from_secs(7 * 24 * 3600));
    let specs = stream_specs(DEFAULT_EVENT_MAX_AGE);
    for (name, subject) in [
        ("ORDERS", "events.orders.>"),
        ("INVENTORY", "events.inventory.>"),
        ("PAYMENTS", "events.payments.>"),
    ] {
        let spec = specs
            .iter()
            .find(|s| s.name == name)
            .expect("stream exists");
        assert_eq!(spec.subjects, [subject]);
        assert_eq!(spec.max_age, DEFAULT_EVENT_MAX_AGE);
    }
    let short = stream_specs(Duration::from_secs(60));
    assert!(short
        .iter()
        .filter(|s| s.name != DEADLETTER_STREAM)
        .all(|s| s.max_age == Duration::from_secs(60)));
}

#[test]
fn every_event_kind_lands_in_exactly_one_stream() {
    let specs = stream_specs(DEFAULT_EVENT_MAX_AGE);
    for &kind in EventKind::ALL {
        let subject = event_subject(kind, "o-1");
        let holders: Vec<&str> = specs
            .iter()
            .filter(|s| {
                s.subjects.iter().any(|pattern| {
                    let prefix = pattern.strip_suffix('>').expect("ends with >");
                    subject.starts_with(prefix)
                })
            })
            .map(|s| s.name)
            .collect();
        assert_eq!(holders, [kind.stream()], "{subject}");
    }
}

#[test]
fn the_dead_letter_stream_keeps_messages_for_30_days() {
    let specs = stream_specs(Duration::from_secs(60));
    let dlq = specs
        .iter()
        .find(|s| s.name == DEADLETTER_STREAM)
        .expect("dead-letter stream");
    assert_eq!(dlq.name, "DEADLETTER");
    assert_eq!(dlq.subjects, ["deadletter.>"]);
    assert_eq!(dlq.max_age, Duration::from_secs(30 * 24 * 3600));
}

#[test]
fn dead_letter_and_endpoint_subjects() {
    assert_eq!(
        deadletter_subject("checkout", "ORDERS"),
        "deadletter.checkout.ORDERS"
    );
    assert_eq!(deadletter_filter("payment"), "deadletter.payment.>");
    assert_eq!(
        shop_events::api::checkout::ORDERS_GET.subject,
        "checkout.orders.get"
    );
    assert_eq!(shop_events::api::checkout::ORDERS_GET.name, "orders_get");
    assert_eq!(
        parse_event_subject(&deadletter_subject("checkout", "ORDERS")),
        None
    );
}

#[test]
fn domains_map_to_their_tokens_streams_and_wildcards() {
    let table: Vec<(&str, &str, String)> = Domain::ALL
        .iter()
        .map(|d| (d.token(), d.stream(), d.wildcard()))
        .collect();
    assert_eq!(
        table,
        [
            ("orders", "ORDERS", "events.orders.>".to_owned()),
            ("inventory", "INVENTORY", "events.inventory.>".to_owned()),
            ("payments", "PAYMENTS", "events.payments.>".to_owned()),
        ]
    );
}
