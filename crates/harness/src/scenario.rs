//! Helpers that read like a scenario: place an order, replenish stock, cancel, wait for an outcome.
//!
//! They talk to the shop the way upstream systems and operators do: events
//! published on JetStream and requests to the services' micro endpoints.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shop_events::api::checkout::{OrderStatus, OrderView, ORDERS_GET};
use shop_events::api::inventory::{SkuRef, StockView, STOCK_GET};
use shop_events::api::payment::{PaymentView, PAYMENTS_GET};
use shop_events::api::OrderRef;
use shop_events::{
    Envelope, Event, OrderCancellationRequested, OrderId, OrderLineInput, OrderPlaced, Sku,
    StockReplenished,
};

use crate::client::publish_event;
use crate::wait::eventually;
use crate::HarnessError;

/// Where the storefront's events say they come from.
pub const STOREFRONT: &str = shop_events::api::upstream::STOREFRONT;

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
        shop_events::api::upstream::WAREHOUSE,
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

/// Sends a request (one of the contract's request types, or any JSON value) to a service
/// endpoint; an error reply becomes `Err((code, description))`.
pub async fn request<B: Serialize + ?Sized>(
    client: &Client,
    subject: &str,
    body: &B,
) -> Result<Result<Value, (u16, String)>, HarnessError> {
    let failed = |reason: String| HarnessError::Request {
        subject: subject.to_owned(),
        reason,
    };
    let body = serde_json::to_value(body).map_err(|e| failed(e.to_string()))?;
    shop_runtime::micro::request_json(client, subject, &body, Duration::from_secs(5))
        .await
        .map_err(|e| failed(e.to_string()))
}

/// Like [`request`], decoding a successful reply into `T`.
pub async fn request_as<T: DeserializeOwned, B: Serialize + ?Sized>(
    client: &Client,
    subject: &str,
    body: &B,
) -> Result<T, HarnessError> {
    match request(client, subject, body).await? {
        Ok(v) => decode(subject, v),
        Err((code, d)) => Err(HarnessError::Request {
            subject: subject.to_owned(),
            reason: format!("{code}: {d}"),
        }),
    }
}

/// Like [`request_as`], but a 404 is `None`.
pub async fn request_found<T: DeserializeOwned, B: Serialize + ?Sized>(
    client: &Client,
    subject: &str,
    body: &B,
) -> Result<Option<T>, HarnessError> {
    match request(client, subject, body).await? {
        Ok(v) => decode(subject, v).map(Some),
        Err((404, _)) => Ok(None),
        Err((code, d)) => Err(HarnessError::Request {
            subject: subject.to_owned(),
            reason: format!("{code}: {d}"),
        }),
    }
}

fn decode<T: DeserializeOwned>(subject: &str, value: Value) -> Result<T, HarnessError> {
    serde_json::from_value(value).map_err(|e| HarnessError::Request {
        subject: subject.to_owned(),
        reason: format!("reply does not match the contract: {e}"),
    })
}

/// The order as checkout reports it (`checkout.orders.get`), if checkout knows it.
pub async fn order_status(
    client: &Client,
    order_id: &str,
) -> Result<Option<OrderView>, HarnessError> {
    request_found(client, ORDERS_GET.subject, &OrderRef::new(order_id)).await
}

/// Waits until checkout reports `status` for the order, and returns its view.
pub async fn wait_for_status(
    client: &Client,
    order_id: &str,
    status: OrderStatus,
    within: Duration,
) -> Result<OrderView, HarnessError> {
    eventually(
        within,
        &format!("order {order_id} to be {}", status.as_str()),
        || async {
            let view = order_status(client, order_id).await.ok()??;
            (view.status == status).then_some(view)
        },
    )
    .await
}

/// Waits until the order is settled (confirmed, cancelled or rejected) and returns checkout's view.
pub async fn wait_settled(
    client: &Client,
    order_id: &str,
    within: Duration,
) -> Result<OrderView, HarnessError> {
    eventually(within, &format!("order {order_id} to settle"), || async {
        let view = order_status(client, order_id).await.ok()??;
        (view.status != OrderStatus::Pending).then_some(view)
    })
    .await
}

/// A sku's stock as inventory reports it (`inventory.stock.get`), if inventory knows it.
pub async fn stock_view(client: &Client, sku: &str) -> Result<Option<StockView>, HarnessError> {
    let body = SkuRef {
        sku: sku.to_owned(),
    };
    request_found(client, STOCK_GET.subject, &body).await
}

/// A sku's stock as inventory reports it: (on_hand, reserved, available).
pub async fn stock(client: &Client, sku: &str) -> Result<Option<(i64, i64, i64)>, HarnessError> {
    Ok(stock_view(client, sku)
        .await?
        .map(|v| (v.on_hand, v.reserved, v.available)))
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

/// The payment record as payment reports it (`payment.payments.get`).
pub async fn payment(client: &Client, order_id: &str) -> Result<Option<PaymentView>, HarnessError> {
    request_found(client, PAYMENTS_GET.subject, &OrderRef::new(order_id)).await
}
