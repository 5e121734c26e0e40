//! Latency summaries: nearest-rank percentiles over a set of samples, in milliseconds.

use std::time::Duration;

use serde::Serialize;

/// A summary of latency samples. All figures in milliseconds; zero when there were no samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let total: Duration = sorted.iter().sum();
        let count = sorted.len();
        Self {
            count,
            p50_ms: ms(percentile(&sorted, 50)),
            p90_ms: ms(percentile(&sorted, 90)),
            p99_ms: ms(percentile(&sorted, 99)),
            max_ms: ms(sorted[count - 1]),
            mean_ms: ms(total) / count as f64,
        }
    }

    /// `p50 1.2 ms, p99 3.4 ms, max 5.6 ms (n=100)`.
    pub fn brief(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            self.p50_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// The nearest-rank percentile of sorted, non-empty samples: the smallest sample with at least
/// `p` percent of the samples at or below it.
pub fn percentile(sorted: &[Duration], p: u32) -> Duration {
    let n = sorted.len();
    let rank = (n * p as usize).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples_ms: &[u64], p: u32, expected_ms: u64) {
        let mut sorted: Vec<Duration> = samples_ms
            .iter()
            .copied()
            .map(Duration::from_millis)
            .collect();
        sorted.sort();
        assert_eq!(
            percentile(&sorted, p),
            Duration::from_millis(expected_ms),
            "p{p} of {samples_ms:?}"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        check(&[7], 50, 7);
        check(&[7], 99, 7);
        check(&[1, 2, 3, 4], 50, 2);
        check(&[1, 2, 3, 4], 99, 4);
        check(&(1..=100).collect::<Vec<_>>(), 50, 50);
        check(&(1..=100).collect::<Vec<_>>(), 99, 99);
        check(&(1..=100).collect::<Vec<_>>(), 100, 100);
        check(&(1..=1000).collect::<Vec<_>>(), 99, 990);
        check(&[5, 1, 3], 0, 1);
    }

    #[test]
    fn a_summary_of_nothing_is_zero() {
        assert_eq!(Summary::of(&[]), Summary::default());
        let s = Summary::of(&[Duration::from_millis(2), Duration::from_millis(4)]);
        assert_eq!((s.count, s.p50_ms, s.max_ms, s.mean_ms), (2, 2.0, 4.0, 3.0));
    }
}
