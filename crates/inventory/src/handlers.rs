//! Inventory's consumer handler: reserve, commit, release and replenish stock.

use shop_events::{Envelope, Event};
use shop_runtime::store::{reject, Tx, TxResult};
use shop_shell::EnvelopeHandler;

use crate::domain::Input;
use crate::store::{apply_input, Trees};
use crate::SERVICE;

pub struct InventoryHandler {
    pub trees: Trees,
}

impl EnvelopeHandler for InventoryHandler {
    const SERVICE: &'static str = SERVICE;

    fn apply(&self, envelope: &Envelope, tx: &Tx<'_>) -> TxResult<()> {
        let input = match &envelope.event {
            Event::OrderPlaced(e) => Input::OrderPlaced(e.clone()),
            Event::OrderConfirmed(e) => Input::OrderConfirmed(e.clone()),
            Event::OrderCancelled(e) => Input::OrderCancelled(e.clone()),
            Event::StockReplenished(e) => Input::StockReplenished(e.clone()),
            other => return reject(format!("inventory does not handle {}", other.kind().name())),
        };
        apply_input(self.trees, tx, &input, &envelope.meta)
    }
}
