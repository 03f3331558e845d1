//! Checkout's endpoints: place, get, cancel and list orders.

use serde::{Deserialize, Serialize};

use super::{endpoint, Endpoint};
use crate::events::{CancelReason, OrderLineInput};
use crate::problem::Problem;

/// `checkout.orders.place`: the body is an [`OrderPlaced`](crate::OrderPlaced); replies [`Accepted`].
pub const ORDERS_PLACE: Endpoint = endpoint!(checkout, "orders", "place");
/// `checkout.orders.get`: the body is an [`OrderRef`](super::OrderRef); replies [`OrderView`].
pub const ORDERS_GET: Endpoint = endpoint!(checkout, "orders", "get");
/// `checkout.orders.cancel`: the body is a [`CancelRequest`]; replies [`CancellationAccepted`].
pub const ORDERS_CANCEL: Endpoint = endpoint!(checkout, "orders", "cancel");
/// `checkout.orders.list`: the body is a [`ListRequest`]; replies `Vec<OrderView>`, newest first.
pub const ORDERS_LIST: Endpoint = endpoint!(checkout, "orders", "list");

pub const ENDPOINTS: [Endpoint; 4] = [ORDERS_PLACE, ORDERS_GET, ORDERS_CANCEL, ORDERS_LIST];

/// Where `checkout.orders.list` gathers its answer: every checkout instance listens here
/// (no queue group, so each one answers), with the [`ListRequest`] as body, and replies a
/// [`ListPart`] for the partitions it holds. Internal to checkout's instances: only they
/// have the right to publish or subscribe here (crates/auth).
pub const ORDERS_LIST_GATHER: &str = "checkout.orders.list.gather";

/// What the gathering instance asks on [`ORDERS_LIST_GATHER`]: the caller's
/// [`ListRequest`], and the partitions it still needs a share for. An instance answers
/// only for those of them it holds, so a share never spends its `limit` on a partition
/// that another share already covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListAsk {
    #[serde(flatten)]
    pub request: ListRequest,
    pub partitions: Vec<u32>,
}

/// One instance's share of a `checkout.orders.list`: the asked partitions it held for the
/// whole of its read and, newest first, at most `limit` orders of those partitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListPart {
    pub instance: String,
    pub partitions: Vec<u32>,
    pub orders: Vec<OrderView>,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
    Rejected,
}

impl OrderStatus {
    /// The status word as it appears in JSON, for example `pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Rejected => "rejected",
        }
    }
}

/// An order as `checkout.orders.get` shows it; amounts in minor units, times RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderView {
    pub order_id: String,
    pub status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub detail: Option<String>,
    pub problems: Vec<Problem>,
    pub customer_id: String,
    pub lines: Vec<OrderLineInput>,
    pub total: i64,
    pub currency: String,
    pub payment_id: Option<String>,
    pub placed_at: Option<String>,
    pub deadline_at: Option<String>,
    pub settled_at: Option<String>,
}

/// The reply to `checkout.orders.place`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub order_id: String,
    pub status: OrderStatus,
    /// The id of the `OrderPlaced` event published; empty when the same order was
    /// placed before and nothing new was published.
    pub event_id: String,
}

/// The body of `checkout.orders.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub order_id: String,
    /// Why; empty means "requested through checkout.orders.cancel".
    #[serde(default)]
    pub reason: String,
}

/// What a cancellation request became: always `requested`, since checkout decides
/// asynchronously when the `OrderCancellationRequested` event comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancellation {
    Requested,
}

/// The reply to `checkout.orders.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationAccepted {
    pub order_id: String,
    /// Where the order stood when the request was published.
    pub status: OrderStatus,
    pub cancellation: Cancellation,
    pub event_id: String,
}

/// The body of `checkout.orders.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    #[serde(default)]
    pub status: Option<OrderStatus>,
    /// At most this many (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}
