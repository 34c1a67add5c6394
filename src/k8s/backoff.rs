//! The retry schedule of every watch: 250 ms, doubling up to 5 s, each delay jittered by ±20 %.
//!
//! Only progress resets it (see [`super::watch`]): a completed list or a received event. A watcher
//! that yields `Init` has made no request yet, so it does not count.

use std::time::Duration;

/// The first delay.
pub const MIN: Duration = Duration::from_millis(250);
/// The longest delay: a watch resumes at most about this long after the API server is back.
pub const MAX: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN }
    }
}

impl Backoff {
    /// The delay before the next attempt; the one after it is twice as long, up to [`MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.next);
        self.next = (self.next * 2).min(MAX);
        delay
    }

    /// Progress was made: the next delay is [`MIN`] again.
    pub fn reset(&mut self) {
        self.next = MIN;
    }
}

/// ±20 %, so that many replicas do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let nominal = [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000];
        for ms in nominal {
            let delay = backoff.next_delay().as_secs_f64() * 1_000.0;
            let ms = f64::from(ms);
            assert!(
                delay >= ms * 0.8 - 1e-6 && delay <= ms * 1.2 + 1e-6,
                "{delay} vs {ms}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= MIN.mul_f64(1.2));
    }
}
