//! Command-line settings every shop binary shares: `--nats-url`, `--data-dir`, `--log-format`.

use std::path::PathBuf;

use clap::Args;

use crate::telemetry::LogFormat;

/// Flags shared by the service binaries and `shop`; each also reads its environment variable.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// NATS server URL; a comma-separated list for a cluster.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// Directory holding each service's sled database (one sub-directory per service).
    #[arg(long, env = "SHOP_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// Log output: `pretty` for people, `json` for log shipping. Filter with RUST_LOG.
    #[arg(long, env = "SHOP_LOG_FORMAT", default_value = "pretty", global = true)]
    pub log_format: LogFormat,
}

/// Parses durations such as `30s`, `250ms` or `2m` for flags and environment variables.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 30s or 250ms: {e}"))
}
