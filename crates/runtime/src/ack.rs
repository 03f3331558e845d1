//! The ack decision, in one place: what the consumer loop does with a message once it
//! knows what became of it. A pure function, so every row of the table in
//! docs/architecture.md ("Ack decisions, in one place") is a unit test.

use std::time::Duration;

use crate::store::ApplyError;

/// What became of one consumed message.
#[derive(Debug)]
pub enum Outcome {
    /// Applied, or already in the inbox; the group commit is durable.
    Applied,
    /// Applied, but the group commit's flush failed: not durable yet.
    NotDurable,
    /// It does not decode or fails the contract's checks; the reason says why.
    Undecodable(String),
    /// Applying it failed: refused by the domain, or a store fault.
    Failed(ApplyError),
    /// It was to be dead-lettered, but publishing the dead letter failed.
    DeadLetterFailed,
}

/// What the consumer loop does with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckAction {
    Ack,
    /// Ask for a redelivery after the delay.
    Nak(Duration),
    /// Park it in the dead-letter stream with the reason, then `term` it.
    DeadLetterThenTerm(String),
}

/// The first nak's delay; each further delivery doubles it, up to [`NAK_DELAY_MAX`].
pub const NAK_DELAY_MIN: Duration = Duration::from_millis(250);
pub const NAK_DELAY_MAX: Duration = Duration::from_secs(30);
/// The delay before a batch whose flush failed comes back. Fixed, because the fault is
/// the service's disk, not the message.
pub const NOT_DURABLE_DELAY: Duration = Duration::from_secs(1);

/// The delay before a nak'd message comes back: 250 ms doubling, at most 30 s.
pub fn nak_delay(delivered: u64) -> Duration {
    let exp = delivered.clamp(1, 8) as u32 - 1;
    (NAK_DELAY_MIN * 2u32.pow(exp)).min(NAK_DELAY_MAX)
}

/// Decides what to do with a message on its `delivered`-th delivery, for a consumer that
/// allows `max_deliver` deliveries (zero or less: unlimited, as in JetStream).
///
/// Permanent failures are dead-lettered at once; retrying cannot help them. Transient
/// ones are nak'ed with a growing delay, except on the last allowed delivery: then
/// JetStream would drop the message, so it is dead-lettered instead.
pub fn ack_decision(outcome: Outcome, delivered: u64, max_deliver: i64) -> AckAction {
    match outcome {
        Outcome::Applied => AckAction::Ack,
        // Parked only on the last allowed delivery, where a nak would let JetStream drop
        // it: the effect may already be in the store and reach disk with the next flush,
        // and the inbox makes a replay of the dead letter harmless either way.
        Outcome::NotDurable if is_last_delivery(delivered, max_deliver) => {
            AckAction::DeadLetterThenTerm(format!(
                "gave up after {delivered} deliveries: the store could not make it durable"
            ))
        }
        // Otherwise never parked: the redelivery finds it in the inbox once it is on disk.
        Outcome::NotDurable => AckAction::Nak(NOT_DURABLE_DELAY),
        Outcome::Undecodable(reason) => AckAction::DeadLetterThenTerm(reason),
        Outcome::Failed(ApplyError::Rejected(reason)) => AckAction::DeadLetterThenTerm(reason),
        Outcome::Failed(e) if !e.is_transient() => {
            AckAction::DeadLetterThenTerm(format!("permanent failure: {e}"))
        }
        Outcome::Failed(e) if is_last_delivery(delivered, max_deliver) => {
            AckAction::DeadLetterThenTerm(format!("gave up after {delivered} deliveries: {e}"))
        }
        Outcome::Failed(_) | Outcome::DeadLetterFailed => AckAction::Nak(nak_delay(delivered)),
    }
}

fn is_last_delivery(delivered: u64, max_deliver: i64) -> bool {
    u64::try_from(max_deliver).is_ok_and(|max| max > 0 && delivered >= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuntimeError;

    const MAX_DELIVER: i64 = 10;

    fn transient() -> ApplyError {
        ApplyError::Failed(RuntimeError::Storage(sled::Error::Io(
            std::io::Error::other("disk full"),
        )))
    }

    fn corrupt() -> ApplyError {
        ApplyError::Failed(RuntimeError::Corrupt {
            record: "order-1".to_owned(),
            source: Box::new(crate::outbox_entry::MalformedEntry),
        })
    }

    fn encode_failure() -> ApplyError {
        let source = serde_json::from_str::<u8>("not json").err();
        let source = source.unwrap_or_else(|| panic!("`not json` is not JSON"));
        ApplyError::Failed(RuntimeError::Encode {
            what: "a record".to_owned(),
            source,
        })
    }

    fn is_dead_letter(action: &AckAction) -> bool {
        matches!(action, AckAction::DeadLetterThenTerm(_))
    }

    #[test]
    fn an_applied_event_is_acked() {
        assert_eq!(
            ack_decision(Outcome::Applied, 1, MAX_DELIVER),
            AckAction::Ack
        );
        assert_eq!(
            ack_decision(Outcome::Applied, 10, MAX_DELIVER),
            AckAction::Ack
        );
    }

    #[test]
    fn a_domain_refusal_is_dead_lettered_with_its_reason_at_once() {
        let refused = ApplyError::Rejected("conflicting order id".to_owned());
        assert!(!refused.is_transient());
        assert_eq!(
            ack_decision(Outcome::Failed(refused), 1, MAX_DELIVER),
            AckAction::DeadLetterThenTerm("conflicting order id".to_owned())
        );
    }

    #[test]
    fn an_undecodable_message_is_dead_lettered_with_its_reason_at_once() {
        assert_eq!(
            ack_decision(
                Outcome::Undecodable("unknown type".to_owned()),
                1,
                MAX_DELIVER
            ),
            AckAction::DeadLetterThenTerm("unknown type".to_owned())
        );
    }

    #[test]
    fn a_transient_fault_is_nakd_with_a_delay_doubling_from_250_ms() {
        assert!(transient().is_transient());
        let delays: Vec<AckAction> = (1..MAX_DELIVER as u64)
            .map(|delivered| ack_decision(Outcome::Failed(transient()), delivered, MAX_DELIVER))
            .collect();
        let expected: Vec<AckAction> =
            [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
                .into_iter()
                .map(|ms| AckAction::Nak(Duration::from_millis(ms)))
                .collect();
        assert_eq!(delays, expected);
    }

    #[test]
    fn a_transient_fault_on_the_last_allowed_delivery_is_dead_lettered() {
        let action = ack_decision(Outcome::Failed(transient()), 10, MAX_DELIVER);
        assert!(is_dead_letter(&action), "{action:?}");
    }

    #[test]
    fn a_batch_not_made_durable_comes_back_unless_it_is_the_last_allowed_delivery() {
        assert_eq!(
            ack_decision(Outcome::NotDurable, 9, MAX_DELIVER),
            AckAction::Nak(NOT_DURABLE_DELAY)
        );
        let last = ack_decision(Outcome::NotDurable, 10, MAX_DELIVER);
        assert!(is_dead_letter(&last), "{last:?}");
        assert_eq!(
            ack_decision(Outcome::NotDurable, 1_000, -1),
            AckAction::Nak(NOT_DURABLE_DELAY)
        );
    }

    #[test]
    fn without_a_delivery_limit_a_transient_fault_is_always_nakd() {
        assert_eq!(
            ack_decision(Outcome::Failed(transient()), 1_000, -1),
            AckAction::Nak(NAK_DELAY_MAX)
        );
    }

    #[test]
    fn a_permanent_store_fault_is_dead_lettered_at_once() {
        for fault in [corrupt(), encode_failure()] {
            assert!(!fault.is_transient(), "{fault:?}");
            let action = ack_decision(Outcome::Failed(fault), 1, MAX_DELIVER);
            assert!(is_dead_letter(&action), "{action:?}");
        }
    }

    #[test]
    fn a_message_that_could_not_be_dead_lettered_is_nakd_to_try_again() {
        assert_eq!(
            ack_decision(Outcome::DeadLetterFailed, 3, MAX_DELIVER),
            AckAction::Nak(Duration::from_secs(1))
        );
    }
}
