//! The audit report as a person reads it: what was read, each invariant with ✔ or ✘, and
//! every violation with its evidence.

use std::io::Write;

use super::{AuditReport, Rule};
use crate::OpsError;

pub fn render(report: &AuditReport, out: &mut impl Write) -> Result<(), OpsError> {
    let c = &report.counts;
    let streams: Vec<String> = c
        .events_by_stream
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    writeln!(out, "shop audit")?;
    writeln!(
        out,
        "  events read     {} ({}); {} duplicate(s), {} undecodable",
        c.events_read,
        streams.join(", "),
        c.duplicate_events,
        c.undecodable_events
    )?;
    writeln!(
        out,
        "  orders          {}: {} confirmed, {} cancelled, {} rejected, {} in flight, {} unsettled past deadline",
        c.orders, c.confirmed, c.cancelled, c.rejected, c.in_flight, c.unsettled
    )?;
    writeln!(out, "  skus checked    {}", c.skus_checked)?;
    writeln!(
        out,
        "  payments        {} record(s), {} ledger entr(y/ies)",
        c.payment_records, c.ledger_entries
    )?;
    let outboxes: Vec<String> = c
        .outbox_backlog
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    writeln!(out, "  outboxes        {}", outboxes.join(", "))?;
    if !c.not_checked.is_empty() {
        writeln!(
            out,
            "  NOT CHECKED     {} (the service did not answer)",
            c.not_checked.join(", ")
        )?;
    }
    writeln!(out)?;
    writeln!(out, "checks")?;
    for rule in Rule::ALL {
        let n = report.violations_of(rule).count();
        if n == 0 {
            writeln!(out, "  ✔ {}", rule.invariant())?;
        } else {
            writeln!(out, "  ✘ {}  ({n} violation(s))", rule.invariant())?;
        }
    }
    if report.is_clean() {
        writeln!(out, "\nclean: every invariant holds")?;
        return Ok(());
    }
    writeln!(out, "\nviolations")?;
    for v in &report.violations {
        writeln!(out, "  [{}] {}: {}", v.rule, v.subject, v.evidence)?;
    }
    writeln!(out, "\nNOT CLEAN: {} violation(s)", report.violations.len())?;
    Ok(())
}
