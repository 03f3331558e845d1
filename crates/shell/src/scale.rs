//! Scaling a service out: the `--instance` and `--lease-ttl` flags, the runtime's
//! [`Partitioning`] built from the contract's names, and [`Ownership`], which tells a
//! service's workers and endpoints whether this instance holds an entity's partition and
//! reads the changelog for one it does not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use shop_events::partition::{state_bucket, GROUPS_BUCKET, PARTITIONS};
use shop_runtime::changelog::{Entities, ReadyPartition, StateBucket};
use shop_runtime::cli::parse_duration;
use shop_runtime::group::Fence;
use shop_runtime::host::{Host, Partitioning};
use shop_runtime::RuntimeError;
use tokio::sync::watch;

/// Flags of a service that can run as several instances.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// This instance's name, unique among the instances of its service (letters,
    /// digits, `-`, `_`). Instances of one service share its partitions. Default: the
    /// service's name, for a service run as one instance.
    #[arg(long, env = "SHOP_INSTANCE", global = true)]
    pub instance: Option<String>,
    /// How long a dead instance's partitions stay locked before the others take them
    /// over (whole seconds, at least 3).
    #[arg(long, env = "SHOP_LEASE_TTL", default_value = "10s", value_parser = parse_lease_ttl, global = true)]
    pub lease_ttl: Duration,
    /// A label for this deployment (a build number, a commit), reported as semver build
    /// metadata in the version `nats micro info` shows (`0.1.0+<label>`), so a rolling
    /// upgrade can be followed instance by instance. Letters, digits, `-` and `.`.
    #[arg(long, env = "SHOP_RELEASE", value_parser = parse_release, global = true)]
    pub release: Option<String>,
}

fn parse_release(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a release label (letters, digits, '-' and '.', at most 64)"
        ))
    }
}

impl Default for ScaleArgs {
    fn default() -> ScaleArgs {
        ScaleArgs {
            instance: None,
            lease_ttl: Duration::from_secs(10),
            release: None,
        }
    }
}

fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(3) || ttl.subsec_nanos() != 0 {
        return Err(format!(
            "`{text}` is not a whole number of seconds, 3 or more"
        ));
    }
    Ok(ttl)
}

impl ScaleArgs {
    /// The version a service reports: its crate version, plus `+<release>` when deployed
    /// with a release label.
    pub fn version(&self, crate_version: &str) -> String {
        match &self.release {
            Some(release) => format!("{crate_version}+{release}"),
            None => crate_version.to_owned(),
        }
    }

    /// The instance name in effect for `service`.
    pub fn instance_of(&self, service: &str) -> String {
        self.instance.clone().unwrap_or_else(|| service.to_owned())
    }
}

/// How a service scales: by partition (checkout, payment: consumers per partition) or
/// active/standby (inventory: one partition, one active instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Partitioned,
    ActiveStandby,
}

/// The runtime's partitioning for `service`, with the contract's bucket names.
pub fn partitioning(
    service: &str,
    scale: &ScaleArgs,
    replicas: usize,
    mode: Mode,
    entities: Arc<dyn Entities>,
) -> Partitioning {
    Partitioning {
        groups_bucket: GROUPS_BUCKET.to_owned(),
        state_bucket: state_bucket(service),
        instance: scale.instance_of(service),
        partitions: match mode {
            Mode::Partitioned => PARTITIONS,
            Mode::ActiveStandby => 1,
        },
        lease_ttl: scale.lease_ttl,
        per_partition_consumers: mode == Mode::Partitioned,
        replicas,
        entities,
    }
}

/// Whether this instance may work on an entity.
#[derive(Debug, Clone)]
pub enum Holding {
    /// The service is not partitioned: everything is this instance's.
    Everything,
    /// This instance holds the entity's partition; check the fence right before writing.
    Fenced(Fence),
    /// Another instance does (or nobody, for the moment).
    Elsewhere,
}

impl Holding {
    /// Whether the work may still be written now.
    pub fn still_held(&self) -> bool {
        match self {
            Holding::Everything => true,
            Holding::Fenced(fence) => fence.is_valid(),
            Holding::Elsewhere => false,
        }
    }
}

/// Which partitions this instance works on, and the changelog for the others.
#[derive(Clone)]
pub struct Ownership {
    ready: Option<watch::Receiver<BTreeMap<u32, ReadyPartition>>>,
    /// A fixed set of partitions held without a lease ([`Ownership::fixed`]); `None` when
    /// the group decides (or for an instance that owns everything).
    fixed: Option<Arc<std::collections::BTreeSet<u32>>>,
    bucket: Option<StateBucket>,
    partition_of: Arc<dyn Fn(&str) -> u32 + Send + Sync>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("held", &self.held())
            .finish()
    }
}

impl Ownership {
    /// The ownership of a started host; `entities` says which partition an entity is in.
    pub fn of(host: &Host, entities: Arc<dyn Entities>) -> Ownership {
        Ownership {
            ready: host.ready_partitions(),
            fixed: None,
            bucket: host.state_bucket(),
            partition_of: Arc::new(move |e: &str| entities.partition(e)),
        }
    }

    /// An instance that owns everything (a service that is not partitioned, or a test).
    pub fn everything() -> Ownership {
        Ownership {
            ready: None,
            fixed: None,
            bucket: None,
            partition_of: Arc::new(|_| 0),
        }
    }

    /// An instance that holds exactly `held`, with no lease and no fence: for the unit
    /// tests of workers that must pass over the entities of partitions held elsewhere.
    pub fn fixed(
        held: impl IntoIterator<Item = u32>,
        partition_of: impl Fn(&str) -> u32 + Send + Sync + 'static,
    ) -> Ownership {
        Ownership {
            ready: None,
            fixed: Some(Arc::new(held.into_iter().collect())),
            bucket: None,
            partition_of: Arc::new(partition_of),
        }
    }

    pub fn partition(&self, entity: &str) -> u32 {
        (self.partition_of)(entity)
    }

    /// Whether (and under which fence) this instance may work on `entity` now.
    pub fn holding(&self, entity: &str) -> Holding {
        if let Some(fixed) = &self.fixed {
            return if fixed.contains(&self.partition(entity)) {
                Holding::Everything
            } else {
                Holding::Elsewhere
            };
        }
        let Some(ready) = &self.ready else {
            return Holding::Everything;
        };
        match ready.borrow().get(&self.partition(entity)) {
            Some(r) if r.fence.is_valid() => Holding::Fenced(r.fence.clone()),
            _ => Holding::Elsewhere,
        }
    }

    /// Whether this instance works on `entity` now.
    pub fn holds(&self, entity: &str) -> bool {
        !matches!(self.holding(entity), Holding::Elsewhere)
    }

    /// The partitions held now (every one, for an instance that owns everything).
    pub fn held(&self) -> Option<Vec<u32>> {
        if let Some(fixed) = &self.fixed {
            return Some(fixed.iter().copied().collect());
        }
        self.ready
            .as_ref()
            .map(|r| r.borrow().keys().copied().collect())
    }

    /// The partitions held now under a fence that still passes, each with the epoch it is
    /// held at (0 for a fixed set); `None` for an instance that owns everything. A reader
    /// that takes this before and after its read, and finds a partition at the same epoch
    /// both times, read a copy no takeover replaced meanwhile.
    pub fn fenced_now(&self) -> Option<BTreeMap<u32, u64>> {
        if let Some(fixed) = &self.fixed {
            return Some(fixed.iter().map(|&p| (p, 0)).collect());
        }
        self.ready.as_ref().map(|r| {
            r.borrow()
                .iter()
                .filter(|(_, ready)| ready.fence.is_valid())
                .map(|(&p, ready)| (p, ready.fence.epoch()))
                .collect()
        })
    }

    /// Waits until the set of held partitions may have changed.
    pub async fn changed(&mut self) {
        match &mut self.ready {
            Some(ready) => {
                if ready.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Every entity of partition 0 whose name starts with `token.`, with its data, from
    /// the changelog (an active/standby service's standby reading the active's state).
    pub async fn remote_all(
        &self,
        token: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, RuntimeError> {
        let Some(bucket) = &self.bucket else {
            return Ok(Vec::new());
        };
        Ok(bucket
            .read_keys(0, Some(token))
            .await?
            .into_iter()
            .filter_map(|(entity, record)| record.data.map(|d| (entity, d)))
            .collect())
    }

    /// The changelog's data for `entity`, which another instance owns; `None` if the
    /// changelog holds nothing for it (or the service is not partitioned).
    pub async fn remote(&self, entity: &str) -> Result<Option<serde_json::Value>, RuntimeError> {
        let Some(bucket) = &self.bucket else {
            return Ok(None);
        };
        Ok(bucket
            .record(entity, self.partition(entity))
            .await?
            .and_then(|r| r.data))
    }
}
