//! The broker a chaos run shakes: one nats-server that is restarted, or a three-node
//! cluster (R3 streams) whose nodes are killed and frozen while orders flow.
//!
//! A cluster fault does not block the run: a killed node stays down and a frozen node
//! stays frozen for a while (longer than a Raft election timeout, so the survivors elect
//! a new leader), and [`Broker::tick`] brings it back when its time is up.

use std::time::{Duration, Instant};

use serde::Serialize;
use shop_events::subjects::{DEADLETTER_STREAM, EVENT_STREAMS};
use shop_harness::{HarnessError, NatsCluster, NatsServer, NodeId};

/// How long a killed node stays down before it is started again on its store.
const NODE_DOWN_FOR: Duration = Duration::from_secs(5);
/// How long a node stays frozen: past nats-server's longest election timeout (9 s), so its
/// peers must elect new leaders for what it led, and it wakes up to a changed cluster.
const NODE_FROZEN_FOR: Duration = Duration::from_secs(10);

/// Which broker the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Topology {
    /// One nats-server, R1 streams; a fault is a restart.
    #[default]
    Single,
    /// Three nodes, every stream and bucket on three replicas; a fault kills or freezes
    /// a node, the ORDERS leader first.
    Cluster,
}

impl Topology {
    /// The stream replicas the shop declares on this broker.
    pub fn replicas(self) -> usize {
        match self {
            Topology::Single => 1,
            Topology::Cluster => 3,
        }
    }
}

/// The broker faults of a run, for docs/RELIABILITY.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BrokerFaults {
    /// Restarts of the single server.
    pub restarts: u32,
    /// Cluster nodes killed with SIGKILL (each started again on its store later).
    pub node_kills: u32,
    /// Cluster nodes frozen with SIGSTOP past an election timeout (then thawed).
    pub node_freezes: u32,
    /// Stream leader changes seen across the faults (ORDERS, INVENTORY, PAYMENTS and
    /// DEADLETTER, compared before each fault and after its recovery).
    pub elections: u32,
}

impl BrokerFaults {
    /// Every fault, whatever its kind.
    pub fn total(&self) -> u32 {
        self.restarts + self.node_kills + self.node_freezes
    }
}

/// A node taken out, and when it comes back.
#[derive(Debug)]
pub(crate) struct Outage {
    node: NodeId,
    frozen: bool,
    until: Instant,
    /// Stream leaders before the fault, to count elections once it has healed.
    leaders: Vec<Option<NodeId>>,
}

/// The broker of one run.
pub(crate) enum Broker {
    Single(NatsServer),
    Cluster {
        cluster: NatsCluster,
        outage: Option<Outage>,
    },
}

/// Every stream the shop declares, whose leaders move when a node goes.
fn streams() -> impl Iterator<Item = &'static str> {
    EVENT_STREAMS
        .iter()
        .copied()
        .chain(std::iter::once(DEADLETTER_STREAM))
}

impl Broker {
    pub async fn start(topology: Topology) -> Result<Broker, HarnessError> {
        Ok(match topology {
            Topology::Single => Broker::Single(NatsServer::start().await?),
            Topology::Cluster => Broker::Cluster {
                cluster: NatsCluster::start().await?,
                outage: None,
            },
        })
    }

    /// The client URL (every node's, comma-separated, on a cluster).
    pub fn url(&self) -> String {
        match self {
            Broker::Single(server) => server.url(),
            Broker::Cluster { cluster, .. } => cluster.url(),
        }
    }

    /// Waits until every stream the shop declared has a leader and current replicas.
    pub async fn wait_ready(&self) -> Result<(), HarnessError> {
        if let Broker::Cluster { cluster, .. } = self {
            for stream in streams() {
                cluster.wait_stream_ready(stream).await?;
            }
        }
        Ok(())
    }

    /// One fault: the single server restarts; on a cluster, fault number `n` kills (even)
    /// or freezes (odd) the node that leads ORDERS, unless a node is still out.
    pub async fn fault(&mut self, n: u32, faults: &mut BrokerFaults) -> Result<(), HarnessError> {
        match self {
            Broker::Single(server) => {
                server.restart().await?;
                faults.restarts += 1;
            }
            Broker::Cluster { cluster, outage } => {
                if outage.is_some() {
                    return Ok(());
                }
                let leaders = leaders(cluster).await;
                let node = match cluster.leader_of(EVENT_STREAMS[0]).await {
                    Ok(node) => node,
                    Err(_) => NodeId::ALL[n as usize % NodeId::ALL.len()],
                };
                let frozen = n % 2 == 1;
                if frozen {
                    cluster.freeze(node).await?;
                    faults.node_freezes += 1;
                } else {
                    cluster.kill(node).await?;
                    faults.node_kills += 1;
                }
                *outage = Some(Outage {
                    node,
                    frozen,
                    until: Instant::now()
                        + if frozen {
                            NODE_FROZEN_FOR
                        } else {
                            NODE_DOWN_FOR
                        },
                    leaders,
                });
            }
        }
        Ok(())
    }

    /// Brings back a node whose time out is up; returns whether one came back.
    pub async fn tick(&mut self, faults: &mut BrokerFaults) -> Result<bool, HarnessError> {
        let Broker::Cluster { outage, .. } = self else {
            return Ok(false);
        };
        if outage.as_ref().is_some_and(|o| Instant::now() >= o.until) {
            self.heal(faults).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Brings back any node that is out now, whatever its time, and waits until every
    /// stream is ready again (the end of the storm).
    pub async fn heal(&mut self, faults: &mut BrokerFaults) -> Result<(), HarnessError> {
        let Broker::Cluster { cluster, outage } = self else {
            return Ok(());
        };
        if let Some(out) = outage.take() {
            if out.frozen {
                cluster.thaw(out.node).await?;
            } else {
                cluster.restart(out.node).await?;
            }
            for stream in streams() {
                cluster.wait_stream_ready(stream).await?;
            }
            let after = leaders(cluster).await;
            faults.elections += out
                .leaders
                .iter()
                .zip(&after)
                .filter(|(before, after)| before != after)
                .count() as u32;
        }
        Ok(())
    }
}

/// The leader of each stream, `None` where there is none at the moment.
async fn leaders(cluster: &NatsCluster) -> Vec<Option<NodeId>> {
    let mut out = Vec::new();
    for stream in streams() {
        out.push(cluster.leader_of(stream).await.ok());
    }
    out
}
