//! Shared fixtures of the integration tests: routes files, routers with sample pods, a real
//! hyper client, a /metrics scraper, held-open requests and misbehaving raw pods.
//!
//! Everything runs over real sockets on 127.0.0.1. Timeouts here are hang guards only: no test
//! asserts how long something took.

#![allow(dead_code)]

pub mod kube;
pub mod load;
pub mod netns;
pub mod peer;
pub mod replica;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use scoregate::config::RouterConfig;
use scoregate::router::Router;

/// The primary key of every test endpoint in key mode.
pub const KEY: &str = "primary-key-0123456789";
/// The secondary key of every test endpoint in key mode.
pub const KEY2: &str = "secondary-key-0123456789";
/// How long any single wait may take before the test is declared hung.
pub const HANG: Duration = Duration::from_secs(60);

/// A boxed error for request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type of [`Client`].
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A hyper client over plain TCP.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// Polls `condition` every 5 ms until it holds; panics after [`HANG`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `future`, panicking with `what` if it takes longer than [`HANG`].
pub async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, future).await {
        Ok(v) => v,
        Err(_) => panic!("hung: {what} did not finish within {HANG:?}"),
    }
}

/// Reads from a raw client connection until the router closes it; what it sent, as text.
pub async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    guard("the router to close the connection", async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one Content-Length framed response from an open connection.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut response = Vec::new();
    guard("a response on the kept-alive connection", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed instead of answering");
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break;
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&response).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Routes files

/// One endpoint entry in key mode with [`KEY`] and [`KEY2`]; `extra` lines (e.g.
/// `traffic: { blue: 100 }`) are added to it.
pub fn endpoint(name: &str, extra: &[&str]) -> String {
    let mut s =
        format!("  - name: {name}\n    keys: {{ primary: \"{KEY}\", secondary: \"{KEY2}\" }}\n");
    for line in extra {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// One endpoint entry with explicit auth mode and keys.
pub fn endpoint_with_auth(name: &str, mode: &str, primary: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "  - name: {name}\n    auth_mode: {mode}\n    keys: {{ primary: \"{primary}\" }}\n"
    );
    for line in extra {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// One deployment entry; `settings` is the inside of the `request_settings` flow map
/// (e.g. `max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0`), may be empty.
pub fn deployment(name: &str, endpoint: &str, pods: &[SocketAddr], settings: &str) -> String {
    let pods: Vec<String> = pods.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "  - name: {name}\n    endpoint: {endpoint}\n    pods: [{}]\n    request_settings: {{ {settings} }}\n",
        pods.join(", ")
    )
}

/// A whole routes file.
pub fn routes(endpoints: &[String], deployments: &[String]) -> String {
    format!(
        "endpoints:\n{}deployments:\n{}",
        endpoints.concat(),
        deployments.concat()
    )
}

/// The usual single-deployment setup: endpoint `name` with `blue` at 100 % on `pods`.
pub fn simple_routes(name: &str, pods: &[SocketAddr], settings: &str) -> String {
    routes(
        &[endpoint(name, &["traffic: { blue: 100 }"])],
        &[deployment("blue", name, pods, settings)],
    )
}

/// Deployment settings of one slot per pod and a long, deep queue (the coordinated-admission
/// tests).
pub const CAP_ONE: &str =
    "max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 10000, max_queue_length: 1000";

/// `n` sample model servers on 127.0.0.1, named `pod-0`, `pod-1`, ….
pub async fn pods(n: usize) -> Vec<scoregate::sample_model::SampleModel> {
    let mut pods = Vec::new();
    for i in 0..n {
        let name = format!("pod-{i}");
        pods.push(
            scoregate::sample_model::SampleModel::start_local(&name)
                .await
                .unwrap(),
        );
    }
    pods
}

/// The index in `addresses` of the replica that owns `endpoint/deployment` when they are all live.
pub fn owner_of(addresses: &[SocketAddr], endpoint: &str, deployment: &str) -> usize {
    let ids: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    scoregate::cluster::ring::owner(&ids, endpoint, deployment).expect("at least one replica")
}

/// An address where nothing listens (bound, then closed), never one this test process was
/// handed before: the kernel may give a just-released port again, and two "free" addresses that
/// are the same one make a test fail for nothing.
pub fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], fresh_port(|_| true)))
}

/// A port the kernel just released on 127.0.0.1 that passes `usable` and that this test process
/// never handed out before (by this or any other fixture: the kernel may give a port again).
pub fn fresh_port(usable: impl Fn(u16) -> bool) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if !handed_out.contains(&port) && usable(port) {
            handed_out.push(port);
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A response read to its end.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The deployment the response names.
    pub fn deployment(&self) -> Option<&str> {
        self.header("azureml-model-deployment")
    }

    /// The `model` field of a sample pod's score response.
    pub fn model(&self) -> String {
        self.json()["model"].as_str().unwrap_or_default().to_owned()
    }
}

/// Whether `s` is a GUID in 8-4-4-4-12 hexadecimal form.
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks a router error: `status`, JSON body `{"error":{"code","message","requestId"}}` with
/// `code`, a non-empty message, and a requestId equal to the `x-request-id` header (a GUID).
pub fn assert_router_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status} {code}, got {} {:?}",
        resp.status,
        resp.text()
    );
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "router errors are JSON: {resp:?}"
    );
    let json = resp.json();
    let error = json
        .get("error")
        .unwrap_or_else(|| panic!("no `error` object: {json}"));
    assert_eq!(error["code"], code, "{json}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    let request_id = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {status} {code}"));
    assert!(is_guid(request_id), "x-request-id {request_id:?} is a GUID");
    assert_eq!(
        error["requestId"], request_id,
        "requestId of the body is the x-request-id header"
    );
    assert_eq!(
        json.as_object().unwrap().len(),
        1,
        "only `error` at the top: {json}"
    );
    assert_eq!(
        error.as_object().unwrap().len(),
        3,
        "code, message, requestId: {json}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies and the client

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from `stream` (sent chunked unless a Content-Length header is set).
pub fn streamed<S>(stream: S) -> Body
where
    S: Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
{
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// `total` bytes generated on the fly in `chunk`-byte frames: nothing is buffered beyond one
/// shared chunk. `sent` counts what has been handed to the client.
pub fn generated(total: u64, chunk: usize, sent: Arc<AtomicU64>) -> Body {
    let block = Bytes::from(vec![b'x'; chunk]);
    streamed(futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        let sent = sent.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(block.len() as u64);
            sent.fetch_add(n, Ordering::Relaxed);
            Some((Ok(Frame::data(block.slice(..n as usize))), left - n))
        }
    }))
}

/// A new client (its own connection pool).
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Builds a request.
pub fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri);
    // HTTP/1.1 needs a Host; hyper's connection-level client does not add one.
    let has_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if let Some(authority) = uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().cloned())
    {
        if !has_host {
            request = request.header(http::header::HOST, authority.as_str());
        }
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body).unwrap()
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &Client,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Resp {
    let what = format!("{method} {uri}");
    guard(&what, async {
        let response = client
            .request(request(method.clone(), uri, headers, body))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e:?}"))
            .to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
}

/// POSTs a small JSON scoring body to `url` with `key` as the bearer token and `headers`.
pub async fn post_score(client: &Client, url: &str, key: &str, headers: &[(&str, &str)]) -> Resp {
    let auth = format!("Bearer {key}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(headers);
    let body = full(r#"{"data": [[1, 2, 3, 4]]}"#);
    send(client, Method::POST, url, &all, body).await
}

/// The Prometheus text of the admin listener at `admin`.
pub async fn scrape(client: &Client, admin: SocketAddr) -> String {
    let url = format!("http://{admin}/metrics");
    let resp = send(client, Method::GET, &url, &[], empty()).await;
    assert_eq!(resp.status, 200);
    resp.text()
}

// ---------------------------------------------------------------------------------------------
// Routers

/// A router on 127.0.0.1 serving a routes file in its own temporary directory.
pub struct Harness {
    /// The router (taken by [`Harness::shutdown`]).
    pub router: Option<Router>,
    /// The routes file the router watches.
    pub routes_file: PathBuf,
    /// The plain-HTTP address.
    pub http: SocketAddr,
    /// The admin address.
    pub admin: SocketAddr,
    /// A client for the router.
    pub client: Client,
    dir: tempfile::TempDir,
}

/// The configuration every test router starts from.
pub fn base_config(routes_file: PathBuf) -> RouterConfig {
    let mut config = RouterConfig {
        allow_insecure_connections: true,
        ..RouterConfig::default()
    };
    config.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.discovery.routes_file = Some(routes_file);
    config.shutdown.drain_delay_ms = 0;
    config.shutdown.grace_period_ms = 1_000;
    config
}

impl Harness {
    /// Starts a router with default settings on `routes_yaml`.
    pub async fn start(routes_yaml: &str) -> Harness {
        Self::start_with(routes_yaml, |_| {}).await
    }

    /// Starts a router on `routes_yaml` after `tweak` has changed its configuration.
    pub async fn start_with(routes_yaml: &str, tweak: impl FnOnce(&mut RouterConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let routes_file = dir.path().join("routes.yaml");
        std::fs::write(&routes_file, routes_yaml).unwrap();
        let mut config = base_config(routes_file.clone());
        tweak(&mut config);
        let router = Router::start(config)
            .await
            .unwrap_or_else(|e| panic!("router did not start: {e:#}\n{routes_yaml}"));
        Harness {
            http: router.http_addr().unwrap(),
            admin: router.admin_addr(),
            router: Some(router),
            routes_file,
            client: client(),
            dir,
        }
    }

    /// `http://{router}/api/v1/endpoint/{endpoint}{rest}`.
    pub fn url(&self, endpoint: &str, rest: &str) -> String {
        format!("http://{}/api/v1/endpoint/{endpoint}{rest}", self.http)
    }

    /// `http://{router}{path}`.
    pub fn raw_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// POSTs a small JSON body to `/api/v1/endpoint/{endpoint}/score{query}` with [`KEY`].
    pub async fn score(&self, endpoint: &str, query: &str) -> Resp {
        self.score_with(endpoint, query, &[]).await
    }

    /// Like [`Self::score`] with extra headers.
    pub async fn score_with(&self, endpoint: &str, query: &str, headers: &[(&str, &str)]) -> Resp {
        let url = self.url(endpoint, &format!("/score{query}"));
        post_score(&self.client, &url, KEY, headers).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        scrape(&self.client, self.admin).await
    }

    /// The value of the series `name{labels}` (exactly these labels, any order), if present.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics_text().await, name, labels)
    }

    /// Like [`Self::metric`], 0 when absent.
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).await.unwrap_or(0.0)
    }

    /// Polls `/metrics` until `name{labels}` satisfies `ok`; returns the value.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let what = format!("{name}{labels:?} reaching the expected value");
        guard(&what, async {
            loop {
                let v = self.metric_or_zero(name, labels).await;
                if ok(v) {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Requests queued in a deployment now.
    pub async fn queue_depth(&self, endpoint: &str, deployment: &str) -> f64 {
        self.metric_or_zero(
            "scoregate_queue_depth",
            &[("endpoint", endpoint), ("deployment", deployment)],
        )
        .await
    }

    /// Waits until a deployment's queue holds exactly `n` requests.
    pub async fn wait_queue_depth(&self, endpoint: &str, deployment: &str, n: usize) {
        self.wait_metric(
            "scoregate_queue_depth",
            &[("endpoint", endpoint), ("deployment", deployment)],
            |v| v == n as f64,
        )
        .await;
    }

    /// Waits until a deployment has exactly `n` requests on its pods.
    pub async fn wait_in_flight(&self, endpoint: &str, deployment: &str, n: usize) {
        self.wait_metric(
            "scoregate_in_flight_requests",
            &[("endpoint", endpoint), ("deployment", deployment)],
            |v| v == n as f64,
        )
        .await;
    }

    /// Count of table loads with `result` (`applied` or `refused`) from the routes file.
    pub async fn reloads(&self, result: &str) -> f64 {
        self.metric_or_zero(
            "scoregate_table_reloads_total",
            &[("source", "file"), ("result", result)],
        )
        .await
    }

    /// Replaces the routes file atomically (temporary file in the same directory, then rename).
    pub fn write_routes(&self, yaml: &str) {
        let tmp = self.dir.path().join(".routes.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.routes_file).unwrap();
    }

    /// Rewrites the routes file in place (truncate, then write).
    pub fn write_routes_in_place(&self, yaml: &str) {
        std::fs::write(&self.routes_file, yaml).unwrap();
    }

    /// Opens a request on its own connection whose response body stays open until the
    /// returned [`Held`] is dropped: the sample pod streams events for a very long time.
    /// Returns once the response headers and the first event arrived (the slot is taken).
    pub async fn hold(&self, endpoint: &str, headers: &[(&str, &str)]) -> Held {
        let auth = format!("Bearer {KEY}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let uri = self.url(
            endpoint,
            "/score?stream_events=1000000&event_interval_ms=50",
        );
        Held::open(self.http, &uri, &all).await
    }

    /// Starts a score request in the background (its own connection) and returns its handle.
    pub fn spawn_score(&self, endpoint: &str, query: &str) -> tokio::task::JoinHandle<Resp> {
        let uri = self.url(endpoint, &format!("/score{query}"));
        let client = client();
        tokio::spawn(async move {
            let auth = format!("Bearer {KEY}");
            send(
                &client,
                Method::POST,
                &uri,
                &[("authorization", &auth)],
                full(r#"{"data": 1}"#),
            )
            .await
        })
    }

    /// Shuts the router down gracefully.
    pub async fn shutdown(mut self) {
        if let Some(router) = self.router.take() {
            guard("router shutdown", router.shutdown()).await;
        }
    }
}

/// Finds `name{labels}` in Prometheus text (labels must match exactly, in any order).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text, name).find_map(|(labels, value)| (labels == wanted).then_some(value))
}

/// The value of the first sample of `name`, whatever its labels.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    samples(text, name).map(|(_, value)| value).next()
}

/// The sum of every sample of `name` (all label sets), if there is one.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    samples(text, name)
        .map(|(_, value)| value)
        .reduce(|a, b| a + b)
}

/// Every sample of `name` in Prometheus text: its labels and value.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (BTreeMap<String, String>, f64)> + 'a {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            (series_name == name).then(|| Some((labels, value.parse().ok()?)))?
        })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').unwrap_or(after.len());
        labels.insert(
            key.trim_start_matches(',').to_string(),
            after[..end].to_string(),
        );
        rest = after.get(end + 1..).unwrap_or("");
    }
    labels
}

// ---------------------------------------------------------------------------------------------
// Requests held open

/// A response whose body is kept open, on a dedicated connection; dropping it closes the
/// connection (the client goes away mid-response).
pub struct Held {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The first data frame received.
    pub first: Bytes,
    body: Option<Incoming>,
    connection: tokio::task::JoinHandle<()>,
    _sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Held {
    /// Sends `GET uri` on a new connection to `address` and waits for the first body frame.
    pub async fn open(address: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> Held {
        let what = format!("held request {uri}");
        guard(&what, async {
            let stream = TcpStream::connect(address).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            let connection = tokio::spawn(async move {
                let _ = connection.await;
            });
            let response = sender
                .send_request(request(Method::GET, uri, headers, empty()))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let (parts, mut body) = response.into_parts();
            let mut first = Bytes::new();
            if parts.status == StatusCode::OK {
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        first = data;
                        break;
                    }
                }
            } else {
                let rest = body.collect().await.unwrap().to_bytes();
                panic!("{what}: expected 200, got {} {:?}", parts.status, rest);
            }
            Held {
                status: parts.status,
                headers: parts.headers,
                first,
                body: Some(body),
                connection,
                _sender: sender,
            }
        })
        .await
    }

    /// The next data frame.
    pub async fn next(&mut self) -> Option<Bytes> {
        let body = self.body.as_mut()?;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.ok()?.into_data() {
                return Some(data);
            }
        }
        None
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.body = None;
        self.connection.abort();
    }
}

/// Writes a request with an empty body on a new raw connection and returns the connection
/// without reading anything; dropping it closes the connection (the client goes away).
pub async fn raw_open(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-length: 0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

// ---------------------------------------------------------------------------------------------
// Misbehaving pods

/// What a [`RawPod`] does with each request.
#[derive(Clone, Debug)]
pub enum RawMode {
    /// Reads the request head, then resets the connection.
    Reset,
    /// Reads the request head, then never answers (the connection stays open).
    Hang,
    /// Reads the request head, writes these bytes and closes.
    Respond(&'static str),
}

/// A pod built on raw TCP that misbehaves on purpose. Counts the requests it read.
pub struct RawPod {
    address: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RawPod {
    /// Starts one on a free port of 127.0.0.1.
    pub async fn start(mode: RawMode) -> RawPod {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut hung = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let mode = mode.clone();
                let counter = counter.clone();
                let (keep_tx, keep_rx) = tokio::sync::oneshot::channel::<TcpStream>();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    match mode {
                        RawMode::Reset => {
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            drop(stream);
                        }
                        RawMode::Hang => {
                            let _ = keep_tx.send(stream);
                        }
                        RawMode::Respond(bytes) => {
                            let _ = stream.write_all(bytes.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                    }
                });
                hung.push(keep_rx);
            }
        });
        RawPod {
            address,
            requests,
            task,
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests whose head it read.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Misc

/// The process's resident set size in bytes (`VmRSS`).
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

/// The process's peak resident set size in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// Resets the peak RSS (`VmHWM`) to the current RSS; false when the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// A header name from text.
pub fn name(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

/// A header value from text.
pub fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}
