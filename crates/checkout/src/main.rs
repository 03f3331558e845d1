//! The `checkout` binary: parse flags, install telemetry, run until SIGINT/SIGTERM.

use clap::Parser;
use shop_checkout::{run, CheckoutArgs, Config};
use shop_runtime::cli::CommonArgs;
use shop_runtime::shutdown::on_os_signal;
use shop_runtime::telemetry::init_subscriber;

#[global_allocator]
static ALLOCATOR: shop_runtime::Allocator = shop_runtime::Allocator;

/// Checkout: owns orders and decides their outcome in the shop's saga.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    scale: shop_shell::scale::ScaleArgs,
    #[command(flatten)]
    checkout: CheckoutArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_subscriber(cli.common.log_format);
    let config = Config {
        nats: cli.common.nats(),
        data_dir: cli.common.data_dir,
        stream_replicas: cli.common.stream_replicas,
        scale: cli.scale,
        order_deadline: cli.checkout.order_deadline,
        clock: shop_checkout::clock::system(),
    };
    run(config, on_os_signal()).await?;
    Ok(())
}
