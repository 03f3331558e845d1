//! The baseline: the saga's traffic on raw JetStream with no business logic — the ceiling.
//!
//! A chain of pull consumers, declared like the services' (same streams, filters and
//! settings, durable names prefixed `bench-`), answers each delivery by publishing the
//! next event of the happy path from a pre-rendered body, waiting for its PubAck, then
//! acking. Per order that is the same 5 stored events, 6 deliveries and 4 causal hops
//! as the real saga, without sled, decoding or validation.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, Context};
use futures::StreamExt;
use shop_events::subjects::{parse_event_subject, Domain};
use shop_events::EventKind;
use shop_runtime::consumer::ConsumerSpec;
use tokio::task::JoinHandle;

use crate::load::{measure, Confirmations, LoadRun, LoadSpec};
use crate::payloads::Templates;
use crate::procstat::Probe;
use crate::BenchError;

/// One stand-in consumer: which service it mimics, what it reads, what it answers.
struct Role {
    service: &'static str,
    domain: Domain,
    kinds: &'static [EventKind],
}

/// The services' consumers as `crates/{checkout,inventory,payment}/src/lib.rs` declare them.
const ROLES: [Role; 7] = [
    Role {
        service: "checkout",
        domain: Domain::Orders,
        kinds: &[
            EventKind::OrderPlaced,
            EventKind::OrderCancellationRequested,
        ],
    },
    Role {
        service: "checkout",
        domain: Domain::Inventory,
        kinds: &[EventKind::StockReservationFailed],
    },
    Role {
        service: "checkout",
        domain: Domain::Payments,
        kinds: &[EventKind::PaymentCaptured, EventKind::PaymentDeclined],
    },
    Role {
        service: "inventory",
        domain: Domain::Orders,
        kinds: &[
            EventKind::OrderPlaced,
            EventKind::OrderConfirmed,
            EventKind::OrderCancelled,
        ],
    },
    Role {
        service: "inventory",
        domain: Domain::Inventory,
        kinds: &[EventKind::StockReplenished],
    },
    Role {
        service: "payment",
        domain: Domain::Orders,
        kinds: &[EventKind::OrderPlaced, EventKind::OrderCancelled],
    },
    Role {
        service: "payment",
        domain: Domain::Inventory,
        kinds: &[EventKind::StockReserved],
    },
];

/// The happy path's reactions: who publishes what after consuming what.
fn reaction(service: &str, consumed: EventKind) -> Option<EventKind> {
    match (service, consumed) {
        ("inventory", EventKind::OrderPlaced) => Some(EventKind::StockReserved),
        ("inventory", EventKind::OrderConfirmed) => Some(EventKind::StockCommitted),
        ("payment", EventKind::StockReserved) => Some(EventKind::PaymentCaptured),
        ("checkout", EventKind::PaymentCaptured) => Some(EventKind::OrderConfirmed),
        _ => None,
    }
}

/// The stand-in consumers, running until [`Chain::stop`].
pub struct Chain {
    js: Context,
    declared: Vec<(String, String)>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("consumers", &self.declared)
            .finish()
    }
}

/// The runtime's own declaration, so the server does the same work as for the services.
async fn declare(
    js: &Context,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BenchError> {
    shop_runtime::consumer::declare(js, spec)
        .await
        .map_err(|e| BenchError::js(&format!("declaring consumer {}", spec.durable), e))
}

/// Consumes like the runtime's loop (pull batches, `ready_chunks`), but a batch is only:
/// publish the reactions pipelined, await their PubAcks, then ack the deliveries.
async fn stand_in(
    js: Context,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    service: &'static str,
    batch: usize,
    templates: Arc<Templates>,
) {
    loop {
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, service, "baseline pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut chunks = messages.ready_chunks(batch);
        while let Some(items) = chunks.next().await {
            let delivered: Vec<jetstream::Message> =
                items.into_iter().filter_map(Result::ok).collect();
            let mut pending = Vec::with_capacity(delivered.len());
            for message in &delivered {
                let reply = parse_event_subject(message.subject.as_str())
                    .and_then(|(kind, key)| Some((reaction(service, kind)?, key)))
                    .and_then(|(kind, key)| templates.message(kind, key));
                let Some((subject, outgoing)) = reply else {
                    continue;
                };
                match js.send_publish(subject, outgoing).await {
                    Ok(ack) => pending.push(ack),
                    Err(e) => tracing::warn!(error = %e, service, "baseline publish failed"),
                }
            }
            for ack in pending {
                if let Err(e) = ack.await {
                    tracing::warn!(error = %e, service, "baseline PubAck failed");
                }
            }
            for message in delivered {
                if let Err(e) = message.ack().await {
                    tracing::debug!(error = %e, service, "baseline ack failed");
                }
            }
        }
    }
}

impl Chain {
    /// Declares the stand-in consumers and starts them; streams must exist.
    pub async fn start(js: &Context) -> Result<Chain, BenchError> {
        let templates = Arc::new(Templates::new()?);
        let mut chain = Chain {
            js: js.clone(),
            declared: Vec::new(),
            tasks: Vec::new(),
        };
        for role in &ROLES {
            let durable = format!("bench-{}", role.service);
            let spec = shop_shell::consumer_spec(&durable, role.domain, role.kinds, None);
            let consumer = declare(js, &spec).await?;
            chain
                .declared
                .push((spec.stream.clone(), spec.durable.clone()));
            chain.tasks.push(tokio::spawn(stand_in(
                js.clone(),
                consumer,
                role.service,
                spec.batch,
                templates.clone(),
            )));
        }
        Ok(chain)
    }

    /// Stops the stand-ins and deletes their consumers.
    pub async fn stop(self) -> Result<(), BenchError> {
        for task in &self.tasks {
            task.abort();
        }
        for (stream, durable) in &self.declared {
            let stream = self
                .js
                .get_stream(stream)
                .await
                .map_err(|e| BenchError::js("opening a stream", e))?;
            stream
                .delete_consumer(durable)
                .await
                .map_err(|e| BenchError::js(&format!("deleting consumer {durable}"), e))?;
        }
        Ok(())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Empties the event streams, so the services of the next phase do not consume the baseline's events.
pub async fn purge_event_streams(js: &Context) -> Result<(), BenchError> {
    for name in shop_harness::EVENT_STREAMS {
        let stream = js
            .get_stream(name)
            .await
            .map_err(|e| BenchError::js(&format!("opening stream {name}"), e))?;
        stream
            .purge()
            .await
            .map_err(|e| BenchError::js(&format!("purging stream {name}"), e))?;
    }
    Ok(())
}

/// Runs the baseline at one load level on a server `js` talks to: declares the streams,
/// starts the chain, measures, stops the chain. The bench process's own CPU is reported
/// under `bench`. Events stay in the streams; see [`purge_event_streams`].
pub async fn run_baseline(js: &Context, spec: &LoadSpec) -> Result<LoadRun, BenchError> {
    shop_harness::declare_streams(js).await?;
    let chain = Chain::start(js).await?;
    let confirmations = Arc::new(Confirmations::watch(&js.client()).await?);
    let run = measure(js, &confirmations, spec, &[Probe::this_process("bench")]).await;
    chain.stop().await?;
    let run = run?;
    if run.orders == 0 {
        return Err(BenchError::NoProgress {
            phase: "baseline".into(),
            inflight: spec.inflight,
            failed: run.failed,
        });
    }
    Ok(run)
}
