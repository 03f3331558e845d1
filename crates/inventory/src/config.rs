//! Inventory's settings.

use std::path::PathBuf;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// The shop's data directory; inventory keeps its sled database in `<data_dir>/inventory`.
    pub data_dir: PathBuf,
    /// How many servers keep each stream the service declares (`--replicas`).
    pub stream_replicas: usize,
}
