//! JSON Schemas for the envelope and every event's data, generated from the Rust types.
//!
//! The committed files under `schemas/` are what upstream teams code against;
//! a test fails when they drift from these types (`SHOP_BLESS=1` rewrites them).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::events::EventKind;

/// The CloudEvents 1.0 structured-mode envelope every shop event travels in.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Shop CloudEvent envelope")]
pub struct CloudEventEnvelope {
    /// Always `1.0`.
    #[schemars(extend("const" = "1.0"))]
    pub specversion: String,
    /// Unique event id (UUIDv7 for events the shop produces); also sent as `Nats-Msg-Id`. At most 128 printable ASCII characters.
    #[schemars(regex(pattern = r"^[!-~]{1,128}$"))]
    pub id: String,
    /// The producer, for example `checkout` or `storefront`.
    pub source: String,
    /// `shop.<EventName>.v<major>`, for example `shop.OrderPlaced.v1`.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = r"^shop\.[A-Za-z]+\.v[0-9]+$"))]
    pub ty: String,
    /// The order id, or the sku for stock-level events; equals the last subject token.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub subject: String,
    /// RFC 3339 timestamp.
    #[schemars(extend("format" = "date-time"))]
    pub time: String,
    /// Always `application/json`.
    #[schemars(extend("const" = "application/json"))]
    pub datacontenttype: String,
    /// The order id, carried through the whole saga.
    pub correlationid: Option<String>,
    /// The `id` of the event this one reacts to.
    pub causationid: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The event's payload; its schema is `shop.<EventName>.v<major>.json`.
    pub data: serde_json::Value,
}

/// File name → schema, for every schema the contract publishes.
pub fn all_schemas() -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    out.insert(
        "envelope.json".to_owned(),
        serde_json::to_value(schemars::schema_for!(CloudEventEnvelope)).unwrap_or_default(),
    );
    for kind in EventKind::ALL {
        let mut schema = serde_json::to_value(kind.data_schema()).unwrap_or_default();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert("$id".into(), format!("{}.json", kind.type_name()).into());
            obj.insert(
                "description".into(),
                format!(
                    "`data` of `{}`, published on `events.{}.{}.<key>`",
                    kind.type_name(),
                    kind.domain(),
                    kind.verb()
                )
                .into(),
            );
        }
        out.insert(format!("{}.json", kind.type_name()), schema);
    }
    out
}
