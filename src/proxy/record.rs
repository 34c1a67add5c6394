//! Phase "record": every request is counted once (`scoregate_requests_total`, by status and by
//! who answered, and the duration and size histograms) and gets one access-log line: a routed
//! request when its body ends or the client goes away, a rejected one at once, one whose client
//! went away before the answer as a 499 rejection ([`Pending`]). Both lines carry the same
//! fields (`telemetry::access::AccessLine`).

use std::sync::Arc;
use std::time::Duration;

use http_body::Body;

use super::answer::{Answer, PodAnswer};
use super::body::ResponseBody;
use super::context::Context;
use super::error::{Rejection, RouterError, Scope};
use super::finish::Finish;
use super::respond::Responded;
use super::target;
use crate::table::Deployment;
use crate::telemetry::access::AccessLine;
use crate::telemetry::stream::StreamTiming;
use crate::telemetry::{AccessLog, RequestRecord, Source, StatusCounters};
use crate::trace::export::{Exporter, RequestSpans};
use crate::upstream::{PodBody, PodHead};

/// Whether a response streams: server-sent events (the pod's first `Content-Type`, unless its
/// `Connection` field lists it: such a field does not reach the client), or a body whose
/// length is not known ahead (chunked, or HTTP/2 without `content-length`).
fn is_streamed(head: &PodHead, body: &PodBody) -> bool {
    let (fields, bytes) = (head.head.fields(), &head.bytes[..]);
    let content_type = fields
        .iter()
        .find(|f| f.name(bytes).eq_ignore_ascii_case(b"content-type"));
    let event_stream = content_type.is_some_and(|f| {
        f.value(bytes).starts_with(b"text/event-stream")
            && !head.head.is_connection_listed(bytes, b"content-type")
    });
    event_stream || (!body.is_end_stream() && body.size_hint().exact().is_none())
}

/// Counts a response `deployment` gave after `queue_wait` in its queue, and attaches what its
/// body does when it ends.
pub fn routed(
    (access_log, export): (&AccessLog, Option<&Arc<Exporter>>),
    responded: Responded,
    deployment: &Deployment,
    queue_wait: Duration,
    cx: &Context,
) -> Answer {
    let status = responded.head.status();
    let metrics = &deployment.metrics;
    metrics.requests.record(status, Source::Model);
    let duration = responded.answered_at.saturating_duration_since(cx.started);
    metrics.duration().record(duration.as_secs_f64());
    metrics
        .upstream_duration()
        .record(responded.upstream_time.as_secs_f64());
    if let Some(length) = cx.line.declared_length {
        metrics.request_size().record(length as f64);
    }
    let log = access_log.wants(status);
    let export = export.filter(|_| cx.ids.trace.sampled()).cloned();
    let record = (log || export.is_some()).then(|| {
        Box::new(RequestRecord {
            log,
            trace: cx.ids.trace,
            upstream_span: cx.ids.upstream_span,
            export,
            started: cx.started,
            request_id: responded.headers.request_id().clone(),
            line: cx.line.clone(),
            endpoint: deployment.endpoint.clone(),
            deployment: deployment.name.clone(),
            pod: responded.pod,
            status,
            queue_wait,
            upstream: responded.upstream_time,
            client: cx.conn.remote,
        })
    });
    let stream = is_streamed(&responded.head, &responded.body)
        .then(|| StreamTiming::new(cx.started, metrics.chunk_gap().clone()));
    let finish = Finish::new(metrics, record, stream);
    Answer::Pod(Box::new(PodAnswer {
        head: responded.head,
        headers: responded.headers,
        body: ResponseBody::streaming(responded.body, Some(finish)),
    }))
}

/// Counts a rejection where it belongs (`source="router"`, its `error.code`) and logs it with
/// everything known of the request: the endpoint it targeted, the deployment and pod when they
/// were chosen, and the time spent queued and at the pod.
pub fn rejected(
    (access_log, export): (&AccessLog, Option<&Arc<Exporter>>),
    unknown: &StatusCounters,
    rejection: &Rejection,
    cx: &Context,
) {
    let status = rejection.error.status().as_u16();
    let code = rejection.error.code();
    let source = Source::Router(code);
    let (endpoint, deployment): (&str, &str) = match &rejection.scope {
        Scope::Unknown => {
            unknown.record(status, source);
            let path = cx.line.path_only();
            (target::from_path(path).map_or("", |(name, _)| name), "")
        }
        Scope::Endpoint(counters) => {
            counters.record(status, source);
            (counters.endpoint(), "")
        }
        Scope::Deployment(d) => {
            d.metrics.requests.record(status, source);
            d.metrics
                .duration()
                .record(cx.started.elapsed().as_secs_f64());
            (&d.endpoint, &d.name)
        }
    };
    let attempt = rejection.attempt;
    if let Some(export) = export.filter(|_| cx.ids.trace.sampled()) {
        export.record(&RequestSpans {
            trace: cx.ids.trace,
            upstream_span: cx.ids.upstream_span,
            method: cx.line.method.to_string(),
            path: cx.line.path().to_string(),
            endpoint: endpoint.to_string(),
            deployment: deployment.to_string(),
            pod: attempt.and_then(|a| a.pod).map(|p| p.to_string()),
            status,
            error: Some(code),
            elapsed: cx.started.elapsed(),
            queue_wait: attempt.map(|a| a.queue_wait),
            upstream: attempt.and_then(|a| a.upstream),
        });
    }
    if !access_log.wants(status) {
        return;
    }
    let trace_id = cx.ids.trace.trace_id_hex();
    AccessLine {
        message: "rejected",
        request_id: cx.ids.request_id_str(),
        trace_id: Some(&trace_id),
        client: cx.conn.remote,
        line: &cx.line,
        endpoint,
        deployment,
        pod: attempt.and_then(|a| a.pod),
        status,
        code: Some(code),
        queue_wait: attempt.map(|a| a.queue_wait),
        upstream: attempt.and_then(|a| a.upstream),
        started: cx.started,
        body: None,
        stream: None,
    }
    .write();
}

/// A routed request not answered yet. Dropped before [`Pending::settled`] — the client went
/// away (HTTP/1 disconnect, HTTP/2 reset) while the request was received, queued or forwarded —
/// it is counted and logged as a 499 `ClientClosedRequest` with the time it lasted.
pub struct Pending<'a> {
    log: (&'a AccessLog, Option<&'a Arc<Exporter>>),
    unknown: &'a StatusCounters,
    deployment: &'a Arc<Deployment>,
    cx: &'a Context,
    settled: bool,
}

impl<'a> Pending<'a> {
    /// A request for `deployment`, now in progress.
    pub fn new(
        log: (&'a AccessLog, Option<&'a Arc<Exporter>>),
        unknown: &'a StatusCounters,
        deployment: &'a Arc<Deployment>,
        cx: &'a Context,
    ) -> Self {
        Pending {
            log,
            unknown,
            deployment,
            cx,
            settled: false,
        }
    }

    /// The request has an answer (a response or a rejection), recorded where it is made.
    pub fn settled(mut self) {
        self.settled = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let gone = Rejection::at_deployment(RouterError::ClientClosedRequest, self.deployment);
            rejected(self.log, self.unknown, &gone, self.cx);
        }
    }
}
