//! Load as the pods report it, combined with this router's own counts.
//!
//! The router's in-flight count of a pod is exact for its own requests and immediate; what the
//! pod reports (requests running and waiting, KV-cache use, time per output token) also covers
//! other routers' requests but is as old as the last scrape. They are combined as
//!
//! ```text
//! others   = max(0, running + waiting − ours at the scrape)    requests of other routers
//! kv       = max(1, running + waiting) × clamp((kv_usage − 0.9) / 0.1, 0, 1)
//!                                                   a full KV cache doubles the reported load
//! slowness = clamp(time per token / the median pod's, 1, 10)   from the pods' histograms
//! score    = (ours now + 1 + freshness × (others + kv)) × (1 + freshness × (slowness − 1))
//! ```
//!
//! The first factor is the requests a new one would share the pod with, itself included; the
//! second how much slower than the median pod each of them is served: the score estimates the
//! new request's wait in units of the median pod's time. A pod three times slower with one
//! request of ours scores like a median pod with five. Times per token are the pods' own
//! histograms' means between two scrapes, smoothed (see [`super::scrape::text`]); the median,
//! not the fastest, is the reference, so that the spread of equal pods' batches makes none of
//! them look slow (`benches/llm` with one pod 3× slower, one 20 s run each: against the
//! fastest pod, TTFT p50 60 ms and p99 496 ms; against the median, smoothed, 48 and 362 ms).
//! `freshness` is 1 while the report is younger than two scrape intervals and falls linearly
//! to 0 at the report's maximum age, after which only the router's own count is used. So a stale or missing report degrades to
//! least-outstanding, never to a wrong preference, and the router's own requests are never
//! counted twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::admission::{Candidates, Policy};

/// KV-cache usage above which a pod counts as more loaded.
const KV_PRESSURE_FROM: f64 = 0.9;
/// The largest slowness a pod is given (beyond it, a pod is not worth waiting for anyway).
const MAX_SLOWNESS: f64 = 10.0;

/// A pod's time-per-output-token histogram as scraped: cumulative, since the pod started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenLatency {
    /// Seconds, summed over every token.
    pub sum: f64,
    /// Tokens.
    pub count: f64,
}

impl TokenLatency {
    /// Seconds per token since the pod started.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// Seconds per token since `earlier` (the whole mean when the pod restarted since).
    pub fn mean_since(&self, earlier: &TokenLatency) -> Option<f64> {
        let tokens = self.count - earlier.count;
        if tokens < 0.0 || self.sum < earlier.sum {
            return self.mean();
        }
        (tokens > 0.0).then(|| (self.sum - earlier.sum) / tokens)
    }
}

/// What one pod reported at one scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// Requests the pod is running (its batch).
    pub running: f64,
    /// Requests the pod has queued.
    pub waiting: f64,
    /// KV-cache usage, 0 to 1, when the pod reports it.
    pub kv_usage: Option<f64>,
    /// The pod's time-per-output-token histogram, when it reports one.
    pub token_latency: Option<TokenLatency>,
    /// Seconds per output token since the previous scrape (the last estimate when the pod
    /// made no token since).
    pub seconds_per_token: Option<f64>,
    /// This router's requests in flight on the pod when the scrape was sent.
    pub ours_at_scrape: u32,
    /// When the scrape was answered.
    pub at: Instant,
}

impl Report {
    /// How much the report still counts at `now`: 1 until `fresh_for`, then linearly less,
    /// 0 from `max_age` on.
    pub fn freshness(&self, now: Instant, fresh_for: Duration, max_age: Duration) -> f64 {
        let age = now.saturating_duration_since(self.at);
        if age <= fresh_for {
            1.0
        } else if age >= max_age || max_age <= fresh_for {
            0.0
        } else {
            (max_age - age).as_secs_f64() / (max_age - fresh_for).as_secs_f64()
        }
    }

    /// Requests the pod has beyond this router's own (at the time of the scrape).
    pub fn others(&self) -> f64 {
        (self.running + self.waiting - f64::from(self.ours_at_scrape)).max(0.0)
    }

    /// The load a nearly full KV cache adds, in requests: none below 90 % usage, as much as
    /// the pod reports (at least one) when full, since new requests then wait or preempt.
    pub fn kv_pressure(&self) -> f64 {
        let usage = self.kv_usage.unwrap_or(0.0);
        let over = ((usage - KV_PRESSURE_FROM) / (1.0 - KV_PRESSURE_FROM)).clamp(0.0, 1.0);
        (self.running + self.waiting).max(1.0) * over
    }
}

/// The latest report of every pod of one deployment, published whole by its scraper and read
/// without locks by the request path.
#[derive(Debug)]
pub struct PodLoads {
    board: ArcSwap<Board>,
    fresh_for: Duration,
    max_age: Duration,
}

/// One round's reports, and the median time per token among the fresh ones.
#[derive(Debug, Default)]
struct Board {
    reports: Arc<HashMap<SocketAddr, Report>>,
    reference: Option<f64>,
}

impl Board {
    /// How many times slower than the median pod `report`'s pod makes tokens (1 when unknown
    /// or faster).
    fn slowness(&self, report: &Report) -> f64 {
        match (report.seconds_per_token, self.reference) {
            (Some(pod), Some(median)) if median > 0.0 => (pod / median).clamp(1.0, MAX_SLOWNESS),
            _ => 1.0,
        }
    }
}

impl PodLoads {
    /// An empty board whose reports count fully for `fresh_for` and not at all from `max_age`.
    pub fn new(fresh_for: Duration, max_age: Duration) -> Arc<Self> {
        Arc::new(PodLoads {
            board: ArcSwap::from_pointee(Board::default()),
            fresh_for,
            max_age,
        })
    }

    /// Replaces the reports (the scraper, after each round). The median time per token is
    /// taken over the reports still fresh.
    pub fn publish(&self, reports: HashMap<SocketAddr, Report>) {
        let now = Instant::now();
        let mut times: Vec<f64> = reports
            .values()
            .filter(|r| r.freshness(now, self.fresh_for, self.max_age) > 0.0)
            .filter_map(|r| r.seconds_per_token)
            .filter(|s| *s > 0.0)
            .collect();
        times.sort_by(f64::total_cmp);
        // The lower median: with two pods, the faster one.
        let reference = times.get(times.len().saturating_sub(1) / 2).copied();
        self.board.store(Arc::new(Board {
            reports: Arc::new(reports),
            reference,
        }));
    }

    /// The reports now.
    pub fn reports(&self) -> Arc<HashMap<SocketAddr, Report>> {
        self.board.load().reports.clone()
    }

    /// The score of every candidate (lower is less loaded; the module's formula), from one read
    /// of the board.
    pub fn scorer<'c>(&self, candidates: &'c Candidates<'_>) -> impl Fn(usize) -> f64 + 'c {
        let board = self.board.load_full();
        let (now, fresh_for, max_age) = (Instant::now(), self.fresh_for, self.max_age);
        move |i| {
            let pod = candidates.pod(i);
            let ours = f64::from(pod.in_flight()) + 1.0;
            match board.reports.get(&pod.address()) {
                None => ours,
                Some(report) => {
                    let weight = report.freshness(now, fresh_for, max_age);
                    let sharing = ours + weight * (report.others() + report.kv_pressure());
                    sharing * (1.0 + weight * (board.slowness(report) - 1.0))
                }
            }
        }
    }
}

/// The index of the candidate with room and the lowest `score`, ties broken at random (the scan
/// starts at a random pod and keeps the first of equals).
pub fn lowest(candidates: &Candidates<'_>, score: impl Fn(usize) -> f64) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let start = fastrand::usize(..n);
    let mut best: Option<(usize, f64)> = None;
    for i in (0..n).map(|k| (start + k) % n) {
        if !candidates.has_room(i) {
            continue;
        }
        let s = score(i);
        if best.is_none_or(|(_, b)| s < b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Chooses the pod with room whose combined load (the module's formula) is lowest.
#[derive(Debug)]
pub struct PodLoadAware {
    loads: Arc<PodLoads>,
}

impl PodLoadAware {
    /// Picking on `loads` (filled by the deployment's scraper).
    pub fn new(loads: Arc<PodLoads>) -> Self {
        PodLoadAware { loads }
    }
}

impl Policy for PodLoadAware {
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize> {
        lowest(candidates, self.loads.scorer(candidates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picking::tests::{pods, take};

    fn report(running: f64, waiting: f64, ours: u32, age: Duration) -> Report {
        Report {
            running,
            waiting,
            kv_usage: None,
            token_latency: None,
            seconds_per_token: None,
            ours_at_scrape: ours,
            at: Instant::now() - age,
        }
    }

    #[test]
    fn freshness_falls_from_one_to_zero() {
        let r = report(0.0, 0.0, 0, Duration::ZERO);
        let (fresh, max) = (Duration::from_secs(2), Duration::from_secs(6));
        assert_eq!(r.freshness(r.at + Duration::from_secs(1), fresh, max), 1.0);
        assert_eq!(r.freshness(r.at + Duration::from_secs(4), fresh, max), 0.5);
        assert_eq!(r.freshness(r.at + Duration::from_secs(6), fresh, max), 0.0);
        assert_eq!(r.freshness(r.at + Duration::from_secs(60), fresh, max), 0.0);
    }

    #[test]
    fn our_own_requests_are_not_counted_twice() {
        // The pod ran 5 when we had 3 on it: 2 are another router's.
        let r = report(4.0, 1.0, 3, Duration::ZERO);
        assert_eq!(r.others(), 2.0);
        // It reports fewer than ours (our new requests had not arrived yet): nobody else's.
        assert_eq!(report(1.0, 0.0, 3, Duration::ZERO).others(), 0.0);
    }

    #[test]
    fn kv_pressure_starts_near_full() {
        let mut r = report(6.0, 2.0, 0, Duration::ZERO);
        r.kv_usage = Some(0.5);
        assert_eq!(r.kv_pressure(), 0.0);
        r.kv_usage = Some(0.95);
        assert!((r.kv_pressure() - 4.0).abs() < 1e-9);
        r.kv_usage = Some(1.0);
        assert_eq!(r.kv_pressure(), 8.0);
    }

    #[test]
    fn fresh_reports_steer_and_stale_ones_do_not() {
        let pods = pods(2);
        let loads = PodLoads::new(Duration::from_secs(2), Duration::from_secs(6));
        let policy = PodLoadAware::new(loads.clone());
        // Pod 0 is busy with another router's requests; ours are equal (none).
        let busy = |age| HashMap::from([(pods[0].address(), report(6.0, 4.0, 0, age))]);
        loads.publish(busy(Duration::ZERO));
        let candidates = Candidates::new(&pods, 16, None);
        for _ in 0..50 {
            assert_eq!(policy.choose(&candidates), Some(1));
        }
        // Pod 1 with 12 of ours is busier than pod 0 with 10 of another router's.
        let held = take(&pods[1], 12);
        assert_eq!(policy.choose(&candidates), Some(0));
        drop(held);
        // A report older than its maximum age no longer counts: ties are spread again.
        loads.publish(busy(Duration::from_secs(10)));
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[policy.choose(&candidates).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn a_slower_pod_is_weighed_by_how_much_slower_it_makes_tokens() {
        let pods = pods(2);
        let loads = PodLoads::new(Duration::from_secs(2), Duration::from_secs(6));
        let policy = PodLoadAware::new(loads.clone());
        let timed = |seconds_per_token, age| Report {
            seconds_per_token: Some(seconds_per_token),
            ..report(0.0, 0.0, 0, age)
        };
        // Pod 1 makes tokens three times slower than pod 0.
        let both = |age| {
            HashMap::from([
                (pods[0].address(), timed(0.01, age)),
                (pods[1].address(), timed(0.03, age)),
            ])
        };
        loads.publish(both(Duration::ZERO));
        let candidates = Candidates::new(&pods, 16, None);
        // Pod 0 with 1 in flight (2 × 1) beats an idle pod 1 (1 × 3) …
        let mut held = take(&pods[0], 1);
        assert_eq!(policy.choose(&candidates), Some(0));
        // … and with 2 in flight (3 × 1) ties with it; with 3 (4 × 1), pod 1 (1 × 3) is chosen.
        held.extend(take(&pods[0], 2));
        assert_eq!(policy.choose(&candidates), Some(1));
        // Once the reports age out, only the counts matter.
        loads.publish(both(Duration::from_secs(10)));
        assert_eq!(policy.choose(&candidates), Some(1));
        drop(held);
        // The median is found among fresh reports only: a stale fast one does not make a
        // fresh pod look slow.
        loads.publish(HashMap::from([
            (pods[0].address(), timed(0.01, Duration::from_secs(10))),
            (pods[1].address(), timed(0.03, Duration::ZERO)),
        ]));
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[policy.choose(&candidates).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
    }
}
