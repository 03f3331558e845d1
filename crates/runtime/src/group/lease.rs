//! The lease protocol on one partition's key: acquire by creating it only if absent or
//! expired, renew by updating it at the revision we last wrote, release by deleting it
//! at that revision. A failed revision check always means "not yours any more".

use std::time::Duration;

use async_nats::jetstream::kv::Entry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::bucket::{is_live, Expect, GroupBucket, WriteFailure};
use super::error::GroupError;

/// A lease's value: who holds it, which run of that member, since which revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    pub(crate) owner: String,
    /// Distinguishes a restarted member from its previous run, which may still hold
    /// (unexpired) leases under the same name and must not be mistaken for us.
    pub(crate) incarnation: u64,
    /// The revision of the acquiring write. The acquiring write cannot know its own
    /// revision, so it leaves this out and renewals repeat it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<u64>,
}

/// A live lease as seen in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenLease {
    pub(crate) owner: String,
    pub(crate) incarnation: u64,
    pub(crate) epoch: u64,
    pub(crate) revision: u64,
}

impl SeenLease {
    /// The lease in `entry`, or `None` for a delete, purge or expiry marker.
    pub(crate) fn from_entry(entry: &Entry) -> Result<Option<SeenLease>, GroupError> {
        if !is_live(entry) {
            return Ok(None);
        }
        let record: LeaseRecord =
            serde_json::from_slice(&entry.value).map_err(|e| GroupError::Corrupt {
                key: entry.key.clone(),
                source: e.into(),
            })?;
        Ok(Some(SeenLease {
            owner: record.owner,
            incarnation: record.incarnation,
            epoch: record.epoch.unwrap_or(entry.revision),
            revision: entry.revision,
        }))
    }
}

/// Who this member is, as written into its leases.
#[derive(Debug, Clone)]
pub(crate) struct Holder {
    pub(crate) instance: String,
    pub(crate) incarnation: u64,
    pub(crate) ttl: Duration,
}

/// A lease this member wrote: its epoch, the revision to renew at, and when the
/// write that produced that revision was sent (the start of its TTL, at the latest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) epoch: u64,
    pub(crate) revision: u64,
    pub(crate) sent: Instant,
}

/// How an acquisition ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acquire {
    Won(Written),
    /// Someone holds it (or won the race for it).
    Taken,
}

/// How a renewal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    Renewed(Written),
    Lost,
}

impl Holder {
    fn record(&self, epoch: Option<u64>) -> Result<bytes::Bytes, GroupError> {
        let record = LeaseRecord {
            owner: self.instance.clone(),
            incarnation: self.incarnation,
            epoch,
        };
        serde_json::to_vec(&record)
            .map(Into::into)
            .map_err(|e| GroupError::Corrupt {
                key: format!("lease of {}", self.instance),
                source: e.into(),
            })
    }

    fn is_me(&self, lease: &SeenLease) -> bool {
        lease.owner == self.instance && lease.incarnation == self.incarnation
    }

    /// Takes `partition`'s lease if nobody holds it.
    ///
    /// Reads the key first so the create expects the revision of the marker a release
    /// or an expiry left (or no message at all). A live lease of our own incarnation is
    /// one whose acknowledgement we lost; we adopt it by renewing it.
    pub(crate) async fn acquire(
        &self,
        bucket: &GroupBucket,
        partition: u32,
    ) -> Result<Acquire, GroupError> {
        let key = bucket.keys.lease(partition);
        let expect = match bucket.entry(&key).await? {
            None => 0,
            Some(entry) => match SeenLease::from_entry(&entry)? {
                None => entry.revision,
                Some(lease) if self.is_me(&lease) => {
                    return Ok(
                        match self
                            .renew(bucket, partition, lease.epoch, lease.revision)
                            .await?
                        {
                            Renewal::Renewed(written) => Acquire::Won(written),
                            Renewal::Lost => Acquire::Taken,
                        },
                    );
                }
                Some(_) => return Ok(Acquire::Taken),
            },
        };
        let sent = Instant::now();
        match bucket
            .put(&key, self.record(None)?, Expect::Revision(expect), self.ttl)
            .await
        {
            Ok(revision) => Ok(Acquire::Won(Written {
                epoch: revision,
                revision,
                sent,
            })),
            Err(WriteFailure::Conflict) => Ok(Acquire::Taken),
            Err(WriteFailure::Fault(e)) => Err(GroupError::kv("acquire", &key, e)),
        }
    }

    /// Extends a lease we hold at `revision`.
    ///
    /// A revision conflict is a loss unless the key holds our own record of this very
    /// tenure at a later revision: a renewal whose acknowledgement was lost (it timed out
    /// while the node leading the bucket died) and which landed all the same. Only this
    /// member writes that record, and only while it holds the lease, so the lease is
    /// still ours; renewing at that revision keeps it instead of letting it lapse.
    pub(crate) async fn renew(
        &self,
        bucket: &GroupBucket,
        partition: u32,
        epoch: u64,
        revision: u64,
    ) -> Result<Renewal, GroupError> {
        let key = bucket.keys.lease(partition);
        let mut expect = revision;
        let mut adopted = false;
        loop {
            let sent = Instant::now();
            match bucket
                .put(
                    &key,
                    self.record(Some(epoch))?,
                    Expect::Revision(expect),
                    self.ttl,
                )
                .await
            {
                Ok(revision) => {
                    return Ok(Renewal::Renewed(Written {
                        epoch,
                        revision,
                        sent,
                    }))
                }
                Err(WriteFailure::Conflict) if !adopted => {
                    let landed = match bucket.entry(&key).await? {
                        Some(entry) => SeenLease::from_entry(&entry)?,
                        None => None,
                    };
                    match landed {
                        Some(lease)
                            if self.is_me(&lease)
                                && lease.epoch == epoch
                                && lease.revision > expect =>
                        {
                            expect = lease.revision;
                            adopted = true;
                        }
                        _ => return Ok(Renewal::Lost),
                    }
                }
                Err(WriteFailure::Conflict) => return Ok(Renewal::Lost),
                Err(WriteFailure::Fault(e)) => return Err(GroupError::kv("renew", &key, e)),
            }
        }
    }

    /// Gives a lease up at once, so the next owner need not wait for the TTL.
    /// `Ok(false)`: it was no longer ours anyway.
    pub(crate) async fn release(
        &self,
        bucket: &GroupBucket,
        partition: u32,
        revision: u64,
    ) -> Result<bool, GroupError> {
        let key = bucket.keys.lease(partition);
        match bucket.delete(&key, revision, self.ttl).await {
            Ok(_) => Ok(true),
            Err(WriteFailure::Conflict) => Ok(false),
            Err(WriteFailure::Fault(e)) => Err(GroupError::kv("release", &key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acquiring_write_leaves_the_epoch_out_and_renewals_repeat_it() {
        let acquiring = LeaseRecord {
            owner: "a".to_owned(),
            incarnation: 9,
            epoch: None,
        };
        let text = serde_json::to_string(&acquiring).expect("encode");
        assert_eq!(text, r#"{"owner":"a","incarnation":9}"#);
        let renewal: LeaseRecord =
            serde_json::from_str(r#"{"owner":"a","incarnation":9,"epoch":41}"#).expect("decode");
        assert_eq!(renewal.epoch, Some(41));
    }
}
