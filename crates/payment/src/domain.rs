//! Payment's pure rules for charging an order exactly once and refunding it exactly once,
//! whatever order the order, stock and cancellation events arrive in. No I/O: the shell
//! calls the gateway for [`State::gateway_work`] and feeds its answer back as an [`Input`].
//!
//! The order id lives in the [`State`] (set by the first input that carries it), so that
//! gateway answers, which carry no order id, still publish complete events.

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

/// Where the one charge of an order stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Charge {
    #[default]
    NotRequested,
    /// The gateway must be asked to charge (idempotently, keyed by the order id).
    Due,
    /// The order was cancelled while a charge was due, maybe already in flight: the
    /// gateway must void the key, which either voids it or reports the capture.
    VoidDue,
    Captured {
        payment_id: PaymentId,
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
    #[default]
    NotNeeded,
    Due,
    Refunded,
}

/// Payment's record of one order (serde_json in sled, keyed by order id).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub order_id: Option<OrderId>,
    pub terms: Option<Terms>,
    pub stock_reserved: bool,
    /// Tombstone as much as a flag: once set, no charge is ever requested.
    pub cancelled: bool,
    pub charge: Charge,
    pub refund: Refund,
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
        match (&self.charge, self.refund) {
            (Charge::Due, _) => Some(GatewayWork::Charge),
            (Charge::VoidDue, _) => Some(GatewayWork::Void),
            (Charge::Captured { payment_id }, Refund::Due) => Some(GatewayWork::Refund {
                payment_id: payment_id.clone(),
            }),
            _ => None,
        }
    }

    fn wants_charge(&self) -> bool {
        self.terms.is_some()
            && self.stock_reserved
            && !self.cancelled
            && self.charge == Charge::NotRequested
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
    TermsRecorded { order_id: OrderId, terms: Terms },
    StockReservationNoted { order_id: OrderId },
    CancellationNoted { order_id: OrderId },
    ChargeRequested,
    VoidRequested,
    ChargeCaptured { payment_id: PaymentId },
    ChargeDeclined { reason: String },
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
    if let (Some(expected), Some(got)) = (&state.order_id, input.order_id()) {
        if expected != got {
            return Err(Refusal::WrongOrder {
                expected: expected.clone(),
                got: got.clone(),
            });
        }
    }
    Ok(match input {
        Input::OrderPlaced(placed) => record_terms(state, placed),
        Input::StockReserved(e) => note_stock_reserved(state, e),
        Input::OrderCancelled(e) => note_cancellation(state, e),
        Input::ChargeSucceeded { payment_id } => capture(state, payment_id),
        Input::ChargeFailed { reason } => match state.charge {
            Charge::Due | Charge::VoidDue => vec![Change::ChargeDeclined {
                reason: reason.clone(),
            }],
            _ => Vec::new(),
        },
        Input::ChargeVoided => match state.charge {
            Charge::VoidDue => vec![Change::ChargeVoided],
            _ => Vec::new(),
        },
        Input::RefundSucceeded => match state.refund {
            Refund::Due => vec![Change::RefundCompleted],
            _ => Vec::new(),
        },
    })
}

/// Runs `first`, then requests the charge if that made the order chargeable.
fn then_maybe_charge(state: &State, first: Change) -> Vec<Change> {
    let mut after = state.clone();
    evolve(&mut after, &first);
    let mut changes = vec![first];
    if after.wants_charge() {
        changes.push(Change::ChargeRequested);
    }
    changes
}

fn record_terms(state: &State, placed: &OrderPlaced) -> Vec<Change> {
    // The first order seen wins; checkout refuses a conflicting reuse of the id.
    if state.terms.is_some() {
        return Vec::new();
    }
    // Checkout rejects an invalid order and inventory never reserves it: nothing to charge.
    let Ok(order) = placed.validate() else {
        return Vec::new();
    };
    then_maybe_charge(
        state,
        Change::TermsRecorded {
            order_id: order.order_id,
            terms: Terms {
                amount: order.total,
                currency: order.currency,
                payment_token: order.payment_token,
            },
        },
    )
}

fn note_stock_reserved(state: &State, e: &StockReserved) -> Vec<Change> {
    // It may come before `OrderPlaced` (another stream): the charge then waits for the terms.
    if state.stock_reserved {
        return Vec::new();
    }
    then_maybe_charge(
        state,
        Change::StockReservationNoted {
            order_id: e.order_id.clone(),
        },
    )
}

fn note_cancellation(state: &State, e: &OrderCancelled) -> Vec<Change> {
    if state.cancelled {
        return Vec::new();
    }
    let mut changes = vec![Change::CancellationNoted {
        order_id: e.order_id.clone(),
    }];
    match (&state.charge, state.refund) {
        (Charge::Due, _) => changes.push(Change::VoidRequested),
        (Charge::Captured { .. }, Refund::NotNeeded) => changes.push(Change::RefundRequested),
        // Never charged, declined or voided: there is no money to give back.
        _ => {}
    }
    changes
}

fn capture(state: &State, payment_id: &PaymentId) -> Vec<Change> {
    match state.charge {
        Charge::Due | Charge::VoidDue => {
            let mut changes = vec![Change::ChargeCaptured {
                payment_id: payment_id.clone(),
            }];
            // The void came too late and the money moved: give it back.
            if state.cancelled {
                changes.push(Change::RefundRequested);
            }
            changes
        }
        // Already captured is a redelivery. After a decline or a void the gateway's
        // answer for the key was final, so a stale success from an earlier call is ignored.
        _ => Vec::new(),
    }
}

/// Applies one change. Pure and infallible: `decide` already checked everything.
pub fn evolve(state: &mut State, change: &Change) {
    match change {
        Change::TermsRecorded { order_id, terms } => {
            state.order_id.get_or_insert_with(|| order_id.clone());
            state.terms = Some(terms.clone());
        }
        Change::StockReservationNoted { order_id } => {
            state.order_id.get_or_insert_with(|| order_id.clone());
            state.stock_reserved = true;
        }
        Change::CancellationNoted { order_id } => {
            state.order_id.get_or_insert_with(|| order_id.clone());
            state.cancelled = true;
        }
        Change::ChargeRequested => state.charge = Charge::Due,
        Change::VoidRequested => state.charge = Charge::VoidDue,
        Change::ChargeCaptured { payment_id } => {
            state.charge = Charge::Captured {
                payment_id: payment_id.clone(),
            }
        }
        Change::ChargeDeclined { reason } => {
            state.charge = Charge::Declined {
                reason: reason.clone(),
            }
        }
        Change::ChargeVoided => state.charge = Charge::Voided,
        Change::RefundRequested => state.refund = Refund::Due,
        Change::RefundCompleted => state.refund = Refund::Refunded,
    }
}

/// The public event a change publishes, read from the state after the change.
pub fn published(state_after: &State, change: &Change) -> Option<Event> {
    let order_id = state_after.order_id.clone()?;
    let terms = state_after.terms.as_ref()?;
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
        Change::RefundCompleted => match &state_after.charge {
            Charge::Captured { payment_id } => Some(
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
        | Change::CancellationNoted { .. }
        | Change::ChargeRequested
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
        fn and_charge(self, expected: Charge) -> Self;
        fn and_refund(self, expected: Refund) -> Self;
        fn and_work(self, expected: Option<GatewayWork>) -> Self;
    }

    impl PaymentThen for Then {
        #[track_caller]
        fn and_charge(self, expected: Charge) -> Then {
            self.and(|s| assert_eq!(s.charge, expected))
        }

        #[track_caller]
        fn and_refund(self, expected: Refund) -> Then {
            self.and(|s| assert_eq!(s.refund, expected))
        }

        #[track_caller]
        fn and_work(self, expected: Option<GatewayWork>) -> Then {
            self.and(|s| assert_eq!(s.gateway_work(), expected))
        }
    }

    fn captured() -> Charge {
        Charge::Captured {
            payment_id: pid("pay-1"),
        }
    }

    #[test]
    fn an_order_alone_records_its_terms_but_is_not_charged() {
        given([])
            .when(placed())
            .then(vec![])
            .and_charge(Charge::NotRequested)
            .and_work(None);
        let state = given([placed()]).state;
        assert_eq!(state.order_id, Some(id("o-1")));
        assert_eq!(
            state.terms,
            Some(Terms {
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
            .and_charge(Charge::Due)
            .and_work(Some(GatewayWork::Charge));
    }

    #[test]
    fn a_charge_is_requested_when_the_order_arrives_after_its_stock_reservation() {
        given([reserved()])
            .when(placed())
            .then(vec![])
            .and_charge(Charge::Due)
            .and_work(Some(GatewayWork::Charge));
    }

    #[test]
    fn a_stock_reservation_alone_is_not_charged_but_remembers_the_order() {
        given([])
            .when(reserved())
            .then(vec![])
            .and_charge(Charge::NotRequested)
            .and_work(None);
        assert_eq!(given([reserved()]).state.order_id, Some(id("o-1")));
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
            .and_charge(captured())
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_failed_charge_publishes_the_decline() {
        given([placed(), reserved()])
            .when(failed())
            .then(vec![declined_event()])
            .and_charge(Charge::Declined {
                reason: "card_declined".into(),
            })
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
            .and_charge(Charge::NotRequested)
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
            assert_eq!(g.state.charge, Charge::NotRequested);
            assert_eq!(g.state.gateway_work(), None);
            assert!(g.state.cancelled);
        }
    }

    #[test]
    fn a_cancellation_while_the_charge_is_due_asks_the_gateway_to_void_it() {
        given([placed(), reserved()])
            .when(cancelled())
            .then(vec![])
            .and_charge(Charge::VoidDue)
            .and_work(Some(GatewayWork::Void));
    }

    #[test]
    fn a_voided_charge_publishes_nothing_and_ends_the_work() {
        given([placed(), reserved(), cancelled()])
            .when(Input::ChargeVoided)
            .then(vec![])
            .and_charge(Charge::Voided)
            .and_refund(Refund::NotNeeded)
            .and_work(None);
    }

    #[test]
    fn a_capture_arriving_after_the_cancellation_is_refunded() {
        given([placed(), reserved(), cancelled()])
            .when(succeeded())
            .then(vec![captured_event()])
            .and_charge(captured())
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
        assert_eq!(state.refund, Refund::Refunded);
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
}
