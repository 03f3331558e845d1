//! Glue between the event contract (`shop-events`) and the domain-free runtime.
//!
//! The three services would otherwise each repeat these few lines: decoding
//! a consumed message into an [`Envelope`], the tracing span of an event,
//! turning an outgoing envelope into an outbox entry, naming consumers and
//! dead-letter subjects, and publishing an event from an API endpoint.
//! It holds no business rules.
//!
//! It also keeps the operator's side of dead letters ([`deadletter_book`], served
//! by [`deadletter_api`]), because its names and reply types are the contract's,
//! which the domain-free runtime must not know.

pub mod deadletter_api;
pub mod deadletter_book;
pub mod scale;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::HeaderMap;
use shop_events::api::deadletters as dlq;
use shop_events::subjects::{self, Domain};
use shop_events::{Envelope, Event, EventKind, Meta};
use shop_runtime::consumer::{ConsumerSpec, EventHandler, Incoming};
use shop_runtime::deadletter::{DeadLetterHeaders, DeadLetterTarget};
use shop_runtime::host::HostConfig;
use shop_runtime::outbox_entry::OutboxMessage;
use shop_runtime::store::{Tx, TxResult};
use shop_runtime::streams::StreamDecl;
use shop_runtime::RuntimeError;

/// The shop's streams as the runtime declares them, with one replica each
/// ([`host_config`] applies the service's replica count).
pub fn stream_decls(event_max_age: Duration) -> Vec<StreamDecl> {
    subjects::stream_specs(event_max_age)
        .iter()
        .map(|s| {
            let decl = StreamDecl::new(
                s.name,
                &s.subjects,
                s.description,
                s.max_age,
                s.duplicate_window,
            );
            match &s.subject_transform {
                Some((source, destination)) => decl.with_subject_transform(source, destination),
                None => decl,
            }
        })
        .collect()
}

/// Host settings for `service`, with its sled database under `<data_dir>/<service>` and
/// every stream kept on `stream_replicas` servers (`--replicas`).
pub fn host_config(
    service: &str,
    nats: &shop_runtime::connect::NatsConfig,
    data_dir: &Path,
    stream_replicas: usize,
    trees: Vec<&'static str>,
    partitioning: Option<shop_runtime::host::Partitioning>,
) -> HostConfig {
    HostConfig {
        service: service.to_owned(),
        nats: nats.clone(),
        // One database per instance: `<data dir>/<instance>` (the service's name when it
        // runs as one instance), so instances may share a data directory.
        data_dir: data_dir.join(
            partitioning
                .as_ref()
                .map(|p| p.instance.as_str())
                .unwrap_or(service),
        ),
        streams: stream_decls(subjects::DEFAULT_EVENT_MAX_AGE)
            .into_iter()
            .map(|decl| decl.with_replicas(stream_replicas))
            .collect(),
        trees,
        extensions: vec![deadletter_api::EXTENSION],
        partitioning,
    }
}

/// The contract's dead-letter header names, as the runtime writes them.
pub const DEAD_LETTER_HEADERS: DeadLetterHeaders = DeadLetterHeaders {
    reason: dlq::HDR_REASON,
    subject: dlq::HDR_SUBJECT,
    stream: dlq::HDR_STREAM,
    sequence: dlq::HDR_SEQUENCE,
    consumer: dlq::HDR_CONSUMER,
    service: dlq::HDR_SERVICE,
    delivered: dlq::HDR_DELIVERED,
    truncated: dlq::HDR_TRUNCATED,
    original_msg_id: dlq::HDR_ORIGINAL_MSG_ID,
};

/// A durable consumer of `service` on `domain`'s stream for the given event kinds: of one
/// partition (`payment-p07`), or of every partition (`inventory`).
pub fn consumer_spec(
    service: &str,
    domain: Domain,
    kinds: &[EventKind],
    partition: Option<u32>,
) -> ConsumerSpec {
    let filters = kinds
        .iter()
        .map(|k| match partition {
            Some(p) => subjects::partition_filter(*k, p),
            None => subjects::event_filter(*k),
        })
        .collect();
    let durable = shop_events::partition::partition_consumer(service, partition);
    let mut spec = ConsumerSpec::new(
        domain.stream(),
        &durable,
        filters,
        DeadLetterTarget {
            subject: subjects::deadletter_subject(service, domain.stream()),
            headers: DEAD_LETTER_HEADERS,
        },
    );
    spec.description = format!(
        "{service}{} reacting to {}",
        partition
            .map(|p| format!(", partition {p},"))
            .unwrap_or_default(),
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    spec
}

/// Decodes a consumed message with the contract's checks, its `source` included; the error
/// text is the dead-letter reason.
pub fn decode_incoming(message: &Incoming<'_>) -> Result<Envelope, String> {
    let envelope =
        shop_events::decode(message.subject, message.payload).map_err(|e| e.to_string())?;
    envelope.check_source().map_err(|e| e.to_string())?;
    Ok(envelope)
}

/// The span every handled event runs in.
pub fn event_span(service: &str, envelope: &Envelope) -> tracing::Span {
    tracing::info_span!(
        "handle_event",
        service,
        order_id = %envelope.meta.correlation_id,
        event_type = envelope.kind().name(),
        event_id = %envelope.meta.id,
        causation_id = envelope.meta.causation_id.as_deref().unwrap_or(""),
        traceparent = envelope.meta.traceparent.as_deref().unwrap_or(""),
    )
}

/// The outbox entry for an outgoing event: `Nats-Msg-Id` is the event id.
pub fn to_outbox(envelope: &Envelope) -> OutboxMessage {
    let mut headers = Vec::new();
    if let Some(tp) = &envelope.meta.traceparent {
        headers.push(("traceparent".to_owned(), tp.clone()));
    }
    OutboxMessage {
        subject: envelope.subject(),
        msg_id: envelope.meta.id.clone(),
        headers,
        payload: envelope.to_json(),
    }
}

/// Publishes one event directly (API endpoints) and waits for the PubAck.
pub async fn publish_event(
    js: &jetstream::Context,
    envelope: &Envelope,
) -> Result<jetstream::publish::PublishAck, RuntimeError> {
    let mut headers = HeaderMap::new();
    if let Some(tp) = &envelope.meta.traceparent {
        headers.insert("traceparent", tp.as_str());
    }
    let message = jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(&envelope.meta.id)
        .payload(envelope.to_json().into());
    let subject = envelope.subject();
    js.send_publish(subject.clone(), message)
        .await
        .map_err(|e| RuntimeError::publish(subject.as_str(), e))?
        .await
        .map_err(|e| RuntimeError::publish(subject.as_str(), e))
}

/// Milliseconds since the Unix epoch: the clock the pure domains are given.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text for a millisecond timestamp, for API replies.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(shop_events::envelope::format_time)
        .unwrap_or_default()
}

/// Queues `events` in the outbox as reactions to `cause` (or as new chains without one).
pub fn publish_all(
    tx: &Tx<'_>,
    source: &str,
    events: Vec<Event>,
    cause: Option<&Meta>,
) -> TxResult<()> {
    for (index, event) in events.into_iter().enumerate() {
        let envelope = Envelope::new(source, event);
        let envelope = match cause {
            // Derived from the cause: applying the same cause to the same state again (a
            // new owner of the partition redoing unacknowledged work) yields the same ids,
            // which JetStream and every inbox drop.
            Some(meta) => {
                let id = shop_events::envelope::derived_event_id(&meta.id, index, envelope.kind());
                envelope.caused_by(meta).with_id(id)
            }
            None => envelope,
        };
        tx.publish(&to_outbox(&envelope))?;
    }
    Ok(())
}

/// Queues `events` that no event caused (a deadline passing, say), with ids derived from
/// `seed`, so doing the same work again publishes the same ids.
pub fn publish_all_seeded(
    tx: &Tx<'_>,
    source: &str,
    events: Vec<Event>,
    seed: &str,
) -> TxResult<()> {
    for (index, event) in events.into_iter().enumerate() {
        let envelope = Envelope::new(source, event);
        let id = shop_events::envelope::derived_event_id(seed, index, envelope.kind());
        tx.publish(&to_outbox(&envelope.with_id(id)))?;
    }
    Ok(())
}

/// A service's reaction to decoded contract events; [`Contract`] adapts it to the runtime.
pub trait EnvelopeHandler: Send + Sync + 'static {
    /// The service name, for spans.
    const SERVICE: &'static str;

    /// Applies one checked event inside the transaction.
    fn apply(&self, envelope: &Envelope, tx: &Tx<'_>) -> TxResult<()>;

    /// Runs after a batch is durable.
    fn after_commit(&self) {}
}

/// Runs an [`EnvelopeHandler`] in the runtime's consumer loop: decodes with the
/// contract's checks, deduplicates on the event id, spans every event.
#[derive(Debug)]
pub struct Contract<H>(pub H);

impl<H: EnvelopeHandler> EventHandler for Contract<H> {
    type Event = Envelope;

    fn decode(&self, message: &Incoming<'_>) -> Result<Envelope, String> {
        decode_incoming(message)
    }

    fn event_id<'e>(&self, event: &'e Envelope) -> &'e str {
        &event.meta.id
    }

    fn span(&self, event: &Envelope) -> tracing::Span {
        event_span(H::SERVICE, event)
    }

    fn apply(&self, event: &Envelope, tx: &Tx<'_>) -> TxResult<()> {
        self.0.apply(event, tx)
    }

    fn after_commit(&self) {
        self.0.after_commit()
    }
}
