//! A read-only look at a group, for operators (`shop status`) and tests: the recorded
//! partition count, the live members and who holds each partition's lease. It takes no
//! part in the protocol and writes nothing.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use super::error::GroupError;
use super::keys::{Key, Keys};
use super::lease::LeaseRecord;

/// Who holds one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub owner: String,
    /// The lease's epoch (the acquiring write's revision), when known.
    pub epoch: Option<u64>,
}

/// A group as its bucket shows it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The recorded partition count (`None`: no member ever joined).
    pub partitions: Option<u32>,
    /// Live members (their heartbeat has not expired).
    pub members: Vec<String>,
    /// Live leases by partition.
    pub leases: BTreeMap<u32, LeaseView>,
}

impl GroupView {
    /// Partitions without a live lease.
    pub fn unowned(&self) -> Vec<u32> {
        (0..self.partitions.unwrap_or(0))
            .filter(|p| !self.leases.contains_key(p))
            .collect()
    }

    /// The partitions each member holds.
    pub fn by_owner(&self) -> BTreeMap<String, Vec<u32>> {
        let mut out: BTreeMap<String, Vec<u32>> = self
            .members
            .iter()
            .map(|m| (m.clone(), Vec::new()))
            .collect();
        for (partition, lease) in &self.leases {
            out.entry(lease.owner.clone()).or_default().push(*partition);
        }
        out
    }
}

/// Reads `group` from `bucket`; an absent bucket is an empty view.
pub async fn view(
    js: &jetstream::Context,
    bucket: &str,
    group: &str,
) -> Result<GroupView, GroupError> {
    let Ok(store) = js.get_key_value(bucket).await else {
        return Ok(GroupView::default());
    };
    let keys = Keys::new(group);
    let filter = keys.all();
    let mut names = store
        .keys()
        .await
        .map_err(|e| GroupError::kv("listing", &filter, e))?;
    let mut out = GroupView::default();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| GroupError::kv("listing", &filter, e))?;
        let Some(key) = keys.parse(&name) else {
            continue;
        };
        let entry = store
            .entry(name.clone())
            .await
            .map_err(|e| GroupError::kv("reading", &name, e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            continue;
        };
        match key {
            Key::Partitions => {
                out.partitions = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
            }
            Key::Member(instance) => out.members.push(instance),
            Key::Lease(partition) => {
                if let Ok(record) = serde_json::from_slice::<LeaseRecord>(&entry.value) {
                    out.leases.insert(
                        partition,
                        LeaseView {
                            owner: record.owner,
                            epoch: record.epoch,
                        },
                    );
                }
            }
        }
    }
    out.members.sort();
    Ok(out)
}
