//! One line of plain words per event, for timelines and evidence in reports.

use shop_events::{Event, StockLine};

/// `sku-a×3, sku-b×1`.
pub fn lines(lines: &[StockLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{}×{}", l.sku, l.quantity))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an event says, in one short line, e.g. `reserved sku-a×3` or `captured 3750 EUR pay_…`.
pub fn summarize(event: &Event) -> String {
    match event {
        Event::OrderPlaced(e) => {
            let items: Vec<String> = e
                .lines
                .iter()
                .map(|l| format!("{}×{}", l.sku, l.quantity))
                .collect();
            format!(
                "{} · total {} {} · {}",
                items.join(", "),
                e.total,
                e.currency,
                e.payment_token
            )
        }
        Event::OrderRejected(e) => {
            let codes: Vec<String> = e
                .problems
                .iter()
                .map(|p| format!("{}: {:?}", p.field, p.code))
                .collect();
            format!(
                "rejected with {} problem(s): {}",
                e.problems.len(),
                codes.join(", ")
            )
        }
        Event::OrderConfirmed(e) => format!("confirmed {} {}", e.total, e.currency),
        Event::OrderCancelled(e) if e.detail.is_empty() => {
            format!("cancelled: {}", e.reason.as_str())
        }
        Event::OrderCancelled(e) => format!("cancelled: {} ({})", e.reason.as_str(), e.detail),
        Event::OrderCancellationRequested(e) => format!("cancellation requested: {}", e.reason),
        Event::StockReserved(e) => format!("reserved {}", lines(&e.lines)),
        Event::StockReservationFailed(e) => {
            let short: Vec<String> = e
                .shortages
                .iter()
                .map(|s| format!("{} wants {}, {} available", s.sku, s.requested, s.available))
                .collect();
            format!("short: {}", short.join("; "))
        }
        Event::StockReleased(e) => format!("released {}", lines(&e.lines)),
        Event::StockCommitted(e) => format!("committed {}", lines(&e.lines)),
        Event::StockReplenished(e) => format!("+{} {}", e.quantity, e.sku),
        Event::PaymentCaptured(e) => {
            format!("captured {} {} {}", e.amount, e.currency, e.payment_id)
        }
        Event::PaymentDeclined(e) => format!("declined {}: {}", e.amount, e.reason),
        Event::PaymentRefunded(e) => {
            format!("refunded {} {} {}", e.amount, e.currency, e.payment_id)
        }
    }
}

/// The last 8 characters of an event id: UUIDv7 ids share their leading timestamp
/// digits within a saga, so the random tail is what tells them apart at a glance.
pub fn short_id(id: &str) -> &str {
    let start = id.len().saturating_sub(8);
    id.get(start..).unwrap_or(id)
}
