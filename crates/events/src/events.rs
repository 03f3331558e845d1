//! The typed events of the saga: their `data` payloads, their kinds and their subjects.
//!
//! Names are past tense because an event states a fact that has happened.
//! `OrderPlaced` keeps loose field types (plain strings and signed integers) on
//! purpose: a well-formed order that breaks the rules must be answered with an
//! `OrderRejected` listing every problem, not dead-lettered on the first one.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{Currency, Money, OrderId, PaymentId, Sku};
use crate::problem::Problem;
use crate::stream::Domain;

/// One line of an order as the storefront sent it; see [`crate::validation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLineInput {
    pub sku: String,
    pub quantity: i64,
    /// Price of one unit in minor units.
    pub unit_price: i64,
}

/// A customer placed an order. Published by the storefront or by `checkout.orders.place`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: String,
    /// ISO 4217 code, for example `EUR`.
    pub currency: String,
    pub lines: Vec<OrderLineInput>,
    /// Σ quantity × unit_price, in minor units.
    pub total: i64,
    /// Opaque token from the payment provider (Stripe-style test tokens in the simulator).
    pub payment_token: String,
}

/// Checkout refused an order that broke the rules; nothing was reserved or charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub order_id: OrderId,
    /// Every problem found, not only the first.
    pub problems: Vec<Problem>,
}

/// The order is paid and its stock is sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    pub total: Money,
    pub currency: Currency,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    Timeout,
    CustomerRequest,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::OutOfStock => "out_of_stock",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::Timeout => "timeout",
            CancelReason::CustomerRequest => "customer_request",
        }
    }
}

/// The order ended without a sale; compensation follows (stock released, payment refunded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: CancelReason,
    /// Human-readable detail, for example which sku was short.
    #[serde(default)]
    pub detail: String,
}

/// Someone (customer, support, operator) asked for an order to be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancellationRequested {
    pub order_id: OrderId,
    #[serde(default)]
    pub reason: String,
}

/// A quantity of one sku.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLine {
    pub sku: Sku,
    pub quantity: u32,
}

/// Inventory reserved every line of the order at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: OrderId,
    pub lines: Vec<StockLine>,
}

/// One sku that could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Shortage {
    pub sku: Sku,
    pub requested: u32,
    pub available: i64,
}

/// Inventory could not reserve the order; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservationFailed {
    pub order_id: OrderId,
    /// Every short line, not only the first.
    pub shortages: Vec<Shortage>,
}

/// Stock held for, or sold to, a cancelled order is available again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    pub order_id: OrderId,
    pub lines: Vec<StockLine>,
}

/// A reservation became a sale: the stock left the shelf. (Added to the contract for audits.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockCommitted {
    pub order_id: OrderId,
    pub lines: Vec<StockLine>,
}

/// The warehouse added stock on hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReplenished {
    pub sku: Sku,
    pub quantity: u32,
}

/// The order's total was charged, exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCaptured {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub amount: Money,
    pub currency: Currency,
}

/// The gateway refused the charge; nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    /// `card_declined`, `insufficient_funds`, `invalid_token`, … (an open set).
    pub reason: String,
    pub amount: Money,
}

/// A capture was given back in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
    pub amount: Money,
    pub currency: Currency,
}

macro_rules! event_kinds {
    ($($variant:ident => $stream:ident, $verb:literal, $key:ident;)*) => {
        /// Which event a message carries; the `type` attribute without its version.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind { $($variant,)* }

        /// A decoded event of any kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Event { $($variant($variant),)* }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The event name, for example `OrderPlaced`.
            pub fn name(self) -> &'static str {
                match self { $(EventKind::$variant => stringify!($variant),)* }
            }

            /// The subject's domain token (`orders`, `inventory`, `payments`).
            pub fn domain(self) -> &'static str {
                match self { $(EventKind::$variant => Domain::$stream.token(),)* }
            }

            /// The subject's verb token, for example `placed`.
            pub fn verb(self) -> &'static str {
                match self { $(EventKind::$variant => $verb,)* }
            }

            /// The JetStream stream that stores this event.
            pub fn stream(self) -> &'static str {
                match self { $(EventKind::$variant => Domain::$stream.stream(),)* }
            }

            /// JSON Schema of the event's `data`.
            pub fn data_schema(self) -> schemars::Schema {
                match self { $(EventKind::$variant => schemars::schema_for!($variant),)* }
            }
        }

        impl Event {
            pub fn kind(&self) -> EventKind {
                match self { $(Event::$variant(_) => EventKind::$variant,)* }
            }

            /// The key that ends the subject: the order id, or the sku for stock levels.
            pub fn key(&self) -> &str {
                match self { $(Event::$variant(d) => d.$key.as_str(),)* }
            }

            /// The data payload as JSON.
            pub fn data_json(&self) -> serde_json::Value {
                let value = match self { $(Event::$variant(d) => serde_json::to_value(d),)* };
                // Serialising these plain structs cannot fail: no maps with non-string keys.
                value.unwrap_or(serde_json::Value::Null)
            }

            pub(crate) fn from_data(kind: EventKind, data: serde_json::Value) -> Result<Event, crate::DecodeError> {
                match kind {
                    $(EventKind::$variant => serde_json::from_value::<$variant>(data)
                        .map(Event::$variant)
                        .map_err(|e| crate::DecodeError::InvalidData { event: stringify!($variant), reason: e.to_string() }),)*
                }
            }
        }

        impl serde::Serialize for Event {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self { $(Event::$variant(d) => d.serialize(serializer),)* }
            }
        }

        $(impl From<$variant> for Event {
            fn from(value: $variant) -> Event { Event::$variant(value) }
        })*
    };
}

event_kinds! {
    OrderPlaced => Orders, "placed", order_id;
    OrderRejected => Orders, "rejected", order_id;
    OrderConfirmed => Orders, "confirmed", order_id;
    OrderCancelled => Orders, "cancelled", order_id;
    OrderCancellationRequested => Orders, "cancellation_requested", order_id;
    StockReserved => Inventory, "reserved", order_id;
    StockReservationFailed => Inventory, "reservation_failed", order_id;
    StockReleased => Inventory, "released", order_id;
    StockCommitted => Inventory, "committed", order_id;
    StockReplenished => Inventory, "replenished", sku;
    PaymentCaptured => Payments, "captured", order_id;
    PaymentDeclined => Payments, "declined", order_id;
    PaymentRefunded => Payments, "refunded", order_id;
}

/// The major version every event type is published with today.
pub const CURRENT_MAJOR: u32 = 1;

impl EventKind {
    /// The CloudEvents `type`, for example `shop.OrderPlaced.v1`.
    pub fn type_name(self) -> String {
        format!("shop.{}.v{}", self.name(), CURRENT_MAJOR)
    }

    /// Looks a kind up by its name, for example `OrderPlaced`.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Whether the subject key is a sku rather than an order id.
    pub fn keyed_by_sku(self) -> bool {
        matches!(self, EventKind::StockReplenished)
    }
}
