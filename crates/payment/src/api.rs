//! Payment's NATS micro-service endpoints: an order's payment, and the simulator's books.

use std::sync::Arc;

use shop_events::api::payment::{
    PaymentStatus, PaymentView, ENDPOINTS, GATEWAY_LEDGER, PAYMENTS_GET,
};
use shop_events::api::{Endpoint, OrderRef};
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

/// Where a record stands, in the contract's words.
pub fn status_of(state: &State) -> PaymentStatus {
    match state {
        State::Unknown | State::AwaitingOrder { .. } => PaymentStatus::AwaitingOrder,
        State::AwaitingStock { .. } => PaymentStatus::AwaitingStock,
        State::Cancelled { .. } => PaymentStatus::Cancelled,
        State::ChargeRequested { charge, .. } => match charge {
            Charge::Due => PaymentStatus::Charging,
            Charge::VoidDue => PaymentStatus::Voiding,
            Charge::Captured { refund, .. } => match refund {
                Refund::NotNeeded => PaymentStatus::Captured,
                Refund::Due => PaymentStatus::Refunding,
                Refund::Refunded => PaymentStatus::Refunded,
            },
            Charge::Declined { .. } => PaymentStatus::Declined,
            Charge::Voided => PaymentStatus::Voided,
        },
    }
}

pub fn payment_view(order_id: &OrderId, state: &State) -> PaymentView {
    let amount = state.terms().map(|t| t.amount.minor_units()).unwrap_or(0);
    let (captured, payment_id, decline_reason) = match state.charge() {
        Some(Charge::Captured { payment_id, .. }) => (amount, Some(payment_id.to_string()), None),
        Some(Charge::Declined { reason }) => (0, None, Some(reason.clone())),
        _ => (0, None, None),
    };
    PaymentView {
        order_id: order_id.to_string(),
        status: status_of(state),
        captured,
        refunded: if state.refund() == Refund::Refunded {
            amount
        } else {
            0
        },
        currency: state.terms().map(|t| t.currency.to_string()),
        payment_id,
        decline_reason,
    }
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
        ENDPOINTS.map(Endpoint::registration).to_vec()
    }

    async fn call(&self, name: &'static str, body: bytes::Bytes) -> ApiResult {
        match Endpoint::find(&ENDPOINTS, name) {
            Some(PAYMENTS_GET) => self.get(&body).await,
            Some(GATEWAY_LEDGER) => self.ledger(&body).await,
            _ => Err(ApiError::not_found(format!("no endpoint {name}"))),
        }
    }
}
