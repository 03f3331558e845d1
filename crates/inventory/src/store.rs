//! Inventory's sled layout and its transactional step.
//!
//! Trees: `reservations` (order id → reservation) and `stock` (sku → on hand and
//! reserved). An input loads the order's reservation and exactly the stock levels
//! it touches, so concurrent orders on other skus never conflict.

use std::collections::BTreeMap;

use shop_decider::Decider;
use shop_events::{Meta, Sku};
use shop_runtime::store::{reject, TreeId, Tx, TxResult};
use shop_shell::publish_all;

use crate::domain::{self, Ctx, Input, Reservation, State, StockLevel};
use crate::SERVICE;

pub const TREES: [&str; 2] = ["reservations", "stock"];

#[derive(Debug, Clone, Copy)]
pub struct Trees {
    pub reservations: TreeId,
    pub stock: TreeId,
}

impl Trees {
    pub fn from_ids(ids: &[TreeId]) -> Option<Trees> {
        match ids {
            [reservations, stock] => Some(Trees {
                reservations: *reservations,
                stock: *stock,
            }),
            _ => None,
        }
    }
}

/// Loads the view, decides, evolves, queues events and writes the view back.
pub fn apply_input(trees: Trees, tx: &Tx<'_>, input: &Input, cause: &Meta) -> TxResult<()> {
    let order_key = match input {
        Input::OrderPlaced(e) => Some(e.order_id.clone()),
        Input::OrderConfirmed(e) => Some(e.order_id.clone()),
        Input::OrderCancelled(e) => Some(e.order_id.clone()),
        Input::StockReplenished(_) => None,
    };
    let reservation: Option<Reservation> = match &order_key {
        Some(id) => tx.get_json(trees.reservations, id.as_str().as_bytes())?,
        None => None,
    };
    let mut stock: BTreeMap<Sku, StockLevel> = BTreeMap::new();
    for sku in domain::skus_needed(input, reservation.as_ref()) {
        if let Some(level) = tx.get_json::<StockLevel>(trees.stock, sku.as_str().as_bytes())? {
            stock.insert(sku, level);
        }
    }
    let mut state = State { reservation, stock };
    let changes = match domain::decide(&state, input, &Ctx) {
        Ok(c) => c,
        Err(refusal) => return reject(refusal.to_string()),
    };
    if changes.is_empty() {
        return Ok(());
    }
    let events = domain::Inventory::apply(&mut state, &changes);
    publish_all(tx, SERVICE, events, Some(cause))?;
    if let (Some(id), Some(reservation)) = (&order_key, &state.reservation) {
        tx.put_json(trees.reservations, id.as_str().as_bytes(), reservation)?;
    }
    for (sku, level) in &state.stock {
        tx.put_json(trees.stock, sku.as_str().as_bytes(), level)?;
    }
    Ok(())
}
