//! Payment's sled layout and its transactional step.
//!
//! Trees: `payments` (order id → record) and `work` (order ids that owe the
//! gateway a call). The work index is derived from the record in the same
//! transaction, so a crash can never lose a charge, void or refund that is due.

use shop_decider::Decider;
use shop_events::{Meta, OrderId};
use shop_runtime::store::{reject, TreeId, Tx, TxResult};
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
