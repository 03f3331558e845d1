//! Counters a service exposes through its micro-service STATS: processed, redelivered,
//! dead-lettered… the actions the server refused for lack of a right, and the faults it
//! is in now (its disk, the broker refusing publishes, consumers that stalled).
//!
//! Faults live here rather than in PING/INFO metadata because async-nats fixes a micro
//! service's metadata when it registers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    storage_fault: Mutex<Option<Fault>>,
    storage_faults: AtomicU64,
    store_reopens: AtomicU64,
    publish_fault: Mutex<Option<Fault>>,
    publish_faults: AtomicU64,
    consumers: Mutex<BTreeMap<String, ConsumerHealth>>,
    stalls: AtomicU64,
}

/// How long a consumer may be in trouble (pulls failing, heartbeats missed, its store
/// faulted) without making progress before it counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// A fault a service is in now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fault {
    /// What failed, with its cause.
    pub error: String,
    /// When the fault began, in ms since the Unix epoch.
    pub since_ms: u64,
}

/// One consumer's progress, as the consumer loop reports it.
#[derive(Debug, Clone, Default)]
struct ConsumerHealth {
    /// The last batch it settled, or the last time the server answered its pull.
    last_progress: Option<(Instant, u64)>,
    /// Since when it has been in trouble without progress, and the latest trouble.
    trouble: Option<(Instant, String)>,
    /// Whether this stall was already counted and logged.
    reported: bool,
}

/// One consumer in STATS.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConsumerView {
    /// The durable consumer's name (a partition's consumer carries its partition).
    pub name: String,
    /// When it last settled a batch or had its pull answered, in ms since the Unix epoch.
    pub last_progress_ms: Option<u64>,
    /// In trouble for [`STALL_AFTER`] or longer without progress.
    pub stalled: bool,
    /// Its latest trouble, while it lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trouble: Option<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    /// Transactions the consumers' batches were committed in: one per group of batches
    /// (`runtime::commit`), so `events_processed ÷ group_commits` is events per commit.
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
    /// The store's disk fault, while it lasts: nothing is applied or acked meanwhile.
    pub storage_fault: Option<Fault>,
    /// Storage faults since start, and how many times the store was reopened after one.
    pub storage_faults: u64,
    pub store_reopens: u64,
    /// The broker refusing the relay's publishes (a full JetStream store, say), while it
    /// lasts: the outbox keeps every entry meanwhile.
    pub publish_fault: Option<Fault>,
    pub publish_faults: u64,
    /// Consumers stalled now, and stalls since start.
    pub consumers_stalled: u64,
    pub stalls: u64,
    /// Every consumer this instance runs now, by name.
    pub consumers: Vec<ConsumerView>,
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

    /// The store entered a storage fault (a full disk, say).
    pub fn set_storage_fault(&self, error: String, since_ms: u64) {
        if let Ok(mut fault) = self.storage_fault.lock() {
            if fault.is_none() {
                self.storage_faults.fetch_add(1, Ordering::Relaxed);
            }
            *fault = Some(Fault { error, since_ms });
        }
    }

    /// The store was reopened and takes writes again.
    pub fn clear_storage_fault(&self) {
        if let Ok(mut fault) = self.storage_fault.lock() {
            if fault.take().is_some() {
                self.store_reopens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The relay could not publish; `true` if this begins a fault (for a log line).
    pub fn set_publish_fault(&self, error: String) -> bool {
        let Ok(mut fault) = self.publish_fault.lock() else {
            return false;
        };
        let begins = fault.is_none();
        let since_ms = fault.as_ref().map_or_else(now_ms, |f| f.since_ms);
        if begins {
            self.publish_faults.fetch_add(1, Ordering::Relaxed);
        }
        *fault = Some(Fault { error, since_ms });
        begins
    }

    /// The relay published again; the fault it ended, if any.
    pub fn clear_publish_fault(&self) -> Option<Fault> {
        self.publish_fault.lock().ok().and_then(|mut f| f.take())
    }

    /// `consumer` settled a batch, or the server answered its pull: it is not stalled.
    /// Returns how long it had been in trouble, if it was.
    pub fn consumer_progress(&self, consumer: &str) -> Option<Duration> {
        let mut consumers = self.consumers.lock().ok()?;
        let health = consumers.entry(consumer.to_owned()).or_default();
        health.last_progress = Some((Instant::now(), now_ms()));
        health.reported = false;
        health.trouble.take().map(|(since, _)| since.elapsed())
    }

    /// `consumer` is in trouble (`why`); returns how long it has been, the first time
    /// that reaches [`STALL_AFTER`] (so the caller logs the stall once).
    pub fn consumer_trouble(&self, consumer: &str, why: String) -> Option<Duration> {
        let mut consumers = self.consumers.lock().ok()?;
        let health = consumers.entry(consumer.to_owned()).or_default();
        let since = match &health.trouble {
            Some((since, _)) => *since,
            None => Instant::now(),
        };
        health.trouble = Some((since, why));
        let stuck = since.elapsed();
        if stuck >= STALL_AFTER && !health.reported {
            health.reported = true;
            self.stalls.fetch_add(1, Ordering::Relaxed);
            return Some(stuck);
        }
        None
    }

    /// `consumer` stopped (shutdown, or its partition moved away).
    pub fn consumer_gone(&self, consumer: &str) {
        if let Ok(mut consumers) = self.consumers.lock() {
            consumers.remove(consumer);
        }
    }

    fn consumer_views(&self) -> Vec<ConsumerView> {
        let Ok(consumers) = self.consumers.lock() else {
            return Vec::new();
        };
        consumers
            .iter()
            .map(|(name, health)| ConsumerView {
                name: name.clone(),
                last_progress_ms: health.last_progress.map(|(_, ms)| ms),
                stalled: health
                    .trouble
                    .as_ref()
                    .is_some_and(|(since, _)| since.elapsed() >= STALL_AFTER),
                trouble: health.trouble.as_ref().map(|(_, why)| why.clone()),
            })
            .collect()
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
        let consumers = self.consumer_views();
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
            storage_fault: self.storage_fault.lock().ok().and_then(|f| f.clone()),
            storage_faults: self.storage_faults.load(Ordering::Relaxed),
            store_reopens: self.store_reopens.load(Ordering::Relaxed),
            publish_fault: self.publish_fault.lock().ok().and_then(|f| f.clone()),
            publish_faults: self.publish_faults.load(Ordering::Relaxed),
            consumers_stalled: consumers.iter().filter(|c| c.stalled).count() as u64,
            stalls: self.stalls.load(Ordering::Relaxed),
            consumers,
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
    fn a_consumer_in_trouble_is_stalled_only_after_the_stall_time_and_progress_ends_it() {
        let stats = Stats::default();
        assert_eq!(stats.consumer_trouble("c", "pull failed".to_owned()), None);
        let view = &stats.snapshot(0, 0).consumers[0];
        assert!(!view.stalled && view.trouble.as_deref() == Some("pull failed"));
        // Trouble that began longer ago than the stall time.
        if let Ok(mut consumers) = stats.consumers.lock() {
            if let Some(h) = consumers.get_mut("c") {
                h.trouble = Instant::now()
                    .checked_sub(STALL_AFTER)
                    .map(|t| (t, "pull failed".to_owned()));
            }
        }
        assert!(stats.consumer_trouble("c", "still".to_owned()).is_some());
        assert_eq!(
            stats.consumer_trouble("c", "still".to_owned()),
            None,
            "counted once"
        );
        let snapshot = stats.snapshot(0, 0);
        assert_eq!((snapshot.consumers_stalled, snapshot.stalls), (1, 1));
        assert!(stats.consumer_progress("c").is_some());
        let snapshot = stats.snapshot(0, 0);
        assert_eq!(snapshot.consumers_stalled, 0);
        assert!(snapshot.consumers[0].last_progress_ms.is_some());
    }

    #[test]
    fn faults_are_reported_while_they_last_and_counted_once() {
        let stats = Stats::default();
        stats.set_storage_fault("No space left on device".to_owned(), 1);
        stats.set_storage_fault("No space left on device".to_owned(), 1);
        assert!(stats.set_publish_fault("insufficient resources".to_owned()));
        assert!(!stats.set_publish_fault("insufficient resources".to_owned()));
        let snapshot = stats.snapshot(0, 0);
        assert_eq!((snapshot.storage_faults, snapshot.publish_faults), (1, 1));
        assert!(snapshot.storage_fault.is_some() && snapshot.publish_fault.is_some());
        stats.clear_storage_fault();
        assert!(stats.clear_publish_fault().is_some());
        let snapshot = stats.snapshot(0, 0);
        assert!(snapshot.storage_fault.is_none() && snapshot.publish_fault.is_none());
        assert_eq!(snapshot.store_reopens, 1);
    }

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
