//! Checkout's NATS micro-service endpoints: place, get, cancel and list orders, and the
//! instances' answers to each other when one of them gathers a list over every partition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use shop_events::api::checkout::{
    Accepted, CancelRequest, Cancellation, CancellationAccepted, ListPart, ListRequest, OrderView,
    ENDPOINTS, ORDERS_CANCEL, ORDERS_GET, ORDERS_LIST, ORDERS_LIST_GATHER, ORDERS_PLACE,
};
use shop_events::api::{Endpoint, OrderRef};
use shop_events::partition::PARTITIONS;
use shop_events::{Envelope, Event, OrderCancellationRequested, OrderId, OrderPlaced, Problem};
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult};
use shop_runtime::shutdown::Shutdown;
use shop_runtime::store::Store;
use shop_shell::scale::Ownership;
use shop_shell::{format_ms, publish_event};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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

    /// `checkout.orders.list`: most recent first, over every partition. An instance that
    /// owns everything lists its own store; one of a group gathers a [`ListPart`] from
    /// each instance (itself included) until every partition is covered, then merges.
    pub async fn list(&self, body: &[u8]) -> ApiResult {
        let request: ListRequest = parse_request(body)?;
        let request = ListRequest {
            limit: Some(request.limit.unwrap_or(50).clamp(1, 1000)),
            ..request
        };
        if self.ownership.held().is_none() {
            return reply(&self.list_held(&request)?);
        }
        reply(&self.gather(&request).await?)
    }

    /// Asks every instance for its share and merges the shares: a partition is taken
    /// from the first share that names it, so a partition that changed owners while the
    /// request was out is not listed twice.
    async fn gather(&self, request: &ListRequest) -> Result<Vec<OrderView>, ApiError> {
        let limit = request.limit.unwrap_or(50);
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot gather the list: {e}")))?;
        let body = serde_json::to_vec(request)
            .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
        let ask = |client: async_nats::Client, inbox: String, body: Vec<u8>| async move {
            client
                .publish_with_reply(ORDERS_LIST_GATHER, inbox, body.into())
                .await
                .map_err(|e| ApiError::unavailable(format!("cannot gather the list: {e}")))
        };
        ask(client.clone(), inbox.clone(), body.clone()).await?;
        let mut missing: BTreeSet<u32> = (0..PARTITIONS).collect();
        let mut orders = Vec::new();
        let until = tokio::time::Instant::now() + GATHER_WITHIN;
        // Each instance answers for what it holds when asked, so a partition between
        // owners (an instance starting, a handover) is asked for again until someone
        // holds it or the time is up.
        let mut again =
            tokio::time::interval_at(tokio::time::Instant::now() + GATHER_AGAIN, GATHER_AGAIN);
        while !missing.is_empty() {
            let message = tokio::select! {
                m = replies.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = again.tick() => {
                    ask(client.clone(), inbox.clone(), body.clone()).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(until) => break,
            };
            let part: ListPart = match serde_json::from_slice(&message.payload) {
                Ok(part) => part,
                Err(e) => {
                    tracing::warn!(error = %e, "a list share does not decode; ignored");
                    continue;
                }
            };
            let fresh: BTreeSet<u32> = part
                .partitions
                .iter()
                .copied()
                .filter(|p| missing.remove(p))
                .collect();
            orders.extend(
                part.orders
                    .into_iter()
                    .filter(|v| fresh.contains(&self.ownership.partition(&v.order_id))),
            );
        }
        if !missing.is_empty() {
            return Err(ApiError::unavailable(format!(
                "partitions {missing:?} have no instance answering for them (between owners?); ask again"
            )));
        }
        // Newest first across the shares, as each share is; the id breaks ties so that
        // the same orders list the same way whoever answers.
        orders.sort_by_cached_key(|v| {
            let placed = v
                .placed_at
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
            (std::cmp::Reverse(placed), v.order_id.clone())
        });
        orders.truncate(limit);
        Ok(orders)
    }

    /// This instance's share: newest first, at most `limit` orders of the partitions it holds.
    pub fn list_held(&self, request: &ListRequest) -> Result<Vec<OrderView>, ApiError> {
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
            // A partition that moved away may leave its orders behind until the store
            // forgets them; they are the new owner's to list.
            if !self.ownership.holds(order_id.as_str()) {
                continue;
            }
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
        Ok(out)
    }

    /// Answers the gathering requests of `checkout.orders.list` (from any instance) with
    /// this instance's share, until shutdown.
    pub async fn serve_list_parts(self, instance: String, mut shutdown: Shutdown) {
        let client = self.js.client();
        let mut requests = match client.subscribe(ORDERS_LIST_GATHER).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(error = %e, subject = ORDERS_LIST_GATHER, "cannot serve list shares");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                m = requests.next() => match m {
                    Some(m) => m,
                    None => return,
                },
                _ = shutdown.requested() => return,
            };
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            // Held before reading, so the share never claims a partition whose orders it
            // skipped; a partition taken meanwhile is simply not in this share.
            let partitions = self.ownership.held().unwrap_or_default();
            let share = parse_request::<ListRequest>(&message.payload)
                .and_then(|request| self.list_held(&request))
                .map(|orders| {
                    let orders: Vec<OrderView> = orders
                        .into_iter()
                        .filter(|v| partitions.contains(&self.ownership.partition(&v.order_id)))
                        .collect();
                    ListPart {
                        instance: instance.clone(),
                        partitions,
                        orders,
                    }
                });
            let payload = match share.and_then(|part| {
                serde_json::to_vec(&part)
                    .map_err(|e| ApiError::internal(format!("cannot encode the share: {e}")))
            }) {
                Ok(payload) => payload,
                Err(e) => {
                    // The asker waits out its deadline and reports the partitions missing.
                    tracing::warn!(code = e.code, error = %e.description, "list share refused");
                    continue;
                }
            };
            if let Err(e) = client.publish(reply_to, payload.into()).await {
                tracing::warn!(error = %e, "cannot send a list share");
            }
        }
    }
}

/// How long `checkout.orders.list` waits for every partition's share.
const GATHER_WITHIN: Duration = Duration::from_secs(3);
/// How often it asks again for the partitions no share has named yet.
const GATHER_AGAIN: Duration = Duration::from_millis(250);

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
