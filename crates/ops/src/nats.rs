//! Talking to the services' micro endpoints: JSON requests with typed error replies, PING and STATS.

use std::time::Duration;

use async_nats::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::OpsError;

/// How long an endpoint may take before the service is considered unresponsive.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The shop's three services, by their micro-service names (the contract's list).
pub const SERVICES: [&str; 3] = shop_events::api::service::ALL;

/// What an endpoint answered: a JSON value, or a micro-service error (code, description).
pub use shop_runtime::micro::Reply;

/// Sends a JSON request (one of the contract's request types, or any JSON value); a
/// service error reply becomes `Ok(Err((code, description)))` so callers can treat 400
/// and 404 as answers rather than failures.
pub async fn request<B: Serialize + ?Sized>(
    client: &Client,
    subject: &str,
    body: &B,
) -> Result<Reply, OpsError> {
    use shop_runtime::RuntimeError;
    let body = serde_json::to_value(body).map_err(|e| OpsError::InvalidOptions(e.to_string()))?;
    shop_runtime::micro::request_json(client, subject, &body, REQUEST_TIMEOUT)
        .await
        .map_err(|e| match e {
            RuntimeError::UnexpectedReply { subject, source } => OpsError::UnexpectedReply {
                subject,
                reason: source.to_string(),
            },
            other => OpsError::NoAnswer {
                subject: subject.to_owned(),
                reason: other.to_string(),
            },
        })
}

/// Like [`request`], but a 404 is `None` and any other error reply is an [`OpsError::Refused`].
pub async fn request_found<T: DeserializeOwned, B: Serialize + ?Sized>(
    client: &Client,
    subject: &str,
    body: &B,
) -> Result<Option<T>, OpsError> {
    match request(client, subject, body).await? {
        Ok(value) => decode(subject, value).map(Some),
        Err((404, _)) => Ok(None),
        Err((code, description)) => Err(OpsError::Refused {
            subject: subject.to_owned(),
            code,
            description,
        }),
    }
}

/// Decodes a reply into the shape this version of the tools expects.
pub fn decode<T: DeserializeOwned>(subject: &str, value: Value) -> Result<T, OpsError> {
    serde_json::from_value(value).map_err(|e| OpsError::UnexpectedReply {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}

/// Whether `service` answers `$SRV.PING.<service>` within `within`.
pub async fn answers_ping(client: &Client, service: &str, within: Duration) -> bool {
    let subject = format!("$SRV.PING.{service}");
    matches!(
        tokio::time::timeout(within, client.request(subject, "".into())).await,
        Ok(Ok(_))
    )
}

/// Fails with [`OpsError::ServiceDown`] naming the first of `services` that does not answer PING.
pub async fn require_services(client: &Client, services: &[&str]) -> Result<(), OpsError> {
    for service in services {
        if !answers_ping(client, service, Duration::from_secs(2)).await {
            return Err(OpsError::ServiceDown {
                service: (*service).to_owned(),
            });
        }
    }
    Ok(())
}

/// The service's `$SRV.STATS` reply, or `None` when it does not answer.
pub async fn stats(client: &Client, service: &str) -> Option<Value> {
    let subject = format!("$SRV.STATS.{service}");
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject, "".into()))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// The largest `outbox_backlog` any endpoint of a STATS reply reports; every endpoint
/// of a service carries the same snapshot, so the largest is the service's backlog.
pub fn outbox_backlog(stats: &Value) -> Option<u64> {
    stats["endpoints"]
        .as_array()?
        .iter()
        .filter_map(|endpoint| endpoint["data"]["outbox_backlog"].as_u64())
        .max()
}
