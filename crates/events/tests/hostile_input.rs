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
/// target `decode_envelope` built with `--features header-values` states the same property.
#[test]
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

/// Regression (found by `tests/hostile.rs`): an endpoint's 400 repeats the refused id in
/// the `Nats-Service-Error` header, and async-nats panicked on the line break of
/// `{"order_id":"o\n1"}` in the responder task, so the caller never got an answer; a
/// 900 KB id would have made the header larger than max_payload. The error now repeats
/// the value escaped and cut short.
#[test]
fn an_invalid_id_error_repeats_the_value_on_one_short_printable_line() {
    let huge = "x".repeat(900_000);
    let hostile = HOSTILE.iter().copied().chain([
        "a\r\nNats-Service-Error-Code: 200",
        "é\u{1b}[31m",
        huge.as_str(),
    ]);
    for id in hostile {
        let errors = [
            OrderId::parse(id).map(|_| ()),
            Sku::parse(id).map(|_| ()),
            CustomerId::parse(id).map(|_| ()),
            PaymentId::parse(id).map(|_| ()),
            Currency::parse(id).map(|_| ()),
        ];
        for error in errors {
            let text = error.expect_err("refused").to_string();
            assert!(
                text.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{text:?}"
            );
            assert!(text.len() < 400, "{} bytes", text.len());
        }
        // The same text reaches a request's 400 through serde.
        let parsed = serde_json::from_value::<OrderId>(json!(id));
        let text = parsed.expect_err("refused").to_string();
        assert!(!text.contains(['\r', '\n']) && text.len() < 400, "{text:?}");
    }
}

#[test]
fn a_shown_value_keeps_a_short_printable_value_as_it_is() {
    assert_eq!(ids::shown_value("o.1"), "o.1");
    assert_eq!(ids::shown_value("o\n1"), "o\\n1");
    assert_eq!(
        ids::shown_value(&"a".repeat(65)),
        format!("{}...", "a".repeat(64))
    );
}
