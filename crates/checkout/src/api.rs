//! Checkout's NATS micro-service endpoints: place, get, cancel and list orders.

use std::sync::Arc;

use async_nats::jetstream;
use shop_events::api::checkout::{
    Accepted, CancelRequest, Cancellation, CancellationAccepted, ListRequest, OrderView, ENDPOINTS,
    ORDERS_CANCEL, ORDERS_GET, ORDERS_LIST, ORDERS_PLACE,
};
use shop_events::api::{Endpoint, OrderRef};
use shop_events::{Envelope, Event, OrderCancellationRequested, OrderId, OrderPlaced, Problem};
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult};
use shop_runtime::store::Store;
use shop_shell::scale::Ownership;
use shop_shell::{format_ms, publish_event};

use crate::domain::{OrderStatus, State};
use crate::store::{split_time_key, Trees};
use crate::SERVICE;

/// What endpoints share.
#[derive(Clone)]
pub struct Api {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    pub trees: Trees,
    /// Which orders this instance holds; the others are read from the changelog.
    pub ownership: Ownership,
}

fn view(state: &State) -> Option<OrderView> {
    let placed = state.placed()?;
    let cancellation = state.cancellation();
    Some(OrderView {
        order_id: placed.order_id.to_string(),
        status: state.status()?,
        reason: cancellation.map(|(reason, _)| reason),
        detail: cancellation.map(|(_, detail)| detail.to_owned()),
        problems: state.problems().to_vec(),
        customer_id: placed.customer_id.clone(),
        lines: placed.lines.clone(),
        total: placed.total,
        currency: placed.currency.clone(),
        payment_id: state.payment_id().map(|p| p.to_string()),
        placed_at: state.placed_at_ms().map(format_ms),
        deadline_at: state.pending_deadline().map(format_ms),
        settled_at: state.settled_at_ms().map(format_ms),
    })
}

fn parse_order_id(text: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(text).map_err(|e| ApiError::bad_request(format!("order_id: {e}")))
}

/// Joins every problem into one description a person can act on.
pub fn describe_problems(problems: &[Problem]) -> String {
    let list: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    format!(
        "order has {} problem(s): {}",
        problems.len(),
        list.join("; ")
    )
}

impl Api {
    /// The order as its owner last committed it: from the local store if this instance
    /// holds its partition, from the changelog otherwise (any instance answers).
    async fn load(&self, order_id: &OrderId) -> Result<Option<State>, ApiError> {
        if self.ownership.holds(order_id.as_str()) {
            return self.load_local(order_id);
        }
        match self.ownership.remote(order_id.as_str()).await? {
            None => Ok(None),
            Some(data) => serde_json::from_value(data).map(Some).map_err(|e| {
                ApiError::internal(format!(
                    "the changelog record of {order_id} does not decode: {e}"
                ))
            }),
        }
    }

    fn load_local(&self, order_id: &OrderId) -> Result<Option<State>, ApiError> {
        Ok(self
            .store
            .read_json(self.trees.orders, order_id.as_str().as_bytes())?)
    }

    /// `checkout.orders.place`: validates, then publishes `OrderPlaced`.
    pub async fn place(&self, body: &[u8]) -> ApiResult {
        let placed: OrderPlaced = parse_request(body)?;
        if let Err(problems) = placed.validate() {
            return Err(ApiError::bad_request(describe_problems(&problems)));
        }
        if let Some(existing) = self.load(&placed.order_id).await? {
            if let Some(first) = existing.placed() {
                if first != &placed {
                    return Err(ApiError::bad_request(format!(
                        "order_id `{}` is already used by a different order",
                        placed.order_id
                    )));
                }
                // Same order again: idempotent, answer with where it stands.
                let status = existing.status().unwrap_or(OrderStatus::Pending);
                return reply(&Accepted {
                    order_id: placed.order_id.to_string(),
                    status,
                    event_id: String::new(),
                });
            }
        }
        let envelope = Envelope::new(SERVICE, Event::OrderPlaced(placed));
        publish_event(&self.js, &envelope).await?;
        reply(&Accepted {
            order_id: envelope.event.key().to_owned(),
            status: OrderStatus::Pending,
            event_id: envelope.meta.id,
        })
    }

    /// `checkout.orders.get`.
    pub async fn get(&self, body: &[u8]) -> ApiResult {
        let request: OrderRef = parse_request(body)?;
        let order_id = parse_order_id(&request.order_id)?;
        let state = self.load(&order_id).await?;
        match state.as_ref().and_then(view) {
            Some(v) => reply(&v),
            None => Err(ApiError::not_found(format!(
                "no order `{order_id}` is known to checkout"
            ))),
        }
    }

    /// `checkout.orders.cancel`: publishes `OrderCancellationRequested`.
    pub async fn cancel(&self, body: &[u8]) -> ApiResult {
        let request: CancelRequest = parse_request(body)?;
        let order_id = parse_order_id(&request.order_id)?;
        let Some(status) = self.load(&order_id).await?.and_then(|s| s.status()) else {
            return Err(ApiError::not_found(format!(
                "no order `{order_id}` is known to checkout"
            )));
        };
        let envelope = Envelope::new(
            SERVICE,
            Event::OrderCancellationRequested(OrderCancellationRequested {
                order_id: order_id.clone(),
                reason: if request.reason.is_empty() {
                    "requested through checkout.orders.cancel".into()
                } else {
                    request.reason
                },
            }),
        );
        publish_event(&self.js, &envelope).await?;
        reply(&CancellationAccepted {
            order_id: order_id.to_string(),
            status,
            cancellation: Cancellation::Requested,
            event_id: envelope.meta.id,
        })
    }

    /// `checkout.orders.list`: most recent first.
    pub async fn list(&self, body: &[u8]) -> ApiResult {
        let request: ListRequest = parse_request(body)?;
        let limit = request.limit.unwrap_or(50).clamp(1, 1000);
        let mut out = Vec::new();
        for key in self.store.tree(self.trees.placed).iter().keys().rev() {
            let key = key.map_err(|e| ApiError::internal(e.to_string()))?;
            let Some((_, id)) = split_time_key(&key) else {
                continue;
            };
            let Ok(order_id) = OrderId::parse(id) else {
                continue;
            };
            let Some(v) = self.load_local(&order_id)?.as_ref().and_then(view) else {
                continue;
            };
            if request.status.is_none_or(|s| s == v.status) {
                out.push(v);
                if out.len() >= limit {
                    break;
                }
            }
        }
        reply(&out)
    }
}

impl shop_runtime::micro::Api for Api {
    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        ENDPOINTS.map(Endpoint::registration).to_vec()
    }

    async fn call(&self, name: &'static str, body: bytes::Bytes) -> ApiResult {
        match Endpoint::find(&ENDPOINTS, name) {
            Some(ORDERS_PLACE) => self.place(&body).await,
            Some(ORDERS_GET) => self.get(&body).await,
            Some(ORDERS_CANCEL) => self.cancel(&body).await,
            Some(ORDERS_LIST) => self.list(&body).await,
            _ => Err(ApiError::not_found(format!("no endpoint {name}"))),
        }
    }
}
