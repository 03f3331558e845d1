//! The shape a payment record has in sled: the flat struct payment has always written.
//!
//! [`State`] converts to and from it, so records written before `State` became an enum
//! still load, and a binary from before that change still reads what this one writes.
//! Reading resolves the flat flags into the one stage they describe.

use serde::{Deserialize, Serialize};
use shop_events::{OrderId, PaymentId};

use super::{Charge, Refund, State, Terms};

/// A stored record that no version of payment writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed payment record: {0}")]
pub struct MalformedRecord(&'static str);

/// The charge as stored, `not_requested` included.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
enum StoredCharge {
    #[default]
    NotRequested,
    Due,
    VoidDue,
    Captured {
        payment_id: PaymentId,
    },
    Declined {
        reason: String,
    },
    Voided,
}

/// One order's payment record as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct StoredPayment {
    order_id: Option<OrderId>,
    terms: Option<Terms>,
    stock_reserved: bool,
    cancelled: bool,
    charge: StoredCharge,
    refund: Refund,
}

impl From<State> for StoredPayment {
    fn from(state: State) -> StoredPayment {
        match state {
            State::Unknown => StoredPayment::default(),
            State::AwaitingOrder { order_id } => StoredPayment {
                order_id: Some(order_id),
                stock_reserved: true,
                ..StoredPayment::default()
            },
            State::AwaitingStock { order_id, terms } => StoredPayment {
                order_id: Some(order_id),
                terms: Some(terms),
                ..StoredPayment::default()
            },
            State::Cancelled { order_id, terms } => StoredPayment {
                order_id: Some(order_id),
                terms,
                cancelled: true,
                ..StoredPayment::default()
            },
            State::ChargeRequested {
                order_id,
                terms,
                charge,
            } => {
                let (charge, refund, cancelled) = match charge {
                    Charge::Due => (StoredCharge::Due, Refund::NotNeeded, false),
                    Charge::VoidDue => (StoredCharge::VoidDue, Refund::NotNeeded, true),
                    Charge::Captured { payment_id, refund } => (
                        StoredCharge::Captured { payment_id },
                        refund,
                        refund != Refund::NotNeeded,
                    ),
                    Charge::Declined { reason } => {
                        (StoredCharge::Declined { reason }, Refund::NotNeeded, false)
                    }
                    Charge::Voided => (StoredCharge::Voided, Refund::NotNeeded, true),
                };
                StoredPayment {
                    order_id: Some(order_id),
                    terms: Some(terms),
                    stock_reserved: true,
                    cancelled,
                    charge,
                    refund,
                }
            }
        }
    }
}

impl TryFrom<StoredPayment> for State {
    type Error = MalformedRecord;

    /// Older records also say whether a declined charge's order was cancelled; nothing
    /// follows from that (there is no money to give back), so it is dropped.
    fn try_from(stored: StoredPayment) -> Result<State, MalformedRecord> {
        let StoredPayment {
            order_id,
            terms,
            stock_reserved,
            cancelled,
            charge,
            refund,
        } = stored;
        let Some(order_id) = order_id else {
            return match (terms, stock_reserved, cancelled, charge) {
                (None, false, false, StoredCharge::NotRequested) => Ok(State::Unknown),
                _ => Err(MalformedRecord("a record without `order_id`")),
            };
        };
        let charge = match charge {
            StoredCharge::NotRequested => {
                return match (terms, stock_reserved, cancelled) {
                    (terms, _, true) => Ok(State::Cancelled { order_id, terms }),
                    (Some(terms), false, false) => Ok(State::AwaitingStock { order_id, terms }),
                    (None, true, false) => Ok(State::AwaitingOrder { order_id }),
                    (Some(_), true, false) => Err(MalformedRecord(
                        "terms and stock reservation without a charge requested",
                    )),
                    (None, false, false) => Err(MalformedRecord("a record with no facts")),
                };
            }
            // The old code turned a due charge into a void when the order was cancelled,
            // and asked for a refund of a cancelled order's capture; these mappings only
            // matter for a record that broke that rule, and keep the money safe if one did.
            // A refund flag beside a charge never captured was never acted on: ignored.
            StoredCharge::Due if cancelled => Charge::VoidDue,
            StoredCharge::Due => Charge::Due,
            StoredCharge::VoidDue => Charge::VoidDue,
            StoredCharge::Captured { payment_id } => Charge::Captured {
                payment_id,
                refund: match refund {
                    Refund::NotNeeded if cancelled => Refund::Due,
                    refund => refund,
                },
            },
            StoredCharge::Declined { reason } => Charge::Declined { reason },
            StoredCharge::Voided => Charge::Voided,
        };
        let terms = terms.ok_or(MalformedRecord("a charge without `terms`"))?;
        Ok(State::ChargeRequested {
            order_id,
            terms,
            charge,
        })
    }
}
