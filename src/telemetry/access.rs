//! The access log: which requests get a line ([`AccessLog`]), what a line says ([`AccessLine`]),
//! and the record of a routed request that writes its line when the response body ends
//! ([`RequestRecord`]). Routed requests and the router's own answers carry the same fields, so
//! one query finds a request whatever became of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method};

use super::stream::StreamStats;
use crate::trace::export::{Exporter, RequestSpans};
use crate::trace::TraceContext;

/// Which requests get an access-log line.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    /// Every request.
    #[default]
    On,
    /// No request.
    Off,
    /// Only responses with status 400 and above.
    Errors,
}

impl AccessLogMode {
    /// The spelling used in files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogMode::On => "on",
            AccessLogMode::Off => "off",
            AccessLogMode::Errors => "errors",
        }
    }
}

const MODE_ON: u8 = 0;
const MODE_OFF: u8 = 1;
const MODE_ERRORS: u8 = 2;

/// The access-log policy: a mode and a sampling rate for successful requests.
#[derive(Debug)]
pub struct AccessLog {
    mode: AtomicU8,
    sample_one_in: AtomicU32,
}

impl AccessLog {
    /// Logs per `mode`, keeping one in `sample_one_in` successful requests (errors always).
    pub fn new(mode: AccessLogMode, sample_one_in: u32) -> Self {
        let mode = match mode {
            AccessLogMode::On => MODE_ON,
            AccessLogMode::Off => MODE_OFF,
            AccessLogMode::Errors => MODE_ERRORS,
        };
        AccessLog {
            mode: AtomicU8::new(mode),
            sample_one_in: AtomicU32::new(sample_one_in.max(1)),
        }
    }

    /// Whether a response with `status` is logged.
    pub fn wants(&self, status: u16) -> bool {
        match self.mode.load(Ordering::Relaxed) {
            MODE_OFF => false,
            MODE_ERRORS => status >= 400,
            _ => {
                if status >= 400 {
                    return true;
                }
                let n = self.sample_one_in.load(Ordering::Relaxed);
                n <= 1 || fastrand::u32(..n) == 0
            }
        }
    }
}

/// The request as the client sent it, kept for its access-log line (taken when it arrives;
/// cloning these costs reference counts, not copies).
#[derive(Clone, Debug)]
pub struct RequestLine {
    /// Request method.
    pub method: Method,
    /// Path and query as the client sent them.
    target: Target,
    /// `User-Agent`, when sent: a field value's bytes (shared with the head they came in).
    pub user_agent: Option<Bytes>,
    /// The body's declared length (`Content-Length`), when there is one.
    pub declared_length: Option<u64>,
}

/// Where a request line's path and query are kept.
#[derive(Clone, Debug)]
enum Target {
    /// An `http` request's (none when it had none).
    Uri(Option<PathAndQuery>),
    /// A head's bytes (valid UTF-8), shared with it, the path being the first `path_len`.
    Bytes { bytes: Bytes, path_len: usize },
}

impl RequestLine {
    /// The line of a request whose path and query are `path`.
    pub fn of_path(
        method: Method,
        path: Option<PathAndQuery>,
        user_agent: Option<Bytes>,
        declared_length: Option<u64>,
    ) -> Self {
        let target = Target::Uri(path);
        RequestLine {
            method,
            target,
            user_agent,
            declared_length,
        }
    }

    /// The line of a request whose path and query are `target` (valid UTF-8), the path being its
    /// first `path_len` bytes.
    pub fn of_target(
        method: Method,
        target: Bytes,
        path_len: usize,
        user_agent: Option<Bytes>,
        declared_length: Option<u64>,
    ) -> Self {
        let mut line = Self::of_path(method, None, user_agent, declared_length);
        line.target = Target::Bytes {
            bytes: target,
            path_len,
        };
        line
    }

    /// The path and query, `""` when the request had none.
    pub fn path(&self) -> &str {
        match &self.target {
            Target::Uri(path) => path.as_ref().map_or("", |p| p.as_str()),
            Target::Bytes { bytes, .. } => std::str::from_utf8(bytes).unwrap_or(""),
        }
    }

    /// The path without the query, `""` when the request had none.
    pub fn path_only(&self) -> &str {
        match &self.target {
            Target::Uri(path) => path.as_ref().map_or("", |p| p.path()),
            Target::Bytes { bytes, path_len } => {
                std::str::from_utf8(&bytes[..*path_len]).unwrap_or("")
            }
        }
    }

    /// The `User-Agent` when it is visible ASCII (what `HeaderValue::to_str` gives).
    fn user_agent(&self) -> Option<&str> {
        let value = self.user_agent.as_deref()?;
        let visible = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b);
        value
            .iter()
            .all(visible)
            .then(|| std::str::from_utf8(value).ok())
            .flatten()
    }
}

/// One access-log line (target `scoregate::access`): every field a person needs to find a
/// request and see what became of it. Absent values are left out of the line.
pub struct AccessLine<'a> {
    /// `request` for an answer from a model pod, `rejected` for the router's own.
    pub message: &'static str,
    /// The request id sent to the pod and the client.
    pub request_id: &'a str,
    /// The W3C trace id the request belongs to.
    pub trace_id: Option<&'a str>,
    /// The client's address.
    pub client: SocketAddr,
    /// Method, path, user agent.
    pub line: &'a RequestLine,
    /// The endpoint the request targeted (also when it does not exist or refused the credential).
    pub endpoint: &'a str,
    /// The deployment chosen (`""` before one was).
    pub deployment: &'a str,
    /// The pod chosen, when one was.
    pub pod: Option<SocketAddr>,
    /// The status answered.
    pub status: u16,
    /// The router's `error.code`, for its own answers.
    pub code: Option<&'static str>,
    /// Time waiting for a slot, once one was given.
    pub queue_wait: Option<Duration>,
    /// Time from sending to the pod to its response head (or to giving up on it).
    pub upstream: Option<Duration>,
    /// When the request arrived.
    pub started: Instant,
    /// Response body bytes sent, and whether the body reached its end (routed requests).
    pub body: Option<(u64, bool)>,
    /// How a streamed body was timed (streamed responses only).
    pub stream: Option<StreamStats>,
}

impl AccessLine<'_> {
    /// Writes the line.
    pub fn write(&self) {
        tracing::info!(
            target: "scoregate::access",
            request_id = self.request_id,
            trace_id = self.trace_id,
            client = %self.client,
            method = %self.line.method,
            path = self.line.path(),
            user_agent = self.line.user_agent(),
            endpoint = self.endpoint,
            deployment = self.deployment,
            pod = self.pod.map(tracing::field::display),
            status = self.status,
            source = if self.code.is_some() { "router" } else { "model" },
            code = self.code,
            queue_ms = self.queue_wait.map(ms),
            upstream_ms = self.upstream.map(ms),
            total_ms = ms(self.started.elapsed()),
            response_bytes = self.body.map(|(bytes, _)| bytes),
            complete = self.body.map(|(_, complete)| complete),
            ttft_ms = self.stream.and_then(|s| s.first_byte).map(ms),
            chunks = self.stream.map(|s| s.chunks),
            max_gap_ms = self.stream.map(|s| ms(s.longest_gap)),
            "{}",
            self.message
        );
    }
}

/// What the access log and the span export say about one routed request, filled in along the
/// way and written when the response body ends (or the client goes away).
pub struct RequestRecord {
    /// Whether the access log wants its line.
    pub log: bool,
    /// Its trace, and the span the pod got as its parent.
    pub trace: TraceContext,
    /// The span the pod got as its parent, when the router set `traceparent`.
    pub upstream_span: Option<[u8; 8]>,
    /// Where its spans go, when they are exported and the trace is sampled.
    pub export: Option<Arc<Exporter>>,
    /// When the request arrived.
    pub started: Instant,
    /// The request id sent to the pod and the client.
    pub request_id: HeaderValue,
    /// The request as the client sent it.
    pub line: RequestLine,
    /// Endpoint name.
    pub endpoint: Arc<str>,
    /// Deployment that served.
    pub deployment: Arc<str>,
    /// Pod that served.
    pub pod: SocketAddr,
    /// Response status.
    pub status: u16,
    /// Time waiting for a slot.
    pub queue_wait: Duration,
    /// Time from send to response headers.
    pub upstream: Duration,
    /// The client's address.
    pub client: SocketAddr,
}

impl RequestRecord {
    /// Writes the access-log line and exports the spans, as wanted: `complete` says whether the
    /// body reached its end; `stream`, how a streamed body was timed.
    pub fn finish(self, response_bytes: u64, complete: bool, stream: Option<StreamStats>) {
        if let Some(export) = &self.export {
            export.record(&RequestSpans {
                trace: self.trace,
                upstream_span: self.upstream_span,
                method: self.line.method.to_string(),
                path: self.line.path().to_string(),
                endpoint: self.endpoint.to_string(),
                deployment: self.deployment.to_string(),
                pod: Some(self.pod.to_string()),
                status: self.status,
                error: None,
                elapsed: self.started.elapsed(),
                queue_wait: Some(self.queue_wait),
                upstream: Some(self.upstream),
            });
        }
        if !self.log {
            return;
        }
        let trace_id = self.trace.trace_id_hex();
        AccessLine {
            message: "request",
            request_id: self.request_id.to_str().unwrap_or(""),
            trace_id: Some(&trace_id),
            client: self.client,
            line: &self.line,
            endpoint: &self.endpoint,
            deployment: &self.deployment,
            pod: Some(self.pod),
            status: self.status,
            code: None,
            queue_wait: Some(self.queue_wait),
            upstream: Some(self.upstream),
            started: self.started,
            body: Some((response_bytes, complete)),
            stream,
        }
        .write();
    }
}

/// Milliseconds with microsecond precision, for log fields.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_modes() {
        assert!(AccessLog::new(AccessLogMode::On, 1).wants(200));
        assert!(!AccessLog::new(AccessLogMode::Off, 1).wants(500));
        let errors = AccessLog::new(AccessLogMode::Errors, 1);
        assert!(!errors.wants(200) && errors.wants(404));
        let sampled = AccessLog::new(AccessLogMode::On, 1_000_000);
        assert!(sampled.wants(503));
        assert!((0..100).filter(|_| sampled.wants(200)).count() < 5);
    }
}
