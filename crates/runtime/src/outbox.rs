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

use std::collections::BTreeMap;

use crate::changelog::{local_record, Changelog, ReadyPartition, Record};
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
            Ok(published) => {
                if let Some(fault) = stats.clear_publish_fault() {
                    tracing::info!(
                        since_ms = fault.since_ms,
                        backlog = store.outbox_len(),
                        "the relay publishes again"
                    );
                }
                if published > 0 {
                    backoff = Duration::from_millis(100);
                    continue;
                }
            }
            Err(e) => {
                stats.record_error(format!("outbox relay: {e}"));
                // The store's own faults are the store watch's to report; anything else
                // is the broker not taking what the relay publishes (a full JetStream
                // store, say): the entries stay in the outbox until it does.
                if !e.is_storage_fault() && stats.set_publish_fault(e.to_string()) {
                    tracing::error!(error = %e, backlog = store.outbox_len(), "the relay cannot publish; the outbox keeps every entry until it can");
                }
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

/// Publishes what the outbox holds: up to about [`RELAY_BATCH`] messages at a time in a
/// service that is not partitioned; in a partitioned one, every entry of the partitions
/// it holds, then their entities' changelog records. Returns how many messages and
/// entries it handled.
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
    match changelog {
        Some(changelog) => drain_partitioned(js, store, stats, changelog).await,
        None => drain_plain(js, store, stats).await,
    }
}

/// A service that is not partitioned: the oldest entries, messages only.
async fn drain_plain(
    js: &jetstream::Context,
    store: &Store,
    stats: &Stats,
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
    let mut published = 0;
    let mut acked = Vec::with_capacity(batch.len());
    let result = publish_entries(
        js,
        batch.into_iter().map(|(key, entry)| (key, entry.messages)),
        &mut acked,
        &mut published,
    )
    .await;
    if !acked.is_empty() {
        crashpoint::hit(crashpoint::AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE);
        store.outbox_remove_all(&acked)?;
    }
    stats.add_published(published as u64);
    result.map(|()| published)
}

/// Publishes each entry's messages (pipelined), pushing the key of every entry whose
/// messages all got their PubAck onto `acked`, in order, until the first failure.
async fn publish_entries(
    js: &jetstream::Context,
    entries: impl IntoIterator<Item = (sled::IVec, Vec<OutboxMessage>)>,
    acked: &mut Vec<sled::IVec>,
    published: &mut usize,
) -> Result<(), RuntimeError> {
    let mut pending: Vec<(sled::IVec, Vec<(String, PublishAckFuture)>)> = Vec::new();
    let mut in_flight = 0;
    for (key, messages) in entries {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let (subject, publish) = into_publish(message);
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
            acks.push((subject, ack));
        }
        in_flight += acks.len();
        pending.push((key, acks));
        // Bounded in flight: await this window's PubAcks before sending more.
        if in_flight >= RELAY_BATCH {
            await_acks(std::mem::take(&mut pending), acked, published).await?;
            in_flight = 0;
        }
    }
    await_acks(pending, acked, published).await
}

async fn await_acks(
    pending: Vec<(sled::IVec, Vec<(String, PublishAckFuture)>)>,
    acked: &mut Vec<sled::IVec>,
    published: &mut usize,
) -> Result<(), RuntimeError> {
    for (key, acks) in pending {
        for (subject, ack) in acks {
            ack.await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
            *published += 1;
        }
        acked.push(key);
    }
    Ok(())
}

/// One partition's share of a cut: its entries and its entities' records as of the cut.
struct PartitionCut {
    partition: u32,
    entries: Vec<(sled::IVec, Vec<OutboxMessage>)>,
    records: Vec<(String, Record)>,
}

/// A partitioned service: takes a consistent cut (every entry waiting, and the records
/// of their entities, read while no transaction commits), stores it in the changelog
/// (records and messages together), publishes the messages, then removes the entries.
///
/// The cut is what makes a restored partition consistent: every record read in it
/// reflects exactly the transactions whose entries are in it, and it carries their
/// messages, so a new owner never holds a state whose events might be lost, nor an
/// applied event id whose effects it lacks, nor misses an event the last owner published
/// (it publishes the cut's messages again; their ids make that harmless).
async fn drain_partitioned(
    js: &jetstream::Context,
    store: &Store,
    stats: &Stats,
    changelog: &Changelog,
) -> Result<usize, RuntimeError> {
    compact_due(changelog);
    if store.outbox_len() == 0 {
        return Ok(0);
    }
    let ready = changelog.ready.borrow().clone();
    let entities = changelog.entities.as_ref();
    let (plain, cuts) = store.at_a_cut(|store| take_cut(store, entities, &ready))?;
    if plain.is_empty() && cuts.is_empty() {
        return Ok(0);
    }
    // Entries of no partition are published as they are: make them durable first. A
    // partition's cut needs no flush: the changelog is its durable copy, stored before
    // any of its messages is published ([`Store::durable_by_changelog`]).
    if !plain.is_empty() {
        store.flush().await?;
    }
    let mut published = 0;
    let mut removable = Vec::new();
    let mut failure = publish_entries(js, plain, &mut removable, &mut published)
        .await
        .err();
    // Partitions side by side: each one's writes stay in order (its fence allows one at a
    // time), but nothing orders one partition's round trips after another's. One by one,
    // a drain under load cost the sum of every partition's round trips.
    let partitions = cuts.into_iter().filter_map(|cut| {
        let held = ready.get(&cut.partition)?.clone();
        Some(async move {
            let epoch_before = held.epoch_seq();
            let mut sent = 0;
            let outcome = store_and_publish(js, changelog, &held, cut, &mut sent).await;
            (held, epoch_before, sent, outcome)
        })
    });
    for (held, epoch_before, sent, outcome) in futures::future::join_all(partitions).await {
        published += sent;
        if held.epoch_seq() != epoch_before {
            // Renewed or resynced: the store was still the last owner at the new record,
            // so a restart may keep the local copy (the takeover's "current" check).
            if let Err(e) = store.set_partition_marker(held.fence.partition(), held.epoch_seq()) {
                tracing::warn!(error = %e, "cannot record the renewed epoch; the next takeover restores");
            }
        }
        match outcome {
            Ok(acked) => removable.extend(acked),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
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

/// One partition's cut: stores it in the partition's cut log, then publishes its
/// messages. Its entities' records reach their own keys later, coalesced, when the
/// partition is compacted ([`compact_due`]). Returns the keys of the entries it may remove.
async fn store_and_publish(
    js: &jetstream::Context,
    changelog: &Changelog,
    held: &ReadyPartition,
    cut: PartitionCut,
    published: &mut usize,
) -> Result<Vec<sled::IVec>, RuntimeError> {
    // 1. The cut whole (records and messages), so a new owner restores exactly it.
    let encoded: Vec<Vec<u8>> = cut
        .entries
        .iter()
        .flat_map(|(_, messages)| messages.iter().map(OutboxMessage::encode))
        .collect();
    // A partition lost meanwhile is its next owner's: nothing failed, nothing to remove.
    if held.fence.check().is_err() {
        return Ok(Vec::new());
    }
    let bucket = &changelog.bucket;
    let stored = bucket
        .store_cut(cut.partition, held, &cut.records, &encoded)
        .await;
    resync_on_mismatch(changelog, held, stored).await?;
    // 2. Its messages. Until they are all acknowledged the entries stay, and a new owner
    // publishes the stored cut's messages again.
    if held.fence.check().is_err() {
        return Ok(Vec::new());
    }
    let mut acked = Vec::with_capacity(cut.entries.len());
    publish_entries(js, cut.entries, &mut acked, published).await?;
    Ok(acked)
}

/// Starts a compaction of every held partition that is due one and has none running,
/// in the background: it writes records on their keys, which nothing waits for unless
/// the partition's cut log is full.
fn compact_due(changelog: &Changelog) {
    let due: Vec<ReadyPartition> = changelog
        .ready
        .borrow()
        .values()
        .filter(|held| held.fence.check().is_ok() && held.compaction_due())
        .cloned()
        .collect();
    for held in due {
        let Some(lock) = held.try_compaction() else {
            continue;
        };
        let changelog = changelog.clone();
        tokio::spawn(async move {
            let partition = held.fence.partition();
            let compacted = changelog.bucket.compact_held(partition, &held).await;
            drop(lock);
            if let Err(e) = resync_on_mismatch(&changelog, &held, compacted).await {
                tracing::debug!(partition, error = %e, "compaction failed; the next one retries");
            }
        });
    }
}

/// Passes `result` on, first following our own epoch record if a fenced write was
/// refused because it landed again ([`resync_epoch`]).
async fn resync_on_mismatch(
    changelog: &Changelog,
    held: &ReadyPartition,
    result: Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    if let Err(RuntimeError::EpochMismatch { partition }) = &result {
        resync_epoch(changelog, held, *partition).await;
    }
    result
}

/// After a fenced write was refused: if the partition's last epoch record is still this
/// owner's (its write landed again after a retry), adopt that record's sequence; if
/// another owner wrote it, leave the fence to the group, which revokes it.
async fn resync_epoch(changelog: &Changelog, held: &ReadyPartition, partition: u32) {
    match changelog.bucket.last_epoch_at(partition).await {
        Ok(Some((sequence, record))) if record.same_owner(&held.owner) => {
            tracing::info!(partition, sequence, "our epoch record landed again; following it");
            held.set_epoch_seq(sequence);
        }
        Ok(other) => tracing::warn!(
            partition,
            last_owner = other.map(|(_, r)| r.instance).unwrap_or_default(),
            "another owner wrote the partition's epoch record; its writes are refused until the lease is handed back"
        ),
        Err(e) => tracing::debug!(partition, error = %e, "cannot read the epoch record"),
    }
}

/// Reads the cut: entries without a partition (published as they are), and per ready
/// partition its entries and records.
#[allow(clippy::type_complexity)]
fn take_cut(
    store: &Store,
    entities: &dyn crate::changelog::Entities,
    ready: &BTreeMap<u32, ReadyPartition>,
) -> Result<(Vec<(sled::IVec, Vec<OutboxMessage>)>, Vec<PartitionCut>), RuntimeError> {
    // Looked at under the cut's lock: a transaction that failed on the disk records the
    // fault before it lets a cut in, and what it may have left in memory is never cut.
    store.check_fault()?;
    let mut plain = Vec::new();
    let mut by_partition: BTreeMap<u32, PartitionCut> = BTreeMap::new();
    for (key, entry) in store.outbox_all()? {
        let Some(partition) = entry.partition else {
            plain.push((key, entry.messages));
            continue;
        };
        // Not held, or held from before a reopen of the store (its copy may lack what
        // the changelog holds: the manager restores it first).
        if ready
            .get(&partition)
            .is_none_or(|r| r.fence.check().is_err() || r.generation != store.reopens())
        {
            continue;
        }
        let cut = by_partition
            .entry(partition)
            .or_insert_with(|| PartitionCut {
                partition,
                entries: Vec::new(),
                records: Vec::new(),
            });
        for entity in entry.entities {
            if !cut.records.iter().any(|(e, _)| *e == entity) {
                cut.records.push((entity, Record::placeholder()));
            }
        }
        cut.entries.push((key, entry.messages));
    }
    let mut cuts: Vec<PartitionCut> = by_partition.into_values().collect();
    for cut in &mut cuts {
        let names: Vec<String> = cut.records.iter().map(|(e, _)| e.clone()).collect();
        let read = store.read(|tx| {
            names
                .iter()
                .map(|entity| local_record(entities, tx, entity).map(|(r, _)| (entity.clone(), r)))
                .collect::<Result<Vec<_>, _>>()
        });
        cut.records = read.map_err(|e| RuntimeError::Restore(e.to_string()))?;
    }
    Ok((plain, cuts))
}
