//! Outbox messages and the relay that publishes them to JetStream with `Nats-Msg-Id`.
//!
//! The relay pipelines publishes (bounded in flight), awaits every PubAck, and
//! only then removes the entries. A crash between publish and removal makes it
//! publish again on restart; JetStream's duplicate window and the consumers'
//! inboxes make that harmless.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::crashpoint;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::store::Store;
use crate::RuntimeError;

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub subject: String,
    /// Sent as `Nats-Msg-Id` so JetStream drops a re-publish.
    pub msg_id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let bytes = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(bytes)
}

fn take_str(buf: &mut &[u8]) -> Option<String> {
    String::from_utf8(take(buf)?.to_vec()).ok()
}

/// Starts an entry holding several messages. A single-message entry (the older form)
/// starts with its subject's length, which is never this large.
const ENTRY_MARK: [u8; 4] = [0xFF; 4];

/// Builds one outbox entry from messages already in their [`OutboxMessage::encode`] form.
///
/// One entry per transaction, not per message: every sled insert and remove costs a log
/// record and a share of the flush, and a pulled batch commits dozens of messages at once.
pub fn encode_entry(encoded: &[Vec<u8>]) -> Vec<u8> {
    let len = encoded.iter().map(|m| m.len() + 4).sum::<usize>() + 8;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&ENTRY_MARK);
    buf.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    for message in encoded {
        put(&mut buf, message);
    }
    buf
}

impl OutboxMessage {
    /// A length-prefixed binary form: cheaper than JSON-in-JSON for the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.payload.len() + self.subject.len() + 64);
        put(&mut buf, self.subject.as_bytes());
        put(&mut buf, self.msg_id.as_bytes());
        buf.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            put(&mut buf, name.as_bytes());
            put(&mut buf, value.as_bytes());
        }
        put(&mut buf, &self.payload);
        buf
    }

    pub fn decode(mut buf: &[u8]) -> Option<OutboxMessage> {
        let subject = take_str(&mut buf)?;
        let msg_id = take_str(&mut buf)?;
        let count = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        buf = &buf[4..];
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            headers.push((take_str(&mut buf)?, take_str(&mut buf)?));
        }
        let payload = take(&mut buf)?.to_vec();
        Some(OutboxMessage {
            subject,
            msg_id,
            headers,
            payload,
        })
    }

    /// Decodes an outbox entry: the messages one transaction queued, in publish order.
    ///
    /// Accepts the older one-message-per-entry form too, so an outbox left by an earlier
    /// version is still published after an upgrade.
    pub fn decode_entry(buf: &[u8]) -> Option<Vec<OutboxMessage>> {
        let Some(mut rest) = buf.strip_prefix(&ENTRY_MARK[..]) else {
            return OutboxMessage::decode(buf).map(|m| vec![m]);
        };
        let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest = &rest[4..];
        let mut messages = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            messages.push(OutboxMessage::decode(take(&mut rest)?)?);
        }
        Some(messages)
    }

    /// The subject and the JetStream publish, moving the payload instead of copying it.
    fn into_publish(self) -> (String, jetstream::message::PublishMessage) {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let message = jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(&self.msg_id)
            .payload(Bytes::from(self.payload));
        (self.subject, message)
    }
}

/// Wakes the relay after a commit put something in the outbox.
#[derive(Debug, Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How many publishes the relay keeps in flight before awaiting their PubAcks.
pub const RELAY_BATCH: usize = 256;

/// Publishes the outbox until shutdown, then drains what is left.
pub async fn run_relay(
    js: jetstream::Context,
    store: Arc<Store>,
    waker: RelayWaker,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match drain_once(&js, &store, &stats).await {
            Ok(published) if published > 0 => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                stats.record_error(format!("outbox relay: {e}"));
                tracing::warn!(error = %e, backlog = store.outbox_len(), "outbox relay failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.requested() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        if shutdown.is_requested() {
            break;
        }
        tokio::select! {
            _ = waker.0.notified() => {}
            // A periodic sweep covers a lost wake-up and entries left by a crash.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.requested() => break,
        }
    }
    // Shutdown: try to leave nothing behind, but never hang on a dead broker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.outbox_len() > 0 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, drain_once(&js, &store, &stats)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    if store.outbox_len() > 0 {
        tracing::warn!(
            backlog = store.outbox_len(),
            "outbox not empty at shutdown; it is published on next start"
        );
    }
}

/// Publishes up to about [`RELAY_BATCH`] messages; returns how many were published.
///
/// An entry is removed only when every one of its messages got its PubAck.
pub async fn drain_once(
    js: &jetstream::Context,
    store: &Store,
    stats: &Stats,
) -> Result<usize, RuntimeError> {
    let batch = store.outbox_batch(RELAY_BATCH)?;
    if batch.is_empty() {
        return Ok(0);
    }
    // Publish only what is on disk. An entry committed but not yet flushed may vanish
    // in a crash together with the state change that produced it; the work would then
    // be done again and publish the same fact under a new event id. Flushing first
    // (cheap when the committer already flushed) closes that window.
    store.flush().await?;
    let mut pending: Vec<(sled::IVec, Vec<PublishAckFuture>)> = Vec::with_capacity(batch.len());
    for (key, messages) in batch {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let (subject, publish) = message.into_publish();
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| RuntimeError::Publish(format!("{subject}: {e}")))?;
            acks.push(ack);
        }
        pending.push((key, acks));
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut published = 0;
    let mut failure = None;
    'entries: for (key, acks) in pending {
        for ack in acks {
            match ack.await {
                Ok(_) => published += 1,
                Err(e) => {
                    failure = Some(RuntimeError::Publish(format!("PubAck: {e}")));
                    break 'entries;
                }
            }
        }
        acked.push(key);
    }
    if !acked.is_empty() {
        crashpoint::hit(crashpoint::AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE);
        store.outbox_remove_all(&acked)?;
    }
    stats.add_published(published as u64);
    match failure {
        Some(e) => Err(e),
        None => Ok(published),
    }
}
