//! A deployment's load over time: samples taken every few hundred milliseconds, averaged over
//! sliding windows of time, on whatever clock the caller keeps (the controller's monotonic
//! clock, or a test's virtual one).
//!
//! Each sample holds until the next one (the load is piecewise constant), so an average is the
//! time-weighted mean over the window whatever the sampling cadence. Time before the first
//! sample counts as no load ([`Window::average`]), which keeps a scaler that has just started
//! (or just became the owner) from acting on a second of data; [`Window::covers`] says whether
//! the samples reach back over a whole window.

use std::collections::VecDeque;
use std::time::Duration;

/// One sample: busy slots (requests in flight) and demand (in flight plus queued).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Requests in flight on the deployment's pods.
    pub busy: f64,
    /// Requests in flight plus requests waiting for a slot.
    pub demand: f64,
}

/// Samples over the longest window anyone asks for.
#[derive(Clone, Debug)]
pub struct Window {
    samples: VecDeque<(Duration, Sample)>,
    keep: Duration,
    first: Option<Duration>,
}

impl Window {
    /// A window that keeps `keep` of history.
    pub fn new(keep: Duration) -> Window {
        Window {
            samples: VecDeque::new(),
            keep,
            first: None,
        }
    }

    /// Records `sample`, taken at `at` (times only grow).
    pub fn record(&mut self, at: Duration, sample: Sample) {
        if self.samples.back().is_some_and(|(last, _)| *last > at) {
            return;
        }
        self.first.get_or_insert(at);
        self.samples.push_back((at, sample));
        // Keep one sample older than the horizon: it holds at the horizon's start.
        let horizon = at.saturating_sub(self.keep);
        while self.samples.len() > 1 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
    }

    /// Whether the samples reach back over the whole `span` before `at`.
    pub fn covers(&self, at: Duration, span: Duration) -> bool {
        self.first.is_some_and(|first| first + span <= at)
    }

    /// The time-weighted mean of `value` over `(at - span, at]`, time before the first sample
    /// counting as 0. 0 without samples.
    pub fn average(&self, at: Duration, span: Duration, value: impl Fn(&Sample) -> f64) -> f64 {
        if span.is_zero() {
            return self.samples.back().map_or(0.0, |(_, s)| value(s));
        }
        let start = at.saturating_sub(span);
        let mut total = 0.0;
        for (i, (from, sample)) in self.samples.iter().enumerate() {
            let until = self
                .samples
                .get(i + 1)
                .map_or(at, |(next, _)| *next)
                .min(at);
            let from = (*from).max(start);
            if until > from {
                total += value(sample) * (until - from).as_secs_f64();
            }
        }
        total / span.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(busy: f64, demand: f64) -> Sample {
        Sample { busy, demand }
    }

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn averages_are_weighted_by_time_and_start_from_nothing() {
        let mut w = Window::new(secs(60));
        w.record(secs(10), s(1.0, 1.0));
        w.record(secs(20), s(3.0, 5.0));
        // Over (0, 30]: 10 s of nothing, 10 s at 1, 10 s at 3.
        let busy = w.average(secs(30), secs(30), |x| x.busy);
        assert!((busy - 4.0 / 3.0).abs() < 1e-9, "{busy}");
        // Over (20, 30]: 3 throughout.
        assert!((w.average(secs(30), secs(10), |x| x.demand) - 5.0).abs() < 1e-9);
        assert!(!w.covers(secs(30), secs(30)));
        assert!(w.covers(secs(40), secs(30)));
    }

    #[test]
    fn old_samples_go_but_the_one_that_holds_at_the_horizon_stays() {
        let mut w = Window::new(secs(10));
        for t in 0..100 {
            w.record(secs(t), s(t as f64, 0.0));
        }
        assert!(w.samples.len() <= 12, "{}", w.samples.len());
        // (89, 99]: samples 89..=98 each hold one second.
        let busy = w.average(secs(99), secs(10), |x| x.busy);
        assert!((busy - 93.5).abs() < 1e-9, "{busy}");
    }
}
