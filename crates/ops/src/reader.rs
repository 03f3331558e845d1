//! Reading what the streams hold: one order's events by subject, whole streams in order,
//! and the dead letters that mention an order. The only place stream bytes become events:
//! the operators' tools, the harness and the chaos suite all read through here.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::Context;
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use shop_events::api::deadletters::{HDR_REASON, HDR_SERVICE, HDR_SUBJECT};
use shop_events::subjects;
use shop_events::{DecodeError, Envelope};
use time::OffsetDateTime;

use crate::OpsError;

pub use shop_events::subjects::EVENT_STREAMS;

/// How long a whole-stream read waits for the next message before deciding the stream
/// has nothing more: messages can vanish (max age, purge) between the snapshot and the read.
const IDLE_END: Duration = Duration::from_secs(3);

/// One message of an event stream, decoded when it is a valid event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream: String,
    pub sequence: u64,
    pub subject: String,
    /// When the server stored it; orders events across streams.
    pub stored_at: OffsetDateTime,
    pub headers: HeaderMap,
    /// The bytes as stored, so hostile input can be inspected or published again.
    pub payload: Bytes,
    /// The checked event, or why the contract refuses it (hostile input stays visible).
    pub decoded: Result<Envelope, DecodeError>,
}

/// What the services make of a message: the event, or why they dead-letter it, its
/// `source` included. Trace and audit take the services' verdict, so a forgery the
/// services refused shows as refused and is never judged as a fact of the books.
pub fn accepted(subject: &str, payload: &[u8]) -> Result<Envelope, DecodeError> {
    let envelope = shop_events::decode(subject, payload)?;
    envelope.check_source()?;
    Ok(envelope)
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

/// One message parked in the dead-letter stream.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub sequence: u64,
    pub subject: String,
    pub stored_at: OffsetDateTime,
    /// The service that could not process it.
    pub service: String,
    /// The subject the message was originally published on.
    pub original_subject: String,
    pub reason: String,
    pub payload: String,
}

fn stream_error(stream: &str, reason: impl ToString) -> OpsError {
    OpsError::Stream {
        stream: stream.to_owned(),
        reason: reason.to_string(),
    }
}

/// Opens a stream, or `None` when it does not exist (a shop that never ran).
async fn open(js: &Context, name: &str) -> Result<Option<Stream>, OpsError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(stream_error(name, e)),
        },
    }
}

/// Every event stored about one order (or sku) across the event streams, oldest first
/// by the time the server stored it.
///
/// Hops from one match of `events.*.*.<key>` to the next with direct gets, so it reads
/// exactly what is stored now and creates no consumer that could disturb the shop.
pub async fn events_about(js: &Context, key: &str) -> Result<Vec<StoredEvent>, OpsError> {
    let filter = subjects::events_about(key);
    let mut found = Vec::new();
    for name in EVENT_STREAMS {
        let Some(stream) = open(js, name).await? else {
            continue;
        };
        let mut next_sequence = 1;
        loop {
            let message = match stream
                .direct_get_next_for_subject(filter.as_str(), Some(next_sequence))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(stream_error(name, format!("reading {filter}: {e}"))),
            };
            next_sequence = message.sequence + 1;
            let subject = message.subject.to_string();
            found.push(StoredEvent {
                stream: name.to_owned(),
                sequence: message.sequence,
                decoded: accepted(&subject, &message.payload),
                subject,
                stored_at: message.time,
                headers: message.headers,
                payload: message.payload,
            });
        }
    }
    // Sequences order events only within a stream; the stored time orders them across
    // streams, and the stable sort keeps same-instant events in stream order.
    found.sort_by_key(|e| e.stored_at);
    Ok(found)
}

/// One raw message of a whole-stream read.
struct Raw {
    sequence: u64,
    subject: String,
    stored_at: OffsetDateTime,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

/// Every message of a stream up to its last sequence at the time of the call, in order.
///
/// An ordered consumer streams the messages in large batches, which is what makes tens
/// of thousands of events quick to read; it is ephemeral and needs no acks, so it leaves
/// nothing behind.
async fn read_all(js: &Context, name: &str) -> Result<Vec<Raw>, OpsError> {
    let Some(mut stream) = open(js, name).await? else {
        return Ok(Vec::new());
    };
    let state = stream
        .info()
        .await
        .map_err(|e| stream_error(name, e))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            description: Some("shop-ops: reading the whole stream".into()),
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| stream_error(name, e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| stream_error(name, e))?;
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    while let Ok(next) = tokio::time::timeout(IDLE_END, messages.next()).await {
        let Some(message) = next else { break };
        let message = message.map_err(|e| stream_error(name, e))?;
        let info = message.info().map_err(|e| stream_error(name, e))?;
        let (sequence, stored_at) = (info.stream_sequence, info.published);
        out.push(Raw {
            sequence,
            subject: message.subject.to_string(),
            stored_at,
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
        if sequence >= state.last_sequence {
            break;
        }
    }
    Ok(out)
}

/// Every message of one event stream, decoded, in stream order.
pub async fn read_event_stream(js: &Context, name: &str) -> Result<Vec<StoredEvent>, OpsError> {
    Ok(read_all(js, name)
        .await?
        .into_iter()
        .map(|raw| StoredEvent {
            stream: name.to_owned(),
            sequence: raw.sequence,
            decoded: accepted(&raw.subject, &raw.payload),
            subject: raw.subject,
            stored_at: raw.stored_at,
            headers: raw.headers.unwrap_or_default(),
            payload: raw.payload,
        })
        .collect())
}

/// Dead letters that concern `order_id`: parked from one of its subjects, or carrying its id.
pub async fn dead_letters_about(
    js: &Context,
    order_id: &str,
) -> Result<Vec<StoredDeadLetter>, OpsError> {
    let suffix = format!(".{order_id}");
    let header = |headers: &Option<HeaderMap>, name: &str| {
        headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    Ok(read_all(js, subjects::DEADLETTER_STREAM)
        .await?
        .into_iter()
        .filter_map(|raw| {
            let original_subject = header(&raw.headers, HDR_SUBJECT);
            let payload = String::from_utf8_lossy(&raw.payload).into_owned();
            // A hostile message may sit on an unrelated subject yet name the order in its
            // bytes, so the payload is searched as well as the subject.
            let about = original_subject.ends_with(&suffix) || payload.contains(order_id);
            about.then(|| StoredDeadLetter {
                sequence: raw.sequence,
                service: header(&raw.headers, HDR_SERVICE),
                reason: header(&raw.headers, HDR_REASON),
                subject: raw.subject,
                stored_at: raw.stored_at,
                original_subject,
                payload,
            })
        })
        .collect())
}
