//! Connecting to NATS: retries the first connection with a readable message while NATS is away.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::shutdown::Shutdown;
use crate::RuntimeError;

/// How a process reaches NATS: the server list and, as the deployment requires, its
/// credentials. Built from [`crate::cli::CommonArgs::nats`] in binaries; tests build it
/// from a harness server's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// One URL, or a comma-separated list naming the servers of a cluster.
    pub url: String,
}

impl NatsConfig {
    /// Plain connection settings for `url`.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig { url: url.into() }
    }
}

/// Connects to `url`, retrying with backoff until it answers or shutdown is requested.
///
/// After the first connection async-nats reconnects on its own; what it
/// cannot do is wait for a server that was never up, which is what a
/// service started before its broker needs.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    shutdown: &Shutdown,
) -> Result<Client, RuntimeError> {
    let url = config.url.as_str();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let options = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection event");
            });
        // A comma-separated list names the servers of a cluster; the client fails over between them.
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let error = match options.connect(servers).await {
            Ok(client) => {
                if attempt > 1 {
                    tracing::info!(url, attempt, "connected to NATS");
                }
                return Ok(client);
            }
            Err(error) => error,
        };
        tracing::warn!(
            url,
            attempt,
            error = %error,
            "NATS is unreachable; retrying in {delay:?} (is nats-server running? try `make run`)"
        );
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.requested() => {
                // Shutdown ends the waiting; the last attempt's error says why there was no connection.
                return Err(RuntimeError::Connect { url: url.to_owned(), source: error });
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
