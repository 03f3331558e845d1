//! Helpers that read like a scenario: place an order, replenish stock, cancel, wait for an outcome.
//!
//! They talk to the shop the way upstream systems and operators do: events
//! published on JetStream and requests to the services' micro endpoints.

use shop_events::api::checkout::ORDERS_GET;
use shop_events::api::inventory::STOCK_GET;
use shop_events::api::payment::PAYMENTS_GET;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shop_events::{
    Envelope, Event, OrderCancellationRequested, OrderId, OrderLineInput, OrderPlaced, Sku,
    StockReplenished,
};

use crate::client::publish_event;
use crate::wait::eventually;
use crate::HarnessError;

/// Where the storefront's events say they come from.
pub const STOREFRONT: &str = "storefront";

/// An order of `lines` (sku, quantity, unit price) paid with `token`, total computed.
pub fn order(order_id: &str, lines: &[(&str, i64, i64)], token: &str) -> OrderPlaced {
    let lines: Vec<OrderLineInput> = lines
        .iter()
        .map(|(sku, quantity, unit_price)| OrderLineInput {
            sku: (*sku).to_owned(),
            quantity: *quantity,
            unit_price: *unit_price,
        })
        .collect();
    let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
    OrderPlaced {
        // Test code names its orders; an invalid id here is a bug in the test.
        order_id: OrderId::parse(order_id).unwrap_or_else(|e| panic!("bad test order id: {e}")),
        customer_id: "c-1".to_owned(),
        currency: "EUR".to_owned(),
        lines,
        total,
        payment_token: token.to_owned(),
    }
}

/// Publishes `OrderPlaced` as the storefront would; returns the envelope sent.
pub async fn place(js: &jetstream::Context, placed: OrderPlaced) -> Result<Envelope, HarnessError> {
    let envelope = Envelope::new(STOREFRONT, Event::OrderPlaced(placed));
    publish_event(js, &envelope).await?;
    Ok(envelope)
}

/// Publishes `StockReplenished` as the warehouse would.
pub async fn replenish(
    js: &jetstream::Context,
    sku: &str,
    quantity: u32,
) -> Result<Envelope, HarnessError> {
    let sku = Sku::parse(sku).map_err(|e| HarnessError::Publish {
        subject: sku.into(),
        reason: e.to_string(),
    })?;
    let envelope = Envelope::new(
        "warehouse",
        Event::StockReplenished(StockReplenished { sku, quantity }),
    );
    publish_event(js, &envelope).await?;
    Ok(envelope)
}

/// Publishes `OrderCancellationRequested`.
pub async fn request_cancellation(
    js: &jetstream::Context,
    order_id: &str,
) -> Result<Envelope, HarnessError> {
    let order_id = OrderId::parse(order_id).map_err(|e| HarnessError::Publish {
        subject: order_id.into(),
        reason: e.to_string(),
    })?;
    let envelope = Envelope::new(
        STOREFRONT,
        Event::OrderCancellationRequested(OrderCancellationRequested {
            order_id,
            reason: "customer asked".into(),
        }),
    );
    publish_event(js, &envelope).await?;
    Ok(envelope)
}

/// Sends a JSON request to a service endpoint; an error reply becomes `Err((code, description))`.
pub async fn request(
    client: &Client,
    subject: &str,
    body: Value,
) -> Result<Result<Value, (u16, String)>, HarnessError> {
    shop_runtime::micro::request_json(client, subject, &body, Duration::from_secs(5))
        .await
        .map_err(|e| HarnessError::Request {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })
}

/// Like [`request`], decoding a successful reply into `T`.
pub async fn request_as<T: DeserializeOwned>(
    client: &Client,
    subject: &str,
    body: Value,
) -> Result<T, HarnessError> {
    match request(client, subject, body).await? {
        Ok(v) => serde_json::from_value(v).map_err(|e| HarnessError::Request {
            subject: subject.to_owned(),
            reason: e.to_string(),
        }),
        Err((code, d)) => Err(HarnessError::Request {
            subject: subject.to_owned(),
            reason: format!("{code}: {d}"),
        }),
    }
}

/// The order as checkout reports it, if checkout knows it.
pub async fn order_status(client: &Client, order_id: &str) -> Result<Option<Value>, HarnessError> {
    match request(
        client,
        ORDERS_GET.subject,
        serde_json::json!({ "order_id": order_id }),
    )
    .await?
    {
        Ok(view) => Ok(Some(view)),
        Err((404, _)) => Ok(None),
        Err((code, d)) => Err(HarnessError::Request {
            subject: ORDERS_GET.subject.into(),
            reason: format!("{code}: {d}"),
        }),
    }
}

/// Waits until checkout reports `status` (`confirmed`, `cancelled`, `rejected`, `pending`) for the order.
pub async fn wait_for_status(
    client: &Client,
    order_id: &str,
    status: &str,
    within: Duration,
) -> Result<Value, HarnessError> {
    eventually(
        within,
        &format!("order {order_id} to be {status}"),
        || async {
            let view = order_status(client, order_id).await.ok()??;
            (view["status"] == status).then_some(view)
        },
    )
    .await
}

/// Waits until the order is settled (confirmed, cancelled or rejected) and returns checkout's view.
pub async fn wait_settled(
    client: &Client,
    order_id: &str,
    within: Duration,
) -> Result<Value, HarnessError> {
    eventually(within, &format!("order {order_id} to settle"), || async {
        let view = order_status(client, order_id).await.ok()??;
        matches!(
            view["status"].as_str(),
            Some("confirmed" | "cancelled" | "rejected")
        )
        .then_some(view)
    })
    .await
}

/// A sku's stock as inventory reports it: (on_hand, reserved, available).
pub async fn stock(client: &Client, sku: &str) -> Result<Option<(i64, i64, i64)>, HarnessError> {
    match request(client, STOCK_GET.subject, serde_json::json!({ "sku": sku })).await? {
        Ok(v) => Ok(Some((
            v["on_hand"].as_i64().unwrap_or_default(),
            v["reserved"].as_i64().unwrap_or_default(),
            v["available"].as_i64().unwrap_or_default(),
        ))),
        Err((404, _)) => Ok(None),
        Err((code, d)) => Err(HarnessError::Request {
            subject: STOCK_GET.subject.into(),
            reason: format!("{code}: {d}"),
        }),
    }
}

/// Waits until inventory reports `on_hand` units of `sku` with nothing reserved.
pub async fn wait_for_stock(
    client: &Client,
    sku: &str,
    on_hand: i64,
    reserved: i64,
    within: Duration,
) -> Result<(), HarnessError> {
    eventually(
        within,
        &format!("{sku} to have {on_hand} on hand and {reserved} reserved"),
        || async {
            let (h, r, _) = stock(client, sku).await.ok()??;
            (h == on_hand && r == reserved).then_some(())
        },
    )
    .await
}

/// The payment record as payment reports it.
pub async fn payment(client: &Client, order_id: &str) -> Result<Option<Value>, HarnessError> {
    match request(
        client,
        PAYMENTS_GET.subject,
        serde_json::json!({ "order_id": order_id }),
    )
    .await?
    {
        Ok(v) => Ok(Some(v)),
        Err((404, _)) => Ok(None),
        Err((code, d)) => Err(HarnessError::Request {
            subject: PAYMENTS_GET.subject.into(),
            reason: format!("{code}: {d}"),
        }),
    }
}
