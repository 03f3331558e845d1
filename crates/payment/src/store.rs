//! Payment's sled layout and its transactional step.
//!
//! Trees: `payments` (order id → record) and `work` (order ids that owe the
//! gateway a call). The work index is derived from the record in the same
//! transaction, so a crash can never lose a charge, void or refund that is due.

use shop_decider::Decider;
use shop_events::partition::partition_of_key;
use shop_events::{Meta, OrderId};
use shop_runtime::changelog::Entities;
use shop_runtime::store::{from_value, reject, Store, TreeId, Tx, TxResult};
use shop_shell::publish_all;

use crate::domain::{self, Ctx, Input, State};
use crate::SERVICE;

/// The event that made a gateway call due.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CauseRef {
    pub id: Option<String>,
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
}

impl From<&Meta> for CauseRef {
    fn from(meta: &Meta) -> Self {
        CauseRef {
            id: Some(meta.id.clone()),
            correlation_id: Some(meta.correlation_id.clone()),
            traceparent: meta.traceparent.clone(),
        }
    }
}

impl CauseRef {
    /// The cause as envelope metadata, for `Envelope::caused_by`.
    pub fn as_meta(&self) -> Option<Meta> {
        Some(Meta {
            id: self.id.clone()?,
            source: SERVICE.to_owned(),
            time: time::OffsetDateTime::now_utc(),
            correlation_id: self.correlation_id.clone()?,
            causation_id: None,
            traceparent: self.traceparent.clone(),
        })
    }
}

pub const TREES: [&str; 2] = ["payments", "work"];

#[derive(Debug, Clone, Copy)]
pub struct Trees {
    pub payments: TreeId,
    pub work: TreeId,
}

impl Trees {
    pub fn from_ids(ids: &[TreeId]) -> Option<Trees> {
        match ids {
            [payments, work] => Some(Trees {
                payments: *payments,
                work: *work,
            }),
            _ => None,
        }
    }
}

pub fn apply_input(
    trees: Trees,
    tx: &Tx<'_>,
    order_id: &OrderId,
    input: &Input,
    cause: Option<&Meta>,
) -> TxResult<()> {
    let key = order_id.as_str().as_bytes();
    tx.touch(order_id.as_str());
    let mut state: State = tx.get_json(trees.payments, key)?.unwrap_or_default();
    let changes = match domain::decide(&state, input, &Ctx) {
        Ok(c) => c,
        Err(refusal) => return reject(refusal.to_string()),
    };
    if changes.is_empty() {
        return Ok(());
    }
    let events = domain::Payment::apply(&mut state, &changes);
    publish_all(tx, SERVICE, events, cause)?;
    tx.put_json(trees.payments, key, &state)?;
    if state.gateway_work().is_some() {
        // Remember which event made the call due, so the gateway's answer is published
        // as caused by it and `shop trace` can follow the chain.
        match cause {
            Some(meta) => tx.put_json(trees.work, key, &CauseRef::from(meta))?,
            None if tx.get(trees.work, key)?.is_none() => {
                tx.put_json(trees.work, key, &CauseRef::default())?
            }
            None => {}
        }
    } else {
        tx.remove(trees.work, key)?;
    }
    Ok(())
}

/// One order's payment as its changelog record carries it: the record, and the event
/// that made a gateway call due (the work index entry) if one is due.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PaymentRecord {
    payment: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    work: Option<CauseRef>,
}

/// Payment's entities are orders: one record per order.
#[derive(Debug, Clone, Copy)]
pub struct Payments {
    pub trees: Trees,
}

impl Entities for Payments {
    fn partition(&self, entity: &str) -> u32 {
        partition_of_key(entity)
    }

    fn snapshot(&self, tx: &Tx<'_>, entity: &str) -> TxResult<Option<serde_json::Value>> {
        let Some(payment) = tx.get_json::<State>(self.trees.payments, entity.as_bytes())? else {
            return Ok(None);
        };
        let work = tx.get_json::<CauseRef>(self.trees.work, entity.as_bytes())?;
        let record = PaymentRecord { payment, work };
        serde_json::to_value(&record).map(Some).map_err(|e| {
            sled::transaction::ConflictableTransactionError::Abort(
                shop_runtime::store::TxAbort::Encode(e),
            )
        })
    }

    fn restore(&self, tx: &Tx<'_>, entity: &str, data: &serde_json::Value) -> TxResult<()> {
        let record: PaymentRecord = from_value(entity, data)?;
        tx.put_json(self.trees.payments, entity.as_bytes(), &record.payment)?;
        match record.work {
            Some(cause) => tx.put_json(self.trees.work, entity.as_bytes(), &cause),
            None => tx.remove(self.trees.work, entity.as_bytes()),
        }
    }

    fn forget(&self, tx: &Tx<'_>, entity: &str) -> TxResult<()> {
        tx.remove(self.trees.work, entity.as_bytes())?;
        tx.remove(self.trees.payments, entity.as_bytes())
    }

    fn held(&self, store: &Store) -> Vec<String> {
        store
            .tree(self.trees.payments)
            .iter()
            .keys()
            .filter_map(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }
}

/// Reads a payment record from its changelog data (for an order another instance owns).
pub fn payment_from_record(entity: &str, data: serde_json::Value) -> Result<State, String> {
    serde_json::from_value::<PaymentRecord>(data)
        .map(|r| r.payment)
        .map_err(|e| format!("the changelog record of {entity} does not decode: {e}"))
}
