//! The operator's book of a service's dead letters: list them, replay one after a fix,
//! or discard one with a reason that is kept in the service's own store.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream::RawMessageErrorKind, stream::Stream};
use async_nats::HeaderMap;
use futures::StreamExt;
use shop_events::api::deadletters::{
    DeadLetterView, Resolution, HDR_CONSUMER, HDR_DELIVERED, HDR_PREFIX, HDR_REASON,
    HDR_REPLAYED_FROM, HDR_SEQUENCE, HDR_STREAM, HDR_SUBJECT, HDR_TRUNCATED,
};
use shop_events::subjects::{deadletter_filter, deadletter_subject, DEADLETTER_STREAM};
use shop_runtime::store::{ApplyError, Store, TreeId, Tx, TxResult};
use shop_runtime::RuntimeError;

/// Why an operator request about a dead letter cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter with sequence {0} in {DEADLETTER_STREAM}")]
    NotFound(u64),
    #[error("dead letter {seq} belongs to another service; ask that service (this is {service})")]
    NotOurs { seq: u64, service: String },
    /// Only a truncated copy was parked: replaying it would publish a corrupt event.
    #[error("dead letter {seq} holds a truncated copy; replay the original from stream {stream} sequence {sequence}")]
    Truncated {
        seq: u64,
        stream: String,
        sequence: String,
    },
    /// Reading the stream or publishing the replay failed.
    #[error(transparent)]
    Failed(#[from] RuntimeError),
    /// The decision could not be written to the service's store.
    #[error("cannot record the decision: {0}")]
    Unrecorded(#[source] ApplyError),
}

impl DeadLetterError {
    /// Whether asking again can succeed: never for a request that cannot be honoured.
    pub fn is_transient(&self) -> bool {
        match self {
            DeadLetterError::NotFound(_)
            | DeadLetterError::NotOurs { .. }
            | DeadLetterError::Truncated { .. } => false,
            DeadLetterError::Failed(e) => e.is_transient(),
            DeadLetterError::Unrecorded(e) => e.is_transient(),
        }
    }
}

/// Where a service keeps its operators' decisions about its dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetterBook {
    js: jetstream::Context,
    store: Arc<Store>,
    tree: TreeId,
    service: String,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl DeadLetterBook {
    /// The book of `service`, keeping decisions in `tree` of `store`.
    pub fn new(
        js: jetstream::Context,
        store: Arc<Store>,
        tree: TreeId,
        service: &str,
    ) -> DeadLetterBook {
        DeadLetterBook {
            js,
            store,
            tree,
            service: service.to_owned(),
        }
    }

    async fn stream(&self) -> Result<Stream, RuntimeError> {
        self.js
            .get_stream(DEADLETTER_STREAM)
            .await
            .map_err(RuntimeError::js(format!(
                "getting stream {DEADLETTER_STREAM}"
            )))
    }

    /// Whether `subject` is one of this service's dead-letter subjects.
    fn is_ours(&self, subject: &str) -> bool {
        // With an empty stream the contract's builder gives the prefix every one of the
        // service's dead-letter subjects shares, `deadletter.<service>.`.
        subject.starts_with(&deadletter_subject(&self.service, ""))
    }

    fn view(&self, seq: u64, msg: &jetstream::message::StreamMessage) -> Option<DeadLetterView> {
        if !self.is_ours(msg.subject.as_str()) {
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

    /// The service's dead letters, oldest first, with any operator decision.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetterView>, RuntimeError> {
        let stream = self.stream().await?;
        let filter_subject = deadletter_filter(&self.service);
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter_subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(RuntimeError::js(format!(
                "reading {filter_subject} from {DEADLETTER_STREAM}"
            )))?;
        let mut out = Vec::new();
        // Counted for our filter, not the whole stream: with only other services'
        // letters parked, waiting for a first message would just run into the timeout.
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(RuntimeError::js(format!(
            "reading {filter_subject} from {DEADLETTER_STREAM}"
        )))?;
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
            if let Some(view) = self.view(seq, &raw) {
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
        let msg = match stream.get_raw_message(seq).await {
            Ok(msg) => msg,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                return Err(DeadLetterError::NotFound(seq))
            }
            Err(e) => {
                return Err(RuntimeError::js(format!(
                    "getting message {seq} of {DEADLETTER_STREAM}"
                ))(e)
                .into())
            }
        };
        if !self.is_ours(msg.subject.as_str()) {
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
            if n.starts_with(HDR_PREFIX) || n == "Nats-Msg-Id" {
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        headers.insert(HDR_REPLAYED_FROM, seq.to_string().as_str());
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(format!("replay:{}:{seq}", self.service))
            .payload(msg.payload.clone());
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| RuntimeError::publish(subject.as_str(), e))?
            .await
            .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
        self.resolve(
            seq,
            Resolution::Replayed {
                at: now_text(),
                republished_as: ack.sequence,
            },
        )?;
        self.view(seq, &msg).ok_or(DeadLetterError::NotFound(seq))
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
        self.view(seq, &msg).ok_or(DeadLetterError::NotFound(seq))
    }

    fn resolve(&self, seq: u64, resolution: Resolution) -> Result<(), DeadLetterError> {
        let key = seq.to_be_bytes();
        let tree = self.tree;
        let write = |tx: &Tx<'_>| -> TxResult<()> { tx.put_json(tree, &key, &resolution) };
        self.store
            .apply(None, write)
            .map_err(DeadLetterError::Unrecorded)?;
        Ok(self.store.flush_blocking()?)
    }
}
