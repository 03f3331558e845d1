//! Checkout's NATS micro-service endpoints: place, get, cancel and list orders, and the
//! instances' answers to each other when one of them gathers a list over every partition.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use shop_events::api::checkout::{
    Accepted, CancelRequest, Cancellation, CancellationAccepted, ListAsk, ListPart, ListRequest,
    OrderView, ENDPOINTS, ORDERS_CANCEL, ORDERS_GET, ORDERS_LIST, ORDERS_LIST_GATHER, ORDERS_PLACE,
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
        load_local(&self.store, self.trees, order_id)
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
            return reply(&self.list_held(&request, None)?);
        }
        reply(&self.gather(&request).await?)
    }

    /// Asks every instance for its share and merges the shares. Each ask names the
    /// partitions still missing, and a share is taken only if every partition it names
    /// is still missing: a share is the newest `limit` orders of *its* partitions, so one
    /// that overlaps a share already taken (a partition that changed owners while the
    /// request was out) spent part of its `limit` on orders that are not used, and could
    /// leave out orders of its other partitions. Its partitions are asked for again.
    async fn gather(&self, request: &ListRequest) -> Result<Vec<OrderView>, ApiError> {
        let limit = request.limit.unwrap_or(50);
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot gather the list: {e}")))?;
        let ask = |missing: &BTreeSet<u32>| {
            let client = client.clone();
            let inbox = inbox.clone();
            let body = serde_json::to_vec(&ListAsk {
                request: request.clone(),
                partitions: missing.iter().copied().collect(),
            });
            async move {
                let body = body
                    .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
                client
                    .publish_with_reply(ORDERS_LIST_GATHER, inbox, body.into())
                    .await
                    .map_err(|e| ApiError::unavailable(format!("cannot gather the list: {e}")))
            }
        };
        let mut missing: BTreeSet<u32> = (0..PARTITIONS).collect();
        ask(&missing).await?;
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
                    ask(&missing).await?;
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
            let claimed: BTreeSet<u32> = part.partitions.iter().copied().collect();
            if !share_fits(&claimed, &missing) {
                tracing::debug!(instance = %part.instance, partitions = ?claimed,
                    "a list share overlaps one already taken; its partitions are asked again");
                continue;
            }
            missing.retain(|p| !claimed.contains(p));
            orders.extend(
                part.orders
                    .into_iter()
                    .filter(|v| claimed.contains(&self.ownership.partition(&v.order_id))),
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

    /// This instance's list: see [`list_held`].
    pub fn list_held(
        &self,
        request: &ListRequest,
        only: Option<&BTreeSet<u32>>,
    ) -> Result<Vec<OrderView>, ApiError> {
        list_held(&self.store, self.trees, &self.ownership, request, only)
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
            let share = parse_request::<ListAsk>(&message.payload)
                .and_then(|ask| share(&self.store, self.trees, &self.ownership, &instance, &ask));
            let payload = match share.and_then(|part| {
                part.map(|part| {
                    serde_json::to_vec(&part)
                        .map_err(|e| ApiError::internal(format!("cannot encode the share: {e}")))
                })
                .transpose()
            }) {
                Ok(Some(payload)) => payload,
                // Nothing asked for is held here: the owners answer.
                Ok(None) => continue,
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

/// This instance's list: newest first, at most `limit` orders of the partitions it
/// holds (of `only` among them, when given).
pub fn list_held(
    store: &Store,
    trees: Trees,
    ownership: &Ownership,
    request: &ListRequest,
    only: Option<&BTreeSet<u32>>,
) -> Result<Vec<OrderView>, ApiError> {
    let limit = request.limit.unwrap_or(50).clamp(1, 1000);
    let mut out = Vec::new();
    for key in store.tree(trees.placed).iter().keys().rev() {
        let key = key.map_err(|e| ApiError::internal(e.to_string()))?;
        let Some((_, id)) = split_time_key(&key) else {
            continue;
        };
        let Ok(order_id) = OrderId::parse(id) else {
            continue;
        };
        if only.is_some_and(|only| !only.contains(&ownership.partition(id))) {
            continue;
        }
        // A partition that moved away may leave its orders behind until the store
        // forgets them; they are the new owner's to list.
        if !ownership.holds(order_id.as_str()) {
            continue;
        }
        let Some(v) = load_local(store, trees, &order_id)?.as_ref().and_then(view) else {
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

/// This instance's share for `ask`: the asked partitions it holds under the same
/// fence before and after reading them, with their newest orders; `None` when it
/// holds none of them, or when one changed hands during the read (its orders may be
/// missing from the read, so the share would claim a partition it did not list; the
/// asker asks again for it).
pub fn share(
    store: &Store,
    trees: Trees,
    ownership: &Ownership,
    instance: &str,
    ask: &ListAsk,
) -> Result<Option<ListPart>, ApiError> {
    let asked: BTreeSet<u32> = ask.partitions.iter().copied().collect();
    let held = |fenced: Option<BTreeMap<u32, u64>>| -> BTreeMap<u32, u64> {
        fenced
            .unwrap_or_else(|| (0..PARTITIONS).map(|p| (p, 0)).collect())
            .into_iter()
            .filter(|(p, _)| asked.contains(p))
            .collect()
    };
    let before = held(ownership.fenced_now());
    if before.is_empty() {
        return Ok(None);
    }
    let partitions: BTreeSet<u32> = before.keys().copied().collect();
    let orders = list_held(store, trees, ownership, &ask.request, Some(&partitions))?;
    let after = held(ownership.fenced_now());
    if before.iter().any(|(p, epoch)| after.get(p) != Some(epoch)) {
        return Ok(None);
    }
    Ok(Some(ListPart {
        instance: instance.to_owned(),
        partitions: partitions.into_iter().collect(),
        orders,
    }))
}

fn load_local(store: &Store, trees: Trees, order_id: &OrderId) -> Result<Option<State>, ApiError> {
    Ok(store.read_json(trees.orders, order_id.as_str().as_bytes())?)
}

/// Whether a share may be taken: it names at least one partition, and only partitions no
/// share taken before has covered.
fn share_fits(claimed: &BTreeSet<u32>, missing: &BTreeSet<u32>) -> bool {
    !claimed.is_empty() && claimed.is_subset(missing)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::handlers::tests::{open_store, place};

    /// Orders `o-a-1..=3` (older) in partition 0 and `o-b-1..=3` (newer) in partition 1.
    fn two_partitions(store: &Store, trees: Trees) -> Ownership {
        let clock = ManualClock::at(1_000_000);
        for id in ["o-a-1", "o-a-2", "o-a-3", "o-b-1", "o-b-2", "o-b-3"] {
            place(store, trees, id, &clock);
            clock.advance(Duration::from_millis(1));
        }
        Ownership::fixed([0, 1], |id: &str| u32::from(id.starts_with("o-b")))
    }

    fn ask(partitions: &[u32], limit: usize) -> ListAsk {
        ListAsk {
            request: ListRequest {
                status: None,
                limit: Some(limit),
            },
            partitions: partitions.to_vec(),
        }
    }

    fn ids(part: &ListPart) -> Vec<&str> {
        part.orders.iter().map(|v| v.order_id.as_str()).collect()
    }

    #[test]
    fn a_share_spends_its_limit_only_on_the_partitions_asked_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, trees) = open_store(dir.path());
        let ownership = two_partitions(&store, trees);
        // Partition 1's orders are the newest: a share that listed every partition it
        // holds would fill its limit with them and leave out partition 0's.
        let part = share(&store, trees, &ownership, "ck-1", &ask(&[0, 5], 3))
            .expect("a share")
            .expect("partition 0 is held here");
        assert_eq!(
            part.partitions,
            vec![0],
            "only asked partitions that are held"
        );
        assert_eq!(ids(&part), vec!["o-a-3", "o-a-2", "o-a-1"]);

        let both = share(&store, trees, &ownership, "ck-1", &ask(&[0, 1], 3))
            .expect("a share")
            .expect("both are held here");
        assert_eq!(both.partitions, vec![0, 1]);
        assert_eq!(ids(&both), vec!["o-b-3", "o-b-2", "o-b-1"]);
    }

    #[test]
    fn an_instance_holding_none_of_the_asked_partitions_does_not_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, trees) = open_store(dir.path());
        let ownership = two_partitions(&store, trees);
        assert_eq!(
            share(&store, trees, &ownership, "ck-1", &ask(&[7, 9], 50)).expect("no error"),
            None
        );
    }

    #[test]
    fn a_share_is_taken_only_if_every_partition_it_names_is_still_missing() {
        let missing: BTreeSet<u32> = [1, 2, 3].into();
        assert!(share_fits(&[2, 3].into(), &missing));
        assert!(
            !share_fits(&[3, 4].into(), &missing),
            "overlaps a taken one"
        );
        assert!(!share_fits(&BTreeSet::new(), &missing), "names nothing");
    }
}
