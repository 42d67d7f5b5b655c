//! A fixed-bucket latency histogram of atomics: cheap to record on the fetch path, read whole for
//! `/metrics` (buckets, sum, count) and for the median `storefs stats` shows.

use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency buckets, for every histogram and the p50 estimate.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Latencies counted per bucket of [`LATENCY_BUCKETS`], plus their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Counts per bucket, plus one for everything slower than the last bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The sum of every latency recorded, in microseconds (an integer, so one atomic add).
    sum_micros: AtomicU64,
}

/// A [`Histogram`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), then the overflow bucket.
    pub counts: Vec<u64>,
    /// Sum of the latencies, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one latency.
    pub fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts and sum now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// The upper bound of the bucket holding the median, in milliseconds; None before any
    /// record. Latencies above the last bucket report the last bound.
    pub fn p50_ms(&self) -> Option<f64> {
        let counts = self.snapshot().counts;
        let half = counts.iter().sum::<u64>().div_ceil(2);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if half > 0 && seen >= half {
                let bound = LATENCY_BUCKETS.get(i).or(LATENCY_BUCKETS.last()).copied();
                return bound.map(|s| s * 1000.0);
            }
        }
        None
    }
}

impl HistogramSnapshot {
    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p50_is_the_bucket_bound_of_the_median() {
        let h = Histogram::default();
        assert_eq!(h.p50_ms(), None);
        for ms in [2, 3, 4, 400, 3000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.p50_ms(), Some(5.0));
        for _ in 0..3 {
            h.observe(Duration::from_secs(60));
        }
        assert_eq!(h.p50_ms(), Some(500.0));
    }

    #[test]
    fn snapshot_counts_each_bucket_and_sums_in_seconds() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(250));
        h.observe(Duration::from_millis(250));
        h.observe(Duration::from_secs(11));
        let s = h.snapshot();
        assert_eq!(s.count(), 3);
        assert_eq!(s.counts[6], 2, "0.25 s is in the 0.25 bucket (le is inclusive)");
        assert_eq!(s.counts[LATENCY_BUCKETS.len()], 1, "beyond the last bound");
        assert!((s.sum_seconds - 11.5).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
