//! The owner code of a partitioned service: follows the partitions its group member
//! holds, takes each over (epoch record, then the changelog's records when another store
//! owned it last), runs the partition's consumers while it holds it, and stops them on a
//! handover or a loss.
//!
//! Only partitions in the `ready` map are worked on: the consumers, the workers and the
//! relay all look there, so nothing runs on a partition whose state is still being
//! restored or whose lease is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::changelog::{replace_partition, Entities, EpochRecord, ReadyPartition, StateBucket};
use crate::group::{Fence, Group, Handovers};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;
use crate::store::CopyGeneration;
use crate::store::Store;
use crate::RuntimeError;

/// Starts one consumer for a partition (`None`: every partition) under a fence, until
/// the shutdown it is given fires.
pub type SpawnConsumer = Arc<
    dyn Fn(Option<u32>, Option<Fence>, CopyGeneration, Shutdown) -> JoinHandle<()> + Send + Sync,
>;

/// Everything the manager needs.
pub struct Manager {
    pub group: Group,
    pub handovers: Handovers,
    pub bucket: StateBucket,
    pub entities: Arc<dyn Entities>,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub instance: String,
    /// Consumers per partition (checkout, payment), or one set for all (inventory).
    pub per_partition_consumers: bool,
    pub consumers: Vec<SpawnConsumer>,
    pub ready: watch::Sender<BTreeMap<u32, ReadyPartition>>,
    /// How long a stop may wait for a partition's batches in flight.
    pub grace: Duration,
    /// Partitions this run held and gave up (their late entries are dropped).
    pub released: std::collections::BTreeSet<u32>,
}

/// The consumers running for one partition.
struct Running {
    /// The lease they run under. A lease lost and acquired again between two looks at
    /// the owned map is another fence (another epoch): these consumers' checks fail
    /// for good, so the partition counts as lost and is taken again.
    fence: Fence,
    trigger: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
    /// Whether the store's copy of the partition is current, for its consumers.
    copy: CopyGeneration,
}

/// How often entries left for a partition this instance does not hold are looked at
/// (one KV read each): dropped once another store has taken the partition.
const LEFTOVER_LOOK: Duration = Duration::from_secs(1);

/// The partitions to work on: those the member holds, less those whose handover was
/// just confirmed and whose release the owned map does not show yet.
///
/// A partition held under another epoch than the one handed over was released and
/// acquired again between two looks at the map (the member it was handed to left before
/// taking it, so it came straight back): that is a new takeover, not the old lease.
/// Keyed by partition alone, such a partition stayed "handed" for good; its lease was
/// renewed while nothing worked on it, and its orders were stuck (a CI chaos run).
fn workable(owned: &BTreeMap<u32, Fence>, handed: &mut BTreeMap<u32, u64>) -> BTreeMap<u32, Fence> {
    handed.retain(|p, epoch| owned.get(p).is_some_and(|f| f.epoch() == *epoch));
    owned
        .iter()
        .filter(|(p, _)| !handed.contains_key(p))
        .map(|(p, f)| (*p, f.clone()))
        .collect()
}

impl Manager {
    /// Runs until `shutdown`, then stops every partition and leaves the group in order.
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let store_id = match self.store.store_id() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store's identity; not taking partitions");
                shutdown.requested().await;
                return;
            }
        };
        let mut owned = self.group.owned();
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        // Partitions whose handover we confirmed, with the epoch handed over: the group
        // releases them a moment later, and until the owned map shows that, they must not
        // be taken again (a second epoch record would fence out their next owner).
        let mut handed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leftovers_looked = tokio::time::Instant::now();
        let mut generation = self.store.reopens();
        loop {
            if self.store.reopens() != generation {
                generation = self.store.reopens();
                self.restore_after_reopen(&store_id, &mut running).await;
            }
            let current = workable(&owned.borrow_and_update(), &mut handed);
            self.reconcile(&store_id, &current, &mut running).await;
            // A batch that was committing when its partition went may have queued an
            // entry after the partition's entries were dropped: drop those too.
            for partition in 0..self.group.partitions() {
                if !running.contains_key(&partition)
                    && self.released.contains(&partition)
                    && self.store.outbox_entries_of(partition).unwrap_or(0) > 0
                {
                    self.forget_queued(partition);
                }
            }
            if leftovers_looked.elapsed() >= LEFTOVER_LOOK {
                leftovers_looked = tokio::time::Instant::now();
                self.drop_leftovers_taken_elsewhere(&store_id, &running)
                    .await;
            }
            self.stats
                .set_partitions(self.ready.borrow().keys().copied().collect());
            tokio::select! {
                changed = owned.changed() => {
                    if changed.is_err() {
                        tracing::error!(instance = %self.instance, "the group stopped; no partition is held any more");
                        self.ready.send_replace(BTreeMap::new());
                        for (_, run) in std::mem::take(&mut running) {
                            run.trigger.fire();
                        }
                        shutdown.requested().await;
                        return;
                    }
                }
                handover = self.handovers.next() => {
                    if let Some(handover) = handover {
                        let (partition, epoch) = (handover.partition(), handover.fence().epoch());
                        if let Some(run) = running.remove(&partition) {
                            self.stop(partition, run).await;
                        }
                        self.drain(partition).await;
                        self.ready.send_modify(|ready| {
                            ready.remove(&partition);
                        });
                        self.forget_queued(partition);
                        tracing::info!(partition, instance = %self.instance, "partition handed over");
                        handed.insert(partition, epoch);
                        handover.stopped();
                    }
                }
                _ = retry.tick() => {}
                _ = shutdown.requested() => break,
            }
        }
        // Orderly exit: finish every partition's batches, then hand them all over.
        let partitions: Vec<u32> = running.keys().copied().collect();
        for (partition, run) in std::mem::take(&mut running) {
            self.stop(partition, run).await;
        }
        for partition in partitions {
            self.drain(partition).await;
        }
        self.ready.send_replace(BTreeMap::new());
        let Manager {
            group,
            mut handovers,
            instance,
            ..
        } = self;
        let leave = group.leave();
        tokio::pin!(leave);
        let left = loop {
            tokio::select! {
                result = &mut leave => break result,
                handover = handovers.next() => match handover {
                    Some(handover) => handover.stopped(),
                    None => break (&mut leave).await,
                },
            }
        };
        match left {
            Ok(()) => tracing::info!(%instance, "left the group; partitions released"),
            Err(e) => {
                tracing::warn!(%instance, error = %e, "leaving the group failed; the leases expire on their own")
            }
        }
    }

    /// Starts what the member now holds and stops what it lost.
    async fn reconcile(
        &mut self,
        store_id: &str,
        owned: &BTreeMap<u32, Fence>,
        running: &mut BTreeMap<u32, Running>,
    ) {
        let lost: Vec<u32> = running
            .iter()
            .filter(|(p, run)| {
                !run.fence.is_valid()
                    || owned
                        .get(p)
                        .is_none_or(|f| !f.is_valid() || f.epoch() != run.fence.epoch())
            })
            .map(|(p, _)| *p)
            .collect();
        for partition in lost {
            self.ready.send_modify(|ready| {
                ready.remove(&partition);
            });
            if let Some(run) = running.remove(&partition) {
                tracing::warn!(partition, instance = %self.instance, "partition lost; its consumers stop");
                run.trigger.fire();
                // Their batches in flight see the fence fail and leave their messages
                // unacknowledged; nothing to wait for here.
            }
            // Its entries and the store's marker stay: a lease that lapsed (the group
            // bucket without a leader for a few seconds) is most often taken again by
            // this instance before anyone else, and the store, still the last owner,
            // then goes on from its own copy, changes not yet in the changelog included.
            // Restoring instead would drop those, and a query answered from them (stock
            // replenished) would be undone. Once another store takes the partition, the
            // leftover look drops them.
        }
        for (&partition, fence) in owned {
            if running.contains_key(&partition) || !fence.is_valid() {
                continue;
            }
            match self.take_over(store_id, partition, fence).await {
                Ok(held) => {
                    let generation = held.generation;
                    self.ready.send_modify(|ready| {
                        ready.insert(partition, held);
                    });
                    running.insert(partition, self.start(partition, fence, generation));
                    self.released.remove(&partition);
                }
                // Handed on while we were taking it: the group moved on, nothing failed.
                Err(RuntimeError::Fenced(e)) => {
                    tracing::debug!(partition, error = %e, "partition moved on during its takeover");
                }
                Err(e) => {
                    self.stats
                        .record_error(format!("taking over partition {partition}: {e}"));
                    tracing::warn!(partition, error = %e, "taking over the partition failed; retrying");
                }
            }
        }
    }

    /// Writes our epoch record and, unless this store was the last owner, replaces the
    /// local copy of the partition with the changelog's records.
    async fn take_over(
        &self,
        store_id: &str,
        partition: u32,
        fence: &Fence,
    ) -> Result<ReadyPartition, RuntimeError> {
        let generation = self.store.reopens();
        let last = self.bucket.last_epoch_at(partition).await?;
        // Current only if the last epoch record is this store's *and* this store finished
        // a takeover at exactly that record: a takeover that wrote its epoch record and
        // then failed to restore must restore on its next try.
        let marker = self.store.partition_marker(partition)?;
        let current = last
            .as_ref()
            .is_some_and(|(seq, e)| e.store_id == store_id && marker == Some(*seq));
        let last = last.map(|(_, e)| e);
        fence.check()?;
        // The epoch record first: from here on the server refuses any cut a former owner
        // still had in flight, so what we read next is final.
        let owner = EpochRecord::new(store_id, &self.instance, fence.epoch());
        let epoch_seq = self.bucket.write_epoch(partition, &owner).await?;
        let held = ReadyPartition::new(fence.clone(), owner, epoch_seq).at_generation(generation);
        if current {
            self.store.set_partition_marker(partition, epoch_seq)?;
            tracing::info!(partition, instance = %self.instance, "partition taken; this store owned it last, nothing to restore");
            return Ok(held);
        }
        let started = std::time::Instant::now();
        let changelog = Arc::new(self.bucket.read_partition(partition, epoch_seq).await?);
        let (store, entities, read) =
            (self.store.clone(), self.entities.clone(), changelog.clone());
        let restored = tokio::task::spawn_blocking(move || {
            replace_partition(&store, entities.as_ref(), partition, &read)
        })
        .await??;
        // Versions only a cut holds: written on their keys now, under our epoch, with a
        // compaction mark over every cut read, because our own cuts go into the same
        // slots. The last owner stored them but died (or lost the partition) before
        // compacting them; the entries that would have redone them were dropped with the
        // partition. The cluster chaos run lost an order that way.
        let from_cut = self
            .bucket
            .settle_restore(partition, &held, &changelog)
            .await?;
        self.store.set_partition_marker(partition, epoch_seq)?;
        tracing::info!(
            partition,
            instance = %self.instance,
            restored,
            previous_owner = last.as_ref().map(|e| e.instance.as_str()).unwrap_or("none"),
            from_cut,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition taken; restored from the changelog"
        );
        Ok(held)
    }

    /// Starts the partition's consumers, for a takeover at the store's reopen count
    /// `generation`.
    fn start(&self, partition: u32, fence: &Fence, generation: u64) -> Running {
        let copy = CopyGeneration::new(generation);
        let (trigger, shutdown) = Shutdown::new();
        let which = self.per_partition_consumers.then_some(partition);
        let tasks = self
            .consumers
            .iter()
            .map(|spawn| spawn(which, Some(fence.clone()), copy.clone(), shutdown.clone()))
            .collect();
        Running {
            fence: fence.clone(),
            trigger,
            tasks,
            copy,
        }
    }

    /// Drops the entries this store holds for partitions it does not run (left by a
    /// lapsed lease, or by the previous run of the process) once the partition's last
    /// epoch record is another store's: that owner restored from the changelog and
    /// redoes their work (their inputs were never acked), and this store restores too
    /// if it takes the partition again. Until then they may still be this store's to
    /// publish, so they stay. Left alone they would wait for good, and count in the
    /// outbox backlog that operators and `shop audit` read.
    async fn drop_leftovers_taken_elsewhere(
        &mut self,
        store_id: &str,
        running: &BTreeMap<u32, Running>,
    ) {
        // One pass over the outbox, and none while every partition runs here.
        if running.len() >= self.group.partitions() as usize {
            return;
        }
        let waiting = match self.store.outbox_partitions() {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the outbox");
                return;
            }
        };
        for partition in waiting {
            if running.contains_key(&partition) {
                continue;
            }
            match self.bucket.last_epoch_at(partition).await {
                Ok(Some((_, last))) if last.store_id != store_id => {
                    tracing::info!(
                        partition,
                        owner = %last.instance,
                        "another store owns the partition now; this store's entries for it are dropped"
                    );
                    self.forget_queued(partition);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(partition, error = %e, "cannot read the partition's epoch record")
                }
            }
        }
    }

    /// Waits (within the grace) until the relay has published every outbox entry of the
    /// partition, so its next owner restores records that include them all.
    async fn drain(&self, partition: u32) {
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            match self.store.outbox_entries_of(partition) {
                Ok(0) => {
                    self.compact(partition, deadline).await;
                    return;
                }
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(left) => {
                    tracing::warn!(partition, left, "outbox entries of a handed-over partition left; its next owner redoes that work");
                    return;
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot read the outbox");
                    return;
                }
            }
        }
    }

    /// Writes the partition's newest versions on their keys before it is handed over (within
    /// the grace), so its next owner restores them from the keys instead of writing them
    /// itself. Not needed for safety: the restore reads the cut log too.
    async fn compact(&self, partition: u32, deadline: tokio::time::Instant) {
        let Some(held) = self.ready.borrow().get(&partition).cloned() else {
            return;
        };
        if held.fence.check().is_err() {
            return;
        }
        match tokio::time::timeout_at(deadline, self.bucket.compact(partition, &held)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(partition, error = %e, "compaction before the handover failed; the next owner writes the log's versions")
            }
            Err(_) => tracing::debug!(partition, "compaction before the handover ran out of grace"),
        }
    }

    /// Drops what this store still queued for a partition it no longer holds, and makes
    /// its next takeover restore from the changelog. Safe: an entry leaves the outbox only
    /// once its cut is stored, so these were never in the changelog, their inputs were
    /// never acked, and the partition's next owner redoes that work.
    fn forget_queued(&mut self, partition: u32) {
        self.released.insert(partition);
        let cleared = self
            .store
            .set_partition_marker(partition, 0)
            .and_then(|()| self.store.outbox_purge_partition(partition));
        match cleared {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(
                partition,
                dropped,
                "outbox entries of a partition no longer held dropped; its owner redoes them"
            ),
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot drop the entries of a partition no longer held")
            }
        }
    }

    /// Stops a partition's consumers and waits (within the grace) for their batches.
    /// The store was reopened after a storage fault: what it had not flushed is gone,
    /// and some of it may be in the changelog, acked. Every partition is taken again,
    /// which restores it (the reopen made every takeover marker stale), while its
    /// consumers wait: they apply nothing to a copy older than the reopen, and nothing
    /// while the restore holds the copy's write lock. They keep running, so their pull
    /// requests stay read. A partition whose restore fails is stopped, and taken again
    /// like a new one.
    async fn restore_after_reopen(&self, store_id: &str, running: &mut BTreeMap<u32, Running>) {
        let partitions: Vec<u32> = running.keys().copied().collect();
        for partition in partitions {
            let Some(run) = running.get(&partition) else {
                continue;
            };
            self.ready.send_modify(|ready| {
                ready.remove(&partition);
            });
            let copy = run.copy.clone();
            let fence = run.fence.clone();
            let mut current = copy.write().await;
            match self.take_over(store_id, partition, &fence).await {
                Ok(held) => {
                    *current = held.generation;
                    drop(current);
                    self.ready.send_modify(|ready| {
                        ready.insert(partition, held);
                    });
                    tracing::warn!(partition, instance = %self.instance, "the store was reopened; the partition was restored from the changelog");
                }
                Err(e) => {
                    drop(current);
                    tracing::warn!(partition, error = %e, "restoring the partition after a reopen failed; it is taken again");
                    if let Some(run) = running.remove(&partition) {
                        self.stop(partition, run).await;
                    }
                }
            }
        }
    }

    async fn stop(&self, partition: u32, run: Running) {
        run.trigger.fire();
        let deadline = tokio::time::Instant::now() + self.grace;
        for task in run.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!(partition, "a consumer did not stop within the grace period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn held(pairs: &[(u32, u64)]) -> BTreeMap<u32, Fence> {
        let deadline = Instant::now() + Duration::from_secs(3);
        pairs
            .iter()
            .map(|&(p, epoch)| (p, Fence::new(p, epoch, epoch, deadline)))
            .collect()
    }

    #[tokio::test]
    async fn a_handed_over_lease_waits_for_its_release_but_a_new_lease_is_worked_on() {
        let mut handed = BTreeMap::from([(13, 40)]);

        // Not released yet: the old lease is not taken again.
        let current = workable(&held(&[(2, 7), (13, 40)]), &mut handed);
        assert_eq!(current.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(handed, BTreeMap::from([(13, 40)]));

        // Released and acquired again before this look: another epoch, a new takeover.
        let current = workable(&held(&[(2, 7), (13, 52)]), &mut handed);
        assert_eq!(current.keys().copied().collect::<Vec<_>>(), vec![2, 13]);
        assert!(handed.is_empty(), "the handover is over: {handed:?}");

        // Released: forgotten, and a later acquisition is worked on.
        let mut handed = BTreeMap::from([(13, 40)]);
        let current = workable(&held(&[(2, 7)]), &mut handed);
        assert_eq!(current.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert!(handed.is_empty());
    }
}
