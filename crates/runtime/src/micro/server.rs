//! The NATS micro-service scaffold (ADR-32): registration, JSON endpoints, typed errors, STATS data.
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
use futures::StreamExt;
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
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        ApiError::internal(e.to_string())
    }
}

pub type ApiResult = Result<serde_json::Value, ApiError>;

/// Parses a JSON request body, or explains what is wrong with it.
pub fn parse_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
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
            serde_json::to_value(stats.snapshot(store.outbox_len(), store.inbox_len()))
                .unwrap_or_default()
        })
        .start(&spec.name, &spec.version)
        .await
        .map_err(|e| RuntimeError::Service(e.to_string()))
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
        .map_err(|e| RuntimeError::Service(format!("endpoint {subject}: {e}")))?;
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
                        status: e.description,
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

#[derive(serde::Deserialize)]
struct ListRequest {
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(serde::Deserialize)]
struct SeqRequest {
    seq: u64,
    #[serde(default)]
    reason: Option<String>,
}

fn dead_letter_error(e: crate::deadletter::DeadLetterError) -> ApiError {
    use crate::deadletter::DeadLetterError as E;
    match e {
        E::NotFound(seq) => {
            ApiError::not_found(format!("no dead letter with sequence {seq} in DEADLETTER"))
        }
        E::NotOurs { seq, service } => ApiError::bad_request(format!(
            "dead letter {seq} belongs to another service; ask that service (this is {service})"
        )),
        // The request cannot be honoured as asked; nothing inside failed.
        E::Truncated {
            seq,
            stream,
            sequence,
        } => ApiError::bad_request(format!(
            "dead letter {seq} holds a truncated copy; replay the original from stream {stream} sequence {sequence}"
        )),
        E::Failed(e) => ApiError::internal(e.to_string()),
    }
}

/// Serves `<service>.deadletters.list|replay|discard` for the service's own dead letters.
pub async fn serve_deadletter_endpoints(
    service: &Service,
    book: crate::deadletter::DeadLetterBook,
    shutdown: Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RuntimeError> {
    let name = book.service.clone();
    let filter = format!("deadletter.{name}.>");
    let list_book = book.clone();
    let list = serve_endpoint(
        service,
        "deadletters_list",
        &format!("{name}.deadletters.list"),
        move |body| {
            let book = list_book.clone();
            let filter = filter.clone();
            async move {
                let request: ListRequest = parse_request(&body)?;
                let letters = book
                    .list(&filter, request.limit.unwrap_or(100).min(1000))
                    .await?;
                reply(&letters)
            }
        },
        shutdown.clone(),
    )
    .await?;
    let replay_book = book.clone();
    let replay = serve_endpoint(
        service,
        "deadletters_replay",
        &format!("{name}.deadletters.replay"),
        move |body| {
            let book = replay_book.clone();
            async move {
                let request: SeqRequest = parse_request(&body)?;
                let view = book.replay(request.seq).await.map_err(dead_letter_error)?;
                reply(&view)
            }
        },
        shutdown.clone(),
    )
    .await?;
    let discard = serve_endpoint(
        service,
        "deadletters_discard",
        &format!("{name}.deadletters.discard"),
        move |body| {
            let book = book.clone();
            async move {
                let request: SeqRequest = parse_request(&body)?;
                let reason = request
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "`reason` is required: say why the dead letter is discarded",
                        )
                    })?;
                let view = book
                    .discard(request.seq, &reason)
                    .await
                    .map_err(dead_letter_error)?;
                reply(&view)
            }
        },
        shutdown,
    )
    .await?;
    Ok(vec![list, replay, discard])
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

/// What an endpoint answered: its JSON reply, or its service error (code, description).
pub type Reply = Result<serde_json::Value, (u16, String)>;

/// The client side of the convention above: sends a JSON request and turns a reply
/// carrying `Nats-Service-Error-Code` into `Ok(Err((code, description)))`, so callers
/// can treat 400 and 404 as answers rather than failures.
pub async fn request_json(
    client: &Client,
    subject: &str,
    body: &serde_json::Value,
    within: std::time::Duration,
) -> Result<Reply, RuntimeError> {
    let no_answer = |reason: String| RuntimeError::NoAnswer {
        subject: subject.to_owned(),
        reason,
    };
    let payload = serde_json::to_vec(body).map_err(|e| no_answer(e.to_string()))?;
    let message = tokio::time::timeout(within, client.request(subject.to_owned(), payload.into()))
        .await
        .map_err(|_| no_answer(format!("no reply within {within:?}")))?
        .map_err(|e| no_answer(e.to_string()))?;
    if let Some(headers) = &message.headers {
        if let Some(code) = headers.get("Nats-Service-Error-Code") {
            let code = code.as_str().parse().unwrap_or(500);
            let description = headers
                .get("Nats-Service-Error")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            return Ok(Err((code, description)));
        }
    }
    serde_json::from_slice(&message.payload)
        .map(Ok)
        .map_err(|e| RuntimeError::UnexpectedReply {
            subject: subject.to_owned(),
            reason: e.to_string(),
        })
}
