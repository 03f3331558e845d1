//! Sample events shared by the integration tests.
#![allow(dead_code)]

use serde_json::{json, Value};
use shop_events::*;

pub fn order_id(value: &str) -> OrderId {
    OrderId::parse(value).expect("valid order id")
}

pub fn sku(value: &str) -> Sku {
    Sku::parse(value).expect("valid sku")
}

pub fn eur() -> Currency {
    Currency::parse("EUR").expect("valid currency")
}

pub fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLineInput {
    OrderLineInput {
        sku: sku.to_owned(),
        quantity,
        unit_price,
    }
}

/// A placed order that passes every rule.
pub fn valid_order() -> OrderPlaced {
    OrderPlaced {
        order_id: order_id("o-1001"),
        customer_id: "c-42".to_owned(),
        currency: "EUR".to_owned(),
        lines: vec![line("sku-red-shirt", 2, 1250), line("sku_blue_mug", 1, 899)],
        total: 3399,
        payment_token: "tok_visa".to_owned(),
    }
}

/// One sample event of `kind`; the match is exhaustive so a new kind must be added here.
pub fn sample(kind: EventKind) -> Event {
    let o = || order_id("o-1001");
    let stock = || {
        vec![
            StockLine {
                sku: sku("sku-red-shirt"),
                quantity: 2,
            },
            StockLine {
                sku: sku("sku_blue_mug"),
                quantity: 1,
            },
        ]
    };
    match kind {
        EventKind::OrderPlaced => valid_order().into(),
        EventKind::OrderRejected => OrderRejected {
            order_id: o(),
            problems: vec![Problem {
                field: "lines".to_owned(),
                code: ProblemCode::NoLines,
                message: "an order needs at least one line".to_owned(),
            }],
        }
        .into(),
        EventKind::OrderConfirmed => OrderConfirmed {
            order_id: o(),
            total: Money(3399),
            currency: eur(),
        }
        .into(),
        EventKind::OrderCancelled => OrderCancelled {
            order_id: o(),
            reason: CancelReason::OutOfStock,
            detail: "sku-red-shirt: 2 requested, 1 available".to_owned(),
        }
        .into(),
        EventKind::OrderCancellationRequested => OrderCancellationRequested {
            order_id: o(),
            reason: "changed my mind".to_owned(),
        }
        .into(),
        EventKind::StockReserved => StockReserved {
            order_id: o(),
            lines: stock(),
        }
        .into(),
        EventKind::StockReservationFailed => StockReservationFailed {
            order_id: o(),
            shortages: vec![Shortage {
                sku: sku("sku-red-shirt"),
                requested: 2,
                available: 1,
            }],
        }
        .into(),
        EventKind::StockReleased => StockReleased {
            order_id: o(),
            lines: stock(),
        }
        .into(),
        EventKind::StockCommitted => StockCommitted {
            order_id: o(),
            lines: stock(),
        }
        .into(),
        EventKind::StockReplenished => StockReplenished {
            sku: sku("sku-red-shirt"),
            quantity: 50,
        }
        .into(),
        EventKind::PaymentCaptured => PaymentCaptured {
            order_id: o(),
            payment_id: PaymentId::parse("pay_01").expect("valid payment id"),
            amount: Money(3399),
            currency: eur(),
        }
        .into(),
        EventKind::PaymentDeclined => PaymentDeclined {
            order_id: o(),
            reason: "card_declined".to_owned(),
            amount: Money(3399),
        }
        .into(),
        EventKind::PaymentRefunded => PaymentRefunded {
            order_id: o(),
            payment_id: PaymentId::parse("pay_01").expect("valid payment id"),
            amount: Money(3399),
            currency: eur(),
        }
        .into(),
    }
}

/// A valid `OrderPlaced` envelope as JSON, for tests that break it one attribute at a time.
pub fn order_placed_json() -> Value {
    json!({
        "specversion": "1.0",
        "id": "0190a5f0-0000-7000-8000-000000000001",
        "source": "storefront",
        "type": "shop.OrderPlaced.v1",
        "subject": "o-1001",
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "correlationid": "o-1001",
        "data": {
            "order_id": "o-1001",
            "customer_id": "c-42",
            "currency": "EUR",
            "lines": [
                { "sku": "sku-red-shirt", "quantity": 2, "unit_price": 1250 },
                { "sku": "sku_blue_mug", "quantity": 1, "unit_price": 899 }
            ],
            "total": 3399,
            "payment_token": "tok_visa"
        }
    })
}

pub const ORDER_PLACED_SUBJECT: &str = "events.orders.placed.o-1001";

pub fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialisable")
}
