//! The bench's findings: a serialisable report, the targets checked against it, and the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::hops::Hops;
use crate::load::{LoadRun, Preload};
use crate::procstat::Memory;

/// What the numbers were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub nats_server: String,
}

/// Where both phases ran: one server, or a cluster with every stream on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// nats-server processes; their CPU is reported summed under `nats-server`.
    pub nodes: usize,
    /// Copies of every stream and KV bucket.
    pub replicas: usize,
    /// On a cluster, every stream the run used (KV buckets as `KV_…`), each checked R3.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
}

impl Topology {
    pub fn single() -> Topology {
        Topology {
            nodes: 1,
            replicas: 1,
            streams: Vec::new(),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub warmup_s: f64,
    pub measure_s: f64,
    pub inflight: Vec<usize>,
    pub history: Vec<u64>,
    pub quick: bool,
}

/// One load level of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRun {
    #[serde(flatten)]
    pub load: LoadRun,
    /// System phase: events per group commit, by service, over the whole level.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub events_per_group_commit: BTreeMap<String, f64>,
}

/// Both phases report the same shape.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Phase {
    pub runs: Vec<PhaseRun>,
    /// Per-hop medians at the lowest level (normally 1 in flight).
    pub hops_low: Option<Hops>,
    /// Per-hop medians at the highest level.
    pub hops_high: Option<Hops>,
}

impl Phase {
    /// The run with the highest throughput.
    pub fn peak(&self) -> Option<&LoadRun> {
        self.runs
            .iter()
            .map(|r| &r.load)
            .max_by(|a, b| a.orders_per_sec.total_cmp(&b.orders_per_sec))
    }

    /// The run at the most orders in flight.
    pub fn saturated(&self) -> Option<&LoadRun> {
        self.runs.iter().map(|r| &r.load).max_by_key(|r| r.inflight)
    }

    /// The run at the fewest orders in flight.
    pub fn lowest(&self) -> Option<&LoadRun> {
        self.runs.iter().map(|r| &r.load).min_by_key(|r| r.inflight)
    }
}

/// One point of the stored-orders curve.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPoint {
    /// Orders already confirmed and stored (sled and streams) when the window opened.
    pub stored_orders: u64,
    /// What it took to get there from the previous point; `None` if nothing was needed.
    pub preload: Option<Preload>,
    pub run: LoadRun,
    pub memory: BTreeMap<String, Memory>,
    /// Bytes of the services' data directory (sled databases and logs).
    pub service_disk_bytes: u64,
}

/// System against baseline.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Comparison {
    /// Peak system orders/s ÷ peak baseline orders/s.
    pub throughput_ratio: f64,
    /// System p50 ÷ baseline p50, both at the lowest level (1 in flight).
    pub p50_low_ratio: f64,
}

/// One target of the performance issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when the run did not include what the target needs (for example 1M stored orders).
    pub met: Option<bool>,
}

/// Everything `shop bench` measured; printed as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub topology: Topology,
    pub settings: Settings,
    /// Body size of each event of the happy path, identical in both phases.
    pub payload_bytes: BTreeMap<String, usize>,
    pub baseline: Phase,
    pub system: Phase,
    /// Current and peak RSS of each service after the scaling curve.
    pub system_memory: BTreeMap<String, Memory>,
    pub comparison: Comparison,
    pub history: Vec<HistoryPoint>,
    pub targets: Vec<TargetCheck>,
    /// What the system kept after its run, per order.
    pub census: crate::census::Census,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Comparison {
    pub fn of(baseline: &Phase, system: &Phase) -> Comparison {
        let peak = |p: &Phase| p.peak().map_or(0.0, |r| r.orders_per_sec);
        let p50 = |p: &Phase| p.lowest().map_or(0.0, |r| r.latency.p50_ms);
        Comparison {
            throughput_ratio: ratio(peak(system), peak(baseline)),
            p50_low_ratio: ratio(p50(system), p50(baseline)),
        }
    }
}

/// The performance issue's targets against what was measured.
pub fn check_targets(
    comparison: &Comparison,
    system: &Phase,
    history: &[HistoryPoint],
) -> Vec<TargetCheck> {
    let mut checks = vec![
        TargetCheck {
            target: "saturated throughput >= 0.5 x baseline".into(),
            measured: format!("{:.2} x", comparison.throughput_ratio),
            met: Some(comparison.throughput_ratio >= 0.5),
        },
        TargetCheck {
            target: "p50 at 1 in flight <= 3 x baseline p50".into(),
            measured: format!("{:.2} x", comparison.p50_low_ratio),
            met: Some(comparison.p50_low_ratio > 0.0 && comparison.p50_low_ratio <= 3.0),
        },
    ];
    if let Some(sat) = system.saturated() {
        checks.push(TargetCheck {
            target: "p99 at saturation <= 100 ms".into(),
            measured: format!("{:.1} ms at {} in flight", sat.latency.p99_ms, sat.inflight),
            met: Some(sat.latency.p99_ms <= 100.0),
        });
    }
    let first = history.first();
    let last = history.last();
    let reached_1m = last.is_some_and(|p| p.stored_orders >= 1_000_000);
    if let (Some(first), Some(last)) = (first, last) {
        let r = ratio(last.run.orders_per_sec, first.run.orders_per_sec);
        checks.push(TargetCheck {
            target: "throughput at 1M stored within 20% of 10k".into(),
            measured: format!(
                "{:.2} x at {} stored vs {} stored",
                r, last.stored_orders, first.stored_orders
            ),
            met: reached_1m.then_some(r >= 0.8),
        });
        let worst = last.memory.values().map(|m| m.peak_kib).max().unwrap_or(0);
        checks.push(TargetCheck {
            target: "peak RSS per service at 1M stored < 200 MiB".into(),
            measured: format!("{:.0} MiB at {} stored", mib(worst), last.stored_orders),
            met: reached_1m.then_some(mib(worst) < 200.0),
        });
    } else {
        for target in [
            "throughput at 1M stored within 20% of 10k",
            "peak RSS per service at 1M stored < 200 MiB",
        ] {
            checks.push(TargetCheck {
                target: target.into(),
                measured: "not run (no --history)".into(),
                met: None,
            });
        }
    }
    checks
}

fn cpu_cell(run: &LoadRun, labels: &[&str]) -> String {
    labels
        .iter()
        .map(|l| format!("{:.2}", run.cpu_s_per_1k.get(*l).copied().unwrap_or(0.0)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn run_row(table: &mut String, phase: &str, run: &LoadRun, cpu: &str) {
    let _ = writeln!(
        table,
        "{phase:<9} {:>5} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>7}  {cpu}",
        run.inflight,
        run.orders_per_sec,
        run.latency.p50_ms,
        run.latency.p95_ms,
        run.latency.p99_ms,
        run.failed,
    );
}

fn hops_row(table: &mut String, phase: &str, level: &str, hops: &Option<Hops>) {
    if let Some(h) = hops {
        let _ = writeln!(
            table,
            "{phase:<9} {level:<6} {:>8.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}   (n={})",
            h.publish_to_placed_ms,
            h.inventory_ms,
            h.payment_ms,
            h.checkout_ms,
            h.confirmed_to_observed_ms,
            h.samples
        );
    }
}

impl BenchReport {
    /// The human-readable table `shop bench` prints.
    pub fn render_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "shop bench: {} cores, {:.0} GiB, nats-server {}; warm-up {:.1} s, window {:.1} s{}",
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.nats_server,
            self.settings.warmup_s,
            self.settings.measure_s,
            if self.settings.quick { " (quick)" } else { "" }
        );
        if self.topology.nodes > 1 {
            let _ = writeln!(
                t,
                "on a {}-node cluster (R{}): both phases, every stream and KV bucket on {} nodes \
                 ({}); nats CPU is the {} nodes summed",
                self.topology.nodes,
                self.topology.replicas,
                self.topology.replicas,
                self.topology.streams.join(", "),
                self.topology.nodes,
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "phase     inflt  orders/s  p50 ms   p95 ms   p99 ms  failed  CPU s/1k orders"
        );
        for r in &self.baseline.runs {
            run_row(
                &mut t,
                "baseline",
                &r.load,
                &format!(
                    "bench {} | nats {}",
                    cpu_cell(&r.load, &["bench"]),
                    cpu_cell(&r.load, &["nats-server"])
                ),
            );
        }
        for r in &self.system.runs {
            let batches = r
                .events_per_group_commit
                .iter()
                .map(|(s, b)| format!("{s} {b:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            run_row(
                &mut t,
                "system",
                &r.load,
                &format!(
                    "services {:.2} (ck/inv/pay {}) | nats {} | loadgen {} | ev/commit: {batches}",
                    ["checkout", "inventory", "payment"]
                        .iter()
                        .map(|l| r.load.cpu_s_per_1k.get(*l).copied().unwrap_or(0.0))
                        .sum::<f64>(),
                    cpu_cell(&r.load, &["checkout", "inventory", "payment"]),
                    cpu_cell(&r.load, &["nats-server"]),
                    cpu_cell(&r.load, &["loadgen"]),
                ),
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "throughput ratio system/baseline (peak): {:.2}   p50 ratio at lowest level: {:.2}",
            self.comparison.throughput_ratio, self.comparison.p50_low_ratio
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "per-hop medians (ms)  publish  inventory  payment  checkout  observed"
        );
        hops_row(&mut t, "baseline", "low", &self.baseline.hops_low);
        hops_row(&mut t, "baseline", "high", &self.baseline.hops_high);
        hops_row(&mut t, "system", "low", &self.system.hops_low);
        hops_row(&mut t, "system", "high", &self.system.hops_high);
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "service memory after the scaling curve (RSS / peak MiB):"
        );
        for (service, m) in &self.system_memory {
            let _ = writeln!(
                t,
                "  {service:<10} {:>7.1} / {:>7.1}",
                mib(m.rss_kib),
                mib(m.peak_kib)
            );
        }
        if !self.history.is_empty() {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "stored orders  inflt  orders/s  p50 ms  p99 ms  peak RSS MiB ck/inv/pay   disk MiB  preload"
            );
            for p in &self.history {
                let rss = ["checkout", "inventory", "payment"]
                    .iter()
                    .map(|s| format!("{:.0}", mib(p.memory.get(*s).map_or(0, |m| m.peak_kib))))
                    .collect::<Vec<_>>()
                    .join("/");
                let preload = p.preload.map_or("-".to_owned(), |pl| {
                    format!(
                        "{} orders in {:.0} s ({:.0}/s)",
                        pl.orders, pl.elapsed_s, pl.orders_per_sec
                    )
                });
                let _ = writeln!(
                    t,
                    "{:>13}  {:>5} {:>9.0} {:>7.1} {:>7.1}  {:>24}  {:>8.0}  {preload}",
                    p.stored_orders,
                    p.run.inflight,
                    p.run.orders_per_sec,
                    p.run.latency.p50_ms,
                    p.run.latency.p99_ms,
                    rss,
                    p.service_disk_bytes as f64 / (1024.0 * 1024.0),
                );
            }
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "targets:");
        for c in &self.targets {
            let verdict = match c.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not run",
            };
            let _ = writeln!(t, "  [{verdict:^7}] {:<46} {}", c.target, c.measured);
        }
        t.push_str(&self.census.render());
        t
    }
}
