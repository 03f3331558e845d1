//! State that moves with its partition: the changelog of a partitioned service, kept in
//! a JetStream KV bucket with one compacted record per entity (an order, say).
//!
//! The relay works in cuts: every outbox entry of a partition and its entities' records,
//! read while no transaction commits. It stores the cut first (its records and its
//! messages: in the cut record itself when they fit in one chunk, else in chunk records
//! and a cut record naming them), then publishes the messages and each entity's own
//! record side by side; the consumer acks its input only after that. Every write is fenced by the owner's epoch record (renewed after a write whose
//! outcome is unknown), and a cut's chunks go into the slot its predecessor does not
//! occupy, so the named cut is always whole. A new owner of a partition
//! writes its epoch record, then (unless the last owner was this very store) replaces
//! what it holds with the entities' records, the last cut on top, and publishes the
//! cut's messages again (their ids make repeats harmless). docs/architecture.md, "State that moves with its
//! partition", gives the protocol and why it is safe.
//!
//! Domain-free: what a record holds is the service's business ([`Entities`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream::StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::store::{Store, Tx, TxResult};
use crate::RuntimeError;

/// The keys of a partition's epoch record and of its last cut (`_cut`, carrying its one
/// chunk or naming its chunks `_cut.<slot>.<n>`). Entities never start with `_`.
const EPOCH: &str = "_epoch";
const CUT: &str = "_cut";
/// The prefix of the consumers' saved positions (`_positions.<STREAM>.<durable>`): not
/// under a partition, so no restore reads them as records.
const POSITIONS: &str = "_positions";
/// The first byte of a cut record that carries its one chunk itself; the other form is a
/// JSON [`CutRecord`] naming chunks, so it starts with `{`.
const INLINE_CUT: u8 = 1;
/// The most one cut chunk carries; the server's default max_payload is 1 MiB.
const MAX_CHUNK_BYTES: usize = 512 * 1024;
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
}

impl Record {
    /// A record to be filled in (the relay names the entities before it reads them).
    pub fn placeholder() -> Record {
        Record {
            v: 1,
            data: None,
            applied: Vec::new(),
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

/// A cut as stored: its id, how many chunks carry it and in which slot. Written after the
/// chunks, so a cut whose record names it is whole.
///
/// Two slots of chunk keys take turns (`_cut.<slot>.<n>`): a cut is written into the
/// slot the record does not name, so the named cut stays whole while its successor is
/// being written. With one set of keys, a relay that stored a cut, failed to publish it
/// (a timed-out PubAck) and died while storing the next cut's chunks left a cut record
/// naming chunks that were no longer there: the restore fell back to the entities' older
/// records, under events already published from the lost cut (`shop-lab chaos --cluster`
/// saw a capture announced twice that way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CutRecord {
    v: u32,
    id: String,
    chunks: u32,
    /// `None`: a cut written before slots, its chunks under `_cut.<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<u8>,
}

/// The key of chunk `n` of a cut in `slot`.
fn chunk_key(slot: Option<u8>, n: u32) -> String {
    match slot {
        Some(slot) => format!("{CUT}.{slot}.{n}"),
        None => format!("{CUT}.{n}"),
    }
}

/// The slot a new cut is written into, given the one the cut record names.
fn other_slot(named: Option<u8>) -> u8 {
    match named {
        Some(0) => 1,
        _ => 0,
    }
}

/// One chunk's records (JSON); its messages follow in the outbox entry codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChunkHead {
    id: String,
    records: Vec<(String, Record)>,
}

/// A partition as the changelog holds it: every entity's latest record (the last cut's
/// version where the cut is newer), and the last cut's messages, to publish again.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub records: BTreeMap<String, Record>,
    pub messages: Vec<crate::outbox_entry::OutboxMessage>,
    /// Entities whose latest version is only in the last cut (their own record is older
    /// or missing): the new owner publishes their records, or its own next cut, which
    /// replaces that one, would leave them nowhere.
    pub only_in_cut: Vec<String>,
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
) -> Result<(), RuntimeError> {
    match acked {
        Ok(_) => Ok(()),
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
    ) -> Result<(), RuntimeError> {
        if held.renew.load(Ordering::Acquire) {
            self.renew_epoch(partition, held).await?;
        }
        let epoch_seq = held.epoch_seq();
        let mut in_flight = Vec::new();
        let mut failure = None;
        for (key, payload) in writes {
            let subject = self.subject(partition, &key);
            let message = jetstream::message::PublishMessage::build()
                .headers(self.fence_headers(partition, epoch_seq))
                .payload(Bytes::from(payload));
            match self.js.send_publish(subject.clone(), message).await {
                Ok(ack) if self.pipelined => in_flight.push((subject, ack)),
                Ok(ack) => fenced_outcome(partition, held, &subject, ack.await)?,
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
            if let Err(e) = fenced_outcome(partition, held, &subject, ack.await) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Stores a cut of `partition` whole. A cut that fits in one chunk (nearly every
    /// one) is a single write: the cut record carries it, and replacing one message is
    /// atomic, so no slot is needed. A bigger one goes into chunks in the slot the last
    /// cut record does not name, then the cut record naming them. `messages` are in the
    /// outbox message codec ([`OutboxMessage::encode`]).
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
        if chunks.len() == 1 {
            // Half the round trips of the two-step form on the relay's path: one hop of an
            // order waits for every write of its cut.
            let chunk = chunks.pop().unwrap_or_default();
            let mut value = Vec::with_capacity(1 + chunk.len());
            value.push(INLINE_CUT);
            value.extend_from_slice(&chunk);
            self.publish_fenced(partition, held, vec![(CUT.to_owned(), value)])
                .await?;
            held.set_named_slot(None);
            return Ok(());
        }
        let pending = self.write_chunks(partition, held, id, chunks).await?;
        self.name_cut(partition, held, pending).await
    }

    /// The first half of a cut in chunks: the chunks, in the slot the cut record does not
    /// name, so the last cut stays whole until [`StateBucket::name_cut`]. (Public for the
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
        self.write_chunks(partition, held, id, chunks).await
    }

    async fn write_chunks(
        &self,
        partition: u32,
        held: &ReadyPartition,
        id: String,
        chunks: Vec<Vec<u8>>,
    ) -> Result<PendingCut, RuntimeError> {
        let named = self.named_slot(partition, held).await?;
        let slot = other_slot(named);
        let record = CutRecord {
            v: 1,
            id,
            chunks: chunks.len() as u32,
            slot: Some(slot),
        };
        let writes = chunks
            .into_iter()
            .enumerate()
            .map(|(n, chunk)| (chunk_key(Some(slot), n as u32), chunk))
            .collect();
        self.publish_fenced(partition, held, writes).await?;
        Ok(PendingCut { record })
    }

    /// The second half of [`StateBucket::store_cut`]: the cut record naming the chunks.
    pub async fn name_cut(
        &self,
        partition: u32,
        held: &ReadyPartition,
        pending: PendingCut,
    ) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec(&pending.record).map_err(cut_encode_error)?;
        self.publish_fenced(partition, held, vec![(CUT.to_owned(), bytes)])
            .await?;
        held.set_named_slot(pending.record.slot);
        Ok(())
    }

    /// The slot the partition's cut record names, read once per owner.
    async fn named_slot(
        &self,
        partition: u32,
        held: &ReadyPartition,
    ) -> Result<Option<u8>, RuntimeError> {
        if let Some(named) = held.named_slot() {
            return Ok(named);
        }
        let named = self
            .last(partition, CUT)
            .await?
            .and_then(|(_, bytes)| serde_json::from_slice::<CutRecord>(&bytes).ok())
            .and_then(|cut| cut.slot);
        held.set_named_slot(named);
        Ok(named)
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
        self.publish_fenced(partition, held, writes).await
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
        let stream = self
            .js
            .get_stream(self.stream())
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

    /// The partition's last cut whole: its sequence, records and messages.
    #[allow(clippy::type_complexity)]
    async fn last_cut(
        &self,
        partition: u32,
    ) -> Result<
        Option<(
            u64,
            Vec<(String, Record)>,
            Vec<crate::outbox_entry::OutboxMessage>,
        )>,
        RuntimeError,
    > {
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

    /// Reads one entity's record (for a read of an entity this instance does not own).
    pub async fn record(
        &self,
        entity: &str,
        partition: u32,
    ) -> Result<Option<Record>, RuntimeError> {
        Ok(self
            .last(partition, entity)
            .await?
            .and_then(|(_, bytes)| serde_json::from_slice(&bytes).ok()))
    }

    /// The partition as the changelog holds it: every entity's latest record, the last
    /// cut's versions where the cut is newer, and the cut's messages.
    ///
    /// `epoch_seq` is the sequence of the reader's own epoch record (0: none). The
    /// records are read through a consumer, which a clustered bucket may serve from a
    /// replica a few writes behind its leader; a read that does not reach the epoch
    /// record may lack the last owner's final records (written before it, since the
    /// server refuses the old owner's writes after it), so it is made again.
    pub async fn read_partition(
        &self,
        partition: u32,
        epoch_seq: u64,
    ) -> Result<Restored, RuntimeError> {
        let mut pause = Duration::from_millis(20);
        let mut records = loop {
            let (records, epoch_read) = self.read_records(partition, None).await?;
            if epoch_read >= epoch_seq {
                break records;
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
        let mut messages = Vec::new();
        let mut only_in_cut = Vec::new();
        if let Some((cut_seq, cut_records, cut_messages)) = self.last_cut(partition).await? {
            for (entity, record) in cut_records {
                let newer = records
                    .get(&entity)
                    .is_none_or(|(sequence, _)| *sequence < cut_seq);
                if newer {
                    only_in_cut.push(entity.clone());
                    records.insert(entity, (cut_seq, record));
                }
            }
            messages = cut_messages;
        }
        Ok(Restored {
            records: records.into_iter().map(|(k, (_, r))| (k, r)).collect(),
            messages,
            only_in_cut,
        })
    }

    /// The latest records of `partition` whose entity starts with `token.` (every
    /// entity without a token), the last cut's versions where newer.
    pub async fn read_keys(
        &self,
        partition: u32,
        token: Option<&str>,
    ) -> Result<BTreeMap<String, Record>, RuntimeError> {
        let (mut records, _) = self.read_records(partition, token).await?;
        if let Some((cut_seq, cut_records, _)) = self.last_cut(partition).await? {
            let wanted = |entity: &str| match token {
                Some(token) => entity
                    .strip_prefix(token)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => true,
            };
            for (entity, record) in cut_records.into_iter().filter(|(e, _)| wanted(e)) {
                let newer = records
                    .get(&entity)
                    .is_none_or(|(sequence, _)| *sequence < cut_seq);
                if newer {
                    records.insert(entity, (cut_seq, record));
                }
            }
        }
        Ok(records.into_iter().map(|(k, (_, r))| (k, r)).collect())
    }

    /// Every entity's own latest record (with its sequence) in `partition`, and the
    /// sequence of the epoch record the read saw (0: none, or not in `token`'s keys).
    async fn read_records(
        &self,
        partition: u32,
        token: Option<&str>,
    ) -> Result<(BTreeMap<String, (u64, Record)>, u64), RuntimeError> {
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
                filter_subject: match token {
                    Some(token) => format!("{prefix}{token}.>"),
                    None => format!("{prefix}>"),
                },
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(RuntimeError::js(format!("reading partition {partition}")))?;
        // The count at creation: what the server held for the partition then.
        let pending = reader.cached_info().num_pending;
        let mut records: BTreeMap<String, (u64, Record)> = BTreeMap::new();
        let mut epoch_read = 0;
        if pending == 0 {
            return Ok((records, epoch_read));
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
            // `_epoch` and the cut's keys are not entities; a delete or purge marker has
            // an empty body and restores nothing.
            if key == EPOCH {
                epoch_read = sequence;
            } else if !key.is_empty() && !key.starts_with('_') {
                if let Ok(record) = serde_json::from_slice::<Record>(&message.payload) {
                    records.insert(key.to_owned(), (sequence, record));
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok((records, epoch_read))
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
}

fn cut_encode_error(source: serde_json::Error) -> RuntimeError {
    RuntimeError::Encode {
        what: "a changelog cut".to_owned(),
        source,
    }
}

/// The slot the cut record names is not known yet (read once per takeover).
const SLOT_UNKNOWN: u8 = u8::MAX;
/// The cut record names a cut written before slots.
const SLOT_LEGACY: u8 = u8::MAX - 1;

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
    /// The slot the partition's cut record names, as this owner last wrote or read it.
    named_slot: Arc<AtomicU8>,
    /// The store's reopen count when the partition was taken: after a reopen the local
    /// copy may lack commits the changelog holds, and the relay leaves the partition
    /// alone until it is taken (restored) again.
    pub generation: u64,
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
            named_slot: Arc::new(AtomicU8::new(SLOT_UNKNOWN)),
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

    /// `None` while unknown; `Some(None)` for a cut without a slot.
    fn named_slot(&self) -> Option<Option<u8>> {
        match self.named_slot.load(Ordering::Acquire) {
            SLOT_UNKNOWN => None,
            SLOT_LEGACY => Some(None),
            slot => Some(Some(slot)),
        }
    }

    fn set_named_slot(&self, slot: Option<u8>) {
        self.named_slot
            .store(slot.unwrap_or(SLOT_LEGACY), Ordering::Release);
    }
}
