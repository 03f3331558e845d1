//! The closed-loop load generator both phases share: N orders in flight, a new order placed
//! as soon as one is confirmed; latency runs from the publish to `OrderConfirmed` received.
//!
//! Confirmations are observed on a core NATS subscription to `events.orders.confirmed.>`,
//! which sees each publish as the server receives it, without a consumer of its own that
//! would add deliveries the saga does not have.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::Context;
use async_nats::Client;
use futures::StreamExt;
use serde::Serialize;
use shop_events::subjects::published_filter;
use shop_events::EventKind;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::latency::LatencySummary;
use crate::payloads::{new_order_id, order_placed, publish_message};
use crate::procstat::{CpuSnapshot, Probe};
use crate::BenchError;

/// When a confirmation arrived, on both clocks: monotonic for latency, wall for
/// comparing with the server's stored timestamps.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    wall: SystemTime,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Seen>>>>;

/// Watches `OrderConfirmed` and wakes whoever waits for that order; stops on drop.
pub struct Confirmations {
    waiters: Waiters,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Confirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmations").finish_non_exhaustive()
    }
}

impl Confirmations {
    pub async fn watch(client: &Client) -> Result<Confirmations, BenchError> {
        let mut subscription = client
            // The saga's last hop: every OrderConfirmed.
            .subscribe(published_filter(EventKind::OrderConfirmed))
            .await
            .map_err(|e| BenchError::js("subscribing to confirmations", e))?;
        // The server must know the subscription before the first order goes out.
        client
            .flush()
            .await
            .map_err(|e| BenchError::js("flushing the subscription", e))?;
        let waiters: Waiters = Arc::default();
        let shared = waiters.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let seen = Seen {
                    at: Instant::now(),
                    wall: SystemTime::now(),
                };
                let Some(order_id) = message.subject.as_str().rsplit('.').next() else {
                    continue;
                };
                let waiter = shared.lock().ok().and_then(|mut w| w.remove(order_id));
                // A second publish of the same event (a relay retry) finds no waiter: fine.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(seen);
                }
            }
        });
        Ok(Confirmations { waiters, task })
    }

    fn expect(&self, order_id: &str) -> oneshot::Receiver<Seen> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(order_id.to_owned(), tx);
        }
        rx
    }

    fn forget(&self, order_id: &str) {
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(order_id);
        }
    }
}

impl Drop for Confirmations {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One measured load level.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Orders in flight at any time.
    pub inflight: usize,
    /// Load before the window opens, so batches, caches and streams are warm.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// An order not confirmed within this is counted as failed and replaced.
    pub order_timeout: Duration,
}

/// Checkout's default order deadline: an order slower than that would be cancelled anyway.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(30);

impl LoadSpec {
    pub fn new(inflight: usize, warmup: Duration, measure: Duration) -> LoadSpec {
        LoadSpec {
            inflight,
            warmup,
            measure,
            order_timeout: ORDER_TIMEOUT,
        }
    }
}

/// An order completed inside the window, kept for the per-hop breakdown.
#[derive(Debug, Clone)]
pub struct Trace {
    pub order_id: String,
    pub published: SystemTime,
    pub observed: SystemTime,
}

/// What one load level measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRun {
    pub inflight: usize,
    /// Actual length of the measured window, in seconds.
    pub window_s: f64,
    /// Orders confirmed inside the window.
    pub orders: u64,
    pub orders_per_sec: f64,
    /// Orders not confirmed in time or whose publish failed, over the whole run.
    pub failed: u64,
    /// Orders confirmed over the whole run, warm-up and drain included (they are stored).
    pub completed_total: u64,
    /// Publish → `OrderConfirmed` received, for orders confirmed inside the window.
    pub latency: LatencySummary,
    /// CPU seconds per 1,000 orders, by process label, over the window.
    pub cpu_s_per_1k: BTreeMap<String, f64>,
    /// The last orders of the window, for the per-hop breakdown.
    #[serde(skip)]
    pub traces: Vec<Trace>,
}

/// How many traces a run keeps; enough for a stable median, cheap to look up.
const TRACES_KEPT: usize = 40;

struct Shared {
    js: Context,
    confirmations: Arc<Confirmations>,
    stop_at: Instant,
    /// Orders the run may still place; the preload uses it, measured runs do not.
    budget: AtomicU64,
    seq: AtomicU64,
    order_timeout: Duration,
    record: bool,
}

#[derive(Default)]
struct WorkerLog {
    /// (confirmed at, latency, trace)
    completions: Vec<(Instant, Duration, Trace)>,
    completed: u64,
    failed: u64,
}

async fn place_and_wait(shared: &Shared, log: &mut WorkerLog) -> Result<(), BenchError> {
    let order_id = new_order_id();
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let envelope = order_placed(&order_id, seq)?;
    let subject = envelope.subject();
    let confirmed = shared.confirmations.expect(&order_id);
    let published = SystemTime::now();
    let started = Instant::now();
    let acked = async {
        shared
            .js
            .send_publish(subject.clone(), publish_message(&envelope))
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(reason) = acked {
        shared.confirmations.forget(&order_id);
        log.failed += 1;
        tracing::warn!(%subject, %reason, "placing an order failed");
        // Do not spin on a broken connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Ok(());
    }
    match tokio::time::timeout(shared.order_timeout, confirmed).await {
        Ok(Ok(seen)) => {
            log.completed += 1;
            if shared.record {
                let trace = Trace {
                    order_id,
                    published,
                    observed: seen.wall,
                };
                log.completions
                    .push((seen.at, seen.at.duration_since(started), trace));
            }
        }
        _ => {
            shared.confirmations.forget(&order_id);
            log.failed += 1;
            tracing::warn!(%order_id, "order not confirmed in time");
        }
    }
    Ok(())
}

async fn worker(shared: Arc<Shared>) -> Result<WorkerLog, BenchError> {
    let mut log = WorkerLog::default();
    while Instant::now() < shared.stop_at {
        let granted = shared
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !granted {
            break;
        }
        place_and_wait(&shared, &mut log).await?;
    }
    Ok(log)
}

fn spawn_workers(
    shared: &Arc<Shared>,
    inflight: usize,
) -> Vec<JoinHandle<Result<WorkerLog, BenchError>>> {
    (0..inflight)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect()
}

async fn join_workers(
    handles: Vec<JoinHandle<Result<WorkerLog, BenchError>>>,
) -> Result<Vec<WorkerLog>, BenchError> {
    let mut logs = Vec::with_capacity(handles.len());
    for handle in handles {
        let log = handle
            .await
            .map_err(|e| BenchError::Proc(format!("a load worker panicked: {e}")))??;
        logs.push(log);
    }
    Ok(logs)
}

/// Runs one load level: warm-up, then the measured window; waits for the orders in flight
/// at the end so the next level starts from a quiet system.
pub async fn measure(
    js: &Context,
    confirmations: &Arc<Confirmations>,
    spec: &LoadSpec,
    probes: &[Probe],
) -> Result<LoadRun, BenchError> {
    if spec.inflight == 0 {
        return Err(BenchError::Options(
            "in-flight levels must be at least 1".into(),
        ));
    }
    let start = Instant::now();
    let opens = start + spec.warmup;
    let closes = opens + spec.measure;
    let shared = Arc::new(Shared {
        js: js.clone(),
        confirmations: confirmations.clone(),
        stop_at: closes,
        budget: AtomicU64::new(u64::MAX),
        seq: AtomicU64::new(0),
        order_timeout: spec.order_timeout,
        record: true,
    });
    let handles = spawn_workers(&shared, spec.inflight);
    tokio::time::sleep_until(opens).await;
    let cpu_before = CpuSnapshot::take(probes)?;
    let opened = Instant::now();
    tokio::time::sleep_until(closes).await;
    let cpu_after = CpuSnapshot::take(probes)?;
    let closed = Instant::now();
    let logs = join_workers(handles).await?;

    let failed = logs.iter().map(|l| l.failed).sum();
    let completed_total = logs.iter().map(|l| l.completed).sum();
    let mut in_window: Vec<(Instant, Duration, Trace)> = logs
        .into_iter()
        .flat_map(|l| l.completions)
        .filter(|(at, _, _)| *at >= opened && *at <= closed)
        .collect();
    in_window.sort_by_key(|(at, _, _)| *at);
    let orders = in_window.len() as u64;
    let window_s = closed.duration_since(opened).as_secs_f64();
    let per_1k = |cpu: f64| {
        if orders == 0 {
            0.0
        } else {
            cpu * 1000.0 / orders as f64
        }
    };
    let cpu_s_per_1k = cpu_after
        .since(&cpu_before)
        .into_iter()
        .map(|(label, cpu)| (label, per_1k(cpu)))
        .collect();
    let traces = in_window
        .iter()
        .rev()
        .take(TRACES_KEPT)
        .map(|(_, _, t)| t.clone())
        .collect();
    let latency = LatencySummary::from_samples(in_window.into_iter().map(|(_, l, _)| l).collect());
    Ok(LoadRun {
        inflight: spec.inflight,
        window_s,
        orders,
        orders_per_sec: if window_s > 0.0 {
            orders as f64 / window_s
        } else {
            0.0
        },
        failed,
        completed_total,
        latency,
        cpu_s_per_1k,
        traces,
    })
}

/// What pushing stored orders through the system took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Preload {
    pub orders: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub orders_per_sec: f64,
}

/// Pushes `count` orders through at `inflight` as fast as the system goes, unmeasured.
pub async fn preload(
    js: &Context,
    confirmations: &Arc<Confirmations>,
    inflight: usize,
    count: u64,
    order_timeout: Duration,
) -> Result<Preload, BenchError> {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        js: js.clone(),
        confirmations: confirmations.clone(),
        // Bounded by the budget, not by time; a day is "never" for a bench.
        stop_at: started + Duration::from_secs(24 * 60 * 60),
        budget: AtomicU64::new(count),
        seq: AtomicU64::new(0),
        order_timeout,
        record: false,
    });
    let logs = join_workers(spawn_workers(&shared, inflight.max(1))).await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let orders: u64 = logs.iter().map(|l| l.completed).sum();
    Ok(Preload {
        orders,
        failed: logs.iter().map(|l| l.failed).sum(),
        elapsed_s,
        orders_per_sec: if elapsed_s > 0.0 {
            orders as f64 / elapsed_s
        } else {
            0.0
        },
    })
}
