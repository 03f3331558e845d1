//! Command-line settings every shop binary shares: `--nats-url`, the credentials
//! (`--nkey`, `--tls-ca`, `--tls-cert`, `--tls-key`, `--inbox-prefix`), `--data-dir`,
//! `--log-format`, `--replicas`.
//!
//! Credentials are *files*: a flag names where the secret is, never the secret itself,
//! so it shows up in neither `ps` (argv) nor the environment.

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
    /// A file holding this identity's nkey seed (`shop auth init` writes one per role).
    #[arg(long, env = "NATS_NKEY", global = true)]
    pub nkey: Option<PathBuf>,
    /// A PEM file of CA certificates trusted for the server's certificate; requires TLS.
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "NATS_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where replies to this client's requests arrive; defaults to `_INBOX_<key file
    /// name>` with --nkey (`payment.nk` → `_INBOX_payment`), the only inbox its role may read.
    #[arg(long, env = "NATS_INBOX_PREFIX", global = true)]
    pub inbox_prefix: Option<String>,
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
        crate::connect::NatsConfig {
            url: self.nats_url.clone(),
            nkey: self.nkey.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            inbox_prefix: self.inbox_prefix.clone(),
        }
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

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn credential_flags_fill_the_connection_settings() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "x",
            "--nkey",
            "/auth/payment.nk",
            "--tls-ca",
            "/tls/ca.pem",
            "--tls-cert",
            "/tls/c.pem",
            "--tls-key",
            "/tls/k.pem",
        ]);
        let nats = cli.map(|c| c.common.nats()).ok();
        assert_eq!(
            nats.as_ref().and_then(|n| n.nkey.clone()),
            Some(PathBuf::from("/auth/payment.nk"))
        );
        assert_eq!(
            nats.as_ref().and_then(|n| n.inbox_prefix()).as_deref(),
            Some("_INBOX_payment")
        );
        assert!(nats.is_some_and(|n| n.tls_required()));
        assert!(Cli::try_parse_from(["x", "--tls-cert", "/tls/c.pem"]).is_err());
    }

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
