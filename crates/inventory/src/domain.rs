//! Inventory's pure reservation rules: reserve an order's lines all at once or not at
//! all, turn a reservation into a sale, give stock back on cancellation, and count
//! replenishments. No I/O: the shell loads a view, decides, evolves and stores it.
//!
//! A [`State`] is a view of one order's reservation plus the stock levels of the skus
//! that input touches ([`skus_needed`]). Stock levels are shared between orders, so the
//! shell must load, decide and store a view in one transaction over those sku keys.
//! After `evolve`, every sku in `state.stock` is to be written back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shop_decider::Decider;
use shop_events::{
    Event, OrderCancelled, OrderConfirmed, OrderId, OrderPlaced, Shortage, Sku, StockCommitted,
    StockLine, StockReleased, StockReplenished, StockReservationFailed, StockReserved,
};

/// How much of one sku is on the shelf and how much of that is held for orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockLevel {
    /// What a new order may still reserve.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// Where one order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Every line is held for the order.
    Reserved,
    /// The order was confirmed: the held stock left the shelf.
    Committed,
    /// The order was cancelled: held or sold stock is available again.
    Released,
    /// Some line was short; nothing was held.
    Failed,
    /// The order broke the rules; nothing was held.
    Rejected,
    /// Tombstone: the cancellation came first, so the order must never reserve.
    CancelledBeforePlaced,
}

/// One order's reservation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub status: ReservationStatus,
    /// The lines requested (empty for `Rejected` and `CancelledBeforePlaced`).
    pub lines: Vec<StockLine>,
}

/// A view of one order's reservation and the stock levels the current input touches.
/// A replenishment view has no reservation and one sku. A missing sku means 0 on hand.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub reservation: Option<Reservation>,
    pub stock: BTreeMap<Sku, StockLevel>,
}

impl State {
    /// The stock level of a sku, 0/0 if the view does not hold it.
    pub fn level(&self, sku: &Sku) -> StockLevel {
        self.stock.get(sku).copied().unwrap_or_default()
    }
}

/// Nothing from outside is needed to decide; kept for the same shape as the other services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ctx;

/// The events inventory consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    OrderPlaced(OrderPlaced),
    OrderConfirmed(OrderConfirmed),
    OrderCancelled(OrderCancelled),
    StockReplenished(StockReplenished),
}

/// Inventory's internal facts. Each carries the order id so `published` can name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    Reserved {
        order_id: OrderId,
        lines: Vec<StockLine>,
    },
    ReservationFailed {
        order_id: OrderId,
        lines: Vec<StockLine>,
        shortages: Vec<Shortage>,
    },
    /// Checkout rejects such an order; inventory only records that it saw it.
    InvalidOrderRecorded {
        order_id: OrderId,
    },
    Committed {
        order_id: OrderId,
        lines: Vec<StockLine>,
    },
    /// Held stock of a cancelled order is no longer held.
    ReservationReleased {
        order_id: OrderId,
        lines: Vec<StockLine>,
    },
    /// Sold stock of a cancelled, already confirmed order went back on the shelf.
    SaleReturned {
        order_id: OrderId,
        lines: Vec<StockLine>,
    },
    CancelledBeforePlaced {
        order_id: OrderId,
    },
    Replenished {
        sku: Sku,
        quantity: u32,
    },
}

/// Why an input cannot be applied; the shell dead-letters it with this text.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("adding stock to sku `{sku}` would overflow its on-hand count")]
    StockOverflow { sku: Sku },
}

/// The skus whose stock levels the shell must load into the view for this input.
pub fn skus_needed(input: &Input, reservation: Option<&Reservation>) -> Vec<Sku> {
    match input {
        // An existing record makes the order a no-op, so no stock is needed.
        Input::OrderPlaced(placed) if reservation.is_none() => placed
            .validate()
            .map(|order| order.lines.into_iter().map(|l| l.sku).collect())
            .unwrap_or_default(),
        Input::OrderPlaced(_) => Vec::new(),
        Input::OrderConfirmed(_) | Input::OrderCancelled(_) => reservation
            .map(|r| r.lines.iter().map(|l| l.sku.clone()).collect())
            .unwrap_or_default(),
        Input::StockReplenished(e) => vec![e.sku.clone()],
    }
}

/// Decides what an input changes. Pure; an empty result means there is nothing to do.
pub fn decide(state: &State, input: &Input, _ctx: &Ctx) -> Result<Vec<Change>, Refusal> {
    match input {
        Input::OrderPlaced(placed) => Ok(reserve(state, placed)),
        Input::OrderConfirmed(e) => Ok(commit(state, &e.order_id)),
        Input::OrderCancelled(e) => release(state, &e.order_id),
        Input::StockReplenished(e) => replenish(state, e),
    }
}

fn reserve(state: &State, placed: &OrderPlaced) -> Vec<Change> {
    // Any record, the tombstone included, means this order was handled already.
    if state.reservation.is_some() {
        return Vec::new();
    }
    let order_id = placed.order_id.clone();
    let order = match placed.validate() {
        Ok(order) => order,
        Err(_) => return vec![Change::InvalidOrderRecorded { order_id }],
    };
    let lines: Vec<StockLine> = order
        .lines
        .into_iter()
        .map(|l| StockLine {
            sku: l.sku,
            quantity: l.quantity,
        })
        .collect();
    // Validation guarantees each sku appears once, so checking line by line is exact.
    let shortages: Vec<Shortage> = lines
        .iter()
        .filter_map(|line| {
            let available = state.level(&line.sku).available();
            (available < i64::from(line.quantity)).then(|| Shortage {
                sku: line.sku.clone(),
                requested: line.quantity,
                available,
            })
        })
        .collect();
    if shortages.is_empty() {
        vec![Change::Reserved { order_id, lines }]
    } else {
        vec![Change::ReservationFailed {
            order_id,
            lines,
            shortages,
        }]
    }
}

fn commit(state: &State, order_id: &OrderId) -> Vec<Change> {
    match &state.reservation {
        Some(r) if r.status == ReservationStatus::Reserved => vec![Change::Committed {
            order_id: order_id.clone(),
            lines: r.lines.clone(),
        }],
        _ => Vec::new(),
    }
}

fn release(state: &State, order_id: &OrderId) -> Result<Vec<Change>, Refusal> {
    let order_id = order_id.clone();
    let Some(reservation) = &state.reservation else {
        // The cancellation overtook the order: remember it so the order never reserves.
        return Ok(vec![Change::CancelledBeforePlaced { order_id }]);
    };
    let lines = reservation.lines.clone();
    Ok(match reservation.status {
        ReservationStatus::Reserved => vec![Change::ReservationReleased { order_id, lines }],
        ReservationStatus::Committed => {
            for line in &lines {
                add_on_hand(state, &line.sku, line.quantity)?;
            }
            vec![Change::SaleReturned { order_id, lines }]
        }
        ReservationStatus::Released
        | ReservationStatus::Failed
        | ReservationStatus::Rejected
        | ReservationStatus::CancelledBeforePlaced => Vec::new(),
    })
}

fn replenish(state: &State, e: &StockReplenished) -> Result<Vec<Change>, Refusal> {
    // Replenishments are not idempotent by content (two deliveries of 5 are 10);
    // the shell's inbox deduplicates redeliveries by event id.
    if e.quantity == 0 {
        return Ok(Vec::new());
    }
    add_on_hand(state, &e.sku, e.quantity)?;
    Ok(vec![Change::Replenished {
        sku: e.sku.clone(),
        quantity: e.quantity,
    }])
}

fn add_on_hand(state: &State, sku: &Sku, quantity: u32) -> Result<i64, Refusal> {
    state
        .level(sku)
        .on_hand
        .checked_add(i64::from(quantity))
        .ok_or_else(|| Refusal::StockOverflow { sku: sku.clone() })
}

/// Applies one change. Pure and infallible: `decide` already checked every bound,
/// and the saturating arithmetic only guards against a corrupt stored view.
pub fn evolve(state: &mut State, change: &Change) {
    match change {
        Change::Reserved { lines, .. } => {
            adjust(state, lines, |level, q| {
                level.reserved = level.reserved.saturating_add(q)
            });
            record(state, ReservationStatus::Reserved, lines);
        }
        Change::ReservationFailed { lines, .. } => {
            record(state, ReservationStatus::Failed, lines);
        }
        Change::InvalidOrderRecorded { .. } => record(state, ReservationStatus::Rejected, &[]),
        Change::Committed { lines, .. } => {
            adjust(state, lines, |level, q| {
                level.on_hand = level.on_hand.saturating_sub(q);
                level.reserved = level.reserved.saturating_sub(q);
            });
            record(state, ReservationStatus::Committed, lines);
        }
        Change::ReservationReleased { lines, .. } => {
            adjust(state, lines, |level, q| {
                level.reserved = level.reserved.saturating_sub(q)
            });
            record(state, ReservationStatus::Released, lines);
        }
        Change::SaleReturned { lines, .. } => {
            adjust(state, lines, |level, q| {
                level.on_hand = level.on_hand.saturating_add(q)
            });
            record(state, ReservationStatus::Released, lines);
        }
        Change::CancelledBeforePlaced { .. } => {
            record(state, ReservationStatus::CancelledBeforePlaced, &[]);
        }
        Change::Replenished { sku, quantity } => {
            let level = state.stock.entry(sku.clone()).or_default();
            level.on_hand = level.on_hand.saturating_add(i64::from(*quantity));
        }
    }
}

fn adjust(state: &mut State, lines: &[StockLine], f: impl Fn(&mut StockLevel, i64)) {
    for line in lines {
        f(
            state.stock.entry(line.sku.clone()).or_default(),
            i64::from(line.quantity),
        );
    }
}

fn record(state: &mut State, status: ReservationStatus, lines: &[StockLine]) {
    state.reservation = Some(Reservation {
        status,
        lines: lines.to_vec(),
    });
}

/// The public event a change publishes, if any.
pub fn published(_state_after: &State, change: &Change) -> Option<Event> {
    match change {
        Change::Reserved { order_id, lines } => Some(
            StockReserved {
                order_id: order_id.clone(),
                lines: lines.clone(),
            }
            .into(),
        ),
        Change::ReservationFailed {
            order_id,
            shortages,
            ..
        } => Some(
            StockReservationFailed {
                order_id: order_id.clone(),
                shortages: shortages.clone(),
            }
            .into(),
        ),
        Change::Committed { order_id, lines } => Some(
            StockCommitted {
                order_id: order_id.clone(),
                lines: lines.clone(),
            }
            .into(),
        ),
        Change::ReservationReleased { order_id, lines }
        | Change::SaleReturned { order_id, lines } => Some(
            StockReleased {
                order_id: order_id.clone(),
                lines: lines.clone(),
            }
            .into(),
        ),
        // The replenishment event is itself the public fact; the others are silent.
        Change::InvalidOrderRecorded { .. }
        | Change::CancelledBeforePlaced { .. }
        | Change::Replenished { .. } => None,
    }
}

/// Inventory's rules as a [`Decider`]; the shell drives it through `decide` and `apply`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory;

impl Decider for Inventory {
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
    use shop_events::{CancelReason, Currency, Money, OrderLineInput};

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).expect("valid order id")
    }

    fn sku(s: &str) -> Sku {
        Sku::parse(s).expect("valid sku")
    }

    fn line(s: &str, quantity: u32) -> StockLine {
        StockLine {
            sku: sku(s),
            quantity,
        }
    }

    fn order(order_id: &str, lines: &[(&str, i64)]) -> OrderPlaced {
        OrderPlaced {
            order_id: id(order_id),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLineInput {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price: 100,
                })
                .collect(),
            total: lines.iter().map(|(_, q)| q * 100).sum(),
            payment_token: "tok_visa".into(),
        }
    }

    fn placed() -> Input {
        Input::OrderPlaced(order("o-1", &[("sku-a", 2), ("sku-b", 1)]))
    }

    fn confirmed() -> Input {
        Input::OrderConfirmed(OrderConfirmed {
            order_id: id("o-1"),
            total: Money(300),
            currency: Currency::parse("EUR").expect("valid currency"),
        })
    }

    fn cancelled() -> Input {
        Input::OrderCancelled(OrderCancelled {
            order_id: id("o-1"),
            reason: CancelReason::PaymentDeclined,
            detail: "card_declined".into(),
        })
    }

    fn replenished(s: &str, quantity: u32) -> Input {
        Input::StockReplenished(StockReplenished {
            sku: sku(s),
            quantity,
        })
    }

    fn level(on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel { on_hand, reserved }
    }

    fn the_lines() -> Vec<StockLine> {
        vec![line("sku-a", 2), line("sku-b", 1)]
    }

    type Then = spec::Then<Inventory>;

    /// Starts from shelves holding `stock`, then decides and applies each input.
    fn given(
        stock: &[(&str, i64)],
        inputs: impl IntoIterator<Item = Input>,
    ) -> spec::Given<Inventory> {
        let shelves = State {
            reservation: None,
            stock: stock
                .iter()
                .map(|(s, on_hand)| (sku(s), level(*on_hand, 0)))
                .collect(),
        };
        spec::Given::from_state(shelves, Ctx).and_given(inputs)
    }

    /// Inventory's own checks on the state after.
    trait InventoryThen {
        fn and_stock(self, s: &str, expected: StockLevel) -> Self;
        fn and_status(self, expected: Option<ReservationStatus>) -> Self;
    }

    impl InventoryThen for Then {
        #[track_caller]
        fn and_stock(self, s: &str, expected: StockLevel) -> Then {
            self.and(|state| assert_eq!(state.level(&sku(s)), expected, "stock of {s}"))
        }

        #[track_caller]
        fn and_status(self, expected: Option<ReservationStatus>) -> Then {
            self.and(|state| assert_eq!(state.reservation.as_ref().map(|r| r.status), expected))
        }
    }

    #[test]
    fn an_order_is_reserved_all_at_once_when_every_line_is_available() {
        given(&[("sku-a", 2), ("sku-b", 5)], [])
            .when(placed())
            .then(vec![StockReserved {
                order_id: id("o-1"),
                lines: the_lines(),
            }
            .into()])
            .and_status(Some(ReservationStatus::Reserved))
            .and_stock("sku-a", level(2, 2))
            .and_stock("sku-b", level(5, 1));
    }

    #[test]
    fn a_reservation_fails_listing_every_short_line_and_holds_nothing() {
        given(&[("sku-a", 1), ("sku-c", 9)], [])
            .when(Input::OrderPlaced(order(
                "o-1",
                &[("sku-a", 2), ("sku-b", 1), ("sku-c", 3)],
            )))
            .then(vec![StockReservationFailed {
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
            }
            .into()])
            .and_status(Some(ReservationStatus::Failed))
            .and_stock("sku-a", level(1, 0))
            .and_stock("sku-c", level(9, 0));
    }

    #[test]
    fn stock_held_for_another_order_is_not_available() {
        let mut shelves = Shelves::default();
        shelves.feed(None, replenished("sku-a", 3));
        for o in ["o-0", "o-1"] {
            let placed = order(o, &[("sku-a", 2)]);
            shelves.feed(Some(&id(o)), Input::OrderPlaced(placed));
        }
        assert_eq!(
            shelves.events.last(),
            Some(
                &StockReservationFailed {
                    order_id: id("o-1"),
                    shortages: vec![Shortage {
                        sku: sku("sku-a"),
                        requested: 2,
                        available: 1,
                    }],
                }
                .into()
            )
        );
        assert_eq!(shelves.stock[&sku("sku-a")], level(3, 2));
    }

    #[test]
    fn an_invalid_order_is_recorded_as_rejected_and_publishes_nothing() {
        let mut bad = order("o-1", &[("sku-a", 2)]);
        bad.total = 1;
        given(&[("sku-a", 5)], [])
            .when(Input::OrderPlaced(bad))
            .then(vec![])
            .and_status(Some(ReservationStatus::Rejected))
            .and_stock("sku-a", level(5, 0));
    }

    #[test]
    fn a_redelivered_order_is_a_no_op_whatever_its_record() {
        let mut bad = order("o-1", &[("sku-a", 2)]);
        bad.total = 1;
        for history in [
            vec![placed()],
            vec![placed(), confirmed()],
            vec![placed(), cancelled()],
            vec![Input::OrderPlaced(order("o-1", &[("sku-z", 1)]))],
            vec![Input::OrderPlaced(bad)],
        ] {
            given(&[("sku-a", 5), ("sku-b", 5)], history)
                .when(placed())
                .then_nothing_happens();
        }
    }

    #[test]
    fn a_reservation_becomes_a_sale_when_the_order_is_confirmed() {
        given(&[("sku-a", 5), ("sku-b", 5)], [placed()])
            .when(confirmed())
            .then(vec![StockCommitted {
                order_id: id("o-1"),
                lines: the_lines(),
            }
            .into()])
            .and_status(Some(ReservationStatus::Committed))
            .and_stock("sku-a", level(3, 0))
            .and_stock("sku-b", level(4, 0));
    }

    #[test]
    fn stock_is_released_when_a_reserved_order_is_cancelled() {
        given(&[("sku-a", 5), ("sku-b", 5)], [placed()])
            .when(cancelled())
            .then(vec![StockReleased {
                order_id: id("o-1"),
                lines: the_lines(),
            }
            .into()])
            .and_status(Some(ReservationStatus::Released))
            .and_stock("sku-a", level(5, 0))
            .and_stock("sku-b", level(5, 0));
    }

    #[test]
    fn sold_stock_goes_back_on_the_shelf_when_a_confirmed_order_is_cancelled() {
        given(&[("sku-a", 5), ("sku-b", 5)], [placed(), confirmed()])
            .when(cancelled())
            .then(vec![StockReleased {
                order_id: id("o-1"),
                lines: the_lines(),
            }
            .into()])
            .and_status(Some(ReservationStatus::Released))
            .and_stock("sku-a", level(5, 0))
            .and_stock("sku-b", level(5, 0));
    }

    #[test]
    fn a_cancellation_before_the_order_leaves_a_tombstone_and_publishes_nothing() {
        given(&[("sku-a", 5)], [])
            .when(cancelled())
            .then(vec![])
            .and_status(Some(ReservationStatus::CancelledBeforePlaced));
    }

    #[test]
    fn an_order_placed_after_its_cancellation_reserves_nothing() {
        given(&[("sku-a", 5), ("sku-b", 5)], [cancelled()])
            .when(placed())
            .then_nothing_happens()
            .and_status(Some(ReservationStatus::CancelledBeforePlaced))
            .and_stock("sku-a", level(5, 0));
    }

    #[test]
    fn a_cancellation_after_a_failed_reservation_is_a_no_op() {
        given(&[], [placed()])
            .when(cancelled())
            .then_nothing_happens();
    }

    #[test]
    fn a_cancellation_of_a_rejected_order_is_a_no_op() {
        let mut bad = order("o-1", &[("sku-a", 2)]);
        bad.total = 1;
        given(&[], [Input::OrderPlaced(bad)])
            .when(cancelled())
            .then_nothing_happens();
    }

    #[test]
    fn duplicate_confirmations_and_cancellations_are_no_ops() {
        let stock = [("sku-a", 5), ("sku-b", 5)];
        given(&stock, [placed(), confirmed()])
            .when(confirmed())
            .then_nothing_happens();
        given(&stock, [placed(), cancelled()])
            .when(cancelled())
            .then_nothing_happens();
        given(&stock, [placed(), confirmed(), cancelled()])
            .when(cancelled())
            .then_nothing_happens();
        given(&stock, [cancelled()])
            .when(cancelled())
            .then_nothing_happens();
    }

    #[test]
    fn a_confirmation_without_a_held_reservation_is_a_no_op() {
        let stock = [("sku-a", 5), ("sku-b", 5)];
        given(&stock, []).when(confirmed()).then_nothing_happens();
        given(&stock, [placed(), cancelled()])
            .when(confirmed())
            .then_nothing_happens();
        given(&[], [placed()])
            .when(confirmed())
            .then_nothing_happens();
    }

    #[test]
    fn replenishment_adds_stock_on_hand_and_publishes_nothing() {
        given(&[("sku-a", 5)], [])
            .when(replenished("sku-a", 7))
            .then(vec![])
            .and_stock("sku-a", level(12, 0))
            .and_status(None);
        given(&[], [])
            .when(replenished("sku-new", 3))
            .then(vec![])
            .and_stock("sku-new", level(3, 0));
    }

    #[test]
    fn a_replenishment_of_nothing_is_a_no_op() {
        given(&[("sku-a", 5)], [])
            .when(replenished("sku-a", 0))
            .then_nothing_happens();
    }

    #[test]
    fn a_replenishment_that_would_overflow_is_refused() {
        given(&[("sku-a", i64::MAX - 1)], [])
            .when(replenished("sku-a", 2))
            .then_refused(Refusal::StockOverflow { sku: sku("sku-a") });
    }

    #[test]
    fn returning_a_sale_that_would_overflow_is_refused() {
        let mut g = given(&[("sku-a", 5), ("sku-b", 5)], [placed(), confirmed()]);
        g.state.stock.insert(sku("sku-a"), level(i64::MAX, 0));
        g.when(cancelled())
            .then_refused(Refusal::StockOverflow { sku: sku("sku-a") });
    }

    #[test]
    fn the_skus_needed_follow_the_input() {
        let reserved = Reservation {
            status: ReservationStatus::Reserved,
            lines: the_lines(),
        };
        let both = vec![sku("sku-a"), sku("sku-b")];
        assert_eq!(skus_needed(&placed(), None), both);
        assert_eq!(skus_needed(&placed(), Some(&reserved)), vec![]);
        let mut bad = order("o-1", &[("sku-a", 2)]);
        bad.total = 1;
        assert_eq!(skus_needed(&Input::OrderPlaced(bad), None), vec![]);
        assert_eq!(skus_needed(&confirmed(), Some(&reserved)), both);
        assert_eq!(skus_needed(&cancelled(), Some(&reserved)), both);
        assert_eq!(skus_needed(&cancelled(), None), vec![]);
        assert_eq!(
            skus_needed(&replenished("sku-z", 1), None),
            vec![sku("sku-z")]
        );
    }

    /// The shared shelves the shell keeps, with per-order records, driven the way
    /// the shell drives the domain: load a view, decide, apply, store it back.
    #[derive(Default)]
    struct Shelves {
        stock: BTreeMap<Sku, StockLevel>,
        reservations: BTreeMap<OrderId, Reservation>,
        events: Vec<Event>,
    }

    impl Shelves {
        fn feed(&mut self, order_id: Option<&OrderId>, input: Input) {
            let reservation = order_id.and_then(|o| self.reservations.get(o)).cloned();
            let mut view = State {
                stock: skus_needed(&input, reservation.as_ref())
                    .into_iter()
                    .filter_map(|s| self.stock.get(&s).map(|l| (s, *l)))
                    .collect(),
                reservation,
            };
            let changes = decide(&view, &input, &Ctx).expect("accepted");
            self.events.extend(Inventory::apply(&mut view, &changes));
            self.stock.extend(view.stock);
            if let (Some(o), Some(r)) = (order_id, view.reservation) {
                self.reservations.insert(o.clone(), r);
            }
            for level in self.stock.values() {
                assert!(level.available() >= 0, "available went negative: {level:?}");
                assert!(level.reserved >= 0, "reserved went negative: {level:?}");
                assert!(level.on_hand >= 0, "on hand went negative: {level:?}");
            }
        }

        fn count(&self, kind: shop_events::EventKind) -> usize {
            self.events.iter().filter(|e| e.kind() == kind).count()
        }
    }

    #[test]
    fn fifty_units_are_never_oversold_to_many_orders_of_one() {
        let mut shelves = Shelves::default();
        shelves.feed(None, replenished("sku-a", 50));
        for n in 0..80 {
            let o = order(&format!("o-{n}"), &[("sku-a", 1)]);
            shelves.feed(Some(&o.order_id.clone()), Input::OrderPlaced(o));
        }
        assert_eq!(shelves.count(shop_events::EventKind::StockReserved), 50);
        assert_eq!(
            shelves.count(shop_events::EventKind::StockReservationFailed),
            30
        );
        assert_eq!(shelves.stock[&sku("sku-a")], level(50, 50));
    }

    #[test]
    fn available_stock_never_goes_negative_in_any_sequence() {
        // A small deterministic generator keeps the test reproducible without extra crates.
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let skus = ["sku-a", "sku-b", "sku-c"];
        let mut shelves = Shelves::default();
        for _ in 0..2_000 {
            let o = id(&format!("o-{}", next(40)));
            let input = match next(5) {
                0 => {
                    let first = next(3) as usize;
                    let second = (first + 1 + next(2) as usize) % 3;
                    let q = |n: &mut dyn FnMut(u64) -> u64| 1 + n(4) as i64;
                    let mut lines = vec![(skus[first], q(&mut next))];
                    if next(2) == 0 {
                        lines.push((skus[second], q(&mut next)));
                    }
                    Input::OrderPlaced(order(o.as_str(), &lines))
                }
                1 => Input::OrderConfirmed(OrderConfirmed {
                    order_id: o.clone(),
                    total: Money(0),
                    currency: Currency::parse("EUR").expect("valid"),
                }),
                2 => Input::OrderCancelled(OrderCancelled {
                    order_id: o.clone(),
                    reason: CancelReason::Timeout,
                    detail: String::new(),
                }),
                _ => replenished(skus[next(3) as usize], next(3) as u32),
            };
            let key = match input {
                Input::StockReplenished(_) => None,
                _ => Some(o),
            };
            shelves.feed(key.as_ref(), input);
        }
        // Held stock always matches the open reservations.
        for s in skus {
            let held: i64 = shelves
                .reservations
                .values()
                .filter(|r| r.status == ReservationStatus::Reserved)
                .flat_map(|r| r.lines.iter())
                .filter(|l| l.sku.as_str() == s)
                .map(|l| i64::from(l.quantity))
                .sum();
            assert_eq!(
                shelves
                    .stock
                    .get(&sku(s))
                    .copied()
                    .unwrap_or_default()
                    .reserved,
                held
            );
        }
        assert!(shelves.count(shop_events::EventKind::StockReserved) > 0);
        assert!(shelves.count(shop_events::EventKind::StockReleased) > 0);
        assert!(shelves.count(shop_events::EventKind::StockCommitted) > 0);
    }

    #[test]
    fn a_view_survives_a_json_round_trip() {
        let state = given(&[("sku-a", 5), ("sku-b", 5)], [placed(), confirmed()]).state;
        let json = serde_json::to_string(&state).expect("serialises");
        let back: State = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, state);
        let status = serde_json::to_value(ReservationStatus::CancelledBeforePlaced).expect("ok");
        assert_eq!(status, serde_json::json!("cancelled_before_placed"));
    }
}
