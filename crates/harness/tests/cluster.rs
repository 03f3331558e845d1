//! The cluster guard itself: three routed nodes form, a stream leader can be killed and
//! replaced, a node restarts with its store, and a frozen node answers nothing until thawed.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::ConnectOptions;
use shop_harness::{connect, eventually, HarnessError, NatsCluster, NodeId, Role};

const STREAM: &str = "HARNESS_CLUSTER";
const ELECTION: Duration = Duration::from_secs(20);

async fn replicated_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["harness.cluster.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Publishes and waits for the PubAck, retrying while the stream elects a leader.
async fn publish_acked(js: &jetstream::Context, n: usize) -> anyhow::Result<()> {
    let subject = format!("harness.cluster.{n}");
    eventually(ELECTION, &format!("a PubAck for {subject}"), || async {
        let ack = js.publish(subject.clone(), "x".into()).await.ok()?;
        ack.await.ok()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn three_nodes_form_a_cluster_with_one_url_per_node() -> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    assert_eq!(cluster.url().split(',').count(), 3);
    assert!(cluster.meta_leader().await.is_some(), "{cluster:?}");
    let names: Vec<&str> = NodeId::ALL
        .iter()
        .map(|n| cluster.server_name(*n))
        .collect();
    assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2]);
    for node in NodeId::ALL {
        assert!(cluster.node_url(node).starts_with("nats://127.0.0.1:"));
        assert!(cluster.is_running(node));
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_stream_leader_is_replaced_and_catches_up_after_a_restart() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let js = jetstream::new(connect(&cluster.url()).await?);
    replicated_stream(&js).await?;
    cluster.wait_stream_ready(STREAM).await?;
    let info = cluster.stream_info(STREAM).await?;
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.cluster.map(|c| c.replicas.len()), Some(2));
    for n in 0..5 {
        publish_acked(&js, n).await?;
    }

    let old = cluster.leader_of(STREAM).await?;
    cluster.kill(old).await?;
    assert!(!cluster.is_running(old));
    let new = eventually(ELECTION, "another node to lead the stream", || async {
        cluster.leader_of(STREAM).await.ok().filter(|n| *n != old)
    })
    .await?;
    assert_ne!(new, old);
    // Two of three nodes are a quorum: the stream still takes writes.
    for n in 5..10 {
        publish_acked(&js, n).await?;
    }

    cluster.restart(old).await?;
    assert!(cluster.is_running(old));
    cluster.wait_stream_ready(STREAM).await?;
    let info = cluster.stream_info(STREAM).await?;
    assert_eq!(info.state.messages, 10);
    Ok(())
}

#[tokio::test]
async fn a_frozen_node_answers_nothing_until_it_is_thawed() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let node = NodeId::ALL[2];
    let admin = cluster.nats_config(Role::Admin);
    let quick = || -> anyhow::Result<ConnectOptions> {
        Ok(admin
            .options()?
            .connection_timeout(Duration::from_millis(500))
            .ignore_discovered_servers())
    };

    cluster.freeze(node).await?;
    assert!(cluster.is_frozen(node) && !cluster.is_running(node));
    assert!(
        quick()?.connect(cluster.node_url(node)).await.is_err(),
        "a frozen node accepted a client"
    );
    // The other two keep a quorum and a meta leader.
    let leader = eventually(ELECTION, "a meta leader among the others", || async {
        cluster.meta_leader().await.filter(|l| *l != node)
    })
    .await?;
    assert_ne!(leader, node);

    cluster.thaw(node).await?;
    assert!(cluster.is_running(node));
    quick()?.connect(cluster.node_url(node)).await?;

    cluster.kill(node).await?;
    assert!(matches!(
        cluster.freeze(node).await,
        Err(HarnessError::ServerStopped)
    ));
    Ok(())
}
