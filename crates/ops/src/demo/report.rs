//! The demo's numbers: latency percentiles and the outcome table.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::DemoReport;
use crate::term::{duration_ms, Table};
use crate::OpsError;

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort();
        let rank = |p: f64| -> u64 {
            if samples.is_empty() {
                return 0;
            }
            let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples
                .get(index.saturating_sub(1).min(samples.len() - 1))
                .map_or(0, |d| d.as_millis() as u64)
        };
        Latency {
            samples: samples.len(),
            p50_ms: rank(50.0),
            p95_ms: rank(95.0),
            p99_ms: rank(99.0),
            max_ms: samples.last().map_or(0, |d| d.as_millis() as u64),
        }
    }
}

pub fn render(report: &DemoReport, out: &mut impl Write) -> Result<(), OpsError> {
    let mut table = Table::new(&["outcome", "orders"]);
    table.row(vec!["confirmed".into(), report.confirmed.to_string()]);
    for (reason, n) in &report.cancelled {
        table.row(vec![format!("cancelled · {reason}"), n.to_string()]);
    }
    table.row(vec![
        "rejected at the API (400)".into(),
        report.rejected_at_api.to_string(),
    ]);
    table.row(vec![
        "rejected by checkout".into(),
        report.rejected.to_string(),
    ]);
    table.row(vec![
        "still pending".into(),
        report.still_pending.to_string(),
    ]);
    if report.errors > 0 {
        table.row(vec!["errors".into(), report.errors.to_string()]);
    }
    table.row(vec!["total".into(), report.accounted().to_string()]);
    writeln!(out)?;
    write!(out, "{}", table.render("  "))?;
    let l = &report.latency;
    writeln!(
        out,
        "\n  latency, place → settled ({} orders): p50 {} · p95 {} · p99 {} · max {}",
        l.samples,
        duration_ms(l.p50_ms),
        duration_ms(l.p95_ms),
        duration_ms(l.p99_ms),
        duration_ms(l.max_ms)
    )?;
    if let Some(error) = &report.first_error {
        writeln!(out, "  first error: {error}")?;
    }
    writeln!(out, "  finished in {}", duration_ms(report.elapsed_ms))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!((l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms), (50, 95, 99, 100));
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }
}
