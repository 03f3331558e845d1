//! Where an order's time goes: each hop of the saga timed from the server's stored timestamps.
//!
//! JetStream stamps every stored message; the bench's clock and the server's are the
//! same machine's, so publish → placed → reserved → captured → confirmed → observed
//! splits end-to-end latency into the generator's publish, each service's hop
//! (consume, apply, commit, relay) and the confirmation's way back.

use async_nats::jetstream::Context;
use serde::Serialize;
use shop_events::subjects::event_subject;
use shop_events::EventKind;
use time::OffsetDateTime;

use crate::load::Trace;
use crate::BenchError;

/// Median milliseconds of each hop over `samples` orders.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Hops {
    pub samples: usize,
    /// Generator publish → `OrderPlaced` stored (PubAck path of the first event).
    pub publish_to_placed_ms: f64,
    /// `OrderPlaced` → `StockReserved` stored: the inventory hop.
    pub inventory_ms: f64,
    /// `StockReserved` → `PaymentCaptured` stored: the payment hop (gateway included).
    pub payment_ms: f64,
    /// `PaymentCaptured` → `OrderConfirmed` stored: the checkout hop.
    pub checkout_ms: f64,
    /// `OrderConfirmed` stored → seen by the generator. It can be negative under load:
    /// the server delivers to core subscribers before its store stamps the message.
    pub confirmed_to_observed_ms: f64,
}

fn between(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Stored times of the four events of the chain, when all are there.
async fn chain_times(
    js: &Context,
    order_id: &str,
) -> Result<Option<[OffsetDateTime; 4]>, BenchError> {
    let events = shop_harness::events_about(js, order_id).await?;
    let at = |prefix: &str| {
        events
            .iter()
            .find(|e| e.subject.starts_with(prefix))
            .map(|e| e.stored_at)
    };
    Ok(
        match (
            at(&prefix(EventKind::OrderPlaced)),
            at(&prefix(EventKind::StockReserved)),
            at(&prefix(EventKind::PaymentCaptured)),
            at(&prefix(EventKind::OrderConfirmed)),
        ) {
            (Some(p), Some(r), Some(c), Some(o)) => Some([p, r, c, o]),
            _ => None,
        },
    )
}

/// Medians over the traced orders; orders whose events are no longer all stored are skipped.
pub async fn breakdown(js: &Context, traces: &[Trace]) -> Result<Hops, BenchError> {
    let mut columns: [Vec<f64>; 5] = Default::default();
    for trace in traces {
        let Some([placed, reserved, captured, confirmed]) =
            chain_times(js, &trace.order_id).await?
        else {
            continue;
        };
        let published = OffsetDateTime::from(trace.published);
        let observed = OffsetDateTime::from(trace.observed);
        let hops = [
            between(published, placed),
            between(placed, reserved),
            between(reserved, captured),
            between(captured, confirmed),
            between(confirmed, observed),
        ];
        for (column, value) in columns.iter_mut().zip(hops) {
            column.push(value);
        }
    }
    let samples = columns[0].len();
    let [a, b, c, d, e] = columns;
    Ok(Hops {
        samples,
        publish_to_placed_ms: median(a),
        inventory_ms: median(b),
        payment_ms: median(c),
        checkout_ms: median(d),
        confirmed_to_observed_ms: median(e),
    })
}

/// `events.<domain>.<verb>.`: the subject of every event of `kind`, less its key.
fn prefix(kind: EventKind) -> String {
    event_subject(kind, "")
}
