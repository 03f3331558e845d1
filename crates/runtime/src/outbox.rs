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

/// Publishes up to one batch; returns how many entries were published and removed.
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
    let mut pending: Vec<(sled::IVec, PublishAckFuture)> = Vec::with_capacity(batch.len());
    for (key, message) in batch {
        let (subject, publish) = message.into_publish();
        let ack = js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|e| RuntimeError::Publish(format!("{subject}: {e}")))?;
        pending.push((key, ack));
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut failure = None;
    for (key, ack) in pending {
        match ack.await {
            Ok(_) => acked.push(key),
            Err(e) => {
                failure = Some(RuntimeError::Publish(format!("PubAck: {e}")));
                break;
            }
        }
    }
    if !acked.is_empty() {
        crashpoint::hit(crashpoint::AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE);
        // One batch instead of one remove per entry.
        store.outbox_remove_all(&acked)?;
    }
    let done = acked.len();
    if let Some(e) = failure {
        stats.add_published(done as u64);
        return Err(e);
    }
    stats.add_published(done as u64);
    Ok(done)
}
