//! Checkout's settings: the shared flags plus the order deadline, and the clock deadlines run on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use shop_runtime::cli::parse_duration;

use crate::clock::Clock;

/// Checkout-specific flags.
#[derive(Debug, Clone, Args)]
pub struct CheckoutArgs {
    /// How long an order may stay pending before it is cancelled with `timeout`.
    #[arg(long, env = "SHOP_ORDER_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub order_deadline: Duration,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach NATS (`--nats-url` and the credentials flags).
    pub nats: shop_runtime::connect::NatsConfig,
    /// The shop's data directory; checkout keeps its sled database in `<data_dir>/checkout`.
    pub data_dir: PathBuf,
    /// How many servers keep each stream the service declares (`--replicas`).
    pub stream_replicas: usize,
    pub order_deadline: Duration,
    /// What "now" is for placing orders and passing deadlines: [`crate::clock::system`]
    /// in production, a [`crate::clock::ManualClock`] when a test wants to move time.
    pub clock: Arc<dyn Clock>,
    /// `--instance` and `--lease-ttl`: how this instance shares checkout's partitions.
    pub scale: shop_shell::scale::ScaleArgs,
}
