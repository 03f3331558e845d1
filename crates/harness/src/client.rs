//! Talking to the test server the way the shop does: connect, declare streams, publish
//! CloudEvents (well-formed or hostile), and read back everything stored about one order.

use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use shop_events::subjects::{self, DEFAULT_EVENT_MAX_AGE};
use shop_events::{DecodeError, Envelope};
use shop_runtime::streams::StreamDecl;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::wait::Backoff;
use crate::HarnessError;

/// The streams that hold events, in saga order; the dead-letter stream is not one of them.
pub const EVENT_STREAMS: [&str; 3] = [
    subjects::ORDERS_STREAM,
    subjects::INVENTORY_STREAM,
    subjects::PAYMENTS_STREAM,
];

/// How long [`connect`] keeps trying; covers a server that is still coming up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Connects to `url`, retrying until a deadline because the server may still be starting.
///
/// Reconnects after a server restart are quick (50 ms steps, at most 500 ms) so
/// outage scenarios do not spend their deadline waiting for the client.
pub async fn connect(url: &str) -> Result<Client, HarnessError> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        let options = ConnectOptions::new()
            .name("shop-harness")
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * attempts as u64).min(Duration::from_millis(500))
            });
        match async_nats::connect_with_options(url, options).await {
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
/// from the contract's specs, so scenarios can publish before any service starts.
pub async fn declare_streams(js: &Context) -> Result<(), HarnessError> {
    let decls: Vec<StreamDecl> = subjects::stream_specs(DEFAULT_EVENT_MAX_AGE)
        .iter()
        .map(|spec| {
            StreamDecl::new(
                spec.name,
                &spec.subjects,
                spec.description,
                spec.max_age,
                spec.duplicate_window,
            )
        })
        .collect();
    shop_runtime::streams::declare_streams(js, &decls).await?;
    Ok(())
}

/// Publishes an event as a producer should: structured-mode JSON on its subject, with
/// `Nats-Msg-Id` set to the event id so the stream drops redeliveries inside its
/// duplicate window. Returns the PubAck so tests can check `duplicate` and `sequence`.
pub async fn publish_event(js: &Context, envelope: &Envelope) -> Result<PublishAck, HarnessError> {
    let subject = envelope.subject();
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, envelope.meta.id.as_str());
    let ack = js
        .publish_with_headers(subject.clone(), headers, Bytes::from(envelope.to_json()))
        .await;
    await_ack(&subject, ack).await
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

/// One message as the stream stored it, decoded when it is a valid event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream: String,
    pub sequence: u64,
    pub subject: String,
    /// When the server stored it; the order [`events_about`] sorts by.
    pub stored_at: OffsetDateTime,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The checked event, or why `shop_events::decode` refused it (hostile input stays visible).
    pub decoded: Result<Envelope, DecodeError>,
}

impl StoredEvent {
    /// The event, if the message decoded.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.decoded.as_ref().ok()
    }

    /// The event's name (`OrderPlaced`, …), if the message decoded.
    pub fn kind_name(&self) -> Option<&'static str> {
        self.envelope().map(|e| e.kind().name())
    }
}

/// Every event stored about one order (or sku) across ORDERS, INVENTORY and PAYMENTS,
/// oldest first by the time the server stored it.
///
/// Reads with stream message gets (`STREAM.MSG.GET`, next by subject) on `events.*.*.<key>`, hopping from one match to
/// the next, so it sees exactly what is stored at the moment of the call and never
/// creates consumers that could disturb a scenario.
pub async fn events_about(js: &Context, key: &str) -> Result<Vec<StoredEvent>, HarnessError> {
    let filter = subjects::events_about(key);
    let mut found = Vec::new();
    for stream_name in EVENT_STREAMS {
        let stream = js
            .get_stream_no_info(stream_name)
            .await
            .map_err(|e| HarnessError::JetStream(format!("opening stream {stream_name}: {e}")))?;
        let mut next_sequence = 1;
        loop {
            let message = match stream
                .get_first_raw_message_by_subject(&filter, next_sequence)
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(HarnessError::JetStream(format!(
                        "reading {filter} from {stream_name}: {e}"
                    )))
                }
            };
            next_sequence = message.sequence + 1;
            let subject = message.subject.to_string();
            found.push(StoredEvent {
                stream: stream_name.to_owned(),
                sequence: message.sequence,
                decoded: shop_events::decode(&subject, &message.payload),
                subject,
                stored_at: message.time,
                headers: message.headers,
                payload: message.payload,
            });
        }
    }
    // Stream sequences are only ordered within a stream; the stored timestamp orders
    // across streams, and the stable sort keeps same-instant events in stream order.
    found.sort_by_key(|e| e.stored_at);
    Ok(found)
}
