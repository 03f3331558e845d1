//! Payment's reactions: the consumer handler, and the worker that makes the gateway calls owed.
//!
//! The handler only records that a charge (or void, or refund) is due; the
//! worker calls the gateway outside any transaction and feeds the answer back
//! through the same pure `decide`. Keyed by the order id, every call is
//! idempotent, so a crash between the gateway's answer and its recording
//! only repeats a call whose result the gateway already knows.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shop_events::{Envelope, Event, OrderId};
use shop_runtime::crashpoint;
use shop_runtime::outbox::RelayWaker;
use shop_runtime::shutdown::Shutdown;
use shop_runtime::stats::Stats;
use shop_runtime::store::{reject, Store, Tx, TxResult};
use shop_shell::scale::Ownership;
use shop_shell::EnvelopeHandler;
use tokio::sync::Notify;

use crate::domain::{GatewayWork, Input, State};
use crate::gateway::{ChargeOutcome, PaymentGateway, VoidOutcome};
use crate::store::{apply_input, CauseRef, Trees};
use crate::{PaymentError, SERVICE};

pub struct PaymentHandler {
    pub trees: Trees,
    pub work_ready: Arc<Notify>,
}

impl EnvelopeHandler for PaymentHandler {
    const SERVICE: &'static str = SERVICE;

    fn apply(&self, envelope: &Envelope, tx: &Tx<'_>) -> TxResult<()> {
        let (order_id, input) = match &envelope.event {
            Event::OrderPlaced(e) => (e.order_id.clone(), Input::OrderPlaced(e.clone())),
            Event::StockReserved(e) => (e.order_id.clone(), Input::StockReserved(e.clone())),
            Event::OrderCancelled(e) => (e.order_id.clone(), Input::OrderCancelled(e.clone())),
            other => return reject(format!("payment does not handle {}", other.kind().name())),
        };
        apply_input(self.trees, tx, &order_id, &input, Some(&envelope.meta))
    }

    fn after_commit(&self) {
        self.work_ready.notify_one();
    }
}

/// What the worker needs.
pub struct GatewayWorker<G> {
    pub store: Arc<Store>,
    pub trees: Trees,
    pub gateway: Arc<G>,
    /// How many gateway calls a sweep makes at once; the adapter caps them too.
    pub concurrency: usize,
    pub waker: RelayWaker,
    pub stats: Arc<Stats>,
    pub work_ready: Arc<Notify>,
    /// Which orders' calls are this instance's to make.
    pub ownership: Ownership,
}

/// Retries a transient gateway failure a few times with backoff; the next sweep tries again after that.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, PaymentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PaymentError>>,
{
    let mut delay = Duration::from_millis(20);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 5 || !e.is_transient() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, attempt, "gateway call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

impl<G: PaymentGateway> GatewayWorker<G> {
    /// Makes the calls owed until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let this = Arc::new(self);
        loop {
            // Enabled before the sweep: a call skipped because its change is not in the
            // changelog yet is made as soon as the relay has stored it, not a pause later
            // (that pause was the whole of a payment hop at one order in flight).
            let stored = this.store.outbox_removed().notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let keys: Vec<OrderId> = this
                .store
                .tree(this.trees.work)
                .iter()
                .keys()
                .filter_map(Result::ok)
                .filter_map(|k| OrderId::parse(String::from_utf8_lossy(&k).into_owned()).ok())
                // Another instance's partition: its calls are that instance's to make.
                // Filtered before the cap, or a thousand entries of partitions held
                // elsewhere would fill every sweep and starve the held ones.
                .filter(|order_id| this.ownership.holds(order_id.as_str()))
                .take(1024)
                .collect();
            let answers: Vec<(OrderId, Input)> = futures::stream::iter(keys.clone())
                .map(|order_id| {
                    let this = this.clone();
                    async move {
                        this.call_gateway(&order_id)
                            .await
                            .map(|input| (order_id, input))
                    }
                })
                .buffer_unordered(this.concurrency)
                .filter_map(|answer| async move { answer })
                .collect()
                .await;
            let mut recorded = 0;
            if !answers.is_empty() {
                // The gateway made its books durable before it answered.
                crashpoint::hit(crate::gateway::AFTER_GATEWAY_CHARGE_BEFORE_RECORD);
                recorded = this.record_answers(&answers);
            }
            if recorded > 0 {
                // Durable as the store needs before the relay takes the answers.
                if let Err(e) = this.store.settle().await {
                    tracing::error!(error = %e, "flush after gateway answers failed");
                }
                this.waker.wake();
            }
            if shutdown.is_requested() {
                return;
            }
            // Loop straight away while work remains; otherwise wait for new work.
            if recorded > 0 && keys.len() == 1024 {
                continue;
            }
            let pause = if recorded < keys.len() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            };
            let waiting_on_changelog = recorded < keys.len();
            tokio::select! {
                _ = this.work_ready.notified() => {}
                _ = &mut stored, if waiting_on_changelog => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.requested() => return,
            }
        }
    }

    /// Performs the call owed for one order and returns the gateway's answer as an input.
    async fn call_gateway(&self, order_id: &OrderId) -> Option<Input> {
        let state: State = match self
            .store
            .read_json(self.trees.payments, order_id.as_str().as_bytes())
        {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(%order_id, error = %e, "payment record unreadable");
                return None;
            }
        };
        let Some(work) = state.gateway_work() else {
            // Stale index entry: clean it up in a transaction that re-checks the record.
            self.forget_stale(order_id);
            return None;
        };
        // Call the provider only once the change that made the call due is in the
        // changelog: an instance that dies after a charge whose cause the next owner
        // never restores would leave money taken and never announced. The next sweep
        // (a few hundred milliseconds) tries again.
        match self.store.is_stored(order_id.as_str()) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "cannot tell whether the change is stored; will retry");
                return None;
            }
        }
        let gateway = self.gateway.as_ref();
        let answer = match work {
            GatewayWork::Charge => {
                let terms = state.terms().cloned()?;
                with_retries(|| {
                    gateway.charge(order_id, terms.amount, terms.currency, &terms.payment_token)
                })
                .await
                .map(|outcome| match outcome {
                    ChargeOutcome::Captured { payment_id } => Input::ChargeSucceeded { payment_id },
                    ChargeOutcome::Declined { reason } => Input::ChargeFailed { reason },
                })
            }
            GatewayWork::Void => with_retries(|| gateway.void(order_id))
                .await
                .map(|outcome| match outcome {
                    VoidOutcome::Voided => Input::ChargeVoided,
                    VoidOutcome::AlreadyCaptured { payment_id } => {
                        Input::ChargeSucceeded { payment_id }
                    }
                    VoidOutcome::AlreadyDeclined { reason } => Input::ChargeFailed { reason },
                }),
            GatewayWork::Refund { payment_id } => {
                let terms = state.terms().cloned()?;
                with_retries(|| gateway.refund(order_id, &payment_id, terms.amount, terms.currency))
                    .await
                    .map(|()| Input::RefundSucceeded)
            }
        };
        match answer {
            Ok(input) => Some(input),
            Err(e) => {
                self.stats
                    .record_error(format!("gateway for {order_id}: {e}"));
                tracing::warn!(%order_id, error = %e, "gateway unavailable; will retry");
                None
            }
        }
    }

    /// Feeds a sweep's answers back through `decide`, in one transaction (see
    /// `Store::apply_batch` for why); returns how many were recorded.
    fn record_answers(&self, answers: &[(OrderId, Input)]) -> usize {
        let trees = self.trees;
        // One transaction per partition: a transaction may only touch one partition.
        let mut by_partition: std::collections::BTreeMap<u32, Vec<&(OrderId, Input)>> =
            std::collections::BTreeMap::new();
        for answer in answers {
            by_partition
                .entry(self.ownership.partition(answer.0.as_str()))
                .or_default()
                .push(answer);
        }
        let mut recorded = 0;
        for (_, answers) in by_partition {
            // Right before the write: a partition lost meanwhile is its next owner's,
            // which asks the gateway again and gets the same answer (idempotency key).
            if !answers
                .first()
                .is_some_and(|(id, _)| self.ownership.holding(id.as_str()).still_held())
            {
                continue;
            }
            let results = self.store.apply_batch(
                &answers,
                |_| None,
                |tx, (order_id, input)| {
                    let cause = tx
                        .get_json::<CauseRef>(trees.work, order_id.as_str().as_bytes())?
                        .and_then(|c| c.as_meta());
                    apply_input(trees, tx, order_id, input, cause.as_ref())
                },
            );
            recorded += answers
                .iter()
                .zip(results)
                .filter(|((order_id, _), result)| match result {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(%order_id, error = ?e, "cannot record gateway answer; will retry");
                        false
                    }
                })
                .count();
        }
        recorded
    }

    /// Drops a work-index entry whose record no longer owes a call, re-checking inside
    /// the transaction.
    fn forget_stale(&self, order_id: &OrderId) {
        let trees = self.trees;
        let result = self.store.apply(None, |tx| {
            let state: Option<State> = tx.get_json(trees.payments, order_id.as_str().as_bytes())?;
            if state.and_then(|s| s.gateway_work()).is_none() {
                tx.remove(trees.work, order_id.as_str().as_bytes())?;
            }
            Ok(())
        });
        if let Err(e) = result {
            tracing::error!(%order_id, error = ?e, "cannot clean the work index; will retry");
        }
    }
}
