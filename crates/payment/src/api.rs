//! Payment's NATS micro-service endpoints: an order's payment, and the gateway's books.

use std::sync::Arc;

use shop_events::api::payment::{
    PaymentStatus, PaymentView, ENDPOINTS, GATEWAY_LEDGER, PAYMENTS_GET,
};
use shop_events::api::{Endpoint, OrderRef};
use shop_events::OrderId;
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult};
use shop_runtime::store::Store;
use shop_shell::scale::Ownership;

use crate::domain::{Charge, Refund, State};
use crate::gateway::{HttpGateway, LedgerEntry, PaymentGateway};
use crate::store::Trees;
use crate::PaymentError;

#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    pub trees: Trees,
    pub gateway: Arc<HttpGateway>,
    /// Which orders this instance holds; the others are read from the changelog.
    pub ownership: Ownership,
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
        let state = if self.ownership.holds(order_id.as_str()) {
            self.store
                .read_json::<State>(self.trees.payments, order_id.as_str().as_bytes())?
        } else {
            match self.ownership.remote(order_id.as_str()).await? {
                None => None,
                Some(data) => Some(
                    crate::store::payment_from_record(order_id.as_str(), data)
                        .map_err(ApiError::internal)?,
                ),
            }
        };
        match state {
            Some(state) => reply(&payment_view(&order_id, &state)),
            None => Err(ApiError::not_found(format!(
                "no payment is known for order `{order_id}`"
            ))),
        }
    }

    /// `payment.gateway.ledger`: the gateway's own books (`GET /v1/ledger`), for audits.
    pub async fn ledger(&self, body: &[u8]) -> ApiResult {
        // No fields, but a body that is not a JSON object is still a bad request.
        let _: shop_events::api::Empty = parse_request(body)?;
        ledger_reply(self.gateway.ledger().await)
    }
}

/// The books, or a 500 whose sentence says why there are none (a gateway that keeps
/// its books to itself, or one that is down).
fn ledger_reply(books: Result<Vec<LedgerEntry>, PaymentError>) -> ApiResult {
    match books {
        Ok(entries) => reply(&entries),
        Err(e) => Err(ApiError::internal(e.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_without_books_answers_500_with_a_sentence_that_says_so() {
        let answer = ledger_reply(Err(PaymentError::LedgerNotOffered {
            url: "http://provider.invalid".into(),
        }));
        let error = answer.expect_err("no books to answer");
        assert_eq!(error.code, 500);
        assert!(error.description.contains("http://provider.invalid"));
    }
}
