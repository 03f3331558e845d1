//! The shop's event contract, shared by every service and by upstream producers.
//!
//! It holds the CloudEvents 1.0 envelope, the typed events, the validation every
//! service applies in the same way, subject and stream names, and the JSON
//! Schemas generated from these types. It has no async code and no NATS client,
//! so a producer in any language can be checked against it.
//!
//! # The saga table
//!
//! | event | published by | who reacts | what follows |
//! |---|---|---|---|
//! | `OrderPlaced` | storefront / `checkout.orders.place` | checkout | valid: order pending with a deadline; invalid: `OrderRejected` |
//! | | | inventory | valid: reserve every line at once → `StockReserved` or `StockReservationFailed` |
//! | | | payment | valid: remember amount and token; charge once stock is reserved |
//! | `StockReserved` | inventory | payment | charge the card → `PaymentCaptured` or `PaymentDeclined` |
//! | `StockReservationFailed` | inventory | checkout | `OrderCancelled(out_of_stock)` |
//! | `PaymentCaptured` | payment | checkout | pending: `OrderConfirmed`; already cancelled: nothing (payment refunds on its own) |
//! | `PaymentDeclined` | payment | checkout | `OrderCancelled(payment_declined)` |
//! | `OrderConfirmed` | checkout | inventory | reservation becomes a sale → `StockCommitted` |
//! | `OrderCancelled` | checkout | inventory | reserved: `StockReleased`; sold: back on the shelf, `StockReleased`; unknown: tombstone |
//! | | | payment | captured: `PaymentRefunded`; charge not yet made: never made; unknown: tombstone |
//! | `OrderCancellationRequested` | upstream / operator | checkout | pending or confirmed: `OrderCancelled(customer_request)`; otherwise nothing |
//! | `StockReplenished` | warehouse / `inventory.stock.replenish` | inventory | on hand grows |
//! | deadline passes | checkout's own timer | checkout | pending: `OrderCancelled(timeout)` |
//!
//! `docs/architecture.md` spells out the races (events that arrive out of order).

pub mod api;
pub mod envelope;
pub mod error;
pub mod events;
pub mod ids;
pub mod partition;
pub mod problem;
pub mod rights_names;
pub mod schema;
pub mod stream;
pub mod subjects;
pub mod validation;

pub use envelope::{decode, Envelope, Meta, SPEC_VERSION};
pub use error::DecodeError;
pub use events::*;
pub use ids::{Currency, CustomerId, Money, OrderId, PaymentId, Sku};
pub use validation::{Problem, ProblemCode, ValidLine, ValidOrder};
