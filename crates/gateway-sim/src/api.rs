//! The simulator's HTTP API as a client sees it: routes, the idempotency header, and
//! the JSON bodies of requests, answers and errors.
//!
//! These are the provider's types, not the shop's NATS contract: payment's adapter
//! keeps its own reading of them, as it would of a real provider's API. The one shared
//! type is the ledger entry, which audits compare with the PAYMENTS stream.

use serde::{Deserialize, Serialize};
use shop_events::{Currency, Money, PaymentId};

pub use shop_events::api::payment::{LedgerEntry, LedgerStatus};

/// `POST`: charge a card once per idempotency key.
pub const CHARGES: &str = "/v1/charges";
/// `POST`: promise that no charge will be made under a key, or learn the one that was.
pub const VOIDS: &str = "/v1/voids";
/// `POST`: give a key's charge back, once.
pub const REFUNDS: &str = "/v1/refunds";
/// `GET`: every entry of the books, as `Vec<LedgerEntry>`.
pub const LEDGER: &str = "/v1/ledger";
/// `GET`: answers [`Health`] once the simulator serves.
pub const HEALTHZ: &str = "/healthz";

/// The header every charge, void and refund carries: the order id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest card source accepted; the shop's own limit, so no order it accepts is refused here.
pub const MAX_SOURCE_LEN: usize = shop_events::validation::MAX_PAYMENT_TOKEN_LEN;

/// The largest body the simulator reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Minor units, zero or more.
    pub amount: Money,
    pub currency: Currency,
    /// A Stripe-style test token: `tok_visa`, `tok_chargeDeclined`, …
    pub source: String,
}

/// A charge that went through (200). Asking again under the same key gives the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: PaymentId,
    pub status: Succeeded,
    pub amount: Money,
    pub currency: Currency,
}

/// The only status a 200 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Succeeded {
    Succeeded,
}

/// `POST /v1/voids` (any empty body or `{}`): what the key came to (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Void {
    /// No charge was made, and none will be under this key.
    Voided,
    /// A charge had been made first; it needs a refund.
    AlreadyCaptured { charge: PaymentId },
    /// The key had been declined; nothing to undo.
    AlreadyDeclined { code: String },
}

/// `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// The charge being given back; it must be the key's charge.
    pub charge: PaymentId,
    /// Minor units, at most what was charged.
    pub amount: Money,
    /// The charge's currency.
    pub currency: Currency,
}

/// A refund (200); repeats under the same key change nothing and answer the first refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub charge: PaymentId,
    pub status: Succeeded,
    pub amount: Money,
    pub currency: Currency,
}

/// `GET /healthz`: serving, and how busy (for checking a client's concurrency cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: Serving,
    /// Charge, void and refund calls being answered now.
    pub in_flight: u64,
    /// The most calls ever in flight at once.
    pub max_in_flight: u64,
    /// Charge, void and refund calls received.
    pub calls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    Ok,
}

/// Every non-200 answer: `{"error": {"type", "code", "message", "param"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type")]
    pub kind: ErrorKind,
    pub code: ErrorCode,
    /// A sentence for people: what is wrong and what to send instead.
    pub message: String,
    /// The request field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
}

/// Stripe's error types, which tell a client how to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 402: the card was declined; a business answer, final for the key.
    CardError,
    /// 4xx: the request is wrong; sending it again will not help.
    InvalidRequestError,
    /// 400: the key was used before with other parameters.
    IdempotencyError,
    /// 5xx: the gateway failed; try again with the same key.
    ApiError,
}

/// What exactly went wrong; tests and clients match on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 402, card errors.
    CardDeclined,
    InsufficientFunds,
    InvalidToken,
    /// The key was voided before this charge arrived.
    Voided,
    // 400, malformed requests.
    MissingIdempotencyKey,
    InvalidIdempotencyKey,
    InvalidJson,
    BodyTooLarge,
    ParameterMissing,
    UnknownParameter,
    InvalidAmount,
    InvalidCurrency,
    InvalidSource,
    InvalidCharge,
    /// The refund asks for more than was charged.
    AmountTooLarge,
    /// The key was used before with another amount or currency.
    IdempotencyKeyReused,
    // 404, 405, 409.
    ResourceMissing,
    MethodNotAllowed,
    /// The refund does not name the key's charge, or the key has no capture to refund.
    ChargeMismatch,
    // 5xx.
    ServiceUnavailable,
    LedgerStorage,
}

impl ErrorCode {
    /// The decline code as the shop's events carry it (`card_declined`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::CardDeclined => "card_declined",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::Voided => "voided",
            ErrorCode::MissingIdempotencyKey => "missing_idempotency_key",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::ParameterMissing => "parameter_missing",
            ErrorCode::UnknownParameter => "unknown_parameter",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::InvalidCurrency => "invalid_currency",
            ErrorCode::InvalidSource => "invalid_source",
            ErrorCode::InvalidCharge => "invalid_charge",
            ErrorCode::AmountTooLarge => "amount_too_large",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::ResourceMissing => "resource_missing",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::ChargeMismatch => "charge_mismatch",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::LedgerStorage => "ledger_storage",
        }
    }

    /// The card-error code for a decline reason in the books, if it is one.
    pub fn for_decline(reason: &str) -> Option<ErrorCode> {
        match reason {
            "card_declined" => Some(ErrorCode::CardDeclined),
            "insufficient_funds" => Some(ErrorCode::InsufficientFunds),
            "invalid_token" => Some(ErrorCode::InvalidToken),
            "voided" => Some(ErrorCode::Voided),
            _ => None,
        }
    }
}
