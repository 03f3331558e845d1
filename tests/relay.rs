//! The outbox relay against a real nats-server and a real sled store.

use async_nats::jetstream;
use shop_events::subjects::{event_subject, ORDERS_STREAM};
use shop_events::EventKind;
use shop_harness::{connect, declare_streams, stream_message_count, NatsServer};
use shop_runtime::outbox::drain_once;
use shop_runtime::outbox_entry::OutboxMessage;
use shop_runtime::stats::Stats;
use shop_runtime::store::Store;

fn message(n: u32) -> OutboxMessage {
    OutboxMessage {
        subject: event_subject(EventKind::OrderPlaced, &format!("relay-{n}")),
        msg_id: format!("relay-msg-{n}"),
        headers: Vec::new(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

#[tokio::test]
async fn the_relay_makes_an_entry_durable_before_it_publishes_it() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    declare_streams(&js).await?;
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(dir.path(), &[])?;

    // Committed by a worker that has not flushed yet: a crash now would lose it,
    // so it must not reach NATS in this state.
    store
        .apply(None, |tx| tx.publish(&message(1)))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(!store.all_durable());

    let published = drain_once(&js, &store, &Stats::default(), None).await?;
    assert_eq!(published, 1);
    assert!(
        store.all_durable(),
        "published only after the commit was flushed"
    );
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(stream_message_count(&js, ORDERS_STREAM).await?, 1);
    Ok(())
}

#[tokio::test]
async fn publishing_an_entry_again_after_a_crash_is_dropped_as_a_duplicate() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    declare_streams(&js).await?;
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(dir.path(), &[])?;
    let queue = |store: &Store| {
        store
            .apply(None, |tx| {
                tx.publish(&message(1))?;
                tx.publish(&message(2))
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    queue(&store)?;
    assert_eq!(drain_once(&js, &store, &Stats::default(), None).await?, 2);
    // As if the relay crashed after its PubAcks but before deleting the entries.
    queue(&store)?;
    assert_eq!(drain_once(&js, &store, &Stats::default(), None).await?, 2);
    assert_eq!(
        stream_message_count(&js, ORDERS_STREAM).await?,
        2,
        "Nats-Msg-Id dedupe"
    );
    Ok(())
}
