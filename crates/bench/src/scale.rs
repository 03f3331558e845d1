//! `shop-lab bench --scale payment=1,2,4`: throughput against the number of instances of
//! one partitioned service, each count on a fresh nats-server, gateway simulator and shop.
//!
//! The gateway answers every call after a fixed latency and each instance may have only
//! [`GATEWAY_CONCURRENCY`] calls in flight, so one payment instance can charge at most
//! `concurrency ÷ latency` orders/s: the gateway is the bottleneck by construction, and
//! what falls short of N × the single-instance rate is the cost of coordinating N.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use serde::Serialize;
use shop_events::partition::GROUPS_BUCKET;
use shop_harness::shop::SimulatorConfig;
use shop_harness::{Mode, NatsServer, ServerOptions, Service, Shop, ShopConfig};
use tokio::time::Instant;

use crate::load::{measure, Confirmations, LoadRun, LoadSpec};
use crate::procstat::{find_child, Probe};
use crate::report::{Machine, TargetCheck};
use crate::{BenchError, BenchOptions};

/// What the simulated gateway adds to every call: the scale curve's unit of work.
pub const GATEWAY_LATENCY: Duration = Duration::from_millis(100);
/// Gateway calls in flight per payment instance (`SHOP_GATEWAY_CONCURRENCY`); small,
/// so that a few instances saturate the gateway long before they saturate two cores.
pub const GATEWAY_CONCURRENCY: usize = 8;
/// Orders in flight per instance: 8 × the gateway permits, so every instance always has
/// a queue of charges waiting and the measure is of throughput, not of the offered load.
pub const INFLIGHT_PER_INSTANCE: usize = 64;
/// Longest wait for the group to settle: every partition leased, evenly, to the instances
/// started; a handover waits at most a lease TTL (3 s in the harness) per round.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The targets: (instances, minimum ratio of orders/s to one instance).
const TARGETS: [(usize, f64); 2] = [(2, 1.8), (4, 3.2)];

/// Which service to scale and through which instance counts (`payment=1,2,4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSpec {
    pub service: Service,
    /// Ascending, without duplicates, starting at 1 (the reference of every ratio).
    pub counts: Vec<usize>,
}

/// Services whose work is partitioned over instances; inventory is active/standby
/// (one partition), so more instances of it add no throughput to measure.
const SCALABLE: [Service; 2] = [Service::Payment, Service::Checkout];

impl FromStr for ScaleSpec {
    type Err = BenchError;

    fn from_str(text: &str) -> Result<ScaleSpec, BenchError> {
        let invalid = |why: String| BenchError::Options(format!("--scale: {why}"));
        let Some((name, counts)) = text.split_once('=') else {
            return Err(invalid(
                "expected <service>=<n>,<n>,..., e.g. payment=1,2,4".into(),
            ));
        };
        let service = SCALABLE
            .into_iter()
            .find(|s| s.name() == name.trim())
            .ok_or_else(|| {
                invalid(format!(
                    "`{}` cannot be scaled; the scalable services are payment and checkout",
                    name.trim()
                ))
            })?;
        let mut counts = counts
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(invalid(format!(
                    "`{n}` is not an instance count, 1 or more"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        counts.sort_unstable();
        counts.dedup();
        if counts.first() != Some(&1) {
            return Err(invalid(
                "the counts must include 1, the reference every ratio is taken against".into(),
            ));
        }
        Ok(ScaleSpec { service, counts })
    }
}

impl ScaleSpec {
    /// The instance names for a count: `pay-1`, `pay-2`, … (`ck-…` for checkout).
    fn instances(&self, count: usize) -> Vec<String> {
        let prefix = match self.service {
            Service::Checkout => "ck",
            _ => "pay",
        };
        (1..=count).map(|k| format!("{prefix}-{k}")).collect()
    }
}

/// One instance count, measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    pub instances: usize,
    /// From the last instance answering INFO to every partition leased evenly.
    pub settle_s: f64,
    /// The gateway's ceiling for this many payment instances: permits ÷ latency.
    pub gateway_ceiling_per_sec: f64,
    /// Orders/s over the one-instance point's.
    pub ratio: f64,
    #[serde(flatten)]
    pub run: LoadRun,
}

/// What `bench --scale` measured; printed as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub machine: Machine,
    pub service: String,
    pub gateway_latency_ms: f64,
    pub gateway_concurrency: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub quick: bool,
    pub points: Vec<ScalePoint>,
    pub targets: Vec<TargetCheck>,
}

/// Runs the curve and writes the table (or, with `opts.json`, the JSON report) to `out`.
///
/// Only the curve: the baseline and the in-flight levels of the normal bench measure
/// something else and would triple the run time.
pub async fn run_scale(
    opts: BenchOptions,
    spec: ScaleSpec,
    out: &mut impl Write,
) -> Result<ScaleReport, BenchError> {
    crate::system::check_binaries(&opts.bin_dir)?;
    if opts.duration.is_zero() {
        return Err(BenchError::Options("--duration must be more than 0".into()));
    }
    let (warmup, window) = opts.windows();
    tracing::info!(
        service = spec.service.name(),
        counts = ?spec.counts,
        gateway_latency = ?GATEWAY_LATENCY,
        gateway_concurrency = GATEWAY_CONCURRENCY,
        "scale curve"
    );
    let mut points: Vec<ScalePoint> = Vec::new();
    for &count in &spec.counts {
        let (settle, run) = measure_count(&opts, &spec, count, warmup, window).await?;
        let reference = points
            .first()
            .map_or(run.orders_per_sec, |p| p.run.orders_per_sec);
        let payments = if spec.service == Service::Payment {
            count
        } else {
            1
        };
        points.push(ScalePoint {
            instances: count,
            settle_s: settle.as_secs_f64(),
            gateway_ceiling_per_sec: (payments * GATEWAY_CONCURRENCY) as f64
                / GATEWAY_LATENCY.as_secs_f64(),
            ratio: run.orders_per_sec / reference.max(f64::EPSILON),
            run,
        });
    }
    let report = ScaleReport {
        machine: crate::machine(shop_harness::server::find_server_binary().ok()),
        service: spec.service.name().to_owned(),
        gateway_latency_ms: GATEWAY_LATENCY.as_secs_f64() * 1000.0,
        gateway_concurrency: GATEWAY_CONCURRENCY,
        warmup_s: warmup.as_secs_f64(),
        measure_s: window.as_secs_f64(),
        quick: opts.quick,
        targets: check_targets(&points),
        points,
    };
    crate::write_report(out, opts.json, &report, || report.render_table())?;
    Ok(report)
}

/// One point of the curve on a world of its own, so no state or lease carries over.
async fn measure_count(
    opts: &BenchOptions,
    spec: &ScaleSpec,
    count: usize,
    warmup: Duration,
    window: Duration,
) -> Result<(Duration, LoadRun), BenchError> {
    // Declared before the server so that it is removed after the server is gone.
    let store = tempfile::Builder::new()
        .prefix("shop-bench-scale-js-")
        .tempdir()
        .map_err(|e| BenchError::io("creating the JetStream store directory", e))?;
    let server = NatsServer::start_with(
        ServerOptions::default().extra_config(crate::server_config(store.path())),
    )
    .await?;
    let url = server.url();
    let js = jetstream::new(shop_harness::connect(&url).await?);
    shop_harness::declare_streams(&js).await?;

    let config = ShopConfig {
        mode: Mode::Processes {
            bin_dir: opts.bin_dir.clone(),
        },
        gateway: SimulatorConfig {
            latency: GATEWAY_LATENCY,
            failure_rate: 0.0,
        },
        env: vec![(
            "SHOP_GATEWAY_CONCURRENCY".into(),
            GATEWAY_CONCURRENCY.to_string(),
        )],
        ..ShopConfig::default()
    };
    let mut shop = Shop::new(&url, config)?;
    shop.start_gateway().await?;
    for service in Service::ALL.into_iter().filter(|s| *s != spec.service) {
        shop.start_service(service).await?;
    }
    let names = spec.instances(count);
    // Each named instance keeps its own database, `<data dir>/<instance>`.
    for name in &names {
        shop.start_instance(spec.service, name).await?;
    }
    let started = Instant::now();
    wait_settled(&js, spec.service, &names).await?;
    let settle = started.elapsed();
    tracing::info!(
        instances = count,
        settled_in = ?settle,
        "every partition owned, evenly"
    );
    let client = shop_harness::connect(&url).await?;
    crate::system::stock_every_sku(&js, &client).await?;

    let confirmations = Arc::new(Confirmations::watch(&client).await?);
    // The processes there is one of; the scaled instances share a program name.
    let mut probes = vec![Probe::this_process("loadgen")];
    for program in ["nats-server", "gateway-sim"].into_iter().chain(
        Service::ALL
            .iter()
            .filter(|s| **s != spec.service)
            .map(|s| s.name()),
    ) {
        if let Ok(pid) = find_child(program) {
            probes.push(Probe::new(program, pid));
        }
    }
    let inflight = INFLIGHT_PER_INSTANCE * count;
    let run = measure(
        &js,
        &confirmations,
        &LoadSpec::new(inflight, warmup, window),
        &probes,
    )
    .await?;
    crate::log_run(&format!("{} x{count}", spec.service), &run);
    crate::ensure_progress("scale", &run)?;
    drop(confirmations);
    shop.shutdown().await?;
    // Clients still open when their server goes would keep reconnecting to it through
    // the next points of the curve.
    drop(client);
    drop(js);
    drop(server);
    Ok((settle, run))
}

/// Polls the group bucket (what `shop status` reads) until every service's partitions are
/// leased, only to the instances started, each holding ⌊P/N⌋ or ⌈P/N⌉: a rebalance still
/// under way would hand partitions over during the window.
async fn wait_settled(js: &Context, scaled: Service, names: &[String]) -> Result<(), BenchError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut pending = Vec::new();
        for service in Service::ALL {
            let expected: BTreeSet<String> = if service == scaled {
                names.iter().cloned().collect()
            } else {
                BTreeSet::from([service.name().to_owned()])
            };
            let view = shop_runtime::group::view(js, GROUPS_BUCKET, service.name())
                .await
                .map_err(|e| BenchError::js("reading the group bucket", e))?;
            if let Some(why) = unsettled(&view, &expected) {
                pending.push(format!("{service}: {why}"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let last = pending.join("; ");
        if Instant::now() >= deadline {
            return Err(BenchError::Harness(shop_harness::HarnessError::Timeout {
                what: format!("every partition to be owned evenly ({last})"),
                after: SETTLE_TIMEOUT,
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a group is not settled yet, or `None` when it is.
fn unsettled(view: &shop_runtime::group::GroupView, expected: &BTreeSet<String>) -> Option<String> {
    let Some(partitions) = view.partitions else {
        return Some("no instance has joined".into());
    };
    let members: BTreeSet<String> = view.members.iter().cloned().collect();
    if &members != expected {
        return Some(format!("members {members:?}, expected {expected:?}"));
    }
    let unowned = view.unowned();
    if !unowned.is_empty() {
        return Some(format!("{} partition(s) without an owner", unowned.len()));
    }
    let n = expected.len() as u32;
    let (low, high) = (partitions / n, partitions.div_ceil(n));
    let held = view.by_owner();
    let uneven = held
        .iter()
        .any(|(owner, ps)| !expected.contains(owner) || !(low..=high).contains(&(ps.len() as u32)));
    uneven.then(|| format!("not balanced yet: {held:?}"))
}

fn check_targets(points: &[ScalePoint]) -> Vec<TargetCheck> {
    TARGETS
        .iter()
        .map(|(instances, min)| {
            let point = points.iter().find(|p| p.instances == *instances);
            TargetCheck {
                target: format!("{instances} instances >= {min:.1} x one instance"),
                measured: point.map_or("not measured".into(), |p| format!("{:.2} x", p.ratio)),
                met: point.map(|p| p.ratio >= *min),
            }
        })
        .collect()
}

impl ScaleReport {
    pub fn render_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "shop bench --scale {}: {} cores, {:.0} GiB, nats-server {}; warm-up {:.1} s, window {:.1} s{}",
            self.service,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.nats_server,
            self.warmup_s,
            self.measure_s,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            t,
            "gateway: {:.0} ms per call, {} calls in flight per payment instance; {} orders in flight per instance\n",
            self.gateway_latency_ms, self.gateway_concurrency, INFLIGHT_PER_INSTANCE
        );
        let _ = writeln!(
            t,
            "instances  inflt  orders/s  x one  gateway max  of max  p50 ms   p99 ms  failed  settled s"
        );
        for p in &self.points {
            let _ = writeln!(
                t,
                "{:>9}  {:>5}  {:>8.1}  {:>5.2}  {:>11.0}  {:>5.0}%  {:>6.1}  {:>7.1}  {:>6}  {:>9.2}",
                p.instances,
                p.run.inflight,
                p.run.orders_per_sec,
                p.ratio,
                p.gateway_ceiling_per_sec,
                100.0 * p.run.orders_per_sec / p.gateway_ceiling_per_sec.max(f64::EPSILON),
                p.run.latency.p50_ms,
                p.run.latency.p99_ms,
                p.run.failed,
                p.settle_s,
            );
        }
        let _ = writeln!(t, "\ntargets:");
        for c in &self.targets {
            let verdict = match c.met {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "n/a ",
            };
            let _ = writeln!(t, "  {verdict}  {}: {}", c.target, c.measured);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_spec_names_a_partitioned_service_and_counts_from_one() {
        let spec: ScaleSpec = "payment=4,1,2,2".parse().expect("valid");
        assert_eq!(spec.service, Service::Payment);
        assert_eq!(spec.counts, vec![1, 2, 4]);
        assert_eq!(spec.instances(2), vec!["pay-1", "pay-2"]);
        assert!("checkout=1,3".parse::<ScaleSpec>().is_ok());
    }

    #[test]
    fn a_scale_spec_refuses_what_it_cannot_measure() {
        for bad in [
            "inventory=1,2",
            "payment",
            "payment=0,1",
            "payment=2,4",
            "payment=1,x",
        ] {
            assert!(
                matches!(bad.parse::<ScaleSpec>(), Err(BenchError::Options(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn a_group_is_settled_when_its_instances_hold_even_shares() {
        use shop_runtime::group::{GroupView, LeaseView};
        let names: BTreeSet<String> = ["pay-1".into(), "pay-2".into()].into();
        let lease = |owner: &str| LeaseView {
            owner: owner.into(),
            epoch: None,
        };
        let mut view = GroupView {
            partitions: Some(4),
            members: names.iter().cloned().collect(),
            leases: (0..4).map(|p| (p, lease("pay-1"))).collect(),
        };
        assert!(unsettled(&view, &names).is_some(), "one holds everything");
        view.leases.insert(2, lease("pay-2"));
        view.leases.insert(3, lease("pay-2"));
        assert_eq!(unsettled(&view, &names), None);
        view.leases.remove(&3);
        assert!(
            unsettled(&view, &names).is_some(),
            "a partition has no owner"
        );
    }
}
