//! Passive outlier detection: a pod whose connections keep failing leaves the rotation by
//! itself, as with Envoy's outlier detection or nginx's `max_fails`/`fail_timeout`.
//!
//! What the request path reports about each exchange is counted per pod: a failure is a refused
//! or failed connection, a reset, or a response the pod broke (not a model's 5xx, and not a
//! timeout: a slow model is not a dead pod, and an abandoned request keeps its slot until the
//! pod is done — see `upstream::Exchange`). After `consecutive_failures` in a row the pod is
//! *ejected*: it gets no new requests for `base_ejection × n` (n counts its ejections since it
//! last served a request; at most [`MAX_EJECTION`] or the base, whichever is longer), then
//! returns by itself and is ejected again if it fails again. A deployment never ejects more
//! than `max_ejection_percent` of its pods, and never its last one.
//!
//! Checking whether a pod is ejected costs one relaxed load on the request path; the time is
//! read only for pods that are ejected.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest ejection a pod gets, unless the base ejection time is longer (Envoy's default
/// `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// A deployment's outlier detection settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutlierSettings {
    /// Failures in a row that eject a pod; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each repeated one lasts one base longer.
    pub base_ejection: Duration,
    /// The largest share of the deployment's pods ejected at once, in percent (at least one
    /// pod may always be ejected when the deployment has two or more).
    pub max_ejection_percent: u8,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierSettings {
    /// How many of `pods` pods may be ejected at once: the share, at least one, never all.
    pub fn max_ejected(&self, pods: usize) -> usize {
        let share = pods * usize::from(self.max_ejection_percent.min(100)) / 100;
        share.max(1).min(pods.saturating_sub(1))
    }

    /// How long the `n`-th ejection in a row lasts.
    pub fn ejection_time(&self, n: u32) -> Duration {
        let cap = MAX_EJECTION.max(self.base_ejection);
        self.base_ejection.saturating_mul(n.max(1)).min(cap)
    }
}

/// What one pod's exchanges have shown lately.
#[derive(Debug, Default)]
pub(super) struct Health {
    failures: AtomicU32,
    ejected: AtomicBool,
    /// Ejections since the pod last served a request.
    ejections: AtomicU32,
    until: Mutex<Option<Instant>>,
}

/// A pod just taken out of the rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row that led to it.
    pub failures: u32,
    /// How long it lasts.
    pub duration: Duration,
    /// Its rank among the pod's ejections since it last served a request (1 for the first).
    pub repeat: u32,
}

impl Health {
    /// Whether the pod is out of the rotation now; an ejection that has run its time ends here.
    pub(super) fn is_ejected(&self) -> bool {
        if !self.ejected.load(Ordering::Relaxed) {
            return false;
        }
        let mut until = self.until.lock();
        match *until {
            Some(end) if Instant::now() < end => true,
            _ => {
                *until = None;
                self.ejected.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    /// The pod served a request: its failures in a row, and the ejections that led to its
    /// current return, are forgotten.
    pub(super) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.ejected.load(Ordering::Relaxed) {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; the failures in a row so far.
    pub(super) fn failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes the pod out of the rotation under `settings`, unless it already is.
    pub(super) fn eject(&self, settings: &OutlierSettings) -> Option<Ejection> {
        let mut until = self.until.lock();
        if self.ejected.load(Ordering::Relaxed) {
            return None;
        }
        let repeat = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = settings.ejection_time(repeat);
        *until = Some(Instant::now() + duration);
        self.ejected.store(true, Ordering::Relaxed);
        let failures = self.failures.swap(0, Ordering::Relaxed);
        Some(Ejection {
            failures,
            duration,
            repeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_allows_one_and_never_all() {
        let s = OutlierSettings::default();
        assert_eq!(s.max_ejected(0), 0);
        assert_eq!(s.max_ejected(1), 0, "a single pod is never ejected");
        assert_eq!(s.max_ejected(2), 1);
        assert_eq!(s.max_ejected(3), 1);
        assert_eq!(s.max_ejected(10), 5);
        let all = OutlierSettings {
            max_ejection_percent: 100,
            ..s
        };
        assert_eq!(all.max_ejected(4), 3, "one pod always stays");
        let none = OutlierSettings {
            max_ejection_percent: 0,
            ..s
        };
        assert_eq!(none.max_ejected(10), 1, "at least one may go");
    }

    #[test]
    fn repeated_ejections_last_longer_up_to_the_cap() {
        let s = OutlierSettings::default();
        assert_eq!(s.ejection_time(1), Duration::from_secs(30));
        assert_eq!(s.ejection_time(3), Duration::from_secs(90));
        assert_eq!(s.ejection_time(50), MAX_EJECTION);
        let long = OutlierSettings {
            base_ejection: Duration::from_secs(600),
            ..s
        };
        assert_eq!(long.ejection_time(2), Duration::from_secs(600));
    }

    #[test]
    fn an_ejection_ends_by_itself_and_a_success_resets_the_count() {
        let s = OutlierSettings {
            base_ejection: Duration::from_millis(20),
            ..OutlierSettings::default()
        };
        let h = Health::default();
        assert_eq!(h.failed(), 1);
        assert_eq!(h.failed(), 2);
        let first = h.eject(&s).unwrap();
        assert_eq!((first.failures, first.repeat), (2, 1));
        assert!(h.eject(&s).is_none(), "already out");
        assert!(h.is_ejected());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.is_ejected(), "back after its time");
        assert_eq!(h.eject(&s).unwrap().repeat, 2, "ejected again: longer");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!h.is_ejected());
        h.succeeded();
        assert_eq!(h.eject(&s).unwrap().repeat, 1, "a success starts over");
    }
}
