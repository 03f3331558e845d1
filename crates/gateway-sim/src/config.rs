//! How the simulator behaves and where it listens: settings, and the flags that set them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shop_runtime::cli::parse_duration;

/// Where the simulator listens unless told otherwise (`SHOP_GATEWAY_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4280";

/// The ledger's directory under a data directory, next to the services' own.
pub const LEDGER_DIR: &str = "payment-gateway";

/// How the simulated provider misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatorConfig {
    /// Added to every charge, void and refund.
    pub latency: Duration,
    /// Share of calls that fail transiently (503); half of those fail after the effect
    /// happened (the answer was lost), which is the case idempotency exists for.
    pub failure_rate: f64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            latency: Duration::ZERO,
            failure_rate: 0.0,
        }
    }
}

/// The behaviour flags, shared by `gateway-sim` and `shop run` (which starts a simulator).
#[derive(Debug, Clone, Args)]
pub struct BehaviourArgs {
    /// Simulated gateway latency per call, for example `50ms`.
    #[arg(long, env = "SHOP_GATEWAY_LATENCY", default_value = "0ms", value_parser = parse_duration)]
    pub gateway_latency: Duration,
    /// Share of gateway calls that fail transiently (0.0–1.0); half of them after the effect.
    #[arg(long, env = "SHOP_GATEWAY_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub gateway_failure_rate: f64,
}

impl BehaviourArgs {
    pub fn config(&self) -> SimulatorConfig {
        SimulatorConfig {
            latency: self.gateway_latency,
            failure_rate: self.gateway_failure_rate,
        }
    }
}

/// Parses a share between 0.0 and 1.0.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a rate between 0.0 and 1.0")),
    }
}

/// Parses a listen address such as `127.0.0.1:4280`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:4280: {e}"))
}
