//! Payment's NATS micro-service endpoints: an order's payment, and the simulator's books.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shop_events::OrderId;
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult};
use shop_runtime::store::Store;

use crate::domain::{Charge, Refund, State};
use crate::gateway::SimulatedGateway;
use crate::store::Trees;

#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    pub trees: Trees,
    pub gateway: Arc<SimulatedGateway>,
}

/// One order's payment as `payment.payments.get` shows it; amounts in minor units.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentView {
    pub order_id: String,
    /// `awaiting_order`, `awaiting_stock`, `charging`, `voiding`, `captured`, `refunding`,
    /// `refunded`, `declined`, `voided`, `cancelled`.
    pub status: String,
    pub captured: i64,
    pub refunded: i64,
    pub currency: Option<String>,
    pub payment_id: Option<String>,
    pub decline_reason: Option<String>,
}

/// The status word for a record.
pub fn status_of(state: &State) -> &'static str {
    match (&state.charge, state.refund) {
        (Charge::Captured { .. }, Refund::Refunded) => "refunded",
        (Charge::Captured { .. }, Refund::Due) => "refunding",
        (Charge::Captured { .. }, Refund::NotNeeded) => "captured",
        (Charge::Due, _) => "charging",
        (Charge::VoidDue, _) => "voiding",
        (Charge::Declined { .. }, _) => "declined",
        (Charge::Voided, _) => "voided",
        (Charge::NotRequested, _) if state.cancelled => "cancelled",
        (Charge::NotRequested, _) if state.terms.is_none() => "awaiting_order",
        (Charge::NotRequested, _) => "awaiting_stock",
    }
}

pub fn payment_view(order_id: &OrderId, state: &State) -> PaymentView {
    let amount = state
        .terms
        .as_ref()
        .map(|t| t.amount.minor_units())
        .unwrap_or(0);
    let (captured, payment_id, decline_reason) = match &state.charge {
        Charge::Captured { payment_id } => (amount, Some(payment_id.to_string()), None),
        Charge::Declined { reason } => (0, None, Some(reason.clone())),
        _ => (0, None, None),
    };
    PaymentView {
        order_id: order_id.to_string(),
        status: status_of(state).to_owned(),
        captured,
        refunded: if state.refund == Refund::Refunded {
            amount
        } else {
            0
        },
        currency: state.terms.as_ref().map(|t| t.currency.to_string()),
        payment_id,
        decline_reason,
    }
}

#[derive(Deserialize)]
struct OrderRef {
    order_id: String,
}

impl Api {
    /// `payment.payments.get`.
    pub async fn get(&self, body: &[u8]) -> ApiResult {
        let request: OrderRef = parse_request(body)?;
        let order_id = OrderId::parse(request.order_id)
            .map_err(|e| ApiError::bad_request(format!("order_id: {e}")))?;
        match self
            .store
            .read_json::<State>(self.trees.payments, order_id.as_str().as_bytes())?
        {
            Some(state) => reply(&payment_view(&order_id, &state)),
            None => Err(ApiError::not_found(format!(
                "no payment is known for order `{order_id}`"
            ))),
        }
    }

    /// `payment.gateway.ledger`: the simulator's own books, for audits.
    pub async fn ledger(&self, _body: &[u8]) -> ApiResult {
        let entries = self
            .gateway
            .ledger()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        reply(&entries)
    }
}

impl shop_runtime::micro::Api for Api {
    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("payments_get", "payment.payments.get"),
            ("gateway_ledger", "payment.gateway.ledger"),
        ]
    }

    async fn call(&self, name: &'static str, body: bytes::Bytes) -> ApiResult {
        match name {
            "payments_get" => self.get(&body).await,
            "gateway_ledger" => self.ledger(&body).await,
            other => Err(ApiError::not_found(format!("no endpoint {other}"))),
        }
    }
}
