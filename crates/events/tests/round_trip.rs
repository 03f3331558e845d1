//! Every event survives encoding and decoding unchanged, envelope included.

mod common;

use common::sample;
use shop_events::*;
use time::macros::datetime;

#[test]
fn every_event_kind_round_trips_through_json() {
    for &kind in EventKind::ALL {
        let mut envelope = Envelope::new("test", sample(kind));
        // A fixed time with nanoseconds: RFC 3339 text must keep every digit.
        envelope.meta.time = datetime!(2024-05-01 12:34:56.123456789 UTC);
        let bytes = envelope.to_json();
        let decoded = decode(&envelope.subject(), &bytes)
            .unwrap_or_else(|e| panic!("{} does not decode: {e:?}", kind.name()));
        assert_eq!(
            decoded,
            envelope,
            "{} changed in the round trip",
            kind.name()
        );
        assert_eq!(decoded.kind(), kind);
    }
}

#[test]
fn an_event_stamped_now_round_trips_with_its_exact_time() {
    for &kind in EventKind::ALL {
        let envelope = Envelope::new("test", sample(kind));
        let decoded = decode(&envelope.subject(), &envelope.to_json()).expect("decodes");
        assert_eq!(decoded.meta.time, envelope.meta.time);
        assert_eq!(decoded, envelope);
    }
}

#[test]
fn a_time_with_an_offset_decodes_to_the_same_instant() {
    let mut json = common::order_placed_json();
    json["time"] = "2024-05-01T14:00:00+02:00".into();
    let decoded = decode(common::ORDER_PLACED_SUBJECT, &common::bytes(&json)).expect("decodes");
    assert_eq!(decoded.meta.time, datetime!(2024-05-01 12:00:00 UTC));
}

#[test]
fn every_sample_covers_its_own_kind() {
    for &kind in EventKind::ALL {
        assert_eq!(sample(kind).kind(), kind);
    }
}

#[test]
fn the_envelope_carries_type_subject_and_content_type_on_the_wire() {
    for &kind in EventKind::ALL {
        let envelope = Envelope::new("test", sample(kind));
        let wire: serde_json::Value =
            serde_json::from_slice(&envelope.to_json()).expect("valid JSON");
        assert_eq!(wire["specversion"], SPEC_VERSION);
        assert_eq!(wire["type"], format!("shop.{}.v1", kind.name()));
        assert_eq!(wire["type"], kind.type_name());
        assert_eq!(wire["subject"], envelope.event.key());
        assert_eq!(wire["datacontenttype"], "application/json");
        assert_eq!(wire["source"], "test");
        assert_eq!(wire["id"], envelope.meta.id.as_str());
        assert_eq!(wire["correlationid"], envelope.event.key());
        assert!(wire.get("causationid").is_none());
        assert!(wire.get("traceparent").is_none());
        assert_eq!(wire["data"], envelope.event.data_json());
    }
}

#[test]
fn new_envelopes_get_distinct_event_ids_and_correlate_on_their_key() {
    let a = Envelope::new("test", sample(EventKind::OrderPlaced));
    let b = Envelope::new("test", sample(EventKind::OrderPlaced));
    assert_ne!(a.meta.id, b.meta.id);
    assert_eq!(a.meta.correlation_id, "o-1001");
    assert_eq!(a.meta.causation_id, None);
    assert_eq!(a.meta.traceparent, None);

    let replenished = Envelope::new("warehouse", sample(EventKind::StockReplenished));
    assert_eq!(replenished.meta.correlation_id, "sku-red-shirt");
    assert_eq!(
        replenished.subject(),
        "events.inventory.replenished.sku-red-shirt"
    );
}

#[test]
fn caused_by_carries_correlation_causation_and_trace() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut cause = Envelope::new("storefront", sample(EventKind::OrderPlaced));
    cause.meta.correlation_id = "saga-7".to_owned();
    cause.meta.traceparent = Some(traceparent.to_owned());

    let reaction =
        Envelope::new("inventory", sample(EventKind::StockReserved)).caused_by(&cause.meta);
    assert_eq!(reaction.meta.correlation_id, "saga-7");
    assert_eq!(
        reaction.meta.causation_id.as_deref(),
        Some(cause.meta.id.as_str())
    );
    assert_eq!(reaction.meta.traceparent.as_deref(), Some(traceparent));
    assert_ne!(reaction.meta.id, cause.meta.id);
    assert_eq!(reaction.meta.source, "inventory");

    // The extension attributes survive the wire.
    let wire: serde_json::Value = serde_json::from_slice(&reaction.to_json()).expect("valid JSON");
    assert_eq!(wire["correlationid"], "saga-7");
    assert_eq!(wire["causationid"], cause.meta.id.as_str());
    assert_eq!(wire["traceparent"], traceparent);
    let decoded = decode(&reaction.subject(), &reaction.to_json()).expect("decodes");
    assert_eq!(decoded.meta, reaction.meta);
}

#[test]
fn with_id_sets_a_deterministic_event_id() {
    let envelope =
        Envelope::new("checkout", sample(EventKind::OrderConfirmed)).with_id("o-1001.confirmed");
    assert_eq!(envelope.meta.id, "o-1001.confirmed");
    let decoded = decode(&envelope.subject(), &envelope.to_json()).expect("decodes");
    assert_eq!(decoded.meta.id, "o-1001.confirmed");
}

#[test]
fn a_missing_correlation_id_defaults_to_the_subject_key() {
    let mut json = common::order_placed_json();
    json.as_object_mut()
        .expect("object")
        .remove("correlationid");
    let decoded = decode(common::ORDER_PLACED_SUBJECT, &common::bytes(&json)).expect("decodes");
    assert_eq!(decoded.meta.correlation_id, "o-1001");
    assert_eq!(decoded.meta.causation_id, None);
    assert_eq!(decoded.meta.traceparent, None);
}

#[test]
fn a_cancellation_without_detail_decodes_with_an_empty_detail() {
    let mut json = common::order_placed_json();
    json["type"] = "shop.OrderCancelled.v1".into();
    json["data"] = serde_json::json!({ "order_id": "o-1001", "reason": "timeout" });
    let decoded = decode("events.orders.cancelled.o-1001", &common::bytes(&json)).expect("decodes");
    let Event::OrderCancelled(cancelled) = decoded.event else {
        panic!("not an OrderCancelled: {:?}", decoded.event);
    };
    assert_eq!(cancelled.reason, CancelReason::Timeout);
    assert_eq!(cancelled.detail, "");
}

#[test]
fn cancel_reasons_serialise_as_their_snake_case_names() {
    for reason in [
        CancelReason::OutOfStock,
        CancelReason::PaymentDeclined,
        CancelReason::Timeout,
        CancelReason::CustomerRequest,
    ] {
        assert_eq!(
            serde_json::to_value(reason).expect("serialisable"),
            serde_json::Value::from(reason.as_str())
        );
    }
}
