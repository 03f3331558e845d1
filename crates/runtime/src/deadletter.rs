//! Dead-lettering: what a service cannot process goes to `DEADLETTER` with the reason,
//! the original subject, headers and bytes, where it came from and who failed.
//!
//! Also the operator side: list a service's dead letters, replay one after a
//! fix, or discard one with a reason that is kept.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream::Stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::store::{Applied, Store, TreeId, TxResult};
use crate::RuntimeError;

pub const HDR_REASON: &str = "Shop-Dlq-Reason";
pub const HDR_SUBJECT: &str = "Shop-Dlq-Subject";
pub const HDR_STREAM: &str = "Shop-Dlq-Stream";
pub const HDR_SEQUENCE: &str = "Shop-Dlq-Sequence";
pub const HDR_CONSUMER: &str = "Shop-Dlq-Consumer";
pub const HDR_SERVICE: &str = "Shop-Dlq-Service";
pub const HDR_DELIVERED: &str = "Shop-Dlq-Delivered";
pub const HDR_TRUNCATED: &str = "Shop-Dlq-Truncated";
const DLQ_PREFIX: &str = "Shop-Dlq-";

/// Everything needed to park one message.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub deadletter_subject: &'a str,
    pub service: &'a str,
    pub consumer: &'a str,
    pub stream: &'a str,
    pub stream_sequence: u64,
    pub delivered: i64,
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: &'a [u8],
    pub reason: &'a str,
}

fn dlq_headers(letter: &DeadLetter<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = letter.headers {
        for (name, values) in original.iter() {
            // The original Nats-Msg-Id would make JetStream drop the dead letter as a duplicate.
            if AsRef::<str>::as_ref(name) == "Nats-Msg-Id" {
                headers.insert(
                    "Shop-Dlq-Original-Msg-Id",
                    values.first().map(|v| v.as_str()).unwrap_or(""),
                );
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    // Header values must be one line.
    let reason: String = letter
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    headers.insert(HDR_REASON, reason.as_str());
    headers.insert(HDR_SUBJECT, letter.subject);
    headers.insert(HDR_STREAM, letter.stream);
    headers.insert(HDR_SEQUENCE, letter.stream_sequence.to_string().as_str());
    headers.insert(HDR_CONSUMER, letter.consumer);
    headers.insert(HDR_SERVICE, letter.service);
    headers.insert(HDR_DELIVERED, letter.delivered.to_string().as_str());
    headers
}

/// Publishes a dead letter and waits for JetStream to store it.
///
/// Its `Nats-Msg-Id` is derived from origin and consumer, so a redelivered
/// poison message is parked once, not once per delivery.
pub async fn publish(
    js: &jetstream::Context,
    letter: &DeadLetter<'_>,
) -> Result<u64, RuntimeError> {
    let msg_id = format!(
        "dlq:{}:{}:{}:{}",
        letter.service, letter.consumer, letter.stream, letter.stream_sequence
    );
    let headers = dlq_headers(letter);
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers.clone())
        .message_id(&msg_id)
        .payload(Bytes::copy_from_slice(letter.payload));
    let result = match js
        .send_publish(letter.deadletter_subject.to_owned(), publish)
        .await
    {
        Ok(ack) => ack.await.map_err(|e| RuntimeError::Publish(e.to_string())),
        Err(e) => Err(RuntimeError::Publish(e.to_string())),
    };
    match result {
        Ok(ack) => Ok(ack.sequence),
        Err(first) => {
            // Too big with our headers added: park a truncated copy; the original
            // stays in its own stream at the recorded sequence.
            let mut headers = headers;
            headers.insert(HDR_TRUNCATED, "true");
            let keep = letter.payload.len().min(4096);
            let publish = jetstream::message::PublishMessage::build()
                .headers(headers)
                .message_id(&msg_id)
                .payload(Bytes::copy_from_slice(&letter.payload[..keep]));
            let ack = js
                .send_publish(letter.deadletter_subject.to_owned(), publish)
                .await
                .map_err(|e| RuntimeError::Publish(format!("{first}; truncated copy: {e}")))?
                .await
                .map_err(|e| RuntimeError::Publish(format!("{first}; truncated copy: {e}")))?;
            Ok(ack.sequence)
        }
    }
}

/// What an operator decided about a dead letter, kept in the service's own store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Resolution {
    Replayed { at: String, republished_as: u64 },
    Discarded { at: String, reason: String },
}

/// One dead letter as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetterView {
    pub seq: u64,
    pub parked_at: String,
    pub reason: String,
    pub subject: String,
    pub stream: String,
    pub stream_sequence: Option<u64>,
    pub consumer: String,
    pub delivered: Option<i64>,
    pub truncated: bool,
    pub payload: String,
    pub resolution: Option<Resolution>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// Where a service keeps its operators' decisions about its dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetterBook {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    pub tree: TreeId,
    pub service: String,
    pub stream: String,
}

/// Why an operator request about a dead letter cannot be honoured.
#[derive(Debug)]
pub enum DeadLetterError {
    NotFound(u64),
    NotOurs {
        seq: u64,
        service: String,
    },
    /// Only a truncated copy was parked: replaying it would publish a corrupt event.
    Truncated {
        seq: u64,
        stream: String,
        sequence: String,
    },
    Failed(RuntimeError),
}

impl From<RuntimeError> for DeadLetterError {
    fn from(e: RuntimeError) -> Self {
        DeadLetterError::Failed(e)
    }
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl DeadLetterBook {
    async fn stream(&self) -> Result<Stream, RuntimeError> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(RuntimeError::js)
    }

    fn view(
        &self,
        seq: u64,
        subject_prefix: &str,
        msg: &jetstream::message::StreamMessage,
    ) -> Option<DeadLetterView> {
        if !msg.subject.as_str().starts_with(subject_prefix) {
            return None;
        }
        let h = &msg.headers;
        Some(DeadLetterView {
            seq,
            parked_at: msg
                .time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            reason: header(h, HDR_REASON),
            subject: header(h, HDR_SUBJECT),
            stream: header(h, HDR_STREAM),
            stream_sequence: header(h, HDR_SEQUENCE).parse().ok(),
            consumer: header(h, HDR_CONSUMER),
            delivered: header(h, HDR_DELIVERED).parse().ok(),
            truncated: header(h, HDR_TRUNCATED) == "true",
            payload: String::from_utf8_lossy(&msg.payload)
                .chars()
                .take(2048)
                .collect(),
            resolution: self
                .store
                .read_json(self.tree, &seq.to_be_bytes())
                .ok()
                .flatten(),
        })
    }

    fn prefix(&self) -> String {
        format!("deadletter.{}.", self.service)
    }

    /// The service's dead letters, oldest first, with any operator decision.
    pub async fn list(
        &self,
        filter_subject: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetterView>, RuntimeError> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter_subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(RuntimeError::js)?;
        let mut out = Vec::new();
        // Counted for our filter, not the whole stream: with only other services'
        // letters parked, waiting for a first message would just run into the timeout.
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(RuntimeError::js)?;
        let prefix = self.prefix();
        while out.len() < limit {
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(2), messages.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            let Ok(meta) = message.info() else { break };
            let (seq, pending) = (meta.stream_sequence, meta.pending);
            let raw = jetstream::message::StreamMessage {
                subject: message.subject.clone(),
                sequence: seq,
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
                time: meta.published,
            };
            if let Some(view) = self.view(seq, &prefix, &raw) {
                out.push(view);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    async fn fetch(&self, seq: u64) -> Result<jetstream::message::StreamMessage, DeadLetterError> {
        let stream = self.stream().await?;
        let msg = stream
            .get_raw_message(seq)
            .await
            .map_err(|_| DeadLetterError::NotFound(seq))?;
        if !msg.subject.as_str().starts_with(&self.prefix()) {
            return Err(DeadLetterError::NotOurs {
                seq,
                service: self.service.clone(),
            });
        }
        Ok(msg)
    }

    /// Publishes the original bytes again on the original subject, with a fresh
    /// `Nats-Msg-Id` so the duplicate window does not swallow it. Services that
    /// already processed the event skip it through their inbox.
    pub async fn replay(&self, seq: u64) -> Result<DeadLetterView, DeadLetterError> {
        let msg = self.fetch(seq).await?;
        if header(&msg.headers, HDR_TRUNCATED) == "true" {
            return Err(DeadLetterError::Truncated {
                seq,
                stream: header(&msg.headers, HDR_STREAM),
                sequence: header(&msg.headers, HDR_SEQUENCE),
            });
        }
        let subject = header(&msg.headers, HDR_SUBJECT);
        let mut headers = HeaderMap::new();
        for (name, values) in msg.headers.iter() {
            let n: &str = name.as_ref();
            if n.starts_with(DLQ_PREFIX) || n == "Nats-Msg-Id" {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert("Shop-Replayed-From", seq.to_string().as_str());
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(format!("replay:{}:{seq}", self.service))
            .payload(msg.payload.clone());
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| RuntimeError::Publish(e.to_string()))?
            .await
            .map_err(|e| RuntimeError::Publish(e.to_string()))?;
        self.resolve(
            seq,
            Resolution::Replayed {
                at: now_text(),
                republished_as: ack.sequence,
            },
        )?;
        self.view(seq, &self.prefix(), &msg)
            .ok_or(DeadLetterError::NotFound(seq))
    }

    /// Marks a dead letter as discarded, keeping the reason.
    pub async fn discard(&self, seq: u64, reason: &str) -> Result<DeadLetterView, DeadLetterError> {
        let msg = self.fetch(seq).await?;
        self.resolve(
            seq,
            Resolution::Discarded {
                at: now_text(),
                reason: reason.to_owned(),
            },
        )?;
        self.view(seq, &self.prefix(), &msg)
            .ok_or(DeadLetterError::NotFound(seq))
    }

    fn resolve(&self, seq: u64, resolution: Resolution) -> Result<(), RuntimeError> {
        let key = seq.to_be_bytes();
        let tree = self.tree;
        let write =
            |tx: &crate::store::Tx<'_>| -> TxResult<()> { tx.put_json(tree, &key, &resolution) };
        match self.store.apply(None, write) {
            Ok(Applied::Done(())) | Ok(Applied::Duplicate) => {}
            Err(crate::store::ApplyError::Rejected(r)) => return Err(RuntimeError::Transaction(r)),
            Err(crate::store::ApplyError::Failed(e)) => return Err(e),
        }
        self.store.flush_blocking()
    }
}
