//! `shop bench`: how fast the saga runs end to end, against a raw-JetStream ceiling.
//!
//! Two phases on one fresh `nats-server` started through the harness:
//! - **baseline** ([`baseline`]): the saga's exact traffic (5 stored events, 6 deliveries,
//!   4 causal hops per order, same payloads, streams, consumers, dedupe, acks) on raw
//!   JetStream with no business logic: the ceiling;
//! - **system** ([`system`]): the three deployable services as processes with durable
//!   commits, driven by the same closed-loop load generator ([`load`]).
//!
//! Each is measured at several in-flight levels; the system also along a curve of stored
//! orders. With `--cluster`, both phases run on one fresh three-node cluster instead,
//! every stream and KV bucket R3 ([`cluster`]). With `--scale`, [`scale`] runs only a
//! curve of throughput against the number of instances of a partitioned service.
//! `docs/BENCHMARKS.md` explains the method and holds the latest figures.

pub mod baseline;
pub mod census;
pub mod cluster;
pub mod error;
pub mod hops;
pub mod latency;
pub mod load;
pub mod payloads;
pub mod procstat;
pub mod report;
pub mod scale;
pub mod system;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use shop_events::EventKind;

pub use baseline::run_baseline;
pub use error::BenchError;
pub use load::{LoadRun, LoadSpec};
pub use report::BenchReport;
pub use scale::{run_scale, ScaleReport, ScaleSpec};

use crate::cluster::Broker;
use crate::load::{measure, preload, Confirmations, Preload, ORDER_TIMEOUT};
use crate::procstat::Probe;
use crate::report::{check_targets, Comparison, HistoryPoint, Machine, Phase, PhaseRun, Settings};
use crate::system::System;

/// What to run; `Default` is the full benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The measured window of each level (after a warm-up of a few seconds).
    pub duration: Duration,
    /// Orders in flight, one level each.
    pub inflight: Vec<usize>,
    /// Where the checkout, inventory and payment binaries are.
    pub bin_dir: PathBuf,
    /// Print the report as JSON instead of the table.
    pub json: bool,
    /// Stored-orders points of the history curve; each is preloaded through the system.
    pub history: Vec<u64>,
    /// Short windows, for smoke runs; figures are indicative only.
    pub quick: bool,
    /// Both phases on a fresh three-node cluster, every stream and KV bucket R3.
    pub cluster: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        // `shop bench` ships next to the service binaries.
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("."));
        BenchOptions {
            duration: Duration::from_secs(20),
            inflight: vec![1, 16, 64, 256],
            bin_dir,
            json: false,
            history: Vec::new(),
            quick: false,
            cluster: false,
        }
    }
}

/// Warm-up before each window: long enough for consumers to reach steady batches.
const WARMUP: Duration = Duration::from_secs(3);
const QUICK_WARMUP: Duration = Duration::from_millis(500);
const QUICK_WINDOW: Duration = Duration::from_secs(2);
/// The history preload reports progress every this many orders.
const PRELOAD_STEP: u64 = 10_000;

impl BenchOptions {
    fn validate(&self) -> Result<(), BenchError> {
        if self.inflight.is_empty() || self.inflight.contains(&0) {
            return Err(BenchError::Options(
                "--inflight needs one or more levels, each at least 1".into(),
            ));
        }
        if self.duration.is_zero() {
            return Err(BenchError::Options("--duration must be more than 0".into()));
        }
        system::check_binaries(&self.bin_dir)
    }

    /// (warm-up, window) per level.
    fn windows(&self) -> (Duration, Duration) {
        if self.quick {
            (QUICK_WARMUP, self.duration.min(QUICK_WINDOW))
        } else {
            (WARMUP, self.duration)
        }
    }

    fn levels(&self) -> Vec<usize> {
        let mut levels = self.inflight.clone();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    fn spec(&self, inflight: usize) -> LoadSpec {
        let (warmup, window) = self.windows();
        LoadSpec::new(inflight, warmup, window)
    }
}

fn machine(server_bin: Option<PathBuf>) -> Machine {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let nats_server = server_bin
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            // `nats-server: v2.15.1` → `v2.15.1`
            let version = text.trim();
            version
                .strip_prefix("nats-server: ")
                .unwrap_or(version)
                .to_owned()
        })
        .unwrap_or_default();
    Machine {
        cores,
        memory_gib,
        nats_server,
    }
}

/// The harness's config caps the file store at 1 GB, which a long run outgrows; a
/// `jetstream` block replaces the whole default block, so it names its own store.
fn server_config(store: &std::path::Path) -> String {
    format!(
        "jetstream {{\n  store_dir: {:?}\n  max_memory_store: 64MB\n  max_file_store: 32GB\n}}\n",
        store.display().to_string()
    )
}

fn ensure_progress(phase: &str, run: &LoadRun) -> Result<(), BenchError> {
    if run.orders == 0 {
        return Err(BenchError::NoProgress {
            phase: phase.into(),
            inflight: run.inflight,
            failed: run.failed,
        });
    }
    Ok(())
}

fn log_run(phase: &str, run: &LoadRun) {
    tracing::info!(
        phase,
        inflight = run.inflight,
        orders_per_sec = format!("{:.0}", run.orders_per_sec),
        p50_ms = format!("{:.2}", run.latency.p50_ms),
        p99_ms = format!("{:.2}", run.latency.p99_ms),
        failed = run.failed,
        "level done"
    );
}

async fn baseline_phase(
    js: &Context,
    opts: &BenchOptions,
    nats: &[Probe],
) -> Result<Phase, BenchError> {
    let chain = baseline::Chain::start(js).await?;
    let confirmations = Arc::new(Confirmations::watch(&js.client()).await?);
    let mut probes = vec![Probe::this_process("bench")];
    probes.extend_from_slice(nats);
    let levels = opts.levels();
    let mut phase = Phase::default();
    for (i, inflight) in levels.iter().enumerate() {
        let run = measure(js, &confirmations, &opts.spec(*inflight), &probes).await?;
        log_run("baseline", &run);
        ensure_progress("baseline", &run)?;
        if i == 0 {
            phase.hops_low = Some(hops::breakdown(js, &run.traces).await?);
        }
        if i + 1 == levels.len() {
            phase.hops_high = Some(hops::breakdown(js, &run.traces).await?);
        }
        phase.runs.push(PhaseRun {
            load: run,
            events_per_group_commit: BTreeMap::new(),
        });
    }
    chain.stop().await?;
    Ok(phase)
}

struct SystemResults {
    phase: Phase,
    memory: BTreeMap<String, procstat::Memory>,
    history: Vec<HistoryPoint>,
    census: census::Census,
}

async fn system_phase(
    broker: &Broker,
    js: &Context,
    opts: &BenchOptions,
    nats: &[Probe],
) -> Result<SystemResults, BenchError> {
    tracing::info!(bin_dir = %opts.bin_dir.display(), "starting the services as processes");
    // The services' databases in a directory of our own, so the census can read them
    // after the services stopped.
    let data = tempfile::Builder::new()
        .prefix("shop-bench-data-")
        .tempdir()
        .map_err(|e| BenchError::io("creating the services' data directory", e))?;
    let system = System::start(
        &broker.url(),
        &opts.bin_dir,
        js,
        data.path(),
        broker.replicas(),
    )
    .await?;
    broker.settle().await?;
    let confirmations = Arc::new(Confirmations::watch(&js.client()).await?);
    let mut probes = system.services().to_vec();
    probes.extend_from_slice(nats);
    probes.push(Probe::this_process("loadgen"));
    let levels = opts.levels();
    let mut phase = Phase::default();
    let mut stored = 0u64;
    for (i, inflight) in levels.iter().enumerate() {
        let before = system.counters().await;
        let run = measure(js, &confirmations, &opts.spec(*inflight), &probes).await?;
        let after = system.counters().await;
        log_run("system", &run);
        ensure_progress("system", &run)?;
        stored += run.completed_total;
        if i == 0 {
            phase.hops_low = Some(hops::breakdown(js, &run.traces).await?);
        }
        if i + 1 == levels.len() {
            phase.hops_high = Some(hops::breakdown(js, &run.traces).await?);
        }
        let events_per_group_commit = after
            .iter()
            .map(|(service, now)| {
                let then = before.get(service).copied().unwrap_or_default();
                (service.clone(), now.since(&then).batch_size())
            })
            .collect();
        phase.runs.push(PhaseRun {
            load: run,
            events_per_group_commit,
        });
    }
    let memory = system.memory()?;

    // The history curve measures at the level that gave the most throughput.
    let peak_level = phase
        .peak()
        .map_or(levels[levels.len() - 1], |r| r.inflight);
    let preload_level = levels[levels.len() - 1];
    let mut points = opts.history.clone();
    points.sort_unstable();
    points.dedup();
    let mut history = Vec::new();
    for point in points {
        let mut loaded: Option<Preload> = None;
        while stored < point {
            let step = (point - stored).min(PRELOAD_STEP);
            let chunk = preload(js, &confirmations, preload_level, step, ORDER_TIMEOUT).await?;
            stored += chunk.orders;
            let total = loaded.get_or_insert(Preload {
                orders: 0,
                failed: 0,
                elapsed_s: 0.0,
                orders_per_sec: 0.0,
            });
            total.orders += chunk.orders;
            total.failed += chunk.failed;
            total.elapsed_s += chunk.elapsed_s;
            total.orders_per_sec = total.orders as f64 / total.elapsed_s.max(f64::EPSILON);
            tracing::info!(
                stored,
                target = point,
                orders_per_sec = format!("{:.0}", chunk.orders_per_sec),
                "preloading"
            );
            if chunk.orders == 0 {
                return Err(BenchError::NoProgress {
                    phase: "history preload".into(),
                    inflight: preload_level,
                    failed: chunk.failed,
                });
            }
        }
        let at = stored;
        let run = measure(js, &confirmations, &opts.spec(peak_level), &probes).await?;
        log_run(&format!("history {at}"), &run);
        ensure_progress("history", &run)?;
        stored += run.completed_total;
        history.push(HistoryPoint {
            stored_orders: at,
            preload: loaded,
            run,
            memory: system.memory()?,
            service_disk_bytes: system.disk_bytes(),
        });
    }
    drop(confirmations);
    system.stop().await?;
    let census = census::Census::take(stored, data.path(), js).await?;
    Ok(SystemResults {
        phase,
        memory,
        history,
        census,
    })
}

/// Runs the whole benchmark and writes the table (or, with `json`, the JSON report) to `out`.
///
/// Progress goes to `tracing` at info level. The services' binaries must already be built.
pub async fn run(opts: BenchOptions, out: &mut impl Write) -> Result<BenchReport, BenchError> {
    opts.validate()?;
    let broker = Broker::start(opts.cluster, server_config).await?;
    let client = shop_harness::connect(&broker.url()).await?;
    let js = jetstream::new(client);
    broker.declare_streams(&js).await?;
    let nats = broker.nats_probes()?;

    tracing::info!(levels = ?opts.levels(), "baseline phase: raw JetStream chain");
    let baseline = baseline_phase(&js, &opts, &nats).await?;
    baseline::purge_event_streams(&js).await?;

    tracing::info!("system phase: checkout, inventory and payment as processes");
    let results = system_phase(&broker, &js, &opts, &nats).await?;
    let topology = broker.topology(&js).await?;

    let templates = payloads::Templates::new()?;
    let mut payload_bytes = templates.sizes();
    let placed = payloads::order_placed(&payloads::new_order_id(), 0)?;
    payload_bytes.insert(
        EventKind::OrderPlaced.name().to_owned(),
        placed.to_json().len(),
    );

    let comparison = Comparison::of(&baseline, &results.phase);
    let targets = check_targets(&comparison, &results.phase, &results.history);
    let (warmup, window) = opts.windows();
    let report = BenchReport {
        machine: machine(shop_harness::server::find_server_binary().ok()),
        topology,
        settings: Settings {
            warmup_s: warmup.as_secs_f64(),
            measure_s: window.as_secs_f64(),
            inflight: opts.levels(),
            history: opts.history.clone(),
            quick: opts.quick,
        },
        payload_bytes,
        baseline,
        system: results.phase,
        system_memory: results.memory,
        comparison,
        history: results.history,
        targets,
        census: results.census,
    };
    write_report(out, opts.json, &report, || report.render_table())?;
    drop(broker);
    Ok(report)
}

/// Writes a report as pretty JSON (`--json`) or as its table.
pub(crate) fn write_report<R: serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    report: &R,
    table: impl FnOnce() -> String,
) -> Result<(), BenchError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out).map_err(|e| BenchError::io("writing the report", e))
    } else {
        write!(out, "{}", table()).map_err(|e| BenchError::io("writing the report", e))
    }
}
