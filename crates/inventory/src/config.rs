//! Inventory's settings.

use std::path::PathBuf;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach NATS (`--nats-url` and the credentials flags).
    pub nats: shop_runtime::connect::NatsConfig,
    /// The shop's data directory; inventory keeps its sled database in `<data_dir>/inventory`.
    pub data_dir: PathBuf,
    /// How many servers keep each stream the service declares (`--replicas`).
    pub stream_replicas: usize,
    /// `--instance` and `--lease-ttl`: inventory runs one active instance; the others
    /// stand by and take over when it stops.
    pub scale: shop_shell::scale::ScaleArgs,
}
