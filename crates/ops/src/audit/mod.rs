//! `shop audit`: reads every event and the services' state, and checks that the books
//! balance: every order settled in time, money and stock accounted for, the gateway's
//! ledger agreeing with the PAYMENTS stream, and nothing left in the outboxes.
//!
//! The checks run on a snapshot; on a shop that is still busy, orders younger than
//! `grace` are left alone so that a reaction still on its way is not called a violation.

mod checks;
mod gather;
mod render;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use async_nats::Client;
use serde::Serialize;

use crate::OpsError;

/// How strict the audit is about time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// The deadline checkout gives an order; used when checkout's own `deadline_at` is gone.
    pub order_deadline: Duration,
    /// Extra time past a deadline before an unsettled order is a violation; also how long
    /// an order must have been quiet before its compensations are expected to be complete.
    pub grace: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            order_deadline: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}

/// Which invariant a violation breaks; typed so tests and scripts match on it, not on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// An order past its deadline (+ grace) has no outcome in the log or is pending at checkout.
    UnsettledPastDeadline,
    /// Checkout's status differs from the outcome the events record.
    CheckoutDisagrees,
    /// A confirmed order has no PaymentCaptured, or more than one.
    ConfirmedNotCapturedOnce,
    /// A confirmed order was refunded.
    ConfirmedButRefunded,
    /// A confirmed order's stock was never committed.
    ConfirmedWithoutCommit,
    /// An order has PaymentCaptured events with different payment ids.
    DoubleCapture,
    /// A cancelled order kept money: Σ captured − Σ refunded ≠ 0.
    CancelledMoneyNotReturned,
    /// A cancelled order still holds reserved stock or kept a sale.
    CancelledStockNotReturned,
    /// Inventory's on hand ≠ Σ replenished − Σ committed + Σ returned.
    OnHandMismatch,
    /// Inventory's reserved ≠ Σ open reservations.
    ReservedMismatch,
    /// A sku's stock went below zero, in the event log or in inventory's state.
    NegativeStock,
    /// The gateway captured money for an order whose capture was never announced.
    LedgerCaptureWithoutEvent,
    /// A ledger capture and its PaymentCaptured disagree (amount, or announced more than once).
    LedgerMismatch,
    /// The ledger's refunded amount differs from the PaymentRefunded events.
    LedgerRefundMismatch,
    /// A PaymentCaptured whose payment id the gateway's ledger does not hold.
    CaptureNotInLedger,
    /// Payment's own record of an order disagrees with the PAYMENTS stream.
    PaymentRecordMismatch,
    /// A service still has events in its outbox.
    OutboxNotEmpty,
    /// A service did not answer, so its state could not be checked.
    ServiceUnreachable,
}

impl Rule {
    pub const ALL: [Rule; 18] = [
        Rule::UnsettledPastDeadline,
        Rule::CheckoutDisagrees,
        Rule::ConfirmedNotCapturedOnce,
        Rule::ConfirmedButRefunded,
        Rule::ConfirmedWithoutCommit,
        Rule::DoubleCapture,
        Rule::CancelledMoneyNotReturned,
        Rule::CancelledStockNotReturned,
        Rule::OnHandMismatch,
        Rule::ReservedMismatch,
        Rule::NegativeStock,
        Rule::LedgerCaptureWithoutEvent,
        Rule::LedgerMismatch,
        Rule::LedgerRefundMismatch,
        Rule::CaptureNotInLedger,
        Rule::PaymentRecordMismatch,
        Rule::OutboxNotEmpty,
        Rule::ServiceUnreachable,
    ];

    /// The invariant, stated positively, as the report lists it.
    pub fn invariant(self) -> &'static str {
        match self {
            Rule::UnsettledPastDeadline => "every order past its deadline has settled",
            Rule::CheckoutDisagrees => "checkout's status matches the event log",
            Rule::ConfirmedNotCapturedOnce => "a confirmed order is captured exactly once",
            Rule::ConfirmedButRefunded => "a confirmed order is not refunded",
            Rule::ConfirmedWithoutCommit => "a confirmed order's stock is committed",
            Rule::DoubleCapture => "no order is captured under two payment ids",
            Rule::CancelledMoneyNotReturned => "a cancelled order nets to zero in money",
            Rule::CancelledStockNotReturned => "a cancelled order nets to zero in stock",
            Rule::OnHandMismatch => "on hand = replenished − committed + returned, per sku",
            Rule::ReservedMismatch => "reserved = open reservations, per sku",
            Rule::NegativeStock => "stock is never negative",
            Rule::LedgerCaptureWithoutEvent => "every gateway capture was announced",
            Rule::LedgerMismatch => "gateway captures match PaymentCaptured once, same amount",
            Rule::LedgerRefundMismatch => "gateway refunds match PaymentRefunded",
            Rule::CaptureNotInLedger => "every PaymentCaptured is in the gateway's ledger",
            Rule::PaymentRecordMismatch => "payment's records match the PAYMENTS stream",
            Rule::OutboxNotEmpty => "every outbox is empty",
            Rule::ServiceUnreachable => "every service answers",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// One broken invariant, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: Rule,
    /// What it is about: an order id, a sku, or a service.
    pub subject: String,
    /// The events and numbers involved.
    pub evidence: String,
}

/// What the audit looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditCounts {
    pub events_read: usize,
    pub events_by_stream: BTreeMap<String, usize>,
    /// Messages whose event id was seen before (at-least-once redeliveries); counted once.
    pub duplicate_events: usize,
    /// Messages the contract refuses (their `source` included); the services dead-letter them.
    pub undecodable_events: usize,
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    pub rejected: usize,
    /// No outcome yet, and still within deadline + grace.
    pub in_flight: usize,
    /// No outcome, and past deadline + grace.
    pub unsettled: usize,
    pub skus_checked: usize,
    pub ledger_entries: usize,
    pub payment_records: usize,
    /// Outbox backlog per service that answered STATS.
    pub outbox_backlog: BTreeMap<String, u64>,
    /// State that could not be compared because its service did not answer.
    pub not_checked: Vec<String>,
}

/// The audit's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    pub counts: AuditCounts,
    pub violations: Vec<Violation>,
}

impl AuditReport {
    /// No invariant is broken.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations of one rule.
    pub fn violations_of(&self, rule: Rule) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.rule == rule)
    }

    /// Whether some violation breaks `rule`.
    pub fn has(&self, rule: Rule) -> bool {
        self.violations_of(rule).next().is_some()
    }
}

/// Reads the streams and the services' state, checks every invariant, prints the report.
pub async fn audit(
    client: &Client,
    opts: AuditOptions,
    out: &mut impl Write,
) -> Result<AuditReport, OpsError> {
    let books = gather::gather(client).await?;
    let report = checks::check(&books, &opts);
    render::render(&report, out)?;
    Ok(report)
}
