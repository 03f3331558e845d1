//! The judge judged: for every rule, books forged to break exactly that rule, and balanced
//! books that break none. The books are plain values: no NATS, no sled, no network.
//!
//! A [`Shop`] records a saga step by step, and every step also moves the services' views
//! (checkout, payment, inventory, the gateway's ledger) the way a healthy shop would. A
//! forgery then leaves a step out, adds one, or bends one view, so each test reads as the
//! one thing that went wrong, and asserts on the typed [`Rule`], never on evidence text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use shop_events::api::checkout::OrderStatus;
use shop_events::api::payment::PaymentStatus;
use shop_events::subjects::ORDERS_STREAM;
use shop_events::{
    CancelReason, Currency, Envelope, Event, Money, OrderCancelled, OrderConfirmed, OrderId,
    OrderLineInput, OrderPlaced, OrderRejected, PaymentCaptured, PaymentDeclined, PaymentId,
    PaymentRefunded, Shortage, Sku, StockCommitted, StockLine, StockReleased, StockReplenished,
    StockReservationFailed, StockReserved,
};
use time::macros::datetime;
use time::OffsetDateTime;

use super::check;
use crate::audit::gather::{
    Books, CheckoutView, LedgerEntry, LedgerStatus, PaymentView, StockView,
};
use crate::audit::{AuditCounts, AuditOptions, AuditReport, Rule};
use crate::reader::{StoredEvent, EVENT_STREAMS};

/// Every order buys one unit of this sku at this price, so the sums stay easy to follow.
const SKU: &str = "sku-a";
const PRICE: i64 = 1000;

/// The moment the audit runs.
const NOW: OffsetDateTime = datetime!(2024-05-01 12:00 UTC);

/// Past the deadline (30 s) plus grace (10 s), and quiet for longer than grace: by then
/// every reaction must have landed, so every rule applies.
const LONG_AGO: Duration = Duration::from_secs(60);

/// Within grace: reactions may still be on their way, so time-bound rules hold back.
const A_MOMENT_AGO: Duration = Duration::from_secs(1);

/// Pinned rather than `AuditOptions::default()` so that the times above keep their meaning.
fn options() -> AuditOptions {
    AuditOptions {
        order_deadline: Duration::from_secs(30),
        grace: Duration::from_secs(10),
    }
}

fn order_id(order: &str) -> OrderId {
    OrderId::parse(order).expect("valid order id")
}

fn sku(sku: &str) -> Sku {
    Sku::parse(sku).expect("valid sku")
}

fn payment_id(payment: &str) -> PaymentId {
    PaymentId::parse(payment).expect("valid payment id")
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid currency")
}

/// The payment id the gateway gives an order's one capture.
fn payment_of(order: &str) -> String {
    format!("pay_{order}")
}

fn one_unit() -> Vec<StockLine> {
    vec![StockLine {
        sku: sku(SKU),
        quantity: 1,
    }]
}

/// A shop's books under construction: the events, and what each service would answer.
struct Shop {
    /// When the next event is stored; each event lands one millisecond after the previous.
    clock: OffsetDateTime,
    events: Vec<StoredEvent>,
    last_sequence: BTreeMap<String, u64>,
    checkout: HashMap<String, Option<CheckoutView>>,
    payments: HashMap<String, Option<PaymentView>>,
    /// On hand and reserved per sku, as inventory would answer.
    stock: BTreeMap<String, (i64, i64)>,
    /// Orders whose unit left the shelf (committed and not yet released).
    sold: BTreeSet<String>,
    ledger: Vec<LedgerEntry>,
    outboxes: BTreeMap<String, Option<u64>>,
    /// Services that did not answer: their part of the books is `None`.
    down: BTreeSet<String>,
}

impl Shop {
    /// Nothing happened yet; every service answers with an empty outbox.
    fn new() -> Shop {
        Shop {
            clock: NOW - LONG_AGO,
            events: Vec::new(),
            last_sequence: BTreeMap::new(),
            checkout: HashMap::new(),
            payments: HashMap::new(),
            stock: BTreeMap::new(),
            sold: BTreeSet::new(),
            ledger: Vec::new(),
            outboxes: ["checkout", "inventory", "payment"]
                .into_iter()
                .map(|s| (s.to_owned(), Some(0)))
                .collect(),
            down: BTreeSet::new(),
        }
    }

    /// The events from here on were stored a moment ago, within grace.
    fn a_moment_ago(mut self) -> Shop {
        self.clock = NOW - A_MOMENT_AGO;
        self
    }

    /// Stores a message in `stream` at the clock; the one place a `StoredEvent` is built.
    fn store(&mut self, stream: &str, subject: String, payload: Bytes) {
        let sequence = self.last_sequence.entry(stream.to_owned()).or_default();
        *sequence += 1;
        self.events.push(StoredEvent {
            stream: stream.to_owned(),
            sequence: *sequence,
            decoded: crate::reader::accepted(&subject, &payload),
            subject,
            stored_at: self.clock,
            headers: HeaderMap::new(),
            payload,
        });
        self.clock += Duration::from_millis(1);
    }

    /// Stores an event and touches no view: on its own, a forged event (from the source that
    /// may publish it, as a bug or a leaked key in that service would send it).
    fn record(mut self, event: impl Into<Event>) -> Shop {
        let event = event.into();
        let source = shop_events::rights_names::publishers(event.kind())[0];
        let envelope = Envelope::new(source, event);
        let stream = envelope.kind().stream();
        self.store(stream, envelope.subject(), envelope.to_json().into());
        self
    }

    /// The last message once more, same event id: an at-least-once redelivery.
    fn redelivered(mut self) -> Shop {
        let last = self.events.last().cloned().expect("an event to redeliver");
        self.store(&last.stream, last.subject, last.payload);
        self
    }

    /// A message the contract refuses, as a hostile producer could store one.
    fn undecodable(mut self) -> Shop {
        let garbage = Bytes::from_static(b"{not json");
        self.store(
            ORDERS_STREAM,
            "events.orders.placed.o-x".to_owned(),
            garbage,
        );
        self
    }

    fn payment_record(&mut self, order: &str) -> &mut PaymentView {
        self.payments
            .get_mut(order)
            .and_then(Option::as_mut)
            .expect("payment knows the order: place it first")
    }

    fn ledger_capture(&mut self, order: &str, payment: &str) -> Option<&mut LedgerEntry> {
        self.ledger.iter_mut().find(|e| {
            e.order_id.as_str() == order
                && matches!(&e.status, LedgerStatus::Captured { payment_id } if payment_id.as_str() == payment)
        })
    }

    fn stock_of(&mut self, sku: &str) -> &mut (i64, i64) {
        self.stock.entry(sku.to_owned()).or_default()
    }

    // The saga's steps, each with what the services record when it happens.

    fn stocked(mut self, sku_name: &str, quantity: u32) -> Shop {
        self.stock_of(sku_name).0 += i64::from(quantity);
        self.record(StockReplenished {
            sku: sku(sku_name),
            quantity,
        })
    }

    fn placed(mut self, order: &str) -> Shop {
        self.payments.insert(
            order.to_owned(),
            Some(PaymentView {
                order_id: order.to_owned(),
                status: PaymentStatus::AwaitingStock,
                captured: 0,
                refunded: 0,
                currency: Some("EUR".to_owned()),
                payment_id: None,
                decline_reason: None,
            }),
        );
        self.checkout_says(order, OrderStatus::Pending)
            .record(OrderPlaced {
                order_id: order_id(order),
                customer_id: "c-1".to_owned(),
                currency: "EUR".to_owned(),
                lines: vec![OrderLineInput {
                    sku: SKU.to_owned(),
                    quantity: 1,
                    unit_price: PRICE,
                }],
                total: PRICE,
                payment_token: "tok_visa".to_owned(),
            })
    }

    fn rejected(self, order: &str) -> Shop {
        self.checkout_says(order, OrderStatus::Rejected)
            .record(OrderRejected {
                order_id: order_id(order),
                problems: Vec::new(),
            })
    }

    fn reserved(mut self, order: &str) -> Shop {
        self.stock_of(SKU).1 += 1;
        self.record(StockReserved {
            order_id: order_id(order),
            lines: one_unit(),
        })
    }

    fn reservation_failed(self, order: &str) -> Shop {
        self.record(StockReservationFailed {
            order_id: order_id(order),
            shortages: vec![Shortage {
                sku: sku(SKU),
                requested: 1,
                available: 0,
            }],
        })
    }

    fn captured(self, order: &str) -> Shop {
        self.captured_as(order, &payment_of(order))
    }

    /// The gateway charges under `payment` and payment announces it.
    fn captured_as(mut self, order: &str, payment: &str) -> Shop {
        self.ledger.push(ledger_capture(order, payment));
        let record = self.payment_record(order);
        record.status = PaymentStatus::Captured;
        record.captured += PRICE;
        record.payment_id = Some(payment.to_owned());
        self.announced_capture(order, payment)
    }

    /// Payment announces a capture under a fresh event id; no view moves, so on its own
    /// it is a capture the gateway never made.
    fn announced_capture(self, order: &str, payment: &str) -> Shop {
        self.record(PaymentCaptured {
            order_id: order_id(order),
            payment_id: payment_id(payment),
            amount: Money(PRICE),
            currency: eur(),
        })
    }

    fn declined(mut self, order: &str) -> Shop {
        self.ledger.push(LedgerEntry {
            status: LedgerStatus::Declined {
                reason: "card_declined".to_owned(),
            },
            ..ledger_capture(order, &payment_of(order))
        });
        self.payment_record(order).status = PaymentStatus::Declined;
        self.record(PaymentDeclined {
            order_id: order_id(order),
            reason: "card_declined".to_owned(),
            amount: Money(PRICE),
        })
    }

    fn confirmed(self, order: &str) -> Shop {
        self.checkout_says(order, OrderStatus::Confirmed)
            .record(OrderConfirmed {
                order_id: order_id(order),
                total: Money(PRICE),
                currency: eur(),
            })
    }

    fn committed(mut self, order: &str) -> Shop {
        let stock = self.stock_of(SKU);
        stock.0 -= 1;
        stock.1 -= 1;
        self.sold.insert(order.to_owned());
        self.record(StockCommitted {
            order_id: order_id(order),
            lines: one_unit(),
        })
    }

    fn cancelled(self, order: &str, reason: CancelReason) -> Shop {
        self.checkout_says(order, OrderStatus::Cancelled)
            .record(OrderCancelled {
                order_id: order_id(order),
                reason,
                detail: String::new(),
            })
    }

    /// A reservation is let go; a sale goes back on the shelf.
    fn released(mut self, order: &str) -> Shop {
        if self.sold.remove(order) {
            self.stock_of(SKU).0 += 1;
        } else {
            self.stock_of(SKU).1 -= 1;
        }
        self.record(StockReleased {
            order_id: order_id(order),
            lines: one_unit(),
        })
    }

    /// Gives the order's capture back (or refunds a capture that never was, when there is none).
    fn refunded(mut self, order: &str) -> Shop {
        let payment = self
            .payment_record(order)
            .payment_id
            .clone()
            .unwrap_or_else(|| payment_of(order));
        if let Some(entry) = self.ledger_capture(order, &payment) {
            entry.refunded = Money(entry.refunded.minor_units() + PRICE);
            entry.refund_calls += 1;
        }
        let record = self.payment_record(order);
        record.status = PaymentStatus::Refunded;
        record.refunded += PRICE;
        self.record(PaymentRefunded {
            order_id: order_id(order),
            payment_id: payment_id(&payment),
            amount: Money(PRICE),
            currency: eur(),
        })
    }

    // Whole sagas, as a healthy shop runs them.

    fn paid_order(self, order: &str) -> Shop {
        self.placed(order)
            .reserved(order)
            .captured(order)
            .confirmed(order)
            .committed(order)
    }

    fn paid_then_cancelled(self, order: &str) -> Shop {
        self.placed(order)
            .reserved(order)
            .captured(order)
            .cancelled(order, CancelReason::CustomerRequest)
            .released(order)
            .refunded(order)
    }

    /// Sold, then the customer changed their mind: the unit and the money come back.
    fn returned_order(self, order: &str) -> Shop {
        self.paid_order(order)
            .cancelled(order, CancelReason::CustomerRequest)
            .released(order)
            .refunded(order)
    }

    fn declined_order(self, order: &str) -> Shop {
        self.placed(order)
            .reserved(order)
            .declined(order)
            .cancelled(order, CancelReason::PaymentDeclined)
            .released(order)
    }

    fn out_of_stock_order(self, order: &str) -> Shop {
        self.placed(order)
            .reservation_failed(order)
            .cancelled(order, CancelReason::OutOfStock)
    }

    fn rejected_order(self, order: &str) -> Shop {
        self.placed(order).rejected(order)
    }

    // What a service answers, bent away from what the events say.

    fn checkout_says(mut self, order: &str, status: OrderStatus) -> Shop {
        self.checkout.insert(
            order.to_owned(),
            Some(CheckoutView {
                order_id: order.to_owned(),
                status,
                reason: None,
                detail: None,
                problems: Vec::new(),
                customer_id: "c-1".to_owned(),
                lines: vec![OrderLineInput {
                    sku: SKU.to_owned(),
                    quantity: 1,
                    unit_price: PRICE,
                }],
                total: PRICE,
                currency: "EUR".to_owned(),
                payment_id: None,
                placed_at: None,
                deadline_at: None,
                settled_at: None,
            }),
        );
        self
    }

    fn checkout_forgets(mut self, order: &str) -> Shop {
        self.checkout.insert(order.to_owned(), None);
        self
    }

    fn checkout_deadline(mut self, order: &str, deadline: OffsetDateTime) -> Shop {
        let view = self
            .checkout
            .get_mut(order)
            .and_then(Option::as_mut)
            .expect("checkout knows the order: place it first");
        view.deadline_at = Some(shop_events::envelope::format_time(deadline));
        self
    }

    fn payment_says(mut self, order: &str, captured: i64, refunded: i64) -> Shop {
        let record = self.payment_record(order);
        record.captured = captured;
        record.refunded = refunded;
        self
    }

    fn inventory_says(mut self, sku: &str, on_hand: i64, reserved: i64) -> Shop {
        self.stock.insert(sku.to_owned(), (on_hand, reserved));
        self
    }

    fn inventory_forgets(mut self, sku: &str) -> Shop {
        self.stock.remove(sku);
        self
    }

    /// The gateway charged, and no event says so.
    fn gateway_charged(mut self, order: &str, payment: &str) -> Shop {
        self.ledger.push(ledger_capture(order, payment));
        self
    }

    fn gateway_forgets(mut self, order: &str) -> Shop {
        self.ledger.retain(|e| e.order_id.as_str() != order);
        self
    }

    /// Rewrites the amounts of the order's one capture at the gateway.
    fn gateway_says(mut self, order: &str, amount: i64, refunded: i64) -> Shop {
        let entry = self
            .ledger_capture(order, &payment_of(order))
            .expect("the gateway captured the order");
        entry.amount = Money(amount);
        entry.refunded = Money(refunded);
        self
    }

    fn outbox_holds(mut self, service: &str, backlog: u64) -> Shop {
        self.outboxes.insert(service.to_owned(), Some(backlog));
        self
    }

    fn down(mut self, service: &str) -> Shop {
        self.outboxes.insert(service.to_owned(), None);
        self.down.insert(service.to_owned());
        self
    }

    /// The books as `gather` hands them over.
    fn books(&self) -> Books {
        let mut events = self.events.clone();
        // gather reads stream after stream; putting events back in time order is the judge's job.
        events.sort_by_key(|e| EVENT_STREAMS.iter().position(|s| *s == e.stream));
        let up = |service: &str| !self.down.contains(service);
        Books {
            now: NOW,
            events,
            checkout: up("checkout").then(|| self.checkout.clone()),
            payments: up("payment").then(|| self.payments.clone()),
            stock: up("inventory").then(|| {
                self.stock
                    .iter()
                    .map(|(sku, &(on_hand, reserved))| StockView {
                        sku: sku.clone(),
                        on_hand,
                        reserved,
                        available: on_hand - reserved,
                    })
                    .collect()
            }),
            ledger: up("payment").then(|| self.ledger.clone()),
            outboxes: self.outboxes.clone(),
        }
    }
}

/// What the judge made of a shop's books.
struct Verdict(AuditReport);

fn judge(shop: Shop) -> Verdict {
    Verdict(check(&shop.books(), &options()))
}

impl Verdict {
    fn rules(&self) -> BTreeSet<Rule> {
        self.0.violations.iter().map(|v| v.rule).collect()
    }

    /// Exactly these rules are broken, no more, no fewer.
    #[track_caller]
    fn breaks_only(&self, rules: &[Rule]) -> &Verdict {
        let expected: BTreeSet<Rule> = rules.iter().copied().collect();
        assert_eq!(self.rules(), expected, "{:#?}", self.0.violations);
        self
    }

    /// Every violation is about `subject` (an order id, a sku or a service).
    #[track_caller]
    fn about(&self, subject: &str) -> &Verdict {
        for v in &self.0.violations {
            assert_eq!(v.subject, subject, "{:#?}", self.0.violations);
        }
        self
    }

    #[track_caller]
    fn passes(&self) -> &Verdict {
        assert!(self.0.is_clean(), "{:#?}", self.0.violations);
        self
    }

    fn counts(&self) -> &AuditCounts {
        &self.0.counts
    }
}

// The forgeries, one per rule; each test below names what went wrong, and
// `every_rule_has_a_forgery_that_breaks_it` keeps the list complete.

fn no_outcome_past_the_deadline() -> Shop {
    Shop::new().stocked(SKU, 5).placed("o-1").reserved("o-1")
}

fn checkout_contradicting_the_log() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .checkout_says("o-1", OrderStatus::Cancelled)
}

fn confirmed_without_a_capture() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .confirmed("o-1")
        .committed("o-1")
}

fn confirmed_then_refunded() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .refunded("o-1")
}

fn confirmed_without_a_commit() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .captured("o-1")
        .confirmed("o-1")
}

fn captured_under_two_payment_ids() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .captured("o-1")
        .captured_as("o-1", "pay_again")
        .confirmed("o-1")
        .committed("o-1")
}

fn cancelled_keeping_the_money() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .captured("o-1")
        .cancelled("o-1", CancelReason::CustomerRequest)
        .released("o-1")
}

fn cancelled_keeping_the_reservation() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .captured("o-1")
        .cancelled("o-1", CancelReason::CustomerRequest)
        .refunded("o-1")
}

fn on_hand_disagreeing_with_the_log() -> Shop {
    // Inventory forgot the sale: it still shows the unit on the shelf.
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .inventory_says(SKU, 5, 0)
}

fn reserved_without_a_reservation() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .inventory_says(SKU, 4, 1)
}

fn sold_below_zero() -> Shop {
    // The second sale took the shelf to −1; the later delivery hides it in today's state.
    Shop::new()
        .stocked(SKU, 1)
        .paid_order("o-1")
        .paid_order("o-2")
        .stocked(SKU, 1)
}

fn charged_without_an_event() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .declined_order("o-1")
        .gateway_charged("o-1", "pay_ghost")
}

fn captured_for_another_amount() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .gateway_says("o-1", PRICE + 200, 0)
}

fn refund_the_gateway_never_made() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_then_cancelled("o-1")
        .gateway_says("o-1", PRICE, 0)
}

fn capture_the_gateway_never_made() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .gateway_forgets("o-1")
}

fn payment_record_disagreeing_with_the_stream() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .payment_says("o-1", 0, 0)
}

fn events_left_in_an_outbox() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .outbox_holds("payment", 3)
}

fn payment_not_answering() -> Shop {
    Shop::new()
        .stocked(SKU, 5)
        .paid_order("o-1")
        .down("payment")
}

/// The forgery of each rule; exhaustive, so a new rule does not compile without one.
fn forgery(rule: Rule) -> Shop {
    match rule {
        Rule::UnsettledPastDeadline => no_outcome_past_the_deadline(),
        Rule::CheckoutDisagrees => checkout_contradicting_the_log(),
        Rule::ConfirmedNotCapturedOnce => confirmed_without_a_capture(),
        Rule::ConfirmedButRefunded => confirmed_then_refunded(),
        Rule::ConfirmedWithoutCommit => confirmed_without_a_commit(),
        Rule::DoubleCapture => captured_under_two_payment_ids(),
        Rule::CancelledMoneyNotReturned => cancelled_keeping_the_money(),
        Rule::CancelledStockNotReturned => cancelled_keeping_the_reservation(),
        Rule::OnHandMismatch => on_hand_disagreeing_with_the_log(),
        Rule::ReservedMismatch => reserved_without_a_reservation(),
        Rule::NegativeStock => sold_below_zero(),
        Rule::LedgerCaptureWithoutEvent => charged_without_an_event(),
        Rule::LedgerMismatch => captured_for_another_amount(),
        Rule::LedgerRefundMismatch => refund_the_gateway_never_made(),
        Rule::CaptureNotInLedger => capture_the_gateway_never_made(),
        Rule::PaymentRecordMismatch => payment_record_disagreeing_with_the_stream(),
        Rule::OutboxNotEmpty => events_left_in_an_outbox(),
        Rule::ServiceUnreachable => payment_not_answering(),
    }
}

// Clean books.

#[test]
fn balanced_books_pass() {
    let verdict = judge(
        Shop::new()
            .stocked(SKU, 10)
            .paid_order("o-paid")
            .paid_then_cancelled("o-regret")
            .returned_order("o-returned")
            .declined_order("o-declined")
            .out_of_stock_order("o-short")
            .rejected_order("o-bad")
            .a_moment_ago()
            .placed("o-young")
            .reserved("o-young"),
    );
    verdict.passes();
    let c = verdict.counts();
    assert_eq!(
        (c.orders, c.confirmed, c.cancelled, c.rejected, c.in_flight),
        (7, 1, 4, 1, 1)
    );
    assert_eq!((c.skus_checked, c.ledger_entries), (1, 4));
    assert!(c.not_checked.is_empty());
}

#[test]
fn an_empty_shop_passes() {
    judge(Shop::new()).passes();
}

#[test]
fn redelivered_events_count_once() {
    let verdict = judge(
        Shop::new()
            .stocked(SKU, 5)
            .placed("o-1")
            .reserved("o-1")
            .captured("o-1")
            .redelivered()
            .confirmed("o-1")
            .committed("o-1")
            .redelivered(),
    );
    verdict.passes();
    assert_eq!(verdict.counts().duplicate_events, 2);
}

#[test]
fn an_undecodable_message_is_counted_not_judged() {
    let verdict = judge(Shop::new().stocked(SKU, 5).paid_order("o-1").undecodable());
    verdict.passes();
    assert_eq!(verdict.counts().undecodable_events, 1);
}

#[test]
fn a_capture_from_a_source_that_does_not_publish_captures_is_counted_as_refused_not_judged() {
    // The same second capture that `captured_under_two_payment_ids` judges a double
    // capture, but claimed by the storefront: the services dead-letter it, so the books
    // must not count it either.
    let mut shop = Shop::new()
        .stocked(SKU, 5)
        .placed("o-1")
        .reserved("o-1")
        .captured("o-1")
        .confirmed("o-1")
        .committed("o-1");
    let forged = Envelope::new(
        "storefront",
        PaymentCaptured {
            order_id: order_id("o-1"),
            payment_id: payment_id("pay_again"),
            amount: Money(PRICE),
            currency: eur(),
        }
        .into(),
    );
    shop.store(
        forged.kind().stream(),
        forged.subject(),
        forged.to_json().into(),
    );
    let verdict = judge(shop);
    verdict.passes();
    assert_eq!(verdict.counts().undecodable_events, 1);
}

#[test]
fn every_rule_has_a_forgery_that_breaks_it() {
    for rule in Rule::ALL {
        let verdict = judge(forgery(rule));
        assert!(verdict.0.has(rule), "{rule:?}: {:#?}", verdict.0.violations);
    }
}

// UnsettledPastDeadline

#[test]
fn an_order_with_no_outcome_past_its_deadline_is_flagged() {
    let verdict = judge(no_outcome_past_the_deadline());
    verdict
        .breaks_only(&[Rule::UnsettledPastDeadline])
        .about("o-1");
    assert_eq!(verdict.counts().unsettled, 1);
}

#[test]
fn an_order_checkout_still_holds_pending_past_its_deadline_is_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .paid_order("o-1")
            .checkout_says("o-1", OrderStatus::Pending),
    )
    .breaks_only(&[Rule::UnsettledPastDeadline, Rule::CheckoutDisagrees])
    .about("o-1");
}

#[test]
fn a_young_order_without_an_outcome_is_in_flight_not_flagged() {
    let verdict = judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .placed("o-1")
            .reserved("o-1"),
    );
    verdict.passes();
    assert_eq!(verdict.counts().in_flight, 1);
}

#[test]
fn an_order_within_checkout_s_own_deadline_is_not_flagged() {
    // Placed long ago, but checkout gave it a later deadline: checkout's word wins.
    judge(no_outcome_past_the_deadline().checkout_deadline("o-1", NOW + Duration::from_secs(5)))
        .passes();
}

// CheckoutDisagrees

#[test]
fn checkout_contradicting_the_log_is_flagged() {
    judge(checkout_contradicting_the_log())
        .breaks_only(&[Rule::CheckoutDisagrees])
        .about("o-1");
}

#[test]
fn a_settled_order_checkout_does_not_know_is_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .paid_order("o-1")
            .checkout_forgets("o-1"),
    )
    .breaks_only(&[Rule::UnsettledPastDeadline, Rule::CheckoutDisagrees])
    .about("o-1");
}

#[test]
fn checkout_not_yet_caught_up_with_a_fresh_outcome_is_not_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .paid_order("o-1")
            .checkout_says("o-1", OrderStatus::Pending),
    )
    .passes();
}

// ConfirmedNotCapturedOnce

#[test]
fn an_order_confirmed_without_a_capture_is_flagged() {
    judge(confirmed_without_a_capture())
        .breaks_only(&[Rule::ConfirmedNotCapturedOnce])
        .about("o-1");
}

// ConfirmedButRefunded

#[test]
fn a_confirmed_order_that_was_refunded_is_flagged() {
    judge(confirmed_then_refunded())
        .breaks_only(&[Rule::ConfirmedButRefunded])
        .about("o-1");
}

// ConfirmedWithoutCommit

#[test]
fn a_confirmed_order_whose_stock_was_never_committed_is_flagged() {
    judge(confirmed_without_a_commit())
        .breaks_only(&[Rule::ConfirmedWithoutCommit])
        .about("o-1");
}

#[test]
fn a_fresh_confirmation_awaiting_its_commit_is_not_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .placed("o-1")
            .reserved("o-1")
            .captured("o-1")
            .confirmed("o-1"),
    )
    .passes();
}

// DoubleCapture

#[test]
fn an_order_captured_under_two_payment_ids_is_flagged() {
    // Two captures of a confirmed order also break "captured exactly once".
    let verdict = judge(captured_under_two_payment_ids());
    verdict
        .breaks_only(&[Rule::DoubleCapture, Rule::ConfirmedNotCapturedOnce])
        .about("o-1");
    assert_eq!(verdict.0.violations_of(Rule::DoubleCapture).count(), 1);
}

#[test]
fn a_second_payment_id_is_flagged_before_the_order_settles() {
    // Money taken twice is wrong at once: no grace, no outcome needed.
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .placed("o-1")
            .reserved("o-1")
            .captured("o-1")
            .captured_as("o-1", "pay_again"),
    )
    .breaks_only(&[Rule::DoubleCapture])
    .about("o-1");
}

// CancelledMoneyNotReturned

#[test]
fn a_cancelled_order_that_kept_the_money_is_flagged() {
    judge(cancelled_keeping_the_money())
        .breaks_only(&[Rule::CancelledMoneyNotReturned])
        .about("o-1");
}

#[test]
fn a_refund_without_a_capture_is_flagged() {
    // Money given back that was never taken: the order nets to −PRICE.
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .declined_order("o-1")
            .refunded("o-1"),
    )
    .breaks_only(&[Rule::CancelledMoneyNotReturned])
    .about("o-1");
}

#[test]
fn a_cancellation_still_being_compensated_is_not_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .placed("o-1")
            .reserved("o-1")
            .captured("o-1")
            .cancelled("o-1", CancelReason::CustomerRequest),
    )
    .passes();
}

// CancelledStockNotReturned

#[test]
fn a_cancelled_order_still_holding_its_reservation_is_flagged() {
    judge(cancelled_keeping_the_reservation())
        .breaks_only(&[Rule::CancelledStockNotReturned])
        .about("o-1");
}

#[test]
fn a_cancelled_order_whose_sale_was_never_returned_is_flagged() {
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .paid_order("o-1")
            .cancelled("o-1", CancelReason::CustomerRequest)
            .refunded("o-1"),
    )
    .breaks_only(&[Rule::CancelledStockNotReturned])
    .about("o-1");
}

// OnHandMismatch

#[test]
fn on_hand_that_disagrees_with_the_log_is_flagged() {
    judge(on_hand_disagreeing_with_the_log())
        .breaks_only(&[Rule::OnHandMismatch])
        .about(SKU);
}

#[test]
fn a_sku_inventory_does_not_know_is_flagged() {
    judge(Shop::new().stocked(SKU, 5).inventory_forgets(SKU))
        .breaks_only(&[Rule::OnHandMismatch])
        .about(SKU);
}

#[test]
fn stock_the_log_never_delivered_is_flagged() {
    judge(Shop::new().stocked(SKU, 5).inventory_says("sku-b", 3, 0))
        .breaks_only(&[Rule::OnHandMismatch])
        .about("sku-b");
}

// ReservedMismatch

#[test]
fn reserved_stock_without_an_open_reservation_is_flagged() {
    judge(reserved_without_a_reservation())
        .breaks_only(&[Rule::ReservedMismatch])
        .about(SKU);
}

// NegativeStock

#[test]
fn stock_the_log_sold_below_zero_is_flagged() {
    judge(sold_below_zero())
        .breaks_only(&[Rule::NegativeStock])
        .about(SKU);
}

#[test]
fn negative_stock_in_inventory_s_state_is_flagged() {
    // A negative reservation can match no open reservation either.
    judge(Shop::new().stocked(SKU, 5).inventory_says(SKU, 5, -1))
        .breaks_only(&[Rule::NegativeStock, Rule::ReservedMismatch])
        .about(SKU);
}

// LedgerCaptureWithoutEvent

#[test]
fn money_the_gateway_took_without_a_payment_captured_is_flagged() {
    judge(charged_without_an_event())
        .breaks_only(&[Rule::LedgerCaptureWithoutEvent])
        .about("o-1");
}

#[test]
fn a_capture_whose_event_is_still_on_its_way_is_not_flagged() {
    // Right after the charge, PaymentCaptured may still sit in payment's outbox.
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .a_moment_ago()
            .placed("o-1")
            .reserved("o-1")
            .gateway_charged("o-1", &payment_of("o-1")),
    )
    .passes();
}

// LedgerMismatch

#[test]
fn a_capture_announced_for_another_amount_than_the_gateway_took_is_flagged() {
    judge(captured_for_another_amount())
        .breaks_only(&[Rule::LedgerMismatch])
        .about("o-1");
}

#[test]
fn a_capture_announced_twice_is_flagged() {
    // One charge, two PaymentCaptured with distinct event ids: the stream counts double.
    judge(
        Shop::new()
            .stocked(SKU, 5)
            .paid_order("o-1")
            .announced_capture("o-1", &payment_of("o-1")),
    )
    .breaks_only(&[
        Rule::LedgerMismatch,
        Rule::ConfirmedNotCapturedOnce,
        Rule::PaymentRecordMismatch,
    ])
    .about("o-1");
}

// LedgerRefundMismatch

#[test]
fn a_refund_the_gateway_never_made_is_flagged() {
    judge(refund_the_gateway_never_made())
        .breaks_only(&[Rule::LedgerRefundMismatch])
        .about("o-1");
}

// CaptureNotInLedger

#[test]
fn a_capture_the_gateway_never_made_is_flagged() {
    judge(capture_the_gateway_never_made())
        .breaks_only(&[Rule::CaptureNotInLedger])
        .about("o-1");
}

// PaymentRecordMismatch

#[test]
fn payment_s_record_disagreeing_with_the_stream_is_flagged() {
    judge(payment_record_disagreeing_with_the_stream())
        .breaks_only(&[Rule::PaymentRecordMismatch])
        .about("o-1");
}

// OutboxNotEmpty

#[test]
fn events_left_in_an_outbox_are_flagged() {
    let verdict = judge(events_left_in_an_outbox());
    verdict
        .breaks_only(&[Rule::OutboxNotEmpty])
        .about("payment");
    assert_eq!(verdict.counts().outbox_backlog.get("payment"), Some(&3));
}

// ServiceUnreachable

#[test]
fn a_service_that_does_not_answer_is_flagged() {
    // Payment's records and ledger go unchecked, and the report says so.
    let verdict = judge(payment_not_answering());
    verdict
        .breaks_only(&[Rule::ServiceUnreachable])
        .about("payment");
    assert_eq!(
        verdict.counts().not_checked,
        ["payment's records", "the gateway's ledger"]
    );
}

/// What the gateway's books hold after one capture of the order's price under `payment`.
fn ledger_capture(order: &str, payment: &str) -> LedgerEntry {
    LedgerEntry {
        order_id: order_id(order),
        status: LedgerStatus::Captured {
            payment_id: payment_id(payment),
        },
        amount: Money(PRICE),
        currency: Some(eur()),
        charge_calls: 1,
        refunded: Money::ZERO,
        refund_calls: 0,
    }
}
