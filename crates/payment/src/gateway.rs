//! The payment gateway port, and its HTTP adapter ([`http`]).
//!
//! Every call is idempotent by the order id, the gateway's idempotency key:
//! charging twice for one order returns the first result instead of charging
//! again, refunds likewise. The gateway keeps its books durable before it answers,
//! so a crash of ours between its answer and our record only repeats a call whose
//! result it already knows. Which gateway stands behind the port is deployment:
//! `gateway-sim` (crates/gateway-sim) locally and in tests, a real provider's
//! adapter in its place.

pub mod http;
mod wire;

use std::future::Future;

use shop_events::{Currency, Money, OrderId, PaymentId};

use crate::PaymentError;

pub use http::{HttpGateway, HttpGatewayConfig};
pub use shop_events::api::payment::{LedgerEntry, LedgerStatus};

/// Crash point (`SHOP_CRASHPOINT`, see `shop_runtime::crashpoint`): the gateway charged and
/// its books are durable, the answer is not recorded yet. A restart charges again under the
/// same idempotency key and gets the first answer back.
pub const AFTER_GATEWAY_CHARGE_BEFORE_RECORD: &str = "after_gateway_charge_before_record";

/// What a charge came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { payment_id: PaymentId },
    Declined { reason: String },
}

/// What voiding an idempotency key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidOutcome {
    /// No charge was made, and none will be under this key.
    Voided,
    /// A charge had already been made; it must be refunded.
    AlreadyCaptured { payment_id: PaymentId },
    /// The key had been declined; nothing to undo.
    AlreadyDeclined { reason: String },
}

/// The port the payment service charges through. Business answers (a decline) are
/// outcomes; errors are failures, and [`PaymentError::is_transient`] says which to retry.
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(
        &self,
        key: &OrderId,
        amount: Money,
        currency: Currency,
        token: &str,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentError>> + Send;

    fn void(&self, key: &OrderId)
        -> impl Future<Output = Result<VoidOutcome, PaymentError>> + Send;

    fn refund(
        &self,
        key: &OrderId,
        payment_id: &PaymentId,
        amount: Money,
        currency: Currency,
    ) -> impl Future<Output = Result<(), PaymentError>> + Send;

    /// The gateway's books, for audits; [`PaymentError::LedgerNotOffered`] where it
    /// keeps them to itself.
    fn ledger(&self) -> impl Future<Output = Result<Vec<LedgerEntry>, PaymentError>> + Send;
}
