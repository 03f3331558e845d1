//! `shop`: run the services in one process, and the operator tools around them.
//!
//! This is the binary operators deploy, so it links no test machinery: the benchmark
//! and the chaos suite live in `shop-lab` (crates/lab).

use std::str::FromStr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shop_auth::Role;
use shop_checkout::CheckoutArgs;
use shop_gateway_sim::config::{parse_listen, BehaviourArgs, DEFAULT_LISTEN, LEDGER_DIR};
use shop_gateway_sim::Simulator;
use shop_payment::PaymentArgs;
use shop_runtime::cli::CommonArgs;
use shop_runtime::connect::NatsConfig;
use shop_runtime::shutdown::{on_os_signal, Shutdown};
use shop_runtime::telemetry::{init_subscriber, init_subscriber_with_default};

#[global_allocator]
static ALLOCATOR: shop_runtime::Allocator = shop_runtime::Allocator;

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
    /// A directory written by `shop auth init`: `shop run` connects each service with
    /// DIR/<service>.nk, the other commands with DIR/operator.nk (unless --nkey is given).
    #[arg(long, env = "SHOP_AUTH_DIR", global = true)]
    auth_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services in this process (all three unless --services picks some).
    ///
    /// Each service keeps its sled database under <data-dir>/<service>. The same
    /// services ship as separate binaries (checkout, inventory, payment) for
    /// deploying and scaling them on their own. With payment, a payment gateway
    /// simulator runs here too (books in <data-dir>/payment-gateway), unless
    /// --gateway-url points at another gateway.
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
        #[command(flatten)]
        gateway: GatewaySimArgs,
        /// `--instance` names the instance of every service this process runs (each
        /// keeps its database under <data-dir>/<instance>); `--lease-ttl` bounds a takeover.
        #[command(flatten)]
        scale: shop_shell::scale::ScaleArgs,
    },
    /// Drive a realistic mixed workload against a running shop, then show outcomes and latencies.
    ///
    /// Replenishes a few skus, then places orders through checkout.orders.place:
    /// good and declined cards, out-of-stock orders, cancellations of pending and
    /// confirmed orders, and a few invalid orders (which must be refused with a 400).
    Demo {
        /// How many orders to place.
        #[arg(long, default_value_t = 50)]
        orders: usize,
        /// How many orders in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// How long to wait for every order to settle.
        #[arg(long, default_value = "45s", value_parser = shop_runtime::cli::parse_duration)]
        settle_timeout: std::time::Duration,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one order's saga: every event with its time, producer and cause, and who acts next.
    ///
    /// Says plainly when the saga is stuck (the expected service has not reacted),
    /// and whether that service answers PING.
    Trace {
        order_id: String,
        /// Call a saga stuck when the expected reaction is this late.
        #[arg(long, default_value = "5s", value_parser = shop_runtime::cli::parse_duration)]
        stuck_after: std::time::Duration,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// NATS identities: one key per role and the server's authorization block (docs/SECURITY.md).
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Each service's instances, the partitions each holds, and every partition's lag
    /// and last progress; exits 1 if a partition has no owner.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the books across the streams and the services' state; exits 1 on any violation.
    ///
    /// Orders past their deadline have settled; confirmed orders were captured exactly
    /// once and their stock sold; cancelled orders net to zero in money and stock; stock
    /// on hand = replenished − sold and never negative; the gateway's ledger agrees with
    /// the PAYMENTS stream; outboxes are empty.
    Audit {
        /// The order deadline the services run with (SHOP_ORDER_DEADLINE).
        #[arg(long, env = "SHOP_ORDER_DEADLINE", default_value = "30s", value_parser = shop_runtime::cli::parse_duration)]
        order_deadline: std::time::Duration,
        /// Slack after a deadline before an unsettled order counts as stuck.
        #[arg(long, default_value = "10s", value_parser = shop_runtime::cli::parse_duration)]
        grace: std::time::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Writes DIR/<role>.nk (one nkey seed per role, mode 0600) and DIR/auth.conf (the
    /// authorization block to `include` from the server config). Existing keys are kept
    /// unless --rotate; auth.conf is always rewritten from the current rights.
    Init {
        /// Where the keys and auth.conf go.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Replace every existing key with a new one.
        #[arg(long)]
        rotate: bool,
    },
}

/// `shop auth init`: the keys and the authorization block; prints public keys only.
fn auth_init(dir: &std::path::Path, rotate: bool) -> anyhow::Result<()> {
    let report = shop_auth::init(dir, rotate)
        .with_context(|| format!("cannot write the NATS identities into {}", dir.display()))?;
    for (role, public_key, outcome) in &report.keys {
        println!("{role:<10} {public_key} {outcome:?}");
    }
    println!(
        "wrote {}; include it from the server config",
        report.auth_conf().display()
    );
    Ok(())
}

/// The gateway simulator `shop run` starts for payment.
#[derive(Debug, Clone, clap::Args)]
struct GatewaySimArgs {
    /// Where the simulator listens; payment calls it there unless --gateway-url points elsewhere.
    #[arg(long, env = "SHOP_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    gateway_listen: std::net::SocketAddr,
    #[command(flatten)]
    behaviour: BehaviourArgs,
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

/// The connection settings of `role`: with an auth directory, its key from there (an
/// explicit --nkey wins for the operator tools, which run as one identity).
fn nats_as(common: &CommonArgs, auth_dir: Option<&std::path::Path>, role: Role) -> NatsConfig {
    let nats = common.nats();
    match auth_dir {
        Some(dir) if role != Role::Operator || nats.nkey.is_none() => {
            nats.with_nkey(shop_auth::seed_path(dir, role))
        }
        _ => nats,
    }
}

// One argument per kind of setting the services take (connection, identities, scale-out,
// each service's own); a struct around them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn run_services(
    common: &CommonArgs,
    auth_dir: Option<&std::path::Path>,
    services: &[ServiceName],
    checkout: &CheckoutArgs,
    payment: &PaymentArgs,
    gateway: &GatewaySimArgs,
    scale: &shop_shell::scale::ScaleArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (simulator, gateway_url) = if services.contains(&ServiceName::Payment) {
        start_gateway(common, payment, gateway).await?
    } else {
        (None, String::new())
    };
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        let role = match service {
            ServiceName::Checkout => Role::Checkout,
            ServiceName::Inventory => Role::Inventory,
            ServiceName::Payment => Role::Payment,
        };
        let url = nats_as(common, auth_dir, role);
        let (dir, stop) = (common.data_dir.clone(), shutdown.clone());
        match service {
            ServiceName::Checkout => {
                let config = shop_checkout::Config {
                    nats: url,
                    data_dir: dir,
                    stream_replicas: common.stream_replicas,
                    scale: scale.clone(),
                    order_deadline: checkout.order_deadline,
                    clock: shop_checkout::clock::system(),
                };
                tasks.spawn(async move {
                    shop_checkout::run(config, stop)
                        .await
                        .context("checkout failed")
                });
            }
            ServiceName::Inventory => {
                let config = shop_inventory::Config {
                    nats: url,
                    data_dir: dir,
                    stream_replicas: common.stream_replicas,
                    scale: scale.clone(),
                };
                tasks.spawn(async move {
                    shop_inventory::run(config, stop)
                        .await
                        .context("inventory failed")
                });
            }
            ServiceName::Payment => {
                let config = shop_payment::Config {
                    nats: url,
                    data_dir: dir,
                    stream_replicas: common.stream_replicas,
                    scale: scale.clone(),
                    gateway: payment.gateway_at(gateway_url.clone()),
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
    // After payment: its last calls are answered and the books flushed.
    if let Some(simulator) = simulator {
        if let Err(e) = simulator.stop().await {
            tracing::error!(error = %e, "the payment gateway simulator stopped with an error");
        }
    }
    result
}

/// Starts the payment gateway simulator in this process, unless `--gateway-url` points
/// elsewhere; returns it and the URL payment calls.
async fn start_gateway(
    common: &CommonArgs,
    payment: &PaymentArgs,
    gateway: &GatewaySimArgs,
) -> anyhow::Result<(Option<Simulator>, String)> {
    let listen = gateway.gateway_listen;
    if let Some(url) = &payment.gateway_url {
        if url.trim_end_matches('/') != format!("http://{listen}") {
            tracing::info!(%url, "payment calls the gateway at SHOP_GATEWAY_URL; no simulator started");
            return Ok((None, url.clone()));
        }
    }
    let simulator = Simulator::start(
        listen,
        &common.data_dir.join(LEDGER_DIR),
        gateway.behaviour.config(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot start the payment gateway simulator on {listen}; if one runs there \
             already, point payment at it with SHOP_GATEWAY_URL=http://{listen}, or pick \
             another address with SHOP_GATEWAY_LISTEN"
        )
    })?;
    let url = simulator.url();
    Ok((Some(simulator), url))
}

async fn client(
    common: &CommonArgs,
    auth_dir: Option<&std::path::Path>,
) -> anyhow::Result<async_nats::Client> {
    let (_trigger, shutdown) = Shutdown::new();
    let nats = nats_as(common, auth_dir, Role::Operator);
    let connect = shop_runtime::connect::connect(&nats, "shop-cli", &shutdown);
    tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .with_context(|| {
            format!(
                "NATS at {} did not answer within 10 s (is `make run` running?)",
                common.nats_url
            )
        })?
        .with_context(|| format!("cannot connect to {}", common.nats_url))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } => init_subscriber(cli.common.log_format),
        _ => init_subscriber_with_default(cli.common.log_format, "warn"),
    }
    let mut stdout = std::io::stdout();
    match &cli.command {
        Command::Run {
            services,
            checkout,
            payment,
            gateway,
            scale,
        } => {
            run_services(
                &cli.common,
                cli.auth_dir.as_deref(),
                services,
                checkout,
                payment,
                gateway,
                scale,
                on_os_signal(),
            )
            .await
        }
        Command::Auth {
            command: AuthCommand::Init { dir, rotate },
        } => auth_init(dir, *rotate),
        Command::Demo {
            orders,
            concurrency,
            settle_timeout,
            json,
        } => {
            let client = client(&cli.common, cli.auth_dir.as_deref()).await?;
            let opts = shop_ops::DemoOptions {
                orders: *orders,
                concurrency: *concurrency,
                settle_timeout: *settle_timeout,
                progress: !json && std::io::stderr().is_terminal(),
            };
            if *json {
                print_json(&shop_ops::demo(&client, opts, &mut std::io::sink()).await?)
            } else {
                shop_ops::demo(&client, opts, &mut stdout)
                    .await
                    .map(|_| ())
                    .map_err(Into::into)
            }
        }
        Command::Trace {
            order_id,
            stuck_after,
            json,
        } => {
            let client = client(&cli.common, cli.auth_dir.as_deref()).await?;
            if *json {
                print_json(
                    &shop_ops::trace_with(
                        &client,
                        order_id,
                        *stuck_after,
                        &mut std::io::sink(),
                        false,
                    )
                    .await?,
                )
            } else {
                let color = stdout.is_terminal();
                shop_ops::trace_with(&client, order_id, *stuck_after, &mut stdout, color).await?;
                Ok(())
            }
        }
        Command::Audit {
            order_deadline,
            grace,
            json,
        } => {
            let client = client(&cli.common, cli.auth_dir.as_deref()).await?;
            let opts = shop_ops::AuditOptions {
                order_deadline: *order_deadline,
                grace: *grace,
            };
            let report = if *json {
                let report = shop_ops::audit(&client, opts, &mut std::io::sink()).await?;
                print_json(&report)?;
                report
            } else {
                shop_ops::audit(&client, opts, &mut stdout).await?
            };
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Status { json } => {
            let client = client(&cli.common, cli.auth_dir.as_deref()).await?;
            let report = shop_ops::status(&client, *json, &mut stdout).await?;
            if !report.is_healthy() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
