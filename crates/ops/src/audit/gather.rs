//! The audit's reads: every event of the three streams, then the services' state for
//! every order and sku the events mention. All I/O of the audit lives here.

use shop_events::api::checkout::ORDERS_GET;
use shop_events::api::inventory::STOCK_LIST;
use shop_events::api::payment::{GATEWAY_LEDGER, PAYMENTS_GET};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::{jetstream, Client};
use futures::StreamExt;
use serde_json::Value;
use shop_events::api::{Empty, OrderRef};
use time::OffsetDateTime;

use crate::nats::{self, answers_ping, request_found, SERVICES};
use crate::reader::{read_event_stream, StoredEvent, EVENT_STREAMS};
use crate::OpsError;
use shop_events::partition::GROUPS_BUCKET;

/// How many per-order requests are in flight at once: enough to read tens of thousands
/// of orders in seconds, few enough not to crowd out the shop's own work.
const PARALLEL_REQUESTS: usize = 32;

// The services' replies, in the contract's own types: the audit reads exactly what the
// services answer, so a change to a reply is a compile error here, not a silent default.
pub use shop_events::api::checkout::OrderView as CheckoutView;
pub use shop_events::api::inventory::StockView;
pub use shop_events::api::payment::{LedgerEntry, LedgerStatus, PaymentView};

/// Everything the checks look at; a service that did not answer leaves its part `None`.
#[derive(Debug, Clone)]
pub struct Books {
    pub now: OffsetDateTime,
    /// Every stored event, stream after stream, each stream in order.
    pub events: Vec<StoredEvent>,
    /// Checkout's view per order id; `None` inside when checkout does not know the order.
    pub checkout: Option<HashMap<String, Option<CheckoutView>>>,
    pub payments: Option<HashMap<String, Option<PaymentView>>>,
    pub stock: Option<Vec<StockView>>,
    pub ledger: Option<Vec<LedgerEntry>>,
    /// STATS outbox backlog per service; `None` when the service did not answer.
    pub outboxes: BTreeMap<String, Option<u64>>,
}

pub async fn gather(client: &Client) -> Result<Books, OpsError> {
    let js = jetstream::new(client.clone());
    let mut events = Vec::new();
    for stream in EVENT_STREAMS {
        events.extend(read_event_stream(&js, stream).await?);
    }
    let order_ids: BTreeSet<String> = events
        .iter()
        .filter_map(|e| e.envelope())
        .filter(|e| !e.kind().keyed_by_sku())
        .map(|e| e.event.key().to_owned())
        .collect();
    let mut up = BTreeMap::new();
    for service in SERVICES {
        // One PING first, so a service that is down costs one short timeout, not one per order.
        up.insert(
            service,
            answers_ping(client, service, Duration::from_secs(2)).await,
        );
    }
    let is_up = |service: &str| up.get(service).copied().unwrap_or(false);
    let checkout = if is_up("checkout") {
        Some(per_order(client, ORDERS_GET.subject, &order_ids).await?)
    } else {
        None
    };
    let payments = if is_up("payment") {
        Some(per_order(client, PAYMENTS_GET.subject, &order_ids).await?)
    } else {
        None
    };
    let stock = if is_up("inventory") {
        Some(list(client, STOCK_LIST.subject).await?)
    } else {
        None
    };
    let ledger = if is_up("payment") {
        Some(list(client, GATEWAY_LEDGER.subject).await?)
    } else {
        None
    };
    // Every instance's outbox: a scaled-out service answers STATS once per instance, and
    // any of them may hold what was not published. The group's live members say how
    // many answers to wait for.
    let mut outboxes = BTreeMap::new();
    for service in SERVICES {
        let members = shop_runtime::group::view(&js, GROUPS_BUCKET, service)
            .await
            .ok()
            .map(|group| group.members.len())
            .filter(|n| *n > 0);
        let backlog = nats::service_outbox_backlog(client, service, members).await;
        outboxes.insert(service.to_owned(), backlog);
    }
    Ok(Books {
        now: OffsetDateTime::now_utc(),
        events,
        checkout,
        payments,
        stock,
        ledger,
        outboxes,
    })
}

/// Asks `subject` about every order, a bounded number at a time.
async fn per_order<T: serde::de::DeserializeOwned>(
    client: &Client,
    subject: &str,
    order_ids: &BTreeSet<String>,
) -> Result<HashMap<String, Option<T>>, OpsError> {
    let answers: Vec<(String, Result<Option<T>, OpsError>)> =
        futures::stream::iter(order_ids.iter().cloned())
            .map(|order_id| async move {
                let answer = request_found(client, subject, &OrderRef::new(&order_id)).await;
                (order_id, answer)
            })
            .buffer_unordered(PARALLEL_REQUESTS)
            .collect()
            .await;
    answers
        .into_iter()
        .map(|(order_id, answer)| answer.map(|view| (order_id, view)))
        .collect()
}

async fn list<T: serde::de::DeserializeOwned>(
    client: &Client,
    subject: &str,
) -> Result<Vec<T>, OpsError> {
    let value: Option<Value> = request_found(client, subject, &Empty {}).await?;
    match value {
        Some(value) => nats::decode(subject, value),
        None => Ok(Vec::new()),
    }
}
