//! Membership: each member keeps its own key alive with a TTL'd heartbeat, and deletes
//! it when it leaves so the others rebalance at once rather than after the TTL.

use serde::{Deserialize, Serialize};

use super::bucket::{Expect, GroupBucket, WriteFailure};
use super::error::GroupError;
use super::lease::Holder;

/// A heartbeat's value; the key already names the member, this tells runs apart.
#[derive(Debug, Serialize, Deserialize)]
struct MemberRecord {
    incarnation: u64,
}

impl Holder {
    /// Writes (or refreshes) this member's key, to expire after the TTL.
    pub(crate) async fn heartbeat(&self, bucket: &GroupBucket) -> Result<u64, GroupError> {
        let key = bucket.keys.member(&self.instance);
        let record = serde_json::to_vec(&MemberRecord {
            incarnation: self.incarnation,
        })
        .map_err(|e| GroupError::Corrupt {
            key: key.clone(),
            source: e.into(),
        })?;
        match bucket
            .put(&key, record.into(), Expect::Anything, self.ttl)
            .await
        {
            Ok(revision) => Ok(revision),
            Err(WriteFailure::Conflict) => Err(GroupError::kv(
                "heartbeat",
                &key,
                "an unconditional write reported a revision conflict",
            )),
            Err(WriteFailure::Fault(e)) => Err(GroupError::kv("heartbeat", &key, e)),
        }
    }

    /// Deletes this member's key if it still holds our last heartbeat (a restarted run
    /// under the same name may have written it since).
    pub(crate) async fn depart(
        &self,
        bucket: &GroupBucket,
        revision: u64,
    ) -> Result<(), GroupError> {
        let key = bucket.keys.member(&self.instance);
        match bucket.delete(&key, revision, self.ttl).await {
            Ok(_) | Err(WriteFailure::Conflict) => Ok(()),
            Err(WriteFailure::Fault(e)) => Err(GroupError::kv("leave", &key, e)),
        }
    }
}
