//! State that moves with its partition: the changelog of a partitioned service, kept in
//! a JetStream KV bucket with one compacted record per entity (an order, say).
//!
//! The relay publishes an entity's record after the events of the transaction that
//! changed it, fenced by the owner's epoch record, and the consumer acks its input only
//! once the record is stored. A new owner of a partition writes its epoch record, then
//! (unless the last owner was this very store) replaces what it holds for the partition
//! with the bucket's records. docs/architecture.md, "State that moves with its
//! partition", gives the protocol and why it is safe.
//!
//! Domain-free: what a record holds is the service's business ([`Entities`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream::StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::store::{Store, Tx, TxResult};
use crate::RuntimeError;

/// The key of a partition's epoch record, and of its multi-entity intent record.
const EPOCH: &str = "_epoch";
const INTENT: &str = "_intent";
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

/// Several entities' records written as one message before their own keys, so a
/// transaction that changed several entities (inventory's) is restored whole even if the
/// owner died between their publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Intent {
    v: u32,
    records: Vec<(String, Record)>,
}

/// Who took a partition last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub store_id: String,
    pub instance: String,
    /// The lease's epoch (its KV revision in the group bucket).
    pub epoch: u64,
}

/// The KV bucket of one service's changelog.
#[derive(Debug, Clone)]
pub struct StateBucket {
    js: jetstream::Context,
    bucket: String,
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
        Ok(StateBucket {
            js: js.clone(),
            bucket: bucket.to_owned(),
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

    /// The last epoch record of `partition`, if any owner wrote one.
    pub async fn last_epoch(&self, partition: u32) -> Result<Option<EpochRecord>, RuntimeError> {
        let stream = self
            .js
            .get_stream(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        match stream
            .get_last_raw_message_by_subject(&self.subject(partition, EPOCH))
            .await
        {
            Ok(message) => Ok(serde_json::from_slice(&message.payload).ok()),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(RuntimeError::js(format!(
                "reading the epoch of partition {partition}"
            ))(e)),
        }
    }

    /// Writes this owner's epoch record; its stream sequence fences every later record.
    pub async fn write_epoch(
        &self,
        partition: u32,
        record: &EpochRecord,
    ) -> Result<u64, RuntimeError> {
        let subject = self.subject(partition, EPOCH);
        let payload = serde_json::to_vec(record).map_err(|source| RuntimeError::Encode {
            what: "an epoch record".to_owned(),
            source,
        })?;
        let ack = self
            .js
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|e| RuntimeError::publish(subject.as_str(), e))?
            .await
            .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
        Ok(ack.sequence)
    }

    /// Publishes records of `partition`, each refused by the server unless the
    /// partition's last epoch record is still the one at `epoch_seq` (ours).
    pub async fn publish_records(
        &self,
        partition: u32,
        epoch_seq: u64,
        records: &[(String, Record)],
    ) -> Result<(), RuntimeError> {
        let fence_subject = self.subject(partition, EPOCH);
        let fenced = |payload: Vec<u8>| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                epoch_seq.to_string().as_str(),
            );
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                fence_subject.as_str(),
            );
            jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(Bytes::from(payload))
        };
        let encode = |what: &str, value: &dyn erased::Encode| {
            value.encode().map_err(|source| RuntimeError::Encode {
                what: what.to_owned(),
                source,
            })
        };
        let mut acks = Vec::with_capacity(records.len() + 1);
        if records.len() > 1 {
            let intent = Intent {
                v: 1,
                records: records.to_vec(),
            };
            let subject = self.subject(partition, INTENT);
            let payload = encode("an intent record", &intent)?;
            // The intent must be stored before any record it covers.
            self.js
                .send_publish(subject.clone(), fenced(payload))
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
        }
        for (entity, record) in records {
            let subject = self.subject(partition, entity);
            let payload = encode("a changelog record", record)?;
            let ack = self
                .js
                .send_publish(subject.clone(), fenced(payload))
                .await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
            acks.push((subject, ack));
        }
        for (subject, ack) in acks {
            ack.await
                .map_err(|e| RuntimeError::publish(subject.as_str(), e))?;
        }
        Ok(())
    }

    /// The partition's intent record with its sequence, if one was written.
    async fn intent(&self, partition: u32) -> Result<Option<(u64, Intent)>, RuntimeError> {
        let stream = self
            .js
            .get_stream(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        match stream
            .get_last_raw_message_by_subject(&self.subject(partition, INTENT))
            .await
        {
            Ok(message) => Ok(serde_json::from_slice(&message.payload)
                .ok()
                .map(|i| (message.sequence, i))),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(RuntimeError::js(format!(
                "reading the intent of partition {partition}"
            ))(e)),
        }
    }

    /// Reads one entity's record (for a read of an entity this instance does not own).
    pub async fn record(
        &self,
        entity: &str,
        partition: u32,
    ) -> Result<Option<Record>, RuntimeError> {
        let stream = self
            .js
            .get_stream(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        match stream
            .get_last_raw_message_by_subject(&self.subject(partition, entity))
            .await
        {
            Ok(message) => Ok(serde_json::from_slice(&message.payload).ok()),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(RuntimeError::js(format!("reading the record of {entity}"))(
                e,
            )),
        }
    }

    /// Every entity's latest record in `partition`, the intent applied on top where it
    /// is newer than an entity's own record.
    pub async fn read_partition(
        &self,
        partition: u32,
    ) -> Result<BTreeMap<String, Record>, RuntimeError> {
        self.read_keys(partition, None).await
    }

    /// The latest records of `partition` whose entity starts with `prefix.` (every
    /// entity without a prefix), the intent applied on top where newer.
    pub async fn read_keys(
        &self,
        partition: u32,
        prefix_token: Option<&str>,
    ) -> Result<BTreeMap<String, Record>, RuntimeError> {
        let stream = self
            .js
            .get_stream(self.stream())
            .await
            .map_err(RuntimeError::js(format!("opening bucket {}", self.bucket)))?;
        let prefix = format!("$KV.{}.{partition}.", self.bucket);
        let mut reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: match prefix_token {
                    Some(token) => format!("{prefix}{token}.>"),
                    None => format!("{prefix}>"),
                },
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(RuntimeError::js(format!("reading partition {partition}")))?;
        let pending = reader
            .info()
            .await
            .map_err(RuntimeError::js(format!("reading partition {partition}")))?
            .num_pending;
        let mut records: BTreeMap<String, (u64, Record)> = BTreeMap::new();
        let mut intent: Option<(u64, Intent)> = None;
        if pending > 0 {
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
                if key == INTENT {
                    if let Ok(i) = serde_json::from_slice::<Intent>(&message.payload) {
                        intent = Some((sequence, i));
                    }
                } else if key != EPOCH && !key.is_empty() {
                    // A delete or purge marker has an empty body: nothing to restore.
                    if let Ok(record) = serde_json::from_slice::<Record>(&message.payload) {
                        records.insert(key.to_owned(), (sequence, record));
                    }
                }
                if left == 0 {
                    break;
                }
            }
        }
        if intent.is_none() && prefix_token.is_some() {
            intent = self.intent(partition).await?;
        }
        if let Some((intent_seq, intent)) = intent {
            let wanted = |entity: &str| match prefix_token {
                Some(token) => entity
                    .strip_prefix(token)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => true,
            };
            for (entity, record) in intent.records.into_iter().filter(|(e, _)| wanted(e)) {
                let newer = records
                    .get(&entity)
                    .map(|(sequence, _)| *sequence < intent_seq)
                    .unwrap_or(true);
                if newer {
                    records.insert(entity, (intent_seq, record));
                }
            }
        }
        Ok(records.into_iter().map(|(k, (_, r))| (k, r)).collect())
    }
}

/// Serialising records and intents through one helper.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
        }
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
    records: &BTreeMap<String, Record>,
) -> Result<usize, RuntimeError> {
    let stale: Vec<String> = entities
        .held(store)
        .into_iter()
        .filter(|e| entities.partition(e) == partition)
        .collect();
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

/// A partition this instance may work on.
#[derive(Debug, Clone)]
pub struct ReadyPartition {
    pub fence: crate::group::Fence,
    pub epoch_seq: u64,
}
