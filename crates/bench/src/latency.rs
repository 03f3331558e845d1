//! Latency percentiles over the orders completed in a measured window.

use std::time::Duration;

use serde::Serialize;

/// Percentiles in milliseconds (nearest-rank), over `count` orders.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LatencySummary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl LatencySummary {
    /// Summarises `samples`; all zeros when there are none.
    pub fn from_samples(mut samples: Vec<Duration>) -> LatencySummary {
        if samples.is_empty() {
            return LatencySummary::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| {
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(samples[index])
        };
        let total: Duration = samples.iter().sum();
        LatencySummary {
            count: n,
            mean_ms: ms(total) / n as f64,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: ms(samples[n - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let s = LatencySummary::from_samples(samples);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn no_samples_give_zeros() {
        assert_eq!(
            LatencySummary::from_samples(Vec::new()),
            LatencySummary::default()
        );
    }
}
