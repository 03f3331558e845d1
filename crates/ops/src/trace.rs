//! `shop trace <order_id>`: one order's timeline across the event streams, its dead letters
//! and checkout's view, and a plain statement of where its saga stands and who acts next.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use async_nats::{jetstream, Client};
use serde::Serialize;

use shop_events::api::checkout::{OrderView, ORDERS_GET};
use shop_events::api::OrderRef;
use shop_events::OrderId;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::nats::{answers_ping, request_found};
use crate::reader::{dead_letters_about, events_about, StoredDeadLetter, StoredEvent};
use crate::saga::{Facts, Outcome, Position};
use crate::summary::{short_id, summarize};
use crate::term::{duration_ms, Paint};
use crate::OpsError;

/// How long a saga may wait for its next step before `trace` calls it stuck.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(5);

/// How long a stuck service gets to answer PING.
const PING_TIMEOUT: Duration = Duration::from_millis(750);

/// One order's saga as the streams and the services tell it.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub order_id: String,
    /// Oldest first by the time the server stored them.
    pub events: Vec<TraceEvent>,
    pub dead_letters: Vec<TraceDeadLetter>,
    /// `checkout.orders.get`, when checkout knows the order and answers.
    pub checkout: Option<OrderView>,
    /// Why checkout's view is missing when it is not simply unknown to checkout.
    pub checkout_error: Option<String>,
    pub status: TraceStatus,
    /// The service expected to act next, if the saga is not settled.
    pub expected_next: Option<String>,
}

/// One stored message about the order.
#[derive(Debug, Clone, Serialize)]
pub struct TraceEvent {
    pub stream: String,
    pub sequence: u64,
    pub subject: String,
    /// `OrderPlaced`, …, or `undecodable` for a message the contract refuses.
    #[serde(rename = "type")]
    pub event_type: String,
    pub id: Option<String>,
    /// The CloudEvents `source`: who produced it.
    pub source: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Milliseconds since the first event of the trace was stored.
    pub offset_ms: i64,
    pub causation_id: Option<String>,
    /// The type of the event named by `causation_id`, when the trace holds it.
    pub cause_type: Option<String>,
    pub summary: String,
    /// The same event id was already seen earlier in the trace.
    pub duplicate: bool,
}

/// A dead letter that concerns the order.
#[derive(Debug, Clone, Serialize)]
pub struct TraceDeadLetter {
    pub sequence: u64,
    pub service: String,
    pub original_subject: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
}

/// Where the saga stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TraceStatus {
    /// Every step the saga table asks for has happened.
    Settled { outcome: Outcome },
    /// A service still has to act, and the saga moved recently.
    InProgress { next: String },
    /// The expected step is missing and nothing happened for longer than the threshold.
    Stuck {
        /// The service that should act.
        waiting_for: String,
        /// How long ago the last event was stored.
        since_ms: u64,
        reason: String,
        /// Whether that service answered `$SRV.PING` just now.
        answers_ping: bool,
    },
}

/// [`trace_with`] with the default stuck threshold of 5 s.
pub async fn trace(
    client: &Client,
    order_id: &str,
    out: &mut impl Write,
    color: bool,
) -> Result<Trace, OpsError> {
    trace_with(client, order_id, DEFAULT_STUCK_AFTER, out, color).await
}

/// Rebuilds one order's saga and renders it; a saga whose next step has been missing for
/// longer than `stuck_after` is reported stuck, and the service it waits for is pinged.
pub async fn trace_with(
    client: &Client,
    order_id: &str,
    stuck_after: Duration,
    out: &mut impl Write,
    color: bool,
) -> Result<Trace, OpsError> {
    let order_id = OrderId::parse(order_id)
        .map_err(|e| OpsError::InvalidOptions(e.to_string()))?
        .to_string();
    let js = jetstream::new(client.clone());
    let stored = events_about(&js, &order_id).await?;
    let dead = dead_letters_about(&js, &order_id).await?;
    let (checkout, checkout_error) =
        match request_found::<OrderView, _>(client, ORDERS_GET.subject, &OrderRef::new(&order_id))
            .await
        {
            Ok(view) => (view, None),
            // The trace is most needed when a service is down, so checkout's silence is
            // reported, not fatal.
            Err(e) => (None, Some(e.to_string())),
        };
    if stored.is_empty() && dead.is_empty() && checkout.is_none() && checkout_error.is_none() {
        return Err(OpsError::UnknownOrder { order_id });
    }
    let events = timeline(&stored);
    let (status, expected_next) = status(client, &stored, stuck_after).await;
    let trace = Trace {
        order_id,
        events,
        dead_letters: dead.iter().map(dead_letter).collect(),
        checkout,
        checkout_error,
        status,
        expected_next,
    };
    render(&trace, out, Paint::new(color))?;
    Ok(trace)
}

fn dead_letter(letter: &StoredDeadLetter) -> TraceDeadLetter {
    TraceDeadLetter {
        sequence: letter.sequence,
        service: letter.service.clone(),
        original_subject: letter.original_subject.clone(),
        reason: letter.reason.clone(),
        parked_at: letter.stored_at,
    }
}

/// The stored messages as timeline entries, with duplicates marked and causes resolved.
fn timeline(stored: &[StoredEvent]) -> Vec<TraceEvent> {
    let kinds: HashMap<&str, &'static str> = stored
        .iter()
        .filter_map(|e| e.envelope())
        .map(|e| (e.meta.id.as_str(), e.kind().name()))
        .collect();
    let first = stored.first().map(|e| e.stored_at);
    let mut seen = HashSet::new();
    stored
        .iter()
        .map(|e| {
            let offset_ms = first
                .map(|f| (e.stored_at - f).whole_milliseconds() as i64)
                .unwrap_or(0);
            match &e.decoded {
                Ok(envelope) => {
                    let causation_id = envelope.meta.causation_id.clone();
                    TraceEvent {
                        stream: e.stream.clone(),
                        sequence: e.sequence,
                        subject: e.subject.clone(),
                        event_type: envelope.kind().name().to_owned(),
                        id: Some(envelope.meta.id.clone()),
                        source: Some(envelope.meta.source.clone()),
                        time: e.stored_at,
                        offset_ms,
                        cause_type: causation_id
                            .as_deref()
                            .and_then(|c| kinds.get(c))
                            .map(|k| (*k).to_owned()),
                        causation_id,
                        summary: summarize(&envelope.event),
                        duplicate: !seen.insert(envelope.meta.id.clone()),
                    }
                }
                Err(error) => TraceEvent {
                    stream: e.stream.clone(),
                    sequence: e.sequence,
                    subject: e.subject.clone(),
                    event_type: "undecodable".to_owned(),
                    id: None,
                    source: None,
                    time: e.stored_at,
                    offset_ms,
                    causation_id: None,
                    cause_type: None,
                    summary: error.to_string(),
                    duplicate: false,
                },
            }
        })
        .collect()
}

/// Where the saga stands; pings the service it waits for when it has waited too long.
async fn status(
    client: &Client,
    stored: &[StoredEvent],
    stuck_after: Duration,
) -> (TraceStatus, Option<String>) {
    let mut seen = HashSet::new();
    // At-least-once delivery makes duplicates normal; each fact counts once.
    let unique = stored
        .iter()
        .filter_map(|e| e.envelope())
        .filter(|e| seen.insert(e.meta.id.clone()));
    let position = Facts::from_events(unique).position();
    let step = match position {
        Position::Settled(outcome) => return (TraceStatus::Settled { outcome }, None),
        Position::NotPlaced => {
            let next = "waiting for the order itself: no OrderPlaced is stored".to_owned();
            return (TraceStatus::InProgress { next }, None);
        }
        Position::Waiting(step) => step,
    };
    let expected = Some(step.service.to_owned());
    let since = stored
        .last()
        .map(|e| OffsetDateTime::now_utc() - e.stored_at)
        .and_then(|d| u64::try_from(d.whole_milliseconds()).ok())
        .unwrap_or(0);
    if since < stuck_after.as_millis() as u64 {
        let next = step.sentence();
        return (TraceStatus::InProgress { next }, expected);
    }
    let answers_ping = answers_ping(client, step.service, PING_TIMEOUT).await;
    let reason = format!(
        "{} has not reacted to {} for {}",
        step.service,
        step.reacting_to.name(),
        duration_ms(since)
    );
    let status = TraceStatus::Stuck {
        waiting_for: step.service.to_owned(),
        since_ms: since,
        reason,
        answers_ping,
    };
    (status, expected)
}

fn clock(t: OffsetDateTime) -> String {
    let format = format_description!("[hour]:[minute]:[second].[subsecond digits:3]");
    t.format(&format).unwrap_or_default()
}

fn render(trace: &Trace, out: &mut impl Write, paint: Paint) -> Result<(), OpsError> {
    let n = trace.events.len();
    writeln!(
        out,
        "{} {}  {}",
        paint.bold("order"),
        paint.bold(&trace.order_id),
        paint.dim(&format!("{n} event(s), times in UTC"))
    )?;
    for (i, event) in trace.events.iter().enumerate() {
        let last = i + 1 == n;
        let (branch, stem) = if last {
            ("└─", "   ")
        } else {
            ("├─", "│  ")
        };
        let kind = if event.event_type == "undecodable" {
            paint.red(&format!("{:<26}", event.event_type))
        } else {
            paint.cyan(&format!("{:<26}", event.event_type))
        };
        let mut line = format!(
            "{branch} {}  {:>9}  {kind} {:<10}",
            clock(event.time),
            format!("+{} ms", event.offset_ms),
            event.source.as_deref().unwrap_or("?"),
        );
        if let Some(id) = &event.id {
            line.push_str(&paint.dim(&format!(" #{}", short_id(id))));
        }
        if let Some(cause) = &event.causation_id {
            let what = event.cause_type.as_deref().unwrap_or("not in this trace");
            line.push_str(&paint.dim(&format!("  ← #{} {what}", short_id(cause))));
        }
        if event.duplicate {
            line.push_str(&paint.yellow("  DUPLICATE (same event id seen before)"));
        }
        writeln!(out, "{}", line.trim_end())?;
        writeln!(out, "{stem}   {}", event.summary)?;
    }
    if !trace.dead_letters.is_empty() {
        writeln!(out, "\n{}", paint.bold("dead letters"))?;
        for letter in &trace.dead_letters {
            writeln!(
                out,
                "  {} #{} parked by {} from {}: {}",
                clock(letter.parked_at),
                letter.sequence,
                letter.service,
                letter.original_subject,
                paint.red(&letter.reason)
            )?;
        }
    }
    writeln!(out)?;
    render_checkout(trace, out, paint)?;
    render_status(&trace.status, out, paint)?;
    Ok(())
}

fn render_checkout(trace: &Trace, out: &mut impl Write, paint: Paint) -> Result<(), OpsError> {
    let label = paint.bold("checkout");
    match (&trace.checkout, &trace.checkout_error) {
        (Some(view), _) => {
            let mut parts = vec![view.status.as_str().to_owned()];
            if let Some(reason) = view.reason {
                parts.push(format!("reason {}", reason.as_str()));
            }
            parts.push(format!("total {} {}", view.total, view.currency));
            if let Some(payment) = &view.payment_id {
                parts.push(format!("payment {payment}"));
            }
            if let Some(deadline) = &view.deadline_at {
                parts.push(format!("deadline {deadline}"));
            }
            if let Some(settled) = &view.settled_at {
                parts.push(format!("settled {settled}"));
            }
            writeln!(out, "{label}  {}", parts.join(" · "))?;
        }
        (None, Some(error)) => writeln!(out, "{label}  {}", paint.red(error))?,
        (None, None) => writeln!(out, "{label}  does not know this order")?,
    }
    Ok(())
}

fn render_status(status: &TraceStatus, out: &mut impl Write, paint: Paint) -> Result<(), OpsError> {
    let label = paint.bold("status  ");
    match status {
        TraceStatus::Settled { outcome } => writeln!(
            out,
            "{label}{}",
            paint.green(&format!("settled: {outcome}"))
        )?,
        TraceStatus::InProgress { next } => writeln!(out, "{label}{}", paint.yellow(next))?,
        TraceStatus::Stuck {
            waiting_for,
            reason,
            answers_ping,
            ..
        } => {
            writeln!(out, "{label}{}", paint.red(&format!("STUCK: {reason}")))?;
            let ping = if *answers_ping {
                format!("{waiting_for} answers PING: it is up but not processing")
            } else {
                format!("{waiting_for} is not answering PING")
            };
            writeln!(out, "        {}", paint.red(&ping))?;
        }
    }
    Ok(())
}
