//! Our reading of the gateway's HTTP API: routes and the JSON we send and read.
//!
//! Kept apart from the simulator's own types on purpose: this is the client's view
//! of a provider's API (it reads only the fields it needs and tolerates new ones), the
//! part a real provider's adapter rewrites. The adapter's tests run it against the
//! simulator, which keeps the two in step.

use serde::{Deserialize, Serialize};
use shop_events::{Currency, Money, PaymentId};

pub const CHARGES: &str = "/v1/charges";
pub const VOIDS: &str = "/v1/voids";
pub const REFUNDS: &str = "/v1/refunds";
pub const LEDGER: &str = "/v1/ledger";

/// The header every charge, void and refund carries: the order id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Serialize)]
pub struct ChargeRequest<'a> {
    pub amount: Money,
    pub currency: Currency,
    pub source: &'a str,
}

/// A 200 to a charge.
#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: PaymentId,
}

/// A 200 to a void.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Void {
    Voided,
    AlreadyCaptured { charge: PaymentId },
    AlreadyDeclined { code: String },
}

#[derive(Debug, Serialize)]
pub struct RefundRequest<'a> {
    pub charge: &'a PaymentId,
    pub amount: Money,
    pub currency: Currency,
}

/// Any non-200 answer; a 402's `code` is the decline reason.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
}
