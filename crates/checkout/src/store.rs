//! Checkout's sled layout and the one transactional step every input goes through.
//!
//! Trees: `orders` (order id → record), `deadlines` (deadline ms ++ order id, the
//! durable timer index that survives restarts) and `placed` (placed ms ++ order id,
//! for listing the most recent orders first).

use shop_decider::Decider;
use shop_events::{Meta, OrderId};
use shop_runtime::store::{reject, TreeId, Tx, TxResult};
use shop_shell::publish_all;

use crate::domain::{self, Ctx, Input, State};
use crate::SERVICE;

pub const TREES: [&str; 3] = ["orders", "deadlines", "placed"];

/// Handles on checkout's trees.
#[derive(Debug, Clone, Copy)]
pub struct Trees {
    pub orders: TreeId,
    pub deadlines: TreeId,
    pub placed: TreeId,
}

impl Trees {
    pub fn from_ids(ids: &[TreeId]) -> Option<Trees> {
        match ids {
            [orders, deadlines, placed] => Some(Trees {
                orders: *orders,
                deadlines: *deadlines,
                placed: *placed,
            }),
            _ => None,
        }
    }
}

/// `time` big-endian, then the id: sorts by time, unique per order.
pub fn time_key(ms: i64, order_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + order_id.len());
    key.extend_from_slice(&(ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(order_id.as_bytes());
    key
}

/// Splits a [`time_key`].
pub fn split_time_key(key: &[u8]) -> Option<(i64, &str)> {
    let (ms, id) = key.split_at_checked(8)?;
    Some((
        u64::from_be_bytes(ms.try_into().ok()?) as i64,
        std::str::from_utf8(id).ok()?,
    ))
}

/// Loads the order, decides, evolves, queues the published events and keeps the indexes in step.
pub fn apply_input(
    trees: Trees,
    tx: &Tx<'_>,
    order_id: &OrderId,
    input: &Input,
    ctx: &Ctx,
    cause: Option<&Meta>,
) -> TxResult<()> {
    let key = order_id.as_str().as_bytes();
    let mut state: State = tx.get_json(trees.orders, key)?.unwrap_or_default();
    let changes = match domain::decide(&state, input, ctx) {
        Ok(changes) => changes,
        Err(refusal) => return reject(refusal.to_string()),
    };
    if changes.is_empty() {
        return Ok(());
    }
    let deadline_before = state.pending_deadline();
    let placed_before = state.placed_at_ms();
    let events = domain::Checkout::apply(&mut state, &changes);
    publish_all(tx, SERVICE, events, cause)?;
    tx.put_json(trees.orders, key, &state)?;
    let deadline_after = state.pending_deadline();
    if deadline_before != deadline_after {
        if let Some(ms) = deadline_before {
            tx.remove(trees.deadlines, &time_key(ms, order_id.as_str()))?;
        }
        if let Some(ms) = deadline_after {
            tx.insert(trees.deadlines, &time_key(ms, order_id.as_str()), &[])?;
        }
    }
    if let (None, Some(ms)) = (placed_before, state.placed_at_ms()) {
        tx.insert(trees.placed, &time_key(ms, order_id.as_str()), &[])?;
    }
    Ok(())
}
