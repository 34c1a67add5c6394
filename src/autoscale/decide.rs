//! The decision: from a deployment's load over time, its policy and the replicas it has, the
//! replica count to set now. Pure: time is passed in, so a test runs minutes of load on a
//! virtual clock in milliseconds.
//!
//! Knative's Pod Autoscaler (KPA) shape, with Azure ML's `targetUtilization` as the target:
//!
//! - **Target.** One pod carries `maxConcurrentRequestsPerInstance × targetUtilizationPercentage
//!   / 100` busy slots at the target (0.7 with one slot at 70 %).
//! - **Stable.** The replicas wanted are the busy slots averaged over the stable window (60 s) at
//!   the target: `ceil(average busy / per pod)`, unless that is within the tolerance band of the
//!   replicas there are (±10 %), which keeps them.
//! - **Panic.** Over the panic window (6 s) demand counts queued requests too; when it reaches
//!   `panic_threshold` (2×) the capacity of the ready pods (their slots), and the latest sample
//!   does too (the burst is still there), the scaler panics: it scales at once to what the short
//!   window asks at the target and never down, until the demand has stayed under the threshold
//!   for a whole stable window. Without the latest sample, a one-second Poisson burst near
//!   saturation (157 requests in a second against 150 of capacity) built a queue of 20 that
//!   alone lifted the 6 s average over 2× after the queue had drained, and the scaler went from
//!   3 pods to 10.
//! - **Up** at once. **Down** only once every recommendation of the stabilisation period asked
//!   for fewer, then to the highest of them, at most halving per step; never before the stable
//!   window is covered by samples (a new owner first watches a full window).
//! - Bounds: `minInstances..=maxInstances` (replicas outside move to the bound at once).
//!
//! Where this differs from Azure ML's formula, `(busy + queued) / replicas` at every sample: the
//! stable window averages busy slots, and queued requests count only in the panic window. With
//! random arrivals a queue forms long before the pods are busy (at 50 % busy, one pod with
//! Poisson arrivals and a fixed service time holds 0.25 requests in queue on average), so
//! counting it in the average would scale a half-busy deployment up; a queue that keeps building
//! means demand above capacity, which is what the panic window is for.

use std::collections::VecDeque;
use std::time::Duration;

use super::window::{Sample, Window};

/// A deployment's autoscaling policy (its `scaleSettings`, `maxConcurrentRequestsPerInstance`,
/// and the router's windows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Target utilization in percent (1–100).
    pub target_percent: u32,
    /// Slots per pod.
    pub max_concurrent: u32,
    /// The window busy slots are averaged over.
    pub stable_window: Duration,
    /// The short window demand is averaged over for panics.
    pub panic_window: Duration,
    /// Panic when the short window's demand reaches this many times the ready pods' slots.
    pub panic_threshold: f64,
    /// No change while the stable recommendation is within this fraction of the replicas there
    /// are.
    pub tolerance: f64,
    /// Recommendations must ask for fewer replicas for this long before a scale-down.
    pub stabilisation: Duration,
}

/// Load at one moment: requests in flight and requests queued, in slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests in flight on the deployment's pods.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
}

/// Why the decision came out as it did (written to the status as `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The load asks for more replicas: they are added now.
    ScaledUp,
    /// A burst asks for at least twice the ready replicas: scaled at once, not down until the
    /// burst has passed for a stable window.
    Panic,
    /// The load has asked for fewer replicas for the whole stabilisation period.
    ScaledDown,
    /// The load asks for the replicas there are (within the tolerance band).
    Steady,
    /// The load asks for fewer replicas, not yet for the whole stabilisation period.
    WaitingToScaleDown,
    /// Fewer replicas than `minInstances`: raised to it.
    BelowMinimum,
    /// More replicas than `maxInstances`: lowered to it.
    AboveMaximum,
}

impl Reason {
    /// The word written to the status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ScaledUp => "ScaledUp",
            Reason::Panic => "Panic",
            Reason::ScaledDown => "ScaledDown",
            Reason::Steady => "Steady",
            Reason::WaitingToScaleDown => "WaitingToScaleDown",
            Reason::BelowMinimum => "BelowMinimum",
            Reason::AboveMaximum => "AboveMaximum",
        }
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Replicas the load asks for now, within the bounds.
    pub desired: u32,
    /// Replicas to set now (the current count when nothing changes).
    pub replicas: u32,
    /// Why.
    pub reason: Reason,
    /// Busy slots averaged over the stable window.
    pub stable_busy: f64,
    /// In-flight plus queued requests averaged over the panic window.
    pub panic_demand: f64,
}

/// One deployment's scaler state: its load history, whether it panics, its recent
/// recommendations.
#[derive(Clone, Debug)]
pub struct Scaler {
    window: Window,
    /// When the panic window last asked for the threshold, while panicking.
    panic_seen: Option<Duration>,
    /// The most replicas the panic asked for.
    panic_peak: u32,
    /// Recommendations of the stabilisation period, oldest first.
    recommendations: VecDeque<(Duration, u32)>,
}

impl Scaler {
    /// A scaler with no history, for `policy`'s windows.
    pub fn new(policy: &Policy) -> Scaler {
        let keep = policy
            .stable_window
            .max(policy.panic_window)
            .max(policy.stabilisation);
        Scaler {
            window: Window::new(keep),
            panic_seen: None,
            panic_peak: 0,
            recommendations: VecDeque::new(),
        }
    }

    /// Records the load at `at`.
    pub fn record(&mut self, at: Duration, load: Load) {
        let busy = f64::from(load.in_flight);
        let sample = Sample {
            busy,
            demand: busy + f64::from(load.queued),
        };
        self.window.record(at, sample);
    }

    /// Decides at `at`, with `current` replicas set and `ready` of them ready.
    pub fn decide(&mut self, at: Duration, current: u32, ready: u32, policy: &Policy) -> Decision {
        let per_pod = slots_per_pod_at_target(policy);
        let stable_busy = self.window.average(at, policy.stable_window, |s| s.busy);
        let panic_demand = self.window.average(at, policy.panic_window, |s| s.demand);
        let mut decision = Decision {
            desired: current,
            replicas: current,
            reason: Reason::Steady,
            stable_busy,
            panic_demand,
        };
        let (min, max) = (policy.min.max(1), policy.max.max(policy.min.max(1)));
        let demand_now = self.window.average(at, Duration::ZERO, |s| s.demand);
        let panicking = self.panic(
            at,
            panic_demand.min(demand_now),
            panic_demand,
            ready,
            policy,
        );
        let recommended = if panicking {
            self.panic_peak.max(current)
        } else {
            stable_recommendation(stable_busy / per_pod, current, policy.tolerance)
        }
        .clamp(min, max);
        self.remember(at, recommended, policy.stabilisation);
        decision.desired = recommended;
        if current > max {
            return Decision {
                replicas: max,
                reason: Reason::AboveMaximum,
                ..decision
            };
        }
        if current < min {
            return Decision {
                replicas: recommended.max(min),
                reason: Reason::BelowMinimum,
                ..decision
            };
        }
        if recommended > current {
            let reason = if panicking {
                Reason::Panic
            } else {
                Reason::ScaledUp
            };
            return Decision {
                replicas: recommended,
                reason,
                ..decision
            };
        }
        if recommended == current {
            let reason = if panicking {
                Reason::Panic
            } else {
                Reason::Steady
            };
            return Decision { reason, ..decision };
        }
        self.scale_down(at, current, policy, decision)
    }

    /// Updates the panic state from `sustained`, the demand (slots) both over the short window
    /// and in the latest sample, and `demand`, the short window's; whether it panics now.
    fn panic(
        &mut self,
        at: Duration,
        sustained: f64,
        demand: f64,
        ready: u32,
        policy: &Policy,
    ) -> bool {
        let capacity = f64::from(ready.max(1)) * f64::from(policy.max_concurrent.max(1));
        if sustained >= policy.panic_threshold * capacity {
            self.panic_seen = Some(at);
            let pods = demand / slots_per_pod_at_target(policy);
            self.panic_peak = self.panic_peak.max(ceil(pods));
        } else if self
            .panic_seen
            .is_some_and(|seen| at.saturating_sub(seen) >= policy.stable_window)
        {
            self.panic_seen = None;
            self.panic_peak = 0;
        }
        self.panic_seen.is_some()
    }

    /// Keeps `recommended` and the recommendations of the last `period`.
    fn remember(&mut self, at: Duration, recommended: u32, period: Duration) {
        self.recommendations.push_back((at, recommended));
        let horizon = at.saturating_sub(period);
        while self.recommendations.len() > 1 && self.recommendations[1].0 <= horizon {
            self.recommendations.pop_front();
        }
    }

    /// Fewer replicas recommended: down to the highest recommendation of the stabilisation
    /// period, at most halving, once that period and the stable window are covered.
    fn scale_down(
        &self,
        at: Duration,
        current: u32,
        policy: &Policy,
        decision: Decision,
    ) -> Decision {
        let waiting = Decision {
            reason: Reason::WaitingToScaleDown,
            ..decision
        };
        let period_covered = self
            .recommendations
            .front()
            .is_some_and(|(first, _)| *first + policy.stabilisation <= at);
        if !period_covered || !self.window.covers(at, policy.stable_window) {
            return waiting;
        }
        let highest = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(current);
        if highest >= current {
            return waiting;
        }
        Decision {
            replicas: highest.max(current.div_ceil(2)),
            reason: Reason::ScaledDown,
            ..decision
        }
    }
}

/// Busy slots one pod carries at the target utilization.
pub fn slots_per_pod_at_target(policy: &Policy) -> f64 {
    f64::from(policy.max_concurrent.max(1)) * f64::from(policy.target_percent.clamp(1, 100)) / 100.0
}

/// The replicas `pods` (pods' worth of load at the target) ask for, keeping `current` within
/// the tolerance band.
fn stable_recommendation(pods: f64, current: u32, tolerance: f64) -> u32 {
    if current > 0 && (pods / f64::from(current) - 1.0).abs() <= tolerance {
        return current;
    }
    ceil(pods)
}

/// `x` rounded up to a replica count (a hair above an integer counts as it: float noise).
fn ceil(x: f64) -> u32 {
    let rounded = (x - 1e-9).ceil();
    if rounded <= 0.0 {
        0
    } else if rounded >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        rounded as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            target_percent: 70,
            max_concurrent: 1,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            tolerance: 0.1,
            stabilisation: Duration::from_secs(20),
        }
    }

    /// Feeds `load` every 250 ms from `from` to `to` (seconds), deciding every second; returns
    /// the replicas after, following the decisions as the Deployment would.
    fn run(scaler: &mut Scaler, p: &Policy, from: u64, to: u64, load: Load, replicas: &mut u32) {
        for tick in from * 4..to * 4 {
            let at = Duration::from_millis(tick * 250);
            scaler.record(at, load);
            if tick % 4 == 3 {
                *replicas = scaler.decide(at, *replicas, *replicas, p).replicas;
            }
        }
    }

    #[test]
    fn exactly_the_target_asks_for_what_there_is() {
        let p = policy();
        assert!((slots_per_pod_at_target(&p) - 0.7).abs() < 1e-12);
        assert_eq!(stable_recommendation(7.0 / 0.7, 10, 0.0), 10);
        assert_eq!(stable_recommendation(2.0, 1, 0.1), 2);
        assert_eq!(stable_recommendation(1.05, 1, 0.1), 1, "within the band");
    }

    #[test]
    fn a_steady_load_settles_and_stays() {
        let p = policy();
        let mut s = Scaler::new(&p);
        let mut replicas = 1;
        // 2.1 busy slots = 3 pods at 70 %.
        run(
            &mut s,
            &p,
            0,
            300,
            Load {
                in_flight: 2,
                queued: 0,
            },
            &mut replicas,
        );
        assert_eq!(replicas, 3);
    }

    #[test]
    fn a_burst_panics_at_once_and_no_load_comes_down_by_halves_after_stabilisation() {
        let p = policy();
        let mut s = Scaler::new(&p);
        let mut replicas = 1;
        run(&mut s, &p, 0, 70, Load::default(), &mut replicas);
        assert_eq!(replicas, 1);
        // One busy pod and five queued: 6 / 0.7 = 8.6 pods, far above twice the ready one.
        let mut seen = Vec::new();
        for tick in 70 * 4..80 * 4 {
            let at = Duration::from_millis(tick * 250);
            s.record(
                at,
                Load {
                    in_flight: 1,
                    queued: 5,
                },
            );
            if tick % 4 == 3 {
                let d = s.decide(at, replicas, replicas, &p);
                replicas = d.replicas;
                seen.push((tick / 4 - 70, d.replicas, d.reason));
            }
        }
        let first_up = seen.iter().find(|(_, r, _)| *r > 1).unwrap();
        assert!(
            first_up.0 < 6,
            "scaled up {} s into the burst: {seen:?}",
            first_up.0
        );
        assert_eq!(first_up.2, Reason::Panic);
        // The burst ends: no load. The panic holds for a stable window; then, after the
        // stabilisation period, down by halves.
        let mut steps = vec![replicas];
        for second in 80..240 {
            run(
                &mut s,
                &p,
                second,
                second + 1,
                Load::default(),
                &mut replicas,
            );
            if *steps.last().unwrap() != replicas {
                steps.push(replicas);
            }
        }
        assert_eq!(*steps.last().unwrap(), 1, "{steps:?}");
        for pair in steps.windows(2) {
            assert!(
                pair[1] >= pair[0].div_ceil(2),
                "more than halved: {steps:?}"
            );
        }
    }

    #[test]
    fn a_burst_that_has_drained_does_not_panic() {
        let p = policy();
        let mut s = Scaler::new(&p);
        let mut replicas = 3;
        let steady = Load {
            in_flight: 2,
            queued: 0,
        };
        run(&mut s, &p, 0, 100, steady, &mut replicas);
        let burst = Load {
            in_flight: 3,
            queued: 30,
        };
        run(&mut s, &p, 100, 101, burst, &mut replicas);
        let mut at = Duration::from_secs(101);
        s.record(at, steady);
        at += Duration::from_millis(250);
        let decision = s.decide(at, replicas, replicas, &p);
        assert!(decision.panic_demand >= 6.0, "{decision:?}");
        assert_eq!(decision.reason, Reason::Steady, "{decision:?}");
        s.record(at, burst);
        at += Duration::from_millis(250);
        let decision = s.decide(at, replicas, replicas, &p);
        assert_eq!(decision.reason, Reason::Panic, "still there: {decision:?}");
    }

    #[test]
    fn bad_settings_do_not_panic_the_process() {
        let weird = Policy {
            min: 5,
            max: 2,
            target_percent: 0,
            max_concurrent: 0,
            ..policy()
        };
        let mut s = Scaler::new(&weird);
        s.record(
            Duration::ZERO,
            Load {
                in_flight: u32::MAX,
                queued: u32::MAX,
            },
        );
        let d = s.decide(Duration::from_secs(1), 3, 0, &weird);
        assert_eq!(d.replicas, 5);
    }

    #[test]
    fn out_of_bounds_replicas_move_to_the_bound_at_once() {
        let p = Policy {
            min: 2,
            max: 4,
            ..policy()
        };
        let mut s = Scaler::new(&p);
        let d = s.decide(Duration::from_secs(1), 6, 6, &p);
        assert_eq!((d.replicas, d.reason), (4, Reason::AboveMaximum));
        let d = s.decide(Duration::from_secs(2), 1, 1, &p);
        assert_eq!((d.replicas, d.reason), (2, Reason::BelowMinimum));
    }
}
