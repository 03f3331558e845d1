//! The bench's orders and the events of the happy path, built from the contract's own types
//! so that the baseline carries byte-for-byte the same sizes as the real saga.

use std::collections::BTreeMap;

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use shop_events::{
    Currency, Envelope, Event, EventKind, Money, OrderConfirmed, OrderId, OrderLineInput,
    OrderPlaced, PaymentCaptured, PaymentId, Sku, StockCommitted, StockLine, StockReserved,
};

use crate::BenchError;

/// Where the bench's orders say they come from, like the harness's storefront.
pub const STOREFRONT: &str = shop_events::api::upstream::STOREFRONT;

/// The skus the bench sells; two per order, so a reservation touches two stock records.
pub const SKUS: [&str; 8] = [
    "bench-sku-0",
    "bench-sku-1",
    "bench-sku-2",
    "bench-sku-3",
    "bench-sku-4",
    "bench-sku-5",
    "bench-sku-6",
    "bench-sku-7",
];

/// A payment token the gateway simulator always captures.
pub const TOKEN: &str = "tok_visa";

/// Order ids are `o-` plus a UUIDv7 in hex: 34 characters, unique, time-ordered.
pub fn new_order_id() -> String {
    format!("o-{}", uuid::Uuid::now_v7().simple())
}

/// Same length as [`new_order_id`], and `x` never occurs in hex, so it cannot collide.
const ORDER_ID_PLACEHOLDER: &str = "o-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn invalid(e: impl std::fmt::Display) -> BenchError {
    BenchError::Options(format!("bench payload does not fit the contract: {e}"))
}

fn order_lines(seq: u64) -> Vec<(usize, i64)> {
    let first = (seq as usize) % SKUS.len();
    vec![(first, 1999), ((first + 1) % SKUS.len(), 500)]
}

/// `OrderPlaced` for `order_id`: two lines of one unit each, paid with [`TOKEN`].
pub fn order_placed(order_id: &str, seq: u64) -> Result<Envelope, BenchError> {
    let lines: Vec<OrderLineInput> = order_lines(seq)
        .into_iter()
        .map(|(sku, unit_price)| OrderLineInput {
            sku: SKUS[sku].to_owned(),
            quantity: 1,
            unit_price,
        })
        .collect();
    let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
    let placed = OrderPlaced {
        order_id: OrderId::parse(order_id).map_err(invalid)?,
        customer_id: "bench-customer".to_owned(),
        currency: "EUR".to_owned(),
        lines,
        total,
        payment_token: TOKEN.to_owned(),
    };
    Ok(Envelope::new(STOREFRONT, Event::OrderPlaced(placed)))
}

/// The message a producer sends: the event's JSON with `Nats-Msg-Id` set to its id.
pub fn publish_message(envelope: &Envelope) -> PublishMessage {
    PublishMessage::build()
        .message_id(&envelope.meta.id)
        .payload(Bytes::from(envelope.to_json()))
}

/// Pre-rendered bodies of the events the services publish on the happy path, with a
/// placeholder where the order id goes. The baseline only splices the id in: it
/// stands in for the services without any of their work, but sends the same bytes.
#[derive(Debug, Clone)]
pub struct Templates {
    bodies: BTreeMap<EventKind, String>,
}

impl Templates {
    pub fn new() -> Result<Templates, BenchError> {
        let placed = order_placed(ORDER_ID_PLACEHOLDER, 0)?;
        let order_id = OrderId::parse(ORDER_ID_PLACEHOLDER).map_err(invalid)?;
        let stock_lines: Vec<StockLine> = order_lines(0)
            .into_iter()
            .map(|(sku, _)| {
                Ok(StockLine {
                    sku: Sku::parse(SKUS[sku]).map_err(invalid)?,
                    quantity: 1,
                })
            })
            .collect::<Result<_, BenchError>>()?;
        let currency = Currency::parse("EUR").map_err(invalid)?;
        let amount = Money(2499);
        // Same shape as the payment simulator's ids: `pay_` plus a UUIDv7 in hex.
        let payment_id =
            PaymentId::parse(format!("pay_{}", uuid::Uuid::now_v7().simple())).map_err(invalid)?;
        let events = [
            Event::StockReserved(StockReserved {
                order_id: order_id.clone(),
                lines: stock_lines.clone(),
            }),
            Event::PaymentCaptured(PaymentCaptured {
                order_id: order_id.clone(),
                payment_id,
                amount,
                currency,
            }),
            Event::OrderConfirmed(OrderConfirmed {
                order_id: order_id.clone(),
                total: amount,
                currency,
            }),
            Event::StockCommitted(StockCommitted {
                order_id,
                lines: stock_lines,
            }),
        ];
        let bodies = events
            .into_iter()
            .map(|event| {
                let kind = event.kind();
                // Every reaction is caused by an event of the saga and comes from the
                // service that publishes it, as in the shop.
                let source = shop_events::rights_names::publishers(kind)[0];
                let envelope = Envelope::new(source, event).caused_by(&placed.meta);
                let body = String::from_utf8(envelope.to_json()).map_err(invalid)?;
                Ok((kind, body))
            })
            .collect::<Result<_, BenchError>>()?;
        Ok(Templates { bodies })
    }

    /// The JSON body of `kind` about `order_id`.
    pub fn body(&self, kind: EventKind, order_id: &str) -> Option<String> {
        Some(
            self.bodies
                .get(&kind)?
                .replace(ORDER_ID_PLACEHOLDER, order_id),
        )
    }

    /// The subject and message for `kind` about `order_id`, with a fresh `Nats-Msg-Id`.
    pub fn message(&self, kind: EventKind, order_id: &str) -> Option<(String, PublishMessage)> {
        let body = self.body(kind, order_id)?;
        let subject = shop_events::subjects::event_subject(kind, order_id);
        let message = PublishMessage::build()
            .message_id(shop_events::envelope::new_event_id())
            .payload(Bytes::from(body));
        Some((subject, message))
    }

    /// Body size of each event kind, for the report.
    pub fn sizes(&self) -> BTreeMap<String, usize> {
        self.bodies
            .iter()
            .map(|(k, b)| (k.name().to_owned(), b.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_decode_as_real_events_once_the_id_is_spliced_in() {
        let templates = Templates::new().expect("templates");
        let id = new_order_id();
        assert_eq!(id.len(), ORDER_ID_PLACEHOLDER.len());
        for kind in [
            EventKind::StockReserved,
            EventKind::PaymentCaptured,
            EventKind::OrderConfirmed,
            EventKind::StockCommitted,
        ] {
            let (subject, _) = templates.message(kind, &id).expect("template");
            let body = templates.body(kind, &id).expect("template");
            let envelope = shop_events::decode(&subject, body.as_bytes()).expect("decodes");
            assert_eq!(envelope.event.key(), id);
        }
    }
}
