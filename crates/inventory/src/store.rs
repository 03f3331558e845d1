//! Inventory's sled layout and its transactional step.
//!
//! Trees: `reservations` (order id → reservation) and `stock` (sku → on hand and
//! reserved). An input loads the order's reservation and exactly the stock levels
//! it touches, so concurrent orders on other skus never conflict.

use std::collections::BTreeMap;

use shop_decider::Decider;
use shop_events::{Meta, Sku};
use shop_runtime::changelog::Entities;
use shop_runtime::store::{from_value, reject, Store, TreeId, Tx, TxResult};
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
    // The order first: the event being applied is remembered on the first entity touched.
    if let Some(id) = &order_key {
        tx.touch(&reservation_entity(id.as_str()));
    }
    let reservation: Option<Reservation> = match &order_key {
        Some(id) => tx.get_json(trees.reservations, id.as_str().as_bytes())?,
        None => None,
    };
    let mut stock: BTreeMap<Sku, StockLevel> = BTreeMap::new();
    for sku in domain::skus_needed(input, reservation.as_ref()) {
        tx.touch(&stock_entity(sku.as_str()));
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

/// The changelog entity of an order's reservation.
pub fn reservation_entity(order_id: &str) -> String {
    format!("r.{order_id}")
}

/// The changelog entity of a sku's stock level.
pub fn stock_entity(sku: &str) -> String {
    format!("s.{sku}")
}

/// Inventory's entities: reservations (`r.<order id>`) and stock levels (`s.<sku>`), all
/// in one partition — an order touches several skus, so partitioning by order would
/// oversell; inventory runs one active instance and standbys.
#[derive(Debug, Clone, Copy)]
pub struct Holdings {
    pub trees: Trees,
}

impl Holdings {
    fn locate(&self, entity: &str) -> Option<(TreeId, String)> {
        let (kind, key) = entity.split_once('.')?;
        match kind {
            "r" => Some((self.trees.reservations, key.to_owned())),
            "s" => Some((self.trees.stock, key.to_owned())),
            _ => None,
        }
    }
}

impl Entities for Holdings {
    fn partition(&self, _entity: &str) -> u32 {
        0
    }

    fn snapshot(&self, tx: &Tx<'_>, entity: &str) -> TxResult<Option<serde_json::Value>> {
        match self.locate(entity) {
            Some((tree, key)) => tx.get_json(tree, key.as_bytes()),
            None => Ok(None),
        }
    }

    fn restore(&self, tx: &Tx<'_>, entity: &str, data: &serde_json::Value) -> TxResult<()> {
        let Some((tree, key)) = self.locate(entity) else {
            return Ok(());
        };
        if tree == self.trees.stock {
            let level: StockLevel = from_value(entity, data)?;
            tx.put_json(tree, key.as_bytes(), &level)
        } else {
            let reservation: Reservation = from_value(entity, data)?;
            tx.put_json(tree, key.as_bytes(), &reservation)
        }
    }

    fn forget(&self, tx: &Tx<'_>, entity: &str) -> TxResult<()> {
        match self.locate(entity) {
            Some((tree, key)) => tx.remove(tree, key.as_bytes()),
            None => Ok(()),
        }
    }

    fn held(&self, store: &Store) -> Vec<String> {
        let keys = |tree: TreeId| {
            store
                .tree(tree)
                .iter()
                .keys()
                .filter_map(Result::ok)
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .collect::<Vec<_>>()
        };
        keys(self.trees.reservations)
            .into_iter()
            .map(|k| reservation_entity(&k))
            .chain(keys(self.trees.stock).into_iter().map(|k| stock_entity(&k)))
            .collect()
    }
}
