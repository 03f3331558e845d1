//! `shop demo`: drives a realistic mixed workload against a running shop through its public
//! endpoints, waits for every order to settle, and reports outcomes and latencies.

mod plan;
mod report;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shop_events::api::checkout::{
    CancelRequest, OrderStatus, OrderView, ORDERS_CANCEL, ORDERS_GET, ORDERS_PLACE,
};
use shop_events::api::inventory::{
    ReplenishRequest, SkuRef, StockView, STOCK_GET, STOCK_REPLENISH,
};
use shop_events::api::OrderRef;
use tokio::time::Instant;

use crate::nats::{decode, request, require_services, SERVICES};
use crate::OpsError;
pub use plan::Scenario;
use plan::{Plan, PlannedOrder};
pub use report::Latency;

/// How a demo run is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    pub orders: usize,
    /// Orders placed and awaited at the same time.
    pub concurrency: usize,
    /// How long one order may take to settle before it counts as still pending.
    pub settle_timeout: Duration,
    /// Show a progress bar on stderr while orders settle.
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            orders: 50,
            concurrency: 16,
            // Past checkout's default 30 s deadline, so a stalled order is seen cancelled.
            settle_timeout: Duration::from_secs(45),
            progress: true,
        }
    }
}

/// What a demo run came to. The outcome counts add up to `orders`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DemoReport {
    pub run_id: String,
    pub orders: usize,
    /// How many orders of each scenario were planned.
    pub planned: BTreeMap<Scenario, usize>,
    pub confirmed: usize,
    /// Cancelled orders by reason (`payment_declined`, `out_of_stock`, …).
    pub cancelled: BTreeMap<String, usize>,
    /// Rejected by checkout after it was placed (an `OrderRejected`).
    pub rejected: usize,
    /// Refused by `checkout.orders.place` with a 400 listing the problems.
    pub rejected_at_api: usize,
    /// Not settled within `settle_timeout`.
    pub still_pending: usize,
    /// Orders whose requests failed outright (no answer, 5xx).
    pub errors: usize,
    pub first_error: Option<String>,
    /// From just before `checkout.orders.place` to the first poll that saw the order settled.
    pub latency: Latency,
    pub elapsed_ms: u64,
}

impl DemoReport {
    pub fn cancelled_total(&self) -> usize {
        self.cancelled.values().sum()
    }

    /// Every outcome added up; equals `orders` for a complete run.
    pub fn accounted(&self) -> usize {
        self.confirmed
            + self.cancelled_total()
            + self.rejected
            + self.rejected_at_api
            + self.still_pending
            + self.errors
    }
}

/// How one order ended.
#[derive(Debug, Clone)]
enum Ending {
    Settled {
        status: String,
        reason: Option<String>,
        latency: Duration,
    },
    RejectedAtApi,
    Pending,
    Error(String),
}

/// Replenishes the demo's skus, places every planned order, waits for them, and reports.
pub async fn demo(
    client: &Client,
    opts: DemoOptions,
    out: &mut impl Write,
) -> Result<DemoReport, OpsError> {
    if opts.orders == 0 || opts.concurrency == 0 {
        return Err(OpsError::InvalidOptions(
            "orders and concurrency must be at least 1".into(),
        ));
    }
    require_services(client, &SERVICES).await?;
    let started = Instant::now();
    let plan = {
        let mut rng = rand::thread_rng();
        let run_id = plan::run_id(&mut rng);
        plan::plan(&run_id, opts.orders, &mut rng)?
    };
    writeln!(
        out,
        "demo run {} · {} orders · concurrency {} · stocking {} skus",
        plan.run_id,
        opts.orders,
        opts.concurrency,
        plan.stock.len()
    )?;
    stock_up(client, &plan, opts.settle_timeout).await?;

    let bar = progress_bar(&opts);
    let mut report = DemoReport {
        run_id: plan.run_id.clone(),
        orders: plan.orders.len(),
        ..DemoReport::default()
    };
    for order in &plan.orders {
        *report.planned.entry(order.scenario).or_default() += 1;
    }
    let mut latencies = Vec::new();
    let mut endings = futures::stream::iter(plan.orders.iter())
        .map(|order| drive(client, order, opts.settle_timeout))
        .buffer_unordered(opts.concurrency);
    while let Some(ending) = endings.next().await {
        match ending {
            Ending::Settled {
                status,
                reason,
                latency,
            } => {
                latencies.push(latency);
                match status.as_str() {
                    "confirmed" => report.confirmed += 1,
                    "rejected" => report.rejected += 1,
                    _ => {
                        let reason = reason.unwrap_or_else(|| "unknown".into());
                        *report.cancelled.entry(reason).or_default() += 1;
                    }
                }
            }
            Ending::RejectedAtApi => report.rejected_at_api += 1,
            Ending::Pending => report.still_pending += 1,
            Ending::Error(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(e);
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "{} confirmed, {} cancelled, {} rejected",
            report.confirmed,
            report.cancelled_total(),
            report.rejected + report.rejected_at_api
        ));
    }
    bar.finish_and_clear();
    report.latency = Latency::of(latencies);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report::render(&report, out)?;
    Ok(report)
}

fn progress_bar(opts: &DemoOptions) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(opts.orders as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} settling [{bar:32}] {pos}/{len} {elapsed} · {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Replenishes every planned sku and waits until inventory shows the stock, so the first
/// orders do not race the replenishments (they travel on different consumers).
async fn stock_up(client: &Client, plan: &Plan, within: Duration) -> Result<(), OpsError> {
    for (sku, quantity) in &plan.stock {
        let subject = STOCK_REPLENISH.subject;
        let body = ReplenishRequest {
            sku: sku.clone(),
            quantity: i64::from(*quantity),
        };
        if let Err((code, description)) = request(client, subject, &body).await? {
            return Err(OpsError::Refused {
                subject: subject.into(),
                code,
                description,
            });
        }
    }
    for (sku, quantity) in &plan.stock {
        let what = format!("inventory to show {quantity} of {sku}");
        poll(within, &what, || async {
            let body = SkuRef { sku: sku.clone() };
            let level = request(client, STOCK_GET.subject, &body).await.ok()?.ok()?;
            let level: StockView = decode(STOCK_GET.subject, level).ok()?;
            (level.on_hand >= i64::from(*quantity)).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Polls `probe` with a short, growing pause until it answers or `within` passes.
async fn poll<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> Result<T, OpsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        let now = Instant::now();
        if now >= give_up {
            return Err(OpsError::Timeout {
                what: what.to_owned(),
                after: within,
            });
        }
        tokio::time::sleep(pause.min(give_up - now)).await;
        // Short first pauses keep the measured latency close to the real one.
        pause = (pause * 3 / 2).min(Duration::from_millis(100));
    }
}

fn is_settled(view: &OrderView) -> bool {
    view.status != OrderStatus::Pending
}

async fn order_view(client: &Client, order_id: &str) -> Option<OrderView> {
    let view = request(client, ORDERS_GET.subject, &OrderRef::new(order_id))
        .await
        .ok()?
        .ok()?;
    decode(ORDERS_GET.subject, view).ok()
}

/// Places one order and follows it to its end, cancelling it when its scenario says so.
async fn drive(client: &Client, planned: &PlannedOrder, within: Duration) -> Ending {
    let started = Instant::now();
    match request(client, ORDERS_PLACE.subject, &planned.order).await {
        Ok(Ok(_)) => {}
        Ok(Err((400, _))) => return Ending::RejectedAtApi,
        Ok(Err((code, description))) => {
            return Ending::Error(format!("{}: {code} {description}", planned.order_id))
        }
        Err(e) => return Ending::Error(e.to_string()),
    }
    let id = planned.order_id.as_str();
    if planned.scenario == Scenario::CancelPending {
        if let Err(e) = cancel(client, id, within).await {
            return Ending::Error(e.to_string());
        }
    }
    let what = format!("order {id} to settle");
    let Ok(first) = poll(within, &what, || async {
        order_view(client, id).await.filter(is_settled)
    })
    .await
    else {
        return Ending::Pending;
    };
    let latency = started.elapsed();
    let last = if planned.scenario == Scenario::CancelConfirmed
        && first.status == OrderStatus::Confirmed
    {
        if let Err(e) = cancel(client, id, within).await {
            return Ending::Error(e.to_string());
        }
        let what = format!("order {id} to be cancelled");
        match poll(within, &what, || async {
            order_view(client, id)
                .await
                .filter(|v| v.status == OrderStatus::Cancelled)
        })
        .await
        {
            Ok(view) => view,
            Err(_) => return Ending::Pending,
        }
    } else {
        first
    };
    Ending::Settled {
        status: last.status.as_str().to_owned(),
        reason: last.reason.map(|r| r.as_str().to_owned()),
        latency,
    }
}

/// Asks checkout to cancel, retrying while checkout has not yet seen the order (404).
async fn cancel(client: &Client, order_id: &str, within: Duration) -> Result<(), OpsError> {
    let subject = ORDERS_CANCEL.subject;
    let body = CancelRequest {
        order_id: order_id.to_owned(),
        reason: "demo: the customer changed their mind".to_owned(),
    };
    let what = format!("checkout to accept the cancellation of {order_id}");
    let answer = poll(within, &what, || async {
        match request(client, subject, &body).await {
            Ok(Err((404, _))) => None,
            other => Some(other),
        }
    })
    .await?;
    match answer? {
        Ok(_) => Ok(()),
        Err((code, description)) => Err(OpsError::Refused {
            subject: subject.into(),
            code,
            description,
        }),
    }
}
