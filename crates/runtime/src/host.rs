//! Hosts one service: connect, declare streams, open the store, run consumers,
//! workers, the relay and the micro service, then shut down in the right order.
//!
//! [`Extension`]s add endpoints every service serves beside its own API (the
//! shell's dead-letter book is one), so the runtime serves them without knowing
//! what they are called.
//!
//! A partitioned service ([`Partitioning`]) joins its group, and its consumers run per
//! partition under the [`crate::partitions::Manager`], only while the partition is held.
//!
//! Graceful shutdown: stop pulling and finish the batches in flight (a partitioned
//! service then hands its partitions over and leaves its group), stop the workers,
//! drain the outbox, flush sled, drain the NATS connection.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::changelog::{Changelog, Entities, ReadyPartition, StateBucket};
use crate::commit::Committer;
use crate::connect::connect_reporting;
use crate::consumer::{run_consumer, ConsumerCtx, ConsumerSpec, EventHandler};
use crate::group::{Group, GroupConfig, Handovers};
use crate::micro::{serve_api, serve_boxed, start_service, Api, BoxedEndpoint, MicroSpec};
use crate::outbox::{run_relay, RelayWaker};
use crate::partitions::{Manager, SpawnConsumer};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;
use crate::store::{Store, TreeId};
use crate::streams::{declare_streams_waiting, StreamDecl};
use crate::RuntimeError;

/// What a host needs to know about its service.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub service: String,
    pub nats: crate::connect::NatsConfig,
    /// The service's own sled directory.
    pub data_dir: PathBuf,
    pub streams: Vec<StreamDecl>,
    pub trees: Vec<&'static str>,
    pub extensions: Vec<Extension>,
    /// Set for a service that runs as a group of instances owning partitions.
    pub partitioning: Option<Partitioning>,
}

/// How a service shares its work among instances: see docs/architecture.md,
/// "Partitions and ownership".
#[derive(Clone)]
pub struct Partitioning {
    /// The KV bucket of group membership and leases.
    pub groups_bucket: String,
    /// The KV bucket of this service's changelog.
    pub state_bucket: String,
    /// This instance's name, unique within the service.
    pub instance: String,
    /// The partition count, which the streams' subject transform fixes.
    pub partitions: u32,
    pub lease_ttl: Duration,
    /// Consumers per partition, or one set over every partition (a single-partition
    /// service running active/standby).
    pub per_partition_consumers: bool,
    /// Copies of the state bucket (as of the streams).
    pub replicas: usize,
    pub entities: Arc<dyn Entities>,
}

impl std::fmt::Debug for Partitioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitioning")
            .field("groups_bucket", &self.groups_bucket)
            .field("state_bucket", &self.state_bucket)
            .field("instance", &self.instance)
            .field("partitions", &self.partitions)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// A partitioned host's parts until [`Host::serve`] starts its manager.
struct Partitioned {
    group: Group,
    handovers: Handovers,
    bucket: StateBucket,
    entities: Arc<dyn Entities>,
    instance: String,
    per_partition_consumers: bool,
    ready_tx: watch::Sender<BTreeMap<u32, ReadyPartition>>,
    ready: watch::Receiver<BTreeMap<u32, ReadyPartition>>,
    consumers: Vec<SpawnConsumer>,
}

/// Endpoints served beside a service's own API, with a sled tree of their own for
/// what they record.
#[derive(Debug, Clone, Copy)]
pub struct Extension {
    /// The tree, opened next to the service's trees but not among [`Host::trees`].
    pub tree: &'static str,
    /// Builds the endpoints once the host is up.
    pub endpoints: fn(&ExtensionCtx) -> Vec<BoxedEndpoint>,
}

/// What an extension's endpoints may use.
#[derive(Debug, Clone)]
pub struct ExtensionCtx {
    pub service: String,
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    /// The handle of [`Extension::tree`].
    pub tree: TreeId,
}

/// A running service's shared parts.
pub struct Host {
    pub service: String,
    pub client: Client,
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    /// Handles of the trees named in [`HostConfig::trees`], in order.
    pub trees: Vec<TreeId>,
    pub stats: Arc<Stats>,
    pub waker: RelayWaker,
    /// Commits the consumers' batches together ([`crate::commit`]).
    committer: Committer,
    /// The extensions' endpoints, served by [`Host::serve_api`].
    extension_endpoints: Vec<BoxedEndpoint>,
    shutdown: Shutdown,
    // Workers and consumers stop on the service's shutdown; the relay stops last, on its own.
    inner_trigger: ShutdownTrigger,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    relay: Option<tokio::task::JoinHandle<()>>,
    partitioned: Option<Partitioned>,
}

impl Host {
    /// Connects (retrying while NATS is away), declares streams, opens the store, starts the relay.
    pub async fn start(config: HostConfig, shutdown: Shutdown) -> Result<Host, RuntimeError> {
        // Before connecting, so the server's permission refusals count in STATS.
        let stats = Arc::new(Stats::default());
        let client = connect_reporting(
            &config.nats,
            &config.service,
            &shutdown,
            Some(stats.denial_sink()),
        )
        .await?;
        let js = jetstream::new(client.clone());
        declare_streams_waiting(&js, &config.streams, &shutdown).await?;
        let mut names = config.trees.clone();
        names.extend(config.extensions.iter().map(|e| e.tree));
        let (store, mut trees) = Store::open(&config.data_dir, &names)?;
        let extension_trees = trees.split_off(config.trees.len());
        let store = Arc::new(store);
        let waker = RelayWaker::default();
        let (inner_trigger, inner) = Shutdown::new();
        let partitioned = match &config.partitioning {
            None => None,
            Some(p) => Some(join_group(&js, &config.service, &store, p).await?),
        };
        let changelog = partitioned.as_ref().map(|p| Changelog {
            bucket: p.bucket.clone(),
            entities: p.entities.clone(),
            ready: p.ready.clone(),
        });
        let relay = tokio::spawn(run_relay(
            js.clone(),
            store.clone(),
            waker.clone(),
            stats.clone(),
            changelog,
            inner.clone(),
        ));
        tokio::spawn(prune_inbox_periodically(store.clone(), inner.clone()));
        tokio::spawn(watch_store(store.clone(), stats.clone(), inner));
        if store.outbox_len() > 0 {
            tracing::info!(backlog = store.outbox_len(), service = %config.service, "draining outbox left by the previous run");
            waker.wake();
        }
        let extension_endpoints = config
            .extensions
            .iter()
            .zip(extension_trees)
            .flat_map(|(extension, tree)| {
                (extension.endpoints)(&ExtensionCtx {
                    service: config.service.clone(),
                    js: js.clone(),
                    store: store.clone(),
                    tree,
                })
            })
            .collect();
        Ok(Host {
            service: config.service,
            client,
            js,
            committer: Committer::start(store.clone(), stats.clone()),
            store,
            trees,
            stats,
            waker,
            extension_endpoints,
            shutdown,
            inner_trigger,
            consumers: Vec::new(),
            workers: Vec::new(),
            relay: Some(relay),
            partitioned,
        })
    }

    /// The partitions this instance may work on now, for workers of a partitioned
    /// service (`None` for a service that is not partitioned: it owns everything).
    pub fn ready_partitions(&self) -> Option<watch::Receiver<BTreeMap<u32, ReadyPartition>>> {
        self.partitioned.as_ref().map(|p| p.ready.clone())
    }

    /// The changelog bucket, for reads of entities another instance owns.
    pub fn state_bucket(&self) -> Option<StateBucket> {
        self.partitioned.as_ref().map(|p| p.bucket.clone())
    }

    /// The service-level shutdown, for workers that watch it themselves.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn consumer_ctx(&self) -> ConsumerCtx {
        ConsumerCtx {
            js: self.js.clone(),
            store: self.store.clone(),
            stats: self.stats.clone(),
            waker: self.waker.clone(),
            service: self.service.clone(),
            positions: self.state_bucket(),
            committer: self.committer.clone(),
        }
    }

    /// Runs a durable consumer until shutdown: `spec(None)` in a service that is not
    /// partitioned; in a partitioned one, `spec(Some(p))` for each partition `p` while it
    /// is held (or `spec(None)` while the single partition of an active/standby service is).
    pub fn consume<H: EventHandler>(
        &mut self,
        spec: impl Fn(Option<u32>) -> ConsumerSpec + Send + Sync + 'static,
        handler: Arc<H>,
    ) {
        let ctx = self.consumer_ctx();
        let spawn: SpawnConsumer = Arc::new(move |partition, fence, copy, shutdown| {
            let spec = spec(partition);
            tracing::debug!(
                service = %ctx.service,
                stream = %spec.stream,
                consumer = %spec.durable,
                filters = ?spec.filter_subjects,
                "listening"
            );
            tokio::spawn(run_consumer(
                ctx.clone(),
                spec,
                handler.clone(),
                fence,
                copy,
                shutdown,
            ))
        });
        match &mut self.partitioned {
            Some(p) => p.consumers.push(spawn),
            None => self.consumers.push(spawn(
                None,
                None,
                crate::store::CopyGeneration::new(self.store.reopens()),
                self.shutdown.clone(),
            )),
        }
    }

    /// Runs a background worker; it must return soon after the shutdown it was given fires.
    pub fn spawn_worker<F>(&mut self, worker: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.workers.push(tokio::spawn(worker));
    }

    /// Registers the micro service with `api`'s endpoints and the extensions' endpoints,
    /// then serves until shutdown and stops everything in order within `grace`.
    pub async fn serve_api<A: Api>(
        self,
        spec: MicroSpec,
        api: A,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let service =
            start_service(&self.client, &spec, self.stats.clone(), self.store.clone()).await?;
        let subjects: Vec<String> = api
            .endpoints()
            .iter()
            .map(|(_, subject)| (*subject).to_owned())
            .chain(self.extension_endpoints.iter().map(|e| e.subject.clone()))
            .collect();
        serve_api(&service, api, self.shutdown.clone()).await?;
        serve_boxed(&service, &self.extension_endpoints, self.shutdown.clone()).await?;
        tracing::info!(
            service = %self.service,
            endpoints = %subjects.join(", "),
            "ready"
        );
        let result = self.serve(grace).await;
        let _ = service.stop().await;
        result
    }

    /// Waits for shutdown, then stops everything in order within `grace`.
    pub async fn serve(mut self, grace: Duration) -> Result<(), RuntimeError> {
        if let Some(p) = self.partitioned.take() {
            let manager = Manager {
                group: p.group,
                handovers: p.handovers,
                bucket: p.bucket,
                entities: p.entities,
                store: self.store.clone(),
                stats: self.stats.clone(),
                instance: p.instance,
                per_partition_consumers: p.per_partition_consumers,
                consumers: p.consumers,
                ready: p.ready_tx,
                grace,
                released: Default::default(),
            };
            // First among the tasks stopped at shutdown: it finishes the partitions'
            // batches and hands them over before the relay stops.
            self.consumers
                .insert(0, tokio::spawn(manager.run(self.shutdown.clone())));
        }
        let mut shutdown = self.shutdown.clone();
        shutdown.requested().await;
        tracing::info!(service = %self.service, "shutting down");
        let deadline = tokio::time::Instant::now() + grace;
        for handle in self.consumers.drain(..).chain(self.workers.drain(..)) {
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!(service = %self.service, "a task did not stop within the grace period");
            }
        }
        self.inner_trigger.fire();
        if let Some(relay) = self.relay.take() {
            let _ = tokio::time::timeout_at(deadline + Duration::from_secs(5), relay).await;
        }
        // Everything flushed, and the store marked closed in order: its next start may
        // keep its copy of the partitions it owned last instead of restoring them.
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.mark_clean()).await??;
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await {
            tracing::debug!(error = %e, "drain timed out");
        }
        tracing::info!(service = %self.service, outbox = self.store.outbox_len(), "stopped");
        Ok(())
    }
}

/// How long processed event ids are remembered: one day longer than the streams keep events.
pub const INBOX_RETENTION: Duration = Duration::from_secs(8 * 24 * 60 * 60);

async fn prune_inbox_periodically(store: Arc<Store>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.requested() => return,
        }
        let store = store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            store.prune_inbox(INBOX_RETENTION.as_millis() as u64)
        })
        .await;
        match pruned {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "pruned old inbox entries"),
            Ok(Err(e)) => tracing::warn!(error = %e, "inbox pruning failed"),
            _ => {}
        }
    }
}

/// How often the store watch looks for a storage fault, and the longest pause between
/// its attempts to reopen the store.
const STORE_WATCH: Duration = Duration::from_millis(250);
const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How often a lasting storage fault is logged again.
const FAULT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Watches the store for a storage fault (a full disk): reports it in STATS and the log,
/// and reopens the store once the disk takes writes again. Meanwhile the consumers nak
/// and stop pulling, and the relay publishes nothing that is not on disk.
async fn watch_store(store: Arc<Store>, stats: Arc<Stats>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STORE_WATCH) => {}
            _ = shutdown.requested() => return,
        }
        let Some(fault) = store.fault() else { continue };
        stats.set_storage_fault(fault.error.clone(), fault.since_ms);
        stats.record_error(format!("storage fault: {}", fault.error));
        tracing::error!(
            error = %fault.error,
            "storage fault: nothing is applied or acked until the disk takes writes again; \
             messages are nak'ed and wait in their streams"
        );
        let started = std::time::Instant::now();
        let mut last_log = started;
        let mut pause = Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => return,
            }
            let reopening = store.clone();
            match tokio::task::spawn_blocking(move || reopening.reopen()).await {
                Ok(Ok(_)) => {
                    stats.clear_storage_fault();
                    tracing::info!(
                        faulted_for = ?started.elapsed(),
                        outbox = store.outbox_len(),
                        "storage recovered: the store was reopened; consuming again"
                    );
                    break;
                }
                Ok(Err(e)) if last_log.elapsed() >= FAULT_LOG_EVERY => {
                    last_log = std::time::Instant::now();
                    tracing::warn!(
                        error = %e,
                        faulted_for = ?started.elapsed(),
                        "storage still faulted; trying again"
                    );
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "reopening the store died; trying again"),
            }
            pause = (pause * 2).min(REOPEN_PAUSE_MAX);
        }
    }
}

/// Joins the service's group and opens its changelog bucket.
async fn join_group(
    js: &jetstream::Context,
    service: &str,
    store: &Arc<Store>,
    p: &Partitioning,
) -> Result<Partitioned, RuntimeError> {
    let entities = p.entities.clone();
    let partition_of = entities.clone();
    store.set_partitioning(Arc::new(move |entity: &str| partition_of.partition(entity)));
    let bucket = StateBucket::open(js, &p.state_bucket, p.replicas).await?;
    // The database's identity as the incarnation: a restart of this instance on this
    // database adopts the leases its previous run left, instead of waiting out the TTL.
    let store_id = store.store_id()?;
    let incarnation =
        u64::from_str_radix(&store_id, 16).unwrap_or_else(|_| shop_fnv(store_id.as_bytes()));
    let (group, handovers) = Group::join(
        js,
        GroupConfig::new(&p.groups_bucket, service, &p.instance)
            .partitions(p.partitions)
            .lease_ttl(p.lease_ttl)
            .incarnation(incarnation)
            .replicas(p.replicas),
    )
    .await?;
    if group.partitions() != p.partitions {
        return Err(RuntimeError::Restore(format!(
            "group {service} records {} partitions but the streams are partitioned {} ways; \
             delete the key {service}.partitions in bucket {} once no instance runs",
            group.partitions(),
            p.partitions,
            p.groups_bucket
        )));
    }
    let (ready_tx, ready) = watch::channel(BTreeMap::new());
    tracing::info!(service, instance = %p.instance, partitions = p.partitions, "joined the group");
    Ok(Partitioned {
        group,
        handovers,
        bucket,
        entities,
        instance: p.instance.clone(),
        per_partition_consumers: p.per_partition_consumers,
        ready_tx,
        ready,
        consumers: Vec::new(),
    })
}

/// A 64-bit FNV-1a, for a store identity that is not the hex this runtime writes.
fn shop_fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
