//! Checkout's reactions: the consumer handler for the events it listens to, and the deadline timer.

use std::sync::Arc;
use std::time::Duration;

use shop_events::{Envelope, Event};
use shop_runtime::outbox::RelayWaker;
use shop_runtime::shutdown::Shutdown;
use shop_runtime::store::{reject, Store, Tx, TxResult};
use shop_shell::scale::Ownership;
use shop_shell::EnvelopeHandler;

use crate::clock::Clock;
use crate::domain::{Ctx, Input};
use crate::store::{apply_input, split_time_key, Trees};
use crate::SERVICE;

/// Turns consumed events into checkout inputs.
pub struct CheckoutHandler {
    pub trees: Trees,
    pub deadline_ms: i64,
    pub clock: Arc<dyn Clock>,
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
            now_ms: self.clock.now_ms(),
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

/// How many due deadlines one sweep handles (one transaction); more are swept at once after.
const SWEEP_MAX: usize = 512;

/// How often the timer looks for due deadlines. Real time even under a manual clock:
/// it is only a poll, the decision whether a deadline passed uses the clock.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Due index entries seen (at most [`SWEEP_MAX`]).
    pub due: usize,
    /// Of those, how many were handled (cancelled, or found already settled).
    pub handled: usize,
}

/// Feeds `DeadlinePassed` to every order whose indexed deadline is at or before
/// `ctx.now_ms`, in one transaction (see `Store::apply_batch` for why that matters).
pub fn sweep_due(store: &Store, trees: Trees, ctx: &Ctx, ownership: &Ownership) -> Sweep {
    // The entries of partitions another instance holds stay in the index (the partition's
    // restore rewrites them if it comes back) and are passed over *before* the cap: were
    // they counted, a few hundred of them at the front of the index would fill every
    // sweep and no held order would ever time out.
    let mut due: Vec<(Vec<u8>, shop_events::OrderId)> = Vec::new();
    for key in store
        .tree(trees.deadlines)
        .range(..(ctx.now_ms.max(0) as u64 + 1).to_be_bytes().to_vec())
        .keys()
        .filter_map(Result::ok)
    {
        match split_time_key(&key).and_then(|(_, id)| shop_events::OrderId::parse(id).ok()) {
            Some(order_id) if ownership.holds(order_id.as_str()) => {
                due.push((key.to_vec(), order_id));
                if due.len() == SWEEP_MAX {
                    break;
                }
            }
            Some(_) => {}
            None => {
                let _ = store.tree(trees.deadlines).remove(&key);
            }
        }
    }
    // Per partition: one transaction may only touch one partition's orders.
    let mut owed: std::collections::BTreeMap<u32, Vec<(&Vec<u8>, shop_events::OrderId)>> =
        std::collections::BTreeMap::new();
    for (key, order_id) in &due {
        owed.entry(ownership.partition(order_id.as_str()))
            .or_default()
            .push((key, order_id.clone()));
    }
    let mut handled = 0;
    for (_, owed) in owed {
        // Checked right before the write: a fence that lapsed since the filter above
        // leaves the deadline to the partition's next owner.
        if !owed
            .first()
            .is_some_and(|(_, id)| ownership.holding(id.as_str()).still_held())
        {
            continue;
        }
        let results = store.apply_batch(
            &owed,
            |_| None,
            |tx, (key, order_id)| {
                tx.remove(trees.deadlines, key)?;
                apply_input(trees, tx, order_id, &Input::DeadlinePassed, ctx, None)
            },
        );
        for ((_, order_id), result) in owed.iter().zip(results) {
            match result {
                Ok(_) => handled += 1,
                Err(e) => {
                    tracing::warn!(order_id = %order_id, error = ?e, "deadline step failed; retrying")
                }
            }
        }
    }
    Sweep {
        due: due.len(),
        handled,
    }
}

pub async fn run_deadline_timer(
    store: Arc<Store>,
    trees: Trees,
    deadline_ms: i64,
    clock: Arc<dyn Clock>,
    waker: RelayWaker,
    ownership: Ownership,
    mut shutdown: Shutdown,
) {
    loop {
        let ctx = Ctx {
            now_ms: clock.now_ms(),
            deadline_ms,
        };
        let sweep = sweep_due(&store, trees, &ctx, &ownership);
        if sweep.handled > 0 {
            if let Err(e) = store.settle().await {
                tracing::error!(error = %e, "flush after deadlines failed");
            }
            waker.wake();
            tracing::info!(
                expired = sweep.handled,
                "orders past their deadline handled"
            );
        }
        if sweep.due == SWEEP_MAX {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.requested() => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::State;
    use crate::store::TREES;
    use shop_events::{CancelReason, OrderId, OrderLineInput, OrderPlaced};
    use shop_runtime::shutdown::Shutdown;

    const DEADLINE_MS: i64 = 30_000;
    const DEADLINE: Duration = Duration::from_millis(DEADLINE_MS as u64);

    pub(crate) fn open_store(dir: &std::path::Path) -> (Arc<Store>, Trees) {
        let (store, ids) = Store::open(dir, &TREES).expect("store opens");
        (
            Arc::new(store),
            Trees::from_ids(&ids).expect("checkout's trees"),
        )
    }

    fn id(s: &str) -> OrderId {
        OrderId::parse(s).expect("valid order id")
    }

    fn ctx(clock: &ManualClock) -> Ctx {
        Ctx {
            now_ms: clock.now_ms(),
            deadline_ms: DEADLINE_MS,
        }
    }

    /// Places a valid order at the clock's current time.
    pub(crate) fn place(store: &Store, trees: Trees, order_id: &str, clock: &ManualClock) {
        let placed = Input::Placed(OrderPlaced {
            order_id: id(order_id),
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            lines: vec![OrderLineInput {
                sku: "sku-a".into(),
                quantity: 1,
                unit_price: 100,
            }],
            total: 100,
            payment_token: "tok_visa".into(),
        });
        let ctx = ctx(clock);
        store
            .apply(None, |tx| {
                apply_input(trees, tx, &id(order_id), &placed, &ctx, None)
            })
            .expect("the order is placed");
    }

    fn load(store: &Store, trees: Trees, order_id: &str) -> State {
        store
            .read_json(trees.orders, order_id.as_bytes())
            .expect("readable")
            .expect("the order is stored")
    }

    fn timed_out(store: &Store, trees: Trees, order_id: &str) -> bool {
        load(store, trees, order_id)
            .cancellation()
            .is_some_and(|(reason, _)| reason == CancelReason::Timeout)
    }

    #[test]
    fn a_sweep_cancels_an_order_only_once_the_clock_reaches_its_deadline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, trees) = open_store(dir.path());
        let clock = ManualClock::at(1_000_000);
        place(&store, trees, "o-1", &clock);

        clock.advance(DEADLINE - Duration::from_millis(1));
        assert_eq!(
            sweep_due(&store, trees, &ctx(&clock), &Ownership::everything()),
            Sweep::default()
        );
        assert_eq!(
            load(&store, trees, "o-1").pending_deadline(),
            Some(1_030_000)
        );

        clock.advance(Duration::from_millis(1));
        assert_eq!(
            sweep_due(&store, trees, &ctx(&clock), &Ownership::everything()),
            Sweep { due: 1, handled: 1 }
        );
        assert!(timed_out(&store, trees, "o-1"));
        assert_eq!(load(&store, trees, "o-1").settled_at_ms(), Some(1_030_000));
        assert!(
            store.tree(trees.deadlines).is_empty(),
            "the deadline left the index"
        );
        assert_eq!(store.outbox_len(), 1, "OrderCancelled waits in the outbox");
        assert_eq!(
            sweep_due(&store, trees, &ctx(&clock), &Ownership::everything()),
            Sweep::default(),
            "nothing left to sweep"
        );
    }

    #[test]
    fn deadlines_of_partitions_held_elsewhere_do_not_crowd_out_a_held_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, trees) = open_store(dir.path());
        let clock = ManualClock::at(1_000_000);
        // More due deadlines than one sweep takes, all ahead of the held order's and all
        // in a partition another instance holds (left in the index when it moved away).
        let elsewhere = SWEEP_MAX + 10;
        for n in 0..elsewhere {
            place(&store, trees, &format!("o-away-{n:04}"), &clock);
        }
        clock.advance(Duration::from_millis(1));
        place(&store, trees, "o-held", &clock);
        clock.advance(DEADLINE);
        let ownership = Ownership::fixed([0], |id: &str| u32::from(id != "o-held"));

        let sweep = sweep_due(&store, trees, &ctx(&clock), &ownership);
        assert_eq!(sweep, Sweep { due: 1, handled: 1 });
        assert!(timed_out(&store, trees, "o-held"));
        assert!(!timed_out(&store, trees, "o-away-0000"));
        assert_eq!(
            store.tree(trees.deadlines).len(),
            elsewhere,
            "the other partition's deadlines stay for its owner"
        );
    }

    /// Polls `done` every few milliseconds of real time, failing after `within`.
    async fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
        let until = tokio::time::Instant::now() + within;
        while !done() {
            assert!(tokio::time::Instant::now() < until, "timed out: {what}");
            tokio::time::sleep(SWEEP_EVERY / 4).await;
        }
    }

    #[tokio::test]
    async fn the_timer_follows_the_injected_clock_not_the_wall_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, trees) = open_store(dir.path());
        // A clock in 1970: by the wall clock every deadline here is long gone.
        let clock = ManualClock::at(1_000_000);
        place(&store, trees, "o-first", &clock);
        clock.advance(DEADLINE);
        place(&store, trees, "o-second", &clock);
        let (trigger, shutdown) = Shutdown::new();
        let timer = tokio::spawn(run_deadline_timer(
            store.clone(),
            trees,
            DEADLINE_MS,
            Arc::new(clock.clone()),
            RelayWaker::default(),
            Ownership::everything(),
            shutdown,
        ));

        wait_until(
            "the first order's deadline",
            Duration::from_secs(10),
            || timed_out(&store, trees, "o-first"),
        )
        .await;
        // The sweep that cancelled the first order saw the second one's deadline ahead.
        assert_eq!(
            load(&store, trees, "o-second").pending_deadline(),
            Some(1_060_000)
        );

        clock.advance(DEADLINE);
        wait_until(
            "the second order's deadline",
            Duration::from_secs(10),
            || timed_out(&store, trees, "o-second"),
        )
        .await;
        trigger.fire();
        timer.await.expect("the timer stops on shutdown");
    }
}
