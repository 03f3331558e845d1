//! Checkout's sled layout and the one transactional step every input goes through.
//!
//! Trees: `orders` (order id → record), `deadlines` (deadline ms ++ order id, the
//! durable timer index that survives restarts) and `placed` (placed ms ++ order id,
//! for listing the most recent orders first).

use shop_decider::Decider;
use shop_events::partition::partition_of_key;
use shop_events::{Meta, OrderId};
use shop_runtime::changelog::Entities;
use shop_runtime::store::{from_value, reject, Store, TreeId, Tx, TxResult};
use shop_shell::{publish_all, publish_all_seeded};

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
    tx.touch(order_id.as_str());
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
    match (cause, input, deadline_before) {
        // A deadline has no event behind it; its id derives from the order and the
        // deadline, so a new owner passing the same deadline again publishes the same one.
        (None, Input::DeadlinePassed, Some(ms)) => {
            publish_all_seeded(tx, SERVICE, events, &format!("{order_id}/deadline/{ms}"))?
        }
        _ => publish_all(tx, SERVICE, events, cause)?,
    }
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

/// Checkout's entities are orders: one record per order (its state; the deadline and
/// placed-time indexes are derived from it on restore).
#[derive(Debug, Clone, Copy)]
pub struct Orders {
    pub trees: Trees,
}

impl Entities for Orders {
    fn partition(&self, entity: &str) -> u32 {
        partition_of_key(entity)
    }

    fn snapshot(&self, tx: &Tx<'_>, entity: &str) -> TxResult<Option<serde_json::Value>> {
        tx.get_json(self.trees.orders, entity.as_bytes())
    }

    fn restore(&self, tx: &Tx<'_>, entity: &str, data: &serde_json::Value) -> TxResult<()> {
        let state: State = from_value(entity, data)?;
        tx.put_json(self.trees.orders, entity.as_bytes(), &state)?;
        if let Some(ms) = state.pending_deadline() {
            tx.insert(self.trees.deadlines, &time_key(ms, entity), &[])?;
        }
        if let Some(ms) = state.placed_at_ms() {
            tx.insert(self.trees.placed, &time_key(ms, entity), &[])?;
        }
        Ok(())
    }

    fn forget(&self, tx: &Tx<'_>, entity: &str) -> TxResult<()> {
        if let Some(state) = tx.get_json::<State>(self.trees.orders, entity.as_bytes())? {
            if let Some(ms) = state.pending_deadline() {
                tx.remove(self.trees.deadlines, &time_key(ms, entity))?;
            }
            if let Some(ms) = state.placed_at_ms() {
                tx.remove(self.trees.placed, &time_key(ms, entity))?;
            }
        }
        tx.remove(self.trees.orders, entity.as_bytes())
    }

    fn held(&self, store: &Store) -> Vec<String> {
        store
            .tree(self.trees.orders)
            .iter()
            .keys()
            .filter_map(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}
