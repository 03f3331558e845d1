//! Hostile input against the contract alone: ids that would break a NATS subject, and
//! attributes that travel on as NATS headers. The system tests (`tests/hostile.rs`) check
//! the services apply the same rules; the fuzz targets (`fuzz/`) search for what these miss.

mod common;

use common::{bytes, order_placed_json, ORDER_PLACED_SUBJECT};
use serde_json::json;
use shop_events::subjects::{event_subject, parse_event_subject};
use shop_events::*;

/// Ids that must never reach a subject, each for a different reason.
const HOSTILE: &[&str] = &[
    "o.1",
    "o.",
    ".o",
    "o*",
    "*",
    ">",
    "o.>",
    "o 1",
    " o",
    "o ",
    "o\t1",
    "o\n1",
    "o\r1",
    "o\u{0}1",
    "o\u{7f}1",
    "ö-1",
    "o-é",
    "o-\u{200b}1",
    "о-1",
    "",
];

#[test]
fn only_letters_digits_underscore_and_hyphen_make_an_id() {
    for c in (0u32..=0x2FF).filter_map(char::from_u32) {
        let id = format!("a{c}b");
        let allowed = c.is_ascii_alphanumeric() || c == '_' || c == '-';
        assert_eq!(ids::check_token(&id).is_ok(), allowed, "{c:?}");
    }
    assert!(ids::check_token(&"a".repeat(ids::MAX_ID_LEN)).is_ok());
    assert!(ids::check_token(&"a".repeat(ids::MAX_ID_LEN + 1)).is_err());
}

#[test]
fn every_id_type_refuses_an_id_that_would_break_a_subject() {
    for id in HOSTILE
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["a".repeat(65)])
    {
        assert!(
            matches!(
                OrderId::parse(id.clone()),
                Err(DecodeError::InvalidId {
                    kind: "order id",
                    ..
                })
            ),
            "{id:?}"
        );
        assert!(matches!(
            Sku::parse(id.clone()),
            Err(DecodeError::InvalidId { kind: "sku", .. })
        ));
        assert!(matches!(
            CustomerId::parse(id.clone()),
            Err(DecodeError::InvalidId { .. })
        ));
        assert!(matches!(
            PaymentId::parse(id.clone()),
            Err(DecodeError::InvalidId { .. })
        ));
        // Through serde too, as every request and event is read.
        assert!(
            serde_json::from_value::<OrderId>(json!(id)).is_err(),
            "{id:?}"
        );
        assert!(serde_json::from_value::<Sku>(json!(id)).is_err(), "{id:?}");
    }
}

#[test]
fn an_event_carrying_a_subject_breaking_id_in_its_data_is_invalid_data() {
    for id in HOSTILE {
        let mut json = order_placed_json();
        json["data"]["order_id"] = json!(id);
        assert!(
            matches!(
                decode(ORDER_PLACED_SUBJECT, &bytes(&json)),
                Err(DecodeError::InvalidData {
                    event: "OrderPlaced",
                    ..
                })
            ),
            "{id:?}"
        );
    }
}

#[test]
fn the_subject_of_every_accepted_key_has_exactly_four_tokens_and_parses_back() {
    for key in ["o-1", "A", "_", "-", &"z".repeat(64)] {
        for kind in EventKind::ALL {
            let subject = event_subject(*kind, key);
            assert_eq!(subject.split('.').count(), 4, "{subject}");
            assert_eq!(parse_event_subject(&subject), Some((*kind, key)));
        }
    }
}

#[test]
fn a_subject_with_extra_tokens_or_wildcards_is_no_event_subject() {
    for subject in [
        "events.orders.placed.o.1.2.3",
        "events.orders.placed.*",
        "events.orders.placed.>",
        "events.orders.*.o-1",
        "events.orders.placed.",
        "events.orders.placed",
    ] {
        let decoded = decode(subject, &bytes(&order_placed_json()));
        assert!(
            matches!(
                decoded,
                Err(DecodeError::UnknownSubject { .. } | DecodeError::SubjectKeyMismatch { .. })
            ),
            "{subject}: {decoded:?}"
        );
    }
}

#[test]
fn an_event_id_that_would_break_the_msg_id_header_is_refused() {
    for id in ["a b", "a\nb", "a\r\nNats-Msg-Id: x", "é", &"a".repeat(129)] {
        let mut json = order_placed_json();
        json["id"] = json!(id);
        assert!(
            matches!(
                decode(ORDER_PLACED_SUBJECT, &bytes(&json)),
                Err(DecodeError::InvalidAttribute { name: "id", .. })
            ),
            "{id:?}"
        );
    }
}

/// Reactions carry the cause's `traceparent` as a NATS header, and async-nats panics on a
/// header value with a line break (`HeaderValue::from`), in the outbox relay. The fuzz
/// target `decode_envelope` built with `--features header-values` finds it in seconds.
#[test]
#[ignore = "finding: decode accepts a traceparent with a line break; to be fixed in src/envelope.rs (not this change's file)"]
fn a_traceparent_with_a_line_break_is_refused() {
    for traceparent in ["00-a\r\nNats-Msg-Id: forged", "a\nb", "a\rb"] {
        let mut json = order_placed_json();
        json["traceparent"] = json!(traceparent);
        assert!(
            matches!(
                decode(ORDER_PLACED_SUBJECT, &bytes(&json)),
                Err(DecodeError::InvalidAttribute {
                    name: "traceparent",
                    ..
                })
            ),
            "{traceparent:?}"
        );
    }
}
