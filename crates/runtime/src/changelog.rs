//! State that moves with its partition: the changelog of a partitioned service, kept in
//! a JetStream KV bucket with one compacted record per entity (an order, say).
//!
//! The relay works in cuts: every outbox entry of a partition and its entities' records,
//! read while no transaction commits. It stores the cut into the next slot of the
//! partition's cut log (a ring of [`LOG_SLOTS`] keys, `_log.<slot>`: the cut itself when
//! it fits in one chunk, else chunks and a cut record naming them), then publishes the
//! messages; the consumer acks its input only after that. So a commit costs one write of
//! the changelog on the ack path. Each entity's own record is written later, in the
//! background, once per [`COMPACT_AFTER`] or half a ring at most, coalesced per entity
//! (Kafka Streams' record cache): compaction. A slot is written again only after a
//! compaction covered the cut in it, and a record carries the sequence of the cut its
//! version comes from, so the newest version of an entity is always in the log or on its
//! key, and a reader tells which is newer.
//!
//! Every write is fenced by the owner's epoch record (renewed after a write whose outcome
//! is unknown). A new owner of a partition writes its epoch record, then (unless the last
//! owner was this very store) replaces what it holds with the entities' records and the
//! log's newer versions, writes the versions only the log holds on their keys, and
//! publishes the newest cut's messages again (their ids make repeats harmless).
//! docs/architecture.md, "State that moves with its partition", gives the protocol and
//! why it is safe.
//!
//! Domain-free: what a record holds is the service's business ([`Entities`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream::StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::store::{Store, Tx, TxResult};
use crate::RuntimeError;

/// The key of a partition's epoch record, and of its last cut as versions before the cut
/// log wrote it (`_cut`, carrying its one chunk or naming its chunks `_cut.<slot>.<n>`):
/// read still, never written. Entities never start with `_`.
const EPOCH: &str = "_epoch";
const CUT: &str = "_cut";
/// The prefix of the cut log's slots (`_log.<slot>`, chunks `_log.<slot>.<n>`).
const LOG: &str = "_log";
/// The key of the compaction mark: every cut up to its sequence is on the entities' keys.
const COMPACTED: &str = "_compacted";
/// The prefix of the consumers' saved positions (`_positions.<STREAM>.<durable>`): not
/// under a partition, so no restore reads them as records.
const POSITIONS: &str = "_positions";
/// The first byte of a cut record that carries its one chunk itself; the other form is a
/// JSON [`CutRecord`] naming chunks, so it starts with `{`.
const INLINE_CUT: u8 = 1;
/// The most one cut chunk carries; the server's default max_payload is 1 MiB.
const MAX_CHUNK_BYTES: usize = 512 * 1024;
/// Slots in a partition's cut log. A remote read of one entity reads them all, and a
/// takeover writes on their keys the versions only they hold: small enough for both, and
/// large enough that compaction, at half of it, coalesces many commits.
pub const LOG_SLOTS: u32 = 32;
/// The longest an entity's newest version waits in the log before compaction writes it on
/// its own key.
pub const COMPACT_AFTER: Duration = Duration::from_secs(1);
/// How many restored records go into one local transaction.
const RESTORE_CHUNK: usize = 256;

/// What a partitioned service keeps per entity, as the changelog carries it.
pub trait Entities: Send + Sync + 'static {
    /// The partition `entity` belongs to.
    fn partition(&self, entity: &str) -> u32;
    /// Everything the service holds for `entity` (indexes derived from it excluded), or
    /// `None` if it holds nothing.
    fn snapshot(&self, tx: &Tx<'_>, entity: &str) -> TxResult<Option<serde_json::Value>>;
    /// Puts a restored snapshot back, with every index derived from it.
    fn restore(&self, tx: &Tx<'_>, entity: &str, data: &serde_json::Value) -> TxResult<()>;
    /// Removes what the service holds for `entity`, indexes included.
    fn forget(&self, tx: &Tx<'_>, entity: &str) -> TxResult<()>;
    /// Every entity the service holds locally, in any partition.
    fn held(&self, store: &Store) -> Vec<String>;
}

/// One entity's record in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// The service's snapshot; `null` once it holds nothing for the entity.
    pub data: Option<serde_json::Value>,
    /// Event ids already applied to the entity (the inbox, folded in).
    pub applied: Vec<String>,
    /// The stream sequence of the cut this version was stored in, on a record compaction
    /// wrote from the cut log: a reader compares it with the log's cuts. Absent on a
    /// record written otherwise (its own sequence then says when it was written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl Record {
    /// A record to be filled in (the relay names the entities before it reads them).
    pub fn placeholder() -> Record {
        Record {
            v: 1,
            data: None,
            applied: Vec::new(),
            at: None,
        }
    }
}

/// Where a durable consumer stood when its position was last saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub v: u32,
    /// Every message of the consumer's filter up to this stream sequence was acked.
    pub ack_floor: u64,
    /// When the stream was created (Unix nanoseconds): a stream deleted and declared again
    /// numbers its messages from 1, so a position in its predecessor means nothing.
    pub stream_created: i64,
}

/// A cut in chunks as stored: its id, how many chunks carry it (and, for a cut written
/// before the log, in which slot). Written after the chunks, so a cut whose record names
/// it is whole; a slot's chunks carrying another id belong to a successor that was never
/// named, and the slot is read as holding nothing.
///
/// Before the cut log, one `_cut` record was replaced by each cut, and two slots of chunk
/// keys took turns (`_cut.<slot>.<n>`), so the named cut stayed whole while its successor
/// was being written: a relay that stored a cut, failed to publish it and died while
/// storing the next one's chunks had left a cut naming chunks that were gone
/// (`shop-lab chaos --cluster` saw a capture announced twice that way). The log keeps
/// that property: a slot is written again only after compaction covered its cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CutRecord {
    v: u32,
    id: String,
    chunks: u32,
    /// A cut under `_cut`: `None` if written before slots, its chunks under `_cut.<n>`.
    /// Always `None` in the log, whose chunks are under the slot's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<u8>,
}

/// The key of chunk `n` of the old `_cut` record in `slot`.
fn chunk_key(slot: Option<u8>, n: u32) -> String {
    match slot {
        Some(slot) => format!("{CUT}.{slot}.{n}"),
        None => format!("{CUT}.{n}"),
    }
}

/// The key of a slot of the cut log.
fn log_key(slot: u32) -> String {
    format!("{LOG}.{slot}")
}

/// The key of chunk `n` of the cut in a slot of the log.
fn log_chunk_key(slot: u32, n: u32) -> String {
    format!("{LOG}.{slot}.{n}")
}

/// The compaction mark as stored (JSON, so `nats kv get` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Compacted {
    v: u32,
    /// Every cut stored at or below this stream sequence has its records on their keys.
    through: u64,
}

/// One chunk's records (JSON); its messages follow in the outbox entry codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChunkHead {
    id: String,
    records: Vec<(String, Record)>,
}

/// One cut as read back: its stream sequence, records and messages.
type StoredCut = (
    u64,
    Vec<(String, Record)>,
    Vec<crate::outbox_entry::OutboxMessage>,
);

/// A partition as the changelog holds it: every entity's latest record (a cut's version
/// where a cut is newer than the record on the entity's key), and the newest cut's
/// messages, to publish again.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub records: BTreeMap<String, Record>,
    pub messages: Vec<crate::outbox_entry::OutboxMessage>,
    /// Entities whose latest version is only in a cut (their own record is older or
    /// missing): the new owner writes their records before it writes a cut, since its
    /// cuts go into the same slots.
    pub only_in_cut: Vec<String>,
    /// The sequence of the cut each of `only_in_cut` comes from.
    pub cut_of: BTreeMap<String, u64>,
    /// The newest cut's stream sequence (0: none): what the takeover's compaction mark
    /// covers.
    pub newest_cut: u64,
}

impl Restored {
    /// The versions only a cut holds, as compaction writes them: each with its cut's
    /// sequence.
    pub fn from_cuts(&self) -> Vec<(String, Record)> {
        self.only_in_cut
            .iter()
            .filter_map(|entity| {
                let mut record = self.records.get(entity)?.clone();
                record.at = self.cut_of.get(entity).copied();
                Some((entity.clone(), record))
            })
            .collect()
    }
}

/// Merges the entities' own records (with their stream sequences) and the stored cuts:
/// each entity's newest version wins. A record's version is the cut it was compacted
/// from (`at`), else its own sequence; a cut's is its sequence. A tie keeps the record.
fn merge(mut records: BTreeMap<String, (u64, Record)>, mut cuts: Vec<StoredCut>) -> Restored {
    let version = |(sequence, record): &(u64, Record)| record.at.unwrap_or(*sequence);
    cuts.sort_by_key(|(sequence, _, _)| *sequence);
    let mut cut_of = BTreeMap::new();
    let mut messages = Vec::new();
    let mut newest_cut = 0;
    for (sequence, cut_records, cut_messages) in cuts {
        for (entity, record) in cut_records {
            let newer = records
                .get(&entity)
                .is_none_or(|held| version(held) < sequence);
            if newer {
                cut_of.insert(entity.clone(), sequence);
                records.insert(entity, (sequence, record));
            }
        }
        newest_cut = sequence;
        messages = cut_messages;
    }
    Restored {
        only_in_cut: cut_of.keys().cloned().collect(),
        records: records.into_iter().map(|(k, (_, r))| (k, r)).collect(),
        messages,
        cut_of,
        newest_cut,
    }
}

/// What the owner knows of its partition's cut log.
#[derive(Debug, Default)]
struct Ring {
    /// Read (or made clean) since the partition was taken: until then a slot may hold a
    /// cut no compaction covered.
    known: bool,
    /// The slot the next cut goes into.
    next: u32,
    /// Slots given out since the last compaction (one may be in flight), and of those the
    /// ones whose write is over (stored, or failed).
    reserved: u32,
    completed: u32,
    /// The newest cut stored, and the last compaction mark written.
    newest: u64,
    marked: u64,
    /// Each entity's newest version in the log not yet on its key (`at` set).
    dirty: BTreeMap<String, Record>,
    /// Since when `dirty` has waited.
    dirty_since: Option<Instant>,
}

fn encode_chunk(head: &ChunkHead, messages: &[Vec<u8>]) -> Result<Vec<u8>, serde_json::Error> {
    let head = serde_json::to_vec(head)?;
    let body = crate::outbox_entry::encode_entry(messages);
    let mut out = Vec::with_capacity(4 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_chunk(bytes: &[u8]) -> Option<(ChunkHead, Vec<crate::outbox_entry::OutboxMessage>)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let head = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
    let messages = crate::outbox_entry::OutboxMessage::decode_entry(bytes.get(4 + len..)?)?;
    Some((head, messages))
}

/// Splits a cut into chunks of at most [`MAX_CHUNK_BYTES`] (by estimate).
fn chunks_of(
    id: &str,
    records: &[(String, Record)],
    messages: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let mut chunks = Vec::new();
    let mut head = ChunkHead {
        id: id.to_owned(),
        records: Vec::new(),
    };
    let mut body: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    for (entity, record) in records {
        let bytes = serde_json::to_vec(record)?.len() + entity.len() + 8;
        if size + bytes > MAX_CHUNK_BYTES && (!head.records.is_empty() || !body.is_empty()) {
            chunks.push(encode_chunk(&head, &body)?);
            head.records.clear();
            body.clear();
            size = 0;
        }
        head.records.push((entity.clone(), record.clone()));
        size += bytes;
    }
    for message in messages {
        if size + message.len() + 4 > MAX_CHUNK_BYTES
            && (!head.records.is_empty() || !body.is_empty())
        {
            chunks.push(encode_chunk(&head, &body)?);
            head.records.clear();
            body.clear();
            size = 0;
        }
        body.push(message.clone());
        size += message.len() + 4;
    }
    chunks.push(encode_chunk(&head, &body)?);
    Ok(chunks)
}

/// Who took a partition last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub store_id: String,
    pub instance: String,
    /// The lease's epoch (its KV revision in the group bucket).
    pub epoch: u64,
    /// Random per write: no two epoch records are ever the same message (see
    /// [`StateBucket::write_epoch`]). Absent (0) in records written before it.
    #[serde(default)]
    pub nonce: u64,
}

impl EpochRecord {
    /// A record of this owner, with a fresh nonce.
    pub fn new(store_id: &str, instance: &str, epoch: u64) -> EpochRecord {
        EpochRecord {
            store_id: store_id.to_owned(),
            instance: instance.to_owned(),
            epoch,
            nonce: rand::random(),
        }
    }

    /// Whether `other` was written by the same store under the same lease.
    pub fn same_owner(&self, other: &EpochRecord) -> bool {
        self.store_id == other.store_id && self.epoch == other.epoch
    }
}

/// Whether a failed publish may still land: anything but the server's own refusal.
fn outcome_unknown(error: &jetstream::context::PublishError) -> bool {
    !matches!(
        error.kind(),
        jetstream::context::PublishErrorKind::WrongLastSequence
            | jetstream::context::PublishErrorKind::StreamNotFound
    )
}

/// The KV bucket of one service's changelog.
#[derive(Debug, Clone)]
pub struct StateBucket {
    js: jetstream::Context,
    bucket: String,
    /// Whether fenced writes may be in flight together: only on a stream with no Raft
    /// group (one replica on a server that is not clustered). A clustered stream leader
    /// refuses a fenced write whose check subject has another one in flight (nats-server
    /// `expectedPerSubjectInProcess`); a solo stream checks each as it stores it.
    pipelined: bool,
}

/// What a fenced write's PubAck says: a refused fence is [`RuntimeError::EpochMismatch`];
/// an outcome we cannot know marks the epoch for renewal.
fn fenced_outcome(
    partition: u32,
    held: &ReadyPartition,
    subject: &str,
    acked: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<u64, RuntimeError> {
    match acked {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
            Err(RuntimeError::EpochMismatch { partition })
        }
        Err(e) => {
            if outcome_unknown(&e) {
                held.renew.store(true, Ordering::Release);
            }
            Err(RuntimeError::publish(subject, e))
        }
    }
}

impl StateBucket {
    /// Opens `bucket`, creating it (one value per key, `replicas` copies) if absent.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<StateBucket, RuntimeError> {
        // A cluster still electing, or with a peer offline, refuses an R3 create for a few
        // seconds ("no suitable peers for placement"): a CI run saw payment exit on it.
        crate::patience::patiently("the changelog bucket", RuntimeError::is_transient, || {
            Self::open_once(js, bucket, replicas)
        })
        .await
    }

    async fn open_once(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<StateBucket, RuntimeError> {
        if js.get_key_value(bucket).await.is_err() {
            let created = js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "changelog of a partitioned service: one record per entity"
                        .to_owned(),
                    history: 1,
                    storage: StorageType::File,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await;
            // Another instance may have created it between our look and our create.
            if let Err(e) = created {
                js.get_key_value(bucket)
                    .await
                    .map_err(|_| RuntimeError::js(format!("creating bucket {bucket}"))(e))?;
            }
        }
        let pipelined = match js.get_stream(format!("KV_{bucket}")).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => {
                    info.config.num_replicas <= 1
                        && info.cluster.as_ref().is_none_or(|c| c.name.is_none())
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        Ok(StateBucket {
            js: js.clone(),
            bucket: bucket.to_owned(),
            pipelined,
        })
    }

    pub fn name(&self) -> &str {
        &self.bucket
    }

    fn subject(&self, partition: u32, key: &str) -> String {
        format!("$KV.{}.{partition}.{key}", self.bucket)
    }

    fn stream(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    /// Writes this owner's epoch record (a takeover); its stream sequence fences every
    /// later record.
    ///
    /// Every write is a message of its own (the record's nonce is in its id). They once
    /// shared one id per store and lease, so that a retry was dropped as a duplicate; but
    /// a restarted instance adopts its own lease, so its new run got the old run's
    /// sequence back, and writes the killed run had sent through a node that then froze
    /// passed the fence when they landed after the thaw, over newer records. A retry that
    /// lands twice is harmless: the relay finds the later record to be its own
    /// ([`EpochRecord::same_owner`]) and follows it.
    pub async fn write_epoch(
        &self,
        partition: u32,
        record: &EpochRecord,
    ) -> Result<u64, RuntimeError> {
        let message = jetstream::message::PublishMessage::build();
        self.publish_epoch(partition, record, message).await
    }

    /// Writes a new epoch record of the same owner, only if the partition's last epoch
    /// record is still this owner's at `held`'s sequence, and follows it.
    ///
    /// After a fenced write whose outcome is unknown (a timed-out PubAck: the write may
    /// sit in a frozen node and land whenever it thaws), the owner renews its epoch
    /// before writing again: the lost write, fenced by the old sequence, is refused if
    /// it lands after the renewal, and lands before everything written since otherwise.
    pub async fn renew_epoch(
        &self,
        partition: u32,
        held: &ReadyPartition,
    ) -> Result<(), RuntimeError> {
        let record = EpochRecord {
            nonce: rand::random(),
            ..held.owner.clone()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            held.epoch_seq().to_string().as_str(),
        );
        let message = jetstream::message::PublishMessage::build().headers(headers);
        let sequence = self.publish_epoch(partition, &record, message).await?;
        held.set_epoch_seq(sequence);
        held.renew.store(false, Ordering::Release);
        tracing::info!(
            partition,
            sequence,
            "epoch renewed after a write of unknown outcome"
        );
        Ok(())
    }

    async fn publish_epoch(
        &self,
        partition: u32,
        record: &EpochRecord,
        message: jetstream::message::PublishMessage,
    ) -> Result<u64, RuntimeError> {
        let subject = self.subject(partition, EPOCH);
        let payload = serde_json::to_vec(record).map_err(|source| RuntimeError::Encode {
            what: "an epoch record".to_owned(),
            source,
        })?;
        let message = message
            .message_id(format!(
                "epoch-{partition}-{}-{}-{:016x}",
                record.store_id, record.epoch, record.nonce
            ))
            .payload(Bytes::from(payload));
        let ack = self
            .js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| RuntimeError::publish(subject.as_str(), e))?
            .await
            .map_err(|e| {
                if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                    RuntimeError::EpochMismatch { partition }
                } else {
                    RuntimeError::publish(subject.as_str(), e)
                }
            })?;
        Ok(ack.sequence)
    }

    /// The last epoch record of `partition` with its stream sequence.
    pub async fn last_epoch_at(
        &self,
        partition: u32,
    ) -> Result<Option<(u64, EpochRecord)>, RuntimeError> {
        Ok(self
            .last(partition, EPOCH)
            .await?
            .and_then(|(sequence, bytes)| {
                serde_json::from_slice(&bytes).ok().map(|r| (sequence, r))
            }))
    }

    /// The headers that make the server refuse a write unless the partition's last
    /// epoch record is still the one at `epoch_seq` (ours).
    fn fence_headers(&self, partition: u32, epoch_seq: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            epoch_seq.to_string().as_str(),
        );
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            self.subject(partition, EPOCH).as_str(),
        );
        headers
    }

    /// Publishes fenced writes: one at a time, each after the previous one's PubAck, on a
    /// clustered stream (its leader refuses a check against a subject, `_epoch`, while
    /// another check against it is still in flight); all in flight together on a solo
    /// stream ([`StateBucket::pipelined`]). Every write is checked against the same epoch
    /// record, which none of them changes, so their order does not matter. A write whose
    /// outcome is unknown marks the epoch for renewal before the next
    /// ([`StateBucket::renew_epoch`]).
    async fn publish_fenced(
        &self,
        partition: u32,
        held: &ReadyPartition,
        writes: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, RuntimeError> {
        if held.renew.load(Ordering::Acquire) {
            let _turn = self.turn(held).await;
            self.renew_epoch(partition, held).await?;
        }
        let epoch_seq = held.epoch_seq();
        let mut in_flight = Vec::new();
        let mut failure = None;
        let mut newest = 0;
        for (key, payload) in writes {
            let subject = self.subject(partition, &key);
            let message = jetstream::message::PublishMessage::build()
                .headers(self.fence_headers(partition, epoch_seq))
                .payload(Bytes::from(payload));
            // One write at a time on a clustered stream, across the relay's cuts and
            // compaction's records alike: they share the check subject.
            let turn = self.turn(held).await;
            match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) if self.pipelined => in_flight.push((subject, ack)),
                Ok(ack) => {
                    let outcome = fenced_outcome(partition, held, &subject, ack.await);
                    drop(turn);
                    newest = newest.max(outcome?)
                }
                Err(e) => {
                    // Not sent as far as the client knows, but it may sit in a buffer.
                    held.renew.store(true, Ordering::Release);
                    failure = Some(RuntimeError::publish(subject.as_str(), e));
                    break;
                }
            }
        }
        // Every PubAck is awaited, even after a failure: each outcome is known, or marked
        // for renewal.
        for (subject, ack) in in_flight {
            match fenced_outcome(partition, held, &subject, ack.await) {
                Ok(sequence) => newest = newest.max(sequence),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(newest), Err)
    }

    /// The partition's turn to write, on a clustered stream ([`StateBucket::pipelined`]
    /// says why); nothing to wait for on a solo one.
    async fn turn<'h>(&self, held: &'h ReadyPartition) -> Option<tokio::sync::MutexGuard<'h, ()>> {
        if self.pipelined {
            None
        } else {
            Some(held.writing.lock().await)
        }
    }

    /// Stores a cut of `partition` whole, in the next slot of its cut log: a cut that
    /// fits in one chunk (nearly every one) is a single write, the slot's record carrying
    /// it; a bigger one goes into chunks under the slot, then the slot's record naming
    /// them. `messages` are in the outbox message codec ([`OutboxMessage::encode`]).
    ///
    /// Its records become the partition's newest versions, which compaction writes on
    /// their keys later ([`StateBucket::compact`]).
    ///
    /// [`OutboxMessage::encode`]: crate::outbox_entry::OutboxMessage::encode
    pub async fn store_cut(
        &self,
        partition: u32,
        held: &ReadyPartition,
        records: &[(String, Record)],
        messages: &[Vec<u8>],
    ) -> Result<(), RuntimeError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut chunks = chunks_of(&id, records, messages).map_err(cut_encode_error)?;
        let mut claim = self.reserve_slot(partition, held).await?;
        if chunks.len() == 1 {
            let chunk = chunks.pop().unwrap_or_default();
            let mut value = Vec::with_capacity(1 + chunk.len());
            value.push(INLINE_CUT);
            value.extend_from_slice(&chunk);
            let stored = self
                .publish_fenced(partition, held, vec![(log_key(claim.slot), value)])
                .await;
            claim.written(stored.as_ref().ok().copied(), records);
            return stored.map(|_| ());
        }
        let pending = self
            .write_chunks(partition, held, claim, id, chunks, records)
            .await?;
        self.name_cut(partition, held, pending).await
    }

    /// The first half of a cut in chunks: the chunks, under the next slot of the log;
    /// until [`StateBucket::name_cut`] the slot reads as holding nothing. (Public for the
    /// tests of an owner that dies between the two halves.)
    pub async fn write_cut_chunks(
        &self,
        partition: u32,
        held: &ReadyPartition,
        records: &[(String, Record)],
        messages: &[Vec<u8>],
    ) -> Result<PendingCut, RuntimeError> {
        let id = format!("{:016x}", rand::random::<u64>());
        let chunks = chunks_of(&id, records, messages).map_err(cut_encode_error)?;
        let claim = self.reserve_slot(partition, held).await?;
        self.write_chunks(partition, held, claim, id, chunks, records)
            .await
    }

    async fn write_chunks(
        &self,
        partition: u32,
        held: &ReadyPartition,
        claim: SlotClaim,
        id: String,
        chunks: Vec<Vec<u8>>,
        records: &[(String, Record)],
    ) -> Result<PendingCut, RuntimeError> {
        let record = CutRecord {
            v: 1,
            id,
            chunks: chunks.len() as u32,
            slot: None,
        };
        let writes = chunks
            .into_iter()
            .enumerate()
            .map(|(n, chunk)| (log_chunk_key(claim.slot, n as u32), chunk))
            .collect();
        // A failure drops the claim, which spends the slot.
        self.publish_fenced(partition, held, writes).await?;
        Ok(PendingCut {
            record,
            claim,
            records: records.to_vec(),
        })
    }

    /// The second half of [`StateBucket::store_cut`]: the slot's record naming the chunks.
    pub async fn name_cut(
        &self,
        partition: u32,
        held: &ReadyPartition,
        mut pending: PendingCut,
    ) -> Result<(), RuntimeError> {
        let named = serde_json::to_vec(&pending.record)
            .map_err(cut_encode_error)
            .map(|bytes| vec![(log_key(pending.claim.slot), bytes)]);
        let stored = match named {
            Ok(writes) => self.publish_fenced(partition, held, writes).await,
            Err(e) => Err(e),
        };
        pending
            .claim
            .written(stored.as_ref().ok().copied(), &pending.records);
        stored.map(|_| ())
    }

    /// The slot the next cut goes into: once the log is known (read after a takeover),
    /// and once compaction covered the cut the slot holds.
    async fn reserve_slot(
        &self,
        partition: u32,
        held: &ReadyPartition,
    ) -> Result<SlotClaim, RuntimeError> {
        loop {
            if !held.ring().known {
                self.adopt_log(partition, held).await?;
                continue;
            }
            if let Some(slot) = held.ring().reserve() {
                return Ok(SlotClaim {
                    ring: held.ring.clone(),
                    slot,
                    open: true,
                });
            }
            self.compact(partition, held).await?;
        }
    }

    /// Learns the log of a partition this store took back without a restore (it owned it
    /// last): the versions in cuts newer than the compaction mark are not on their keys
    /// yet, so they are compacted before any slot is written again.
    ///
    /// Why versions older than a key's cannot come back this way: a record reaches its key
    /// from a cut that stays in the log until the mark covers it, and the cuts above the
    /// mark hold that version or newer ones.
    async fn adopt_log(&self, partition: u32, held: &ReadyPartition) -> Result<(), RuntimeError> {
        let mark = self.compaction_mark(partition).await?;
        let cuts = self.cuts_above(partition, mark).await?;
        let mut ring = held.ring();
        if ring.known {
            return Ok(());
        }
        let mut cuts = cuts;
        cuts.sort_by_key(|(sequence, _, _)| *sequence);
        for (sequence, records, _) in cuts {
            ring.newest = ring.newest.max(sequence);
            if sequence <= mark {
                continue;
            }
            for (entity, mut record) in records {
                record.at = Some(sequence);
                ring.dirty.insert(entity, record);
            }
        }
        ring.marked = mark;
        ring.known = true;
        ring.next = 0;
        if ring.dirty.is_empty() {
            ring.reserved = 0;
            ring.completed = 0;
        } else {
            // Every slot counts as written: none is reused before this compaction.
            ring.reserved = LOG_SLOTS;
            ring.completed = LOG_SLOTS;
            ring.dirty_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Writes the partition's newest versions from the log on their keys, coalesced per
    /// entity, then the compaction mark; the slots they came from may then be written
    /// again. One compaction at a time per partition.
    pub async fn compact(&self, partition: u32, held: &ReadyPartition) -> Result<(), RuntimeError> {
        let _one = held.compacting.lock().await;
        self.compact_held(partition, held).await
    }

    /// [`StateBucket::compact`], for a caller that holds the partition's compaction lock.
    pub async fn compact_held(
        &self,
        partition: u32,
        held: &ReadyPartition,
    ) -> Result<(), RuntimeError> {
        let (taken, covered, through) = {
            let mut ring = held.ring();
            if !ring.known {
                return Ok(());
            }
            ring.dirty_since = None;
            (std::mem::take(&mut ring.dirty), ring.completed, ring.newest)
        };
        if taken.is_empty() && covered == 0 {
            return Ok(());
        }
        let records: Vec<(String, Record)> =
            taken.iter().map(|(e, r)| (e.clone(), r.clone())).collect();
        let written = async {
            if !records.is_empty() {
                self.publish_records(partition, held, &records).await?;
            }
            if through > held.ring().marked {
                self.write_mark(partition, held, through).await?;
            }
            Ok::<(), RuntimeError>(())
        }
        .await;
        let mut ring = held.ring();
        match &written {
            Ok(()) => {
                ring.reserved -= covered;
                ring.completed -= covered;
                ring.marked = ring.marked.max(through);
            }
            Err(_) => {
                // Back for the next try; what came in meanwhile is newer.
                for (entity, record) in taken {
                    ring.dirty.entry(entity).or_insert(record);
                }
                ring.dirty_since.get_or_insert_with(Instant::now);
            }
        }
        written
    }

    async fn write_mark(
        &self,
        partition: u32,
        held: &ReadyPartition,
        through: u64,
    ) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec(&Compacted { v: 1, through }).map_err(|source| {
            RuntimeError::Encode {
                what: "a compaction mark".to_owned(),
                source,
            }
        })?;
        self.publish_fenced(partition, held, vec![(COMPACTED.to_owned(), bytes)])
            .await
            .map(|_| ())
    }

    /// After a restore: writes on their keys the versions only a cut held, so this owner
    /// may write its cuts into any slot, and a compaction mark over every cut read, so a
    /// later run of this store that takes the partition back without a restore compacts
    /// only what came after.
    pub async fn settle_restore(
        &self,
        partition: u32,
        held: &ReadyPartition,
        restored: &Restored,
    ) -> Result<usize, RuntimeError> {
        let from_cuts = restored.from_cuts();
        if !from_cuts.is_empty() {
            self.publish_records(partition, held, &from_cuts).await?;
        }
        if restored.newest_cut > 0 {
            self.write_mark(partition, held, restored.newest_cut)
                .await?;
        }
        let mut ring = held.ring();
        ring.known = true;
        ring.newest = ring.newest.max(restored.newest_cut);
        ring.marked = ring.marked.max(restored.newest_cut);
        Ok(from_cuts.len())
    }

    /// The partition's compaction mark (0: none).
    async fn compaction_mark(&self, partition: u32) -> Result<u64, RuntimeError> {
        Ok(self
            .last(partition, COMPACTED)
            .await?
            .and_then(|(_, bytes)| serde_json::from_slice::<Compacted>(&bytes).ok())
            .map_or(0, |mark| mark.through))
    }

    /// Publishes each entity's own record, for compaction and for reads of one entity,
    /// fenced by the owner's epoch record like the cut.
    ///
    /// They were once published unfenced and pipelined, on the argument that a late one
    /// repeats the cut the next owner restored. It does not hold on a cluster: writes a
    /// client sent to a node that then froze reach the stream when the node thaws, after
    /// the next owner (or this one, under a new epoch) wrote newer records, and a record
    /// with `history: 1` replaces the newer one. `shop-lab chaos --cluster` lost orders
    /// that way. Fenced writes go one at a time ([`StateBucket::publish_fenced`]).
    pub async fn publish_records(
        &self,
        partition: u32,
        held: &ReadyPartition,
        records: &[(String, Record)],
    ) -> Result<(), RuntimeError> {
        let writes = encode_records(records)?;
        self.publish_fenced(partition, held, writes)
            .await
            .map(|_| ())
    }

    /// The saved position of a durable consumer on `stream`, or `None` if none was saved
    /// (or it cannot be read as one).
    ///
    /// Consumers keep their state in the server's memory ([`crate::consumer::declare_at`]),
    /// so a broker restart forgets them; this is where a re-declared one starts from.
    /// Read from the stream leader, like the changelog's own records.
    pub async fn position(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<Option<Position>, RuntimeError> {
        let subject = self.position_subject(stream, durable);
        let last = self
            .last_at(&subject, || format!("reading the position of {durable}"))
            .await?;
        Ok(last.and_then(|(_, payload)| serde_json::from_slice(&payload).ok()))
    }

    /// Saves a durable consumer's position (see [`StateBucket::position`]), as JSON so
    /// `nats kv get` reads it.
    ///
    /// Not fenced, and it need not be: every value written is an ack floor the server
    /// reported, and everything at or below an ack floor was applied and is in the
    /// changelog (a batch is acked only after its cut is stored). A late write from a
    /// frozen former owner can only move the position back, which costs a longer replay
    /// that the inbox absorbs, never a skipped event.
    pub async fn save_position(
        &self,
        stream: &str,
        durable: &str,
        position: &Position,
    ) -> Result<(), RuntimeError> {
        let subject = self.position_subject(stream, durable);
        let bytes = serde_json::to_vec(position).map_err(|e| RuntimeError::publish(&subject, e))?;
        self.js
            .publish(subject.clone(), bytes.into())
            .await
            .map_err(|e| RuntimeError::publish(&subject, e))?
            .await
            .map_err(|e| RuntimeError::publish(&subject, e))?;
        Ok(())
    }

    fn position_subject(&self, stream: &str, durable: &str) -> String {
        format!("$KV.{}.{POSITIONS}.{stream}.{durable}", self.bucket)
    }

    /// The last value of one key of `partition`, with its stream sequence.
    ///
    /// Read from the stream's leader (`STREAM.MSG.GET`), not with a direct get: on a
    /// cluster any replica answers a direct get, and one that is behind (just restarted,
    /// or thawed after a freeze) answers with an older cut, or none. A takeover that
    /// restored from it would lose what only the newest cut holds: the chaos run on a
    /// cluster found an order checkout had confirmed and then no longer knew.
    async fn last(&self, partition: u32, key: &str) -> Result<Option<(u64, Bytes)>, RuntimeError> {
        self.last_at(&self.subject(partition, key), || {
            format!("reading {key} of partition {partition}")
        })
        .await
    }

    /// The last message on `subject` of the bucket's stream, with its sequence, read from
    /// the stream leader ([`StateBucket::last`] says why); `action` names the read in an
    /// error.
    async fn last_at(
        &self,
        subject: &str,
        action: impl FnOnce() -> String,
    ) -> Result<Option<(u64, Bytes)>, RuntimeError> {
        // No stream info needed (nor its round trip): the read goes to the leader anyway.
        let stream = self
            .js
            .get_stream_no_info(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some((message.sequence, message.payload))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(RuntimeError::js(action())(e)),
        }
    }

    /// The partition's cut under `_cut` whole, as versions before the cut log wrote it
    /// (the log never writes it, so after an upgrade it is older than every cut there).
    async fn last_cut(&self, partition: u32) -> Result<Option<StoredCut>, RuntimeError> {
        let Some((sequence, bytes)) = self.last(partition, CUT).await? else {
            return Ok(None);
        };
        if let Some(inline) = bytes.strip_prefix(&[INLINE_CUT]) {
            return Ok(match decode_chunk(inline) {
                Some((head, messages)) => Some((sequence, head.records, messages)),
                None => {
                    tracing::warn!(
                        partition,
                        "the last cut does not decode; restoring from the entities' records"
                    );
                    None
                }
            });
        }
        let Ok(cut) = serde_json::from_slice::<CutRecord>(&bytes) else {
            return Ok(None);
        };
        let mut records = Vec::new();
        let mut messages = Vec::new();
        for n in 0..cut.chunks {
            let chunk = self
                .last(partition, &chunk_key(cut.slot, n))
                .await?
                .and_then(|(_, bytes)| decode_chunk(&bytes))
                .filter(|(head, _)| head.id == cut.id);
            let Some((head, chunk_messages)) = chunk else {
                // Only a cut written before slots can get here (its successor's chunks
                // went under the same keys); the entities' own records are the state.
                tracing::warn!(
                    partition,
                    chunk = n,
                    "the last cut's chunks were replaced; restoring from the entities' records"
                );
                return Ok(None);
            };
            records.extend(head.records);
            messages.extend(chunk_messages);
        }
        Ok(Some((sequence, records, messages)))
    }

    /// Reads one entity's newest version (for a read of an entity this instance does not
    /// own): its record, or a cut of the log above the compaction mark where newer.
    ///
    /// The mark is read first: a compaction that runs meanwhile writes the record from a
    /// cut above the mark read, which this read still finds in the log (unless the log
    /// went round more than half meanwhile, when it answers the version one compaction
    /// older).
    pub async fn record(
        &self,
        entity: &str,
        partition: u32,
    ) -> Result<Option<Record>, RuntimeError> {
        let mark = self.compaction_mark(partition).await?;
        let own = self
            .last(partition, entity)
            .await?
            .and_then(|(sequence, bytes)| {
                serde_json::from_slice::<Record>(&bytes)
                    .ok()
                    .map(|record| (sequence, record))
            });
        let mut records = BTreeMap::new();
        if let Some(own) = own {
            records.insert(entity.to_owned(), own);
        }
        let cuts = self
            .cuts_above(partition, mark)
            .await?
            .into_iter()
            .map(|(sequence, cut_records, _)| {
                let mine = cut_records
                    .into_iter()
                    .filter(|(e, _)| e == entity)
                    .collect();
                (sequence, mine, Vec::new())
            })
            .collect();
        Ok(merge(records, cuts).records.remove(entity))
    }

    /// The partition as the changelog holds it: every entity's newest version (its record,
    /// or a cut where newer), and the newest cut's messages.
    ///
    /// `epoch_seq` is the sequence of the reader's own epoch record (0: none). The
    /// records and the log are read through a consumer, which a clustered bucket may serve
    /// from a replica a few writes behind its leader; a read that does not reach the epoch
    /// record may lack the last owner's final cuts (written before it, since the server
    /// refuses the old owner's writes after it), so it is made again.
    pub async fn read_partition(
        &self,
        partition: u32,
        epoch_seq: u64,
    ) -> Result<Restored, RuntimeError> {
        let mut pause = Duration::from_millis(20);
        let (records, log) = loop {
            let (records, log, epoch_read) = self.read_subjects(partition, ">").await?;
            if epoch_read >= epoch_seq {
                break (records, log);
            }
            if pause > Duration::from_secs(1) {
                return Err(RuntimeError::StaleRead {
                    partition,
                    read: epoch_read,
                    expected: epoch_seq,
                });
            }
            tracing::debug!(
                partition,
                epoch_read,
                epoch_seq,
                "the changelog read was behind; reading again"
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
        };
        let mut cuts = self.cuts_in(partition, log);
        cuts.extend(self.last_cut(partition).await?);
        Ok(merge(records, cuts))
    }

    /// The newest versions of the entities of `partition` whose name starts with `token.`
    /// (every entity without a token).
    pub async fn read_keys(
        &self,
        partition: u32,
        token: Option<&str>,
    ) -> Result<BTreeMap<String, Record>, RuntimeError> {
        let mark = self.compaction_mark(partition).await?;
        let (records, _) = self.read_records(partition, token).await?;
        let mut cuts = self.cuts_above(partition, mark).await?;
        cuts.extend(self.last_cut(partition).await?);
        let wanted = |entity: &str| match token {
            Some(token) => entity
                .strip_prefix(token)
                .is_some_and(|rest| rest.starts_with('.')),
            None => true,
        };
        let cuts = cuts
            .into_iter()
            .map(|(sequence, cut_records, _)| {
                let kept = cut_records.into_iter().filter(|(e, _)| wanted(e)).collect();
                (sequence, kept, Vec::new())
            })
            .collect();
        Ok(merge(records, cuts).records)
    }

    /// The cuts of the partition's log stored after `mark` (the compaction mark), read
    /// one message at a time from the stream leader, oldest first: a slot keeps only its
    /// latest cut, so these are the cuts compaction has not covered (usually a second's
    /// worth), and reading them takes no consumer.
    async fn cuts_above(&self, partition: u32, mark: u64) -> Result<Vec<StoredCut>, RuntimeError> {
        let stream = self
            .js
            .get_stream_no_info(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        let prefix = format!("$KV.{}.{partition}.", self.bucket);
        let filter = format!("{prefix}{LOG}.>");
        let mut log = BTreeMap::new();
        let mut next = mark + 1;
        loop {
            match stream.get_first_raw_message_by_subject(&filter, next).await {
                Ok(message) => {
                    let key = message.subject.as_str().strip_prefix(&prefix).unwrap_or("");
                    if !message.payload.is_empty() {
                        log.insert(key.to_owned(), (message.sequence, message.payload));
                    }
                    next = message.sequence + 1;
                }
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    break
                }
                Err(e) => {
                    return Err(RuntimeError::js(format!(
                        "reading the cut log of partition {partition}"
                    ))(e))
                }
            }
        }
        Ok(self.cuts_in(partition, log))
    }

    /// The cuts whole among the log's keys (`key → (sequence, value)`): each slot's record
    /// with its chunks when it names some. A slot whose chunks carry another id (a
    /// successor's, never named) holds nothing whole: compaction covered its cut before
    /// the successor was started.
    fn cuts_in(&self, partition: u32, log: BTreeMap<String, (u64, Bytes)>) -> Vec<StoredCut> {
        let mut cuts = Vec::new();
        for slot in 0..LOG_SLOTS {
            let Some((sequence, bytes)) = log.get(&log_key(slot)) else {
                continue;
            };
            if let Some(inline) = bytes.strip_prefix(&[INLINE_CUT]) {
                match decode_chunk(inline) {
                    Some((head, messages)) => cuts.push((*sequence, head.records, messages)),
                    None => tracing::warn!(partition, slot, "a cut in the log does not decode"),
                }
                continue;
            }
            let Ok(named) = serde_json::from_slice::<CutRecord>(bytes) else {
                tracing::warn!(partition, slot, "a cut record in the log does not decode");
                continue;
            };
            let mut records = Vec::new();
            let mut messages = Vec::new();
            let whole = (0..named.chunks).all(|n| {
                let chunk = log
                    .get(&log_chunk_key(slot, n))
                    .and_then(|(_, bytes)| decode_chunk(bytes))
                    .filter(|(head, _)| head.id == named.id);
                match chunk {
                    Some((head, chunk_messages)) => {
                        records.extend(head.records);
                        messages.extend(chunk_messages);
                        true
                    }
                    None => false,
                }
            });
            if whole {
                cuts.push((*sequence, records, messages));
            }
        }
        cuts
    }

    /// Every entity's own latest record (with its sequence) in `partition`, and the cut
    /// log's keys (read in the same pass when the whole partition is read).
    #[allow(clippy::type_complexity)]
    async fn read_records(
        &self,
        partition: u32,
        token: Option<&str>,
    ) -> Result<
        (
            BTreeMap<String, (u64, Record)>,
            BTreeMap<String, (u64, Bytes)>,
        ),
        RuntimeError,
    > {
        let filter = match token {
            Some(token) => format!("{token}.>"),
            None => ">".to_owned(),
        };
        let (records, log, _) = self.read_subjects(partition, &filter).await?;
        Ok((records, log))
    }

    /// The last message of every key of `partition` under `filter` (relative to the
    /// partition): entities' records parsed, the log's keys raw, and the sequence of the
    /// epoch record the read saw (0: none, or not under `filter`); other `_` keys skipped.
    #[allow(clippy::type_complexity)]
    async fn read_subjects(
        &self,
        partition: u32,
        filter: &str,
    ) -> Result<
        (
            BTreeMap<String, (u64, Record)>,
            BTreeMap<String, (u64, Bytes)>,
            u64,
        ),
        RuntimeError,
    > {
        let stream = self
            .js
            .get_stream(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        let prefix = format!("$KV.{}.{partition}.", self.bucket);
        let reader = stream
            // Push, not pull: the server delivers to our own inbox, so reading needs no
            // right on the consumer it names.
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("{prefix}{filter}"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(RuntimeError::js(format!("reading partition {partition}")))?;
        // The count at creation: what the server held for the partition then.
        let pending = reader.cached_info().num_pending;
        let mut records: BTreeMap<String, (u64, Record)> = BTreeMap::new();
        let mut log: BTreeMap<String, (u64, Bytes)> = BTreeMap::new();
        let mut epoch_read = 0;
        if pending == 0 {
            return Ok((records, log, epoch_read));
        }
        let mut messages = reader
            .messages()
            .await
            .map_err(RuntimeError::js(format!("reading partition {partition}")))?;
        let mut seen = 0;
        while seen < pending {
            let next = tokio::time::timeout(Duration::from_secs(30), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    return Err(RuntimeError::js(format!("reading partition {partition}"))(
                        e,
                    ))
                }
                Ok(None) | Err(_) => {
                    return Err(RuntimeError::Timeout(format!(
                        "reading partition {partition} of {}",
                        self.bucket
                    )))
                }
            };
            seen += 1;
            let (sequence, left) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(_) => (0, 1),
            };
            let key = message.subject.as_str().strip_prefix(&prefix).unwrap_or("");
            // `_epoch`, the mark and the old cut's keys are not entities; a delete or purge
            // marker has an empty body and restores nothing.
            if key == EPOCH {
                epoch_read = sequence;
            } else if key == LOG || key.starts_with(&format!("{LOG}.")) {
                if !message.payload.is_empty() {
                    log.insert(key.to_owned(), (sequence, message.payload.clone()));
                }
            } else if !key.is_empty() && !key.starts_with('_') {
                if let Ok(record) = serde_json::from_slice::<Record>(&message.payload) {
                    records.insert(key.to_owned(), (sequence, record));
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok((records, log, epoch_read))
    }
}

/// The current record of `entity` from the local store, with the outbox entry that last
/// changed it.
pub fn local_record(entities: &dyn Entities, tx: &Tx<'_>, entity: &str) -> TxResult<(Record, u64)> {
    let meta = tx.entity_meta(entity)?.unwrap_or_default();
    let data = entities.snapshot(tx, entity)?;
    Ok((
        Record {
            v: 1,
            data,
            applied: meta.applied,
            at: None,
        },
        meta.entry,
    ))
}

/// Replaces what `store` holds for `partition` with `records` (a takeover from another
/// store): forgets every local entity of the partition and its queued outbox entries,
/// then writes the records back. Returns how many records were restored.
pub fn replace_partition(
    store: &Store,
    entities: &dyn Entities,
    partition: u32,
    restored: &Restored,
) -> Result<usize, RuntimeError> {
    let records = &restored.records;
    // Every entity with data here, and every one with bookkeeping only (its data gone,
    // a reservation committed, say): a store that restores over its own newer copy (after
    // a crash or a reopen) must forget the ids of every event whose effect it drops, or
    // their redeliveries would be taken for duplicates.
    let mut stale: Vec<String> = entities
        .held(store)
        .into_iter()
        .chain(store.entities_with_meta())
        .filter(|e| entities.partition(e) == partition)
        .collect();
    stale.sort();
    stale.dedup();
    for chunk in stale.chunks(RESTORE_CHUNK) {
        store
            .apply(None, |tx| {
                for entity in chunk {
                    entities.forget(tx, entity)?;
                    tx.forget_entity_meta(entity)?;
                }
                Ok(())
            })
            .map_err(into_runtime)?;
    }
    store.outbox_purge_partition(partition)?;
    let records: Vec<(&String, &Record)> = records.iter().collect();
    for chunk in records.chunks(RESTORE_CHUNK) {
        store
            .apply(None, |tx| {
                for (entity, record) in chunk {
                    if let Some(data) = &record.data {
                        entities.restore(tx, entity, data)?;
                    }
                    tx.restore_entity_meta(entity, &record.applied)?;
                }
                Ok(())
            })
            .map_err(into_runtime)?;
    }
    if !restored.messages.is_empty() {
        // The last cut's messages go out again: the previous owner may have died between
        // storing the cut and publishing them. Their ids make a repeat harmless.
        store.enqueue(partition, &restored.messages)?;
    }
    store.flush_blocking()?;
    Ok(records.len())
}

fn into_runtime(error: crate::store::ApplyError) -> RuntimeError {
    match error {
        crate::store::ApplyError::Failed(e) => e,
        crate::store::ApplyError::Rejected(reason) => RuntimeError::Restore(reason),
    }
}

/// What the relay and the owner code need of a partitioned service.
#[derive(Clone)]
pub struct Changelog {
    pub bucket: StateBucket,
    pub entities: Arc<dyn Entities>,
    /// The partitions ready to work on (taken over and restored), with their fence and
    /// the sequence of the epoch record that fences their records.
    pub ready: tokio::sync::watch::Receiver<BTreeMap<u32, ReadyPartition>>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changelog")
            .field("bucket", &self.bucket.name())
            .field("ready", &self.ready.borrow().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Each record as the bucket stores it, under its entity's key.
fn encode_records(records: &[(String, Record)]) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
    records
        .iter()
        .map(|(entity, record)| {
            serde_json::to_vec(record)
                .map(|payload| (entity.clone(), payload))
                .map_err(|source| RuntimeError::Encode {
                    what: "a changelog record".to_owned(),
                    source,
                })
        })
        .collect()
}

/// A cut whose chunks are stored and whose record is not yet written.
#[derive(Debug)]
pub struct PendingCut {
    record: CutRecord,
    claim: SlotClaim,
    records: Vec<(String, Record)>,
}

/// A slot of the cut log given out for one cut. However the cut's write ends (stored,
/// failed, or abandoned: a relay's drain cut short by a shutdown's timeout drops it), the
/// slot counts as written, so compaction covers it and the log never runs out of slots.
#[derive(Debug)]
struct SlotClaim {
    ring: Arc<Mutex<Ring>>,
    slot: u32,
    open: bool,
}

impl SlotClaim {
    /// The cut's write is over: stored at `sequence` (its records are the newest
    /// versions), or failed (`None`: the slot is spent, whatever it holds now; the entries
    /// stay in the outbox and go into the next cut).
    fn written(&mut self, sequence: Option<u64>, records: &[(String, Record)]) {
        self.open = false;
        lock(&self.ring).written(sequence, records);
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        if self.open {
            lock(&self.ring).written(None, &[]);
        }
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    // Nothing panics while holding it; a poisoned lock still guards consistent data.
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cut_encode_error(source: serde_json::Error) -> RuntimeError {
    RuntimeError::Encode {
        what: "a changelog cut".to_owned(),
        source,
    }
}

/// A partition this instance may work on.
#[derive(Debug, Clone)]
pub struct ReadyPartition {
    pub fence: crate::group::Fence,
    /// This owner, as its epoch records name it.
    pub owner: EpochRecord,
    /// The sequence of this owner's epoch record; the relay corrects it if its own
    /// write turns out to have landed again later.
    epoch_seq: Arc<AtomicU64>,
    /// A fenced write's outcome is unknown: renew the epoch before the next.
    renew: Arc<AtomicBool>,
    /// The partition's cut log as this owner knows it.
    ring: Arc<Mutex<Ring>>,
    /// Held while a compaction of the partition runs.
    compacting: Arc<tokio::sync::Mutex<()>>,
    /// Held for each fenced write on a clustered stream.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// The store's reopen count when the partition was taken: after a reopen the local
    /// copy may lack commits the changelog holds, and the relay leaves the partition
    /// alone until it is taken (restored) again.
    pub generation: u64,
}

impl Ring {
    /// Gives out the next slot, if compaction covered the cut in it.
    fn reserve(&mut self) -> Option<u32> {
        if self.reserved >= LOG_SLOTS {
            return None;
        }
        let slot = self.next;
        self.next = (self.next + 1) % LOG_SLOTS;
        self.reserved += 1;
        Some(slot)
    }

    /// A cut's write is over ([`SlotClaim::written`]).
    fn written(&mut self, sequence: Option<u64>, records: &[(String, Record)]) {
        self.completed += 1;
        if let Some(sequence) = sequence {
            self.newest = self.newest.max(sequence);
            for (entity, record) in records {
                let mut record = record.clone();
                record.at = Some(sequence);
                self.dirty.insert(entity.clone(), record);
            }
            if !records.is_empty() {
                self.dirty_since.get_or_insert_with(Instant::now);
            }
        }
    }
}

impl ReadyPartition {
    /// The same partition, taken at the store's reopen count `generation`.
    pub fn at_generation(mut self, generation: u64) -> ReadyPartition {
        self.generation = generation;
        self
    }

    pub fn new(fence: crate::group::Fence, owner: EpochRecord, epoch_seq: u64) -> ReadyPartition {
        ReadyPartition {
            fence,
            owner,
            epoch_seq: Arc::new(AtomicU64::new(epoch_seq)),
            renew: Arc::new(AtomicBool::new(false)),
            ring: Arc::new(Mutex::new(Ring::default())),
            compacting: Arc::new(tokio::sync::Mutex::new(())),
            writing: Arc::new(tokio::sync::Mutex::new(())),
            generation: 0,
        }
    }

    pub fn epoch_seq(&self) -> u64 {
        self.epoch_seq.load(Ordering::Acquire)
    }

    /// Follows this owner's epoch record at `sequence`.
    pub fn set_epoch_seq(&self, sequence: u64) {
        self.epoch_seq.store(sequence, Ordering::Release);
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        lock(&self.ring)
    }

    /// Whether compaction is due: half the log written since the last one, or a version
    /// waiting for [`COMPACT_AFTER`].
    pub fn compaction_due(&self) -> bool {
        let ring = self.ring();
        ring.known
            && (ring.completed >= LOG_SLOTS / 2
                || ring
                    .dirty_since
                    .is_some_and(|since| since.elapsed() >= COMPACT_AFTER))
    }

    /// The compaction lock, if no compaction of the partition runs.
    pub fn try_compaction(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.compacting.clone().try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, at: Option<u64>) -> Record {
        Record {
            v: 1,
            data: Some(serde_json::json!({ "state": state })),
            applied: Vec::new(),
            at,
        }
    }

    fn message(id: &str) -> crate::outbox_entry::OutboxMessage {
        crate::outbox_entry::OutboxMessage {
            subject: "events.test".to_owned(),
            msg_id: id.to_owned(),
            headers: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn state(restored: &Restored, entity: &str) -> Option<String> {
        restored.records.get(entity)?.data.as_ref()?["state"]
            .as_str()
            .map(str::to_owned)
    }

    #[test]
    fn the_newest_version_wins_whether_on_its_key_or_in_a_cut() {
        let records = BTreeMap::from([
            // Compacted from the cut at 20: older than the cut at 30.
            ("a".to_owned(), (40, record("a-compacted", Some(20)))),
            // Compacted from the cut at 30 itself: a tie keeps the key.
            ("b".to_owned(), (41, record("b-compacted", Some(30)))),
            // Written without a cut (before the log): its own sequence counts.
            ("c".to_owned(), (50, record("c-own", None))),
        ]);
        let cuts = vec![
            (
                30,
                vec![
                    ("a".to_owned(), record("a-cut", None)),
                    ("b".to_owned(), record("b-cut", None)),
                    ("c".to_owned(), record("c-cut", None)),
                ],
                vec![message("m-30")],
            ),
            (
                10,
                vec![("d".to_owned(), record("d-cut", None))],
                vec![message("m-10")],
            ),
        ];
        let restored = merge(records, cuts);
        assert_eq!(state(&restored, "a").as_deref(), Some("a-cut"));
        assert_eq!(state(&restored, "b").as_deref(), Some("b-compacted"));
        assert_eq!(state(&restored, "c").as_deref(), Some("c-own"));
        assert_eq!(state(&restored, "d").as_deref(), Some("d-cut"));
        assert_eq!(restored.only_in_cut, ["a", "d"]);
        assert_eq!(restored.newest_cut, 30);
        let ids: Vec<&str> = restored
            .messages
            .iter()
            .map(|m| m.msg_id.as_str())
            .collect();
        assert_eq!(ids, ["m-30"], "only the newest cut's messages go out again");
        let from_cuts = restored.from_cuts();
        assert_eq!(from_cuts[0].1.at, Some(30));
        assert_eq!(from_cuts[1].1.at, Some(10));
    }

    #[test]
    fn a_slot_is_given_out_again_only_after_compaction() {
        let mut ring = Ring {
            known: true,
            ..Ring::default()
        };
        let slots: Vec<u32> = (0..LOG_SLOTS).map_while(|_| ring.reserve()).collect();
        assert_eq!(slots, (0..LOG_SLOTS).collect::<Vec<_>>());
        assert_eq!(ring.reserve(), None, "every slot holds an uncompacted cut");
        ring.reserved -= 3;
        assert_eq!(ring.reserve(), Some(0), "the ring goes round");
    }

    #[test]
    fn a_slot_whose_cut_was_abandoned_still_counts_as_written() {
        let ring = Arc::new(Mutex::new(Ring {
            known: true,
            ..Ring::default()
        }));
        let slot = lock(&ring).reserve().expect("a free slot");
        drop(SlotClaim {
            ring: ring.clone(),
            slot,
            open: true,
        });
        let ring = lock(&ring);
        assert_eq!((ring.reserved, ring.completed), (1, 1));
        assert!(ring.dirty.is_empty());
    }
}
