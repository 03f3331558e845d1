//! Command-line settings every shop binary shares: `--nats-url`, `--data-dir`, `--log-format`,
//! `--replicas`.

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
    /// How many servers keep a copy of every stream the shop declares: 1 on a single
    /// server, 3 on a three-node cluster. An existing stream with another count is rescaled.
    #[arg(
        long = "replicas",
        env = "SHOP_STREAM_REPLICAS",
        default_value = "1",
        value_parser = parse_replicas,
        global = true
    )]
    pub stream_replicas: usize,
}

impl CommonArgs {
    /// The connection settings these flags describe.
    pub fn nats(&self) -> crate::connect::NatsConfig {
        crate::connect::NatsConfig::new(self.nats_url.clone())
    }
}

/// NATS keeps a stream on 1 to 5 servers.
fn parse_replicas(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=5) => Ok(n),
        _ => Err(format!("`{text}` is not a replica count from 1 to 5")),
    }
}

/// Parses durations such as `30s`, `250ms` or `2m` for flags and environment variables.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 30s or 250ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_from_one_to_five_are_accepted() {
        assert_eq!(parse_replicas("1"), Ok(1));
        assert_eq!(parse_replicas("3"), Ok(3));
        assert_eq!(parse_replicas("5"), Ok(5));
    }

    #[test]
    fn replica_counts_nats_cannot_keep_are_refused() {
        for text in ["0", "6", "-1", "three", ""] {
            assert!(parse_replicas(text).is_err(), "{text:?} was accepted");
        }
    }
}
