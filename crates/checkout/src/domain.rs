//! Checkout's pure order state machine: one order's record, the facts that move it
//! (placed, stock shortage, payment outcome, cancellation request, deadline) and the
//! public event each move publishes. No I/O, no clock: time comes in through [`Ctx`].
//!
//! The shell drives it the same way for every input, inside one store transaction:
//! `decide` on the loaded [`State`], then for each [`Change`] in order `evolve` the
//! state and `published(&state, &change)` into the outbox ([`apply`] does exactly that).

mod stored;

use serde::{Deserialize, Serialize};
use shop_decider::Decider;
use shop_events::{
    CancelReason, Event, OrderCancellationRequested, OrderCancelled, OrderConfirmed, OrderId,
    OrderPlaced, OrderRejected, PaymentCaptured, PaymentDeclined, PaymentId, Problem, Shortage,
    StockReservationFailed, ValidOrder,
};

/// Where an order stands (the contract's word for it, so the view cannot drift from the state).
pub use shop_events::api::checkout::OrderStatus;

/// A settling fact that reached checkout before the order itself did.
///
/// Checkout reads the orders stream and the inventory/payments streams with separate
/// consumers, so after a restart or a lagging consumer a capture can be seen before
/// the `OrderPlaced` it answers. Forgetting it would leave the paid order pending
/// until it times out; remembering it lets placement settle the order at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EarlyOutcome {
    OutOfStock { detail: String },
    PaymentCaptured { payment_id: PaymentId },
    PaymentDeclined { reason: String },
}

/// What reached checkout about an order it has not seen placed yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Early {
    /// The first stock or payment outcome; placement settles the order with it.
    pub outcome: Option<EarlyOutcome>,
    /// The reason of a cancellation requested before the order; placement cancels it.
    pub cancellation_requested: Option<String>,
}

/// A placed order that passed validation: what every stage after placement carries.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedOrder {
    /// The order exactly as first received, to tell a redelivery from a conflicting reuse of the id.
    pub placed: OrderPlaced,
    /// The same order, typed.
    pub order: ValidOrder,
    pub placed_at_ms: i64,
    /// When a still pending order times out.
    pub deadline_at_ms: i64,
}

/// One order's record: its stage, with exactly the data that stage has.
///
/// Stored as serde_json in sled (keyed by order id) in the flat shape checkout has
/// always written (see [`stored`]), so records from before this type still load and a
/// rolled-back binary still reads what this one writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "stored::StoredOrder", into = "stored::StoredOrder")]
pub enum State {
    /// Not placed, as far as checkout knows; possibly with facts that came first.
    Unplaced(Early),
    /// Accepted and waiting for stock and payment, until its deadline.
    Pending(AcceptedOrder),
    Confirmed {
        order: AcceptedOrder,
        payment_id: PaymentId,
        confirmed_at_ms: i64,
    },
    Cancelled {
        order: AcceptedOrder,
        reason: CancelReason,
        /// Human-readable detail, as published in `OrderCancelled`.
        detail: String,
        /// The capture, when the order was confirmed before it was cancelled.
        payment_id: Option<PaymentId>,
        cancelled_at_ms: i64,
    },
    /// Failed validation; `placed` is kept to recognise a redelivery.
    Rejected {
        placed: OrderPlaced,
        problems: Vec<Problem>,
        rejected_at_ms: i64,
    },
}

impl Default for State {
    fn default() -> Self {
        State::Unplaced(Early::default())
    }
}

impl State {
    /// `None` while checkout has not seen the order placed.
    pub fn status(&self) -> Option<OrderStatus> {
        match self {
            State::Unplaced(_) => None,
            State::Pending(_) => Some(OrderStatus::Pending),
            State::Confirmed { .. } => Some(OrderStatus::Confirmed),
            State::Cancelled { .. } => Some(OrderStatus::Cancelled),
            State::Rejected { .. } => Some(OrderStatus::Rejected),
        }
    }

    /// The deadline the shell's timer must watch; `None` once the order left `Pending`.
    pub fn pending_deadline(&self) -> Option<i64> {
        match self {
            State::Pending(order) => Some(order.deadline_at_ms),
            _ => None,
        }
    }

    /// The accepted order, in every stage after a valid placement.
    pub fn accepted(&self) -> Option<&AcceptedOrder> {
        match self {
            State::Pending(order)
            | State::Confirmed { order, .. }
            | State::Cancelled { order, .. } => Some(order),
            State::Unplaced(_) | State::Rejected { .. } => None,
        }
    }

    /// The order as first received, valid or not.
    pub fn placed(&self) -> Option<&OrderPlaced> {
        match self {
            State::Rejected { placed, .. } => Some(placed),
            other => other.accepted().map(|o| &o.placed),
        }
    }

    /// The typed order, once a valid order was placed.
    pub fn order(&self) -> Option<&ValidOrder> {
        self.accepted().map(|o| &o.order)
    }

    /// The order id, once the order has been placed.
    pub fn order_id(&self) -> Option<&OrderId> {
        self.placed().map(|p| &p.order_id)
    }

    pub fn placed_at_ms(&self) -> Option<i64> {
        match self {
            State::Rejected { rejected_at_ms, .. } => Some(*rejected_at_ms),
            other => other.accepted().map(|o| o.placed_at_ms),
        }
    }

    /// When the order reached `Confirmed`, `Cancelled` or `Rejected` (last settlement wins).
    pub fn settled_at_ms(&self) -> Option<i64> {
        match self {
            State::Confirmed {
                confirmed_at_ms: at,
                ..
            }
            | State::Cancelled {
                cancelled_at_ms: at,
                ..
            }
            | State::Rejected {
                rejected_at_ms: at, ..
            } => Some(*at),
            State::Unplaced(_) | State::Pending(_) => None,
        }
    }

    /// The capture that confirmed the order, kept if it was cancelled afterwards.
    pub fn payment_id(&self) -> Option<&PaymentId> {
        match self {
            State::Confirmed { payment_id, .. } => Some(payment_id),
            State::Cancelled { payment_id, .. } => payment_id.as_ref(),
            _ => None,
        }
    }

    /// Why the order was cancelled, and the published detail.
    pub fn cancellation(&self) -> Option<(CancelReason, &str)> {
        match self {
            State::Cancelled { reason, detail, .. } => Some((*reason, detail)),
            _ => None,
        }
    }

    /// Every validation problem of a rejected order; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            State::Rejected { problems, .. } => problems,
            _ => &[],
        }
    }

    /// What arrived before the order, while it is not placed.
    pub fn early(&self) -> Option<&Early> {
        match self {
            State::Unplaced(early) => Some(early),
            _ => None,
        }
    }
}

/// What the shell knows that the domain must not look up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// The time of this decision by checkout's clock, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// How long a placed order may stay pending before it is cancelled with `timeout`.
    pub deadline_ms: i64,
}

/// What the shell feeds in: the events checkout consumes, plus its own timer.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Placed(OrderPlaced),
    StockReservationFailed(StockReservationFailed),
    PaymentCaptured(PaymentCaptured),
    PaymentDeclined(PaymentDeclined),
    CancellationRequested(OrderCancellationRequested),
    /// The shell's timer saw `now >= pending_deadline()`.
    DeadlinePassed,
}

impl Input {
    /// The order this input is about; `None` for the timer, which the shell sends per order.
    pub fn order_id(&self) -> Option<&OrderId> {
        match self {
            Input::Placed(e) => Some(&e.order_id),
            Input::StockReservationFailed(e) => Some(&e.order_id),
            Input::PaymentCaptured(e) => Some(&e.order_id),
            Input::PaymentDeclined(e) => Some(&e.order_id),
            Input::CancellationRequested(e) => Some(&e.order_id),
            Input::DeadlinePassed => None,
        }
    }
}

/// Checkout's internal facts about one order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    Accepted {
        placed: OrderPlaced,
        order: ValidOrder,
        placed_at_ms: i64,
        deadline_at_ms: i64,
    },
    Rejected {
        placed: OrderPlaced,
        problems: Vec<Problem>,
        at_ms: i64,
    },
    Confirmed {
        payment_id: PaymentId,
        at_ms: i64,
    },
    Cancelled {
        reason: CancelReason,
        detail: String,
        at_ms: i64,
    },
    CancellationRequestedEarly {
        reason: String,
    },
    OutcomeArrivedEarly {
        outcome: EarlyOutcome,
    },
}

/// Why an input cannot be applied; the shell dead-letters it with this text.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error(
        "order id `{order_id}` was already placed with different data; the first order stands"
    )]
    ConflictingOrderId { order_id: OrderId },
    #[error("an input about order `{got}` was applied to the record of order `{expected}`")]
    WrongOrder { expected: OrderId, got: OrderId },
}

/// Decides what an input changes. Pure; an empty result means there is nothing to do.
pub fn decide(state: &State, input: &Input, ctx: &Ctx) -> Result<Vec<Change>, Refusal> {
    if let (Some(expected), Some(got)) = (state.order_id(), input.order_id()) {
        if expected != got {
            return Err(Refusal::WrongOrder {
                expected: expected.clone(),
                got: got.clone(),
            });
        }
    }
    let changes = match input {
        Input::Placed(placed) => return place(state, placed, ctx),
        Input::StockReservationFailed(e) => settle_or_remember(
            state,
            EarlyOutcome::OutOfStock {
                detail: shortage_detail(&e.shortages),
            },
            ctx,
        ),
        Input::PaymentCaptured(e) => settle_or_remember(
            state,
            EarlyOutcome::PaymentCaptured {
                payment_id: e.payment_id.clone(),
            },
            ctx,
        ),
        Input::PaymentDeclined(e) => settle_or_remember(
            state,
            EarlyOutcome::PaymentDeclined {
                reason: e.reason.clone(),
            },
            ctx,
        ),
        Input::CancellationRequested(e) => request_cancellation(state, &e.reason, ctx),
        Input::DeadlinePassed => time_out(state, ctx),
    };
    Ok(changes)
}

fn place(state: &State, placed: &OrderPlaced, ctx: &Ctx) -> Result<Vec<Change>, Refusal> {
    let State::Unplaced(early) = state else {
        // A redelivery is harmless; a different order under a used id must not overwrite it.
        return if state.placed() == Some(placed) {
            Ok(Vec::new())
        } else {
            Err(Refusal::ConflictingOrderId {
                order_id: placed.order_id.clone(),
            })
        };
    };
    let order = match placed.validate() {
        Ok(order) => order,
        Err(problems) => {
            return Ok(vec![Change::Rejected {
                placed: placed.clone(),
                problems,
                at_ms: ctx.now_ms,
            }])
        }
    };
    let mut changes = vec![Change::Accepted {
        placed: placed.clone(),
        order,
        placed_at_ms: ctx.now_ms,
        deadline_at_ms: ctx.now_ms.saturating_add(ctx.deadline_ms),
    }];
    // Inventory and payment act on the order regardless, so an early cancellation must
    // be published as a real `OrderCancelled` for them to compensate. The customer's
    // wish wins over an early outcome: either way the money and stock come back.
    if let Some(reason) = &early.cancellation_requested {
        changes.push(Change::Cancelled {
            reason: CancelReason::CustomerRequest,
            detail: customer_detail(reason),
            at_ms: ctx.now_ms,
        });
    } else if let Some(outcome) = &early.outcome {
        changes.push(settle(outcome, ctx));
    }
    Ok(changes)
}

fn settle_or_remember(state: &State, outcome: EarlyOutcome, ctx: &Ctx) -> Vec<Change> {
    match state {
        State::Unplaced(Early { outcome: None, .. }) => {
            vec![Change::OutcomeArrivedEarly { outcome }]
        }
        State::Pending(_) => vec![settle(&outcome, ctx)],
        // Only the first early outcome counts. Settled orders ignore late outcomes:
        // payment refunds a late capture on its own when it sees `OrderCancelled`, and
        // stock was already released.
        _ => Vec::new(),
    }
}

fn settle(outcome: &EarlyOutcome, ctx: &Ctx) -> Change {
    match outcome {
        EarlyOutcome::OutOfStock { detail } => Change::Cancelled {
            reason: CancelReason::OutOfStock,
            detail: detail.clone(),
            at_ms: ctx.now_ms,
        },
        EarlyOutcome::PaymentCaptured { payment_id } => Change::Confirmed {
            payment_id: payment_id.clone(),
            at_ms: ctx.now_ms,
        },
        EarlyOutcome::PaymentDeclined { reason } => Change::Cancelled {
            reason: CancelReason::PaymentDeclined,
            detail: reason.clone(),
            at_ms: ctx.now_ms,
        },
    }
}

fn request_cancellation(state: &State, reason: &str, ctx: &Ctx) -> Vec<Change> {
    match state {
        State::Unplaced(Early {
            cancellation_requested: None,
            ..
        }) => vec![Change::CancellationRequestedEarly {
            reason: reason.to_owned(),
        }],
        // A confirmed order can still be cancelled: inventory puts the sold stock back
        // on the shelf and payment refunds when they see `OrderCancelled`.
        State::Pending(_) | State::Confirmed { .. } => vec![Change::Cancelled {
            reason: CancelReason::CustomerRequest,
            detail: customer_detail(reason),
            at_ms: ctx.now_ms,
        }],
        _ => Vec::new(),
    }
}

fn time_out(state: &State, ctx: &Ctx) -> Vec<Change> {
    match state {
        State::Pending(order) if ctx.now_ms >= order.deadline_at_ms => vec![Change::Cancelled {
            reason: CancelReason::Timeout,
            detail: format!(
                "no stock and payment outcome within {} ms of placing the order",
                order.deadline_at_ms.saturating_sub(order.placed_at_ms)
            ),
            at_ms: ctx.now_ms,
        }],
        // The timer may fire early or for an order that settled meanwhile.
        _ => Vec::new(),
    }
}

fn customer_detail(reason: &str) -> String {
    if reason.trim().is_empty() {
        "cancelled at the customer's request".to_owned()
    } else {
        reason.to_owned()
    }
}

fn shortage_detail(shortages: &[Shortage]) -> String {
    let lines: Vec<String> = shortages
        .iter()
        .map(|s| {
            format!(
                "{} (requested {}, available {})",
                s.sku, s.requested, s.available
            )
        })
        .collect();
    format!("not enough stock: {}", lines.join("; "))
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
        (
            State::Unplaced(_),
            Change::Accepted {
                placed,
                order,
                placed_at_ms,
                deadline_at_ms,
            },
        ) => State::Pending(AcceptedOrder {
            placed: placed.clone(),
            order: order.clone(),
            placed_at_ms: *placed_at_ms,
            deadline_at_ms: *deadline_at_ms,
        }),
        (
            State::Unplaced(_),
            Change::Rejected {
                placed,
                problems,
                at_ms,
            },
        ) => State::Rejected {
            placed: placed.clone(),
            problems: problems.clone(),
            rejected_at_ms: *at_ms,
        },
        (State::Pending(order), Change::Confirmed { payment_id, at_ms }) => State::Confirmed {
            order,
            payment_id: payment_id.clone(),
            confirmed_at_ms: *at_ms,
        },
        (
            State::Pending(order),
            Change::Cancelled {
                reason,
                detail,
                at_ms,
            },
        ) => State::Cancelled {
            order,
            reason: *reason,
            detail: detail.clone(),
            payment_id: None,
            cancelled_at_ms: *at_ms,
        },
        (
            State::Confirmed {
                order, payment_id, ..
            },
            Change::Cancelled {
                reason,
                detail,
                at_ms,
            },
        ) => State::Cancelled {
            order,
            reason: *reason,
            detail: detail.clone(),
            payment_id: Some(payment_id),
            cancelled_at_ms: *at_ms,
        },
        (State::Unplaced(early), Change::CancellationRequestedEarly { reason }) => {
            State::Unplaced(Early {
                cancellation_requested: Some(reason.clone()),
                ..early
            })
        }
        (State::Unplaced(early), Change::OutcomeArrivedEarly { outcome }) => {
            State::Unplaced(Early {
                outcome: Some(outcome.clone()),
                ..early
            })
        }
        (unchanged, _) => unchanged,
    }
}

/// The public event a change publishes, read from the state after the change.
pub fn published(state_after: &State, change: &Change) -> Option<Event> {
    match change {
        Change::Rejected {
            placed, problems, ..
        } => Some(
            OrderRejected {
                order_id: placed.order_id.clone(),
                problems: problems.clone(),
            }
            .into(),
        ),
        Change::Confirmed { .. } => {
            let order = state_after.order()?;
            Some(
                OrderConfirmed {
                    order_id: order.order_id.clone(),
                    total: order.total,
                    currency: order.currency,
                }
                .into(),
            )
        }
        Change::Cancelled { reason, detail, .. } => Some(
            OrderCancelled {
                order_id: state_after.order_id()?.clone(),
                reason: *reason,
                detail: detail.clone(),
            }
            .into(),
        ),
        Change::Accepted { .. }
        | Change::CancellationRequestedEarly { .. }
        | Change::OutcomeArrivedEarly { .. } => None,
    }
}

/// Checkout's rules as a [`Decider`]; the shell drives it through `decide` and `apply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checkout;

impl Decider for Checkout {
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
    use shop_events::{Currency, Money, OrderLineInput, ProblemCode, Sku};

    const T0: i64 = 1_000_000;
    const DEADLINE: i64 = 30_000;

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).expect("valid order id")
    }

    fn pid(s: &str) -> PaymentId {
        PaymentId::parse(s).expect("valid payment id")
    }

    fn sku(s: &str) -> Sku {
        Sku::parse(s).expect("valid sku")
    }

    fn placed() -> OrderPlaced {
        OrderPlaced {
            order_id: id("o-1"),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            lines: vec![
                OrderLineInput {
                    sku: "sku-a".into(),
                    quantity: 2,
                    unit_price: 500,
                },
                OrderLineInput {
                    sku: "sku-b".into(),
                    quantity: 1,
                    unit_price: 250,
                },
            ],
            total: 1250,
            payment_token: "tok_visa".into(),
        }
    }

    fn placed_input() -> Input {
        Input::Placed(placed())
    }

    fn stock_failed() -> Input {
        Input::StockReservationFailed(StockReservationFailed {
            order_id: id("o-1"),
            shortages: vec![
                Shortage {
                    sku: sku("sku-a"),
                    requested: 2,
                    available: 1,
                },
                Shortage {
                    sku: sku("sku-b"),
                    requested: 1,
                    available: 0,
                },
            ],
        })
    }

    fn captured() -> Input {
        Input::PaymentCaptured(PaymentCaptured {
            order_id: id("o-1"),
            payment_id: pid("pay-1"),
            amount: Money(1250),
            currency: eur(),
        })
    }

    fn declined() -> Input {
        Input::PaymentDeclined(PaymentDeclined {
            order_id: id("o-1"),
            reason: "card_declined".into(),
            amount: Money(1250),
        })
    }

    fn cancel_request(reason: &str) -> Input {
        Input::CancellationRequested(OrderCancellationRequested {
            order_id: id("o-1"),
            reason: reason.into(),
        })
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("valid currency")
    }

    fn cancelled(reason: CancelReason, detail: &str) -> Event {
        OrderCancelled {
            order_id: id("o-1"),
            reason,
            detail: detail.into(),
        }
        .into()
    }

    fn confirmed() -> Event {
        OrderConfirmed {
            order_id: id("o-1"),
            total: Money(1250),
            currency: eur(),
        }
        .into()
    }

    type Given = spec::Given<Checkout>;

    /// Builds the state by deciding and applying each input at `T0`.
    fn given(inputs: impl IntoIterator<Item = Input>) -> Given {
        spec::given(ctx(T0), inputs)
    }

    fn ctx(now_ms: i64) -> Ctx {
        Ctx {
            now_ms,
            deadline_ms: DEADLINE,
        }
    }

    /// The next input arrives at `now_ms`.
    trait At {
        fn at(self, now_ms: i64) -> Self;
    }

    impl At for Given {
        fn at(self, now_ms: i64) -> Given {
            self.with_ctx(ctx(now_ms))
        }
    }

    #[test]
    fn a_valid_order_is_pending_with_a_deadline_and_publishes_nothing() {
        given([]).when(placed_input()).then(vec![]).and(|s| {
            assert_eq!(s.status(), Some(OrderStatus::Pending));
            assert_eq!(s.placed_at_ms(), Some(T0));
            assert_eq!(s.pending_deadline(), Some(T0 + DEADLINE));
            assert_eq!(s.placed(), Some(&placed()));
            assert_eq!(
                s.order().map(|o| o.total),
                Some(Money(1250)),
                "the typed order is kept"
            );
            assert_eq!(s.settled_at_ms(), None);
        });
    }

    #[test]
    fn an_invalid_order_is_rejected_with_every_problem() {
        let mut bad = placed();
        bad.currency = "euro".into();
        bad.lines[0].quantity = 0;
        bad.payment_token = String::new();
        let problems = bad.validate().expect_err("the order is invalid");
        assert!(problems.len() >= 3, "several problems: {problems:?}");
        given([])
            .when(Input::Placed(bad))
            .then(vec![OrderRejected {
                order_id: id("o-1"),
                problems: problems.clone(),
            }
            .into()])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Rejected));
                assert_eq!(s.problems(), problems);
                assert!(s
                    .problems()
                    .iter()
                    .any(|p| p.code == ProblemCode::InvalidCurrency));
                assert_eq!(s.settled_at_ms(), Some(T0));
                assert_eq!(s.pending_deadline(), None);
            });
    }

    #[test]
    fn an_identical_order_placed_again_is_a_no_op() {
        given([placed_input()])
            .when(placed_input())
            .then_nothing_happens();
    }

    #[test]
    fn a_rejected_order_placed_again_is_a_no_op() {
        let mut bad = placed();
        bad.total = 1;
        given([Input::Placed(bad.clone())])
            .when(Input::Placed(bad))
            .then_nothing_happens();
    }

    #[test]
    fn a_different_order_under_a_used_id_is_refused_and_the_first_stands() {
        let mut other = placed();
        other.customer_id = "c-2".into();
        given([placed_input()])
            .when(Input::Placed(other))
            .then_refused(Refusal::ConflictingOrderId {
                order_id: id("o-1"),
            })
            .and(|s| assert_eq!(s.placed(), Some(&placed())));
    }

    #[test]
    fn an_input_about_another_order_is_refused() {
        let mut other = placed();
        other.order_id = id("o-2");
        given([placed_input()])
            .when(Input::Placed(other))
            .then_refused(Refusal::WrongOrder {
                expected: id("o-1"),
                got: id("o-2"),
            });
    }

    #[test]
    fn the_order_is_cancelled_out_of_stock_listing_every_shortage_when_reservation_fails() {
        given([placed_input()])
            .at(T0 + 5)
            .when(stock_failed())
            .then(vec![cancelled(
                CancelReason::OutOfStock,
                "not enough stock: sku-a (requested 2, available 1); sku-b (requested 1, available 0)",
            )])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Cancelled));
                assert_eq!(s.cancellation().map(|(reason, _)| reason), Some(CancelReason::OutOfStock));
                assert_eq!(s.settled_at_ms(), Some(T0 + 5));
                assert_eq!(s.pending_deadline(), None);
            });
    }

    #[test]
    fn the_order_is_confirmed_when_payment_is_captured() {
        given([placed_input()])
            .at(T0 + 7)
            .when(captured())
            .then(vec![confirmed()])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Confirmed));
                assert_eq!(s.payment_id(), Some(&pid("pay-1")));
                assert_eq!(s.settled_at_ms(), Some(T0 + 7));
                assert_eq!(s.pending_deadline(), None);
            });
    }

    #[test]
    fn the_order_is_cancelled_when_payment_is_declined() {
        given([placed_input()])
            .when(declined())
            .then(vec![cancelled(
                CancelReason::PaymentDeclined,
                "card_declined",
            )])
            .and(|s| assert_eq!(s.status(), Some(OrderStatus::Cancelled)));
    }

    #[test]
    fn a_pending_order_is_cancelled_at_the_customers_request() {
        given([placed_input()])
            .when(cancel_request("changed my mind"))
            .then(vec![cancelled(
                CancelReason::CustomerRequest,
                "changed my mind",
            )]);
    }

    #[test]
    fn a_cancellation_without_a_reason_still_gets_a_readable_detail() {
        given([placed_input()])
            .when(cancel_request(""))
            .then(vec![cancelled(
                CancelReason::CustomerRequest,
                "cancelled at the customer's request",
            )]);
    }

    #[test]
    fn a_confirmed_order_is_cancelled_at_the_customers_request_so_others_compensate() {
        given([placed_input(), captured()])
            .at(T0 + 100)
            .when(cancel_request("returned"))
            .then(vec![cancelled(CancelReason::CustomerRequest, "returned")])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Cancelled));
                assert_eq!(
                    s.payment_id(),
                    Some(&pid("pay-1")),
                    "the capture is remembered"
                );
                assert_eq!(s.settled_at_ms(), Some(T0 + 100));
            });
    }

    #[test]
    fn a_cancellation_request_for_a_cancelled_order_is_a_no_op() {
        given([placed_input(), declined()])
            .when(cancel_request("too late"))
            .then_nothing_happens();
    }

    #[test]
    fn a_cancellation_request_for_a_rejected_order_is_a_no_op() {
        let mut bad = placed();
        bad.total = 1;
        given([Input::Placed(bad)])
            .when(cancel_request("too late"))
            .then_nothing_happens();
    }

    #[test]
    fn a_cancellation_requested_before_the_order_leaves_a_silent_tombstone() {
        given([])
            .when(cancel_request("oops"))
            .then(vec![])
            .and(|s| {
                assert_eq!(
                    s.early().and_then(|e| e.cancellation_requested.as_deref()),
                    Some("oops")
                );
                assert_eq!(s.status(), None);
            });
    }

    #[test]
    fn a_repeated_early_cancellation_request_is_a_no_op() {
        given([cancel_request("oops")])
            .when(cancel_request("oops again"))
            .then_nothing_happens();
    }

    #[test]
    fn an_order_placed_after_an_early_cancellation_is_accepted_then_cancelled_at_once() {
        given([cancel_request("oops")])
            .when(placed_input())
            .then(vec![cancelled(CancelReason::CustomerRequest, "oops")])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Cancelled));
                assert_eq!(s.placed(), Some(&placed()));
                assert_eq!(s.settled_at_ms(), Some(T0));
                assert_eq!(s.pending_deadline(), None);
            });
    }

    #[test]
    fn an_invalid_order_placed_after_an_early_cancellation_is_only_rejected() {
        let mut bad = placed();
        bad.total = 1;
        let problems = bad.validate().expect_err("invalid");
        given([cancel_request("oops")])
            .when(Input::Placed(bad))
            .then(vec![OrderRejected {
                order_id: id("o-1"),
                problems,
            }
            .into()]);
    }

    #[test]
    fn a_pending_order_times_out_once_the_deadline_passes() {
        given([placed_input()])
            .at(T0 + DEADLINE)
            .when(Input::DeadlinePassed)
            .then(vec![cancelled(
                CancelReason::Timeout,
                "no stock and payment outcome within 30000 ms of placing the order",
            )])
            .and(|s| assert_eq!(s.settled_at_ms(), Some(T0 + DEADLINE)));
    }

    #[test]
    fn a_timer_firing_before_the_deadline_is_a_no_op() {
        given([placed_input()])
            .at(T0 + DEADLINE - 1)
            .when(Input::DeadlinePassed)
            .then_nothing_happens();
    }

    #[test]
    fn a_timer_firing_after_settlement_is_a_no_op() {
        given([placed_input(), captured()])
            .at(T0 + DEADLINE * 2)
            .when(Input::DeadlinePassed)
            .then_nothing_happens();
    }

    #[test]
    fn a_timer_for_an_unknown_order_is_a_no_op() {
        given([]).when(Input::DeadlinePassed).then_nothing_happens();
    }

    #[test]
    fn a_capture_after_cancellation_is_a_no_op_because_payment_refunds_it() {
        given([placed_input(), cancel_request("bye")])
            .when(captured())
            .then_nothing_happens();
    }

    #[test]
    fn late_outcomes_after_confirmation_are_no_ops() {
        for late in [captured(), declined(), stock_failed()] {
            given([placed_input(), captured()])
                .when(late)
                .then_nothing_happens();
        }
    }

    #[test]
    fn late_outcomes_after_rejection_are_no_ops() {
        let mut bad = placed();
        bad.total = 1;
        for late in [captured(), declined(), stock_failed()] {
            given([Input::Placed(bad.clone())])
                .when(late)
                .then_nothing_happens();
        }
    }

    #[test]
    fn duplicate_outcomes_after_cancellation_are_no_ops() {
        for dup in [declined(), stock_failed(), cancel_request("again")] {
            given([placed_input(), declined()])
                .when(dup)
                .then_nothing_happens();
        }
    }

    #[test]
    fn outcomes_for_an_unknown_order_are_remembered_silently() {
        for early in [captured(), declined(), stock_failed()] {
            given([]).when(early).then(vec![]).and(|s| {
                assert_eq!(s.status(), None);
                assert!(s.early().is_some_and(|e| e.outcome.is_some()));
            });
        }
    }

    #[test]
    fn an_order_placed_after_its_capture_is_confirmed_at_once() {
        given([captured()])
            .when(placed_input())
            .then(vec![confirmed()])
            .and(|s| {
                assert_eq!(s.status(), Some(OrderStatus::Confirmed));
                assert_eq!(s.payment_id(), Some(&pid("pay-1")));
            });
    }

    #[test]
    fn an_order_placed_after_its_stock_shortage_is_cancelled_at_once() {
        given([stock_failed()])
            .when(placed_input())
            .then(vec![cancelled(
            CancelReason::OutOfStock,
            "not enough stock: sku-a (requested 2, available 1); sku-b (requested 1, available 0)",
        )]);
    }

    #[test]
    fn an_order_placed_after_its_decline_is_cancelled_at_once() {
        given([declined()])
            .when(placed_input())
            .then(vec![cancelled(
                CancelReason::PaymentDeclined,
                "card_declined",
            )]);
    }

    #[test]
    fn only_the_first_early_outcome_is_remembered() {
        given([declined()]).when(captured()).then_nothing_happens();
    }

    #[test]
    fn an_early_cancellation_wins_over_an_early_capture() {
        given([captured(), cancel_request("oops")])
            .when(placed_input())
            .then(vec![cancelled(CancelReason::CustomerRequest, "oops")]);
    }

    #[test]
    fn the_record_survives_a_json_round_trip() {
        for state in [
            given([placed_input()]).state,
            given([placed_input(), captured()]).state,
            given([placed_input(), stock_failed()]).state,
            given([cancel_request("x"), captured()]).state,
        ] {
            let json = serde_json::to_string(&state).expect("serialises");
            let back: State = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(back, state);
        }
    }

    #[test]
    fn every_change_survives_a_json_round_trip() {
        let mut changes = Vec::new();
        for inputs in [
            vec![cancel_request("oops"), captured(), placed_input()],
            vec![placed_input(), stock_failed()],
            vec![Input::Placed(OrderPlaced {
                total: 1,
                ..placed()
            })],
        ] {
            let mut state = State::default();
            for input in inputs {
                let c = decide(&state, &input, &ctx(T0)).expect("accepted");
                Checkout::apply(&mut state, &c);
                changes.extend(c);
            }
        }
        assert_eq!(changes.len(), 7);
        for change in changes {
            let json = serde_json::to_string(&change).expect("serialises");
            let back: Change = serde_json::from_str(&json).expect("deserialises");
            assert_eq!(back, change);
        }
    }

    #[test]
    fn the_status_is_stored_in_snake_case() {
        let json = serde_json::to_value(OrderStatus::Pending).expect("serialises");
        assert_eq!(json, serde_json::json!("pending"));
    }

    #[test]
    fn an_empty_record_deserialises_as_unknown() {
        let state: State = serde_json::from_str("{}").expect("defaults fill in");
        assert_eq!(state, State::default());
        assert_eq!(state.status(), None);
    }

    const SHORTAGE: &str =
        "not enough stock: sku-a (requested 2, available 1); sku-b (requested 1, available 0)";

    fn accepted() -> AcceptedOrder {
        AcceptedOrder {
            placed: placed(),
            order: placed().validate().expect("valid order"),
            placed_at_ms: T0,
            deadline_at_ms: T0 + DEADLINE,
        }
    }

    fn total_mismatch() -> OrderPlaced {
        OrderPlaced {
            total: 1,
            ..placed()
        }
    }

    fn early(outcome: Option<EarlyOutcome>, cancellation: Option<&str>) -> State {
        State::Unplaced(Early {
            outcome,
            cancellation_requested: cancellation.map(str::to_owned),
        })
    }

    /// Records exactly as checkout wrote them while `State` was a flat struct (captured
    /// by serialising that struct), with the stage each must load as.
    fn legacy_records() -> Vec<(&'static str, &'static str, State)> {
        vec![
            (
                "pending",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"pending","reason":null,"detail":null,"problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":null,"payment_id":null,"cancel_requested":null,"early_outcome":null}"#,
                State::Pending(accepted()),
            ),
            (
                "confirmed",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"confirmed","reason":null,"detail":null,"problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1000007,"payment_id":"pay-1","cancel_requested":null,"early_outcome":null}"#,
                State::Confirmed {
                    order: accepted(),
                    payment_id: pid("pay-1"),
                    confirmed_at_ms: T0 + 7,
                },
            ),
            (
                "cancelled_out_of_stock",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"cancelled","reason":"out_of_stock","detail":"not enough stock: sku-a (requested 2, available 1); sku-b (requested 1, available 0)","problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1000005,"payment_id":null,"cancel_requested":null,"early_outcome":null}"#,
                State::Cancelled {
                    order: accepted(),
                    reason: CancelReason::OutOfStock,
                    detail: SHORTAGE.into(),
                    payment_id: None,
                    cancelled_at_ms: T0 + 5,
                },
            ),
            (
                "cancelled_after_confirm",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"cancelled","reason":"customer_request","detail":"returned","problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1000100,"payment_id":"pay-1","cancel_requested":null,"early_outcome":null}"#,
                State::Cancelled {
                    order: accepted(),
                    reason: CancelReason::CustomerRequest,
                    detail: "returned".into(),
                    payment_id: Some(pid("pay-1")),
                    cancelled_at_ms: T0 + 100,
                },
            ),
            (
                "cancelled_timeout",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"cancelled","reason":"timeout","detail":"no stock and payment outcome within 30000 ms of placing the order","problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1030000,"payment_id":null,"cancel_requested":null,"early_outcome":null}"#,
                State::Cancelled {
                    order: accepted(),
                    reason: CancelReason::Timeout,
                    detail: "no stock and payment outcome within 30000 ms of placing the order"
                        .into(),
                    payment_id: None,
                    cancelled_at_ms: T0 + DEADLINE,
                },
            ),
            (
                "rejected",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1,"payment_token":"tok_visa"},"order":null,"status":"rejected","reason":null,"detail":null,"problems":[{"field":"total","code":"total_mismatch","message":"is 1 but the lines add up to 1250"}],"placed_at_ms":1000000,"deadline_at_ms":null,"settled_at_ms":1000000,"payment_id":null,"cancel_requested":null,"early_outcome":null}"#,
                State::Rejected {
                    placed: total_mismatch(),
                    problems: vec![Problem {
                        field: "total".into(),
                        code: ProblemCode::TotalMismatch,
                        message: "is 1 but the lines add up to 1250".into(),
                    }],
                    rejected_at_ms: T0,
                },
            ),
            (
                "early_capture",
                r#"{"placed":null,"order":null,"status":null,"reason":null,"detail":null,"problems":[],"placed_at_ms":null,"deadline_at_ms":null,"settled_at_ms":null,"payment_id":null,"cancel_requested":null,"early_outcome":{"kind":"payment_captured","payment_id":"pay-1"}}"#,
                early(
                    Some(EarlyOutcome::PaymentCaptured {
                        payment_id: pid("pay-1"),
                    }),
                    None,
                ),
            ),
            (
                "early_decline",
                r#"{"placed":null,"order":null,"status":null,"reason":null,"detail":null,"problems":[],"placed_at_ms":null,"deadline_at_ms":null,"settled_at_ms":null,"payment_id":null,"cancel_requested":null,"early_outcome":{"kind":"payment_declined","reason":"card_declined"}}"#,
                early(
                    Some(EarlyOutcome::PaymentDeclined {
                        reason: "card_declined".into(),
                    }),
                    None,
                ),
            ),
            (
                "early_stock",
                r#"{"placed":null,"order":null,"status":null,"reason":null,"detail":null,"problems":[],"placed_at_ms":null,"deadline_at_ms":null,"settled_at_ms":null,"payment_id":null,"cancel_requested":null,"early_outcome":{"kind":"out_of_stock","detail":"not enough stock: sku-a (requested 2, available 1); sku-b (requested 1, available 0)"}}"#,
                early(
                    Some(EarlyOutcome::OutOfStock {
                        detail: SHORTAGE.into(),
                    }),
                    None,
                ),
            ),
            (
                "early_cancel",
                r#"{"placed":null,"order":null,"status":null,"reason":null,"detail":null,"problems":[],"placed_at_ms":null,"deadline_at_ms":null,"settled_at_ms":null,"payment_id":null,"cancel_requested":"oops","early_outcome":null}"#,
                early(None, Some("oops")),
            ),
            (
                "early_both",
                r#"{"placed":null,"order":null,"status":null,"reason":null,"detail":null,"problems":[],"placed_at_ms":null,"deadline_at_ms":null,"settled_at_ms":null,"payment_id":null,"cancel_requested":"oops","early_outcome":{"kind":"payment_captured","payment_id":"pay-1"}}"#,
                early(
                    Some(EarlyOutcome::PaymentCaptured {
                        payment_id: pid("pay-1"),
                    }),
                    Some("oops"),
                ),
            ),
            (
                "placed_after_early_cancel",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"cancelled","reason":"customer_request","detail":"oops","problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1000000,"payment_id":null,"cancel_requested":"oops","early_outcome":{"kind":"payment_captured","payment_id":"pay-1"}}"#,
                State::Cancelled {
                    order: accepted(),
                    reason: CancelReason::CustomerRequest,
                    detail: "oops".into(),
                    payment_id: None,
                    cancelled_at_ms: T0,
                },
            ),
            (
                "placed_after_early_capture",
                r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"order":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[{"sku":"sku-a","quantity":2,"unit_price":500},{"sku":"sku-b","quantity":1,"unit_price":250}],"total":1250,"payment_token":"tok_visa"},"status":"confirmed","reason":null,"detail":null,"problems":[],"placed_at_ms":1000000,"deadline_at_ms":1030000,"settled_at_ms":1000000,"payment_id":"pay-1","cancel_requested":null,"early_outcome":{"kind":"payment_captured","payment_id":"pay-1"}}"#,
                State::Confirmed {
                    order: accepted(),
                    payment_id: pid("pay-1"),
                    confirmed_at_ms: T0,
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

    /// What `checkout.orders.get` shows is read through these accessors: each must give
    /// what the old record's field said, so the view is unchanged for old records.
    #[test]
    fn legacy_records_read_the_same_through_the_accessors() {
        for (name, json, _) in legacy_records() {
            let old: serde_json::Value = serde_json::from_str(json).expect("json");
            let state: State = serde_json::from_str(json).expect("loads");
            let pending = old["status"] == "pending";
            let as_json = |v: Option<i64>| serde_json::json!(v);
            assert_eq!(serde_json::json!(state.status()), old["status"], "{name}");
            assert_eq!(serde_json::json!(state.placed()), old["placed"], "{name}");
            assert_eq!(
                serde_json::json!(state.cancellation().map(|(r, _)| r)),
                old["reason"],
                "{name}"
            );
            assert_eq!(
                serde_json::json!(state.cancellation().map(|(_, d)| d)),
                old["detail"],
                "{name}"
            );
            assert_eq!(
                serde_json::json!(state.problems()),
                old["problems"],
                "{name}"
            );
            assert_eq!(
                serde_json::json!(state.payment_id()),
                old["payment_id"],
                "{name}"
            );
            assert_eq!(as_json(state.placed_at_ms()), old["placed_at_ms"], "{name}");
            assert_eq!(
                as_json(state.settled_at_ms()),
                old["settled_at_ms"],
                "{name}"
            );
            let old_deadline = if pending {
                old["deadline_at_ms"].clone()
            } else {
                serde_json::Value::Null
            };
            assert_eq!(as_json(state.pending_deadline()), old_deadline, "{name}");
        }
    }

    #[test]
    fn a_record_written_now_loads_as_the_same_stage_in_the_old_flat_shape() {
        for (name, json, state) in legacy_records() {
            let written = serde_json::to_value(&state).expect("serialises");
            let old: serde_json::Value = serde_json::from_str(json).expect("json");
            // Every field written now has the value the old struct wrote for it (the early
            // facts are dropped once the order is placed), so an older binary reads it the same.
            let object = written.as_object().expect("an object");
            for (field, value) in object {
                assert_eq!(value, &old[field.as_str()], "{name}: {field}");
            }
            let back: State = serde_json::from_value(written).expect("deserialises");
            assert_eq!(back, state, "{name}");
        }
    }

    #[test]
    fn a_record_whose_stage_lacks_its_data_is_refused() {
        for json in [
            r#"{"status":"pending"}"#,
            r#"{"status":"confirmed","placed_at_ms":1}"#,
            r#"{"status":"rejected"}"#,
            r#"{"placed":{"order_id":"o-1","customer_id":"c-1","currency":"EUR","lines":[],"total":0,"payment_token":"t"}}"#,
        ] {
            let result = serde_json::from_str::<State>(json);
            assert!(result.is_err(), "{json} must not load: {result:?}");
        }
    }
}
