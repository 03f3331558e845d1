//! Counters a service exposes through its micro-service STATS: processed, redelivered,
//! dead-lettered… and the actions the server refused for lack of a right.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::connect::{DenialSink, PermissionDenial};

/// Live counters, shared by the consumer loops and the relay of one service.
#[derive(Debug, Default)]
pub struct Stats {
    processed: AtomicU64,
    duplicates: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    naks: AtomicU64,
    published: AtomicU64,
    group_commits: AtomicU64,
    permission_denials: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_permission_denial: Mutex<Option<String>>,
    /// The partitions this instance works on now (`None`: not partitioned).
    partitions: Mutex<Option<Vec<u32>>>,
}

/// A point-in-time copy of [`Stats`], as JSON in STATS `data`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub events_processed: u64,
    pub events_duplicate: u64,
    pub events_redelivered: u64,
    pub events_dead_lettered: u64,
    pub events_nacked: u64,
    pub events_published: u64,
    pub group_commits: u64,
    pub outbox_backlog: u64,
    pub inbox_size: u64,
    pub last_error: Option<String>,
    /// Operations the server refused for lack of a right (permissions violations).
    pub permission_denials: u64,
    /// The last of them: the operation and the refused subject (never a credential).
    pub last_permission_denial: Option<String>,
    /// The partitions this instance holds now; absent for a service that is not
    /// partitioned. (INFO metadata is fixed at registration, so it lives here.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<u32>>,
}

impl Stats {
    pub fn add_processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_nak(&self) {
        self.naks.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_group_commit(&self) {
        self.group_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// The partitions this instance holds now (`None`: not partitioned).
    pub fn partitions(&self) -> Option<Vec<u32>> {
        self.partitions.lock().ok().and_then(|p| p.clone())
    }

    /// The partitions this instance holds now, for STATS.
    pub fn set_partitions(&self, held: Vec<u32>) {
        if let Ok(mut partitions) = self.partitions.lock() {
            *partitions = Some(held);
        }
    }

    pub fn record_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    /// These counters as the sink of a connection's permission refusals.
    pub fn denial_sink(self: &Arc<Self>) -> Arc<dyn DenialSink> {
        self.clone()
    }

    pub fn snapshot(&self, outbox_backlog: usize, inbox_size: usize) -> StatsSnapshot {
        StatsSnapshot {
            events_processed: self.processed.load(Ordering::Relaxed),
            events_duplicate: self.duplicates.load(Ordering::Relaxed),
            events_redelivered: self.redelivered.load(Ordering::Relaxed),
            events_dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            events_nacked: self.naks.load(Ordering::Relaxed),
            events_published: self.published.load(Ordering::Relaxed),
            group_commits: self.group_commits.load(Ordering::Relaxed),
            outbox_backlog: outbox_backlog as u64,
            inbox_size: inbox_size as u64,
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
            permission_denials: self.permission_denials.load(Ordering::Relaxed),
            last_permission_denial: self
                .last_permission_denial
                .lock()
                .ok()
                .and_then(|l| l.clone()),
            partitions: self.partitions.lock().ok().and_then(|p| p.clone()),
        }
    }
}

impl DenialSink for Stats {
    fn denied(&self, denial: &PermissionDenial) {
        self.permission_denials.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_permission_denial.lock() {
            *last = Some(denial.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::DeniedOperation;

    #[test]
    fn refusals_are_counted_with_the_last_subject() {
        let stats = Arc::new(Stats::default());
        let sink = stats.denial_sink();
        for subject in ["events.orders.placed.o-1", "events.orders.placed.o-2"] {
            sink.denied(&PermissionDenial {
                operation: DeniedOperation::Publish,
                subject: subject.to_owned(),
            });
        }
        let snapshot = stats.snapshot(0, 0);
        assert_eq!(snapshot.permission_denials, 2);
        assert!(snapshot
            .last_permission_denial
            .is_some_and(|d| d.ends_with("events.orders.placed.o-2")));
    }
}
