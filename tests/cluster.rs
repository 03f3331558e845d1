//! The shop on a three-node JetStream cluster: every stream on three replicas, the three
//! services in-process, and the ORDERS stream's leader killed while orders come in.

use std::time::Duration;

use async_nats::jetstream;
use shop_events::api::checkout::OrderStatus;
use shop_events::subjects::{DEADLETTER_STREAM, INVENTORY_STREAM, ORDERS_STREAM, PAYMENTS_STREAM};
use shop_events::{Envelope, Event};
use shop_harness::scenario::{order, replenish, wait_for_status, wait_for_stock, STOREFRONT};
use shop_harness::{
    connect, declare_streams, eventually, publish_event, NatsCluster, Shop, ShopConfig,
};
use shop_runtime::streams::{declare_streams as declare, Declared, StreamDecl};

const STREAMS: [&str; 4] = [
    ORDERS_STREAM,
    INVENTORY_STREAM,
    PAYMENTS_STREAM,
    DEADLETTER_STREAM,
];
const REPLICAS: usize = 3;
/// Longer than on one server: an election after a lost leader takes a few seconds.
const SETTLE: Duration = Duration::from_secs(40);

/// A cluster, the shop on it with every stream on three replicas, and a client.
async fn shop_on_a_cluster(
    cluster: &NatsCluster,
) -> anyhow::Result<(Shop, async_nats::Client, jetstream::Context)> {
    let shop = Shop::start(
        &cluster.url(),
        ShopConfig::in_process().stream_replicas(REPLICAS),
    )
    .await?;
    for stream in STREAMS {
        cluster.wait_stream_ready(stream).await?;
    }
    let client = connect(&cluster.url()).await?;
    let js = jetstream::new(client.clone());
    Ok((shop, client, js))
}

/// Places an order as a storefront that keeps trying until JetStream acknowledges it;
/// the event id is the `Nats-Msg-Id`, so a retry after a lost PubAck is not a second order.
async fn place_until_acked(js: &jetstream::Context, order_id: &str) -> anyhow::Result<()> {
    let placed = Envelope::new(
        STOREFRONT,
        Event::OrderPlaced(order(order_id, &[("sku-r3", 1, 500)], "tok_visa")),
    );
    eventually(SETTLE, &format!("a PubAck for {order_id}"), || async {
        publish_event(js, &placed).await.ok()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_order_is_confirmed_on_a_cluster_that_keeps_every_stream_on_three_nodes(
) -> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let (shop, client, js) = shop_on_a_cluster(&cluster).await?;
    for stream in STREAMS {
        let info = cluster.stream_info(stream).await?;
        assert_eq!(info.config.num_replicas, REPLICAS, "{stream}");
        let followers = info.cluster.map(|c| c.replicas.len());
        assert_eq!(followers, Some(REPLICAS - 1), "{stream}");
    }

    replenish(&js, "sku-r3", 5).await?;
    wait_for_stock(&client, "sku-r3", 5, 0, SETTLE).await?;
    place_until_acked(&js, "o-r3").await?;
    let view = wait_for_status(&client, "o-r3", OrderStatus::Confirmed, SETTLE).await?;
    assert_eq!(view.total, 500);
    shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn every_order_is_confirmed_when_the_orders_leader_is_killed_under_load() -> anyhow::Result<()>
{
    const ORDERS: usize = 50;
    const BEFORE_THE_KILL: usize = 10;
    let mut cluster = NatsCluster::start().await?;
    let (shop, client, js) = shop_on_a_cluster(&cluster).await?;
    replenish(&js, "sku-r3", ORDERS as u32).await?;
    wait_for_stock(&client, "sku-r3", ORDERS as i64, 0, SETTLE).await?;
    let ids: Vec<String> = (0..ORDERS).map(|n| format!("o-load-{n}")).collect();

    for id in &ids[..BEFORE_THE_KILL] {
        place_until_acked(&js, id).await?;
    }
    let leader = cluster.leader_of(ORDERS_STREAM).await?;
    cluster.kill(leader).await?;
    for id in &ids[BEFORE_THE_KILL..] {
        place_until_acked(&js, id).await?;
    }

    for id in &ids {
        wait_for_status(&client, id, OrderStatus::Confirmed, SETTLE).await?;
    }
    wait_for_stock(&client, "sku-r3", 0, 0, SETTLE).await?;

    cluster.restart(leader).await?;
    for stream in STREAMS {
        cluster.wait_stream_ready(stream).await?;
    }
    let info = cluster.stream_info(ORDERS_STREAM).await?;
    let rejoined = info
        .cluster
        .iter()
        .flat_map(|c| c.replicas.iter())
        .find(|peer| peer.name == cluster.server_name(leader))
        .map(|peer| peer.current);
    let new_leader = cluster.leader_of(ORDERS_STREAM).await?;
    assert!(
        new_leader == leader || rejoined == Some(true),
        "the restarted node is neither leading nor current: {info:?}"
    );
    shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn streams_declared_with_one_replica_are_rescaled_to_the_shops_three() -> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let js = jetstream::new(connect(&cluster.url()).await?);
    // The harness declares single-replica streams, as a shop started without --replicas would.
    declare_streams(&js).await?;
    assert_eq!(
        cluster
            .stream_info(ORDERS_STREAM)
            .await?
            .config
            .num_replicas,
        1
    );

    let (shop, _client, _js) = shop_on_a_cluster(&cluster).await?;
    for stream in STREAMS {
        let info = cluster.stream_info(stream).await?;
        assert_eq!(info.config.num_replicas, REPLICAS, "{stream}");
    }
    shop.shutdown().await?;

    // What each declaration reports: created, rescaled, or only updated.
    let decl = StreamDecl::new(
        "RESCALE_CHECK",
        &["rescale.check.>".to_owned()],
        "replica changes",
        Duration::from_secs(60),
        Duration::from_secs(10),
    );
    let first = declare(&js, std::slice::from_ref(&decl)).await?;
    let rescaled = declare(&js, &[decl.clone().with_replicas(REPLICAS)]).await?;
    let again = declare(&js, &[decl.with_replicas(REPLICAS)]).await?;
    assert_eq!(first, vec![Declared::Created]);
    assert_eq!(
        rescaled,
        vec![Declared::Rescaled {
            from: 1,
            to: REPLICAS
        }]
    );
    assert_eq!(again, vec![Declared::Updated]);
    Ok(())
}
