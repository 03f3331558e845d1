//! `shop`: run the services in one process, and the operator tools around them.

use std::str::FromStr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shop_checkout::CheckoutArgs;
use shop_payment::PaymentArgs;
use shop_runtime::cli::CommonArgs;
use shop_runtime::shutdown::{on_os_signal, Shutdown};
use shop_runtime::telemetry::init_subscriber;

/// The shop: an order saga (checkout → inventory → payment) choreographed over NATS JetStream.
///
/// Start a local NATS with `make run` (which also runs `shop run`), then drive
/// it with `shop demo`, follow one order with `shop trace <order_id>` and check
/// the books with `shop audit`.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services in this process (all three unless --services picks some).
    ///
    /// Each service keeps its sled database under <data-dir>/<service>. The same
    /// services ship as separate binaries (checkout, inventory, payment) for
    /// deploying and scaling them on their own.
    Run {
        /// Comma-separated subset: checkout,inventory,payment.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "checkout,inventory,payment"
        )]
        services: Vec<ServiceName>,
        #[command(flatten)]
        checkout: CheckoutArgs,
        #[command(flatten)]
        payment: PaymentArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceName {
    Checkout,
    Inventory,
    Payment,
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "checkout" => Ok(ServiceName::Checkout),
            "inventory" => Ok(ServiceName::Inventory),
            "payment" => Ok(ServiceName::Payment),
            other => Err(format!(
                "unknown service `{other}` (expected checkout, inventory or payment)"
            )),
        }
    }
}

async fn run_services(
    common: &CommonArgs,
    services: &[ServiceName],
    checkout: &CheckoutArgs,
    payment: &PaymentArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        let (url, dir, stop) = (
            common.nats_url.clone(),
            common.data_dir.clone(),
            shutdown.clone(),
        );
        match service {
            ServiceName::Checkout => {
                let config = shop_checkout::Config {
                    nats_url: url,
                    data_dir: dir,
                    order_deadline: checkout.order_deadline,
                };
                tasks.spawn(async move {
                    shop_checkout::run(config, stop)
                        .await
                        .context("checkout failed")
                });
            }
            ServiceName::Inventory => {
                let config = shop_inventory::Config {
                    nats_url: url,
                    data_dir: dir,
                };
                tasks.spawn(async move {
                    shop_inventory::run(config, stop)
                        .await
                        .context("inventory failed")
                });
            }
            ServiceName::Payment => {
                let config = shop_payment::Config {
                    nats_url: url,
                    data_dir: dir,
                    gateway: payment.simulator(),
                };
                tasks.spawn(async move {
                    shop_payment::run(config, stop)
                        .await
                        .context("payment failed")
                });
            }
        }
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.context("service task panicked").and_then(|r| r) {
            tracing::error!(error = %format!("{e:#}"), "service stopped with an error");
            result = Err(e);
        }
    }
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_subscriber(cli.common.log_format);
    match &cli.command {
        Command::Run {
            services,
            checkout,
            payment,
        } => run_services(&cli.common, services, checkout, payment, on_os_signal()).await,
    }
}
