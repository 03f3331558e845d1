//! Checkout's reactions: the consumer handler for the events it listens to, and the deadline timer.

use std::sync::Arc;
use std::time::Duration;

use shop_events::{Envelope, Event};
use shop_runtime::outbox::RelayWaker;
use shop_runtime::shutdown::Shutdown;
use shop_runtime::store::{reject, Store, Tx, TxResult};
use shop_shell::{now_ms, EnvelopeHandler};

use crate::domain::{Ctx, Input};
use crate::store::{apply_input, split_time_key, Trees};
use crate::SERVICE;

/// Turns consumed events into checkout inputs.
pub struct CheckoutHandler {
    pub trees: Trees,
    pub deadline_ms: i64,
}

fn input_for(event: &Event) -> Option<Input> {
    Some(match event {
        Event::OrderPlaced(e) => Input::Placed(e.clone()),
        Event::StockReservationFailed(e) => Input::StockReservationFailed(e.clone()),
        Event::PaymentCaptured(e) => Input::PaymentCaptured(e.clone()),
        Event::PaymentDeclined(e) => Input::PaymentDeclined(e.clone()),
        Event::OrderCancellationRequested(e) => Input::CancellationRequested(e.clone()),
        _ => return None,
    })
}

impl EnvelopeHandler for CheckoutHandler {
    const SERVICE: &'static str = SERVICE;

    fn apply(&self, envelope: &Envelope, tx: &Tx<'_>) -> TxResult<()> {
        let Some(input) = input_for(&envelope.event) else {
            return reject(format!(
                "checkout does not handle {}",
                envelope.kind().name()
            ));
        };
        let Some(order_id) = input.order_id().cloned() else {
            return reject("event carries no order id");
        };
        let ctx = Ctx {
            now_ms: now_ms(),
            deadline_ms: self.deadline_ms,
        };
        apply_input(
            self.trees,
            tx,
            &order_id,
            &input,
            &ctx,
            Some(&envelope.meta),
        )
    }
}

/// Cancels orders whose deadline passed, from the durable index, so deadlines survive restarts.
pub async fn run_deadline_timer(
    store: Arc<Store>,
    trees: Trees,
    deadline_ms: i64,
    waker: RelayWaker,
    mut shutdown: Shutdown,
) {
    loop {
        let now = now_ms();
        let due: Vec<Vec<u8>> = store
            .tree(trees.deadlines)
            .range(..(now.max(0) as u64 + 1).to_be_bytes().to_vec())
            .keys()
            .take(512)
            .filter_map(Result::ok)
            .map(|k| k.to_vec())
            .collect();
        let mut owed = Vec::with_capacity(due.len());
        for key in &due {
            match split_time_key(key).and_then(|(_, id)| shop_events::OrderId::parse(id).ok()) {
                Some(order_id) => owed.push((key, order_id)),
                None => {
                    let _ = store.tree(trees.deadlines).remove(key);
                }
            }
        }
        let ctx = Ctx {
            now_ms: now,
            deadline_ms,
        };
        // One transaction for the sweep (see Store::apply_batch for why that matters).
        let results = store.apply_batch(
            &owed,
            |_| None,
            |tx, (key, order_id)| {
                // Removing first makes a stale entry disappear; apply_input re-adds a live one.
                tx.remove(trees.deadlines, key)?;
                apply_input(trees, tx, order_id, &Input::DeadlinePassed, &ctx, None)
            },
        );
        let mut expired = 0;
        for ((_, order_id), result) in owed.iter().zip(results) {
            match result {
                Ok(_) => expired += 1,
                Err(e) => {
                    tracing::warn!(order_id = %order_id, error = ?e, "deadline step failed; retrying")
                }
            }
        }
        if expired > 0 {
            if let Err(e) = store.flush().await {
                tracing::error!(error = %e, "flush after deadlines failed");
            }
            waker.wake();
            tracing::info!(expired, "orders past their deadline handled");
        }
        if due.len() == 512 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.requested() => return,
        }
    }
}
