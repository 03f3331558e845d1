//! Helpers shared by the operator, dead-letter and shutdown system tests: a fresh world
//! per test, ADR-32 verbs, endpoint calls, the dead-letter stream and "the shop is idle".

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use shop_events::api::deadletters::{HDR_CONSUMER, HDR_SEQUENCE, HDR_STREAM};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, message::StreamMessage};
use futures::StreamExt;
use serde_json::Value;
use shop_events::subjects::DEADLETTER_STREAM;
use shop_harness::scenario::request;
use shop_harness::{eventually, Service};

/// How long an asynchronous outcome may take on a small, shared machine.
pub const SETTLE: Duration = Duration::from_secs(20);

/// One test's world: its own nats-server, a client, and the three services.
// Not every test file builds its world this way.
#[allow(unused_imports)]
pub use shop_harness::world;

/// A request to an endpoint: `Ok(reply)` or `Err((code, description))`.
pub async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: Value,
) -> anyhow::Result<Result<Value, (u16, String)>> {
    Ok(request(client, subject, &body).await?)
}

/// A request that must succeed.
pub async fn call_ok(
    client: &async_nats::Client,
    subject: &str,
    body: Value,
) -> anyhow::Result<Value> {
    match call(client, subject, body.clone()).await? {
        Ok(v) => Ok(v),
        Err((code, d)) => anyhow::bail!("{subject} {body} answered {code}: {d}"),
    }
}

/// A request that must fail; returns the error code and description.
pub async fn call_err(
    client: &async_nats::Client,
    subject: &str,
    body: Value,
) -> anyhow::Result<(u16, String)> {
    match call(client, subject, body.clone()).await? {
        Ok(v) => anyhow::bail!("{subject} {body} succeeded with {v}, expected an error"),
        Err(e) => Ok(e),
    }
}

/// A request with raw bytes as the body (bad JSON and the like).
pub async fn call_raw(
    client: &async_nats::Client,
    subject: &str,
    body: &'static [u8],
) -> anyhow::Result<Result<Value, (u16, String)>> {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_owned(), body.into()),
    )
    .await
    .context("no reply within 5 s")??;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        let description = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        return Ok(Err((code.as_str().parse()?, description)));
    }
    Ok(Ok(serde_json::from_slice(&reply.payload)?))
}

/// An ADR-32 verb (`PING`, `INFO`, `STATS`) addressed to one service by name.
pub async fn micro(
    client: &async_nats::Client,
    verb: &str,
    service: &str,
) -> anyhow::Result<Value> {
    let subject = format!("$SRV.{verb}.{service}");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.clone(), "".into()),
    )
    .await
    .with_context(|| format!("no reply to {subject} within 5 s"))??;
    serde_json::from_slice(&reply.payload).with_context(|| format!("{subject} reply is not JSON"))
}

/// A service's consumer counters, as the `data` of its first endpoint in STATS
/// (every endpoint carries the same service-wide counters).
pub async fn counters(client: &async_nats::Client, service: Service) -> anyhow::Result<Value> {
    let stats = micro(client, "STATS", service.name()).await?;
    stats["endpoints"][0]["data"]
        .as_object()
        .map(|d| Value::Object(d.clone()))
        .with_context(|| format!("{service} STATS has no endpoint data: {stats}"))
}

/// One counter of one service, for example `events_dead_lettered`.
pub async fn counter(
    client: &async_nats::Client,
    service: Service,
    name: &str,
) -> anyhow::Result<u64> {
    counters(client, service).await?[name]
        .as_u64()
        .with_context(|| format!("{service} has no counter {name}"))
}

/// Every message in the DEADLETTER stream right now, oldest first.
pub async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<Vec<StreamMessage>> {
    let stream = js.get_stream(DEADLETTER_STREAM).await?;
    let state = stream.get_info().await?.state;
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            out.push(message);
        }
    }
    Ok(out)
}

/// A header's value, or "" when it is absent.
pub fn header<'m>(message: &'m StreamMessage, name: &str) -> &'m str {
    message.headers.get(name).map(|v| v.as_str()).unwrap_or("")
}

/// Whether a dead letter's consumer header names one of `service`'s consumers: its
/// per-partition ones (`checkout-p07`) or its single one (`inventory`).
pub fn consumer_of(consumer: &str, service: &str) -> bool {
    consumer == service
        || consumer
            .strip_prefix(service)
            .and_then(|rest| rest.strip_prefix("-p"))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// An event subject as its producer published it: without the partition token the
/// stream adds when it stores the event.
pub fn as_published(subject: &str) -> String {
    shop_events::subjects::parse_event_subject(subject)
        .map(|(kind, key)| shop_events::subjects::event_subject(kind, key))
        .unwrap_or_else(|| subject.to_owned())
}

/// Waits until the dead letter parked by `consumer` (a service's consumer, see
/// [`consumer_of`]) for `stream` sequence `sequence` exists.
pub async fn wait_dead_letter(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
    consumer: &str,
) -> anyhow::Result<StreamMessage> {
    let sequence = sequence.to_string();
    Ok(eventually(
        SETTLE,
        &format!("{consumer} to dead-letter {stream} #{sequence}"),
        || async {
            dead_letters(js).await.ok()?.into_iter().find(|m| {
                header(m, HDR_STREAM) == stream
                    && header(m, HDR_SEQUENCE) == sequence
                    && consumer_of(header(m, HDR_CONSUMER), consumer)
            })
        },
    )
    .await?)
}

async fn outbox_backlog(client: &async_nats::Client) -> Option<u64> {
    let mut total = 0;
    for service in Service::ALL {
        total += counter(client, service, "outbox_backlog").await.ok()?;
    }
    Some(total)
}

async fn consumers_caught_up(js: &jetstream::Context) -> Option<bool> {
    for name in shop_harness::EVENT_STREAMS {
        let stream = js.get_stream(name).await.ok()?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return Some(false);
            }
        }
    }
    Some(true)
}

/// Waits until the shop has nothing left to do: every outbox empty, every durable
/// consumer caught up with nothing awaiting an ack, and no event published meanwhile
/// (an event committed while we looked would show up in one of those).
pub async fn wait_idle(client: &async_nats::Client, js: &jetstream::Context) -> anyhow::Result<()> {
    Ok(eventually(SETTLE, "the shop to be idle", || async {
        let before = shop_harness::last_sequences(js).await.ok()?;
        (outbox_backlog(client).await? == 0).then_some(())?;
        consumers_caught_up(js).await?.then_some(())?;
        (outbox_backlog(client).await? == 0).then_some(())?;
        (shop_harness::last_sequences(js).await.ok()? == before).then_some(())
    })
    .await?)
}

/// How many events of `kind` the streams hold about `order_id`.
pub async fn count_events(
    js: &jetstream::Context,
    order_id: &str,
    kind: &str,
) -> anyhow::Result<usize> {
    Ok(shop_harness::events_about(js, order_id)
        .await?
        .iter()
        .filter(|e| e.kind_name() == Some(kind))
        .count())
}

/// Waits (within `within`) for the event of `kind` about `order_id` (an owner answers from
/// its state before its events are out), then checks there is exactly one.
pub async fn exactly_once(
    js: &jetstream::Context,
    order_id: &str,
    kind: &str,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(within, &format!("{kind} of {order_id}"), || async {
        (count_events(js, order_id, kind).await.ok()? >= 1).then_some(())
    })
    .await?;
    anyhow::ensure!(
        count_events(js, order_id, kind).await? == 1,
        "more than one {kind} of {order_id}"
    );
    Ok(())
}

/// Waits (within `within`) until the audit of the whole shop is clean; fails with its
/// evidence if it never is.
pub async fn assert_audit_clean(
    client: &async_nats::Client,
    within: Duration,
) -> anyhow::Result<()> {
    use shop_ops::audit::{audit, AuditOptions};
    let clean = eventually(within, "a clean audit", || async {
        let report = audit(client, AuditOptions::default(), &mut Vec::new())
            .await
            .ok()?;
        report.is_clean().then_some(())
    })
    .await;
    if clean.is_err() {
        let mut out = Vec::new();
        audit(client, AuditOptions::default(), &mut out).await?;
        anyhow::bail!("audit not clean:\n{}", String::from_utf8_lossy(&out));
    }
    Ok(())
}
