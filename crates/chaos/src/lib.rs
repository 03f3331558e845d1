//! The chaos scenario: orders keep flowing while services are killed with SIGKILL,
//! the broker restarts, crash points abort processes in the windows that matter,
//! upstream events are re-published and hostile messages are injected. Then the
//! shop must reach quiescence and `shop audit` must find the books balanced.
//!
//! Every number the reliability report needs comes back in [`ChaosReport`].

mod broker;

pub use broker::{BrokerFaults, Topology};

use std::sync::atomic::{AtomicU64, Ordering};

use broker::Broker;
use shop_events::api::checkout::OrderStatus;
use shop_events::partition::{partition_consumer, GROUPS_BUCKET};
use shop_events::stream::INVENTORY_STREAM;
use shop_events::subjects::{event_subject, EVENT_STREAMS};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shop_events::{Envelope, Event, EventKind};
use shop_harness::scenario::{order, order_status, STOREFRONT};
use shop_harness::shop::SimulatorConfig;
use shop_harness::{
    connect, declare_streams, eventually, publish_event, publish_raw, HarnessError, Mode, Service,
    Shop, ShopConfig,
};
use shop_ops::{audit, AuditOptions, AuditReport};
use shop_runtime::crashpoint;

/// Why a chaos run could not complete (violations are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error("audit failed to run: {0}")]
    Audit(#[from] shop_ops::OpsError),
    #[error("the shop did not reach quiescence: {0}")]
    NotQuiescent(String),
}

impl ChaosError {
    /// Whether the run could pass if repeated: harness and audit faults say so
    /// themselves; a shop that never quiesced is a finding, not noise.
    pub fn is_transient(&self) -> bool {
        match self {
            ChaosError::Harness(e) => e.is_transient(),
            ChaosError::Audit(e) => e.is_transient(),
            ChaosError::NotQuiescent(_) => false,
        }
    }
}

/// How hard to shake the shop.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub orders: usize,
    /// Where the `checkout`, `inventory` and `payment` binaries are.
    pub bin_dir: PathBuf,
    /// Pause between two SIGKILLs of a random service.
    pub kill_every: Duration,
    pub broker_restarts: u32,
    /// Probability of each crash point firing where it is reached.
    pub crash_probability: f64,
    /// Share of upstream events re-published (same id, or same order with a new id).
    pub duplicate_share: f64,
    pub malformed: usize,
    pub oversized: usize,
    pub order_deadline: Duration,
    /// Orders placed per second while driving.
    pub rate: u32,
    /// Orders placed while payment is down for longer than the deadline: they expire.
    pub expiring: usize,
    pub seed: u64,
    /// Extra instances of checkout and payment beside their default one (`checkout-2`…);
    /// 0 runs one instance of each. With extras, kills pick any instance, and the run
    /// also scales each of the two services up by one more instance and back down.
    pub instances: usize,
    /// One server, or a three-node cluster with R3 streams whose nodes are killed and
    /// frozen (then each broker fault is a node fault).
    pub topology: Topology,
}

impl ChaosOptions {
    /// The short run CI does: 300 orders, every crash point forced at least once.
    pub fn short(bin_dir: PathBuf) -> ChaosOptions {
        ChaosOptions {
            orders: 300,
            bin_dir,
            kill_every: Duration::from_millis(250),
            broker_restarts: 1,
            crash_probability: 0.003,
            duplicate_share: 0.1,
            malformed: 12,
            oversized: 2,
            order_deadline: Duration::from_secs(4),
            rate: 100,
            expiring: 15,
            seed: 7,
            // Two instances of checkout and payment, scaled to three and back: the
            // partitioned runtime under the same faults (docs/RELIABILITY.md).
            instances: 1,
            topology: Topology::Single,
        }
    }
}

/// What happened in a run, for `docs/RELIABILITY.md`.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub orders: usize,
    /// SIGKILLs per instance (the default instance is named after its service).
    pub kills: BTreeMap<String, u32>,
    /// Instances started (scale up) and stopped with SIGTERM (scale down, a handover).
    pub scale_ups: u32,
    pub scale_downs: u32,
    /// Broker faults of any kind (restarts of the one server, or node kills and freezes).
    pub broker_restarts: u32,
    /// The broker faults by kind, with the stream leader changes they caused.
    pub broker_faults: BrokerFaults,
    /// Upstream publishes that had to be sent again (no PubAck in time, no leader) with
    /// the same `Nats-Msg-Id`.
    pub publish_retries: u64,
    /// The longest time from an order's `OrderPlaced` to its outcome, as the ORDERS
    /// stream stored them, and which order that was.
    pub longest_wait_ms: u128,
    pub longest_wait_order: String,
    /// Orders placed during the payment outage, all past their deadline before payment returned.
    pub expiring_orders: usize,
    pub crashpoint_hits: BTreeMap<String, u32>,
    pub duplicates_injected: usize,
    pub malformed_injected: usize,
    pub malformed_dead_lettered: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub violations: usize,
    pub time_to_quiescence_ms: u128,
    pub total_ms: u128,
    pub audit: AuditReport,
}

const SKUS: usize = 8;

/// Every crash point of the shop: the runtime's own and payment's gateway window.
pub fn crash_points() -> Vec<&'static str> {
    let mut points = crashpoint::ALL.to_vec();
    points.push(shop_payment::gateway::AFTER_GATEWAY_CHARGE_BEFORE_RECORD);
    points
}

/// Runs the chaos scenario and audits the result.
pub async fn run(
    opts: ChaosOptions,
    out: &mut (impl std::io::Write + Send),
) -> Result<ChaosReport, ChaosError> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut broker = Broker::start(opts.topology).await?;
    let mut broker_faults = BrokerFaults::default();
    let retries = AtomicU64::new(0);
    let client = connect(&broker.url()).await?;
    let js = jetstream::new(client.clone());
    if opts.topology == Topology::Single {
        declare_streams(&js).await?;
    }
    let points: Vec<String> = crash_points()
        .iter()
        .map(|p| format!("{p}:{}", opts.crash_probability))
        .collect();
    let base_points = points.join(",");
    let mut shop = Shop::start(
        &broker.url(),
        ShopConfig {
            stream_replicas: opts.topology.replicas(),
            mode: Mode::Processes {
                bin_dir: opts.bin_dir.clone(),
            },
            order_deadline: opts.order_deadline,
            gateway: SimulatorConfig {
                latency: Duration::from_millis(2),
                failure_rate: 0.05,
            },
            crashpoints: Some(base_points.clone()),
            // SHOP_CHAOS_DATA_DIR keeps every log and database for a post-mortem.
            data_dir: std::env::var_os("SHOP_CHAOS_DATA_DIR").map(PathBuf::from),
            // A restart may meet a frozen node: the service then joins its group only
            // after the election, within its minute of join patience.
            ready_within: match opts.topology {
                Topology::Single => Duration::from_secs(30),
                _ => Duration::from_secs(90),
            },
            ..ShopConfig::default()
        },
    )
    .await?;
    broker.wait_ready().await?;
    let _ = writeln!(
        out,
        "chaos: {} orders on {:?}, data in {}",
        opts.orders,
        opts.topology,
        shop.data_dir().display()
    );
    // Named instances of the services that scale out; the last name of each is the one
    // scaled up and down during the run.
    let mut named: Vec<(Service, String)> = Vec::new();
    for service in [Service::Checkout, Service::Payment] {
        for k in 0..opts.instances {
            let name = format!("{}-{}", service.name(), k + 2);
            shop.start_instance(service, &name).await?;
            named.push((service, name));
        }
    }
    let mut scale_ups = 0;
    let mut scale_downs = 0;

    // Stock for most orders, not all: shortages are part of the mix.
    for s in 0..SKUS {
        shop_harness::scenario::replenish(
            &js,
            &format!("chaos-sku-{s}"),
            (opts.orders as u32 / 3).max(10),
        )
        .await?;
    }

    // Before the first order, the stock must be stored for good. Inventory reads
    // replenishments and orders with two consumers, in no order between them: a
    // replenishment delivered to an inventory that a crash point then aborted comes back
    // only after its ack wait (5 s), and the orders placed meanwhile find no stock. The
    // run's outcomes (the forced timeouts above all) assume the stock is there.
    wait_stock_stored(&js, &mut shop, Duration::from_secs(60)).await?;

    let mut kills: BTreeMap<String, u32> = BTreeMap::new();
    let mut broker_restarts = 0;
    let mut duplicates = 0;
    let mut placed_ids = Vec::with_capacity(opts.orders);
    let mut last_kill = Instant::now();
    let restart_at: Vec<usize> = (1..=opts.broker_restarts as usize)
        .map(|i| i * opts.orders / (opts.broker_restarts as usize + 1))
        .collect();

    let outage_at = opts.orders / 3;
    let mut expiring_ids = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_secs(1) / opts.rate.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..opts.orders {
        pace.tick().await;
        if n == outage_at && opts.expiring > 0 {
            // A payment outage longer than the deadline: the orders placed meanwhile time out,
            // and when payment returns it must not charge them (or must refund what it did).
            shop.kill_service(Service::Payment).await?;
            *kills.entry("payment".to_owned()).or_default() += 1;
            // Every payment instance: an outage of the service, not of one instance.
            let payments: Vec<String> = named
                .iter()
                .filter(|(s, _)| *s == Service::Payment)
                .map(|(_, n)| n.clone())
                .chain(std::iter::once(format!("payment-{}", opts.instances + 2)))
                .collect();
            for name in &payments {
                if !shop.instance_exited(Service::Payment, name) {
                    shop.kill_instance(Service::Payment, name).await?;
                    *kills.entry(name.clone()).or_default() += 1;
                }
            }
            for k in 0..opts.expiring {
                let id = format!("chaos-{}-expiring-{k}", opts.seed);
                let sku = format!("chaos-sku-{}", rng.gen_range(0..SKUS));
                let placed = order(&id, &[(&sku, 1, 700)], "tok_visa");
                publish_with_retry(
                    &js,
                    &retries,
                    &Envelope::new(STOREFRONT, Event::OrderPlaced(placed)),
                )
                .await?;
                expiring_ids.push(id);
            }
            // Poll with a deadline rather than `eventually`: crashed services must be revived meanwhile.
            // As long as the settling allows: on a cluster a node fault may overlap the
            // outage (a 10 s freeze, elections, checkout's takeovers), and a cluster run
            // once gave up after 32 s while checkout was still working through the
            // expired deadlines of the partitions it had just taken.
            let until = Instant::now() + opts.order_deadline * 3 + Duration::from_secs(60);
            let mut waiting: Vec<&String> = expiring_ids.iter().collect();
            while !waiting.is_empty() {
                shop.revive_crashed().await?;
                let mut still = Vec::new();
                for id in waiting {
                    let view = order_status(&client, id).await;
                    let cancelled =
                        matches!(&view, Ok(Some(v)) if v.status == OrderStatus::Cancelled);
                    if !cancelled {
                        still.push(id);
                    }
                }
                waiting = still;
                if !waiting.is_empty() && Instant::now() >= until {
                    return Err(ChaosError::NotQuiescent(format!(
                        "{} did not time out while payment was down",
                        waiting[0]
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = writeln!(
                out,
                "chaos: {} orders expired while payment was down",
                expiring_ids.len()
            );
            shop.start_service(Service::Payment).await?;
            for (service, name) in named.iter().filter(|(s, _)| *s == Service::Payment) {
                shop.start_instance(*service, name).await?;
            }
        }
        let id = format!("chaos-{}-{n}", opts.seed);
        let roll: f64 = rng.gen();
        let sku = format!("chaos-sku-{}", rng.gen_range(0..SKUS));
        let placed = if roll < 0.08 {
            order(&id, &[(&sku, 1, 500)], "tok_chargeDeclined")
        } else if roll < 0.12 {
            order(
                &id,
                &[(&sku, 1, 500)],
                "tok_chargeDeclinedInsufficientFunds",
            )
        } else if roll < 0.16 {
            let mut bad = order(&id, &[(&sku, 0, 500)], "tok_visa");
            bad.total = 1;
            bad
        } else if roll < 0.20 {
            order(&id, &[(&sku, 5_000, 10)], "tok_visa")
        } else {
            order(
                &id,
                &[(&sku, rng.gen_range(1..3), rng.gen_range(100..5000))],
                "tok_visa",
            )
        };
        let envelope = Envelope::new(STOREFRONT, Event::OrderPlaced(placed.clone()));
        publish_with_retry(&js, &retries, &envelope).await?;
        placed_ids.push(id.clone());
        if rng.gen::<f64>() < opts.duplicate_share {
            duplicates += 1;
            if rng.gen_bool(0.5) {
                // The same event again (same id): JetStream's window drops it.
                publish_with_retry(&js, &retries, &envelope).await?;
            } else {
                // The same order with a new event id: the services' state makes it a no-op.
                publish_with_retry(
                    &js,
                    &retries,
                    &Envelope::new(STOREFRONT, Event::OrderPlaced(placed)),
                )
                .await?;
            }
        }
        if rng.gen::<f64>() < 0.06 {
            let target = placed_ids[rng.gen_range(0..placed_ids.len())].clone();
            let cancel = Envelope::new(
                STOREFRONT,
                Event::OrderCancellationRequested(shop_events::OrderCancellationRequested {
                    order_id: shop_events::OrderId::parse(target).map_err(|e| {
                        HarnessError::Publish {
                            subject: "cancel".into(),
                            reason: e.to_string(),
                        }
                    })?,
                    reason: "chaos".into(),
                }),
            );
            publish_with_retry(&js, &retries, &cancel).await?;
        }
        if last_kill.elapsed() >= opts.kill_every {
            let pick = rng.gen_range(0..3 + named.len());
            if pick < 3 {
                let service = Service::ALL[pick];
                shop.kill_service(service).await?;
                *kills.entry(service.name().to_owned()).or_default() += 1;
                shop.start_service(service).await?;
            } else {
                let (service, name) = named[pick - 3].clone();
                shop.kill_instance(service, &name).await?;
                *kills.entry(name.clone()).or_default() += 1;
                shop.start_instance(service, &name).await?;
            }
            last_kill = Instant::now();
        }
        // Scaling: now and then one more instance of checkout or payment joins (its
        // partitions are handed over to it) or leaves with SIGTERM (handed back).
        if !named.is_empty() && rng.gen::<f64>() < 0.01 {
            let service = if rng.gen_bool(0.5) {
                Service::Checkout
            } else {
                Service::Payment
            };
            let extra = format!("{}-{}", service.name(), opts.instances + 2);
            if shop.instance_exited(service, &extra) {
                shop.start_instance(service, &extra).await?;
                scale_ups += 1;
            } else {
                // With crash points armed, the handover itself may abort the process:
                // that is one more crash for the survivors to absorb, not a failure.
                if let Err(e) = shop.stop_instance(service, &extra).await {
                    tracing::debug!(error = %e, "a crash point fired during a scale-down");
                }
                scale_downs += 1;
            }
        }
        for crashed in shop.revive_crashed().await? {
            tracing::debug!(service = %crashed, "revived after a crash point");
        }
        for (service, name) in &named {
            if shop.instance_exited(*service, name) {
                // A crash point aborted it (or it never came back): start it again.
                shop.start_instance(*service, name).await?;
            }
        }
        if broker.tick(&mut broker_faults).await? {
            let _ = writeln!(out, "chaos: node back after {n} orders: {broker_faults:?}");
        }
        if restart_at.contains(&n) {
            broker.fault(broker_restarts, &mut broker_faults).await?;
            broker_restarts += 1;
            let _ = writeln!(
                out,
                "chaos: broker fault after {n} orders: {broker_faults:?}"
            );
        }
        // Keep a few hundred orders in flight, not thousands: the point is faults, not overload.
        if n % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }

    // A node still out comes back before the last phase: the books are read from a whole cluster.
    broker.heal(&mut broker_faults).await?;
    let malformed_subjects = inject_hostile(&js, &opts, &mut rng).await?;

    // Force every crash point to fire at least once, so a short run still covers each window.
    force_every_crashpoint(
        &mut shop,
        &client,
        &js,
        &retries,
        &base_points,
        opts.seed,
        out,
    )
    .await?;
    // The storm is over: restart every service without crash points and let it settle.
    shop.set_crashpoints(None);
    for service in Service::ALL {
        if shop.has_exited(service) {
            shop.reap(service);
        }
        shop.kill_service(service).await?;
        *kills.entry(service.name().to_owned()).or_default() += 1;
        shop.start_service(service).await?;
    }
    for (service, name) in &named {
        shop.kill_instance(*service, name).await?;
        *kills.entry(name.clone()).or_default() += 1;
        shop.start_instance(*service, name).await?;
    }
    // The scaled-up extras leave in order (SIGTERM), started again first without crash
    // points so their handover runs clean. One that a crash point aborted (or that was
    // never started) joins first: every run scales each service up and down at least once.
    if !named.is_empty() {
        for service in [Service::Checkout, Service::Payment] {
            let extra = format!("{}-{}", service.name(), opts.instances + 2);
            let running = !shop.instance_exited(service, &extra);
            // Forget it either way: a crash point may have aborted it already.
            shop.kill_instance(service, &extra).await?;
            shop.start_instance(service, &extra).await?;
            if !running {
                scale_ups += 1;
            }
            shop.stop_instance(service, &extra).await?;
            scale_downs += 1;
        }
    }

    placed_ids.extend(expiring_ids.iter().cloned());
    let quiesce_started = Instant::now();
    let settle_within = opts.order_deadline * 3 + Duration::from_secs(60);
    let outcomes = match wait_quiescent(&client, &placed_ids, settle_within).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            // Show where the first unsettled order is stuck before giving up.
            for id in &placed_ids {
                let view = order_status(&client, id).await;
                let settled = matches!(&view, Ok(Some(v)) if v.status != OrderStatus::Pending);
                if !settled {
                    let _ = writeln!(out, "chaos: {id} did not settle; checkout says {view:?}");
                    let _ =
                        shop_ops::trace_with(&client, id, Duration::from_secs(1), out, false).await;
                    for service in Service::ALL {
                        let _ = writeln!(
                            out,
                            "--- {service} log tail ---\n{}",
                            shop.log_tail(service)
                        );
                    }
                    break;
                }
            }
            return Err(e);
        }
    };
    let time_to_quiescence = quiesce_started.elapsed();
    let (longest_wait, longest_wait_order) = longest_wait(&js).await?;

    let malformed_dead_lettered = count_dead_lettered(&js, &malformed_subjects).await?;
    let report = audit(
        &client,
        AuditOptions {
            order_deadline: opts.order_deadline,
            grace: Duration::from_secs(10),
        },
        out,
    )
    .await?;
    let mut violations = report.violations.len();
    if malformed_dead_lettered < malformed_subjects.len() {
        violations += malformed_subjects.len() - malformed_dead_lettered;
    }
    let crashpoint_hits = shop.crashpoint_hits();
    shop.shutdown().await?;
    Ok(ChaosReport {
        orders: opts.orders,
        kills,
        scale_ups,
        scale_downs,
        broker_restarts,
        broker_faults,
        publish_retries: retries.load(Ordering::Relaxed),
        longest_wait_ms: longest_wait.as_millis(),
        longest_wait_order,
        expiring_orders: expiring_ids.len(),
        crashpoint_hits,
        duplicates_injected: duplicates,
        malformed_injected: malformed_subjects.len(),
        malformed_dead_lettered,
        outcomes,
        violations,
        time_to_quiescence_ms: time_to_quiescence.as_millis(),
        total_ms: started.elapsed().as_millis(),
        audit: report,
    })
}

/// Waits until inventory has acknowledged everything on its stream (the
/// replenishments): acked means its changelog holds them, so no crash can take the stock
/// back. Services a crash point aborts meanwhile are started again.
async fn wait_stock_stored(
    js: &jetstream::Context,
    shop: &mut Shop,
    within: Duration,
) -> Result<(), ChaosError> {
    let until = Instant::now() + within;
    let durable = partition_consumer(Service::Inventory.name(), None);
    loop {
        shop.revive_crashed().await?;
        let seen = stream_and_ack_floor(js, INVENTORY_STREAM, &durable).await;
        match seen {
            Some((last, floor)) if last > 0 && floor >= last => return Ok(()),
            _ if Instant::now() >= until => {
                return Err(ChaosError::NotQuiescent(format!(
                    "inventory did not acknowledge the replenishments within {within:?} (stream and ack floor: {seen:?})"
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A stream's last sequence and a consumer's ack floor on it; `None` while either
/// cannot be read (not declared yet, the broker restarting).
async fn stream_and_ack_floor(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Option<(u64, u64)> {
    // `get_stream` already asked for the stream's info: one request, not two.
    let stream = js.get_stream(stream).await.ok()?;
    let last = stream.cached_info().state.last_sequence;
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>(durable)
        .await
        .ok()?;
    let floor = consumer.info().await.ok()?.ack_floor.stream_sequence;
    Some((last, floor))
}

/// Publishes, retrying through a broker restart (the Nats-Msg-Id keeps retries exact).
/// Publishes as an upstream system must: the same event (same `Nats-Msg-Id`) again until
/// JetStream acknowledges it, through restarts and elections; counts the retries.
async fn publish_with_retry(
    js: &jetstream::Context,
    retries: &AtomicU64,
    envelope: &Envelope,
) -> Result<(), ChaosError> {
    let mut last = None;
    // 30 s: longer than a cluster election after a lost leader.
    for _ in 0..300 {
        match publish_event(js, envelope).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                retries.fetch_add(1, Ordering::Relaxed);
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last
        .map(ChaosError::Harness)
        .unwrap_or_else(|| ChaosError::NotQuiescent("publish".into())))
}

/// Malformed and oversized messages on real event subjects; returns (subject, stream sequence) of each.
async fn inject_hostile(
    js: &jetstream::Context,
    opts: &ChaosOptions,
    rng: &mut StdRng,
) -> Result<Vec<(String, u64)>, ChaosError> {
    let mut injected = Vec::new();
    let bad_bodies: [&[u8]; 4] = [
        b"{not json",
        br#"{"specversion":"1.0","id":"x","source":"evil","type":"shop.OrderPlaced.v9","subject":"K","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{}}"#,
        br#"{"specversion":"1.0","id":"y","source":"evil","type":"shop.Nonsense.v1","subject":"K","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{}}"#,
        b"[1,2,3]",
    ];
    for i in 0..opts.malformed {
        let key = format!("hostile-{}-{i}", rng.gen::<u32>());
        let subject = event_subject(EventKind::OrderPlaced, &key);
        let body = String::from_utf8_lossy(bad_bodies[i % bad_bodies.len()]).replace('K', &key);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("hostile-{key}").as_str());
        let ack = publish_raw(js, &subject, headers, body.into_bytes()).await?;
        injected.push((subject, ack.sequence));
    }
    for i in 0..opts.oversized {
        let key = format!("huge-{}-{i}", rng.gen::<u32>());
        let subject = event_subject(EventKind::OrderPlaced, &key);
        let body = format!(
            "{{\"specversion\":\"1.0\",\"padding\":\"{}\"}}",
            "x".repeat(900 * 1024)
        );
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("huge-{key}").as_str());
        let ack = publish_raw(js, &subject, headers, body.into_bytes()).await?;
        injected.push((subject, ack.sequence));
    }
    Ok(injected)
}

/// Restarts payment with one crash point certain to fire, places an order, waits for the abort.
async fn force_every_crashpoint(
    shop: &mut Shop,
    client: &async_nats::Client,
    js: &jetstream::Context,
    retries: &AtomicU64,
    base: &str,
    seed: u64,
    out: &mut impl std::io::Write,
) -> Result<(), ChaosError> {
    for (i, point) in crash_points().iter().enumerate() {
        // A forced order can still miss its point: placed while payment was taking over
        // the partitions a killed instance left, it may pass its deadline first and be
        // cancelled uncharged (CI saw that once). So each point gets a few tries.
        for attempt in 0..FORCE_ATTEMPTS {
            if shop.crashpoint_hits().get(*point).copied().unwrap_or(0) > 0 {
                break;
            }
            let _ = writeln!(
                out,
                "chaos: forcing crash point {point} (try {})",
                attempt + 1
            );
            let id = format!("chaos-{seed}-forced-{i}-{attempt}");
            force_once(shop, client, js, retries, point, &id).await?;
            if shop.crashpoint_hits().get(*point).copied().unwrap_or(0) == 0 {
                // Say what became of the order, so a run that misses a point tells why.
                let status = match order_status(client, &id).await {
                    Ok(Some(view)) => format!(
                        "{}{}",
                        view.status.as_str(),
                        view.reason
                            .map(|r| format!(":{}", r.as_str()))
                            .unwrap_or_default()
                    ),
                    Ok(None) => "unknown to checkout".to_owned(),
                    Err(e) => format!("not readable ({e})"),
                };
                let _ = writeln!(
                    out,
                    "chaos: crash point {point} did not fire; order {id} is {status}"
                );
            }
            shop.reap(Service::Payment);
            shop.set_crashpoints(Some(base.to_owned()));
            shop.start_service(Service::Payment).await?;
        }
    }
    Ok(())
}

/// Tries per crash point before the run reports it as never fired.
const FORCE_ATTEMPTS: usize = 3;

/// One try at firing `point`: payment alone, armed, holding every partition, then an
/// order that must reach it.
async fn force_once(
    shop: &mut Shop,
    client: &async_nats::Client,
    js: &jetstream::Context,
    retries: &AtomicU64,
    point: &str,
    id: &str,
) -> Result<(), ChaosError> {
    // The forced point is armed in the default instance only: every other payment
    // instance goes, so that one takes every partition and with it the forced order
    // (with a second instance holding the order's partition, the point once never
    // fired). The caller starts them again after.
    for name in shop
        .named_instances()
        .remove(&Service::Payment)
        .unwrap_or_default()
    {
        shop.kill_instance(Service::Payment, &name).await?;
    }
    // The order needs checkout and inventory too. A crash point may have aborted one of
    // them since the load stopped reviving them: started again here, unarmed, or the
    // order waits on a dead service, passes its deadline and never reaches payment.
    shop.set_crashpoints(None);
    revive_all_but_payment(shop).await?;
    shop.set_crashpoints(Some(format!("{point}:1")));
    if shop.has_exited(Service::Payment) {
        shop.reap(Service::Payment);
    }
    shop.kill_service(Service::Payment).await?;
    // Starting may already fire the point (an outbox left to drain): that counts.
    if shop.start_service(Service::Payment).await.is_err() {
        return Ok(());
    }
    // The order goes out only once the armed instance holds every partition and has
    // restored each (its STATS list only those it serves), and every checkout partition
    // has an owner: the killed instances' leases take up to a lease TTL to expire, close
    // to the order deadline, and an order waiting on an unowned partition times out
    // uncharged.
    let owner = Service::Payment.name();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until && !shop.has_exited(Service::Payment) {
        if payment_serves_everything(client, js, owner).await && checkout_fully_owned(js).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if shop.has_exited(Service::Payment) {
        return Ok(());
    }
    shop_harness::scenario::replenish(js, "chaos-forced", 1).await?;
    let placed = order(id, &[("chaos-forced", 1, 100)], "tok_visa");
    publish_with_retry(
        js,
        retries,
        &Envelope::new(STOREFRONT, Event::OrderPlaced(placed)),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shop.has_exited(Service::Payment) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts again whichever of checkout, inventory and checkout's named instances exited.
async fn revive_all_but_payment(shop: &mut Shop) -> Result<(), ChaosError> {
    for service in [Service::Checkout, Service::Inventory] {
        if shop.has_exited(service) {
            shop.reap(service);
            shop.start_service(service).await?;
        }
    }
    for name in shop
        .named_instances()
        .remove(&Service::Checkout)
        .unwrap_or_default()
    {
        // Starts it only if it exited; one still running is left as it is.
        shop.start_instance(Service::Checkout, &name).await?;
    }
    Ok(())
}

/// Whether `owner`, the one payment instance running, holds every partition's lease
/// and serves every partition (its STATS list the partitions it has restored).
async fn payment_serves_everything(
    client: &async_nats::Client,
    js: &jetstream::Context,
    owner: &str,
) -> bool {
    let Ok(group) = shop_runtime::group::view(js, GROUPS_BUCKET, owner).await else {
        return false;
    };
    let Some(partitions) = group.partitions else {
        return false;
    };
    if !group.unowned().is_empty() || !group.leases.values().all(|l| l.owner == owner) {
        return false;
    }
    shop_ops::nats::stats_all(client, owner, Some(1))
        .await
        .iter()
        .any(|stats| {
            stats["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["data"]["partitions"].as_array().map(Vec::len) == Some(partitions as usize)
                })
        })
}

/// Whether every checkout partition has a live lease.
async fn checkout_fully_owned(js: &jetstream::Context) -> bool {
    matches!(
        shop_runtime::group::view(js, GROUPS_BUCKET, Service::Checkout.name()).await,
        Ok(g) if g.partitions.is_some() && g.unowned().is_empty()
    )
}

/// Waits until every order is settled and every outbox is empty; returns outcomes by status.
async fn wait_quiescent(
    client: &async_nats::Client,
    ids: &[String],
    within: Duration,
) -> Result<BTreeMap<String, usize>, ChaosError> {
    let deadline = Instant::now() + within;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let view = eventually(left, &format!("order {id} to settle"), || async {
            let view = order_status(client, id).await.ok()??;
            (view.status != OrderStatus::Pending).then_some(view)
        })
        .await
        .map_err(|e| ChaosError::NotQuiescent(e.to_string()))?;
        let key = match view.reason {
            Some(reason) => format!("{}:{}", view.status.as_str(), reason.as_str()),
            None => view.status.as_str().to_owned(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(10));
    let until = Instant::now() + left;
    let js = jetstream::new(client.clone());
    loop {
        match quiescence_blocker(client, &js).await {
            None => break,
            Some(what) if Instant::now() >= until => {
                return Err(ChaosError::NotQuiescent(format!("after {left:?}: {what}")));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok(outcomes)
}

/// What still keeps the shop busy: a partition without an owner (its takeover may still
/// publish), an outbox with entries (in any instance: a scaled-out service answers STATS
/// once per instance), a consumer with work pending, or an event stored while it looked.
async fn quiescence_blocker(
    client: &async_nats::Client,
    js: &jetstream::Context,
) -> Option<String> {
    let before = match shop_harness::last_sequences(js).await {
        Ok(sequences) => sequences,
        Err(e) => return Some(e.to_string()),
    };
    for service in Service::ALL {
        let members = match shop_runtime::group::view(js, GROUPS_BUCKET, service.name()).await {
            Ok(group) if !group.unowned().is_empty() => {
                return Some(format!(
                    "{service}: partitions {:?} have no owner",
                    group.unowned()
                ))
            }
            Ok(group) => Some(group.members.len()).filter(|n| *n > 0),
            Err(e) => return Some(format!("{service}'s group: {e}")),
        };
        match shop_ops::nats::service_outbox_backlog(client, service.name(), members).await {
            Some(0) => {}
            Some(backlog) => return Some(format!("{service} outbox backlog {backlog}")),
            None => return Some(format!("{service} does not answer STATS")),
        }
    }
    for stream in EVENT_STREAMS {
        let s = match js.get_stream(stream).await {
            Ok(s) => s,
            Err(e) => return Some(format!("stream {stream}: {e}")),
        };
        let mut consumers = s.consumers();
        while let Some(info) = consumers.next().await {
            match info {
                Ok(info) if info.num_pending > 0 || info.num_ack_pending > 0 => {
                    return Some(format!(
                        "consumer {stream}/{}: {} pending, {} awaiting ack, {} redelivered",
                        info.name, info.num_pending, info.num_ack_pending, info.num_redelivered
                    ))
                }
                Ok(_) => {}
                Err(e) => return Some(format!("consumers of {stream}: {e}")),
            }
        }
    }
    match shop_harness::last_sequences(js).await {
        Ok(after) if after == before => None,
        Ok(_) => Some("events were stored while the shop was looked at".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

/// How many injected messages have at least one dead letter pointing at their origin.
async fn count_dead_lettered(
    js: &jetstream::Context,
    injected: &[(String, u64)],
) -> Result<usize, ChaosError> {
    let stream = js
        .get_stream(shop_events::subjects::DEADLETTER_STREAM)
        .await
        .map_err(|e| HarnessError::JetStream(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    let mut seq = 0;
    loop {
        let next = stream
            .direct_get_next_for_subject(
                shop_events::subjects::deadletter_filter("*"),
                Some(seq + 1),
            )
            .await;
        let Ok(message) = next else { break };
        seq = message.sequence;
        let subject = message
            .headers
            .get(shop_events::api::deadletters::HDR_SUBJECT)
            .map(|v| v.as_str().to_owned());
        let origin = message
            .headers
            .get(shop_events::api::deadletters::HDR_SEQUENCE)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if let (Some(subject), Some(origin)) = (subject, origin) {
            // Stored subjects carry the key's partition; compare them as published.
            let published = shop_events::subjects::parse_event_subject(&subject)
                .map(|(kind, key)| shop_events::subjects::event_subject(kind, key))
                .unwrap_or(subject);
            seen.insert((published, origin));
        }
    }
    Ok(injected.iter().filter(|i| seen.contains(i)).count())
}

/// The order that waited longest for its outcome, and how long: from its first
/// `OrderPlaced` to its first `OrderConfirmed`, `OrderCancelled` or `OrderRejected`, by the
/// times the ORDERS stream stored them (the broker's clock, so client pauses do not count).
async fn longest_wait(js: &jetstream::Context) -> Result<(Duration, String), ChaosError> {
    let events =
        shop_ops::reader::read_event_stream(js, shop_events::subjects::ORDERS_STREAM).await?;
    let mut placed = BTreeMap::new();
    let mut settled = BTreeMap::new();
    for e in &events {
        let Some(envelope) = e.envelope() else {
            continue;
        };
        let key = envelope.event.key().to_owned();
        match envelope.kind() {
            EventKind::OrderPlaced => {
                placed.entry(key).or_insert(e.stored_at);
            }
            EventKind::OrderConfirmed | EventKind::OrderCancelled | EventKind::OrderRejected => {
                settled.entry(key).or_insert(e.stored_at);
            }
            _ => {}
        }
    }
    let mut longest = (Duration::ZERO, String::new());
    for (order, at) in &settled {
        if let Some(from) = placed.get(order) {
            let waited = Duration::try_from(*at - *from).unwrap_or(Duration::ZERO);
            if waited > longest.0 {
                longest = (waited, order.clone());
            }
        }
    }
    Ok(longest)
}

/// The figures of a run as a short table, the way docs/RELIABILITY.md records them.
pub fn print_summary(report: &ChaosReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(out, "orders driven            {}", report.orders)?;
    writeln!(out, "outcomes                 {:?}", report.outcomes)?;
    writeln!(out, "kills per instance       {:?}", report.kills)?;
    writeln!(
        out,
        "scaling                  {} up, {} down (SIGTERM, handover)",
        report.scale_ups, report.scale_downs
    )?;
    writeln!(
        out,
        "broker faults            {} {:?}",
        report.broker_restarts, report.broker_faults
    )?;
    writeln!(out, "publish retries          {}", report.publish_retries)?;
    writeln!(
        out,
        "longest order wait       {} ms ({})",
        report.longest_wait_ms, report.longest_wait_order
    )?;
    writeln!(out, "deadline expiries forced {}", report.expiring_orders)?;
    writeln!(out, "crash-point hits         {:?}", report.crashpoint_hits)?;
    writeln!(
        out,
        "duplicates injected      {}",
        report.duplicates_injected
    )?;
    writeln!(
        out,
        "malformed injected       {} ({} dead-lettered)",
        report.malformed_injected, report.malformed_dead_lettered
    )?;
    writeln!(out, "violations               {}", report.violations)?;
    writeln!(
        out,
        "time to quiescence       {:.1} s",
        report.time_to_quiescence_ms as f64 / 1000.0
    )?;
    writeln!(
        out,
        "total                    {:.1} s",
        report.total_ms as f64 / 1000.0
    )
}
