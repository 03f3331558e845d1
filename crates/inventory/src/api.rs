//! Inventory's NATS micro-service endpoints: read stock levels and publish replenishments.

use std::sync::Arc;

use async_nats::jetstream;
use shop_events::api::inventory::{
    ReplenishRequest, Replenished, SkuRef, StockView, ENDPOINTS, MAX_REPLENISH, STOCK_GET,
    STOCK_LIST, STOCK_REPLENISH,
};
use shop_events::api::Endpoint;
use shop_events::{Envelope, Event, Sku, StockReplenished};
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult};
use shop_runtime::store::Store;
use shop_shell::publish_event;
use shop_shell::scale::Ownership;

use crate::domain::StockLevel;
use crate::store::Trees;
use crate::SERVICE;

#[derive(Clone)]
pub struct Api {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    pub trees: Trees,
    /// Whether this instance is the active one; a standby answers from the changelog.
    pub ownership: Ownership,
}

fn stock_view(sku: &str, level: &StockLevel) -> StockView {
    StockView {
        sku: sku.to_owned(),
        on_hand: level.on_hand,
        reserved: level.reserved,
        available: level.available(),
    }
}

impl Api {
    /// `inventory.stock.get`.
    pub async fn get(&self, body: &[u8]) -> ApiResult {
        let request: SkuRef = parse_request(body)?;
        let sku =
            Sku::parse(request.sku).map_err(|e| ApiError::bad_request(format!("sku: {e}")))?;
        let entity = crate::store::stock_entity(sku.as_str());
        let level = if self.ownership.holds(&entity) {
            self.store
                .read_json::<StockLevel>(self.trees.stock, sku.as_str().as_bytes())?
        } else {
            match self.ownership.remote(&entity).await? {
                None => None,
                Some(data) => Some(serde_json::from_value::<StockLevel>(data).map_err(|e| {
                    ApiError::internal(format!(
                        "the changelog record of {entity} does not decode: {e}"
                    ))
                })?),
            }
        };
        match level {
            Some(level) => reply(&stock_view(sku.as_str(), &level)),
            None => Err(ApiError::not_found(format!(
                "sku `{sku}` is unknown to inventory; replenish it first"
            ))),
        }
    }

    /// `inventory.stock.list`: every sku, in sku order.
    pub async fn list(&self, body: &[u8]) -> ApiResult {
        // No fields, but a body that is not a JSON object is still a bad request.
        let _: shop_events::api::Empty = parse_request(body)?;
        let mut out = Vec::new();
        if !self.ownership.holds(&crate::store::stock_entity("any")) {
            // A standby: the active instance's levels, from the changelog.
            for (entity, data) in self.ownership.remote_all("s").await? {
                let level: StockLevel =
                    serde_json::from_value(data).map_err(|e| ApiError::internal(e.to_string()))?;
                out.push(stock_view(
                    entity.strip_prefix("s.").unwrap_or(&entity),
                    &level,
                ));
            }
            return reply(&out);
        }
        for item in self.store.tree(self.trees.stock).iter() {
            let (key, value) = item.map_err(|e| ApiError::internal(e.to_string()))?;
            let level: StockLevel =
                serde_json::from_slice(&value).map_err(|e| ApiError::internal(e.to_string()))?;
            out.push(stock_view(&String::from_utf8_lossy(&key), &level));
        }
        reply(&out)
    }

    /// `inventory.stock.replenish`: publishes `StockReplenished`.
    pub async fn replenish(&self, body: &[u8]) -> ApiResult {
        let request: ReplenishRequest = parse_request(body)?;
        let mut problems = Vec::new();
        let sku = Sku::parse(request.sku)
            .map_err(|e| problems.push(format!("sku: {e}")))
            .ok();
        if !(1..=i64::from(MAX_REPLENISH)).contains(&request.quantity) {
            problems.push(format!(
                "quantity: must be between 1 and {MAX_REPLENISH}, got {}",
                request.quantity
            ));
        }
        let Some(sku) = sku.filter(|_| problems.is_empty()) else {
            return Err(ApiError::bad_request(problems.join("; ")));
        };
        let envelope = Envelope::new(
            SERVICE,
            Event::StockReplenished(StockReplenished {
                sku: sku.clone(),
                quantity: request.quantity as u32,
            }),
        );
        publish_event(&self.js, &envelope).await?;
        reply(&Replenished {
            sku: sku.to_string(),
            quantity: request.quantity,
            event_id: envelope.meta.id,
        })
    }
}

impl shop_runtime::micro::Api for Api {
    fn endpoints(&self) -> Vec<(&'static str, &'static str)> {
        ENDPOINTS.map(Endpoint::registration).to_vec()
    }

    async fn call(&self, name: &'static str, body: bytes::Bytes) -> ApiResult {
        match Endpoint::find(&ENDPOINTS, name) {
            Some(STOCK_GET) => self.get(&body).await,
            Some(STOCK_LIST) => self.list(&body).await,
            Some(STOCK_REPLENISH) => self.replenish(&body).await,
            _ => Err(ApiError::not_found(format!("no endpoint {name}"))),
        }
    }
}
