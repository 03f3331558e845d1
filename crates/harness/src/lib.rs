//! Test harness for the shop: a real `nats-server` per test, clients, and waiting helpers.
//!
//! # Writing a scenario
//!
//! Every scenario gets a world of its own: a fresh `nats-server` on a free port
//! with its JetStream store in a temporary directory, so tests run in parallel
//! and leave nothing behind. Nothing is synchronised with a sleep: publish, then
//! [`eventually`] poll the outcome until a deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use shop_harness::{connect, declare_streams, eventually, events_about, publish_event, NatsServer};
//!
//! # async fn scenario(placed: shop_events::Envelope) -> Result<(), shop_harness::HarnessError> {
//! let server = NatsServer::start().await?;
//! let client = connect(&server.url()).await?;
//! let js = async_nats::jetstream::new(client);
//! declare_streams(&js).await?;
//!
//! let order = placed.event.key().to_owned();
//! publish_event(&js, &placed).await?;
//! // … start the services (see below) …
//! let trail = eventually(Duration::from_secs(10), "the order to be confirmed", || async {
//!     let events = events_about(&js, &order).await.ok()?;
//!     let confirmed = events.iter().any(|e| e.subject.starts_with("events.orders.confirmed."));
//!     confirmed.then_some(events)
//! })
//! .await?;
//! # let _ = trail;
//! # Ok(())
//! # }
//! ```
//!
//! Servers run with the shop's generated authorization: [`connect`] connects as `admin`,
//! [`connect_as`] (or [`NatsServer::connect_as`]) as any [`Role`], and the shop's services
//! each as their own role. [`ServerOptions::without_auth`] opts a test out.
//!
//! Outages are part of the toolkit: [`NatsServer::restart`] brings the server
//! back on the same port with the same store, and [`NatsServer::stop`] /
//! [`NatsServer::start_again`] leave a gap of any length in between.
//!
//! # Starting the shop
//!
//! [`Shop`] starts checkout, inventory and payment against a [`NatsServer`],
//! either in-process through each crate's `run(config, shutdown)` or as child
//! processes (the real binaries), and injects faults: kill -9, restart, crash
//! points, a slow or failing payment gateway. [`scenario`] has the helpers to
//! place orders, replenish stock and wait for outcomes.

pub mod client;
pub mod cluster;
pub mod scenario;
pub mod server;
pub mod shop;
pub mod wait;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{
    connect, connect_as, connect_with, credentials_for, declare_streams, events_about,
    last_sequences, nats_config, publish_event, publish_raw, stream_message_count, StoredEvent,
    EVENT_STREAMS,
};
pub use cluster::{NatsCluster, NodeId, CLUSTER_SIZE};
pub use server::{NatsServer, ServerOptions};
pub use shop::{Mode, Service, Shop, ShopConfig};
pub use shop_auth::Role;
pub use wait::eventually;
pub use world::{world, World};

/// Everything that can go wrong in the harness; each variant says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No `nats-server` binary: run `scripts/install-nats-server.sh` or set `NATS_SERVER_BIN`.
    #[error("nats-server binary not found (looked at: {searched:?}); run scripts/install-nats-server.sh or set NATS_SERVER_BIN")]
    ServerBinaryNotFound { searched: Vec<PathBuf> },

    /// Local file or process plumbing failed (temp dir, config file, spawning).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The server process ended before it became ready; the log usually says why.
    #[error("nats-server exited before it was ready ({status}); last log lines:\n{log_tail}")]
    ServerExited { status: String, log_tail: String },

    /// The server runs but did not report healthy in time.
    #[error("nats-server on {url} was not ready after {after:?}; last log lines:\n{log_tail}")]
    ServerNotReady {
        url: String,
        after: Duration,
        log_tail: String,
    },

    /// The guard has no running server (after [`NatsServer::stop`]).
    #[error("nats-server is not running; call start_again first")]
    ServerStopped,

    /// No connection could be made before the deadline.
    #[error("could not connect to {url} within {after:?}: {reason}")]
    Connect {
        url: String,
        after: Duration,
        reason: String,
    },

    /// A JetStream request (stream info, message get) failed.
    #[error("JetStream request failed: {0}")]
    JetStream(String),

    /// A publish was refused or its PubAck never came.
    #[error("publish to {subject} failed: {reason}")]
    Publish { subject: String, reason: String },

    /// Writing the roles' keys or the authorization block failed.
    #[error(transparent)]
    Auth(#[from] shop_auth::AuthError),

    /// Declaring streams through the runtime failed.
    #[error(transparent)]
    Runtime(#[from] shop_runtime::RuntimeError),
    #[error(transparent)]
    Read(#[from] shop_ops::OpsError),

    /// A service did not come up; its log tail says why.
    #[error("{service} did not answer PING in time; last log lines:\n{log_tail}")]
    ServiceNotReady { service: String, log_tail: String },

    /// A service failed or would not stop.
    #[error("{service} failed: {reason}")]
    ServiceFailed { service: String, reason: String },

    /// A request to a service endpoint was answered with an error or not at all.
    #[error("request {subject} failed: {reason}")]
    Request { subject: String, reason: String },

    /// [`eventually`] gave up: the awaited condition never held.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
}

impl HarnessError {
    /// Whether the same step can succeed if tried again: connections, publishes,
    /// requests and waits can; a missing binary, a stopped server or a failed service
    /// need someone to act.
    pub fn is_transient(&self) -> bool {
        match self {
            HarnessError::Connect { .. }
            | HarnessError::JetStream(_)
            | HarnessError::Publish { .. }
            | HarnessError::Request { .. }
            | HarnessError::Timeout { .. }
            | HarnessError::ServerNotReady { .. }
            | HarnessError::ServiceNotReady { .. } => true,
            HarnessError::Runtime(e) => e.is_transient(),
            HarnessError::Auth(e) => e.is_transient(),
            HarnessError::Read(e) => e.is_transient(),
            HarnessError::ServerBinaryNotFound { .. }
            | HarnessError::Io { .. }
            | HarnessError::ServerExited { .. }
            | HarnessError::ServerStopped
            | HarnessError::ServiceFailed { .. } => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}
