//! Phase "record": every request is counted once (`scoregate_requests_total` and the duration
//! histograms) and gets one access-log line: a routed request when its body ends or the client
//! goes away, a rejected one at once.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Request, Response};

use super::body::ResponseBody;
use super::context::Context;
use super::error::{Rejection, Scope};
use super::respond::Responded;
use crate::table::Deployment;
use crate::telemetry::{ms, AccessLog, RequestRecord, StatusCounters};

/// The request line as the client sent it, kept for the access log.
#[derive(Debug)]
pub struct RequestLine {
    method: Method,
    path: Option<PathAndQuery>,
}

impl RequestLine {
    /// The method and the path (with query) of `request`.
    pub fn of<B>(request: &Request<B>) -> Self {
        RequestLine {
            method: request.method().clone(),
            path: request.uri().path_and_query().cloned(),
        }
    }
}

/// Counts a response `deployment` gave after `queue_wait` in its queue, and attaches the
/// access-log line to its body.
pub fn routed(
    access_log: &AccessLog,
    responded: Responded,
    deployment: &Deployment,
    queue_wait: Duration,
    line: RequestLine,
    cx: &Context,
) -> Response<ResponseBody> {
    let status = responded.response.status().as_u16();
    let metrics = &deployment.metrics;
    metrics.requests.record(status);
    metrics
        .duration()
        .record(cx.started.elapsed().as_secs_f64());
    metrics
        .upstream_duration()
        .record(responded.upstream_time.as_secs_f64());
    let record = access_log.wants(status).then(|| {
        Box::new(RequestRecord {
            started: cx.started,
            request_id: cx.ids.request_id.clone(),
            method: line.method,
            path: line.path,
            endpoint: deployment.endpoint.clone(),
            deployment: deployment.name.clone(),
            pod: responded.pod,
            status,
            queue_wait,
            upstream: responded.upstream_time,
            client: cx.conn.remote,
        })
    });
    responded
        .response
        .map(|body| ResponseBody::streaming(body, record))
}

/// Counts a rejection where it belongs and logs it with the request id.
pub fn rejected(
    access_log: &AccessLog,
    unknown: &StatusCounters,
    rejection: &Rejection,
    cx: &Context,
) {
    let status = rejection.error.status().as_u16();
    let (endpoint, deployment): (&str, &str) = match &rejection.scope {
        Scope::Unknown => {
            unknown.record(status);
            ("", "")
        }
        Scope::Endpoint(counters) => {
            counters.record(status);
            ("", "")
        }
        Scope::Deployment(d) => {
            d.metrics.requests.record(status);
            d.metrics
                .duration()
                .record(cx.started.elapsed().as_secs_f64());
            (&d.endpoint, &d.name)
        }
    };
    if access_log.wants(status) {
        tracing::info!(
            target: "scoregate::access",
            request_id = cx.ids.request_id_str(),
            endpoint,
            deployment,
            status,
            code = rejection.error.code(),
            total_ms = ms(cx.started.elapsed()),
            "rejected"
        );
    }
}
