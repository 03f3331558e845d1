//! Payment's pure rules for charging an order exactly once and refunding it exactly once,
//! whatever order the order, stock and cancellation events arrive in. No I/O: the shell
//! calls the gateway for [`State::gateway_work`] and feeds its answer back as an [`Input`].
//!
//! The order id lives in the [`State`] (set by the first input that carries it), so that
//! gateway answers, which carry no order id, still publish complete events.

mod stored;

use serde::{Deserialize, Serialize};
use shop_decider::Decider;
use shop_events::{
    Currency, Event, Money, OrderCancelled, OrderId, OrderPlaced, PaymentCaptured, PaymentDeclined,
    PaymentId, PaymentRefunded, StockReserved,
};

/// What the customer agreed to pay, from a valid `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub amount: Money,
    pub currency: Currency,
    pub payment_token: String,
}

/// Where the one charge of an order stands, once it was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// The gateway must be asked to charge (idempotently, keyed by the order id).
    Due,
    /// The order was cancelled while a charge was due, maybe already in flight: the
    /// gateway must void the key, which either voids it or reports the capture.
    VoidDue,
    /// The money moved; a refund is only ever owed for a capture.
    Captured {
        payment_id: PaymentId,
        refund: Refund,
    },
    Declined {
        reason: String,
    },
    Voided,
}

/// Where the refund of a captured charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refund {
    /// The order still stands.
    #[default]
    NotNeeded,
    /// The order was cancelled: the capture must be given back.
    Due,
    Refunded,
}

/// Payment's record of one order: its stage, with exactly the data that stage has.
///
/// A charge needs both the order's terms and its stock reservation, and a cancellation
/// before that point means it is never requested; once requested, [`Charge`] carries
/// the rest (a cancellation then shows as a void or a refund). Stored as serde_json in
/// sled, keyed by order id, in the flat shape payment has always written (see
/// [`stored`]), so older records still load.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "stored::StoredPayment", into = "stored::StoredPayment")]
pub enum State {
    /// Nothing seen yet.
    #[default]
    Unknown,
    /// The stock is reserved; the charge waits for the order's terms.
    AwaitingOrder { order_id: OrderId },
    /// The terms are known; the charge waits for the stock reservation.
    AwaitingStock { order_id: OrderId, terms: Terms },
    /// Cancelled before a charge was requested: a tombstone, no charge is ever requested.
    /// The terms are kept if they arrive, to show the currency.
    Cancelled {
        order_id: OrderId,
        terms: Option<Terms>,
    },
    /// Terms and stock were both there, so the charge was requested.
    ChargeRequested {
        order_id: OrderId,
        terms: Terms,
        charge: Charge,
    },
}

/// A call the shell owes the gateway for this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayWork {
    /// Charge `terms` under the order id as idempotency key.
    Charge,
    /// Void the order id's charge; the answer is `ChargeVoided` or, if it had been captured, `ChargeSucceeded`.
    Void,
    /// Refund this capture in full.
    Refund { payment_id: PaymentId },
}

impl State {
    /// The gateway call still owed, if any. The charge comes before its refund.
    pub fn gateway_work(&self) -> Option<GatewayWork> {
        match self.charge()? {
            Charge::Due => Some(GatewayWork::Charge),
            Charge::VoidDue => Some(GatewayWork::Void),
            Charge::Captured {
                payment_id,
                refund: Refund::Due,
            } => Some(GatewayWork::Refund {
                payment_id: payment_id.clone(),
            }),
            _ => None,
        }
    }

    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            State::Unknown => None,
            State::AwaitingOrder { order_id }
            | State::AwaitingStock { order_id, .. }
            | State::Cancelled { order_id, .. }
            | State::ChargeRequested { order_id, .. } => Some(order_id),
        }
    }

    /// What the customer agreed to pay, once the order arrived.
    pub fn terms(&self) -> Option<&Terms> {
        match self {
            State::AwaitingStock { terms, .. } | State::ChargeRequested { terms, .. } => {
                Some(terms)
            }
            State::Cancelled { terms, .. } => terms.as_ref(),
            State::Unknown | State::AwaitingOrder { .. } => None,
        }
    }

    /// The charge, once requested.
    pub fn charge(&self) -> Option<&Charge> {
        match self {
            State::ChargeRequested { charge, .. } => Some(charge),
            _ => None,
        }
    }

    /// The refund of the capture; `NotNeeded` while nothing is captured.
    pub fn refund(&self) -> Refund {
        match self.charge() {
            Some(Charge::Captured { refund, .. }) => *refund,
            _ => Refund::NotNeeded,
        }
    }
}

/// Nothing from outside is needed to decide; kept for the same shape as the other services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ctx;

/// The events payment consumes and the gateway's answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    OrderPlaced(OrderPlaced),
    StockReserved(StockReserved),
    OrderCancelled(OrderCancelled),
    ChargeSucceeded { payment_id: PaymentId },
    ChargeFailed { reason: String },
    ChargeVoided,
    RefundSucceeded,
}

impl Input {
    /// The order an event is about; `None` for gateway answers.
    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            Input::OrderPlaced(e) => Some(&e.order_id),
            Input::StockReserved(e) => Some(&e.order_id),
            Input::OrderCancelled(e) => Some(&e.order_id),
            Input::ChargeSucceeded { .. }
            | Input::ChargeFailed { .. }
            | Input::ChargeVoided
            | Input::RefundSucceeded => None,
        }
    }
}

/// Payment's internal facts about one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    /// The terms arrived before the stock reservation (or after a cancellation).
    TermsRecorded {
        order_id: OrderId,
        terms: Terms,
    },
    /// The stock reservation arrived before the terms.
    StockReservationNoted {
        order_id: OrderId,
    },
    /// The last of terms and stock arrived: charge these terms.
    ChargeRequested {
        order_id: OrderId,
        terms: Terms,
    },
    /// Cancelled before any charge was requested.
    CancellationNoted {
        order_id: OrderId,
    },
    VoidRequested,
    ChargeCaptured {
        payment_id: PaymentId,
    },
    ChargeDeclined {
        reason: String,
    },
    ChargeVoided,
    RefundRequested,
    RefundCompleted,
}

/// Why an input cannot be applied; the shell dead-letters it with this text.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("an input about order `{got}` was applied to the record of order `{expected}`")]
    WrongOrder { expected: OrderId, got: OrderId },
}

/// Decides what an input changes. Pure; an empty result means there is nothing to do.
pub fn decide(state: &State, input: &Input, _ctx: &Ctx) -> Result<Vec<Change>, Refusal> {
    if let (Some(expected), Some(got)) = (state.order_id(), input.order_id()) {
        if expected != got {
            return Err(Refusal::WrongOrder {
                expected: expected.clone(),
                got: got.clone(),
            });
        }
    }
    let charge = state.charge();
    Ok(match input {
        Input::OrderPlaced(placed) => record_terms(state, placed),
        Input::StockReserved(e) => note_stock_reserved(state, e),
        Input::OrderCancelled(e) => note_cancellation(state, e),
        Input::ChargeSucceeded { payment_id } => capture(charge, payment_id),
        Input::ChargeFailed { reason } => match charge {
            Some(Charge::Due | Charge::VoidDue) => vec![Change::ChargeDeclined {
                reason: reason.clone(),
            }],
            _ => Vec::new(),
        },
        Input::ChargeVoided => match charge {
            Some(Charge::VoidDue) => vec![Change::ChargeVoided],
            _ => Vec::new(),
        },
        Input::RefundSucceeded => match state.refund() {
            Refund::Due => vec![Change::RefundCompleted],
            _ => Vec::new(),
        },
    })
}

fn record_terms(state: &State, placed: &OrderPlaced) -> Vec<Change> {
    // The first order seen wins; checkout refuses a conflicting reuse of the id.
    if state.terms().is_some() {
        return Vec::new();
    }
    // Checkout rejects an invalid order and inventory never reserves it: nothing to charge.
    let Ok(order) = placed.validate() else {
        return Vec::new();
    };
    let (order_id, terms) = (
        order.order_id,
        Terms {
            amount: order.total,
            currency: order.currency,
            payment_token: order.payment_token,
        },
    );
    match state {
        State::AwaitingOrder { .. } => vec![Change::ChargeRequested { order_id, terms }],
        // A cancelled order is never charged; its terms are only kept for the record.
        State::Unknown | State::Cancelled { .. } => {
            vec![Change::TermsRecorded { order_id, terms }]
        }
        State::AwaitingStock { .. } | State::ChargeRequested { .. } => Vec::new(),
    }
}

fn note_stock_reserved(state: &State, e: &StockReserved) -> Vec<Change> {
    // It may come before `OrderPlaced` (another stream): the charge then waits for the terms.
    match state {
        State::Unknown => vec![Change::StockReservationNoted {
            order_id: e.order_id.clone(),
        }],
        State::AwaitingStock { order_id, terms } => vec![Change::ChargeRequested {
            order_id: order_id.clone(),
            terms: terms.clone(),
        }],
        // Already noted, already charging, or cancelled: never a second charge.
        State::AwaitingOrder { .. } | State::Cancelled { .. } | State::ChargeRequested { .. } => {
            Vec::new()
        }
    }
}

fn note_cancellation(state: &State, e: &OrderCancelled) -> Vec<Change> {
    match state {
        State::Unknown | State::AwaitingOrder { .. } | State::AwaitingStock { .. } => {
            vec![Change::CancellationNoted {
                order_id: e.order_id.clone(),
            }]
        }
        State::Cancelled { .. } => Vec::new(),
        State::ChargeRequested { charge, .. } => match charge {
            Charge::Due => vec![Change::VoidRequested],
            Charge::Captured {
                refund: Refund::NotNeeded,
                ..
            } => vec![Change::RefundRequested],
            // Already voiding or refunding; or declined or voided: no money to give back.
            _ => Vec::new(),
        },
    }
}

fn capture(charge: Option<&Charge>, payment_id: &PaymentId) -> Vec<Change> {
    let captured = Change::ChargeCaptured {
        payment_id: payment_id.clone(),
    };
    match charge {
        Some(Charge::Due) => vec![captured],
        // The void came too late and the money moved: give it back.
        Some(Charge::VoidDue) => vec![captured, Change::RefundRequested],
        // Already captured is a redelivery. After a decline or a void the gateway's
        // answer for the key was final, so a stale success from an earlier call is ignored.
        _ => Vec::new(),
    }
}

/// Applies one change. Pure and infallible: `decide` already checked everything.
pub fn evolve(state: &mut State, change: &Change) {
    let before = std::mem::take(state);
    *state = next(before, change);
}

/// The stage a change leads to. `decide` only emits a change from the stage it moves
/// on, so any other pairing leaves the state as it was.
fn next(state: State, change: &Change) -> State {
    match (state, change) {
        (State::Unknown, Change::TermsRecorded { order_id, terms }) => State::AwaitingStock {
            order_id: order_id.clone(),
            terms: terms.clone(),
        },
        (State::Cancelled { order_id, .. }, Change::TermsRecorded { terms, .. }) => {
            State::Cancelled {
                order_id,
                terms: Some(terms.clone()),
            }
        }
        (State::Unknown, Change::StockReservationNoted { order_id }) => State::AwaitingOrder {
            order_id: order_id.clone(),
        },
        (
            State::AwaitingOrder { .. } | State::AwaitingStock { .. },
            Change::ChargeRequested { order_id, terms },
        ) => State::ChargeRequested {
            order_id: order_id.clone(),
            terms: terms.clone(),
            charge: Charge::Due,
        },
        (State::Unknown, Change::CancellationNoted { order_id }) => State::Cancelled {
            order_id: order_id.clone(),
            terms: None,
        },
        (State::AwaitingOrder { order_id }, Change::CancellationNoted { .. }) => State::Cancelled {
            order_id,
            terms: None,
        },
        (State::AwaitingStock { order_id, terms }, Change::CancellationNoted { .. }) => {
            State::Cancelled {
                order_id,
                terms: Some(terms),
            }
        }
        (
            State::ChargeRequested {
                order_id,
                terms,
                charge,
            },
            change,
        ) => State::ChargeRequested {
            order_id,
            terms,
            charge: next_charge(charge, change),
        },
        (unchanged, _) => unchanged,
    }
}

/// The charge a change leads to; as with [`next`], other pairings leave it as it was.
fn next_charge(charge: Charge, change: &Change) -> Charge {
    match (charge, change) {
        (Charge::Due, Change::VoidRequested) => Charge::VoidDue,
        (Charge::Due | Charge::VoidDue, Change::ChargeCaptured { payment_id }) => {
            Charge::Captured {
                payment_id: payment_id.clone(),
                refund: Refund::NotNeeded,
            }
        }
        (Charge::Due | Charge::VoidDue, Change::ChargeDeclined { reason }) => Charge::Declined {
            reason: reason.clone(),
        },
        (Charge::VoidDue, Change::ChargeVoided) => Charge::Voided,
        (
            Charge::Captured {
                payment_id,
                refund: Refund::NotNeeded,
            },
            Change::RefundRequested,
        ) => Charge::Captured {
            payment_id,
            refund: Refund::Due,
        },
        (
            Charge::Captured {
                payment_id,
                refund: Refund::Due,
            },
            Change::RefundCompleted,
        ) => Charge::Captured {
            payment_id,
            refund: Refund::Refunded,
        },
        (unchanged, _) => unchanged,
    }
}

/// The public event a change publishes, read from the state after the change.
pub fn published(state_after: &State, change: &Change) -> Option<Event> {
    let order_id = state_after.order_id()?.clone();
    let terms = state_after.terms()?;
    match change {
        Change::ChargeCaptured { payment_id } => Some(
            PaymentCaptured {
                order_id,
                payment_id: payment_id.clone(),
                amount: terms.amount,
                currency: terms.currency,
            }
            .into(),
        ),
        Change::ChargeDeclined { reason } => Some(
            PaymentDeclined {
                order_id,
                reason: reason.clone(),
                amount: terms.amount,
            }
            .into(),
        ),
        Change::RefundCompleted => match state_after.charge()? {
            Charge::Captured { payment_id, .. } => Some(
                PaymentRefunded {
                    order_id,
                    payment_id: payment_id.clone(),
                    amount: terms.amount,
                    currency: terms.currency,
                }
                .into(),
            ),
            _ => None,
        },
        Change::TermsRecorded { .. }
        | Change::StockReservationNoted { .. }
        | Change::ChargeRequested { .. }
        | Change::CancellationNoted { .. }
        | Change::VoidRequested
        | Change::ChargeVoided
        | Change::RefundRequested => None,
    }
}

/// Payment's rules as a [`Decider`]; the shell drives it through `decide` and `apply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payment;

impl Decider for Payment {
    type State = State;
    type Input = Input;
    type Change = Change;
    type Refusal = Refusal;
    type Ctx = Ctx;
    type Event = Event;

    fn decide(state: &State, input: &Input, ctx: &Ctx) -> Result<Vec<Change>, Refusal> {
        decide(state, input, ctx)
    }

    fn evolve(state: &mut State, change: &Change) {
        evolve(state, change)
    }

    fn published(state_after: &State, change: &Change) -> Option<Event> {
        published(state_after, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_decider::spec;
    use shop_events::{CancelReason, EventKind, OrderLineInput, Sku, StockLine};

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).expect("valid order id")
    }

    fn pid(s: &str) -> PaymentId {
        PaymentId::parse(s).expect("valid payment id")
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("valid currency")
    }

    fn the_order() -> OrderPlaced {
        OrderPlaced {
            order_id: id("o-1"),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            lines: vec![OrderLineInput {
                sku: "sku-a".into(),
                quantity: 2,
                unit_price: 625,
            }],
            total: 1250,
            payment_token: "tok_visa".into(),
        }
    }

    fn placed() -> Input {
        Input::OrderPlaced(the_order())
    }

    fn reserved() -> Input {
        Input::StockReserved(StockReserved {
            order_id: id("o-1"),
            lines: vec![StockLine {
                sku: Sku::parse("sku-a").expect("valid sku"),
                quantity: 2,
            }],
        })
    }

    fn cancelled() -> Input {
        Input::OrderCancelled(OrderCancelled {
            order_id: id("o-1"),
            reason: CancelReason::CustomerRequest,
            detail: "changed my mind".into(),
        })
    }

    fn succeeded() -> Input {
        Input::ChargeSucceeded {
            payment_id: pid("pay-1"),
        }
    }

    fn failed() -> Input {
        Input::ChargeFailed {
            reason: "card_declined".into(),
        }
    }

    fn captured_event() -> Event {
        PaymentCaptured {
            order_id: id("o-1"),
            payment_id: pid("pay-1"),
            amount: Money(1250),
            currency: eur(),
        }
        .into()
    }

    fn refunded_event() -> Event {
        PaymentRefunded {
            order_id: id("o-1"),
            payment_id: pid("pay-1"),
            amount: Money(1250),
            currency: eur(),
        }
        .into()
    }

    fn declined_event() -> Event {
        PaymentDeclined {
            order_id: id("o-1"),
            reason: "card_declined".into(),
            amount: Money(1250),
        }
        .into()
    }

    type Then = spec::Then<Payment>;

    fn given(inputs: impl IntoIterator<Item = Input>) -> spec::Given<Payment> {
        spec::given(Ctx, inputs)
    }

    /// Payment's own checks on the state after.
    trait PaymentThen {
        fn and_charge(self, expected: Option<Charge>) -> Self;
        fn and_refund(self, expected: Refund) -> Self;
        fn and_work(self, expected: Option<GatewayWork>) -> Self;
    }

    impl PaymentThen for Then {
        #[track_caller]
        fn and_charge(self, expected: Option<Charge>) -> Then {
            self.and(|s| assert_eq!(s.charge(), expected.as_ref()))
        }

        #[track_caller]
        fn and_refund(self, expected: Refund) -> Then {
            self.and(|s| assert_eq!(s.refund(), expected))
        }

        #[track_caller]
        fn and_work(self, expected: Option<GatewayWork>) -> Then {
            self.and(|s| assert_eq!(s.gateway_work(), expected))
        }
    }

    fn captured(refund: Refund) -> Charge {
        Charge::Captured {
            payment_id: pid("pay-1"),
            refund,
        }
    }

    #[test]
    fn an_order_alone_records_its_terms_but_is_not_charged() {
        given([])
            .when(placed())
            .then(vec![])
            .and_charge(None)
            .and_work(None);
        let state = given([placed()]).state;
        assert_eq!(state.order_id(), Some(&id("o-1")));
        assert_eq!(
            state.terms(),
            Some(&Terms {
                amount: Money(1250),
                currency: eur(),
                payment_token: "tok_visa".into(),
            })
        );
    }

    #[test]
    fn a_charge_is_requested_once_the_stock_is_reserved() {
        given([placed()])
            .when(reserved())
            .then(vec![])
            .and_charge(Some(Charge::Due))
            .and_work(Some(GatewayWork::Charge));
    }

    #[test]
    fn a_charge_is_requested_when_the_order_arrives_after_its_stock_reservation() {
        given([reserved()])
            .when(placed())
            .then(vec![])
            .and_charge(Some(Charge::Due))
            .and_work(Some(GatewayWork::Charge));
    }

    #[test]
    fn a_stock_reservation_alone_is_not_charged_but_remembers_the_order() {
        given([])
            .when(reserved())
            .then(vec![])
            .and_charge(None)
            .and_work(None);
        assert_eq!(given([reserved()]).state.order_id(), Some(&id("o-1")));
    }

    #[test]
    fn an_invalid_order_is_never_charged() {
        let mut bad = the_order();
        bad.total = 1;
        given([reserved()])
            .when(Input::OrderPlaced(bad))
            .then_nothing_happens()
            .and_work(None);
    }

    #[test]
    fn a_successful_charge_publishes_the_capture() {
        given([placed(), reserved()])
            .when(succeeded())
            .then(vec![captured_event()])
            .and_charge(Some(captured(Refund::NotNeeded)))
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_failed_charge_publishes_the_decline() {
        given([placed(), reserved()])
            .when(failed())
            .then(vec![declined_event()])
            .and_charge(Some(Charge::Declined {
                reason: "card_declined".into(),
            }))
            .and_work(None);
    }

    #[test]
    fn a_declined_order_is_never_refunded() {
        given([placed(), reserved(), failed()])
            .when(cancelled())
            .then(vec![])
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_cancellation_before_the_stock_is_reserved_means_never_charged() {
        given([placed(), cancelled()])
            .when(reserved())
            .then(vec![])
            .and_charge(None)
            .and_work(None);
    }

    #[test]
    fn a_cancellation_before_the_order_means_never_charged() {
        for later in [[placed(), reserved()], [reserved(), placed()]] {
            let mut g = given([cancelled()]);
            for input in later {
                let changes = decide(&g.state, &input, &Ctx).expect("accepted");
                assert!(Payment::apply(&mut g.state, &changes).is_empty());
            }
            assert_eq!(g.state.charge(), None);
            assert_eq!(g.state.gateway_work(), None);
            assert!(matches!(g.state, State::Cancelled { .. }));
        }
    }

    #[test]
    fn a_cancellation_while_the_charge_is_due_asks_the_gateway_to_void_it() {
        given([placed(), reserved()])
            .when(cancelled())
            .then(vec![])
            .and_charge(Some(Charge::VoidDue))
            .and_work(Some(GatewayWork::Void));
    }

    #[test]
    fn a_voided_charge_publishes_nothing_and_ends_the_work() {
        given([placed(), reserved(), cancelled()])
            .when(Input::ChargeVoided)
            .then(vec![])
            .and_charge(Some(Charge::Voided))
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_capture_arriving_after_the_cancellation_is_refunded() {
        given([placed(), reserved(), cancelled()])
            .when(succeeded())
            .then(vec![captured_event()])
            .and_charge(Some(captured(Refund::Due)))
            .and_refund(Refund::Due)
            .and_work(Some(GatewayWork::Refund {
                payment_id: pid("pay-1"),
            }));
    }

    #[test]
    fn a_decline_arriving_after_the_cancellation_is_published_and_not_refunded() {
        given([placed(), reserved(), cancelled()])
            .when(failed())
            .then(vec![declined_event()])
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_cancellation_after_the_capture_requests_a_refund() {
        given([placed(), reserved(), succeeded()])
            .when(cancelled())
            .then(vec![])
            .and_refund(Refund::Due)
            .and_work(Some(GatewayWork::Refund {
                payment_id: pid("pay-1"),
            }));
    }

    #[test]
    fn a_completed_refund_is_published_once() {
        given([placed(), reserved(), succeeded(), cancelled()])
            .when(Input::RefundSucceeded)
            .then(vec![refunded_event()])
            .and_refund(Refund::Refunded)
            .and_work(None);
        given([
            placed(),
            reserved(),
            succeeded(),
            cancelled(),
            Input::RefundSucceeded,
        ])
        .when(Input::RefundSucceeded)
        .then_nothing_happens();
    }

    #[test]
    fn a_capture_after_cancellation_is_captured_once_and_refunded_once_despite_duplicates() {
        let cancelled_first = [
            reserved(),
            cancelled(),
            placed(),
            reserved(),
            cancelled(),
            placed(),
        ];
        // The charge is in flight when the cancellation lands; every input is redelivered.
        let script = [
            reserved(),
            placed(),
            reserved(),
            cancelled(),
            succeeded(),
            succeeded(),
            cancelled(),
            Input::RefundSucceeded,
            placed(),
            Input::RefundSucceeded,
            succeeded(),
            cancelled(),
        ];
        let mut state = State::default();
        let mut events = Vec::new();
        for input in &script {
            let changes = decide(&state, input, &Ctx).expect("accepted");
            events.extend(Payment::apply(&mut state, &changes));
        }
        assert_eq!(events, vec![captured_event(), refunded_event()]);
        assert_eq!(state.refund(), Refund::Refunded);
        assert_eq!(state.gateway_work(), None);
        // And with the cancellation first nothing is ever charged.
        let mut state = State::default();
        for input in &cancelled_first {
            let changes = decide(&state, input, &Ctx).expect("accepted");
            assert!(Payment::apply(&mut state, &changes).is_empty());
        }
        assert_eq!(state.gateway_work(), None);
    }

    #[test]
    fn duplicates_of_every_input_are_no_ops() {
        let histories: Vec<Vec<Input>> = vec![
            vec![placed()],
            vec![reserved()],
            vec![cancelled()],
            vec![placed(), reserved(), succeeded()],
            vec![placed(), reserved(), failed()],
            vec![placed(), reserved(), cancelled(), Input::ChargeVoided],
            vec![
                placed(),
                reserved(),
                succeeded(),
                cancelled(),
                Input::RefundSucceeded,
            ],
        ];
        for history in histories {
            let last = history.last().cloned().expect("non-empty history");
            given(history).when(last).then_nothing_happens();
        }
    }

    #[test]
    fn gateway_answers_that_do_not_match_the_charge_are_no_ops() {
        let cases: Vec<(Vec<Input>, Input)> = vec![
            (vec![], succeeded()),
            (vec![placed()], failed()),
            (vec![placed(), reserved()], Input::ChargeVoided),
            (vec![placed(), reserved()], Input::RefundSucceeded),
            (vec![placed(), reserved(), succeeded()], failed()),
            (vec![placed(), reserved(), failed()], succeeded()),
            (
                vec![placed(), reserved(), cancelled(), Input::ChargeVoided],
                succeeded(),
            ),
            (
                vec![placed(), reserved(), succeeded()],
                Input::RefundSucceeded,
            ),
        ];
        for (history, answer) in cases {
            given(history).when(answer).then_nothing_happens();
        }
    }

    #[test]
    fn an_event_about_another_order_is_refused() {
        let mut other = the_order();
        other.order_id = id("o-2");
        let result = decide(&given([placed()]).state, &Input::OrderPlaced(other), &Ctx);
        assert_eq!(
            result,
            Err(Refusal::WrongOrder {
                expected: id("o-1"),
                got: id("o-2"),
            })
        );
    }

    #[test]
    fn the_record_survives_a_json_round_trip() {
        for state in [
            given([]).state,
            given([cancelled()]).state,
            given([placed(), reserved()]).state,
            given([placed(), reserved(), succeeded(), cancelled()]).state,
            given([placed(), reserved(), failed()]).state,
        ] {
            let json = serde_json::to_string(&state).expect("serialises");
            let back: State = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(back, state);
        }
    }

    #[test]
    fn only_captures_declines_and_refunds_are_published() {
        let kinds: Vec<EventKind> = [
            given([placed(), reserved()]).when(succeeded()).result,
            given([placed(), reserved()]).when(failed()).result,
            given([placed(), reserved(), succeeded(), cancelled()])
                .when(Input::RefundSucceeded)
                .result,
        ]
        .into_iter()
        .flat_map(|r| r.expect("accepted"))
        .map(|e| e.kind())
        .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::PaymentCaptured,
                EventKind::PaymentDeclined,
                EventKind::PaymentRefunded
            ]
        );
    }

    fn terms() -> Terms {
        Terms {
            amount: Money(1250),
            currency: eur(),
            payment_token: "tok_visa".into(),
        }
    }

    /// Records exactly as payment wrote them while `State` was a flat struct (captured
    /// by serialising that struct after each history), with the stage each must load as.
    fn legacy_records() -> Vec<(&'static str, &'static str, State)> {
        vec![
            (
                "empty",
                r#"{"order_id":null,"terms":null,"stock_reserved":false,"cancelled":false,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::Unknown,
            ),
            (
                "awaiting_order",
                r#"{"order_id":"o-1","terms":null,"stock_reserved":true,"cancelled":false,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::AwaitingOrder {
                    order_id: id("o-1"),
                },
            ),
            (
                "awaiting_stock",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":false,"cancelled":false,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::AwaitingStock {
                    order_id: id("o-1"),
                    terms: terms(),
                },
            ),
            (
                "charging",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":false,"charge":{"state":"due"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: Charge::Due,
                },
            ),
            (
                "captured",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":false,"charge":{"state":"captured","payment_id":"pay-1"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: captured(Refund::NotNeeded),
                },
            ),
            (
                "refunding",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"captured","payment_id":"pay-1"},"refund":"due"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: captured(Refund::Due),
                },
            ),
            (
                "refunding_late_capture",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"captured","payment_id":"pay-1"},"refund":"due"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: captured(Refund::Due),
                },
            ),
            (
                "refunded",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"captured","payment_id":"pay-1"},"refund":"refunded"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: captured(Refund::Refunded),
                },
            ),
            (
                "declined",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":false,"charge":{"state":"declined","reason":"card_declined"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: Charge::Declined {
                        reason: "card_declined".into(),
                    },
                },
            ),
            (
                "declined_after_cancel",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"declined","reason":"card_declined"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: Charge::Declined {
                        reason: "card_declined".into(),
                    },
                },
            ),
            (
                "voiding",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"void_due"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: Charge::VoidDue,
                },
            ),
            (
                "voided",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"voided"},"refund":"not_needed"}"#,
                State::ChargeRequested {
                    order_id: id("o-1"),
                    terms: terms(),
                    charge: Charge::Voided,
                },
            ),
            (
                "cancelled",
                r#"{"order_id":"o-1","terms":null,"stock_reserved":false,"cancelled":true,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::Cancelled {
                    order_id: id("o-1"),
                    terms: None,
                },
            ),
            (
                "cancelled_with_terms",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":false,"cancelled":true,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::Cancelled {
                    order_id: id("o-1"),
                    terms: Some(terms()),
                },
            ),
            (
                "cancelled_with_stock",
                r#"{"order_id":"o-1","terms":null,"stock_reserved":true,"cancelled":true,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::Cancelled {
                    order_id: id("o-1"),
                    terms: None,
                },
            ),
            (
                "cancelled_with_both",
                r#"{"order_id":"o-1","terms":{"amount":1250,"currency":"EUR","payment_token":"tok_visa"},"stock_reserved":true,"cancelled":true,"charge":{"state":"not_requested"},"refund":"not_needed"}"#,
                State::Cancelled {
                    order_id: id("o-1"),
                    terms: Some(terms()),
                },
            ),
        ]
    }

    #[test]
    fn records_written_before_the_state_was_an_enum_still_load() {
        for (name, json, expected) in legacy_records() {
            let state: State = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("{name}: the legacy record must load: {e}"));
            assert_eq!(state, expected, "{name}");
        }
    }

    /// The gateway call a legacy record owed, by the old rule on its flat fields.
    fn legacy_work(old: &serde_json::Value) -> Option<GatewayWork> {
        match (old["charge"]["state"].as_str(), old["refund"].as_str()) {
            (Some("due"), _) => Some(GatewayWork::Charge),
            (Some("void_due"), _) => Some(GatewayWork::Void),
            (Some("captured"), Some("due")) => Some(GatewayWork::Refund {
                payment_id: pid(old["charge"]["payment_id"].as_str().expect("payment id")),
            }),
            _ => None,
        }
    }

    #[test]
    fn legacy_records_owe_the_same_gateway_work_and_keep_their_facts() {
        for (name, json, _) in legacy_records() {
            let old: serde_json::Value = serde_json::from_str(json).expect("json");
            let state: State = serde_json::from_str(json).expect("loads");
            assert_eq!(state.gateway_work(), legacy_work(&old), "{name}");
            assert_eq!(
                serde_json::json!(state.order_id()),
                old["order_id"],
                "{name}"
            );
            assert_eq!(serde_json::json!(state.terms()), old["terms"], "{name}");
            assert_eq!(serde_json::json!(state.refund()), old["refund"], "{name}");
        }
    }

    #[test]
    fn a_record_written_now_is_the_flat_shape_an_older_binary_reads() {
        for (name, json, state) in legacy_records() {
            let written = serde_json::to_value(&state).expect("serialises");
            let mut old: serde_json::Value = serde_json::from_str(json).expect("json");
            // Two facts nothing acts on are no longer kept: stock reserved after a
            // cancellation, and a cancellation after a decline.
            if matches!(state, State::Cancelled { .. }) {
                old["stock_reserved"] = false.into();
            }
            if old["charge"]["state"] == "declined" {
                old["cancelled"] = false.into();
            }
            assert_eq!(written, old, "{name}");
            let back: State = serde_json::from_value(written).expect("deserialises");
            assert_eq!(back, state, "{name}");
        }
    }

    #[test]
    fn a_record_that_no_version_writes_is_refused() {
        for json in [
            r#"{"terms":{"amount":1,"currency":"EUR","payment_token":"t"}}"#,
            r#"{"order_id":"o-1","charge":{"state":"due"}}"#,
            r#"{"order_id":"o-1"}"#,
        ] {
            let result = serde_json::from_str::<State>(json);
            assert!(result.is_err(), "{json} must not load: {result:?}");
        }
    }

    /// What `payment.payments.get` showed for a legacy record, by the old rules on its flat fields.
    fn legacy_view(old: &serde_json::Value) -> serde_json::Value {
        let charge = old["charge"]["state"].as_str().unwrap_or("not_requested");
        let refund = old["refund"].as_str().unwrap_or("not_needed");
        let status = match (charge, refund) {
            ("captured", "refunded") => "refunded",
            ("captured", "due") => "refunding",
            ("captured", _) => "captured",
            ("due", _) => "charging",
            ("void_due", _) => "voiding",
            ("declined", _) => "declined",
            ("voided", _) => "voided",
            _ if old["cancelled"] == true => "cancelled",
            _ if old["terms"].is_null() => "awaiting_order",
            _ => "awaiting_stock",
        };
        let amount = old["terms"]["amount"].as_i64().unwrap_or(0);
        serde_json::json!({
            "order_id": "o-1",
            "status": status,
            "captured": if charge == "captured" { amount } else { 0 },
            "refunded": if charge == "captured" && refund == "refunded" { amount } else { 0 },
            "currency": old["terms"]["currency"],
            "payment_id": old["charge"]["payment_id"],
            "decline_reason": old["charge"]["reason"],
        })
    }

    #[test]
    fn legacy_records_show_the_same_view_and_status_word() {
        for (name, json, _) in legacy_records() {
            let old: serde_json::Value = serde_json::from_str(json).expect("json");
            let state: State = serde_json::from_str(json).expect("loads");
            let view = crate::api::payment_view(&id("o-1"), &state);
            assert_eq!(
                serde_json::to_value(&view).expect("serialises"),
                legacy_view(&old),
                "{name}"
            );
        }
    }
}
