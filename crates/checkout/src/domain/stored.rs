//! The shape an order record has in sled: the flat struct checkout has always written.
//!
//! [`State`] converts to and from it, so records written before `State` became an enum
//! still load, and a binary from before that change still reads what this one writes
//! (it fills the fields a stage leaves out with their defaults). Only the fields of the
//! record's stage are written. Reading checks that the stage's data is all there.

use serde::{Deserialize, Serialize};
use shop_events::{CancelReason, OrderPlaced, PaymentId, Problem, ValidOrder};

use super::{AcceptedOrder, Early, EarlyOutcome, OrderStatus, State};

/// A stored record that no version of checkout writes: a stage without its data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed order record: {0}")]
pub struct MalformedRecord(&'static str);

/// One order's record as stored; which fields matter depends on `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct StoredOrder {
    #[serde(skip_serializing_if = "Option::is_none")]
    placed: Option<OrderPlaced>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<ValidOrder>,
    /// `None`: not placed yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<OrderStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<CancelReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<Problem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    placed_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settled_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<PaymentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_requested: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    early_outcome: Option<EarlyOutcome>,
}

impl StoredOrder {
    fn accepted(order: AcceptedOrder, status: OrderStatus) -> StoredOrder {
        StoredOrder {
            placed: Some(order.placed),
            order: Some(order.order),
            status: Some(status),
            placed_at_ms: Some(order.placed_at_ms),
            deadline_at_ms: Some(order.deadline_at_ms),
            ..StoredOrder::default()
        }
    }

    fn take_accepted(&mut self) -> Result<AcceptedOrder, MalformedRecord> {
        Ok(AcceptedOrder {
            placed: self
                .placed
                .take()
                .ok_or(MalformedRecord("an accepted order without `placed`"))?,
            order: self
                .order
                .take()
                .ok_or(MalformedRecord("an accepted order without `order`"))?,
            placed_at_ms: self
                .placed_at_ms
                .ok_or(MalformedRecord("an accepted order without `placed_at_ms`"))?,
            deadline_at_ms: self.deadline_at_ms.ok_or(MalformedRecord(
                "an accepted order without `deadline_at_ms`",
            ))?,
        })
    }

    fn settled_at(&self) -> Result<i64, MalformedRecord> {
        self.settled_at_ms
            .ok_or(MalformedRecord("a settled order without `settled_at_ms`"))
    }
}

impl From<State> for StoredOrder {
    fn from(state: State) -> StoredOrder {
        match state {
            State::Unplaced(early) => StoredOrder {
                cancel_requested: early.cancellation_requested,
                early_outcome: early.outcome,
                ..StoredOrder::default()
            },
            State::Pending(order) => StoredOrder::accepted(order, OrderStatus::Pending),
            State::Confirmed {
                order,
                payment_id,
                confirmed_at_ms,
            } => StoredOrder {
                payment_id: Some(payment_id),
                settled_at_ms: Some(confirmed_at_ms),
                ..StoredOrder::accepted(order, OrderStatus::Confirmed)
            },
            State::Cancelled {
                order,
                reason,
                detail,
                payment_id,
                cancelled_at_ms,
            } => StoredOrder {
                reason: Some(reason),
                detail: Some(detail),
                payment_id,
                settled_at_ms: Some(cancelled_at_ms),
                ..StoredOrder::accepted(order, OrderStatus::Cancelled)
            },
            State::Rejected {
                placed,
                problems,
                rejected_at_ms,
            } => StoredOrder {
                placed: Some(placed),
                status: Some(OrderStatus::Rejected),
                problems,
                placed_at_ms: Some(rejected_at_ms),
                settled_at_ms: Some(rejected_at_ms),
                ..StoredOrder::default()
            },
        }
    }
}

impl TryFrom<StoredOrder> for State {
    type Error = MalformedRecord;

    /// Older records also carry the early facts after placement; they no longer matter
    /// then (placement consumed them), so they are dropped.
    fn try_from(mut stored: StoredOrder) -> Result<State, MalformedRecord> {
        Ok(match stored.status {
            None if stored.placed.is_some() => {
                return Err(MalformedRecord("a placed order without `status`"))
            }
            None => State::Unplaced(Early {
                outcome: stored.early_outcome,
                cancellation_requested: stored.cancel_requested,
            }),
            Some(OrderStatus::Pending) => State::Pending(stored.take_accepted()?),
            Some(OrderStatus::Confirmed) => State::Confirmed {
                confirmed_at_ms: stored.settled_at()?,
                payment_id: stored
                    .payment_id
                    .take()
                    .ok_or(MalformedRecord("a confirmed order without `payment_id`"))?,
                order: stored.take_accepted()?,
            },
            Some(OrderStatus::Cancelled) => State::Cancelled {
                cancelled_at_ms: stored.settled_at()?,
                reason: stored
                    .reason
                    .ok_or(MalformedRecord("a cancelled order without `reason`"))?,
                detail: stored.detail.take().unwrap_or_default(),
                payment_id: stored.payment_id.take(),
                order: stored.take_accepted()?,
            },
            Some(OrderStatus::Rejected) => State::Rejected {
                rejected_at_ms: stored.settled_at()?,
                placed: stored
                    .placed
                    .ok_or(MalformedRecord("a rejected order without `placed`"))?,
                problems: stored.problems,
            },
        })
    }
}
