//! Per-iteration samples and their percentiles.
//!
//! Every iteration's duration is kept (a few tens of thousands of `u64` at most), so the
//! percentiles are exact order statistics rather than bucket estimates: p99 of a
//! microsecond-scale call is precisely what the targets are about.

use std::time::Duration;

use serde::Serialize;

/// The durations of one measure, one per iteration, in nanoseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn with_capacity(iterations: usize) -> Self {
        Samples(Vec::with_capacity(iterations))
    }

    pub fn record(&mut self, took: Duration) {
        self.0
            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The summary of what was recorded, or `None` when nothing was.
    pub fn summarize(mut self) -> Option<Summary> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let sorted = &self.0;
        let sum: u128 = sorted.iter().map(|&n| u128::from(n)).sum();
        Some(Summary {
            iterations: sorted.len(),
            min_ns: sorted[0],
            p50_ns: percentile(sorted, 50.0),
            p99_ns: percentile(sorted, 99.0),
            max_ns: sorted[sorted.len() - 1],
            mean_ns: u64::try_from(sum / sorted.len() as u128).unwrap_or(u64::MAX),
        })
    }
}

/// Order statistics of one measure. With fewer than 100 iterations p99 is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub iterations: usize,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

/// The nearest-rank percentile of ascending `sorted` (not empty): the smallest sample
/// that at least `p` % of the samples do not exceed.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `ns` for a human: nanoseconds, microseconds or milliseconds, three significant digits.
pub fn human(ns: u64) -> String {
    let ns = ns as f64;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary_of(values: impl IntoIterator<Item = u64>) -> Summary {
        let mut samples = Samples::default();
        for v in values {
            samples.record(Duration::from_nanos(v));
        }
        samples.summarize().unwrap()
    }

    #[test]
    fn percentiles_are_nearest_rank_order_statistics() {
        // 1..=1000 shuffled by a fixed stride: the order of recording must not matter.
        let s = summary_of((0..1000u64).map(|i| (i * 7919) % 1000 + 1));
        assert_eq!(
            (s.min_ns, s.p50_ns, s.p99_ns, s.max_ns),
            (1, 500, 990, 1000)
        );
        assert_eq!(s.mean_ns, 500);
        assert_eq!(s.iterations, 1000);
    }

    #[test]
    fn few_samples_make_p99_the_maximum() {
        let s = summary_of([30, 10, 20]);
        assert_eq!((s.p50_ns, s.p99_ns), (20, 30));
        assert_eq!(summary_of([5]).p99_ns, 5);
        assert!(Samples::default().summarize().is_none());
    }

    #[test]
    fn human_picks_a_unit() {
        assert_eq!(human(850), "850 ns");
        assert_eq!(human(1_234), "1.23 µs");
        assert_eq!(human(45_600), "45.6 µs");
        assert_eq!(human(7_250_000), "7.25 ms");
    }
}
