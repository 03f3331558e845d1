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

use std::collections::{BTreeMap, HashSet};

use crate::changelog::{local_record, Changelog, ReadyPartition};
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
    changelog: Option<Changelog>,
    mut shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match drain_once(&js, &store, &stats, changelog.as_ref()).await {
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
        match tokio::time::timeout_at(
            deadline,
            drain_once(&js, &store, &stats, changelog.as_ref()),
        )
        .await
        {
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

/// An entry whose messages are on their way: its key, partition, entities and PubAcks.
type PendingEntry = (
    sled::IVec,
    Option<u32>,
    Vec<String>,
    Vec<(String, PublishAckFuture)>,
);

/// Publishes up to about [`RELAY_BATCH`] messages, then the changelog records of the
/// entities their transactions changed; returns how many messages and entries it handled.
///
/// An entry is removed only when every one of its messages got its PubAck and, in a
/// partitioned service, its entities' records are stored. Entries of a partition that is
/// not ready (being taken over, or owned elsewhere) wait; the partition's next owner
/// restores from the changelog, and this store purges them when it takes the partition.
pub async fn drain_once(
    js: &jetstream::Context,
    store: &Store,
    stats: &Stats,
    changelog: Option<&Changelog>,
) -> Result<usize, RuntimeError> {
    let batch = store.outbox_entries(RELAY_BATCH)?;
    if batch.is_empty() {
        return Ok(0);
    }
    // Publish only what is on disk. An entry committed but not yet flushed may vanish
    // in a crash together with the state change that produced it; the work would then
    // be done again and publish the same fact under a new event id. Flushing first
    // (cheap when the committer already flushed) closes that window.
    store.flush().await?;
    let ready = changelog.map(|c| c.ready.borrow().clone());
    // Entries of one partition stay in order: once one must wait, the later ones do too.
    let mut blocked: HashSet<u32> = HashSet::new();
    let mut pending: Vec<PendingEntry> = Vec::with_capacity(batch.len());
    for (key, entry) in batch {
        if let (Some(partition), Some(ready)) = (entry.partition, &ready) {
            let publishable = !blocked.contains(&partition)
                && ready
                    .get(&partition)
                    .is_some_and(|r| r.fence.check().is_ok());
            if !publishable {
                blocked.insert(partition);
                continue;
            }
        }
        let mut acks = Vec::with_capacity(entry.messages.len());
        for message in entry.messages {
            let (subject, publish) = into_publish(message);
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
            acks.push((subject, ack));
        }
        pending.push((key, entry.partition, entry.entities, acks));
    }
    let mut acked = Vec::with_capacity(pending.len());
    let mut published = 0;
    let mut failure = None;
    'entries: for (key, partition, entities, acks) in pending {
        for (subject, ack) in acks {
            match ack.await {
                Ok(_) => published += 1,
                Err(e) => {
                    failure = Some(RuntimeError::publish(subject, e));
                    break 'entries;
                }
            }
        }
        acked.push((key, partition, entities));
    }
    let mut removable: Vec<sled::IVec> = Vec::with_capacity(acked.len());
    match (changelog, &ready) {
        (Some(changelog), Some(ready)) => {
            let (done, error) = publish_records(store, changelog, ready, acked).await;
            removable = done;
            if failure.is_none() {
                failure = error;
            }
        }
        _ => removable.extend(acked.into_iter().map(|(key, _, _)| key)),
    }
    if !removable.is_empty() {
        crashpoint::hit(crashpoint::AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE);
        store.outbox_remove_all(&removable)?;
    }
    stats.add_published(published as u64);
    match failure {
        Some(e) => Err(e),
        None => Ok(published.max(removable.len())),
    }
}

/// Publishes the records of the entities `acked` entries changed, partition by
/// partition; returns the entries whose records are stored, and the first failure.
///
/// A record goes out only from the entry that changed its entity last: a later entry
/// still in the outbox holds changes whose events are not published yet, and a record
/// must never run ahead of its events.
#[allow(clippy::type_complexity)]
async fn publish_records(
    store: &Store,
    changelog: &Changelog,
    ready: &BTreeMap<u32, ReadyPartition>,
    acked: Vec<(sled::IVec, Option<u32>, Vec<String>)>,
) -> (Vec<sled::IVec>, Option<RuntimeError>) {
    let mut done = Vec::with_capacity(acked.len());
    let mut by_partition: BTreeMap<u32, (Vec<sled::IVec>, HashSet<u64>, Vec<String>)> =
        BTreeMap::new();
    for (key, partition, entities) in acked {
        match partition {
            None => done.push(key),
            Some(p) => {
                let slot = by_partition.entry(p).or_default();
                if let Ok(bytes) = <[u8; 8]>::try_from(key.as_ref()) {
                    slot.1.insert(u64::from_be_bytes(bytes));
                }
                slot.0.push(key);
                for entity in entities {
                    if !slot.2.contains(&entity) {
                        slot.2.push(entity);
                    }
                }
            }
        }
    }
    let mut failure = None;
    for (partition, (keys, entry_ids, entities)) in by_partition {
        let Some(ready) = ready.get(&partition) else {
            continue;
        };
        let read = store.read(|tx| {
            let mut records = Vec::with_capacity(entities.len());
            for entity in &entities {
                let (record, last_entry) = local_record(changelog.entities.as_ref(), tx, entity)?;
                if entry_ids.contains(&last_entry) {
                    records.push((entity.clone(), record));
                }
            }
            Ok(records)
        });
        let records = match read {
            Ok(records) => records,
            Err(e) => {
                failure.get_or_insert(RuntimeError::Restore(e.to_string()));
                continue;
            }
        };
        // The fence is checked again right before the records go out; the server
        // checks the epoch record too, which closes the window after this check.
        if ready.fence.check().is_err() {
            continue;
        }
        match changelog
            .bucket
            .publish_records(partition, ready.epoch_seq, &records)
            .await
        {
            Ok(()) => done.extend(keys),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    (done, failure)
}
