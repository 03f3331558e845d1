//! Talking to the test server the way the shop does: connect (as a role), declare streams,
//! publish CloudEvents (well-formed or hostile), and read back everything stored about one
//! order. Declaring, publishing and reading are the shop's own code (shell and ops), not copies.
//!
//! # Credentials
//!
//! Harness servers run with the generated authorization by default, so every connection
//! needs a role's key. Tests and the shop know a server by its URL, so the server
//! registers its auth directory under its URL here ([`credentials_for`]); [`connect`]
//! then connects as `admin` (tests play any upstream, hostile ones included),
//! [`connect_as`] as any role, and the shop's services each get their own role's key
//! ([`nats_config`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectErrorKind};
use bytes::Bytes;
use shop_auth::Role;
use shop_events::subjects::DEFAULT_EVENT_MAX_AGE;
use shop_events::Envelope;
use shop_runtime::connect::NatsConfig;
use tokio::time::Instant;

use crate::wait::Backoff;
use crate::HarnessError;

pub use shop_ops::reader::{StoredEvent, EVENT_STREAMS};

/// How long [`connect`] keeps trying; covers a server that is still coming up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// The auth directory of each running harness server (and cluster), by every URL it is
/// known by. A server registers when it starts and leaves when dropped.
static CREDENTIALS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

pub(crate) fn register_credentials(url: &str, auth_dir: &Path) {
    if let Ok(mut map) = CREDENTIALS.lock() {
        map.insert(url.to_owned(), auth_dir.to_owned());
    }
}

pub(crate) fn forget_credentials(url: &str) {
    if let Ok(mut map) = CREDENTIALS.lock() {
        map.remove(url);
    }
}

/// The auth directory (`shop auth init`'s layout) of the harness server at `url`;
/// `None` for a server started without auth (or not by the harness).
pub fn credentials_for(url: &str) -> Option<PathBuf> {
    CREDENTIALS.lock().ok()?.get(url).cloned()
}

/// How `role` connects to the harness server at `url`: its key when that server runs with
/// auth, plain otherwise.
pub fn nats_config(url: &str, role: Role) -> NatsConfig {
    let config = NatsConfig::new(url);
    match credentials_for(url) {
        Some(dir) => config.with_nkey(shop_auth::seed_path(&dir, role)),
        None => config,
    }
}

/// How the shop service called `service` connects: as its own least-privilege role.
pub(crate) fn service_nats(url: &str, service: &str) -> NatsConfig {
    match Role::of_service(service) {
        Some(role) => nats_config(url, role),
        None => NatsConfig::new(url),
    }
}

/// The environment a service process connects with besides `NATS_URL`: its own key.
pub(crate) fn service_env(url: &str, service: &str) -> Vec<(&'static str, PathBuf)> {
    service_nats(url, service)
        .nkey
        .map(|key| ("NATS_NKEY", key))
        .into_iter()
        .collect()
}

/// Connects to `url` (one server, or a comma-separated list for a cluster) as `admin`,
/// retrying until a deadline because the server may still be starting.
///
/// Reconnects after a server restart are quick (50 ms steps, at most 500 ms) so
/// outage scenarios do not spend their deadline waiting for the client.
pub async fn connect(url: &str) -> Result<Client, HarnessError> {
    connect_as(url, Role::Admin).await
}

/// [`connect`] as `role`: its key and its private inbox.
pub async fn connect_as(url: &str, role: Role) -> Result<Client, HarnessError> {
    connect_with(&nats_config(url, role)).await
}

/// [`connect`] with explicit settings (a role's key, TLS files).
pub async fn connect_with(config: &NatsConfig) -> Result<Client, HarnessError> {
    let url = config.url.as_str();
    let started = Instant::now();
    let mut backoff = Backoff::new();
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    loop {
        let options = config
            .options()
            .map_err(|e| HarnessError::Connect {
                url: url.to_owned(),
                after: Duration::ZERO,
                reason: e.to_string(),
            })?
            .name("shop-harness")
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * attempts as u64).min(Duration::from_millis(500))
            });
        match options.connect(servers.clone()).await {
            Ok(client) => return Ok(client),
            // Refused credentials stay refused: say so now rather than at the deadline.
            Err(e)
                if started.elapsed() >= CONNECT_DEADLINE
                    || matches!(
                        e.kind(),
                        ConnectErrorKind::AuthorizationViolation
                            | ConnectErrorKind::Authentication
                            | ConnectErrorKind::Tls
                    ) =>
            {
                return Err(HarnessError::Connect {
                    url: url.to_owned(),
                    after: CONNECT_DEADLINE,
                    reason: e.to_string(),
                })
            }
            Err(_) => backoff.sleep().await,
        }
    }
}

/// Declares the shop's streams (events and dead letters) exactly as the services do,
/// so scenarios can publish before any service starts.
pub async fn declare_streams(js: &Context) -> Result<(), HarnessError> {
    let decls = shop_shell::stream_decls(DEFAULT_EVENT_MAX_AGE);
    shop_runtime::streams::declare_streams(js, &decls).await?;
    Ok(())
}

/// Publishes an event exactly as the services' endpoints do (`shop_shell::publish_event`:
/// structured-mode JSON, `Nats-Msg-Id` = event id, `traceparent` carried), and returns the
/// PubAck so tests can check `duplicate` and `sequence`.
pub async fn publish_event(js: &Context, envelope: &Envelope) -> Result<PublishAck, HarnessError> {
    Ok(shop_shell::publish_event(js, envelope).await?)
}

/// Publishes arbitrary bytes and headers, for hostile-input scenarios (bad JSON,
/// wrong type, mismatched subject, oversized payload).
pub async fn publish_raw(
    js: &Context,
    subject: &str,
    headers: HeaderMap,
    payload: impl Into<Bytes>,
) -> Result<PublishAck, HarnessError> {
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await;
    await_ack(subject, ack).await
}

async fn await_ack(
    subject: &str,
    sent: Result<PublishAckFuture, jetstream::context::PublishError>,
) -> Result<PublishAck, HarnessError> {
    let failed = |reason: String| HarnessError::Publish {
        subject: subject.to_owned(),
        reason,
    };
    let pending = sent.map_err(|e| failed(e.to_string()))?;
    pending.await.map_err(|e| failed(e.to_string()))
}

/// How many messages a stream holds right now, from a fresh stream info.
pub async fn stream_message_count(js: &Context, stream: &str) -> Result<u64, HarnessError> {
    Ok(stream_state(js, stream).await?.messages)
}

/// A stream's current state (message count, sequences) from its info.
async fn stream_state(
    js: &Context,
    stream: &str,
) -> Result<async_nats::jetstream::stream::State, HarnessError> {
    let info = js
        .get_stream(stream)
        .await
        .map_err(|e| HarnessError::JetStream(format!("stream info of {stream}: {e}")))?
        .get_info()
        .await
        .map_err(|e| HarnessError::JetStream(format!("stream info of {stream}: {e}")))?;
    Ok(info.state)
}

/// Each event stream's last sequence, in the order of [`EVENT_STREAMS`]: two equal reads
/// around a look at the shop say nothing was stored meanwhile (quiescence checks).
pub async fn last_sequences(js: &Context) -> Result<Vec<u64>, HarnessError> {
    let mut out = Vec::with_capacity(EVENT_STREAMS.len());
    for name in EVENT_STREAMS {
        out.push(stream_state(js, name).await?.last_sequence);
    }
    Ok(out)
}

/// Every event stored about one order (or sku) across ORDERS, INVENTORY and PAYMENTS,
/// oldest first by the time the server stored it; the operators' reader
/// (`shop_ops::reader::events_about`), so a scenario sees what `shop trace` sees.
pub async fn events_about(js: &Context, key: &str) -> Result<Vec<StoredEvent>, HarnessError> {
    Ok(shop_ops::reader::events_about(js, key).await?)
}
