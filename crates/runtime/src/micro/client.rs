//! The client side of NATS micro: a JSON request whose service-error reply is an answer,
//! not a failure.

use std::time::Duration;

use async_nats::Client;

use crate::RuntimeError;

/// What an endpoint answered: its JSON reply, or its service error (code, description).
pub type Reply = Result<serde_json::Value, (u16, String)>;

/// Sends a JSON request and turns a reply carrying `Nats-Service-Error-Code` (the
/// server's convention, [`super::server`]) into `Ok(Err((code, description)))`, so
/// callers can treat 400 and 404 as answers rather than failures.
pub async fn request_json(
    client: &Client,
    subject: &str,
    body: &serde_json::Value,
    within: Duration,
) -> Result<Reply, RuntimeError> {
    let payload = serde_json::to_vec(body).map_err(|source| RuntimeError::Encode {
        what: format!("the request to {subject}"),
        source,
    })?;
    let message = tokio::time::timeout(within, client.request(subject.to_owned(), payload.into()))
        .await
        .map_err(|_| RuntimeError::NoReplyWithin {
            subject: subject.to_owned(),
            within,
        })?
        .map_err(|source| RuntimeError::NoAnswer {
            subject: subject.to_owned(),
            source,
        })?;
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
        .map_err(|source| RuntimeError::UnexpectedReply {
            subject: subject.to_owned(),
            source,
        })
}
