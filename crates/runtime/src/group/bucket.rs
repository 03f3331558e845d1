//! The group's I/O with its KV bucket: opening it, recording the partition count once,
//! and revision-checked writes that carry a per-message TTL.
//!
//! async-nats 0.51 has `create_with_ttl`, but `update` takes no TTL and `create` over a
//! delete marker writes without one, so a renewed or re-acquired lease would never
//! expire. The writes here publish to the key's subject directly with the
//! `Nats-Expected-Last-Subject-Sequence` and `Nats-TTL` headers (ADR-8, ADR-43).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Entry, Operation, Store};
use async_nats::jetstream::{self, stream::StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::error::GroupError;
use super::keys::Keys;
use crate::BoxError;

/// The bucket of one group, with its key layout.
#[derive(Debug, Clone)]
pub(crate) struct GroupBucket {
    js: jetstream::Context,
    store: Store,
    pub(crate) keys: Keys,
}

/// What a write expects to find under its key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// Nothing but a delete marker or nothing at all, at this revision (0: no message).
    Revision(u64),
    /// Anything (a heartbeat overwrites).
    Anything,
}

/// A revision-checked write did not land.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// Someone else wrote the key (or it expired) since the revision we expected.
    Conflict,
    /// The broker or the network failed; the write may or may not have landed.
    Fault(BoxError),
}

impl GroupBucket {
    /// Opens `bucket`, creating it with per-message TTLs and delete markers if absent.
    ///
    /// `marker_ttl` is how long the server keeps the marker it writes when a lease or
    /// heartbeat expires; watchers learn of the expiry from it.
    pub(crate) async fn open(
        js: &jetstream::Context,
        bucket: &str,
        group: &str,
        marker_ttl: Duration,
        replicas: usize,
    ) -> Result<GroupBucket, GroupError> {
        let open_error = |source: BoxError| GroupError::Bucket {
            bucket: bucket.to_owned(),
            source,
        };
        let store = match js.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => {
                let created = js
                    .create_key_value(kv::Config {
                        bucket: bucket.to_owned(),
                        description: "partition counts, members and leases of service groups"
                            .to_owned(),
                        history: 1,
                        storage: StorageType::File,
                        limit_markers: Some(marker_ttl),
                        num_replicas: replicas.max(1),
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(store) => store,
                    // Another member created it between our look and our create.
                    Err(create) => js
                        .get_key_value(bucket)
                        .await
                        .map_err(|_| open_error(create.into()))?,
                }
            }
        };
        if !store.stream.cached_info().config.allow_message_ttl {
            return Err(GroupError::BucketWithoutTtl {
                bucket: bucket.to_owned(),
            });
        }
        Ok(GroupBucket {
            js: js.clone(),
            store,
            keys: Keys::new(group),
        })
    }

    /// Records `wanted` as the group's partition count unless one is recorded already;
    /// returns the recorded count, which wins.
    pub(crate) async fn record_partitions(&self, wanted: u32) -> Result<u32, GroupError> {
        let key = self.keys.partitions();
        match self.store.create(&key, wanted.to_string().into()).await {
            Ok(_) => return Ok(wanted),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(GroupError::kv("create", &key, e)),
        }
        let recorded = self
            .store
            .get(&key)
            .await
            .map_err(|e| GroupError::kv("read", &key, e))?
            .ok_or_else(|| GroupError::kv("read", &key, "recorded but now missing"))?;
        std::str::from_utf8(&recorded)
            .map_err(BoxError::from)
            .and_then(|text| text.parse::<u32>().map_err(BoxError::from))
            .ok()
            .filter(|count| *count > 0)
            .ok_or_else(|| GroupError::Corrupt {
                key,
                source: "the partition count is not a positive number".into(),
            })
    }

    /// The last entry under `key`, delete markers included.
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<Entry>, GroupError> {
        self.store
            .entry(key)
            .await
            .map_err(|e| GroupError::kv("read", key, e))
    }

    /// Watches every key of the group: the current value of each, then every change.
    pub(crate) async fn watch(&self) -> Result<kv::Watch, GroupError> {
        let all = self.keys.all();
        self.store
            .watch_with_history(&all)
            .await
            .map_err(|e| GroupError::kv("watch", &all, e))
    }

    /// Writes `value` under `key` if `expect` holds, to expire after `ttl`.
    pub(crate) async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        ttl: Duration,
    ) -> Result<u64, WriteFailure> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", ttl.as_secs().to_string().as_str());
        self.publish(key, headers, value, expect).await
    }

    /// Puts a delete marker under `key` if it is still at `revision`; the marker itself
    /// expires after `ttl` so released keys do not accumulate.
    pub(crate) async fn delete(
        &self,
        key: &str,
        revision: u64,
        ttl: Duration,
    ) -> Result<u64, WriteFailure> {
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert("Nats-TTL", ttl.as_secs().to_string().as_str());
        self.publish(key, headers, Bytes::new(), Expect::Revision(revision))
            .await
    }

    async fn publish(
        &self,
        key: &str,
        mut headers: HeaderMap,
        value: Bytes,
        expect: Expect,
    ) -> Result<u64, WriteFailure> {
        if let Expect::Revision(revision) = expect {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                revision.to_string().as_str(),
            );
        }
        let prefix = self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix);
        let subject = format!("{prefix}{key}");
        let ack = self
            .js
            .publish_with_headers(subject, headers, value)
            .await
            .map_err(|e| WriteFailure::Fault(e.into()))?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(WriteFailure::Conflict)
            }
            Err(e) => Err(WriteFailure::Fault(e.into())),
        }
    }
}

/// Whether an entry is a live value rather than a delete, purge or expiry marker.
pub(crate) fn is_live(entry: &Entry) -> bool {
    entry.operation == Operation::Put
}
