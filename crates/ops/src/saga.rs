//! Where one order's saga stands, from its events alone, by the rules of the saga table in
//! `shop_events`: settled with an outcome, or waiting for a named service to react.
//!
//! Pure and synchronous so the rules can be read, and tested, apart from any I/O.

use serde::Serialize;
use shop_events::{CancelReason, Envelope, Event, EventKind};

/// How a settled order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Confirmed,
    Cancelled { reason: CancelReason },
    Rejected,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Confirmed => f.write_str("confirmed"),
            Outcome::Cancelled { reason } => write!(f, "cancelled ({})", reason.as_str()),
            Outcome::Rejected => f.write_str("rejected"),
        }
    }
}

/// Who must act next, doing what, in reaction to which event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextStep {
    /// The micro-service name (`checkout`, `inventory`, `payment`).
    pub service: &'static str,
    /// Completes "waiting for <service> to …".
    pub action: &'static str,
    pub reacting_to: EventKind,
}

impl NextStep {
    fn new(service: &'static str, action: &'static str, reacting_to: EventKind) -> Self {
        NextStep {
            service,
            action,
            reacting_to,
        }
    }

    /// `waiting for inventory to reserve stock`.
    pub fn sentence(&self) -> String {
        format!("waiting for {} to {}", self.service, self.action)
    }
}

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Every step the saga table asks for has happened.
    Settled(Outcome),
    /// A service still has to act.
    Waiting(NextStep),
    /// Events mention the order but it was never placed (a cancellation that came first).
    NotPlaced,
}

/// What the events of one order add up to. Duplicates (same event id) must be removed first.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub placed: bool,
    pub placed_valid: bool,
    pub rejected: bool,
    pub confirmed: bool,
    pub cancelled: Option<CancelReason>,
    pub cancellation_requested: bool,
    pub reserved: bool,
    pub reservation_failed: bool,
    pub committed: bool,
    pub released: bool,
    pub captures: usize,
    pub declined: bool,
    pub refunds: usize,
}

impl Facts {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Facts {
        let mut facts = Facts::default();
        for envelope in events {
            match &envelope.event {
                Event::OrderPlaced(e) => {
                    facts.placed = true;
                    facts.placed_valid = e.validate().is_ok();
                }
                Event::OrderRejected(_) => facts.rejected = true,
                Event::OrderConfirmed(_) => facts.confirmed = true,
                Event::OrderCancelled(e) => facts.cancelled = Some(e.reason),
                Event::OrderCancellationRequested(_) => facts.cancellation_requested = true,
                Event::StockReserved(_) => facts.reserved = true,
                Event::StockReservationFailed(_) => facts.reservation_failed = true,
                Event::StockCommitted(_) => facts.committed = true,
                Event::StockReleased(_) => facts.released = true,
                Event::PaymentCaptured(_) => facts.captures += 1,
                Event::PaymentDeclined(_) => facts.declined = true,
                Event::PaymentRefunded(_) => facts.refunds += 1,
                Event::StockReplenished(_) => {}
            }
        }
        facts
    }

    /// Where the saga stands, by the saga table.
    pub fn position(&self) -> Position {
        use EventKind as K;
        if self.rejected {
            return Position::Settled(Outcome::Rejected);
        }
        if let Some(reason) = self.cancelled {
            return self.compensation(reason);
        }
        if self.confirmed {
            return if self.committed {
                Position::Settled(Outcome::Confirmed)
            } else {
                Position::Waiting(NextStep::new(
                    "inventory",
                    "commit the sale",
                    K::OrderConfirmed,
                ))
            };
        }
        if !self.placed {
            return Position::NotPlaced;
        }
        let step = if !self.placed_valid {
            NextStep::new("checkout", "reject the invalid order", K::OrderPlaced)
        } else if self.cancellation_requested {
            NextStep::new(
                "checkout",
                "cancel the order",
                K::OrderCancellationRequested,
            )
        } else if self.reservation_failed {
            NextStep::new("checkout", "cancel the order", K::StockReservationFailed)
        } else if self.declined {
            NextStep::new("checkout", "cancel the order", K::PaymentDeclined)
        } else if self.captures > 0 {
            NextStep::new("checkout", "confirm the order", K::PaymentCaptured)
        } else if self.reserved {
            NextStep::new("payment", "charge the card", K::StockReserved)
        } else {
            NextStep::new("inventory", "reserve stock", K::OrderPlaced)
        };
        Position::Waiting(step)
    }

    /// A cancelled order is settled once what it held is given back.
    fn compensation(&self, reason: CancelReason) -> Position {
        use EventKind as K;
        if self.placed && self.placed_valid && !self.reserved && !self.reservation_failed {
            // Inventory reads the order before its cancellation, so it will still
            // reserve, and then release, the stock of an order cancelled early.
            return Position::Waiting(NextStep::new(
                "inventory",
                "reserve and then release the stock",
                K::OrderPlaced,
            ));
        }
        if self.reserved && !self.released {
            return Position::Waiting(NextStep::new(
                "inventory",
                "release the stock",
                K::OrderCancelled,
            ));
        }
        if self.captures > self.refunds {
            return Position::Waiting(NextStep::new(
                "payment",
                "refund the payment",
                K::OrderCancelled,
            ));
        }
        Position::Settled(Outcome::Cancelled { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_events::{
        Currency, Money, OrderCancelled, OrderConfirmed, OrderId, OrderLineInput, OrderPlaced,
        PaymentCaptured, PaymentId, Sku, StockCommitted, StockLine, StockReleased, StockReserved,
    };

    fn id() -> OrderId {
        OrderId::parse("o-1").expect("valid id")
    }

    fn placed() -> Event {
        OrderPlaced {
            order_id: id(),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            lines: vec![OrderLineInput {
                sku: "sku-a".into(),
                quantity: 2,
                unit_price: 500,
            }],
            total: 1000,
            payment_token: "tok_visa".into(),
        }
        .into()
    }

    fn stock() -> Vec<StockLine> {
        vec![StockLine {
            sku: Sku::parse("sku-a").expect("valid sku"),
            quantity: 2,
        }]
    }

    fn reserved() -> Event {
        StockReserved {
            order_id: id(),
            lines: stock(),
        }
        .into()
    }

    fn captured() -> Event {
        PaymentCaptured {
            order_id: id(),
            payment_id: PaymentId::parse("pay_1").expect("valid id"),
            amount: Money(1000),
            currency: Currency::parse("EUR").expect("valid currency"),
        }
        .into()
    }

    fn confirmed() -> Event {
        OrderConfirmed {
            order_id: id(),
            total: Money(1000),
            currency: Currency::parse("EUR").expect("valid currency"),
        }
        .into()
    }

    fn position(events: Vec<Event>) -> Position {
        let envelopes: Vec<Envelope> = events
            .into_iter()
            .map(|e| Envelope::new("test", e))
            .collect();
        Facts::from_events(&envelopes).position()
    }

    fn waiting_for(position: Position) -> (&'static str, EventKind) {
        match position {
            Position::Waiting(step) => (step.service, step.reacting_to),
            other => panic!("expected a waiting saga, got {other:?}"),
        }
    }

    #[test]
    fn a_placed_order_waits_for_inventory_to_reserve() {
        assert_eq!(
            waiting_for(position(vec![placed()])),
            ("inventory", EventKind::OrderPlaced)
        );
    }

    #[test]
    fn reserved_stock_waits_for_payment_then_checkout() {
        assert_eq!(
            waiting_for(position(vec![placed(), reserved()])),
            ("payment", EventKind::StockReserved)
        );
        assert_eq!(
            waiting_for(position(vec![placed(), reserved(), captured()])),
            ("checkout", EventKind::PaymentCaptured)
        );
    }

    #[test]
    fn a_confirmed_order_is_settled_only_once_its_sale_is_committed() {
        let before = vec![placed(), reserved(), captured(), confirmed()];
        assert_eq!(
            waiting_for(position(before.clone())),
            ("inventory", EventKind::OrderConfirmed)
        );
        let mut after = before;
        after.push(
            StockCommitted {
                order_id: id(),
                lines: stock(),
            }
            .into(),
        );
        assert_eq!(position(after), Position::Settled(Outcome::Confirmed));
    }

    #[test]
    fn a_cancelled_order_waits_for_its_stock_and_money_to_come_back() {
        let cancelled: Event = OrderCancelled {
            order_id: id(),
            reason: CancelReason::CustomerRequest,
            detail: String::new(),
        }
        .into();
        let released: Event = StockReleased {
            order_id: id(),
            lines: stock(),
        }
        .into();
        assert_eq!(
            waiting_for(position(vec![
                placed(),
                reserved(),
                captured(),
                cancelled.clone()
            ])),
            ("inventory", EventKind::OrderCancelled)
        );
        assert_eq!(
            waiting_for(position(vec![
                placed(),
                reserved(),
                captured(),
                cancelled.clone(),
                released.clone()
            ])),
            ("payment", EventKind::OrderCancelled)
        );
        assert_eq!(
            position(vec![placed(), reserved(), cancelled, released]),
            Position::Settled(Outcome::Cancelled {
                reason: CancelReason::CustomerRequest
            })
        );
    }
}
