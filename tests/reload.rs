//! The routes file is reloaded live: rewriting it under load fails no request, a bad file is
//! refused and counted while the last good table keeps serving, and per-pod live state
//! (slots, requests in flight) survives every rebuild. Files in Kubernetes volumes (the routes
//! file in a ConfigMap, the certificate pair in a Secret) are reloaded through any number of the
//! kubelet's atomic swaps, not only the first.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use scoregate::config::TlsConfig;
use scoregate::sample_model::SampleModel;
use support::*;

/// Waits until the router has applied or refused one more file than `before` (applied, refused).
async fn next_outcome(h: &Harness, before: (f64, f64)) -> (f64, f64) {
    guard("the router reacting to the routes file", async {
        loop {
            let now = (h.reloads("applied").await, h.reloads("refused").await);
            if now != before {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn outcomes(h: &Harness) -> (f64, f64) {
    (h.reloads("applied").await, h.reloads("refused").await)
}

fn two_deployments(
    blue: &[SocketAddr],
    green: &[SocketAddr],
    traffic: (u8, u8),
    settings: &str,
) -> String {
    routes(
        &[endpoint(
            "ep-one",
            &[&format!(
                "traffic: {{ blue: {}, green: {} }}",
                traffic.0, traffic.1
            )],
        )],
        &[
            deployment("blue", "ep-one", blue, settings),
            deployment("green", "ep-one", green, settings),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_routes_file_during_a_20_second_load_run_fails_no_request() {
    let b: Vec<SampleModel> =
        futures_util::future::join_all((0..2).map(|_| SampleModel::start_local("blue")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let g: Vec<SampleModel> =
        futures_util::future::join_all((0..2).map(|_| SampleModel::start_local("green")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let (b1, b2, g1, g2) = (
        b[0].address(),
        b[1].address(),
        g[0].address(),
        g[1].address(),
    );
    let s1 = "request_timeout_ms: 20000, max_concurrent_requests_per_instance: 8, max_queue_wait_ms: 20000";
    let s2 = "request_timeout_ms: 19000, max_concurrent_requests_per_instance: 6, max_queue_wait_ms: 19000";
    // Weights alternate, pods come and go, settings change; no deployment ever has no pod.
    let variants = [
        two_deployments(&[b1, b2], &[g1, g2], (90, 10), s1),
        two_deployments(&[b1], &[g1, g2], (50, 50), s1),
        two_deployments(&[b1, b2], &[g2], (10, 90), s2),
        two_deployments(&[b2], &[g1], (100, 0), s1),
        two_deployments(&[b1, b2], &[g1, g2], (0, 100), s2),
        two_deployments(&[b2], &[g2, g1], (30, 70), s2),
    ];
    let h = Harness::start(&variants[0]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (uri, stop) = (h.url("ep-one", "/score?sleep_ms=5"), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let auth = format!("Bearer {KEY}");
            let mut served: HashMap<String, u64> = HashMap::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = send(
                    &client,
                    Method::POST,
                    &uri,
                    &[("authorization", &auth)],
                    full(format!("{{\"worker\": {w}}}")),
                )
                .await;
                if r.status == 200 {
                    *served.entry(r.model()).or_default() += 1;
                } else {
                    failures.push(format!("{} {}", r.status, r.text()));
                }
            }
            (served, failures)
        }));
    }

    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        writes += 1;
        let yaml = &variants[writes % variants.len()];
        if writes % 2 == 0 {
            h.write_routes(yaml);
        } else {
            h.write_routes_in_place(yaml);
        }
    }
    // End on a known table (0/100, plus an endpoint that tells when it is live), then stop
    // the load.
    h.write_routes(&routes(
        &[
            endpoint("ep-one", &["traffic: { blue: 0, green: 100 }"]),
            endpoint("ep-final", &["traffic: { blue: 100 }"]),
        ],
        &[
            deployment("blue", "ep-one", &[b1, b2], s2),
            deployment("green", "ep-one", &[g1, g2], s2),
            deployment("blue", "ep-final", &[b1], s2),
        ],
    ));
    guard("the final table going live", async {
        while h.score("ep-final", "").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut served: HashMap<String, u64> = HashMap::new();
    let mut failures = Vec::new();
    for w in workers {
        let (s, f) = guard("a load worker", w).await.unwrap();
        for (k, v) in s {
            *served.entry(k).or_default() += v;
        }
        failures.extend(f);
    }
    let total: u64 = served.values().sum();
    eprintln!("{writes} rewrites, {total} requests: {served:?}");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    // (A refusal is allowed: a reload may catch an in-place write half done; the router
    // refuses that and applies the finished file on its close event.)
    let (applied, refused) = outcomes(&h).await;
    eprintln!("{applied} tables applied, {refused} refused");
    assert!(
        applied >= 20.0,
        "the table was rebuilt under load ({applied} times)"
    );
    assert!(served["blue"] > 0 && served["green"] > 0, "{served:?}");
    assert!(total > 500, "the load was real: {total} requests");

    // The last table is live: 0/100 sends everything to green.
    for _ in 0..50 {
        assert_eq!(h.score("ep-one", "").await.model(), "green");
    }
    h.wait_in_flight("ep-one", "blue", 0).await;
    h.wait_in_flight("ep-one", "green", 0).await;
    h.wait_queue_depth("ep-one", "green", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_refused_counted_and_the_old_table_keeps_serving() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let green = SampleModel::start_local("green").await.unwrap();
    let (b, g) = (blue.address(), green.address());
    let good = two_deployments(&[b], &[g], (100, 0), "");
    let h = Harness::start(&good).await;
    assert_eq!(outcomes(&h).await, (1.0, 0.0));

    let bad = [
        // Unknown field.
        good.replace(
            "request_settings: {  }",
            "request_settings: { max_queue_wait: 5 }",
        ),
        // Weights summing to neither 0 nor 100.
        two_deployments(&[b], &[g], (60, 30), ""),
        // Not YAML at all.
        "endpoints: [ {{{ :::".to_string(),
        // A traffic entry for a deployment that does not exist.
        good.replace("green: 0", "red: 0"),
        // A name that breaks Azure ML's rules.
        good.replace("name: green", "name: g"),
        // A mirror over 50 %.
        good.replace(
            "traffic: { blue: 100, green: 0 }",
            "traffic: { blue: 100, green: 0 }\n    mirror_traffic: { green: 60 }",
        ),
        // A pod address that is not an address.
        good.replace(&format!("\"{g}\""), "\"green-pod.local\""),
    ];
    let mut expected_refused = 0.0;
    for (i, yaml) in bad.iter().enumerate() {
        assert_ne!(yaml, &good);
        let before = outcomes(&h).await;
        if i % 2 == 0 {
            h.write_routes(yaml);
        } else {
            h.write_routes_in_place(yaml);
        }
        expected_refused += 1.0;
        assert_eq!(
            next_outcome(&h, before).await,
            (1.0, expected_refused),
            "file {i} was refused:\n{yaml}"
        );
        for _ in 0..5 {
            let r = h.score("ep-one", "").await;
            assert_eq!(r.status, 200, "file {i}: {}", r.text());
            assert_eq!(r.model(), "blue", "the last good table serves");
        }
        let ready = send(
            &h.client,
            Method::GET,
            &format!("http://{}/readyz", h.admin),
            &[],
            empty(),
        )
        .await;
        assert_eq!(ready.status, 200, "still ready with the last good table");
    }

    // A good file after bad ones is applied.
    let before = outcomes(&h).await;
    h.write_routes(&two_deployments(&[b], &[g], (0, 100), ""));
    assert_eq!(next_outcome(&h, before).await, (2.0, expected_refused));
    for _ in 0..10 {
        assert_eq!(h.score("ep-one", "").await.model(), "green");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_routes_file_is_refused_not_published_as_no_endpoints() {
    // An in-place rewrite truncates the file before writing it; a reload that reads in
    // between sees an empty file. Publishing that as "no endpoints" would answer 404 to
    // everyone until the next write.
    let pod = SampleModel::start_local("blue").await.unwrap();
    let good = simple_routes("ep-one", &[pod.address()], "");
    let h = Harness::start(&good).await;
    for empty_text in ["", "\n", "   \n\n"] {
        let before = outcomes(&h).await;
        h.write_routes_in_place(empty_text);
        let after = next_outcome(&h, before).await;
        assert_eq!(
            after,
            (before.0, before.1 + 1.0),
            "an empty routes file is refused"
        );
        let r = h.score("ep-one", "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Back to the good file (applied again: the file changed).
        let before = outcomes(&h).await;
        h.write_routes_in_place(&good);
        assert_eq!(next_outcome(&h, before).await, (before.0 + 1.0, before.1));
    }
    // Removing every endpoint on purpose is still possible.
    let before = outcomes(&h).await;
    h.write_routes("endpoints: []\n");
    assert_eq!(next_outcome(&h, before).await, (before.0 + 1.0, before.1));
    assert_router_error(&h.score("ep-one", "").await, 404, "EndpointNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_and_requests_in_flight_survive_reloads() {
    let one = SampleModel::start_local("blue").await.unwrap();
    let two = SampleModel::start_local("blue").await.unwrap();
    let settings = |timeout: u32| {
        format!("request_timeout_ms: {timeout}, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0")
    };
    let h = Harness::start(&simple_routes("ep-one", &[one.address()], &settings(5000))).await;
    let mut held = h.hold("ep-one", &[]).await;
    assert_router_error(&h.score("ep-one", "").await, 503, "QueueTimeout");

    let apply = |yaml: String| {
        let h = &h;
        async move {
            let before = outcomes(h).await;
            h.write_routes(&yaml);
            assert_eq!(next_outcome(h, before).await, (before.0 + 1.0, before.1));
        }
    };
    // The deployment is rebuilt with new settings: its one slot is still taken.
    apply(simple_routes("ep-one", &[one.address()], &settings(6000))).await;
    assert_router_error(&h.score("ep-one", "").await, 503, "QueueTimeout");
    // The pod leaves and comes back while its request runs: still one slot, still taken.
    apply(simple_routes("ep-one", &[], &settings(6000))).await;
    assert_router_error(&h.score("ep-one", "").await, 503, "NoReadyPod");
    apply(simple_routes("ep-one", &[one.address()], &settings(6000))).await;
    assert_router_error(&h.score("ep-one", "").await, 503, "QueueTimeout");

    // The held request's pod is replaced: the response keeps streaming from it, and new
    // requests go to the new pod.
    apply(simple_routes("ep-one", &[two.address()], &settings(6000))).await;
    assert!(
        held.next().await.is_some(),
        "the removed pod's response still streams"
    );
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pod"], two.address().to_string());
    assert!(held.next().await.is_some());

    // Back on the first pod, the slot is still held by the old request, until it ends.
    apply(simple_routes("ep-one", &[one.address()], &settings(6000))).await;
    assert_router_error(&h.score("ep-one", "").await, 503, "QueueTimeout");
    drop(held);
    h.wait_in_flight("ep-one", "blue", 0).await;
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["pod"], one.address().to_string());
}

// ---------------------------------------------------------------------------------------------
// Kubernetes volumes

/// A ConfigMap or Secret volume, written the way the kubelet's atomic writer writes it: the
/// payload goes into a new timestamped directory, a `..data_tmp` symlink to it is renamed over
/// `..data`, each top-level name of the payload is a symlink into `..data`, and the previous
/// timestamped directory is removed.
struct KubeletVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl KubeletVolume {
    fn new(payload: &[(&str, &str)]) -> KubeletVolume {
        let mut volume = KubeletVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.swap(payload);
        volume
    }

    /// The path a container sees for `item` (e.g. `tls/cert.pem`).
    fn path(&self, item: &str) -> PathBuf {
        self.dir.path().join(item)
    }

    /// Replaces the whole payload, as an update of the ConfigMap or Secret does.
    fn swap(&mut self, payload: &[(&str, &str)]) {
        let mount = self.dir.path();
        self.generation += 1;
        let data = format!(
            "..2026_12_05_10_00_{:02}.{}",
            self.generation,
            fastrand::u32(..)
        );
        for (item, content) in payload {
            let file = mount.join(&data).join(item);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let previous = std::fs::read_link(mount.join("..data")).ok();
        std::os::unix::fs::symlink(&data, mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        for (item, _) in payload {
            let top = Path::new(item).components().next().unwrap().as_os_str();
            if std::fs::symlink_metadata(mount.join(top)).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(top), mount.join(top)).unwrap();
            }
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(mount.join(previous)).unwrap();
        }
    }
}

/// Where a volume puts its files: at the top of the mount (a Secret or ConfigMap volume), or
/// below a directory, as the installer's projected volume puts the certificate (`tls/`).
const LAYOUTS: [&str; 2] = ["", "nested/"];

/// Swaps in a row, each checked before the next.
const SWAPS: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_routes_file_reloads_through_every_kubelet_swap() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let routes_for = |n: u32| simple_routes(&format!("ep-{n}"), &[pod.address()], "");
    for layout in LAYOUTS {
        let item = format!("{layout}routes.yaml");
        let mut volume = KubeletVolume::new(&[(&item, &routes_for(0))]);
        let routes_file = volume.path(&item);
        let h = Harness::start_with(&routes_for(0), |c| {
            c.discovery.routes_file = Some(routes_file);
        })
        .await;
        assert_eq!(h.score("ep-0", "").await.status, 200);
        for n in 1..=SWAPS {
            let before = outcomes(&h).await;
            volume.swap(&[(&item, &routes_for(n))]);
            assert_eq!(
                next_outcome(&h, before).await,
                (before.0 + 1.0, before.1),
                "layout `{layout}`: swap {n} was applied"
            );
            let r = h.score(&format!("ep-{n}"), "").await;
            assert_eq!(r.status, 200, "layout `{layout}`, swap {n}: {}", r.text());
            assert_router_error(
                &h.score(&format!("ep-{}", n - 1), "").await,
                404,
                "EndpointNotFound",
            );
        }
    }
}

/// A certificate authority the test trusts, and leaves it signs for `ml.example.com`.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    client: Arc<rustls::ClientConfig>,
}

impl TestCa {
    fn new() -> TestCa {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issuer.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCa {
            issuer,
            client: Arc::new(client),
        }
    }

    /// A new leaf: (chain PEM, key PEM, SHA-256 fingerprint of the leaf).
    fn leaf(&self) -> (String, String, String) {
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["ml.example.com".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (leaf.pem(), key.serialize_pem(), fingerprint(leaf.der()))
    }

    /// The fingerprint of the leaf a new TLS handshake with `address` gets.
    async fn served(&self, address: SocketAddr) -> String {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = ServerName::try_from("ml.example.com").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        fingerprint(&tls.get_ref().1.peer_certificates().unwrap()[0])
    }
}

fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_certificate_reloads_through_every_kubelet_swap() {
    let ca = TestCa::new();
    let pod = SampleModel::start_local("blue").await.unwrap();
    for layout in LAYOUTS {
        let (cert_item, key_item) = (format!("{layout}cert.pem"), format!("{layout}key.pem"));
        let (cert, key, mut expected) = ca.leaf();
        let mut volume = KubeletVolume::new(&[(&cert_item, &cert), (&key_item, &key)]);
        let tls = TlsConfig::from_files(volume.path(&cert_item), volume.path(&key_item));
        let h = Harness::start_with(&simple_routes("secure", &[pod.address()], ""), |c| {
            c.tls = Some(tls);
            c.listen.https = SocketAddr::from(([127, 0, 0, 1], 0));
        })
        .await;
        let https = h.router.as_ref().unwrap().https_addr().unwrap();
        assert_eq!(ca.served(https).await, expected);
        for n in 1..=SWAPS {
            let (cert, key, next) = ca.leaf();
            volume.swap(&[(&cert_item, &cert), (&key_item, &key)]);
            guard(
                &format!("layout `{layout}`: the certificate of swap {n} served"),
                async {
                    while ca.served(https).await != next {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            )
            .await;
            assert_ne!(next, expected);
            expected = next;
        }
    }
}
