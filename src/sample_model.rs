//! A sample model server that behaves like the Azure ML inference server
//! (`docs/ARCHITECTURE.md`, "Model pods"): `GET /` → `Healthy`; `/score` runs a toy model
//! for GET, POST and OPTIONS and answers 405 otherwise; `GET /swagger.json`; failures are 500 with
//! `x-ms-run-function-failed: True`; request ids are echoed.
//!
//! Each request can ask for a behaviour through query parameters (or `x-sample-*` headers), so
//! the demo and the tests can produce every status on demand:
//!
//! | parameter | effect |
//! |---|---|
//! | `sleep_ms=N` | wait N ms before answering (504 through the router when above its timeout); [`SampleStats::set_delay`] adds a delay to every request |
//! | `fail=1` | 500 from the "scoring function" |
//! | `reset=1` | reset the TCP connection instead of answering (502 through the router) |
//! | `stream_events=N&event_interval_ms=M` | a `text/event-stream` of N events, M ms apart |
//! | `response_bytes=N` | a streamed body of N bytes |
//!
//! The server counts requests in flight and the highest concurrency it has seen, so tests can
//! check the router's per-pod limit from the pod's side. Like a model server's worker, a
//! `/score` request runs to its end even when its client goes away, and counts as in flight until
//! its response has been written to the end (or the connection is gone).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// What a sample pod has seen; shared with whoever started it.
#[derive(Debug, Default)]
pub struct SampleStats {
    in_flight: AtomicU32,
    peak: AtomicU32,
    requests: AtomicU64,
    scored_bytes: AtomicU64,
    last_headers: Mutex<Option<HeaderMap>>,
    delay_ms: AtomicU64,
}

impl SampleStats {
    /// Requests being served now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever served at once.
    pub fn peak_concurrency(&self) -> u32 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests received (any path).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Request-body bytes received on `/score`.
    pub fn scored_bytes(&self) -> u64 {
        self.scored_bytes.load(Ordering::SeqCst)
    }

    /// Headers of the last request received.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.last_headers.lock().clone()
    }

    /// Makes every `/score` request take at least `delay` more (a slow model, whatever the
    /// request asks for).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Forgets the peak (to measure one phase of a test).
    pub fn reset_peak(&self) {
        self.peak.store(self.in_flight(), Ordering::SeqCst);
    }
}

/// A running sample pod.
pub struct SampleModel {
    address: SocketAddr,
    stats: Arc<SampleStats>,
    task: tokio::task::JoinHandle<()>,
}

impl SampleModel {
    /// Starts a pod on `address` (port 0 picks a free one) that names itself `model`.
    pub async fn start(address: SocketAddr, model: &str) -> std::io::Result<SampleModel> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let stats = Arc::new(SampleStats::default());
        let model: Arc<str> = model.into();
        let task = tokio::spawn(serve(listener, model, stats.clone()));
        Ok(SampleModel {
            address,
            stats,
            task,
        })
    }

    /// Starts a pod on a free port of 127.0.0.1.
    pub async fn start_local(model: &str) -> std::io::Result<SampleModel> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), model).await
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<SampleStats> {
        &self.stats
    }

    /// Stops accepting; open connections end with the runtime.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SampleModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, model: Arc<str>, stats: Arc<SampleStats>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A second handle on the socket lets a handler turn the close into a reset.
        let Ok(std_stream) = stream.into_std() else {
            continue;
        };
        let Ok(linger_handle) = std_stream.try_clone() else {
            continue;
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(std_stream) else {
            continue;
        };
        let pod_address = stream.local_addr().ok();
        let (model, stats, builder) = (model.clone(), stats.clone(), builder.clone());
        tokio::spawn(async move {
            let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reset_flag = reset.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let (model, stats, reset) = (model.clone(), stats.clone(), reset_flag.clone());
                async move { handle(request, model, pod_address, stats, &reset).await }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if reset.load(Ordering::SeqCst) {
                let _ = socket2::SockRef::from(&linger_handle).set_linger(Some(Duration::ZERO));
            }
            drop(linger_handle);
        });
    }
}

/// Asked-for behaviour of one request.
#[derive(Default)]
struct Controls {
    sleep_ms: u64,
    fail: bool,
    reset: bool,
    stream_events: u32,
    event_interval_ms: u64,
    response_bytes: u64,
}

impl Controls {
    fn read(request: &Request<Incoming>) -> Self {
        let mut c = Controls {
            event_interval_ms: 100,
            ..Controls::default()
        };
        let mut set = |key: &str, value: &str| match key {
            "sleep_ms" => c.sleep_ms = value.parse().unwrap_or(0),
            "fail" => c.fail = value == "1" || value.eq_ignore_ascii_case("true"),
            "reset" => c.reset = value == "1" || value.eq_ignore_ascii_case("true"),
            "stream_events" => c.stream_events = value.parse().unwrap_or(0),
            "event_interval_ms" => c.event_interval_ms = value.parse().unwrap_or(100),
            "response_bytes" => c.response_bytes = value.parse().unwrap_or(0),
            _ => {}
        };
        for pair in request.uri().query().unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "1"));
            set(k, v);
        }
        for (name, value) in request.headers() {
            if let Some(key) = name.as_str().strip_prefix("x-sample-") {
                set(&key.replace('-', "_"), value.to_str().unwrap_or(""));
            }
        }
        c
    }
}

/// One `/score` request being worked on, from its arrival to the end of its response.
struct InFlight(Arc<SampleStats>);

impl InFlight {
    fn enter(stats: &Arc<SampleStats>) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight until it has been written or dropped.
struct UntilWritten {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for UntilWritten {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn handle(
    request: Request<Incoming>,
    model: Arc<str>,
    pod: Option<SocketAddr>,
    stats: Arc<SampleStats>,
    reset: &std::sync::atomic::AtomicBool,
) -> Result<Response<Body>, std::io::Error> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    *stats.last_headers.lock() = Some(request.headers().clone());
    let started = Instant::now();
    let ids = Ids::read(request.headers());
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => text(StatusCode::OK, "text/plain; charset=utf-8", "Healthy"),
        (&Method::GET, "/swagger.json") => {
            text(StatusCode::OK, "application/json", &swagger(&model))
        }
        (&Method::OPTIONS, "/score") => text(StatusCode::OK, "text/plain", ""),
        (&Method::GET | &Method::POST, "/score") => {
            // The work goes on when the client goes away, as a model server's worker does.
            let work = tokio::spawn(work(request, model, pod, stats));
            match work.await {
                Ok(Some(response)) => response,
                _ => {
                    reset.store(true, Ordering::SeqCst);
                    return Err(std::io::Error::other("reset requested"));
                }
            }
        }
        (_, "/score") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"message": "Method not allowed"}"#.into(),
        ),
        _ => json(StatusCode::NOT_FOUND, r#"{"message": "Not found"}"#.into()),
    };
    let is_score = request_is_score(&response);
    let headers = response.headers_mut();
    ids.apply(headers);
    if is_score {
        let ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
        headers.insert(
            HeaderName::from_static("x-ms-run-fn-exec-ms"),
            HeaderValue::from_str(&ms).unwrap_or(HeaderValue::from_static("0")),
        );
    }
    if !headers.contains_key("x-ms-run-function-failed") {
        headers.insert(
            HeaderName::from_static("x-ms-run-function-failed"),
            HeaderValue::from_static("False"),
        );
    }
    Ok(response)
}

/// One `/score` request's work, in flight until its response is written; `None` asks for a
/// reset.
async fn work(
    request: Request<Incoming>,
    model: Arc<str>,
    pod: Option<SocketAddr>,
    stats: Arc<SampleStats>,
) -> Option<Response<Body>> {
    let in_flight = InFlight::enter(&stats);
    let controls = Controls::read(&request);
    let sleep_ms = controls.sleep_ms + stats.delay_ms.load(Ordering::SeqCst);
    if sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    if controls.reset {
        return None;
    }
    let response = score(request, &model, pod, &stats, &controls).await;
    Some(response.map(|inner| {
        BodyExt::boxed(UntilWritten {
            inner,
            _in_flight: in_flight,
        })
    }))
}

fn request_is_score(response: &Response<Body>) -> bool {
    response.extensions().get::<ScoreMarker>().is_some()
}

#[derive(Clone, Copy)]
struct ScoreMarker;

async fn score(
    request: Request<Incoming>,
    model: &str,
    pod: Option<SocketAddr>,
    stats: &SampleStats,
    controls: &Controls,
) -> Response<Body> {
    let query = request.uri().query().map(str::to_owned);
    let is_get = request.method() == Method::GET;
    // Read the body as it streams: count everything, keep only a small prefix to echo.
    let mut body = request.into_body();
    let mut received: u64 = 0;
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"message": "The request body could not be read"}"#.into(),
            );
        };
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            if kept.len() < 64 * 1024 {
                kept.extend_from_slice(&data[..data.len().min(64 * 1024 - kept.len())]);
            }
        }
    }
    stats.scored_bytes.fetch_add(received, Ordering::SeqCst);
    let mut response = if controls.fail {
        let mut r = json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"message": "An unexpected error occurred in scoring script. Check the logs for more info."}"#.into(),
        );
        r.headers_mut().insert(
            HeaderName::from_static("x-ms-run-function-failed"),
            HeaderValue::from_static("True"),
        );
        r
    } else if controls.stream_events > 0 {
        event_stream(controls.stream_events, controls.event_interval_ms)
    } else if controls.response_bytes > 0 {
        large_body(controls.response_bytes)
    } else {
        let input = if is_get {
            serde_json::Value::String(query.unwrap_or_default())
        } else if received as usize == kept.len() {
            serde_json::from_slice(&kept).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&kept).into_owned())
            })
        } else {
            serde_json::Value::Null
        };
        let body = serde_json::json!({
            "model": model,
            "pod": pod.map(|p| p.to_string()),
            "input_bytes": received,
            "input": input,
            "result": [received % 10],
        });
        json(StatusCode::OK, body.to_string())
    };
    response.extensions_mut().insert(ScoreMarker);
    response
}

fn event_stream(events: u32, interval_ms: u64) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for i in 0..events {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            let event = format!("data: {{\"token\": {i}}}\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

fn large_body(total: u64) -> Response<Body> {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                left - n,
            ))
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Request ids as the inference server handles them: `x-request-id` is kept or made up;
/// the client id comes from `x-ms-client-request-id`, else the legacy `x-ms-request-id`.
struct Ids {
    request_id: HeaderValue,
    ms_request_id: HeaderValue,
    client_request_id: Option<HeaderValue>,
}

impl Ids {
    fn read(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get("x-request-id")
            .cloned()
            .unwrap_or_else(crate::proxy::headers::new_request_id);
        let legacy = headers.get("x-ms-request-id").cloned();
        let client = headers.get("x-ms-client-request-id").cloned();
        let client_request_id = client.or_else(|| legacy.clone());
        let ms_request_id = legacy
            .or_else(|| client_request_id.clone())
            .unwrap_or_else(|| request_id.clone());
        Ids {
            request_id,
            ms_request_id,
            client_request_id,
        }
    }

    fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-request-id", self.request_id.clone());
        headers.insert("x-ms-request-id", self.ms_request_id.clone());
        if let Some(c) = &self.client_request_id {
            headers.insert("x-ms-client-request-id", c.clone());
        }
    }
}

fn swagger(model: &str) -> String {
    serde_json::json!({
        "swagger": "2.0",
        "info": {"title": model, "description": "API specification for the Azure Machine Learning service", "version": "1.0"},
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": {"type": "apiKey", "name": "Authorization", "in": "header", "description": "For example: Bearer abc123"}},
        "paths": {
            "/": {"get": {"operationId": "ServiceHealthCheck", "description": "Simple health check endpoint to ensure the service is up at any given point.", "responses": {"200": {"description": "If service is up and running, this response will be returned with the content 'Healthy'", "schema": {"type": "string"}}}}},
            "/score": {"post": {"operationId": "RunMLService", "description": "Run web service's model and get the prediction output", "security": [{"Bearer": []}], "responses": {"200": {"description": "Success"}, "default": {"description": "Failure"}}}}
        }
    })
    .to_string()
}
