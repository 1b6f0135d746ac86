//! A Prometheus histogram with fixed buckets: one relaxed atomic per bucket, observed once
//! per channel end (never per byte), so it costs an add or two.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Most buckets a histogram has (its `+Inf` bucket not counted).
pub const MAX_BUCKETS: usize = 16;

/// Counts of observations by bucket. Values are integers in the histogram's own unit
/// (microseconds, bytes); `scale` turns them into the base unit the metric is named in.
pub struct Histogram {
    /// Inclusive upper bounds, ascending, in the stored unit.
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative); index `bounds.len()` is `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
}

/// A histogram's figures, added up over shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub counts: [u64; MAX_BUCKETS + 1],
    pub sum: u64,
}

impl Histogram {
    pub const fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum: AtomicU64::new(0),
        }
    }

    /// The bucket `v` falls in: the first whose bound is at least `v` (`le` is inclusive).
    pub fn bucket(&self, v: u64) -> usize {
        self.bounds.partition_point(|&b| b < v)
    }

    pub fn observe(&self, v: u64) {
        self.counts[self.bucket(v)].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Adds this histogram's figures to `into`.
    pub fn add_to(&self, into: &mut Totals) {
        for (t, c) in into.counts.iter_mut().zip(&self.counts) {
            *t += c.load(Relaxed);
        }
        into.sum += self.sum.load(Relaxed);
    }

    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }
}

impl Totals {
    pub fn zero() -> Totals {
        Totals {
            counts: [0; MAX_BUCKETS + 1],
            sum: 0,
        }
    }

    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The histogram in the text format: cumulative `_bucket{le=…}` series, `_sum` and
    /// `_count`; bounds and sum divided by `scale` (stored unit → base unit).
    pub fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[u64], scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += self.counts[i];
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum as f64 / scale);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [u64; 3] = [10, 100, 1000];

    #[test]
    fn bounds_are_inclusive_and_overflow_goes_to_inf() {
        let h = Histogram::new(&BOUNDS);
        assert_eq!(h.bucket(0), 0);
        assert_eq!(h.bucket(10), 0);
        assert_eq!(h.bucket(11), 1);
        assert_eq!(h.bucket(1000), 2);
        assert_eq!(h.bucket(1001), 3);
        for v in [5, 10, 50, 5000] {
            h.observe(v);
        }
        let mut t = Totals::zero();
        h.add_to(&mut t);
        h.add_to(&mut t); // a second shard with the same figures
        assert_eq!(&t.counts[..4], &[4, 2, 0, 2]);
        assert_eq!(t.sum, 2 * 5065);
        assert_eq!(t.count(), 8);
    }

    #[test]
    fn renders_cumulative_buckets_in_base_units() {
        let h = Histogram::new(&BOUNDS);
        h.observe(10);
        h.observe(500);
        let mut t = Totals::zero();
        h.add_to(&mut t);
        let mut s = String::new();
        t.render(&mut s, "x_seconds", "X.", &BOUNDS, 1000.0);
        let want = "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
                    x_seconds_bucket{le=\"0.01\"} 1\nx_seconds_bucket{le=\"0.1\"} 1\n\
                    x_seconds_bucket{le=\"1\"} 2\nx_seconds_bucket{le=\"+Inf\"} 2\n\
                    x_seconds_sum 0.51\nx_seconds_count 2\n";
        assert_eq!(s, want);
    }
}
