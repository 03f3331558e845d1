//! Talking to the test server the way the shop does: connect, declare streams, publish
//! CloudEvents (well-formed or hostile), and read back everything stored about one order.
//! Declaring, publishing and reading are the shop's own code (shell and ops), not copies.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use shop_events::subjects::DEFAULT_EVENT_MAX_AGE;
use shop_events::Envelope;
use tokio::time::Instant;

use crate::wait::Backoff;
use crate::HarnessError;

pub use shop_ops::reader::{StoredEvent, EVENT_STREAMS};

/// How long [`connect`] keeps trying; covers a server that is still coming up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Connects to `url` (one server, or a comma-separated list for a cluster), retrying
/// until a deadline because the server may still be starting.
///
/// Reconnects after a server restart are quick (50 ms steps, at most 500 ms) so
/// outage scenarios do not spend their deadline waiting for the client.
pub async fn connect(url: &str) -> Result<Client, HarnessError> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    loop {
        let options = ConnectOptions::new()
            .name("shop-harness")
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * attempts as u64).min(Duration::from_millis(500))
            });
        match options.connect(servers.clone()).await {
            Ok(client) => return Ok(client),
            Err(e) if started.elapsed() >= CONNECT_DEADLINE => {
                return Err(HarnessError::Connect {
                    url: url.to_owned(),
                    after: CONNECT_DEADLINE,
                    reason: e.to_string(),
                })
            }
            Err(_) => backoff.sleep().await,
        }
    }
}

/// Declares the shop's streams (events and dead letters) exactly as the services do,
/// so scenarios can publish before any service starts.
pub async fn declare_streams(js: &Context) -> Result<(), HarnessError> {
    let decls = shop_shell::stream_decls(DEFAULT_EVENT_MAX_AGE);
    shop_runtime::streams::declare_streams(js, &decls).await?;
    Ok(())
}

/// Publishes an event exactly as the services' endpoints do (`shop_shell::publish_event`:
/// structured-mode JSON, `Nats-Msg-Id` = event id, `traceparent` carried), and returns the
/// PubAck so tests can check `duplicate` and `sequence`.
pub async fn publish_event(js: &Context, envelope: &Envelope) -> Result<PublishAck, HarnessError> {
    Ok(shop_shell::publish_event(js, envelope).await?)
}

/// Publishes arbitrary bytes and headers, for hostile-input scenarios (bad JSON,
/// wrong type, mismatched subject, oversized payload).
pub async fn publish_raw(
    js: &Context,
    subject: &str,
    headers: HeaderMap,
    payload: impl Into<Bytes>,
) -> Result<PublishAck, HarnessError> {
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await;
    await_ack(subject, ack).await
}

async fn await_ack(
    subject: &str,
    sent: Result<PublishAckFuture, jetstream::context::PublishError>,
) -> Result<PublishAck, HarnessError> {
    let failed = |reason: String| HarnessError::Publish {
        subject: subject.to_owned(),
        reason,
    };
    let pending = sent.map_err(|e| failed(e.to_string()))?;
    pending.await.map_err(|e| failed(e.to_string()))
}

/// How many messages a stream holds right now, from a fresh stream info.
pub async fn stream_message_count(js: &Context, stream: &str) -> Result<u64, HarnessError> {
    let info = js
        .get_stream(stream)
        .await
        .map_err(|e| HarnessError::JetStream(format!("stream info of {stream}: {e}")))?
        .get_info()
        .await
        .map_err(|e| HarnessError::JetStream(format!("stream info of {stream}: {e}")))?;
    Ok(info.state.messages)
}

/// Every event stored about one order (or sku) across ORDERS, INVENTORY and PAYMENTS,
/// oldest first by the time the server stored it; the operators' reader
/// (`shop_ops::reader::events_about`), so a scenario sees what `shop trace` sees.
pub async fn events_about(js: &Context, key: &str) -> Result<Vec<StoredEvent>, HarnessError> {
    Ok(shop_ops::reader::events_about(js, key).await?)
}
