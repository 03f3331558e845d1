//! Inventory's endpoints: read stock levels and publish replenishments.

use serde::{Deserialize, Serialize};

use super::{endpoint, Endpoint};

/// `inventory.stock.get`: the body is a [`SkuRef`]; replies [`StockView`].
pub const STOCK_GET: Endpoint = endpoint!(inventory, "stock", "get");
/// `inventory.stock.list`: any body; replies `Vec<StockView>` in sku order.
pub const STOCK_LIST: Endpoint = endpoint!(inventory, "stock", "list");
/// `inventory.stock.replenish`: the body is a [`ReplenishRequest`]; replies [`Replenished`].
pub const STOCK_REPLENISH: Endpoint = endpoint!(inventory, "stock", "replenish");

pub const ENDPOINTS: [Endpoint; 3] = [STOCK_GET, STOCK_LIST, STOCK_REPLENISH];

/// Largest replenishment accepted in one request.
pub const MAX_REPLENISH: u32 = 1_000_000;

/// A request that names one sku.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRef {
    pub sku: String,
}

/// One sku as `inventory.stock.get` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StockView {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

/// The body of `inventory.stock.replenish`; quantity 1 to [`MAX_REPLENISH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplenishRequest {
    pub sku: String,
    pub quantity: i64,
}

/// The reply to `inventory.stock.replenish`: the `StockReplenished` event published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replenished {
    pub sku: String,
    pub quantity: i64,
    pub event_id: String,
}
