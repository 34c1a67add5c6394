//! The decision: a pure function from the memory of earlier intervals, one load sample and the
//! deployment's policy to the replica count to set now.
//!
//! Azure ML (`docs/ARCHITECTURE.md`, "Autoscaling"): utilization = (replicas busy
//! processing a request + requests queued in the router) / current replicas; above the target
//! (default 70 %) replicas are added "eager and fast", below it they are removed
//! "conservatively (around 20 times of the scale up refresh interval)".
//!
//! Load is counted in pods: used slots (requests in flight) and queued requests, each divided by
//! `maxConcurrentRequestsPerInstance`. The replicas that carry that load at the target are
//!
//! ```text
//! desired = ceil((in_flight + queued) / max_concurrent / (target / 100))
//!         = ceil((in_flight + queued) * 100 / (max_concurrent * target))
//! ```
//!
//! computed in integers over the exact fraction, so there is one rounding (up, at the end) and no
//! floating-point error: 7 busy slots at 70 % with one slot per pod ask for exactly 10 pods, not
//! 11. The result is kept within `minInstances..=maxInstances`.
//!
//! - More replicas wanted than there are: set them at once.
//! - Fewer wanted: count the intervals in a row that want fewer; once they reach
//!   `scale_down_intervals`, remove one replica and start counting again, so every further step
//!   down needs another full window of low load.
//! - Fewer replicas than `minInstances` or more than `maxInstances` (the bounds changed): move
//!   to the bound at once.

/// One sample of a deployment's load, taken at a decision interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Replicas of the target Deployment now (`spec.replicas` of its scale subresource).
    pub current: u32,
    /// Requests in flight on the deployment's pods (used slots).
    pub in_flight: u32,
    /// Requests waiting in the router's queue for a slot.
    pub queued: u32,
}

/// A deployment's autoscaling policy (its `scaleSettings` and `maxConcurrentRequestsPerInstance`,
/// and the router's scale-down hysteresis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Target utilization in percent (1–100).
    pub target_percent: u32,
    /// Slots per pod.
    pub max_concurrent: u32,
    /// Intervals in a row that must want fewer replicas before one is removed.
    pub scale_down_intervals: u32,
}

/// What the decision remembers between intervals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Intervals in a row whose desired count was below the current one.
    pub below_for: u32,
}

/// Why the decision came out as it did (written to the status as `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The load asks for more replicas: they are added now.
    ScaledUp,
    /// The load has asked for fewer replicas for the whole window: one is removed.
    ScaledDown,
    /// The load asks for the replicas there are.
    Steady,
    /// The load asks for fewer replicas, not yet for the whole window.
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
            Reason::ScaledDown => "ScaledDown",
            Reason::Steady => "Steady",
            Reason::WaitingToScaleDown => "WaitingToScaleDown",
            Reason::BelowMinimum => "BelowMinimum",
            Reason::AboveMaximum => "AboveMaximum",
        }
    }
}

/// The outcome of one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the load asks for, within the bounds.
    pub desired: u32,
    /// Replicas to set now (equal to the sample's `current` when nothing changes).
    pub replicas: u32,
    /// Why.
    pub reason: Reason,
    /// The memory for the next interval.
    pub state: State,
}

/// Replicas that carry the sample's load at the target utilization, within the bounds (see the
/// module documentation for the rounding).
pub fn desired_replicas(sample: Sample, policy: &Policy) -> u32 {
    let slots = u64::from(sample.in_flight) + u64::from(sample.queued);
    let per_replica =
        u64::from(policy.max_concurrent.max(1)) * u64::from(policy.target_percent.max(1));
    let raw = u32::try_from((slots * 100).div_ceil(per_replica)).unwrap_or(u32::MAX);
    let max = policy.max.max(policy.min);
    raw.max(policy.min).min(max)
}

/// Utilization in percent: (in-flight + queued slots) / (current replicas × slots per replica).
/// `None` without replicas.
pub fn utilization_percent(sample: Sample, policy: &Policy) -> Option<u64> {
    let capacity = u64::from(sample.current) * u64::from(policy.max_concurrent.max(1));
    (capacity > 0)
        .then(|| (u64::from(sample.in_flight) + u64::from(sample.queued)) * 100 / capacity)
}

/// Decides the replica count for one interval.
pub fn decide(state: State, sample: Sample, policy: &Policy) -> Decision {
    let desired = desired_replicas(sample, policy);
    let current = sample.current;
    let max = policy.max.max(policy.min);
    let now = |replicas, reason| Decision {
        desired,
        replicas,
        reason,
        state: State::default(),
    };
    if current > max {
        return now(max, Reason::AboveMaximum);
    }
    if current < policy.min {
        let reason = if desired > policy.min {
            Reason::ScaledUp
        } else {
            Reason::BelowMinimum
        };
        return now(desired, reason);
    }
    if desired > current {
        return now(desired, Reason::ScaledUp);
    }
    if desired == current {
        return now(current, Reason::Steady);
    }
    let below_for = state.below_for.saturating_add(1);
    if below_for >= policy.scale_down_intervals.max(1) {
        return now(current - 1, Reason::ScaledDown);
    }
    Decision {
        desired,
        replicas: current,
        reason: Reason::WaitingToScaleDown,
        state: State { below_for },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32, max_concurrent: u32) -> Policy {
        Policy {
            min,
            max,
            target_percent: 70,
            max_concurrent,
            scale_down_intervals: 3,
        }
    }

    fn sample(current: u32, in_flight: u32, queued: u32) -> Sample {
        Sample {
            current,
            in_flight,
            queued,
        }
    }

    #[test]
    fn the_formula_rounds_once_and_up() {
        let p = policy(0, 100, 1);
        assert_eq!(desired_replicas(sample(1, 0, 0), &p), 0);
        assert_eq!(desired_replicas(sample(1, 1, 0), &p), 2, "1 / 0.7 = 1.43");
        assert_eq!(
            desired_replicas(sample(1, 7, 0), &p),
            10,
            "7 / 0.7 is exactly 10"
        );
        assert_eq!(desired_replicas(sample(1, 7, 1), &p), 12, "8 / 0.7 = 11.43");
        let four_slots = policy(1, 100, 4);
        assert_eq!(
            desired_replicas(sample(3, 6, 2), &four_slots),
            3,
            "2 pods of load / 0.7 = 2.86"
        );
        assert_eq!(
            desired_replicas(sample(3, 0, 0), &four_slots),
            1,
            "never below min"
        );
        assert_eq!(
            desired_replicas(sample(3, 400, 400), &four_slots),
            100,
            "never above max"
        );
    }

    #[test]
    fn bad_settings_do_not_panic() {
        let weird = Policy {
            min: 5,
            max: 2,
            target_percent: 0,
            max_concurrent: 0,
            scale_down_intervals: 0,
        };
        let d = decide(State::default(), sample(3, u32::MAX, u32::MAX), &weird);
        assert_eq!(d.replicas, 5);
        assert_eq!(utilization_percent(sample(0, 5, 5), &weird), None);
    }

    #[test]
    fn out_of_bounds_replicas_move_to_the_bound_at_once() {
        let p = policy(2, 4, 1);
        let d = decide(State { below_for: 2 }, sample(6, 0, 0), &p);
        assert_eq!((d.replicas, d.reason), (4, Reason::AboveMaximum));
        let d = decide(State::default(), sample(1, 0, 0), &p);
        assert_eq!((d.replicas, d.reason), (2, Reason::BelowMinimum));
        let d = decide(State::default(), sample(0, 3, 0), &p);
        assert_eq!((d.replicas, d.reason), (4, Reason::ScaledUp));
    }

    /// A recorded trace (one slot per pod, 70 %, 1–5 replicas, 3 intervals of hysteresis):
    /// a load step, a spike that queues, a dip shorter than the window, and the load going away.
    /// Each row is (in flight, queued, replicas set after the decision, reason); the current
    /// count follows what the previous row set, as the Deployment would.
    #[test]
    fn a_recorded_trace() {
        use Reason::*;
        let trace: &[(u32, u32, u32, Reason)] = &[
            (0, 0, 1, Steady),
            (1, 0, 2, ScaledUp),           // 1 busy pod of 1 = 100 %: 2 pods
            (2, 0, 3, ScaledUp),           // the queue moved onto the new pod: 2 / 0.7 = 2.86
            (2, 3, 5, ScaledUp),           // a spike queues 3 more: 5 / 0.7 = 7.1, capped at 5
            (3, 0, 5, Steady),             // 3 / 0.7 = 4.3: still wants 5
            (2, 0, 5, WaitingToScaleDown), // wants 3 (1st interval below)
            (2, 0, 5, WaitingToScaleDown), // 2nd
            (3, 1, 5, Steady),             // back up: the window starts again
            (2, 0, 5, WaitingToScaleDown),
            (2, 0, 5, WaitingToScaleDown),
            (2, 0, 4, ScaledDown), // 3rd in a row: one step
            (0, 0, 4, WaitingToScaleDown),
            (0, 0, 4, WaitingToScaleDown),
            (0, 0, 3, ScaledDown), // every step waits a full window
            (0, 0, 3, WaitingToScaleDown),
            (0, 0, 3, WaitingToScaleDown),
            (0, 0, 2, ScaledDown),
            (0, 0, 2, WaitingToScaleDown),
            (0, 0, 2, WaitingToScaleDown),
            (0, 0, 1, ScaledDown),
            (0, 0, 1, Steady), // never below min
            (0, 0, 1, Steady),
        ];
        let p = policy(1, 5, 1);
        let mut state = State::default();
        let mut current = 1;
        for (i, &(in_flight, queued, replicas, reason)) in trace.iter().enumerate() {
            let d = decide(state, sample(current, in_flight, queued), &p);
            assert_eq!(
                (d.replicas, d.reason),
                (replicas, reason),
                "row {i}: in flight {in_flight}, queued {queued}, current {current}"
            );
            state = d.state;
            current = d.replicas;
        }
    }
}
