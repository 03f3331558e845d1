//! The dead-letter endpoints every service serves (`<service>.deadletters.list|replay|discard`),
//! their request and reply bodies, and the headers a dead letter carries.
//!
//! A dead letter is published on `deadletter.<service>.<stream>` (see
//! [`crate::subjects::deadletter_subject`]) into the `DEADLETTER` stream, with the
//! original bytes and headers plus the `Shop-Dlq-*` headers below.

use serde::{Deserialize, Serialize};

/// The endpoint group: subjects are `<service>.deadletters.<verb>`.
pub const GROUP: &str = "deadletters";

/// Endpoint names, as `nats micro info` shows them.
pub const LIST_ENDPOINT: &str = "deadletters_list";
pub const REPLAY_ENDPOINT: &str = "deadletters_replay";
pub const DISCARD_ENDPOINT: &str = "deadletters_discard";

/// `<service>.deadletters.list`: the body is a [`ListRequest`]; replies `Vec<DeadLetterView>`,
/// oldest first.
pub fn list_subject(service: &str) -> String {
    format!("{service}.{GROUP}.list")
}

/// `<service>.deadletters.replay`: the body is a [`ReplayRequest`]; replies the [`DeadLetterView`].
pub fn replay_subject(service: &str) -> String {
    format!("{service}.{GROUP}.replay")
}

/// `<service>.deadletters.discard`: the body is a [`DiscardRequest`]; replies the [`DeadLetterView`].
pub fn discard_subject(service: &str) -> String {
    format!("{service}.{GROUP}.discard")
}

/// `(endpoint name, subject)` of a service's three dead-letter endpoints.
pub fn endpoints(service: &str) -> [(&'static str, String); 3] {
    [
        (LIST_ENDPOINT, list_subject(service)),
        (REPLAY_ENDPOINT, replay_subject(service)),
        (DISCARD_ENDPOINT, discard_subject(service)),
    ]
}

/// How many dead letters `list` returns without a `limit`, and at most.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;

/// The body of `list`; `{}` lists up to [`DEFAULT_LIST_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl ListRequest {
    /// The number of dead letters to return: the limit asked for, at most [`MAX_LIST_LIMIT`].
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT)
    }
}

/// The body of `replay`: the dead letter's sequence in the `DEADLETTER` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub seq: u64,
}

/// The body of `discard`. `reason` is required (a 400 without it) and kept with the decision;
/// it is optional here so the service can say so in words rather than with a parse error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscardRequest {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an operator decided about a dead letter, kept in the service's own store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Resolution {
    Replayed { at: String, republished_as: u64 },
    Discarded { at: String, reason: String },
}

/// One dead letter as operators see it: the reply of every dead-letter endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLetterView {
    /// Its sequence in the `DEADLETTER` stream: what `replay` and `discard` take.
    pub seq: u64,
    pub parked_at: String,
    pub reason: String,
    /// The subject it was consumed from.
    pub subject: String,
    pub stream: String,
    pub stream_sequence: Option<u64>,
    pub consumer: String,
    pub delivered: Option<i64>,
    /// Only the first 4 KiB were parked; replay the original from `stream` instead.
    pub truncated: bool,
    /// The payload as text, cut at 2048 characters.
    pub payload: String,
    pub resolution: Option<Resolution>,
}

/// Every header a dead letter adds starts with this.
pub const HDR_PREFIX: &str = "Shop-Dlq-";
/// Why the message was parked.
pub const HDR_REASON: &str = "Shop-Dlq-Reason";
/// The subject it was consumed from.
pub const HDR_SUBJECT: &str = "Shop-Dlq-Subject";
/// The stream it was consumed from.
pub const HDR_STREAM: &str = "Shop-Dlq-Stream";
/// Its sequence in that stream.
pub const HDR_SEQUENCE: &str = "Shop-Dlq-Sequence";
/// The durable consumer that could not process it.
pub const HDR_CONSUMER: &str = "Shop-Dlq-Consumer";
/// The service that could not process it.
pub const HDR_SERVICE: &str = "Shop-Dlq-Service";
/// How many times it had been delivered.
pub const HDR_DELIVERED: &str = "Shop-Dlq-Delivered";
/// `true` when only a truncated copy could be parked.
pub const HDR_TRUNCATED: &str = "Shop-Dlq-Truncated";
/// The original `Nats-Msg-Id`, renamed so JetStream does not drop the dead letter as a duplicate.
pub const HDR_ORIGINAL_MSG_ID: &str = "Shop-Dlq-Original-Msg-Id";
/// On a replayed event: the dead letter's sequence it was replayed from.
pub const HDR_REPLAYED_FROM: &str = "Shop-Replayed-From";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_service_group_verb() {
        assert_eq!(list_subject("checkout"), "checkout.deadletters.list");
        assert_eq!(replay_subject("inventory"), "inventory.deadletters.replay");
        assert_eq!(discard_subject("payment"), "payment.deadletters.discard");
    }

    #[test]
    fn every_dead_letter_header_but_the_replay_mark_has_the_prefix() {
        for name in [
            HDR_REASON,
            HDR_SUBJECT,
            HDR_STREAM,
            HDR_SEQUENCE,
            HDR_CONSUMER,
            HDR_SERVICE,
            HDR_DELIVERED,
            HDR_TRUNCATED,
            HDR_ORIGINAL_MSG_ID,
        ] {
            assert!(name.starts_with(HDR_PREFIX), "{name}");
        }
        // A replayed event must keep it: replay strips the prefixed headers.
        assert!(!HDR_REPLAYED_FROM.starts_with(HDR_PREFIX));
    }

    #[test]
    fn an_empty_list_request_asks_for_the_default_and_a_large_one_is_capped() {
        let empty: ListRequest = serde_json::from_str("{}").unwrap_or_default();
        assert_eq!(empty.effective_limit(), DEFAULT_LIST_LIMIT);
        let huge = ListRequest {
            limit: Some(1_000_000),
        };
        assert_eq!(huge.effective_limit(), MAX_LIST_LIMIT);
    }

    #[test]
    fn resolutions_are_tagged_by_status() -> Result<(), serde_json::Error> {
        let replayed = Resolution::Replayed {
            at: "2024-01-01T00:00:00Z".to_owned(),
            republished_as: 7,
        };
        let json = serde_json::to_value(&replayed)?;
        assert_eq!(json["status"], "replayed");
        assert_eq!(serde_json::from_value::<Resolution>(json)?, replayed);
        Ok(())
    }
}
