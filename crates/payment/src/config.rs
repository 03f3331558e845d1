//! Payment's settings: the shared flags plus where the payment gateway is and how hard to call it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shop_runtime::cli::parse_duration;

use crate::gateway::HttpGatewayConfig;

/// Where payment looks for the gateway when `SHOP_GATEWAY_URL` is unset: where
/// `gateway-sim` listens by default.
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:4280";

/// Calls in flight per payment instance unless `SHOP_GATEWAY_CONCURRENCY` says otherwise.
pub const DEFAULT_GATEWAY_CONCURRENCY: usize = 32;

/// Payment-specific flags.
#[derive(Debug, Clone, Args)]
pub struct PaymentArgs {
    /// The payment gateway's base URL (plain HTTP), e.g. `http://127.0.0.1:4280`.
    /// Unset, the `payment` binary uses that address and `shop run` starts a simulator there.
    #[arg(long, env = "SHOP_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Gateway calls in flight at most from this instance, as a provider's rate limit would allow.
    #[arg(long, env = "SHOP_GATEWAY_CONCURRENCY", default_value_t = DEFAULT_GATEWAY_CONCURRENCY, value_parser = parse_concurrency)]
    pub gateway_concurrency: usize,
    /// How long one gateway call may take before it counts as failed (and is retried).
    #[arg(long, env = "SHOP_GATEWAY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub gateway_timeout: Duration,
}

fn parse_concurrency(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a number of calls, 1 or more")),
    }
}

impl PaymentArgs {
    /// The adapter's settings, calling the gateway at `url`.
    pub fn gateway_at(&self, url: impl Into<String>) -> HttpGatewayConfig {
        HttpGatewayConfig {
            url: url.into(),
            concurrency: self.gateway_concurrency,
            timeout: self.gateway_timeout,
        }
    }

    /// The adapter's settings, at `--gateway-url` or the default address.
    pub fn gateway(&self) -> HttpGatewayConfig {
        self.gateway_at(
            self.gateway_url
                .clone()
                .unwrap_or_else(|| DEFAULT_GATEWAY_URL.to_owned()),
        )
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach NATS (`--nats-url` and the credentials flags).
    pub nats: shop_runtime::connect::NatsConfig,
    /// Payment keeps its sled database in `<data_dir>/payment`.
    pub data_dir: PathBuf,
    /// How many servers keep each stream the service declares (`--replicas`).
    pub stream_replicas: usize,
    pub gateway: HttpGatewayConfig,
    /// `--instance` and `--lease-ttl`: how this instance shares payment's partitions.
    pub scale: shop_shell::scale::ScaleArgs,
}
