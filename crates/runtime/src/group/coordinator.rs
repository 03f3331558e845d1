//! A member's task: heartbeats, watches the group's members and leases, computes the
//! target assignment, hands over what it must give up (after the owner code confirms
//! it stopped), takes what it should own, and publishes the fences it holds.
//!
//! Everything runs in one task, one step at a time, so the view, the leases held and
//! the published fences never disagree mid-step. Faults of the broker are logged and
//! retried within a second (not a whole renewal interval later), so a renewal lands as
//! soon as the bucket answers again; a lease whose renewal keeps failing lapses on its
//! own through its fence's deadline, so no error here can make two owners.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::assign::assign;
use super::bucket::{is_live, GroupBucket};
use super::error::GroupError;
use super::fence::Fence;
use super::keys::Key;
use super::lease::{Acquire, Holder, Renewal, SeenLease, Written};
use super::GroupConfig;
use crate::patience::patiently;

/// A member of a group. Dropping it stops the member on the spot, as a crash would:
/// its leases stay until their TTL. [`Group::leave`] is the orderly way out.
#[derive(Debug)]
pub struct Group {
    instance: String,
    partitions: u32,
    owned: watch::Receiver<BTreeMap<u32, Fence>>,
    leave: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GroupError>>>,
}

/// A request from the group to stop working on a partition, because it moves to
/// another member or this member leaves. Finish or abandon the partition's work in
/// flight, then call [`Handover::stopped`]; only then is the lease released.
///
/// Dropping the request counts as "stopped": the group must not wait for code that is
/// gone. The fence is revoked before the lease is released either way.
#[derive(Debug)]
pub struct Handover {
    fence: Fence,
    done: oneshot::Sender<()>,
}

impl Handover {
    pub fn partition(&self) -> u32 {
        self.fence.partition()
    }

    /// The fence being handed over (still valid until the release).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Confirms that nothing more will be done for the partition.
    pub fn stopped(self) {
        // The group gone means there is nobody left to release to: nothing to do.
        let _ = self.done.send(());
    }
}

/// The stream of [`Handover`] requests for the owner code. Dropping it lets the group
/// release partitions without asking.
#[derive(Debug)]
pub struct Handovers(mpsc::UnboundedReceiver<Handover>);

impl Handovers {
    /// The next request; `None` once the group has stopped.
    pub async fn next(&mut self) -> Option<Handover> {
        self.0.recv().await
    }
}

/// How soon a renewal, heartbeat or acquisition that failed on a broker fault is tried
/// again; the pause doubles up to [`RETRY_MAX`] while the faults go on.
///
/// On a cluster, the bucket answers "no responders" for as long as its stream has no
/// leader: when the node leading it dies, the others elect a new one 4–9 s after they
/// last heard from it (nats-server's Raft election timeout). Waiting for the next tick
/// (a third of the TTL) after that added up to a third of the TTL to the outage, which
/// is what let leases lapse across a node restart; retrying within a second lands the
/// renewal right after the election.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// How long a heartbeat may go unseen by our own watch before the watch counts as stalled
/// (at least this long, and two renewal intervals).
///
/// The watch is an ordered consumer: when it loses its server-side consumer it creates a
/// new one, retrying for as long as that fails, and meanwhile delivers nothing and
/// reports nothing. A member whose watch has stalled keeps a view in which a released
/// lease is still held, so it never takes a partition assigned to it (a cluster chaos run
/// left a partition unowned that way). Our own heartbeat is written every renewal; the
/// watch delivering it is the proof that the view is live.
const WATCH_ECHO_WITHIN: Duration = Duration::from_secs(5);

impl Group {
    /// Joins the group: opens (or creates) the bucket, records the partition count if
    /// none is recorded, writes this member's heartbeat and starts the member's task.
    ///
    /// The partition count in effect is [`Group::partitions`]: a recorded count wins
    /// over `config.partitions`, with a warning.
    pub async fn join(
        js: &jetstream::Context,
        config: GroupConfig,
    ) -> Result<(Group, Handovers), GroupError> {
        config.validate()?;
        let bucket = patiently("the group bucket", GroupError::is_transient, || {
            GroupBucket::open(
                js,
                &config.bucket,
                &config.group,
                config.lease_ttl,
                config.replicas,
            )
        })
        .await?;
        let partitions = patiently(
            "the group's partition count",
            GroupError::is_transient,
            || bucket.record_partitions(config.partitions),
        )
        .await?;
        if partitions != config.partitions {
            tracing::warn!(
                group = %config.group,
                configured = config.partitions,
                recorded = partitions,
                "the group's partition count was recorded earlier; using the recorded one"
            );
        }
        let holder = Holder {
            instance: config.instance.clone(),
            incarnation: config.incarnation.unwrap_or_else(rand::random),
            ttl: config.lease_ttl,
        };
        let heartbeat = patiently("the first heartbeat", GroupError::is_transient, || {
            holder.heartbeat(&bucket)
        })
        .await?;
        let watch = patiently("a watch on the group", GroupError::is_transient, || {
            bucket.watch()
        })
        .await?;
        let (owned_tx, owned) = watch::channel(BTreeMap::new());
        let (handovers_tx, handovers) = mpsc::unbounded_channel();
        let (leave_tx, leave_rx) = oneshot::channel();
        tracing::info!(group = %config.group, instance = %config.instance, partitions, "joined");
        let coordinator = Coordinator {
            bucket,
            holder,
            partitions,
            renew_every: config.renew_every,
            fence_life: config.lease_ttl.saturating_sub(config.safety_margin),
            members: BTreeSet::new(),
            leases: BTreeMap::new(),
            held: BTreeMap::new(),
            stopping: BTreeSet::new(),
            confirmations: FuturesUnordered::new(),
            owned: owned_tx,
            handovers: handovers_tx,
            heartbeat: Some(heartbeat),
            faults: Faults::default(),
            synced: false,
            echo: Echo::default(),
            leaving: false,
            leave_error: None,
        };
        let task = tokio::spawn(coordinator.run(Some(watch), leave_rx));
        Ok((
            Group {
                instance: config.instance,
                partitions,
                owned,
                leave: Some(leave_tx),
                task: Some(task),
            },
            Handovers(handovers),
        ))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The group's partition count (the recorded one).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partitions this member holds, each with its fence; changes when one is
    /// acquired, released or lost (not on renewals, which move the fences' deadlines).
    pub fn owned(&self) -> watch::Receiver<BTreeMap<u32, Fence>> {
        self.owned.clone()
    }

    /// The fence of `partition`, if this member holds it.
    pub fn fence(&self, partition: u32) -> Option<Fence> {
        self.owned.borrow().get(&partition).cloned()
    }

    /// Leaves in order: deletes the heartbeat so the others rebalance at once, hands
    /// every partition over (waiting for each [`Handover::stopped`]), releases the
    /// leases so their next owners need not wait for the TTL, then stops.
    ///
    /// Waits as long as the owner code takes to confirm; bound it with the service's
    /// shutdown grace. Errors are faults of the broker: the leases it could not release
    /// expire after their TTL.
    pub async fn leave(mut self) -> Result<(), GroupError> {
        if let Some(leave) = self.leave.take() {
            // The task gone already is what we wanted.
            let _ = leave.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The member's state, owned by its task.
struct Coordinator {
    bucket: GroupBucket,
    holder: Holder,
    partitions: u32,
    renew_every: Duration,
    /// How long after sending a successful renewal its fence passes: TTL − margin.
    fence_life: Duration,
    /// Live members other than (and perhaps including) us, from the watch.
    members: BTreeSet<String>,
    /// Live leases by partition, from the watch.
    leases: BTreeMap<u32, SeenLease>,
    /// The leases we hold.
    held: BTreeMap<u32, Fence>,
    /// Held partitions whose handover was requested and not yet confirmed.
    stopping: BTreeSet<u32>,
    confirmations: FuturesUnordered<BoxFuture<'static, u32>>,
    owned: watch::Sender<BTreeMap<u32, Fence>>,
    handovers: mpsc::UnboundedSender<Handover>,
    /// Our heartbeat's last revision; `None` once we departed.
    heartbeat: Option<u64>,
    /// What failed on a broker fault and is tried again before the next tick.
    faults: Faults,
    /// Whether the watch has delivered the bucket's current state; until then the view
    /// is partial and deciding from it could take a held partition for a free one.
    synced: bool,
    /// Whether the watch shows our heartbeats: see [`WATCH_ECHO_WITHIN`].
    echo: Echo,
    leaving: bool,
    /// The first fault while leaving, reported by [`Group::leave`].
    leave_error: Option<GroupError>,
}

/// The writes that failed on a broker fault, and when to try them again.
#[derive(Debug, Default)]
struct Faults {
    renewals: BTreeSet<u32>,
    heartbeat: bool,
    acquisitions: bool,
    /// When to retry; `None` while nothing failed.
    retry_at: Option<tokio::time::Instant>,
    /// The pause before the retry after `retry_at`.
    pause: Duration,
}

impl Faults {
    fn any(&self) -> bool {
        !self.renewals.is_empty() || self.heartbeat || self.acquisitions
    }

    /// Schedules the next retry while something failed; resets the backoff otherwise.
    fn schedule(&mut self) {
        if !self.any() {
            self.retry_at = None;
            self.pause = RETRY_FIRST;
        } else if self.retry_at.is_none() {
            self.pause = self.pause.clamp(RETRY_FIRST, RETRY_MAX);
            self.retry_at = Some(tokio::time::Instant::now() + self.pause);
            self.pause = (self.pause * 2).min(RETRY_MAX);
        }
    }
}

/// The oldest heartbeat written since the watch last delivered one (its revision, and
/// when it was written).
#[derive(Debug, Default)]
struct Echo(Option<(u64, tokio::time::Instant)>);

impl Echo {
    fn written(&mut self, revision: u64) {
        self.0
            .get_or_insert((revision, tokio::time::Instant::now()));
    }

    /// The watch delivered an entry at `revision`. It delivers in stream order, so
    /// anything at or past the heartbeat's revision means the heartbeat has gone by.
    fn seen(&mut self, revision: u64) {
        if self.0.is_some_and(|(written, _)| revision >= written) {
            self.0 = None;
        }
    }

    fn stalled(&self, within: Duration) -> bool {
        self.0.is_some_and(|(_, at)| at.elapsed() > within)
    }
}

/// Sleeps until `at`; pending forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which leases a renewal pass renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renew {
    /// Every lease held, and the heartbeat (the regular tick).
    All,
    /// Only what failed on a broker fault since it was last written.
    Failed,
}

impl Coordinator {
    async fn run(
        mut self,
        mut watch: Option<kv::Watch>,
        mut leave: oneshot::Receiver<()>,
    ) -> Result<(), GroupError> {
        let mut tick = tokio::time::interval(self.renew_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.renew_and_reconcile(Renew::All, &mut watch).await,
                _ = sleep_until(self.faults.retry_at) => {
                    self.faults.retry_at = None;
                    self.renew_and_reconcile(Renew::Failed, &mut watch).await;
                }
                entry = next_entry(&mut watch) => match entry {
                    Some(Ok(entry)) => {
                        self.observe(&entry);
                        self.reconcile().await;
                    }
                    broken => {
                        let error = broken.and_then(Result::err).map(|e| e.to_string());
                        tracing::warn!(instance = %self.holder.instance, ?error, "group watch ended; watching again on the next tick");
                        watch = None;
                    }
                },
                Some(partition) = self.confirmations.next(), if !self.confirmations.is_empty() => {
                    self.release(partition).await;
                    self.reconcile().await;
                }
                // Sent by `leave`, or the handle was dropped (then the task is aborted anyway).
                _ = &mut leave, if !self.leaving => {
                    self.depart().await;
                    self.reconcile().await;
                }
            }
            if self.leaving && self.held.is_empty() {
                tracing::info!(instance = %self.holder.instance, "left the group");
                return self.leave_error.map_or(Ok(()), Err);
            }
            self.faults.schedule();
        }
    }

    /// A fresh watch replays the current state, so the old view is dropped with it.
    /// A renewal round (every lease, or only those whose last renewal failed), then a
    /// new watch if the last one ended, then the assignment brought up to date.
    async fn renew_and_reconcile(&mut self, which: Renew, watch: &mut Option<kv::Watch>) {
        self.renew(which).await;
        if watch.is_some() && self.watch_stalled() {
            tracing::warn!(instance = %self.holder.instance, "the group watch has not shown our heartbeat; watching again");
            *watch = None;
        }
        if watch.is_none() {
            *watch = self.rewatch().await;
        }
        self.reconcile().await;
    }

    /// Whether a heartbeat written long enough ago has still not come back through the watch.
    fn watch_stalled(&self) -> bool {
        self.echo
            .stalled(WATCH_ECHO_WITHIN.max(self.renew_every * 2))
    }

    async fn rewatch(&mut self) -> Option<kv::Watch> {
        match self.bucket.watch().await {
            Ok(watch) => {
                self.members.clear();
                self.leases.clear();
                self.synced = false;
                // The new watch is judged by the heartbeats written from now on.
                self.echo = Echo::default();
                Some(watch)
            }
            Err(error) => {
                tracing::warn!(instance = %self.holder.instance, %error, "cannot watch the group");
                None
            }
        }
    }

    /// Heartbeat, then renew the held leases at once (one slow lease must not delay the
    /// others past their deadlines): all of them, or only those whose last write failed.
    async fn renew(&mut self, which: Renew) {
        if self.heartbeat.is_some() && (which == Renew::All || self.faults.heartbeat) {
            match self.holder.heartbeat(&self.bucket).await {
                Ok(revision) => {
                    self.heartbeat = Some(revision);
                    self.faults.heartbeat = false;
                    self.echo.written(revision);
                }
                Err(error) => {
                    // Logged once per outage, not at every retry.
                    if !std::mem::replace(&mut self.faults.heartbeat, true) {
                        tracing::warn!(instance = %self.holder.instance, %error, "heartbeat failed; retrying");
                    }
                }
            }
        }
        let (holder, bucket, failed) = (&self.holder, &self.bucket, &self.faults.renewals);
        let renewals = join_all(
            self.held
                .iter()
                .filter(|(partition, _)| which == Renew::All || failed.contains(partition))
                .map(|(&partition, fence)| async move {
                    let outcome = holder
                        .renew(bucket, partition, fence.epoch(), fence.revision())
                        .await;
                    (partition, outcome)
                }),
        )
        .await;
        for (partition, outcome) in renewals {
            let was_failing = self.faults.renewals.remove(&partition);
            match outcome {
                Ok(Renewal::Renewed(written)) => {
                    if let Some(fence) = self.held.get(&partition) {
                        fence.extend(written.revision, written.sent + self.fence_life);
                        if was_failing {
                            tracing::info!(instance = %self.holder.instance, partition, "renewed again after failures");
                        }
                    }
                }
                Ok(Renewal::Lost) => self.lose(partition, "its renewal found it taken or expired"),
                Err(error) => {
                    self.faults.renewals.insert(partition);
                    if !was_failing {
                        tracing::warn!(
                            instance = %self.holder.instance,
                            partition,
                            %error,
                            "renewal failed; retrying, and the fence lapses at its deadline unless a renewal lands"
                        );
                    }
                }
            }
        }
        self.publish_owned();
    }

    /// Folds one watched entry into the view; notices when a lease we hold moved on.
    fn observe(&mut self, entry: &kv::Entry) {
        if entry.seen_current {
            self.synced = true;
        }
        self.echo.seen(entry.revision);
        match self.bucket.keys.parse(&entry.key) {
            Some(Key::Member(name)) => {
                if is_live(entry) {
                    self.members.insert(name);
                } else {
                    self.members.remove(&name);
                }
            }
            Some(Key::Lease(partition)) if partition < self.partitions => {
                let seen = SeenLease::from_entry(entry).unwrap_or_else(|error| {
                    // Unreadable but live: treat it as someone's until it expires.
                    tracing::warn!(%error, "unreadable lease; waiting for it to expire");
                    Some(SeenLease {
                        owner: String::new(),
                        incarnation: 0,
                        epoch: entry.revision,
                        revision: entry.revision,
                    })
                });
                if let Some(fence) = self.held.get(&partition) {
                    // Older entries are replays; only a later write can tell us anything.
                    if entry.revision > fence.revision() {
                        match &seen {
                            Some(lease)
                                if lease.owner == self.holder.instance
                                    && lease.incarnation == self.holder.incarnation
                                    && lease.epoch == fence.epoch() =>
                            {
                                // Our own renewal, whose acknowledgement we may have lost.
                                fence.observe_revision(lease.revision);
                            }
                            _ => {
                                self.lose(partition, "the bucket shows a later owner or its expiry")
                            }
                        }
                    }
                }
                match seen {
                    Some(lease) => self.leases.insert(partition, lease),
                    None => self.leases.remove(&partition),
                };
            }
            _ => {}
        }
    }

    /// Computes the target and moves toward it: asks to hand over what is no longer
    /// ours, takes what is ours and free.
    async fn reconcile(&mut self) {
        // Set again below if an acquisition fails on a fault; nothing to take, nothing to retry.
        let acquisitions_failing = std::mem::take(&mut self.faults.acquisitions);
        if self.leaving {
            // Everything goes, whatever the view says: leaving must not wait for a
            // watch that is broken or still replaying.
            let all: Vec<u32> = self
                .held
                .keys()
                .filter(|p| !self.stopping.contains(p))
                .copied()
                .collect();
            for partition in all {
                self.request_handover(partition);
            }
            self.publish_owned();
            return;
        }
        if !self.synced {
            return;
        }
        let me = self.holder.instance.clone();
        let mut members = self.members.clone();
        members.insert(me.clone());
        let mut current: BTreeMap<u32, String> = self
            .leases
            .iter()
            .map(|(partition, lease)| (*partition, lease.owner.clone()))
            .collect();
        current.extend(self.held.keys().map(|partition| (*partition, me.clone())));
        let target = assign(self.partitions, &members, &current);

        let give_up: Vec<u32> = self
            .held
            .keys()
            .filter(|p| target.get(p) != Some(&me) && !self.stopping.contains(p))
            .copied()
            .collect();
        for partition in give_up {
            self.request_handover(partition);
        }
        let take: Vec<u32> = target
            .iter()
            .filter(|(p, owner)| **owner == me && !self.held.contains_key(p))
            .filter(|(p, _)| match self.leases.get(p) {
                None => true,
                // Ours from a lost acknowledgement; `acquire` adopts it.
                Some(lease) => lease.owner == me && lease.incarnation == self.holder.incarnation,
            })
            .map(|(p, _)| *p)
            .collect();
        if !take.is_empty() {
            self.acquire(take, acquisitions_failing).await;
        }
        self.publish_owned();
    }

    /// Tries to take each of `partitions`; `was_failing` says the last attempt failed on
    /// a broker fault (and was logged), so a continuing outage is not logged again.
    async fn acquire(&mut self, partitions: Vec<u32>, was_failing: bool) {
        let (holder, bucket) = (&self.holder, &self.bucket);
        let attempts =
            join_all(partitions.into_iter().map(|partition| async move {
                (partition, holder.acquire(bucket, partition).await)
            }))
            .await;
        for (partition, outcome) in attempts {
            match outcome {
                Ok(Acquire::Won(Written {
                    epoch,
                    revision,
                    sent,
                })) => {
                    tracing::info!(instance = %self.holder.instance, partition, epoch, "acquired");
                    let fence = Fence::new(partition, epoch, revision, sent + self.fence_life);
                    self.held.insert(partition, fence);
                }
                // Someone was faster; the watch will show who.
                Ok(Acquire::Taken) => {}
                Err(error) => {
                    if !was_failing && !self.faults.acquisitions {
                        tracing::warn!(
                            instance = %self.holder.instance,
                            partition,
                            %error,
                            "acquisition failed; retrying"
                        );
                    }
                    self.faults.acquisitions = true;
                }
            }
        }
    }

    fn request_handover(&mut self, partition: u32) {
        let Some(fence) = self.held.get(&partition) else {
            return;
        };
        tracing::info!(instance = %self.holder.instance, partition, "handing over");
        self.stopping.insert(partition);
        let (done, confirmed) = oneshot::channel();
        // Nobody listening drops the request, and with it `done`: confirmed at once.
        let _ = self.handovers.send(Handover {
            fence: fence.clone(),
            done,
        });
        self.confirmations.push(Box::pin(async move {
            let _ = confirmed.await;
            partition
        }));
    }

    /// The owner code stopped: fail the fence first, then free the lease.
    async fn release(&mut self, partition: u32) {
        self.stopping.remove(&partition);
        self.faults.renewals.remove(&partition);
        let Some(fence) = self.held.remove(&partition) else {
            return; // lost while stopping
        };
        fence.revoke();
        self.publish_owned();
        match self
            .holder
            .release(&self.bucket, partition, fence.revision())
            .await
        {
            Ok(true) => tracing::info!(instance = %self.holder.instance, partition, "released"),
            Ok(false) => {
                tracing::info!(instance = %self.holder.instance, partition, "was already lost")
            }
            Err(error) => {
                tracing::warn!(instance = %self.holder.instance, partition, %error, "release failed; the lease expires after its TTL");
                if self.leaving && self.leave_error.is_none() {
                    self.leave_error = Some(error);
                }
            }
        }
    }

    fn lose(&mut self, partition: u32, why: &str) {
        self.faults.renewals.remove(&partition);
        if let Some(fence) = self.held.remove(&partition) {
            fence.revoke();
            self.stopping.remove(&partition);
            tracing::warn!(instance = %self.holder.instance, partition, epoch = fence.epoch(), "lost the lease: {why}");
        }
    }

    /// Stops heartbeating and deletes our member key, so the others compute the target
    /// without us now and stand ready to take each partition as it is released.
    async fn depart(&mut self) {
        self.leaving = true;
        // No more heartbeats, so none to retry or to wait for.
        self.faults.heartbeat = false;
        self.echo = Echo::default();
        if let Some(revision) = self.heartbeat.take() {
            if let Err(error) = self.holder.depart(&self.bucket, revision).await {
                tracing::warn!(instance = %self.holder.instance, %error, "cannot delete the member key; it expires after its TTL");
                self.leave_error = Some(error);
            }
        }
    }

    fn publish_owned(&self) {
        self.owned.send_if_modified(|owned| {
            let same = owned.len() == self.held.len()
                && owned
                    .iter()
                    .zip(&self.held)
                    .all(|((p, a), (q, b))| p == q && a.epoch() == b.epoch());
            if !same {
                *owned = self.held.clone();
            }
            !same
        });
    }
}

/// The watch's next entry; pending forever while there is no watch.
async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_does_not_show_our_heartbeat_in_time_counts_as_stalled() {
        let within = Duration::from_secs(5);
        let mut echo = Echo::default();
        assert!(
            !echo.stalled(within),
            "nothing written, nothing to wait for"
        );

        echo.written(10);
        echo.written(14);
        tokio::time::advance(Duration::from_secs(4)).await;
        echo.seen(9);
        assert!(!echo.stalled(within), "not yet due");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(echo.stalled(within), "the first heartbeat never came back");

        // Anything past the oldest heartbeat shows the watch has gone by it.
        echo.seen(11);
        assert!(!echo.stalled(within));
        echo.written(20);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            echo.stalled(within),
            "judged from the oldest unseen heartbeat"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_retried_within_a_second_and_the_backoff_resets_once_it_lands() {
        let mut faults = Faults::default();
        faults.schedule();
        assert_eq!(faults.retry_at, None, "nothing failed, nothing to retry");

        faults.renewals.insert(3);
        for pause in [250, 500, 1000, 1000] {
            // The retry ran and failed again: the next one waits longer, at most a second.
            faults.retry_at = None;
            faults.schedule();
            let expected = Instant::now() + Duration::from_millis(pause);
            assert_eq!(faults.retry_at, Some(expected));
        }
        // A retry already due is not pushed back by another step of the task.
        faults.schedule();
        assert_eq!(
            faults.retry_at,
            Some(Instant::now() + Duration::from_millis(1000))
        );

        faults.renewals.clear();
        faults.schedule();
        assert_eq!(faults.retry_at, None, "everything landed");
        faults.heartbeat = true;
        faults.schedule();
        assert_eq!(faults.retry_at, Some(Instant::now() + RETRY_FIRST));
    }
}
