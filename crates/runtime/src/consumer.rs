//! The consumer loop: pull a batch, decode, apply the batch's events in one transaction,
//! flush once for the batch (group commit), then carry out each message's ack decision
//! ([`crate::ack`]): ack, nak, or dead letter then term.
//!
//! In a partitioned service each consumer reads one partition under that partition's
//! [`Fence`]: the fence is checked before a batch is applied and again before it is
//! acked, and a batch is acked only once the relay has published its events and stored
//! its entities' changelog records — so a new owner restores everything an ack covers.
//!
//! When the service's own disk fails (a full disk), the store is faulted: the loop naks
//! what it holds and stops pulling until the store has been reopened, so the messages
//! wait in the stream instead of spending their deliveries. A consumer in trouble (its
//! store faulted, pulls failing, heartbeats missed) for [`crate::stats::STALL_AFTER`]
//! without progress is reported stalled in STATS and in a warn log.
//!
//! Consumers keep their state in the broker's memory and their positions in the service's
//! changelog bucket, so one a broker restart forgot starts again where it was
//! ([`declare_at`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};

use crate::ack::{ack_decision, AckAction, Outcome, NOT_DURABLE_DELAY};
use crate::changelog::{Position, StateBucket};
use crate::commit::Committer;
use crate::crashpoint;
use crate::deadletter::{self, DeadLetter, DeadLetterTarget};
use crate::group::Fence;
use crate::outbox::RelayWaker;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::store::{
    Applied as Applied_, ApplyError, BatchWork, CopyGeneration, Store, Tx, TxResult,
};
use crate::RuntimeError;

/// A message as a handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: &'a [u8],
    pub stream_sequence: u64,
    pub delivered: i64,
}

/// A service's reaction to the events of one consumer.
pub trait EventHandler: Send + Sync + 'static {
    type Event: Send;

    /// Decodes and checks a message; `Err(reason)` dead-letters it.
    fn decode(&self, message: &Incoming<'_>) -> Result<Self::Event, String>;

    /// The id the inbox deduplicates on.
    fn event_id<'e>(&self, event: &'e Self::Event) -> &'e str;

    /// A span carrying the event's identity (order id, type, id, causation id).
    fn span(&self, event: &Self::Event) -> tracing::Span;

    /// Applies the event inside the transaction; `reject(..)` dead-letters it.
    fn apply(&self, event: &Self::Event, tx: &Tx<'_>) -> TxResult<()>;

    /// Runs after a batch is durable, for example to wake a worker.
    fn after_commit(&self) {}
}

/// How a durable consumer is declared and driven.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    /// Durable name: the service's name, so `nats consumer info ORDERS checkout` reads well.
    pub durable: String,
    pub description: String,
    pub filter_subjects: Vec<String>,
    pub dead_letters: DeadLetterTarget,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
    /// Most messages handled in one group commit.
    pub batch: usize,
}

impl ConsumerSpec {
    pub fn new(
        stream: &str,
        durable: &str,
        filter_subjects: Vec<String>,
        dead_letters: DeadLetterTarget,
    ) -> ConsumerSpec {
        ConsumerSpec {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
            description: format!("{durable} reading {stream}"),
            filter_subjects,
            dead_letters,
            max_deliver: 10,
            ack_wait: Duration::from_secs(30),
            // Redelivery after an ack timeout (a crash or a hang) backs off instead of hammering.
            backoff: vec![
                Duration::from_secs(5),
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ],
            max_ack_pending: 4096,
            batch: 256,
        }
    }
}

/// What a consumer loop needs from its service.
#[derive(Clone)]
pub struct ConsumerCtx {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub waker: RelayWaker,
    pub service: String,
    /// Where the consumers' positions are saved (the service's changelog bucket), if the
    /// service has one.
    pub positions: Option<StateBucket>,
    /// Where the consumers' batches are committed together.
    pub committer: Committer,
}

/// A consumer's decoded batch, as the committer applies it ([`crate::commit`]).
struct HandlerWork<H: EventHandler> {
    handler: Arc<H>,
    items: Vec<(H::Event, tracing::Span)>,
}

impl<H: EventHandler> BatchWork for HandlerWork<H> {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn key(&self, i: usize) -> Option<&str> {
        Some(self.handler.event_id(&self.items[i].0))
    }

    fn apply(&self, tx: &Tx<'_>, i: usize) -> TxResult<()> {
        let (event, span) = &self.items[i];
        span.in_scope(|| self.handler.apply(event, tx))
    }
}

/// How often a running consumer's position is saved (when it moved): what a consumer
/// re-declared after a broker restart may deliver a second time, at most.
pub const POSITION_EVERY: Duration = Duration::from_secs(5);

/// Declares (creates or updates) the durable pull consumer `spec` describes, with no
/// saved position to start from.
pub async fn declare(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::Consumer<pull::Config>, RuntimeError> {
    Ok(declare_at(js, spec, None).await?.0)
}

/// Declares (creates or updates) the durable pull consumer `spec` describes; also returns
/// when its stream was created (Unix nanoseconds), which a saved position names.
///
/// The consumer keeps its state (what was delivered and acked) in the server's memory.
/// On file, nats-server rewrites each consumer's state file up to ten times a second,
/// and a partitioned service runs one consumer per partition and stream: that was 15–20 %
/// of the server's CPU per order (docs/BENCHMARKS.md). The price is that a broker
/// restart forgets the consumers, so the service saves each one's ack floor in its
/// changelog bucket every [`POSITION_EVERY`], and a consumer the server no longer has is
/// declared again from the position saved for it; what it delivers a second time, the
/// inbox drops. With no position (or one of a stream since declared again) it starts
/// from the stream's first message, which the inbox also absorbs (it keeps ids for the
/// streams' whole retention).
///
/// A consumer that exists keeps what cannot be updated (where it started, and its
/// storage: one declared on file by an earlier version stays on file).
pub async fn declare_at(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    positions: Option<&StateBucket>,
) -> Result<(jetstream::consumer::Consumer<pull::Config>, i64), RuntimeError> {
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(RuntimeError::js(format!("getting stream {}", spec.stream)))?;
    let created = stream_created(&stream);
    let mut config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(spec.description.clone()),
        filter_subjects: spec.filter_subjects.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        max_deliver: spec.max_deliver,
        ack_wait: spec.ack_wait,
        backoff: spec.backoff.clone(),
        max_ack_pending: spec.max_ack_pending,
        memory_storage: true,
        ..Default::default()
    };
    match stream.consumer_info(&spec.durable).await {
        Ok(existing) => {
            config.deliver_policy = existing.config.deliver_policy;
            config.memory_storage = existing.config.memory_storage;
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            if let Some(bucket) = positions {
                let saved = bucket.position(&spec.stream, &spec.durable).await?;
                config.deliver_policy = start_from(saved, created);
                if saved.is_some() {
                    tracing::info!(
                        consumer = %spec.durable,
                        stream = %spec.stream,
                        start = ?config.deliver_policy,
                        "consumer declared again from its saved position"
                    );
                }
            }
        }
        Err(e) => {
            return Err(RuntimeError::js(format!(
                "looking up consumer {} on {}",
                spec.durable, spec.stream
            ))(e))
        }
    }
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(RuntimeError::js(format!(
            "declaring consumer {} on {}",
            spec.durable, spec.stream
        )))?;
    Ok((consumer, created))
}

/// When a stream was created, in Unix nanoseconds, as its info said.
fn stream_created(stream: &jetstream::stream::Stream) -> i64 {
    i64::try_from(stream.cached_info().created.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Where a consumer declared again starts: after its saved ack floor, if that was saved
/// for this very stream; else at the stream's first message.
pub fn start_from(
    saved: Option<Position>,
    stream_created: i64,
) -> jetstream::consumer::DeliverPolicy {
    match saved {
        Some(position) if position.stream_created == stream_created => {
            jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: position.ack_floor + 1,
            }
        }
        _ => jetstream::consumer::DeliverPolicy::All,
    }
}

/// Saves the consumer's ack floor if it moved past the last one saved.
async fn save_position(
    bucket: StateBucket,
    spec: ConsumerSpec,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    stream_created: i64,
    saved: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let floor = match consumer.get_info().await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(e) => {
            tracing::debug!(error = %e, consumer = %spec.durable, "cannot read the consumer's position");
            return;
        }
    };
    if floor <= saved.load(Ordering::Acquire) {
        return;
    }
    let position = Position {
        v: 1,
        ack_floor: floor,
        stream_created,
    };
    match bucket
        .save_position(&spec.stream, &spec.durable, &position)
        .await
    {
        Ok(()) => saved.store(floor, Ordering::Release),
        Err(e) => {
            tracing::debug!(error = %e, consumer = %spec.durable, "cannot save the consumer's position")
        }
    }
}

/// Declares the consumer and processes its messages until shutdown.
///
/// Batches already pulled are finished before it returns, so a graceful stop
/// loses nothing; messages prefetched but not started are redelivered later.
pub async fn run_consumer<H: EventHandler>(
    ctx: ConsumerCtx,
    spec: ConsumerSpec,
    handler: Arc<H>,
    fence: Option<Fence>,
    copy: CopyGeneration,
    mut shutdown: Shutdown,
) {
    let mut retry = Duration::from_millis(200);
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    let saved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut saving: Option<tokio::task::JoinHandle<()>> = None;
    let mut last: Option<(jetstream::consumer::Consumer<pull::Config>, i64)> = None;
    'consume: while !shutdown.is_requested() {
        let (consumer, created) = match declare_at(&ctx.js, &spec, ctx.positions.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                ctx.stats.record_error(e.to_string());
                trouble(&ctx, &spec, format!("cannot declare the consumer: {e}"));
                tracing::warn!(error = %e, "consumer not ready; retrying in {retry:?}");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.requested() => break 'consume,
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry = Duration::from_millis(200);
        last = Some((consumer.clone(), created));
        let mut save_tick = tokio::time::interval(POSITION_EVERY);
        save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // A partition's consumer is shared by whoever owns the partition over time. The
        // server serves pull requests in order, so a frozen former owner's request would
        // keep receiving the partition's messages until it expires: short requests bound
        // how long a frozen instance can hold on to them.
        let (heartbeat, expires) = if fence.is_some() {
            (Duration::from_secs(1), Duration::from_secs(3))
        } else {
            (Duration::from_secs(5), Duration::from_secs(30))
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(spec.batch)
            .heartbeat(heartbeat)
            .expires(expires)
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                ctx.stats.record_error(e.to_string());
                trouble(&ctx, &spec, format!("cannot pull: {e}"));
                tracing::warn!(error = %e, "cannot pull; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.requested() => break 'consume,
                }
                continue;
            }
        };
        // The server answered: whatever troubled the consumer has passed.
        if let Some(stuck) = ctx.stats.consumer_progress(&spec.durable) {
            if stuck >= crate::stats::STALL_AFTER {
                tracing::info!(consumer = %spec.durable, stream = %spec.stream, "consumer recovered after {stuck:?} in trouble");
            }
        }
        let mut chunks = messages.ready_chunks(spec.batch);
        let mut store_faulted = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.requested() => break 'consume,
                // Before the pull, which is always ready under load.
                _ = save_tick.tick(), if ctx.positions.is_some() => {
                    let idle = saving.as_ref().is_none_or(|task| task.is_finished());
                    if idle && fence.as_ref().is_none_or(Fence::is_valid) {
                        if let Some(bucket) = ctx.positions.clone() {
                            saving = Some(tokio::spawn(save_position(
                                bucket,
                                spec.clone(),
                                consumer.clone(),
                                created,
                                saved.clone(),
                            )));
                        }
                    }
                }
                chunk = chunks.next() => match chunk {
                    None => break,
                    Some(items) => {
                        let mut batch = Vec::with_capacity(items.len());
                        let mut broken = false;
                        for item in items {
                            match item {
                                Ok(m) => batch.push(m),
                                Err(e) => {
                                    ctx.stats.record_error(format!("pull: {e}"));
                                    trouble(&ctx, &spec, format!("pull: {e}"));
                                    tracing::debug!(error = %e, stream = %spec.stream, "pull stream error");
                                    broken = true;
                                }
                            }
                        }
                        // Apply this batch while the previous one flushes; wait for that
                        // commit before starting this one's, so acks stay in order.
                        store_faulted = ctx.store.fault().is_some();
                        // A copy made current before a reopen of the store may lack what
                        // the changelog holds: nothing is applied to it until the manager
                        // restored it (under the write lock this read lock waits for).
                        let current = current_copy(&ctx, &copy, fence.is_some(), &shutdown).await;
                        let generation = *current;
                        let stale = copy_is_stale(&ctx, fence.is_some(), generation);
                        let mut applied = match fence.as_ref().map(Fence::check) {
                            _ if store_faulted || stale => hand_back(batch, NOT_DURABLE_DELAY),
                            Some(Err(fenced)) => {
                                // Not ours (any more): hand the messages back at once,
                                // for the partition's owner.
                                tracing::debug!(error = %fenced, "batch released, partition not held");
                                release_batch(batch)
                            }
                            _ => apply_batch(
                                &ctx,
                                &spec,
                                &handler,
                                batch,
                                fence.as_ref().map(Fence::partition),
                            ).await,
                        };
                        drop(current);
                        applied.generation = generation;
                        if let Some(previous) = in_flight.take() {
                            let _ = previous.await;
                        }
                        let handler = handler.clone();
                        in_flight = Some(tokio::spawn(commit_batch(
                            ctx.clone(),
                            spec.clone(),
                            move || handler.after_commit(),
                            applied,
                            fence.clone(),
                        )));
                        if broken || store_faulted {
                            // Re-declare: the consumer may be gone after a broker restart
                            // without its store. Or stop pulling while the store is faulted:
                            // what the client already holds goes back now, or it would wait
                            // out the ack wait.
                            if store_faulted {
                                while let Some(Some(items)) = chunks.next().now_or_never() {
                                    for message in items.into_iter().flatten() {
                                        let _ = message
                                            .ack_with(AckKind::Nak(Some(NOT_DURABLE_DELAY)))
                                            .await;
                                    }
                                }
                            }
                            break;
                        }
                    }
                }
            }
        }
        // Stop listening before waiting out a fault: a live pull subscription that is
        // not read keeps its pull request open, and what the server delivers to it (a
        // nak'ed message coming back, say) sits unread in the client until its ack wait
        // (30 s) runs out, and again on every later delivery. Dropped, the request has no
        // interest left and the messages wait in the stream for the next pull.
        drop(chunks);
        if store_faulted && !wait_for_store(&ctx, &spec, &mut shutdown).await {
            break 'consume;
        }
    }
    // The batch whose commit is under way is finished before the consumer stops.
    if let Some(last) = in_flight {
        let _ = last.await;
    }
    // Its acks are in: the position goes with the partition, bounded so that a stop
    // does not wait on a broker that is gone.
    if let (Some(bucket), Some((consumer, created))) = (ctx.positions.clone(), last) {
        if fence.as_ref().is_none_or(Fence::is_valid) {
            let save = save_position(bucket, spec.clone(), consumer, created, saved);
            let _ = tokio::time::timeout(Duration::from_secs(1), save).await;
        }
    }
    ctx.stats.consumer_gone(&spec.durable);
}

/// Records that the consumer is in trouble; logs once when that has lasted long enough
/// to count as a stall.
fn trouble(ctx: &ConsumerCtx, spec: &ConsumerSpec, why: String) {
    if let Some(stuck) = ctx.stats.consumer_trouble(&spec.durable, why.clone()) {
        tracing::warn!(
            consumer = %spec.durable,
            stream = %spec.stream,
            trouble = %why,
            "consumer stalled: no progress for {stuck:?}"
        );
    }
}

/// How often a consumer paused by a storage fault looks whether the store recovered.
const STORE_LOOK: Duration = Duration::from_millis(250);

/// Waits, without pulling, until the store has left its storage fault (the host's
/// store watch reopens it); `false` if shutdown came first.
async fn wait_for_store(ctx: &ConsumerCtx, spec: &ConsumerSpec, shutdown: &mut Shutdown) -> bool {
    tracing::warn!(consumer = %spec.durable, stream = %spec.stream, "store faulted; not pulling until it recovers");
    while let Some(fault) = ctx.store.fault() {
        trouble(ctx, spec, format!("store faulted: {}", fault.error));
        tokio::select! {
            _ = tokio::time::sleep(STORE_LOOK) => {}
            _ = shutdown.requested() => return false,
        }
    }
    tracing::info!(consumer = %spec.durable, stream = %spec.stream, "store recovered; pulling again");
    true
}

/// A message with the delivery count JetStream reported for it.
struct Delivery {
    message: jetstream::Message,
    delivered: u64,
}

/// A batch after its transactions: what to ack once durable, and what is decided already.
struct Applied {
    /// Applied or already in the inbox: acked once the group commit is durable.
    done: Vec<Delivery>,
    /// Nak'ed or dead-lettered, as [`ack_decision`] said.
    decided: Vec<(Delivery, AckAction)>,
    committed: u64,
    /// The newest outbox entry the batch wrote: acks wait until it has left the outbox.
    entry: Option<u64>,
    /// The store's reopen count when the consumer's partition was taken: a batch of a
    /// partition taken before a reopen is not acked (the reopened copy may lack it, and
    /// the partition is restored and started again).
    generation: u64,
}

/// Whether a partition's copy made current at `generation` predates a reopen of a store
/// whose changelog is the durable copy (so it may lack what the changelog holds).
fn copy_is_stale(ctx: &ConsumerCtx, partitioned: bool, generation: u64) -> bool {
    partitioned && ctx.store.durable_by_changelog() && ctx.store.reopens() != generation
}

/// The read lock on the partition's copy, once the copy is current: after a reopen of
/// the store, the manager restores the partition under the write lock (milliseconds).
/// Waiting here, rather than handing the batch back, keeps its messages in this
/// consumer's hands. Gives up (the caller hands the batch back) on shutdown or a fault.
async fn current_copy<'a>(
    ctx: &ConsumerCtx,
    copy: &'a CopyGeneration,
    partitioned: bool,
    shutdown: &Shutdown,
) -> tokio::sync::RwLockReadGuard<'a, u64> {
    loop {
        let current = copy.read().await;
        if !copy_is_stale(ctx, partitioned, *current)
            || shutdown.is_requested()
            || ctx.store.fault().is_some()
        {
            return current;
        }
        drop(current);
        // The manager looks at the reopen count once a second at most.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch pulled for a partition this instance does not hold: every message is nak'ed
/// without delay, so the partition's owner gets it next.
fn release_batch(batch: Vec<jetstream::Message>) -> Applied {
    hand_back(batch, Duration::ZERO)
}

/// Every message of the batch nak'ed with `delay`, none applied.
fn hand_back(batch: Vec<jetstream::Message>, delay: Duration) -> Applied {
    Applied {
        done: Vec::new(),
        decided: batch
            .into_iter()
            .map(|message| {
                (
                    Delivery {
                        message,
                        delivered: 1,
                    },
                    AckAction::Nak(delay),
                )
            })
            .collect(),
        committed: 0,
        entry: None,
        generation: 0,
    }
}

/// Decodes every message of a batch and has the store's committer apply the decodable
/// ones, with the other consumers' batches of the moment, in one transaction
/// ([`crate::commit`], [`Store::apply_grouped`]); no I/O but sled's in-memory commit, so
/// the next batch can be applied while this one settles.
async fn apply_batch<H: EventHandler>(
    ctx: &ConsumerCtx,
    spec: &ConsumerSpec,
    handler: &Arc<H>,
    batch: Vec<jetstream::Message>,
    partition: Option<u32>,
) -> Applied {
    let mut applied = Applied {
        done: Vec::with_capacity(batch.len()),
        decided: Vec::new(),
        committed: 0,
        entry: None,
        generation: 0,
    };
    let mut decoded = Vec::with_capacity(batch.len());
    for message in batch {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(_) => (0, 1),
        };
        if delivered > 1 {
            ctx.stats.add_redelivered();
        }
        let incoming = Incoming {
            subject: message.subject.as_str(),
            headers: message.headers.as_ref(),
            payload: &message.payload,
            stream_sequence: seq,
            delivered,
        };
        let decoded_event = handler.decode(&incoming);
        let delivery = Delivery {
            message,
            delivered: u64::try_from(delivered).unwrap_or(1),
        };
        match decoded_event {
            Ok(event) => {
                let span = handler.span(&event);
                decoded.push((delivery, event, span));
            }
            Err(reason) => {
                let action = ack_decision(
                    Outcome::Undecodable(reason),
                    delivery.delivered,
                    spec.max_deliver,
                );
                applied.decided.push((delivery, action));
            }
        }
    }
    // Committed with the other consumers' batches of the moment (`commit`): the events
    // go to the committer, the deliveries and spans stay here for the acks and the logs.
    let mut deliveries = Vec::with_capacity(decoded.len());
    let mut items = Vec::with_capacity(decoded.len());
    for (delivery, event, span) in decoded {
        deliveries.push((delivery, span.clone()));
        items.push((event, span));
    }
    let work = Box::new(HandlerWork {
        handler: handler.clone(),
        items,
    });
    let outcomes = match ctx.committer.apply(work).await {
        Some(outcomes) => outcomes,
        // The committer is gone (shutting down): nothing was applied; hand it all back.
        None => {
            for (delivery, _) in deliveries {
                applied
                    .decided
                    .push((delivery, AckAction::Nak(NOT_DURABLE_DELAY)));
            }
            return applied;
        }
    };
    for ((delivery, span), outcome) in deliveries.into_iter().zip(outcomes) {
        if let Ok((_, Some(entry))) = &outcome {
            applied.entry = applied.entry.max(Some(*entry));
        }
        let outcome = outcome.map(|(applied, _)| applied);
        let error = match outcome {
            Ok(Applied_::Done(())) => {
                applied.committed += 1;
                applied.done.push(delivery);
                crashpoint::hit(crashpoint::MID_GROUP_COMMIT);
                continue;
            }
            Ok(Applied_::Duplicate) => {
                ctx.stats.add_duplicate();
                span.in_scope(|| tracing::debug!("duplicate event skipped"));
                // The first delivery's changes may still be on their way to the
                // changelog (its ack was lost, or it was nak'ed while the store was
                // faulted): ack the repeat only once the partition's entries waiting now
                // are stored, or a takeover could restore a state without them.
                if let Some(partition) = partition {
                    if let Ok(Some(newest)) = ctx.store.newest_entry_of(partition) {
                        applied.entry = applied.entry.max(Some(newest));
                    }
                }
                applied.done.push(delivery);
                continue;
            }
            Err(error) => error,
        };
        if let ApplyError::Failed(fault) = &error {
            ctx.stats.record_error(fault.to_string());
            span.in_scope(|| {
                tracing::warn!(
                    error = %fault,
                    transient = fault.is_transient(),
                    delivered = delivery.delivered,
                    "applying the event failed"
                )
            });
        }
        let action = ack_decision(Outcome::Failed(error), delivery.delivered, spec.max_deliver);
        applied.decided.push((delivery, action));
    }
    applied
}

/// Makes an applied batch durable (the group commit), then acks, naks and parks.
async fn commit_batch(
    ctx: ConsumerCtx,
    spec: ConsumerSpec,
    after_commit: impl FnOnce(),
    applied: Applied,
    fence: Option<Fence>,
) {
    let Applied {
        done,
        decided,
        committed,
        entry,
        generation,
    } = applied;
    let (naks, parks): (Vec<_>, Vec<_>) = decided
        .into_iter()
        .partition(|(_, action)| matches!(action, AckAction::Nak(_)));
    for (delivery, action) in naks {
        carry_out(&ctx, &spec, delivery, action).await;
    }
    // A partition's consumer in a store whose changelog is the durable copy acks only
    // once the partition's entries waiting now are stored there: no flush to wait for.
    let by_changelog = fence.is_some() && ctx.store.durable_by_changelog();
    let mut durable = if committed > 0 {
        group_commit(&ctx, after_commit, committed, !by_changelog).await
    } else if by_changelog {
        ctx.store.settle().await.is_ok()
    } else {
        // Duplicates only: the inbox that said so may hold transactions not yet on disk
        // (a flush that failed, with the store about to be reopened), so they are acked
        // only once everything committed is durable.
        done.is_empty() || ctx.store.flush().await.is_ok()
    };
    if let (true, Some(fence), Some(entry)) = (durable, fence.as_ref(), entry) {
        // Ack only what a new owner would restore: the relay removes the entry once its
        // events are published and its entities' records stored. A reopen of the store
        // meanwhile may have lost the batch (and the relay then waits for a restore).
        let reopened = || ctx.store.reopens() != generation;
        let stored = ctx
            .store
            .wait_outbox_gone(entry, || fence.check().is_err() || reopened())
            .await;
        durable = stored && fence.check().is_ok() && !reopened();
    } else if copy_is_stale(&ctx, fence.is_some(), generation) {
        durable = false;
    }
    let acked = done.len();
    tracing::debug!(consumer = %spec.durable, durable, committed, ?entry, generation, reopens = ctx.store.reopens(), done = done.len(), "batch settled");
    for delivery in done {
        let outcome = if durable {
            Outcome::Applied
        } else {
            Outcome::NotDurable
        };
        let action = ack_decision(outcome, delivery.delivered, spec.max_deliver);
        carry_out(&ctx, &spec, delivery, action).await;
    }
    for (delivery, action) in parks {
        carry_out(&ctx, &spec, delivery, action).await;
    }
    if durable && acked > 0 {
        ctx.stats.consumer_progress(&spec.durable);
    }
}

/// Flushes the batch's transactions (the group commit; skipped with `flush` false, where
/// the changelog makes them durable); `false` if they are not durable.
async fn group_commit(
    ctx: &ConsumerCtx,
    after_commit: impl FnOnce(),
    committed: u64,
    flush: bool,
) -> bool {
    let flushed = if flush {
        ctx.store.flush().await
    } else {
        ctx.store.settle().await
    };
    if let Err(e) = flushed {
        ctx.stats.record_error(e.to_string());
        tracing::error!(error = %e, "group commit flush failed; nak batch");
        return false;
    }
    crashpoint::hit(crashpoint::AFTER_COMMIT_BEFORE_ACK);
    ctx.waker.wake();
    after_commit();
    ctx.stats.add_processed(committed);
    true
}

/// Does what the ack decision said.
async fn carry_out(ctx: &ConsumerCtx, spec: &ConsumerSpec, delivery: Delivery, action: AckAction) {
    let Delivery { message, delivered } = delivery;
    let mut action = action;
    tracing::debug!(
        consumer = %spec.durable,
        stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0),
        delivered,
        ?action,
        "ack decision carried out"
    );
    // Runs twice at most: a failed dead letter is decided again, and that answer is a nak.
    loop {
        match action {
            AckAction::Ack => {
                // A lost ack only means a redelivery, which the inbox absorbs.
                if let Err(e) = message.ack().await {
                    tracing::debug!(error = %e, "ack failed");
                }
            }
            AckAction::Nak(delay) => {
                ctx.stats.add_nak();
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
            AckAction::DeadLetterThenTerm(reason) => {
                if let Err(e) = park(ctx, spec, &message, &reason).await {
                    ctx.stats
                        .record_error(format!("dead-lettering failed: {e}"));
                    tracing::error!(error = %e, "cannot dead-letter; nak");
                    action = ack_decision(Outcome::DeadLetterFailed, delivered, spec.max_deliver);
                    continue;
                }
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
        return;
    }
}

/// Publishes `message` to the consumer's dead-letter subject with `reason`.
async fn park(
    ctx: &ConsumerCtx,
    spec: &ConsumerSpec,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), RuntimeError> {
    let (seq, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered),
        Err(_) => (0, 1),
    };
    let letter = DeadLetter {
        target: &spec.dead_letters,
        service: &ctx.service,
        consumer: &spec.durable,
        stream: &spec.stream,
        stream_sequence: seq,
        delivered,
        subject: message.subject.as_str(),
        headers: message.headers.as_ref(),
        payload: &message.payload,
        reason,
    };
    let dlq_seq = deadletter::publish(&ctx.js, &letter).await?;
    ctx.stats.add_dead_lettered();
    tracing::warn!(
        subject = %message.subject,
        stream = %spec.stream,
        stream_sequence = seq,
        deadletter_sequence = dlq_seq,
        %reason,
        "event dead-lettered"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::consumer::DeliverPolicy;

    fn saved(ack_floor: u64, stream_created: i64) -> Option<Position> {
        Some(Position {
            v: 1,
            ack_floor,
            stream_created,
        })
    }

    #[test]
    fn a_consumer_declared_again_starts_after_the_floor_saved_for_its_stream() {
        assert_eq!(
            start_from(saved(41, 7), 7),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
    }

    #[test]
    fn a_position_of_a_stream_since_declared_again_is_not_used() {
        assert_eq!(start_from(saved(41, 7), 8), DeliverPolicy::All);
    }

    #[test]
    fn without_a_saved_position_a_consumer_starts_at_the_first_message() {
        assert_eq!(start_from(None, 7), DeliverPolicy::All);
    }
}
