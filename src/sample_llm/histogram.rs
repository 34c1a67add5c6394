//! A Prometheus histogram of durations as the simulated pod exposes them (vLLM's latency
//! histograms): cumulative buckets, a sum and a count, updated without locks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds, seconds (vLLM's for time per output token, which also cover its
/// time-to-first-token range this simulation reaches).
const BOUNDS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
];

/// Observed durations: per-bucket counts, their sum in nanoseconds, their number.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Durations observed.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed))
    }

    /// The histogram in the text exposition format, as `name` with `labels` (`key="value"`).
    pub fn write(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum().as_secs_f64());
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_is_exact() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let mut page = String::new();
        h.write(&mut page, "t", "Help.", "m=\"x\"");
        assert!(page.contains("t_bucket{m=\"x\",le=\"0.01\"} 1\n"));
        assert!(page.contains("t_bucket{m=\"x\",le=\"0.05\"} 2\n"));
        assert!(page.contains("t_bucket{m=\"x\",le=\"5\"} 2\n"));
        assert!(page.contains("t_bucket{m=\"x\",le=\"+Inf\"} 3\n"));
        assert!(page.contains("t_sum{m=\"x\"} 9.035\n"));
        assert!(page.contains("t_count{m=\"x\"} 3\n"));
    }
}
