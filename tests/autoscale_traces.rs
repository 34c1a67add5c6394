//! The autoscaler's decisions over minutes of load, on a virtual clock, against the fake API
//! server (issue 14). The scaler of one deployment ([`TargetScaler`]) is driven as the controller
//! drives it (a load sample every 200 ms, a decision every `pollingInterval`), but the time it is
//! given is simulated, so five minutes take a second or two; its writes go to the fake API server
//! and the Deployment's replicas come back through its watch, as in a cluster.
//!
//! The load is a recorded trace of requests (arrival time, service time; Poisson arrivals from a
//! seeded generator, so every run sees the same trace) played through a simulation of the
//! deployment's pods: one slot per pod, a request takes a free slot or waits in the queue (at most
//! [`MAX_QUEUE`]), pods added by a scale-up are ready [`POD_START`] later, and the Deployment's
//! `status.readyReplicas` follows.

mod support;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scoregate::autoscale::controller::SAMPLE_EVERY;
use scoregate::autoscale::decide::{Decision, Load, Reason};
use scoregate::autoscale::objects::Watches;
use scoregate::autoscale::scaler::Shared;
use scoregate::autoscale::scaler::{TargetScaler, Windows};
use scoregate::autoscale::writes::Writer;
use scoregate::autoscale::SingleReplica;
use scoregate::config::AutoscaleConfig;
use scoregate::table::TableHandle;
use scoregate::telemetry::Metrics;
use scoregate_fake_kube::FakeApiServer;
use serde_json::{json, Value};
use support::kube::*;

/// How long a pod added by a scale-up takes to turn ready.
const POD_START: Duration = Duration::from_secs(5);
/// Requests beyond this many queued are refused (the router's `maxQueueLength`).
const MAX_QUEUE: usize = 100;
/// Each request of the traces keeps its pod busy this long.
const SERVICE: Duration = Duration::from_millis(20);
const SCALE_PATH: &str = "/apis/apps/v1/namespaces/models/deployments/ep-blue/scale";

/// A recorded load: arrival times, in order, each request taking [`SERVICE`].
struct Trace {
    arrivals: Vec<Duration>,
}

impl Trace {
    /// Poisson arrivals at `rate(t)` requests per second (t in seconds) over `[from, to)`, at
    /// most `peak` per second, from a generator seeded with `seed` (thinning: draw at the peak
    /// rate, keep each arrival with probability `rate(t) / peak`).
    fn poisson(seed: u64, peak: f64, from: f64, to: f64, rate: impl Fn(f64) -> f64) -> Trace {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut t = from;
        let mut arrivals = Vec::new();
        loop {
            t += -(1.0 - rng.random::<f64>()).ln() / peak;
            if t >= to {
                return Trace { arrivals };
            }
            if rng.random::<f64>() * peak < rate(t) {
                arrivals.push(Duration::from_secs_f64(t));
            }
        }
    }

    /// No requests at all.
    fn none() -> Trace {
        Trace {
            arrivals: Vec::new(),
        }
    }

    /// This trace, then `later` (which starts after it ends).
    fn then(mut self, later: Trace) -> Trace {
        self.arrivals.extend(later.arrivals);
        self
    }
}

/// The deployment's pods: requests in flight (by completion time) and queued.
#[derive(Default)]
struct PodSim {
    ready: u32,
    in_flight: BinaryHeap<Reverse<Duration>>,
    queued: VecDeque<Duration>,
    next_arrival: usize,
    refused: usize,
}

impl PodSim {
    /// Plays `trace` up to `until`.
    fn advance(&mut self, trace: &Trace, until: Duration) {
        loop {
            let arrival = trace.arrivals.get(self.next_arrival).copied();
            let completion = self.in_flight.peek().map(|Reverse(at)| *at);
            match (arrival, completion) {
                (_, Some(done)) if done <= until && arrival.is_none_or(|a| done <= a) => {
                    self.in_flight.pop();
                    self.start_queued(done);
                }
                (Some(at), _) if at <= until => {
                    self.next_arrival += 1;
                    self.queued.push_back(at);
                    if self.queued.len() > MAX_QUEUE {
                        self.queued.pop_back();
                        self.refused += 1;
                    }
                    self.start_queued(at);
                }
                _ => return,
            }
        }
    }

    /// Moves queued requests onto free slots at `now`.
    fn start_queued(&mut self, now: Duration) {
        while self.in_flight.len() < self.ready as usize && self.queued.pop_front().is_some() {
            self.in_flight.push(Reverse(now + SERVICE));
        }
    }

    fn load(&self) -> Load {
        Load {
            in_flight: self.in_flight.len() as u32,
            queued: self.queued.len() as u32,
        }
    }
}

/// One autoscaled deployment, its scaler and its pods, on a virtual clock.
struct World {
    fake: FakeApiServer,
    scaler: TargetScaler,
    pods: PodSim,
    now: Duration,
    replicas: u32,
    /// Pods that turn ready later: (when, ready count then).
    starting: Vec<(Duration, u32)>,
    /// Scale writes: (when, replicas set, why).
    writes: Vec<(Duration, u32, Reason)>,
    last: Option<Decision>,
}

/// The OnlineDeployment: one slot per pod, 70 %, 1..10 replicas, a decision a second.
fn autoscaled() -> Value {
    autoscaled_blue(
        8000,
        json!({"maxConcurrentRequestsPerInstance": 1}),
        json!({"minInstances": 1, "maxInstances": 10, "targetUtilizationPercentage": 70}),
    )
}

impl World {
    /// The deployment at `replicas` (all ready), its scaler with the default windows.
    async fn start(replicas: u32) -> World {
        let fake = fake().await;
        fake.apply(autoscaled()).unwrap();
        fake.apply(apps_deployment_blue(replicas)).unwrap();
        let client = fake.client(NS).await.unwrap();
        let config = AutoscaleConfig {
            enabled: true,
            ..AutoscaleConfig::default()
        };
        let shared = Arc::new(Shared {
            writer: Writer::new(client.clone(), config.field_manager.clone()),
            watches: Watches::start(&client, &[Some(NS.to_string())]),
            table: TableHandle::default(),
            ownership: Arc::new(SingleReplica),
            windows: Windows::of(&config),
            metrics: Metrics::new(),
        });
        shared.watches.ready().await;
        let target = shared
            .watches
            .targets(|key, problem| panic!("{key:?}: {problem}"))
            .into_values()
            .next()
            .expect("the OnlineDeployment is a target");
        let world = World {
            fake,
            scaler: TargetScaler::new(target, shared),
            pods: PodSim {
                ready: replicas,
                ..PodSim::default()
            },
            now: Duration::ZERO,
            replicas,
            starting: Vec::new(),
            writes: Vec::new(),
            last: None,
        };
        world.watched().await;
        world
    }

    /// Plays `trace` until `until`: a sample every [`SAMPLE_EVERY`], a decision every second.
    async fn run(&mut self, trace: &Trace, until: Duration) {
        while self.now < until {
            self.now += SAMPLE_EVERY;
            self.pods.advance(trace, self.now);
            self.pods_turn_ready().await;
            self.scaler.sample(self.now, self.pods.load());
            if self.now.subsec_nanos() == 0 {
                self.decide().await;
            }
        }
    }

    async fn decide(&mut self) {
        let decision = self.scaler.decide(self.now).await.expect("a decision");
        self.last = Some(decision);
        if decision.replicas == self.replicas {
            return;
        }
        self.writes
            .push((self.now, decision.replicas, decision.reason));
        if decision.replicas > self.replicas {
            self.starting
                .push((self.now + POD_START, decision.replicas));
        } else {
            // Pods go at once (their requests finish); new ones still starting are fewer too.
            self.pods.ready = self.pods.ready.min(decision.replicas);
            for start in &mut self.starting {
                start.1 = start.1.min(decision.replicas);
            }
        }
        self.replicas = decision.replicas;
        self.set_ready(self.pods.ready).await;
    }

    async fn pods_turn_ready(&mut self) {
        let now = self.now;
        let Some(ready) = self
            .starting
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, n)| *n)
            .max()
        else {
            return;
        };
        self.starting.retain(|(at, _)| *at > now);
        self.pods.ready = ready.min(self.replicas);
        self.pods.start_queued(now);
        self.set_ready(self.pods.ready).await;
    }

    /// Writes the Deployment's `status.readyReplicas` as the Deployment controller would, and
    /// waits for the scaler's watch to see it.
    async fn set_ready(&mut self, ready: u32) {
        let mut object = self
            .fake
            .get("apps/v1", "Deployment", NS, "ep-blue")
            .unwrap();
        object["status"]["readyReplicas"] = json!(ready);
        self.fake.apply(object).unwrap();
        self.watched().await;
    }

    /// Waits until the scaler's watch shows the Deployment as the fake holds it now.
    async fn watched(&self) {
        let shared = self.scaler.shared().clone();
        let object = self
            .fake
            .get("apps/v1", "Deployment", NS, "ep-blue")
            .unwrap();
        let version = object["metadata"]["resourceVersion"].as_str().unwrap();
        eventually("the Deployment's watch to catch up", || async {
            shared
                .watches
                .replicas(NS, "ep-blue")
                .is_some_and(|r| r.resource_version == version)
        })
        .await;
    }

    /// The scale subresource was never read, and the Deployment itself only listed and watched.
    fn assert_no_reads(&self) {
        let reads = reads_of_blue_deployment(&self.fake);
        assert!(
            reads.is_empty(),
            "GETs of the Deployment or its scale: {reads:?}"
        );
        let puts = self
            .fake
            .requests_with_prefix(SCALE_PATH)
            .into_iter()
            .filter(|r| r.method == "PUT")
            .count();
        assert_eq!(puts, self.writes.len(), "one scale write per change");
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Each scale-down at most halves.
fn assert_halving(writes: &[(Duration, u32, Reason)], from: u32) {
    let mut before = from;
    for &(at, replicas, _) in writes {
        assert!(
            replicas >= before.div_ceil(2),
            "{before} → {replicas} at {at:?} more than halves: {writes:?}"
        );
        before = replicas;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_load_at_half_of_one_pod_never_scales_up() {
    let mut world = World::start(1).await;
    // 25 requests a second of 20 ms: one pod busy half of the time, a queue now and then.
    let trace = Trace::poisson(1, 25.0, 0.0, 300.0, |_| 25.0);
    world.run(&trace, secs(300)).await;
    assert!(world.writes.is_empty(), "{:?}", world.writes);
    let last = world.last.unwrap();
    assert!(
        (0.4..0.6).contains(&last.stable_busy),
        "the load seen: {last:?}"
    );
    assert_eq!(last.reason, Reason::Steady, "{last:?}");
    world.assert_no_reads();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_to_three_times_one_pod_scales_up_within_one_panic_window() {
    let mut world = World::start(1).await;
    let step = 60.0;
    let trace = Trace::poisson(2, 25.0, 0.0, step, |_| 25.0).then(Trace::poisson(
        3,
        150.0,
        step,
        300.0,
        |_| 150.0,
    ));
    world.run(&trace, secs(300)).await;
    let windows = Windows::of(&AutoscaleConfig::default());
    let (first_at, first, reason) = world.writes[0];
    assert!(
        first_at > secs(60) && first_at <= secs(60) + windows.panic,
        "the first scale-up {first_at:?} after the step at 60 s: {:?}",
        world.writes
    );
    assert_eq!(reason, Reason::Panic, "{:?}", world.writes);
    assert!(first >= 3, "{:?}", world.writes);
    // Three busy slots at 70 % ask for ceil(4.29) = 5 once the burst's queue is served and the
    // panic has passed; down by halves at most.
    assert_eq!(world.replicas, 5, "{:?}", world.writes);
    assert_halving(&world.writes[1..], first);
    world.assert_no_reads();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_load_takes_ten_replicas_to_one_within_the_windows_and_a_few_steps() {
    let mut world = World::start(10).await;
    let windows = Windows::of(&AutoscaleConfig::default());
    // A new owner (noticed at its first decision) watches a whole stable window before a
    // scale-down, and every recommendation of the stabilisation period must ask for fewer: then
    // halving steps, 10 → 5 → 3 → 2 → 1, one a decision.
    let interval = secs(1);
    let bound =
        windows.stable.max(interval * windows.scale_down_intervals) + interval + interval * 4;
    world.run(&Trace::none(), bound).await;
    assert_eq!(world.replicas, 1, "{:?}", world.writes);
    assert!(
        world.writes[0].0 >= windows.stable,
        "scaled down before a whole window was seen: {:?}",
        world.writes
    );
    assert_halving(&world.writes, 10);
    assert!(world.writes.iter().all(|w| w.2 == Reason::ScaledDown));
    world.run(&Trace::none(), bound + secs(60)).await;
    assert_eq!(world.writes.len(), 4, "never below minInstances");
    world.assert_no_reads();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluctuating_load_near_the_target_does_not_flap() {
    let mut world = World::start(3).await;
    // Three pods at the target carry 2.1 busy slots: 105 requests a second of 20 ms, swinging
    // ±10 % over 40 s periods (70-77 % busy), for 5 minutes. Measured over seeds 1-24: none
    // panics; one (seed 8) scales 3→4 once on the stable window (its average of 200 ms samples
    // of a 20 ms service read 2.31 busy slots for about 2.14 offered, some 3 standard errors, over
    // the tolerance band) and back after the stabilisation period. A panic needs the latest
    // sample over the threshold too: before, a one-second burst (seed 24: 157 requests in a
    // second against 150 of capacity) queued 20 requests that alone lifted the 6 s average over
    // 2× after the queue had drained, and the scaler went from 3 pods to 10. With ±20 % swings
    // (up to 84 % busy) 5 seeds of 24 still panic (half did before): near saturation the queue
    // stays long for seconds.
    let rate = |t: f64| 105.0 * (1.0 + 0.1 * (t * std::f64::consts::TAU / 40.0).sin());
    let trace = Trace::poisson(4, 116.0, 0.0, 300.0, rate);
    world.run(&trace, secs(300)).await;
    assert!(
        world.writes.is_empty(),
        "scale writes near the target: {:?}",
        world.writes
    );
    assert_eq!(world.pods.refused, 0);
    world.assert_no_reads();
}
