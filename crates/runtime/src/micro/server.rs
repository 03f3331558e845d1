//! The server side of NATS micro (ADR-32): registration, JSON endpoints, typed errors, STATS data.
//!
//! Endpoints take JSON and answer JSON. Errors set `Nats-Service-Error` and
//! `Nats-Service-Error-Code` (400 bad input, 404 unknown, 500 internal) with a
//! description a person can act on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_nats::service::{self, Service, ServiceExt};
use async_nats::Client;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::store::Store;
use crate::RuntimeError;

/// An endpoint's refusal, mapped to a service error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub description: String,
}

impl ApiError {
    pub fn bad_request(description: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            description: description.into(),
        }
    }
    pub fn not_found(description: impl Into<String>) -> ApiError {
        ApiError {
            code: 404,
            description: description.into(),
        }
    }
    pub fn internal(description: impl Into<String>) -> ApiError {
        ApiError {
            code: 500,
            description: description.into(),
        }
    }
    /// Not answerable right now, but worth asking again (a partition between owners).
    pub fn unavailable(description: impl Into<String>) -> ApiError {
        ApiError {
            code: 503,
            description: description.into(),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ApiError::internal(e.to_string())
    }
}

pub type ApiResult = Result<serde_json::Value, ApiError>;

/// Parses a JSON request body, or explains what is wrong with it.
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // No body, or JSON `null` (what a client serialising `()` sends), is the request
    // with no fields.
    let trimmed = body.trim_ascii();
    let body = if trimmed.is_empty() || trimmed == b"null" {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request JSON: {e}")))
}

/// Serialises a reply.
pub fn reply<T: Serialize>(value: &T) -> ApiResult {
    serde_json::to_value(value).map_err(|e| ApiError::internal(format!("cannot encode reply: {e}")))
}

/// Identity of a micro service as `nats micro info` shows it.
#[derive(Debug, Clone)]
pub struct MicroSpec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub metadata: HashMap<String, String>,
}

/// Registers the service; its STATS `data` carries the consumer counters.
pub async fn start_service(
    client: &Client,
    spec: &MicroSpec,
    stats: Arc<Stats>,
    store: Arc<Store>,
) -> Result<Service, RuntimeError> {
    client
        .service_builder()
        .description(&spec.description)
        .metadata(spec.metadata.clone())
        .stats_handler(move |_endpoint, _stats| {
            // What waits to be published by this instance: in a partitioned service, the
            // entries of the partitions it holds (entries left for a partition another
            // instance owns now are dropped when this one takes it again).
            let backlog = match stats.partitions() {
                Some(held) => store.outbox_len_in(&held),
                None => store.outbox_len(),
            };
            serde_json::to_value(stats.snapshot(backlog, store.inbox_len())).unwrap_or_default()
        })
        .start(&spec.name, &spec.version)
        .await
        .map_err(|source| RuntimeError::Service {
            what: format!("registration of {}", spec.name),
            source,
        })
}

/// Adds an endpoint on `subject` named `name` and serves it until shutdown.
pub async fn serve_endpoint<F, Fut>(
    service: &Service,
    name: &str,
    subject: &str,
    handler: F,
    mut shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, RuntimeError>
where
    F: Fn(Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiResult> + Send + 'static,
{
    let mut endpoint = service
        .endpoint_builder()
        .name(name)
        .add(subject)
        .await
        .map_err(|source| RuntimeError::Service {
            what: format!("endpoint {subject}"),
            source,
        })?;
    let handler = Arc::new(handler);
    Ok(tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = shutdown.requested() => break,
                r = endpoint.next() => match r { Some(r) => r, None => break },
            };
            let handler = handler.clone();
            // Each request on its own task: a slow query must not hold up the others.
            tokio::spawn(async move {
                let response = match handler(request.message.payload.clone()).await {
                    Ok(value) => Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default())),
                    Err(e) => Err(service::error::Error {
                        status: header_safe(&e.description),
                        code: e.code as usize,
                    }),
                };
                if let Err(e) = request.respond(response).await {
                    tracing::debug!(error = %e, "cannot respond");
                }
            });
        }
        let _ = endpoint.stop().await;
    }))
}

/// The longest error description sent; it travels in a header.
const MAX_DESCRIPTION: usize = 1024;

/// An error description as a header value: control characters (a line break would break
/// the reply, and async-nats refuses to write it) become spaces, and it is cut short.
fn header_safe(description: &str) -> String {
    let mut out: String = description
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_DESCRIPTION {
        let mut cut = MAX_DESCRIPTION;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// A service's request/reply surface: its endpoints and how to answer each.
pub trait Api: Clone + Send + Sync + 'static {
    /// `(endpoint name, subject)` pairs; names match `[A-Za-z0-9_-]+` as ADR-32 asks.
    fn endpoints(&self) -> Vec<(&'static str, &'static str)>;

    /// Answers a request to the endpoint called `name`.
    fn call(&self, name: &'static str, body: Bytes) -> impl Future<Output = ApiResult> + Send;
}

/// Serves every endpoint of `api` until shutdown.
pub async fn serve_api<A: Api>(
    service: &Service,
    api: A,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    for (name, subject) in api.endpoints() {
        let api = api.clone();
        serve_endpoint(
            service,
            name,
            subject,
            move |body| {
                let api = api.clone();
                async move { api.call(name, body).await }
            },
            shutdown.clone(),
        )
        .await?;
    }
    Ok(())
}

/// A boxed endpoint handler, for endpoints whose subjects are only known at run time.
pub type BoxedHandler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, ApiResult> + Send + Sync>;

/// An endpoint put together at run time: its name, subject and handler.
#[derive(Clone)]
pub struct BoxedEndpoint {
    pub name: String,
    pub subject: String,
    pub handler: BoxedHandler,
}

impl std::fmt::Debug for BoxedEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxedEndpoint")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl BoxedEndpoint {
    pub fn new<F, Fut>(name: impl Into<String>, subject: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ApiResult> + Send + 'static,
    {
        BoxedEndpoint {
            name: name.into(),
            subject: subject.into(),
            handler: Arc::new(move |body| handler(body).boxed()),
        }
    }
}

/// Serves each of `endpoints` until shutdown.
pub async fn serve_boxed(
    service: &Service,
    endpoints: &[BoxedEndpoint],
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    for endpoint in endpoints {
        let handler = endpoint.handler.clone();
        serve_endpoint(
            service,
            &endpoint.name,
            &endpoint.subject,
            move |body| handler(body),
            shutdown.clone(),
        )
        .await?;
    }
    Ok(())
}
