//! Coordinated admission through network partitions (issue 14), with real isolation: three
//! router processes, each in a network namespace of its own, linked by veth pairs to a bridge;
//! two sample pods of cap 1 and the clients in the test's own namespace, reachable from every
//! replica. Faults, each for 5 s on the owner of the deployment:
//!
//! - a full partition: the owner's link down (`ip link set down`), both directions cut;
//! - a one-way partition: everything the owner sends is dropped (an nftables rule in its
//!   namespace), while it still receives;
//! - a one-way cut between the owner and one other replica only (the third reaches both).
//!
//! Each asserts that no pod ever ran two requests at once, that the replicas' own figure
//! (`scoregate_cluster_pod_peak_in_flight`) matches what the pods saw, and prints the time
//! without service through the replicas on the majority side (never asserted). A last scenario
//! cuts off the owner while a model slower than the settling time runs its requests.
//!
//! Needs root, iproute2 and nftables (`.ci/run` runs as root); elsewhere each test says why it
//! skips. The namespaces are removed when a test ends, failed or not, and leftovers of a killed
//! run are swept at the next.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use scoregate::sample_model::SampleModel;
use support::load::Load;
use support::netns::{network_or_skip, Network};
use support::replica::{known_peaks, logs_of, start_cluster, wait_members, Place, Replica};
use support::*;

/// How long each fault lasts.
const FAULT_FOR: Duration = Duration::from_secs(5);

/// Partition tests run one at a time: their timings are the measurement.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three replicas in their namespaces, pods on the test's side; the owner's index.
async fn three_hosts(
    network: &Network,
    dir: &std::path::Path,
) -> (Vec<SampleModel>, Vec<Replica>, usize) {
    let mut pods = Vec::new();
    for i in 0..2 {
        let at = SocketAddr::new(network.root_ip.into(), 0);
        pods.push(SampleModel::start(at, &format!("pod-{i}")).await.unwrap());
    }
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, simple_routes("credit", &addresses, CAP_ONE)).unwrap();
    let places: Vec<Place> = network.hosts.iter().map(Place::on).collect();
    let replicas = start_cluster(dir, &routes, &places, &[]);
    let ids: Vec<SocketAddr> = replicas.iter().map(|r| r.cluster).collect();
    let owner = owner_of(&ids, "credit", "blue");
    (pods, replicas, owner)
}

/// The load a scenario runs: what each request asks of the model, clients per replica, and
/// how many answers make a warm start (through the majority, through the owner).
struct Traffic {
    query: &'static str,
    majority_workers: usize,
    owner_workers: usize,
    warm: (u64, u64),
}

/// Requests of 5 ms, many at once.
const QUICK: Traffic = Traffic {
    query: "?sleep_ms=5",
    majority_workers: 3,
    owner_workers: 2,
    warm: (50, 20),
};

/// A model slower than a new owner's settling time (about twice `peer_timeout_ms`): requests
/// the cut-off owner put on the pods are still running when the majority could grant again.
const SLOW: Traffic = Traffic {
    query: "?sleep_ms=2000",
    majority_workers: 1,
    owner_workers: 2,
    warm: (2, 1),
};

/// Runs `fault` on the owner under load through every replica for [`FAULT_FOR`], then `heal`,
/// waits for the three to agree again, and checks and prints the outcome.
async fn scenario(what: &str, fault: impl Fn(&Network, usize), heal: impl Fn(&Network, usize)) {
    scenario_with(what, &QUICK, fault, heal).await;
}

/// [`scenario`] with the given traffic.
async fn scenario_with(
    what: &str,
    traffic: &Traffic,
    fault: impl Fn(&Network, usize),
    heal: impl Fn(&Network, usize),
) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(network) = network_or_skip(what, 3) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (pods, replicas, owner) = three_hosts(&network, dir.path()).await;
    let client = client();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_members(&client, &all, 3).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    // Clients go through a Service: nothing is sent to a replica while it is not ready (the
    // partition may leave out the owner's peer rather than the owner).
    let majority: Vec<(String, SocketAddr)> = others
        .iter()
        .map(|i| (replicas[*i].url(traffic.query), replicas[*i].admin))
        .collect();
    let majority = Load::behind_readiness(&majority, traffic.majority_workers);
    let on_owner = Load::behind_readiness(
        &[(replicas[owner].url(traffic.query), replicas[owner].admin)],
        traffic.owner_workers,
    );
    let (warm_majority, warm_owner) = traffic.warm;
    eventually("requests through every replica", || async {
        majority.ok() > warm_majority && on_owner.ok() > warm_owner
    })
    .await;

    let faulted = Instant::now();
    fault(&network, owner);
    tokio::time::sleep(FAULT_FOR).await;
    heal(&network, owner);
    let healed = Instant::now();
    wait_members(&client, &all, 3).await;
    let rejoined = healed.elapsed();
    let served = on_owner.ok();
    eventually("requests through the owner again", || async {
        on_owner.ok() > served + warm_owner
    })
    .await;
    let gap = majority.longest_gap(faulted, Instant::now());
    let (ok, failed) = majority.finish().await;
    let (_, failed_on_owner) = on_owner.finish().await;
    let addresses: Vec<SocketAddr> = pods.iter().map(|p| p.address()).collect();
    let known = known_peaks(&client, &all, &addresses).await;
    let peaks: Vec<u32> = pods.iter().map(|p| p.stats().peak_concurrency()).collect();
    println!(
        "{what}: time without service through the majority {gap:?}; the owner back in the view \
         {rejoined:?} after the fault ended; {ok} requests through the majority, {} failed; \
         through the owner: {:?}; pods' peaks {peaks:?}, the replicas' known peaks {known:?}",
        failed.len(),
        failed_on_owner.first()
    );
    let logs = || logs_of(&replicas);
    if std::env::var_os("SCOREGATE_TEST_LOGS").is_some() {
        println!("{}", logs());
    }
    assert!(
        peaks.iter().all(|p| *p == 1),
        "{what}: a pod of cap 1 ran {peaks:?} requests at once\n{}",
        logs()
    );
    let known: Vec<u32> = known.iter().map(|k| *k as u32).collect();
    assert_eq!(
        known,
        peaks,
        "{what}: the replicas' figure differs from what the pods saw\n{}",
        logs()
    );
    assert!(
        failed.is_empty(),
        "{what}: requests through the majority failed: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_of_the_owner_never_puts_two_requests_on_a_pod() {
    scenario(
        "full partition of the owner",
        |network, owner| network.cut(owner),
        |network, owner| network.heal(owner),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_of_the_owner_never_puts_two_requests_on_a_pod() {
    scenario(
        "one-way partition (everything the owner sends dropped)",
        |network, owner| network.drop_sent(owner, None),
        |network, owner| network.stop_dropping(owner),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_between_the_owner_and_one_peer_never_puts_two_requests_on_a_pod() {
    scenario(
        "one-way cut from the owner to one peer (the third reaches both)",
        |network, owner| {
            let peer = network.hosts[(owner + 1) % 3].ip;
            network.drop_sent(owner, Some(peer));
        },
        |network, owner| network.stop_dropping(owner),
    )
    .await;
}

/// The window a partitioned owner leaves: its requests already on the pods (2 s each) are
/// unknown to the majority, whose new owner could grant after settling (about 0.6 s). The new
/// owner holds the deployment until the old owner reports them (or they have provably ended),
/// so the pods never see two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_owner_with_a_slow_model_never_puts_two_requests_on_a_pod() {
    scenario_with(
        "full partition of the owner, a model slower than the settling time",
        &SLOW,
        |network, owner| network.cut(owner),
        |network, owner| network.heal(owner),
    )
    .await;
}
