//! Every reason `decode` refuses a message, as typed `DecodeError` variants.

mod common;

use common::{bytes, order_placed_json, ORDER_PLACED_SUBJECT};
use serde_json::{json, Value};
use shop_events::*;

fn decode_json(subject: &str, json: &Value) -> Result<Envelope, DecodeError> {
    decode(subject, &bytes(json))
}

fn without(name: &str) -> Value {
    let mut json = order_placed_json();
    json.as_object_mut().expect("object").remove(name);
    json
}

fn with(name: &str, value: Value) -> Value {
    let mut json = order_placed_json();
    json[name] = value;
    json
}

fn with_data(name: &str, value: Value) -> Value {
    let mut json = order_placed_json();
    json["data"][name] = value;
    json
}

#[test]
fn the_reference_envelope_decodes() {
    let envelope = decode_json(ORDER_PLACED_SUBJECT, &order_placed_json()).expect("decodes");
    assert_eq!(envelope.event, common::valid_order().into());
    assert_eq!(envelope.meta.source, "storefront");
    assert_eq!(envelope.meta.id, "0190a5f0-0000-7000-8000-000000000001");
}

#[test]
fn bytes_that_are_not_json_are_invalid_json() {
    for payload in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe",
        b"{\"specversion\": \"1.0\"",
    ] {
        assert!(matches!(
            decode(ORDER_PLACED_SUBJECT, payload),
            Err(DecodeError::InvalidJson(_))
        ));
    }
}

#[test]
fn json_that_is_not_an_object_is_invalid_json() {
    for value in [
        json!([1, 2]),
        json!("event"),
        json!(42),
        json!(null),
        json!(true),
    ] {
        assert!(matches!(
            decode_json(ORDER_PLACED_SUBJECT, &value),
            Err(DecodeError::InvalidJson(_))
        ));
    }
}

#[test]
fn each_missing_required_attribute_is_named() {
    for name in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
    ] {
        assert_eq!(
            decode_json(ORDER_PLACED_SUBJECT, &without(name)).map(|_| ()),
            Err(DecodeError::MissingAttribute(name)),
            "without {name}"
        );
        // A JSON null counts as missing.
        assert_eq!(
            decode_json(ORDER_PLACED_SUBJECT, &with(name, Value::Null)).map(|_| ()),
            Err(DecodeError::MissingAttribute(name)),
            "{name} = null"
        );
    }
}

#[test]
fn empty_or_non_string_attributes_are_invalid() {
    for name in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "correlationid",
        "causationid",
        "traceparent",
    ] {
        for value in [json!(""), json!(7), json!({ "a": 1 })] {
            let result = decode_json(ORDER_PLACED_SUBJECT, &with(name, value.clone()));
            assert!(
                matches!(result, Err(DecodeError::InvalidAttribute { name: n, .. }) if n == name),
                "{name} = {value}: {result:?}"
            );
        }
    }
}

#[test]
fn an_event_id_with_spaces_or_too_long_is_invalid() {
    let too_long = "x".repeat(129);
    for id in ["has space", "tab\there", "é-not-ascii", too_long.as_str()] {
        assert!(matches!(
            decode_json(ORDER_PLACED_SUBJECT, &with("id", id.into())),
            Err(DecodeError::InvalidAttribute { name: "id", .. })
        ));
    }
    let longest = "x".repeat(128);
    assert!(decode_json(ORDER_PLACED_SUBJECT, &with("id", longest.into())).is_ok());
}

#[test]
fn a_specversion_other_than_1_0_is_unsupported() {
    for version in ["0.3", "1", "2.0"] {
        assert_eq!(
            decode_json(ORDER_PLACED_SUBJECT, &with("specversion", version.into())).map(|_| ()),
            Err(DecodeError::UnsupportedSpecVersion(version.to_owned()))
        );
    }
}

#[test]
fn an_unknown_type_is_refused() {
    for ty in [
        "shop.OrderExploded.v1",
        "com.example.OrderPlaced.v1",
        "OrderPlaced",
        "shop.OrderPlaced",
        "shop.orderplaced.v1",
    ] {
        assert_eq!(
            decode_json(ORDER_PLACED_SUBJECT, &with("type", ty.into())).map(|_| ()),
            Err(DecodeError::UnknownType(ty.to_owned())),
            "{ty}"
        );
    }
}

#[test]
fn an_unknown_major_version_is_unsupported() {
    assert_eq!(
        decode_json(
            ORDER_PLACED_SUBJECT,
            &with("type", "shop.OrderPlaced.v2".into())
        )
        .map(|_| ()),
        Err(DecodeError::UnsupportedVersion {
            event: "OrderPlaced".to_owned(),
            version: "2".to_owned(),
        })
    );
    assert!(matches!(
        decode_json(
            ORDER_PLACED_SUBJECT,
            &with("type", "shop.OrderPlaced.v0".into())
        ),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
}

#[test]
fn a_time_that_is_not_rfc_3339_is_invalid() {
    for time in [
        "yesterday",
        "2024-05-01",
        "2024-05-01 12:00:00",
        "1714564800",
    ] {
        assert!(
            matches!(
                decode_json(ORDER_PLACED_SUBJECT, &with("time", time.into())),
                Err(DecodeError::InvalidAttribute { name: "time", .. })
            ),
            "{time}"
        );
    }
}

#[test]
fn a_content_type_other_than_json_is_invalid() {
    for content_type in [
        "text/plain",
        "application/xml",
        "application/cloudevents+json",
    ] {
        assert!(matches!(
            decode_json(
                ORDER_PLACED_SUBJECT,
                &with("datacontenttype", content_type.into())
            ),
            Err(DecodeError::InvalidAttribute {
                name: "datacontenttype",
                ..
            })
        ));
    }
}

#[test]
fn data_that_does_not_match_the_type_is_invalid_data() {
    let cases = [
        // Not an object at all.
        with("data", json!("o-1001")),
        with("data", json!([1, 2, 3])),
        // The data of another event.
        with("data", json!({ "order_id": "o-1001", "reason": "timeout" })),
        // A required field missing.
        {
            let mut json = order_placed_json();
            json["data"]
                .as_object_mut()
                .expect("object")
                .remove("total");
            json
        },
        // A field of the wrong type.
        with_data("total", json!("3399")),
        with_data("lines", json!({ "sku": "a" })),
    ];
    for json in cases {
        assert!(
            matches!(
                decode_json(ORDER_PLACED_SUBJECT, &json),
                Err(DecodeError::InvalidData {
                    event: "OrderPlaced",
                    ..
                })
            ),
            "{json}"
        );
    }
}

#[test]
fn an_unknown_cancel_reason_is_invalid_data() {
    let mut json = with("type", "shop.OrderCancelled.v1".into());
    json["data"] = json!({ "order_id": "o-1001", "reason": "bored" });
    assert!(matches!(
        decode_json("events.orders.cancelled.o-1001", &json),
        Err(DecodeError::InvalidData {
            event: "OrderCancelled",
            ..
        })
    ));
}

#[test]
fn a_negative_stock_quantity_is_invalid_data() {
    let mut json = with("type", "shop.StockReplenished.v1".into());
    json["subject"] = "sku-1".into();
    json["data"] = json!({ "sku": "sku-1", "quantity": -5 });
    assert!(matches!(
        decode_json("events.inventory.replenished.sku-1", &json),
        Err(DecodeError::InvalidData {
            event: "StockReplenished",
            ..
        })
    ));
}

#[test]
fn ids_are_validated_while_deserialising_data() {
    // A sku with a dot would break the subject scheme.
    let mut json = with("type", "shop.StockReplenished.v1".into());
    json["subject"] = "sku-1".into();
    json["data"] = json!({ "sku": "sku.1", "quantity": 5 });
    assert!(matches!(
        decode_json("events.inventory.replenished.sku-1", &json),
        Err(DecodeError::InvalidData {
            event: "StockReplenished",
            ..
        })
    ));

    let too_long = "o".repeat(65);
    for bad in ["", "o 1", "o.1", "o*", "o>", too_long.as_str()] {
        assert!(
            matches!(
                decode_json(ORDER_PLACED_SUBJECT, &with_data("order_id", bad.into())),
                Err(DecodeError::InvalidData {
                    event: "OrderPlaced",
                    ..
                })
            ),
            "order id {bad:?}"
        );
    }

    let mut captured = with("type", "shop.PaymentCaptured.v1".into());
    captured["data"] = json!({
        "order_id": "o-1001",
        "payment_id": "pay 1",
        "amount": 3399,
        "currency": "EUR"
    });
    assert!(matches!(
        decode_json("events.payments.captured.o-1001", &captured),
        Err(DecodeError::InvalidData {
            event: "PaymentCaptured",
            ..
        })
    ));
    captured["data"]["payment_id"] = "pay_1".into();
    captured["data"]["currency"] = "eur".into();
    assert!(matches!(
        decode_json("events.payments.captured.o-1001", &captured),
        Err(DecodeError::InvalidData {
            event: "PaymentCaptured",
            ..
        })
    ));
    captured["data"]["currency"] = "EUR".into();
    assert!(decode_json("events.payments.captured.o-1001", &captured).is_ok());
}

#[test]
fn a_subject_that_is_not_an_event_subject_is_unknown() {
    for subject in [
        "orders.placed.o-1001",
        "events.orders.placed",
        "events.orders.placed.o-1001.extra",
        "events.orders.shipped.o-1001",
        "events.billing.placed.o-1001",
        "deadletter.checkout.ORDERS",
        "events.orders.placed.",
        "",
    ] {
        assert_eq!(
            decode_json(subject, &order_placed_json()).map(|_| ()),
            Err(DecodeError::UnknownSubject {
                subject: subject.to_owned()
            }),
            "{subject:?}"
        );
    }
}

#[test]
fn a_subject_for_another_type_is_a_mismatch() {
    assert_eq!(
        decode_json("events.orders.confirmed.o-1001", &order_placed_json()).map(|_| ()),
        Err(DecodeError::SubjectTypeMismatch {
            subject: "events.orders.confirmed.o-1001".to_owned(),
            expected: "OrderConfirmed",
            found: "OrderPlaced",
        })
    );
    assert!(matches!(
        decode_json("events.payments.captured.o-1001", &order_placed_json()),
        Err(DecodeError::SubjectTypeMismatch {
            expected: "PaymentCaptured",
            found: "OrderPlaced",
            ..
        })
    ));
}

#[test]
fn the_subject_token_attribute_and_data_key_must_agree() {
    // Subject token differs.
    assert_eq!(
        decode_json("events.orders.placed.o-9", &order_placed_json()).map(|_| ()),
        Err(DecodeError::SubjectKeyMismatch {
            token: "o-9".to_owned(),
            attribute: "o-1001".to_owned(),
            data: "o-1001".to_owned(),
        })
    );
    // `subject` attribute differs.
    assert_eq!(
        decode_json(ORDER_PLACED_SUBJECT, &with("subject", "o-9".into())).map(|_| ()),
        Err(DecodeError::SubjectKeyMismatch {
            token: "o-1001".to_owned(),
            attribute: "o-9".to_owned(),
            data: "o-1001".to_owned(),
        })
    );
    // Data key differs.
    assert_eq!(
        decode_json(ORDER_PLACED_SUBJECT, &with_data("order_id", "o-9".into())).map(|_| ()),
        Err(DecodeError::SubjectKeyMismatch {
            token: "o-1001".to_owned(),
            attribute: "o-1001".to_owned(),
            data: "o-9".to_owned(),
        })
    );
}

#[test]
fn a_stock_level_event_is_keyed_by_its_sku() {
    let mut json = with("type", "shop.StockReplenished.v1".into());
    json["subject"] = "sku-1".into();
    json["data"] = json!({ "sku": "sku-1", "quantity": 5 });
    assert!(decode_json("events.inventory.replenished.sku-1", &json).is_ok());
    assert!(matches!(
        decode_json("events.inventory.replenished.o-1001", &json),
        Err(DecodeError::SubjectKeyMismatch { .. })
    ));
}

#[test]
fn unknown_fields_in_data_are_ignored() {
    let mut json = with_data("gift_wrap", json!(true));
    json["data"]["lines"][0]["colour"] = "red".into();
    json["data"]["shipping"] = json!({ "method": "express", "cost": 500 });
    let envelope = decode_json(ORDER_PLACED_SUBJECT, &json).expect("decodes");
    assert_eq!(envelope.event, common::valid_order().into());
}

#[test]
fn unknown_envelope_attributes_are_ignored() {
    let mut json = with("dataschema", "https://example.invalid/schema".into());
    json["partitionkey"] = "o-1001".into();
    assert!(decode_json(ORDER_PLACED_SUBJECT, &json).is_ok());
}

#[test]
fn an_order_that_breaks_the_rules_still_decodes() {
    // Business rules are checked by `validate`, so checkout can answer with OrderRejected.
    let mut json = with_data("lines", json!([]));
    json["data"]["currency"] = "eur".into();
    json["data"]["total"] = 5.into();
    json["data"]["customer_id"] = "not a customer".into();
    let envelope = decode_json(ORDER_PLACED_SUBJECT, &json).expect("decodes");
    let Event::OrderPlaced(order) = envelope.event else {
        panic!("not an OrderPlaced");
    };
    assert!(order.validate().is_err());
}

#[test]
fn an_event_from_a_source_that_does_not_publish_its_kind_fails_the_source_check() {
    // It decodes (trace and audit must still show a forgery), and the check refuses it.
    for kind in EventKind::ALL.iter().copied() {
        let allowed = rights_names::publishers(kind);
        for source in allowed {
            let envelope = Envelope::new(source, common::sample(kind));
            assert_eq!(envelope.check_source(), Ok(()), "{kind:?} from {source}");
        }
        for forger in ["mallory", "storefront", "warehouse", "checkout", "payment"] {
            if allowed.contains(&forger) {
                continue;
            }
            let forged = Envelope::new(forger, common::sample(kind));
            let decoded = decode(&forged.subject(), &forged.to_json()).expect("it decodes");
            assert!(
                matches!(
                    decoded.check_source(),
                    Err(DecodeError::UnexpectedSource { event, ref claimed, .. })
                        if event == kind.name() && claimed == forger
                ),
                "{kind:?} from {forger}"
            );
        }
    }
}

#[test]
fn a_source_with_a_line_break_is_quoted_printably_in_the_refusal() {
    let mut json = order_placed_json();
    json["source"] = json!("evil\r\nNats-Msg-Id: x");
    let decoded = decode_json(ORDER_PLACED_SUBJECT, &json).expect("it decodes");
    match decoded.check_source() {
        Err(DecodeError::UnexpectedSource { claimed, .. }) => {
            assert!(!claimed.chars().any(char::is_control), "{claimed:?}")
        }
        other => panic!("expected UnexpectedSource, got {other:?}"),
    }
}
