//! Keeps `docs/events.md` true: every full envelope in it decodes, every event
//! kind and problem code is documented, and the `nats pub` example is valid.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use shop_events::envelope::parse_type;
use shop_events::subjects::event_subject;
use shop_events::*;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The contents of every fenced code block with the given info string.
fn code_blocks(text: &str, language: &str) -> Vec<String> {
    enum State {
        Outside,
        /// Inside a block of another language.
        Skipping,
        Inside(String),
    }
    let mut blocks = Vec::new();
    let mut state = State::Outside;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        state = match state {
            State::Outside if fence => {
                if line.trim().trim_start_matches('`').trim() == language {
                    State::Inside(String::new())
                } else {
                    State::Skipping
                }
            }
            State::Outside => State::Outside,
            State::Skipping if fence => State::Outside,
            State::Skipping => State::Skipping,
            State::Inside(block) if fence => {
                blocks.push(block);
                State::Outside
            }
            State::Inside(mut block) => {
                block.push_str(line);
                block.push('\n');
                State::Inside(block)
            }
        };
    }
    assert!(
        matches!(state, State::Outside),
        "docs/events.md has an unterminated code block"
    );
    blocks
}

/// The subject an envelope must be published on, derived from its type and data key.
fn subject_of(envelope: &Value) -> String {
    let ty = envelope["type"].as_str().expect("a type attribute");
    let kind = parse_type(ty).unwrap_or_else(|e| panic!("type {ty}: {e:?}"));
    let key_field = if kind.keyed_by_sku() {
        "sku"
    } else {
        "order_id"
    };
    let key = envelope["data"][key_field]
        .as_str()
        .unwrap_or_else(|| panic!("{ty} example has no data.{key_field}"));
    event_subject(kind, key)
}

/// Every full envelope (a JSON block with `specversion`) of the doc, decoded.
fn documented_envelopes() -> Vec<(Value, Envelope)> {
    code_blocks(&doc(), "json")
        .into_iter()
        .map(|block| {
            serde_json::from_str::<Value>(&block)
                .unwrap_or_else(|e| panic!("a ```json block is not JSON ({e}):\n{block}"))
        })
        .filter(|value| value.get("specversion").is_some())
        .map(|value| {
            let subject = subject_of(&value);
            let bytes = serde_json::to_vec(&value).expect("serialisable");
            let envelope = decode(&subject, &bytes)
                .unwrap_or_else(|e| panic!("the example for {subject} does not decode: {e:?}"));
            (value, envelope)
        })
        .collect()
}

#[test]
fn every_envelope_example_in_the_docs_decodes() {
    let envelopes = documented_envelopes();
    assert!(envelopes.len() >= EventKind::ALL.len());
    for (value, envelope) in &envelopes {
        // The decoded event encodes back to the same data: no field was ignored by mistake.
        assert_eq!(
            envelope.event.data_json(),
            value["data"],
            "{}",
            envelope.subject()
        );
    }
}

#[test]
fn every_event_kind_has_an_example_in_the_docs() {
    let documented: BTreeSet<EventKind> = documented_envelopes()
        .iter()
        .map(|(_, envelope)| envelope.kind())
        .collect();
    let all: BTreeSet<EventKind> = EventKind::ALL.iter().copied().collect();
    assert_eq!(documented, all);
}

#[test]
fn every_example_order_placed_is_valid() {
    for (_, envelope) in documented_envelopes() {
        if let Event::OrderPlaced(order) = &envelope.event {
            assert!(order.validate().is_ok(), "{order:?}");
        }
    }
}

#[test]
fn the_order_rejected_example_lists_what_validation_finds() {
    // The doc describes the rejected order in words: currency `eur`, a first line of
    // quantity 0 and a total of 3399.
    let order = OrderPlaced {
        order_id: OrderId::parse("o-1002").expect("id"),
        customer_id: "c-42".to_owned(),
        currency: "eur".to_owned(),
        lines: vec![
            OrderLineInput {
                sku: "sku-red-shirt".to_owned(),
                quantity: 0,
                unit_price: 1250,
            },
            OrderLineInput {
                sku: "sku_blue_mug".to_owned(),
                quantity: 1,
                unit_price: 899,
            },
        ],
        total: 3399,
        payment_token: "tok_visa".to_owned(),
    };
    let found: Vec<(String, ProblemCode)> = order
        .validate()
        .expect_err("invalid")
        .into_iter()
        .map(|p| (p.field, p.code))
        .collect();
    let documented: Vec<(String, ProblemCode)> = documented_envelopes()
        .into_iter()
        .find_map(|(_, envelope)| match envelope.event {
            Event::OrderRejected(rejected) => Some(rejected.problems),
            _ => None,
        })
        .expect("an OrderRejected example")
        .into_iter()
        .map(|p| (p.field, p.code))
        .collect();
    assert_eq!(documented, found);
}

#[test]
fn every_problem_code_is_documented() {
    let text = doc();
    for code in [
        ProblemCode::InvalidId,
        ProblemCode::NoLines,
        ProblemCode::TooManyLines,
        ProblemCode::DuplicateSku,
        ProblemCode::QuantityOutOfRange,
        ProblemCode::NegativeUnitPrice,
        ProblemCode::TotalMismatch,
        ProblemCode::AmountOverflow,
        ProblemCode::InvalidCurrency,
        ProblemCode::MissingPaymentToken,
    ] {
        let name = serde_json::to_value(code).expect("serialisable");
        let name = name.as_str().expect("a string");
        assert!(
            text.contains(&format!("`{name}`")),
            "{name} is not documented"
        );
    }
}

#[test]
fn every_subject_and_type_name_is_documented() {
    let text = doc();
    for &kind in EventKind::ALL {
        assert!(text.contains(&format!("`{}`", kind.type_name())));
        let subject = format!("`events.{}.{}.<", kind.domain(), kind.verb());
        assert!(text.contains(&subject), "{subject} is not documented");
    }
    for spec in subjects::stream_specs(subjects::DEFAULT_EVENT_MAX_AGE) {
        assert!(text.contains(&format!("`{}`", spec.name)));
        for subject in &spec.subjects {
            assert!(text.contains(&format!("`{subject}`")));
        }
    }
}

#[test]
fn the_nats_pub_example_publishes_a_valid_event_with_its_id() {
    let blocks = code_blocks(&doc(), "sh");
    let command = blocks
        .iter()
        .find(|b| b.contains("nats pub --jetstream"))
        .expect("a nats pub example");
    let words: Vec<&str> = command.split_whitespace().collect();
    let subject = words
        .iter()
        .position(|w| *w == "--jetstream")
        .and_then(|i| words.get(i + 1))
        .expect("a subject after --jetstream");
    let msg_id = words
        .iter()
        .find_map(|w| w.strip_prefix("Nats-Msg-Id:"))
        .expect("a Nats-Msg-Id header");
    let start = command.find('\'').expect("quoted JSON");
    let end = command.rfind('\'').expect("quoted JSON");
    let payload = &command[start + 1..end];
    let envelope = decode(subject, payload.as_bytes()).expect("the published event decodes");
    assert_eq!(envelope.meta.id, msg_id, "Nats-Msg-Id is the event id");
    let Event::OrderPlaced(order) = envelope.event else {
        panic!("the example publishes an OrderPlaced");
    };
    assert!(order.validate().is_ok());
}

#[test]
fn every_endpoint_of_the_contract_is_in_the_docs_table() {
    let doc = doc();
    let table = doc
        .split("## 11. Request/reply endpoints")
        .nth(1)
        .expect("docs/events.md has a section 11 on endpoints");
    for endpoint in shop_events::api::all_endpoints() {
        let row = format!("| `{}` |", endpoint.subject);
        assert!(
            table.contains(&row),
            "docs/events.md section 11 has no row for {}",
            endpoint.subject
        );
    }
    // Every service serves the same dead-letter endpoints; the table writes them once.
    for service in shop_events::api::service::ALL {
        for (_, subject) in shop_events::api::deadletters::endpoints(service) {
            let generic = subject.replacen(service, "<service>", 1);
            assert!(
                table.contains(&format!("| `{generic}` |")),
                "docs/events.md section 11 has no row for {generic}"
            );
        }
    }
}
