//! Payment's endpoints: one order's payment, and the payment gateway's books.

use serde::{Deserialize, Serialize};

use super::{endpoint, Endpoint};
use crate::ids::{Currency, Money, OrderId, PaymentId};

/// `payment.payments.get`: the body is an [`OrderRef`](super::OrderRef); replies [`PaymentView`].
pub const PAYMENTS_GET: Endpoint = endpoint!(payment, "payments", "get");
/// `payment.gateway.ledger`: any body; replies `Vec<LedgerEntry>`, the gateway's books.
pub const GATEWAY_LEDGER: Endpoint = endpoint!(payment, "gateway", "ledger");

pub const ENDPOINTS: [Endpoint; 2] = [PAYMENTS_GET, GATEWAY_LEDGER];

/// Where one order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Stock is reserved (or cancelled) but the order's terms have not arrived.
    AwaitingOrder,
    /// The order is known; the charge waits for `StockReserved`.
    AwaitingStock,
    Charging,
    Voiding,
    Captured,
    Refunding,
    Refunded,
    Declined,
    Voided,
    /// Cancelled before any charge was requested.
    Cancelled,
}

impl PaymentStatus {
    /// The status word as it appears in JSON, for example `captured`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::AwaitingOrder => "awaiting_order",
            PaymentStatus::AwaitingStock => "awaiting_stock",
            PaymentStatus::Charging => "charging",
            PaymentStatus::Voiding => "voiding",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Refunding => "refunding",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Cancelled => "cancelled",
        }
    }
}

/// One order's payment as `payment.payments.get` shows it; amounts in minor units.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentView {
    pub order_id: String,
    pub status: PaymentStatus,
    pub captured: i64,
    pub refunded: i64,
    pub currency: Option<String>,
    pub payment_id: Option<String>,
    pub decline_reason: Option<String>,
}

/// One idempotency key in the payment gateway's books (`payment.gateway.ledger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub order_id: OrderId,
    pub status: LedgerStatus,
    pub amount: Money,
    pub currency: Option<Currency>,
    /// How many charge calls arrived for this key (retries and redeliveries included).
    pub charge_calls: u32,
    pub refunded: Money,
    pub refund_calls: u32,
}

/// What an idempotency key came to at the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LedgerStatus {
    Captured { payment_id: PaymentId },
    Declined { reason: String },
    Voided,
}
