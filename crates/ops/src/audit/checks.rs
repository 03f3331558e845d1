//! The audit's invariants, checked on a snapshot of the books. Pure: no I/O, so each rule
//! reads as what it checks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use shop_events::subjects::INVENTORY_STREAM;
use shop_events::{Event, StockLine};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::gather::{Books, LedgerStatus};
use super::{AuditCounts, AuditOptions, AuditReport, Rule, Violation};
use crate::reader::StoredEvent;
use crate::saga::{Facts, Outcome};
use crate::summary::{lines, short_id};

/// Runs every check.
pub fn check(books: &Books, opts: &AuditOptions) -> AuditReport {
    let mut audit = Audit {
        books,
        opts,
        counts: AuditCounts::default(),
        violations: Vec::new(),
    };
    let orders = audit.orders();
    let stock = audit.stock();
    for (order_id, order) in &orders {
        audit.order(order_id, order, &stock);
    }
    audit.skus(&stock);
    audit.ledger(&orders);
    audit.outboxes();
    audit.unchecked();
    audit
        .violations
        .sort_by(|a, b| (a.rule, &a.subject).cmp(&(b.rule, &b.subject)));
    AuditReport {
        counts: audit.counts,
        violations: audit.violations,
    }
}

struct Audit<'a> {
    books: &'a Books,
    opts: &'a AuditOptions,
    counts: AuditCounts,
    violations: Vec<Violation>,
}

/// One order's events, each event id once, oldest first.
struct OrderLog<'a> {
    events: Vec<&'a StoredEvent>,
    placed_at: Option<OffsetDateTime>,
    last_at: OffsetDateTime,
}

impl OrderLog<'_> {
    fn of<'e, T>(&'e self, pick: impl Fn(&'e Event) -> Option<T>) -> Vec<(&'e StoredEvent, T)> {
        self.events
            .iter()
            .filter_map(|e| Some((*e, pick(&e.envelope()?.event)?)))
            .collect()
    }
}

/// What an order holds at inventory, replayed from the INVENTORY stream.
#[derive(Debug, Clone, PartialEq)]
enum Hold {
    Held(Vec<StockLine>),
    Sold(Vec<StockLine>),
    Released,
}

/// Per sku sums replayed from the INVENTORY stream.
#[derive(Debug, Default, Clone)]
struct SkuTally {
    replenished: i64,
    committed: i64,
    returned: i64,
    /// The first event after which on hand was below zero.
    went_negative: Option<String>,
}

impl SkuTally {
    fn on_hand(&self) -> i64 {
        self.replenished - self.committed + self.returned
    }
}

struct StockReplay {
    skus: BTreeMap<String, SkuTally>,
    holds: HashMap<String, Hold>,
}

impl StockReplay {
    fn reserved(&self) -> BTreeMap<String, i64> {
        let mut reserved = BTreeMap::new();
        for hold in self.holds.values() {
            if let Hold::Held(lines) = hold {
                for line in lines {
                    *reserved.entry(line.sku.to_string()).or_default() += i64::from(line.quantity);
                }
            }
        }
        reserved
    }
}

/// `PaymentCaptured #1a2b3c4d (PAYMENTS 17)`.
fn cite(e: &StoredEvent) -> String {
    match e.envelope() {
        Some(env) => format!(
            "{} #{} ({} {})",
            env.kind().name(),
            short_id(&env.meta.id),
            e.stream,
            e.sequence
        ),
        None => format!("undecodable ({} {})", e.stream, e.sequence),
    }
}

fn ago(now: OffsetDateTime, then: OffsetDateTime) -> Duration {
    let ms = (now - then).whole_milliseconds();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn outcome_word(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        Some(Outcome::Confirmed) => "confirmed",
        Some(Outcome::Cancelled { .. }) => "cancelled",
        Some(Outcome::Rejected) => "rejected",
        None => "pending",
    }
}

impl<'a> Audit<'a> {
    fn flag(&mut self, rule: Rule, subject: &str, evidence: String) {
        self.violations.push(Violation {
            rule,
            subject: subject.to_owned(),
            evidence,
        });
    }

    /// Groups the events by order, counting what was read; duplicates count once.
    fn orders(&mut self) -> BTreeMap<String, OrderLog<'a>> {
        let mut all: Vec<&StoredEvent> = self.books.events.iter().collect();
        self.counts.events_read = all.len();
        for e in &all {
            *self
                .counts
                .events_by_stream
                .entry(e.stream.clone())
                .or_default() += 1;
        }
        // Stable: within a stream the stored order is kept for same-instant events.
        all.sort_by_key(|e| e.stored_at);
        let mut seen = HashSet::new();
        let mut orders: BTreeMap<String, OrderLog> = BTreeMap::new();
        for e in all {
            let Some(envelope) = e.envelope() else {
                self.counts.undecodable_events += 1;
                continue;
            };
            if !seen.insert(envelope.meta.id.as_str()) {
                self.counts.duplicate_events += 1;
                continue;
            }
            if envelope.kind().keyed_by_sku() {
                continue;
            }
            let order = orders
                .entry(envelope.event.key().to_owned())
                .or_insert_with(|| OrderLog {
                    events: Vec::new(),
                    placed_at: None,
                    last_at: e.stored_at,
                });
            if matches!(envelope.event, Event::OrderPlaced(_)) && order.placed_at.is_none() {
                order.placed_at = Some(e.stored_at);
            }
            order.last_at = e.stored_at;
            order.events.push(e);
        }
        self.counts.orders = orders.len();
        orders
    }

    /// Replays the INVENTORY stream in order: every stock change is an event there.
    fn stock(&mut self) -> StockReplay {
        let mut replay = StockReplay {
            skus: BTreeMap::new(),
            holds: HashMap::new(),
        };
        let mut seen = HashSet::new();
        let inventory = self
            .books
            .events
            .iter()
            .filter(|e| e.stream == INVENTORY_STREAM);
        for e in inventory {
            let Some(envelope) = e.envelope() else {
                continue;
            };
            if !seen.insert(envelope.meta.id.as_str()) {
                continue;
            }
            let order_id = envelope.event.key().to_owned();
            match &envelope.event {
                Event::StockReplenished(r) => {
                    let tally = replay.skus.entry(r.sku.to_string()).or_default();
                    tally.replenished += i64::from(r.quantity);
                }
                Event::StockReserved(r) => {
                    replay
                        .holds
                        .entry(order_id)
                        .or_insert_with(|| Hold::Held(r.lines.clone()));
                }
                Event::StockCommitted(c) => {
                    for line in &c.lines {
                        let tally = replay.skus.entry(line.sku.to_string()).or_default();
                        tally.committed += i64::from(line.quantity);
                        if tally.on_hand() < 0 && tally.went_negative.is_none() {
                            tally.went_negative = Some(cite(e));
                        }
                    }
                    replay.holds.insert(order_id, Hold::Sold(c.lines.clone()));
                }
                Event::StockReleased(_) => {
                    // A release after a sale puts the sold lines back on the shelf.
                    if let Some(Hold::Sold(sold)) = replay.holds.get(&order_id) {
                        for line in sold {
                            let tally = replay.skus.entry(line.sku.to_string()).or_default();
                            tally.returned += i64::from(line.quantity);
                        }
                    }
                    replay.holds.insert(order_id, Hold::Released);
                }
                _ => {}
            }
            for line in stock_lines(&envelope.event) {
                replay.skus.entry(line.sku.to_string()).or_default();
            }
        }
        replay
    }

    fn order(&mut self, order_id: &str, order: &OrderLog<'_>, stock: &StockReplay) {
        let books = self.books;
        let now = books.now;
        let facts = Facts::from_events(order.events.iter().filter_map(|e| e.envelope()));
        let outcome = if facts.rejected {
            Some(Outcome::Rejected)
        } else if let Some(reason) = facts.cancelled {
            Some(Outcome::Cancelled { reason })
        } else if facts.confirmed {
            Some(Outcome::Confirmed)
        } else {
            None
        };
        // Quiet: nothing happened for `grace`, so every reaction should have landed.
        let quiet = ago(now, order.last_at) >= self.opts.grace;
        let checkout = books
            .checkout
            .as_ref()
            .map(|views| views.get(order_id).cloned().flatten());
        let deadline = checkout
            .as_ref()
            .and_then(|v| v.as_ref()?.deadline_at.as_deref())
            .and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok())
            .or_else(|| order.placed_at.map(|p| p + self.opts.order_deadline));
        let past_deadline = deadline.is_some_and(|d| now > d + self.opts.grace);

        match outcome {
            Some(Outcome::Confirmed) => self.counts.confirmed += 1,
            Some(Outcome::Cancelled { .. }) => self.counts.cancelled += 1,
            Some(Outcome::Rejected) => self.counts.rejected += 1,
            None if past_deadline => self.counts.unsettled += 1,
            None => self.counts.in_flight += 1,
        }

        if past_deadline {
            let checkout_status = checkout
                .as_ref()
                .map(|v| v.as_ref().map_or("unknown", |v| v.status.as_str()));
            if outcome.is_none()
                || checkout_status.is_some_and(|s| s == "pending" || s == "unknown")
            {
                let last = order.events.last().map(|e| cite(e)).unwrap_or_default();
                self.flag(
                    Rule::UnsettledPastDeadline,
                    order_id,
                    format!(
                        "log: {}; checkout: {}; deadline passed {} ago; last event {last}",
                        outcome_word(outcome),
                        checkout_status.unwrap_or("not asked (checkout down)"),
                        crate::term::duration_ms(
                            deadline.map_or(0, |d| ago(now, d).as_millis() as u64)
                        ),
                    ),
                );
            }
        }
        if let (Some(view), Some(outcome)) = (&checkout, outcome) {
            let status = view.as_ref().map_or("unknown", |v| v.status.as_str());
            if quiet && status != outcome_word(Some(outcome)) {
                self.flag(
                    Rule::CheckoutDisagrees,
                    order_id,
                    format!("the log says {outcome}, checkout says {status}"),
                );
            }
        }

        let captures = order.of(|e| match e {
            Event::PaymentCaptured(c) => Some((c.payment_id.to_string(), c.amount.minor_units())),
            _ => None,
        });
        let refunds = order.of(|e| match e {
            Event::PaymentRefunded(r) => Some(r.amount.minor_units()),
            _ => None,
        });
        let capture_list = || {
            captures
                .iter()
                .map(|(e, (pid, amount))| format!("{} {pid} {amount}", cite(e)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let payment_ids: BTreeSet<&str> = captures.iter().map(|(_, (p, _))| p.as_str()).collect();
        if payment_ids.len() > 1 {
            self.flag(
                Rule::DoubleCapture,
                order_id,
                format!("{} payment ids: {}", payment_ids.len(), capture_list()),
            );
        }
        let captured: i64 = captures.iter().map(|(_, (_, a))| a).sum();
        let refunded: i64 = refunds.iter().map(|(_, a)| a).sum();

        match outcome {
            Some(Outcome::Confirmed) => {
                if captures.len() != 1 {
                    let found = if captures.is_empty() {
                        "none".to_owned()
                    } else {
                        capture_list()
                    };
                    self.flag(
                        Rule::ConfirmedNotCapturedOnce,
                        order_id,
                        format!("{} PaymentCaptured: {found}", captures.len()),
                    );
                }
                if !refunds.is_empty() {
                    let list: Vec<String> = refunds.iter().map(|(e, _)| cite(e)).collect();
                    self.flag(
                        Rule::ConfirmedButRefunded,
                        order_id,
                        format!("refunded {refunded}: {}", list.join(", ")),
                    );
                }
                if quiet && !facts.committed {
                    self.flag(
                        Rule::ConfirmedWithoutCommit,
                        order_id,
                        "OrderConfirmed but no StockCommitted".to_owned(),
                    );
                }
            }
            Some(Outcome::Cancelled { .. }) if quiet => {
                if captured != refunded {
                    let list: Vec<String> = refunds
                        .iter()
                        .map(|(e, a)| format!("{} {a}", cite(e)))
                        .collect();
                    self.flag(
                        Rule::CancelledMoneyNotReturned,
                        order_id,
                        format!(
                            "captured {captured} ({}) − refunded {refunded} ({}) = {}",
                            capture_list(),
                            list.join(", "),
                            captured - refunded
                        ),
                    );
                }
                match stock.holds.get(order_id) {
                    Some(Hold::Held(held)) => self.flag(
                        Rule::CancelledStockNotReturned,
                        order_id,
                        format!("still reserved: {} (no StockReleased)", lines(held)),
                    ),
                    Some(Hold::Sold(sold)) => self.flag(
                        Rule::CancelledStockNotReturned,
                        order_id,
                        format!(
                            "sold and never returned: {} ({})",
                            lines(sold),
                            cited_kinds(order, "StockCommitted")
                        ),
                    ),
                    _ => {}
                }
            }
            _ => {}
        }

        if let Some(Some(record)) = books
            .payments
            .as_ref()
            .map(|p| p.get(order_id).cloned().flatten())
        {
            self.counts.payment_records += 1;
            if quiet && (record.captured != captured || record.refunded != refunded) {
                self.flag(
                    Rule::PaymentRecordMismatch,
                    order_id,
                    format!(
                        "payment says {} (captured {}, refunded {}, payment {}); the stream says captured {captured}, refunded {refunded}",
                        record.status.as_str(),
                        record.captured,
                        record.refunded,
                        record.payment_id.as_deref().unwrap_or("none")
                    ),
                );
            }
        }
    }

    fn skus(&mut self, stock: &StockReplay) {
        let reserved = stock.reserved();
        let state: Option<BTreeMap<&str, (i64, i64)>> = self.books.stock.as_ref().map(|levels| {
            levels
                .iter()
                .map(|l| (l.sku.as_str(), (l.on_hand, l.reserved)))
                .collect()
        });
        let mut skus: BTreeSet<String> = stock.skus.keys().cloned().collect();
        if let Some(state) = &state {
            skus.extend(state.keys().map(|s| (*s).to_owned()));
        }
        self.counts.skus_checked = skus.len();
        for sku in &skus {
            let tally = stock.skus.get(sku).cloned().unwrap_or_default();
            let expected_reserved = reserved.get(sku).copied().unwrap_or(0);
            if let Some(event) = &tally.went_negative {
                self.flag(
                    Rule::NegativeStock,
                    sku,
                    format!("on hand per the log went below zero at {event}"),
                );
            }
            let Some(state) = &state else { continue };
            let Some(&(on_hand, held)) = state.get(sku.as_str()) else {
                self.flag(
                    Rule::OnHandMismatch,
                    sku,
                    format!(
                        "inventory does not know the sku; the log says {} on hand, {expected_reserved} reserved",
                        tally.on_hand()
                    ),
                );
                continue;
            };
            if on_hand < 0 || held < 0 {
                self.flag(
                    Rule::NegativeStock,
                    sku,
                    format!("inventory holds on hand {on_hand}, reserved {held}"),
                );
            }
            if on_hand != tally.on_hand() {
                self.flag(
                    Rule::OnHandMismatch,
                    sku,
                    format!(
                        "inventory says {on_hand} on hand; the log says {} = replenished {} − committed {} + returned {}",
                        tally.on_hand(),
                        tally.replenished,
                        tally.committed,
                        tally.returned
                    ),
                );
            }
            if held != expected_reserved {
                self.flag(
                    Rule::ReservedMismatch,
                    sku,
                    format!(
                        "inventory says {held} reserved; open reservations in the log add up to {expected_reserved}"
                    ),
                );
            }
        }
    }

    fn ledger(&mut self, orders: &BTreeMap<String, OrderLog<'_>>) {
        let Some(ledger) = &self.books.ledger else {
            return;
        };
        self.counts.ledger_entries = ledger.len();
        let now = self.books.now;
        let grace = self.opts.grace;
        let captures_of = |order_id: &str| -> Vec<(&StoredEvent, String, i64)> {
            orders.get(order_id).map_or_else(Vec::new, |o| {
                o.of(|e| match e {
                    Event::PaymentCaptured(c) => {
                        Some((c.payment_id.to_string(), c.amount.minor_units()))
                    }
                    _ => None,
                })
                .into_iter()
                .map(|(e, (p, a))| (e, p, a))
                .collect()
            })
        };
        let mut in_ledger: HashSet<(&str, &str)> = HashSet::new();
        for entry in ledger {
            let entry_order = entry.order_id.as_str();
            let (ledger_amount, ledger_refunded) =
                (entry.amount.minor_units(), entry.refunded.minor_units());
            let order = orders.get(entry_order);
            // The capture's event may still sit in payment's outbox right after the charge.
            let settling = order.is_none_or(|o| ago(now, o.last_at) < grace);
            let LedgerStatus::Captured { payment_id } = &entry.status else {
                continue;
            };
            in_ledger.insert((entry_order, payment_id.as_str()));
            let matching: Vec<_> = captures_of(entry_order)
                .into_iter()
                .filter(|(_, p, _)| p == payment_id.as_str())
                .collect();
            match matching.as_slice() {
                [] if settling => {}
                [] => self.flag(
                    Rule::LedgerCaptureWithoutEvent,
                    entry_order,
                    format!(
                        "the gateway captured {} as {payment_id}; no PaymentCaptured carries that id",
                        entry.amount
                    ),
                ),
                [(e, _, amount)] if *amount != ledger_amount => self.flag(
                    Rule::LedgerMismatch,
                    entry_order,
                    format!(
                        "the gateway captured {} as {payment_id}; {} says {amount}",
                        entry.amount,
                        cite(e)
                    ),
                ),
                [_] => {}
                many => {
                    let list: Vec<String> = many.iter().map(|(e, _, _)| cite(e)).collect();
                    self.flag(
                        Rule::LedgerMismatch,
                        entry_order,
                        format!(
                            "captured once at the gateway as {payment_id}, announced {} times: {}",
                            many.len(),
                            list.join(", ")
                        ),
                    );
                }
            }
            let refunded: i64 = orders.get(entry_order).map_or(0, |o| {
                o.of(|e| match e {
                    Event::PaymentRefunded(r) => Some(r.amount.minor_units()),
                    _ => None,
                })
                .iter()
                .map(|(_, a)| a)
                .sum()
            });
            if !settling && refunded != ledger_refunded {
                self.flag(
                    Rule::LedgerRefundMismatch,
                    entry_order,
                    format!(
                        "the gateway refunded {}; PaymentRefunded events add up to {refunded}",
                        entry.refunded
                    ),
                );
            }
        }
        for (order_id, order) in orders {
            for (e, (payment_id, amount)) in order.of(|e| match e {
                Event::PaymentCaptured(c) => {
                    Some((c.payment_id.to_string(), c.amount.minor_units()))
                }
                _ => None,
            }) {
                if !in_ledger.contains(&(order_id.as_str(), payment_id.as_str())) {
                    self.flag(
                        Rule::CaptureNotInLedger,
                        order_id,
                        format!(
                            "{} announces {amount} as {payment_id}; the gateway's ledger has no such capture",
                            cite(e)
                        ),
                    );
                }
            }
        }
    }

    fn unchecked(&mut self) {
        let books = self.books;
        let missing = [
            (books.checkout.is_none(), "checkout's order statuses"),
            (books.stock.is_none(), "inventory's stock levels"),
            (books.payments.is_none(), "payment's records"),
            (books.ledger.is_none(), "the gateway's ledger"),
        ];
        self.counts.not_checked = missing
            .iter()
            .filter(|(missing, _)| *missing)
            .map(|(_, what)| (*what).to_owned())
            .collect();
    }

    fn outboxes(&mut self) {
        for (service, backlog) in &self.books.outboxes {
            match backlog {
                None => self.flag(
                    Rule::ServiceUnreachable,
                    service,
                    format!("{service} did not answer $SRV.STATS; its state was not checked"),
                ),
                Some(n) => {
                    self.counts.outbox_backlog.insert(service.clone(), *n);
                    if *n > 0 {
                        self.flag(
                            Rule::OutboxNotEmpty,
                            service,
                            format!("{n} event(s) waiting in {service}'s outbox"),
                        );
                    }
                }
            }
        }
    }
}

/// The stock lines an inventory event carries.
fn stock_lines(event: &Event) -> &[StockLine] {
    match event {
        Event::StockReserved(e) => &e.lines,
        Event::StockCommitted(e) => &e.lines,
        Event::StockReleased(e) => &e.lines,
        _ => &[],
    }
}

/// The citations of an order's events of one kind, comma separated.
fn cited_kinds(order: &OrderLog<'_>, kind: &str) -> String {
    order
        .events
        .iter()
        .filter(|e| e.envelope().is_some_and(|env| env.kind().name() == kind))
        .map(|e| cite(e))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
