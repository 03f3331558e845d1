//! The harness against a real nats-server: deduplication, restarts and outages,
//! reading an order's trail across streams, and startup failures.

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use shop_events::subjects::{EVENT_STREAMS, ORDERS_STREAM};
use shop_events::{
    Currency, DecodeError, Envelope, Event, Money, OrderId, OrderLineInput, OrderPlaced,
    PaymentCaptured, PaymentId, Sku, StockLine, StockReserved,
};
use shop_harness::{
    connect, declare_streams, events_about, eventually, publish_event, publish_raw,
    stream_message_count, HarnessError, NatsServer, ServerOptions,
};

const WAIT: Duration = Duration::from_secs(10);

async fn server_with_streams() -> anyhow::Result<(NatsServer, Context)> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    declare_streams(&js).await?;
    Ok((server, js))
}

fn order_placed(order: &str) -> anyhow::Result<Envelope> {
    let event = OrderPlaced {
        order_id: OrderId::parse(order)?,
        customer_id: "c-1".into(),
        currency: "EUR".into(),
        lines: vec![OrderLineInput {
            sku: "sku-1".into(),
            quantity: 2,
            unit_price: 625,
        }],
        total: 1250,
        payment_token: "tok_visa".into(),
    };
    Ok(Envelope::new("storefront", Event::from(event)))
}

fn stock_reserved(cause: &Envelope) -> anyhow::Result<Envelope> {
    let event = StockReserved {
        order_id: OrderId::parse(cause.event.key())?,
        lines: vec![StockLine {
            sku: Sku::parse("sku-1")?,
            quantity: 2,
        }],
    };
    Ok(Envelope::new("inventory", event.into()).caused_by(&cause.meta))
}

fn payment_captured(cause: &Envelope) -> anyhow::Result<Envelope> {
    let event = PaymentCaptured {
        order_id: OrderId::parse(cause.event.key())?,
        payment_id: PaymentId::parse("pay-1")?,
        amount: Money(1250),
        currency: Currency::parse("EUR")?,
    };
    Ok(Envelope::new("payment", event.into()).caused_by(&cause.meta))
}

#[tokio::test]
async fn a_cloudevent_published_twice_with_the_same_id_is_stored_once() -> anyhow::Result<()> {
    let (_server, js) = server_with_streams().await?;
    let placed = order_placed("o-dup")?;

    let first = publish_event(&js, &placed).await?;
    let second = publish_event(&js, &placed).await?;

    assert!(!first.duplicate);
    assert!(second.duplicate, "the second PubAck reports the duplicate");
    assert_eq!(second.sequence, first.sequence);
    assert_eq!(stream_message_count(&js, ORDERS_STREAM).await?, 1);
    Ok(())
}

#[tokio::test]
async fn restarting_nats_server_keeps_the_streams_and_their_messages() -> anyhow::Result<()> {
    let (mut server, js) = server_with_streams().await?;
    let port = server.port();
    let placed = order_placed("o-restart")?;
    publish_event(&js, &placed).await?;

    server.restart().await?;

    assert_eq!(server.port(), port, "clients find the server where it was");
    // The existing client reconnects on its own; poll until it has.
    let count = eventually(WAIT, "ORDERS to answer after the restart", || async {
        stream_message_count(&js, ORDERS_STREAM).await.ok()
    })
    .await?;
    assert_eq!(count, 1);
    let trail = events_about(&js, "o-restart").await?;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].envelope(), Some(&placed));
    Ok(())
}

#[tokio::test]
async fn a_stopped_server_is_unreachable_until_start_again_and_keeps_its_messages(
) -> anyhow::Result<()> {
    let (mut server, js) = server_with_streams().await?;
    publish_event(&js, &order_placed("o-before")?).await?;

    server.stop().await?;
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err(),
        "nothing listens during the outage"
    );
    // No publish during the outage: the client would buffer it and deliver it on
    // reconnect even after its PubAck timed out, which is why events carry Nats-Msg-Id.

    server.start_again().await?;
    let after = order_placed("o-after")?;
    eventually(WAIT, "a publish to succeed after the outage", || async {
        publish_event(&js, &after).await.ok()
    })
    .await?;
    assert_eq!(stream_message_count(&js, ORDERS_STREAM).await?, 2);
    Ok(())
}

#[tokio::test]
async fn events_about_returns_an_orders_events_from_several_streams_in_order() -> anyhow::Result<()>
{
    let (_server, js) = server_with_streams().await?;
    let placed = order_placed("o-trail")?;
    let reserved = stock_reserved(&placed)?;
    let captured = payment_captured(&reserved)?;
    publish_event(&js, &placed).await?;
    publish_event(&js, &order_placed("o-other")?).await?;
    publish_event(&js, &reserved).await?;
    publish_event(&js, &captured).await?;

    let trail = events_about(&js, "o-trail").await?;

    let kinds: Vec<_> = trail.iter().map(|e| e.kind_name()).collect();
    assert_eq!(
        kinds,
        [
            Some("OrderPlaced"),
            Some("StockReserved"),
            Some("PaymentCaptured")
        ]
    );
    let streams: Vec<_> = trail.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(streams, EVENT_STREAMS);
    assert_eq!(trail[2].envelope(), Some(&captured));
    Ok(())
}

#[tokio::test]
async fn events_about_shows_hostile_messages_with_the_reason_they_do_not_decode(
) -> anyhow::Result<()> {
    let (_server, js) = server_with_streams().await?;

    let ack = publish_raw(
        &js,
        "events.orders.placed.o-hostile",
        HeaderMap::new(),
        &b"{not json"[..],
    )
    .await?;

    assert_eq!(ack.stream, ORDERS_STREAM);
    let trail = events_about(&js, "o-hostile").await?;
    assert_eq!(trail.len(), 1);
    assert!(matches!(trail[0].decoded, Err(DecodeError::InvalidJson(_))));
    assert_eq!(&trail[0].payload[..], b"{not json");
    Ok(())
}

#[tokio::test]
async fn a_server_that_cannot_start_fails_with_its_log() -> anyhow::Result<()> {
    let options = ServerOptions::default().extra_config("this is { not valid config");

    let started = NatsServer::start_with(options).await;

    match started {
        Err(HarnessError::ServerExited { log_tail, .. }) => {
            assert!(
                !log_tail.trim().is_empty(),
                "the error carries the server log"
            );
        }
        other => panic!("expected the server to exit, got {other:?}"),
    }
    Ok(())
}
