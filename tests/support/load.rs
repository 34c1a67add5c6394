//! A closed-loop load: workers that each send one scoring request after another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;

use super::{client, full, guard, request, KEY};

/// Workers sending scoring requests until [`Load::finish`].
pub struct Load {
    ok: Arc<AtomicU64>,
    answered: Arc<parking_lot::Mutex<Vec<Instant>>>,
    failed: Arc<Failures>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    probes: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` tasks per URL, each with its own keep-alive connection, POSTing with [`KEY`].
    pub fn start(urls: &[String], workers: usize) -> Load {
        let targets: Vec<(String, Option<Arc<AtomicBool>>)> =
            urls.iter().map(|u| (u.clone(), None)).collect();
        Self::start_gated(targets, workers, Vec::new())
    }

    /// Like [`Load::start`], sending to each `(url, admin address)` only while its `/readyz`
    /// says ready, as a Kubernetes Service does (probed every 100 ms; no answer within 300 ms
    /// is not ready).
    pub fn behind_readiness(targets: &[(String, std::net::SocketAddr)], workers: usize) -> Load {
        let mut gated = Vec::new();
        let mut probes = Vec::new();
        for (url, admin) in targets {
            let ready = Arc::new(AtomicBool::new(true));
            gated.push((url.clone(), Some(ready.clone())));
            probes.push(tokio::spawn(probe_readiness(*admin, ready)));
        }
        Self::start_gated(gated, workers, probes)
    }

    fn start_gated(
        urls: Vec<(String, Option<Arc<AtomicBool>>)>,
        workers: usize,
        probes: Vec<tokio::task::JoinHandle<()>>,
    ) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let failed = Arc::new(Failures::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (url, ready) in urls {
            for _ in 0..workers {
                let (url, ready) = (url.clone(), ready.clone());
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                let answered = answered.clone();
                tasks.push(tokio::spawn(async move {
                    let client = client();
                    let auth = format!("Bearer {KEY}");
                    while !stop.load(Ordering::Relaxed) {
                        if ready.as_ref().is_some_and(|r| !r.load(Ordering::Relaxed)) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let request = request(
                            http::Method::POST,
                            &url,
                            &[("authorization", &auth)],
                            full("{}"),
                        );
                        match client.request(request).await {
                            Ok(response) if response.status() == 200 => {
                                match response.into_body().collect().await {
                                    Ok(_) => {
                                        answered.lock().push(Instant::now());
                                        ok.fetch_add(1, Ordering::Relaxed)
                                    }
                                    Err(e) => {
                                        failed.push(format!("{url}: body: {e}"));
                                        0
                                    }
                                };
                            }
                            Ok(response) => {
                                let status = response.status();
                                let body =
                                    response.into_body().collect().await.map(|b| b.to_bytes());
                                failed.push(format!("{url}: {status} {body:?}"));
                            }
                            Err(e) => failed.push(format!("{url}: {e}")),
                        }
                    }
                }));
            }
        }
        Load {
            ok,
            answered,
            failed,
            stop,
            tasks,
            probes,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// The longest time between `from` and `to` in which no request was answered 200: the
    /// time without service.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .answered
            .lock()
            .iter()
            .copied()
            .filter(|t| *t > from && *t < to)
            .collect();
        times.sort();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for t in times.into_iter().chain([to]) {
            longest = longest.max(t.saturating_duration_since(previous));
            previous = t;
        }
        longest
    }

    /// Stops the workers; returns the count of 200s and every failure.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for probe in &self.probes {
            probe.abort();
        }
        for task in self.tasks {
            guard("a load worker finishing", task).await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.summary())
    }
}

/// Failed requests: a count and the first few, so a broken run stays readable.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: parking_lot::Mutex<Vec<String>>,
}

impl Failures {
    fn push(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock();
        if first.len() < 5 {
            first.push(what);
        }
    }

    /// Empty when nothing failed; else the count, then the first failures.
    fn summary(&self) -> Vec<String> {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return Vec::new();
        }
        let mut all = vec![format!("{count} failed requests, the first:")];
        all.extend(self.first.lock().iter().cloned());
        all
    }
}

/// Keeps `ready` in step with `/readyz` at `admin`, every 100 ms.
async fn probe_readiness(admin: std::net::SocketAddr, ready: Arc<AtomicBool>) {
    let client = client();
    let uri: http::Uri = format!("http://{admin}/readyz").parse().unwrap();
    loop {
        let answered =
            tokio::time::timeout(Duration::from_millis(300), client.get(uri.clone())).await;
        let ok = matches!(answered, Ok(Ok(response)) if response.status() == 200);
        ready.store(ok, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
