//! Where the bench's two phases run: the single `nats-server` of `shop-lab bench`, or,
//! with `--cluster`, a fresh three-node JetStream cluster (`shop_harness::NatsCluster`).
//!
//! On the cluster every stream and KV bucket is kept on all three nodes (R3) in both
//! phases: the bench declares the event streams R3 before the baseline, so the raw chain
//! pays the same replication the services do (their consumers inherit the stream's
//! replicas), and the services run with `--replicas 3`, which creates their KV buckets R3
//! too. The nodes' CPU is measured as one `nats-server` figure: the three processes summed
//! ([`crate::procstat::CpuSnapshot::since`] adds up probes that share a label).

use async_nats::jetstream::Context;
use futures::TryStreamExt;
use shop_events::subjects::DEFAULT_EVENT_MAX_AGE;
use shop_harness::{NatsCluster, NatsServer, ServerOptions, CLUSTER_SIZE};
use shop_runtime::streams::StreamDecl;

use crate::procstat::{find_child, find_children, Probe};
use crate::report::Topology;
use crate::BenchError;

/// Copies of every stream and KV bucket on the cluster: one per node.
pub const REPLICAS: usize = CLUSTER_SIZE;

/// The label the nodes' CPU is reported under, summed, as the single server's is.
const NATS_LABEL: &str = "nats-server";

/// Each node's file store. Every node keeps a replica of everything, and the harness's
/// 1 GB for tests is less than the baseline's minutes at full speed write (the single
/// server of `make bench` gets 32 GB for the same reason); three nodes at 16 GB stay
/// within this machine's free disk, and the run uses a fraction of it.
const MAX_FILE_STORE_PER_NODE: &str = "16GB";

/// The running broker of one bench run; dropping it stops every node and deletes the stores.
pub enum Broker {
    Single {
        server: NatsServer,
        // Declared after the server, so the store is removed once the server is gone.
        _store: tempfile::TempDir,
    },
    Cluster(NatsCluster),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broker::Single { server, .. } => f.debug_tuple("Single").field(server).finish(),
            Broker::Cluster(cluster) => f.debug_tuple("Cluster").field(cluster).finish(),
        }
    }
}

/// The shop's stream declarations, each kept on [`REPLICAS`] nodes, as the services
/// declare them with `--replicas 3`.
pub fn replicated_stream_decls() -> Vec<StreamDecl> {
    shop_shell::stream_decls(DEFAULT_EVENT_MAX_AGE)
        .into_iter()
        .map(|decl| decl.with_replicas(REPLICAS))
        .collect()
}

/// Fails on the first stream (or `KV_…` bucket stream) not kept on [`REPLICAS`] nodes.
pub fn check_replicas(streams: &[(String, usize)]) -> Result<(), BenchError> {
    match streams.iter().find(|(_, replicas)| *replicas != REPLICAS) {
        Some((stream, replicas)) => Err(BenchError::NotReplicated {
            stream: stream.clone(),
            replicas: *replicas,
            wanted: REPLICAS,
        }),
        None => Ok(()),
    }
}

impl Broker {
    /// A fresh single server with a store of its own (`store_config` writes its
    /// `jetstream` block), or a fresh three-node cluster.
    pub async fn start(
        cluster: bool,
        store_config: impl FnOnce(&std::path::Path) -> String,
    ) -> Result<Broker, BenchError> {
        if cluster {
            let cluster = NatsCluster::start_with_max_file_store(MAX_FILE_STORE_PER_NODE).await?;
            tracing::info!(url = %cluster.url(), "a three-node cluster formed");
            return Ok(Broker::Cluster(cluster));
        }
        let store = tempfile::Builder::new()
            .prefix("shop-bench-js-")
            .tempdir()
            .map_err(|e| BenchError::io("creating the JetStream store directory", e))?;
        let server = NatsServer::start_with(
            ServerOptions::default().extra_config(store_config(store.path())),
        )
        .await?;
        Ok(Broker::Single {
            server,
            _store: store,
        })
    }

    /// The client URL: the server's, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Broker::Single { server, .. } => server.url(),
            Broker::Cluster(cluster) => cluster.url(),
        }
    }

    /// How many copies the services keep of each stream and bucket (`--replicas`).
    pub fn replicas(&self) -> usize {
        match self {
            Broker::Single { .. } => 1,
            Broker::Cluster(_) => REPLICAS,
        }
    }

    /// Declares the event streams before the baseline: as the harness does on one server,
    /// R3 on the cluster, and waits until each has a leader and current followers.
    pub async fn declare_streams(&self, js: &Context) -> Result<(), BenchError> {
        match self {
            Broker::Single { .. } => Ok(shop_harness::declare_streams(js).await?),
            Broker::Cluster(cluster) => {
                shop_runtime::streams::declare_streams(js, &replicated_stream_decls())
                    .await
                    .map_err(|e| BenchError::js("declaring the streams with three replicas", e))?;
                cluster.wait_every_stream_ready().await?;
                Ok(())
            }
        }
    }

    /// The broker's processes, under one label: the server, or the three nodes (summed
    /// in the report).
    pub fn nats_probes(&self) -> Result<Vec<Probe>, BenchError> {
        match self {
            Broker::Single { .. } => Ok(vec![Probe::new(NATS_LABEL, find_child("nats-server")?)]),
            Broker::Cluster(_) => {
                let pids = find_children("nats-server");
                if pids.len() != CLUSTER_SIZE {
                    return Err(BenchError::Proc(format!(
                        "expected the cluster's {CLUSTER_SIZE} nats-server nodes among the \
                         bench's children, found {} ({pids:?})",
                        pids.len()
                    )));
                }
                Ok(pids
                    .into_iter()
                    .map(|pid| Probe::new(NATS_LABEL, pid))
                    .collect())
            }
        }
    }

    /// After the services started: on the cluster, waits until every stream and KV bucket
    /// (theirs included) has a leader and current followers, so that no level is measured
    /// while a replica still catches up. Nothing to wait for on one server.
    pub async fn settle(&self) -> Result<(), BenchError> {
        if let Broker::Cluster(cluster) = self {
            let names = cluster.wait_every_stream_ready().await?;
            tracing::info!(streams = ?names, "every stream and bucket has a leader and current replicas");
        }
        Ok(())
    }

    /// What the report says about where it ran; on the cluster, after checking that every
    /// stream the run left behind (event streams and the services' `KV_…` buckets) is R3.
    pub async fn topology(&self, js: &Context) -> Result<Topology, BenchError> {
        let Broker::Cluster(_) = self else {
            return Ok(Topology::single());
        };
        let names: Vec<String> = js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| BenchError::js("listing the streams", e))?;
        let mut streams = Vec::with_capacity(names.len());
        for name in names {
            let info = js
                .get_stream(&name)
                .await
                .map_err(|e| BenchError::js(&format!("stream info of {name}"), e))?;
            let replicas = info.cached_info().config.num_replicas;
            streams.push((name, replicas));
        }
        streams.sort();
        check_replicas(&streams)?;
        Ok(Topology {
            nodes: CLUSTER_SIZE,
            replicas: REPLICAS,
            streams: streams.into_iter().map(|(name, _)| name).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_streams_are_the_services_streams_on_every_node() {
        let services = shop_shell::stream_decls(DEFAULT_EVENT_MAX_AGE);
        let replicated = replicated_stream_decls();
        let names = |decls: &[StreamDecl]| decls.iter().map(|d| d.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&replicated), names(&services));
        assert!(replicated.iter().all(|d| d.replicas == 3), "{replicated:?}");
    }

    #[test]
    fn a_stream_on_fewer_nodes_is_named() {
        let all = vec![("ORDERS".to_owned(), 3), ("KV_payment".to_owned(), 3)];
        assert!(check_replicas(&all).is_ok());
        let one_short = vec![("ORDERS".to_owned(), 3), ("KV_leases".to_owned(), 1)];
        match check_replicas(&one_short) {
            Err(BenchError::NotReplicated {
                stream, replicas, ..
            }) => assert_eq!((stream.as_str(), replicas), ("KV_leases", 1)),
            other => panic!("expected NotReplicated, got {other:?}"),
        }
    }
}
