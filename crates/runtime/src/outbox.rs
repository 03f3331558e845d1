//! The outbox relay: publishes what transactions queued to JetStream with `Nats-Msg-Id`.
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
use crate::outbox_entry::OutboxMessage;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::store::Store;
use crate::RuntimeError;

/// The subject and the JetStream publish, moving the payload instead of copying it.
fn into_publish(message: OutboxMessage) -> (String, jetstream::message::PublishMessage) {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(&message.msg_id)
        .payload(Bytes::from(message.payload));
    (message.subject, publish)
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
    let mut pending: Vec<(sled::IVec, Vec<(String, PublishAckFuture)>)> =
        Vec::with_capacity(batch.len());
    for (key, messages) in batch {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let (subject, publish) = into_publish(message);
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
            acks.push((subject, ack));
        }
        pending.push((key, acks));
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut published = 0;
    let mut failure = None;
    'entries: for (key, acks) in pending {
        for (subject, ack) in acks {
            match ack.await {
                Ok(_) => published += 1,
                Err(e) => {
                    failure = Some(RuntimeError::publish(subject, e));
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
