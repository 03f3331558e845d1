//! The `gateway-sim` binary: parse flags, install telemetry, serve until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use shop_gateway_sim::config::{parse_listen, BehaviourArgs, DEFAULT_LISTEN, LEDGER_DIR};
use shop_runtime::shutdown::os_signal;
use shop_runtime::telemetry::{init_subscriber, LogFormat};

/// A Stripe-shaped payment gateway simulator: charges, voids and refunds by
/// Idempotency-Key over HTTP, with a durable ledger at GET /v1/ledger.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "SHOP_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    listen: SocketAddr,
    /// Directory the ledger lives under (in `<data-dir>/payment-gateway`).
    #[arg(long, env = "SHOP_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Log output: `pretty` for people, `json` for log shipping. Filter with RUST_LOG.
    #[arg(long, env = "SHOP_LOG_FORMAT", default_value = "pretty")]
    log_format: LogFormat,
    #[command(flatten)]
    behaviour: BehaviourArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_subscriber(cli.log_format);
    let listener = shop_gateway_sim::bind(cli.listen).await?;
    let ledger_dir = cli.data_dir.join(LEDGER_DIR);
    tracing::info!(
        addr = %listener.local_addr()?,
        ledger = %ledger_dir.display(),
        latency = ?cli.behaviour.gateway_latency,
        failure_rate = cli.behaviour.gateway_failure_rate,
        "payment gateway simulator listening"
    );
    shop_gateway_sim::run(listener, &ledger_dir, cli.behaviour.config(), async {
        os_signal().await;
        tracing::info!("shutdown requested by signal");
    })
    .await?;
    Ok(())
}
