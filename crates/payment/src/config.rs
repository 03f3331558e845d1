//! Payment's settings: the shared flags plus the simulated gateway's behaviour.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shop_runtime::cli::parse_duration;

use crate::gateway::SimulatorConfig;

/// Payment-specific flags.
#[derive(Debug, Clone, Args)]
pub struct PaymentArgs {
    /// Simulated gateway latency per call, for example `50ms`.
    #[arg(long, env = "SHOP_GATEWAY_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub gateway_latency: Duration,
    /// Share of gateway calls that fail transiently (0.0–1.0); they are retried with backoff.
    #[arg(long, env = "SHOP_GATEWAY_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub gateway_failure_rate: f64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a rate between 0.0 and 1.0")),
    }
}

impl PaymentArgs {
    pub fn simulator(&self) -> SimulatorConfig {
        SimulatorConfig {
            latency: self.gateway_latency,
            failure_rate: self.gateway_failure_rate,
        }
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// Payment keeps its sled database in `<data_dir>/payment` and the simulator's books in `<data_dir>/payment-gateway`.
    pub data_dir: PathBuf,
    /// How many servers keep each stream the service declares (`--replicas`).
    pub stream_replicas: usize,
    pub gateway: SimulatorConfig,
}
