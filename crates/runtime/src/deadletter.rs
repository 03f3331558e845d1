//! Parking a message: what a consumer cannot process is published to its dead-letter
//! subject with the reason, the original subject, headers and bytes, where it came
//! from and who failed.
//!
//! The subject and header names belong to the contract; the caller passes them in
//! ([`DeadLetterTarget`]), so this crate names nothing. What operators do with dead
//! letters afterwards (list, replay, discard) is the shell's business.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::RuntimeError;

/// The header names a dead letter carries, from the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    /// Why the message was parked.
    pub reason: &'static str,
    /// The subject it was consumed from.
    pub subject: &'static str,
    pub stream: &'static str,
    /// Its sequence in `stream`.
    pub sequence: &'static str,
    pub consumer: &'static str,
    pub service: &'static str,
    /// How many times it had been delivered.
    pub delivered: &'static str,
    /// Set to `true` when only a truncated copy could be parked.
    pub truncated: &'static str,
    /// The original `Nats-Msg-Id`, kept under another name so JetStream does not take
    /// the dead letter for a duplicate of the original.
    pub original_msg_id: &'static str,
}

/// Where and how a consumer parks what it cannot process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterTarget {
    pub subject: String,
    pub headers: DeadLetterHeaders,
}

/// Everything needed to park one message.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub target: &'a DeadLetterTarget,
    pub service: &'a str,
    pub consumer: &'a str,
    pub stream: &'a str,
    pub stream_sequence: u64,
    pub delivered: i64,
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: &'a [u8],
    pub reason: &'a str,
}

fn dlq_headers(letter: &DeadLetter<'_>) -> HeaderMap {
    let names = &letter.target.headers;
    let mut headers = HeaderMap::new();
    if let Some(original) = letter.headers {
        for (name, values) in original.iter() {
            // The original Nats-Msg-Id would make JetStream drop the dead letter as a duplicate.
            if AsRef::<str>::as_ref(name) == "Nats-Msg-Id" {
                headers.insert(
                    names.original_msg_id,
                    values.first().map(|v| v.as_str()).unwrap_or(""),
                );
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    // Header values must be one line.
    let reason: String = letter
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    headers.insert(names.reason, reason.as_str());
    headers.insert(names.subject, letter.subject);
    headers.insert(names.stream, letter.stream);
    headers.insert(names.sequence, letter.stream_sequence.to_string().as_str());
    headers.insert(names.consumer, letter.consumer);
    headers.insert(names.service, letter.service);
    headers.insert(names.delivered, letter.delivered.to_string().as_str());
    headers
}

/// Publishes a dead letter and waits for JetStream to store it.
///
/// Its `Nats-Msg-Id` is derived from origin and consumer, so a redelivered
/// poison message is parked once, not once per delivery.
pub async fn publish(
    js: &jetstream::Context,
    letter: &DeadLetter<'_>,
) -> Result<u64, RuntimeError> {
    let msg_id = format!(
        "dlq:{}:{}:{}:{}",
        letter.service, letter.consumer, letter.stream, letter.stream_sequence
    );
    let headers = dlq_headers(letter);
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers.clone())
        .message_id(&msg_id)
        .payload(Bytes::copy_from_slice(letter.payload));
    let subject = letter.target.subject.as_str();
    let whole = match publish_and_wait(js, subject, publish).await {
        Ok(sequence) => return Ok(sequence),
        Err(e) => e,
    };
    // Too big with our headers added, most likely: park a truncated copy. The original
    // stays in its own stream at the recorded sequence. Any other fault fails the copy
    // too, and that error is returned.
    tracing::debug!(error = %whole, "dead letter not stored whole; parking a truncated copy");
    let mut headers = headers;
    headers.insert(letter.target.headers.truncated, "true");
    let keep = letter.payload.len().min(4096);
    let publish = jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(&msg_id)
        .payload(Bytes::copy_from_slice(&letter.payload[..keep]));
    publish_and_wait(js, subject, publish).await
}

/// Publishes and waits for the PubAck; returns the stored sequence.
async fn publish_and_wait(
    js: &jetstream::Context,
    subject: &str,
    message: jetstream::message::PublishMessage,
) -> Result<u64, RuntimeError> {
    let ack = js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|e| RuntimeError::publish(subject, e))?
        .await
        .map_err(|e| RuntimeError::publish(subject, e))?;
    Ok(ack.sequence)
}
