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

/// How long [`stats_all`] waits for one more instance once the replies stop coming,
/// when it cannot know how many instances there are.
const GATHER_QUIET: Duration = Duration::from_millis(500);

/// Every instance's `$SRV.STATS` reply for `service` (a service scaled out has several,
/// and a plain request hears only the fastest). Replies are gathered until `expected`
/// distinct instances answered, or, without a count, until none came for a moment;
/// never for longer than [`REQUEST_TIMEOUT`]. Empty when nobody answers.
pub async fn stats_all(client: &Client, service: &str, expected: Option<usize>) -> Vec<Value> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let subject = format!("$SRV.STATS.{service}");
    if client
        .publish_with_reply(subject, inbox, "".into())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let give_up = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut seen = std::collections::BTreeMap::new();
    loop {
        if expected.is_some_and(|n| seen.len() >= n) {
            break;
        }
        let wait_until = match (expected, seen.is_empty()) {
            (None, false) => (tokio::time::Instant::now() + GATHER_QUIET).min(give_up),
            _ => give_up,
        };
        match tokio::time::timeout_at(wait_until, replies.next()).await {
            Ok(Some(message)) => {
                if let Ok(value) = serde_json::from_slice::<Value>(&message.payload) {
                    let id = value["id"].as_str().unwrap_or_default().to_owned();
                    seen.insert(id, value);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    seen.into_values().collect()
}

/// A service's outbox backlog over all its instances (`None`: none answered STATS).
/// `expected` is how many instances should answer (the group's live members).
pub async fn service_outbox_backlog(
    client: &Client,
    service: &str,
    expected: Option<usize>,
) -> Option<u64> {
    let replies = stats_all(client, service, expected).await;
    if replies.is_empty() {
        return None;
    }
    Some(replies.iter().filter_map(outbox_backlog).sum())
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
