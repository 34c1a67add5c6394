//! Phase "forward": the request as the pod gets it, sent on the admitted pod's exchange within
//! `request_timeout_ms`, and retried once on another pod when nothing could be sent. A mirrored
//! request's copy leaves from here, off the client's path.
//!
//! When the timeout passes, the send is dropped but not the pod's work: the exchange, dropped
//! with the request in progress, holds the slot until the pod is done (`upstream::abandon`).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri, Version};
use tokio::time::Sleep;

use super::context::{Context, ProxySettings};
use super::error::RouterError;
use super::request::ClientRequest;
use super::route::UpstreamTarget;
use super::{mirror, pod_head};
use crate::admission::{Admitter, Slot};
use crate::table::Deployment;
use crate::upstream::{
    Exchange, PodError, PodHead, PodRequest, RequestBody, RequestBodyError, SendError, Upstream,
};

/// A request the pod has answered: its response head (its index and bytes), on the exchange
/// that holds the slot and the connection until the body has been read.
pub struct Forwarded {
    /// The pod's response head.
    pub head: PodHead,
    /// The request's exchange with the pod (the body is read from it).
    pub exchange: Exchange,
    /// Time from sending to the response head.
    pub upstream_time: Duration,
    /// When the response head arrived.
    pub answered_at: Instant,
}

/// What forwarding uses: the pods' connections, the admitter (for the retry and mirror copies)
/// and the mirror's body limit.
pub struct Forwarder {
    upstream: Upstream,
    admitter: Admitter,
    mirror_max_body_bytes: u64,
}

impl Forwarder {
    /// Forwarding with `upstream` and `admitter`, under the limits of `settings`.
    pub fn new(upstream: Upstream, admitter: Admitter, settings: &ProxySettings) -> Self {
        Forwarder {
            upstream,
            admitter,
            mirror_max_body_bytes: settings.mirror_max_body_bytes as u64,
        }
    }

    /// Sends `request`, admitted at `admitted_at`, to the pod of `slot` (or, when connecting
    /// fails, another one) and waits for the response head. The request is rewritten for the pod (and its mirror copy sent
    /// off) when this is called; the returned future is the send alone, so no future holds the
    /// request around it (`docs/ARCHITECTURE.md`, "The request's future").
    pub fn forward<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
        target: UpstreamTarget,
        slot: Slot,
        request: ClientRequest<RequestBody>,
        cx: &Context,
        admitted_at: Instant,
    ) -> impl Future<Output = Result<Forwarded, RouterError>> + Send + 'a {
        let (request, mut body) = request.into_parts();
        let exchange = self.exchange(deployment, slot);
        let copy = target
            .mirror
            .is_some()
            .then(|| body.copy_for_mirror(self.mirror_max_body_bytes));
        let mirrored = copy.is_some();
        let (request, mirror_head) = match request {
            ClientRequest::Http(parts, ()) => {
                let path = target.path.into_path_and_query();
                let request = upstream_request(*parts, body, path, cx, exchange.authority());
                let head = mirrored.then(|| mirror::MirrorHead::of(&request));
                (PodRequest::from_http(request), head)
            }
            ClientRequest::Head(request) => {
                let path = target.path.as_bytes();
                let pod = pod_head::pod_request(&request, path, body, cx, exchange.authority());
                let head = mirrored.then(|| mirror::MirrorHead::Written(pod.head().clone()));
                (pod, head)
            }
        };
        if let (Some(mirror), Some(copy), Some(head)) = (target.mirror, copy, mirror_head) {
            let (upstream, admitter) = (self.upstream.clone(), self.admitter.clone());
            mirror::spawn(upstream, admitter, mirror, head, copy);
        }
        self.send_within_timeout(deployment, exchange, request, admitted_at)
    }

    fn exchange(&self, deployment: &Deployment, slot: Slot) -> Exchange {
        let timeout = deployment.settings.request_timeout;
        self.upstream.exchange(slot, timeout, &deployment.metrics)
    }

    /// [`Self::send`] within the deployment's `request_timeout_ms` (504 after), counted from
    /// `admitted_at` (the request is sent right after it is admitted). The timer is the pooled
    /// connection's, set anew ([`Exchange::request_timer`]), and kept for its next request.
    fn send_within_timeout<'a>(
        &'a self,
        deployment: &'a Arc<Deployment>,
        mut exchange: Exchange,
        request: PodRequest,
        admitted_at: Instant,
    ) -> impl Future<Output = Result<Forwarded, RouterError>> + Send + 'a {
        let deadline = admitted_at + deployment.settings.request_timeout;
        let mut timer = exchange.request_timer(admitted_at, deadline);
        // Boxed: the send (the exchange's request, its body and the pod's response head) is the
        // largest state of the request's future; kept apart, it is not copied with the phases
        // around it each time they move.
        let send = Box::pin(self.send(deployment, exchange, request));
        async move {
            let sent = within(send, timer.as_mut()).await;
            let (head, mut exchange) = sent.ok_or(RouterError::UpstreamTimeout)??;
            let answered_at = Instant::now();
            let upstream_time = exchange.sent_at().map_or(Duration::ZERO, |at| {
                answered_at.saturating_duration_since(at)
            });
            exchange.keep_timer(timer);
            Ok(Forwarded {
                head,
                exchange,
                upstream_time,
                answered_at,
            })
        }
    }

    /// Sends on the admitted pod; when connecting fails (nothing was sent), retries once on
    /// another pod that has a free slot now.
    async fn send(
        &self,
        deployment: &Arc<Deployment>,
        mut exchange: Exchange,
        request: PodRequest,
    ) -> Result<(PodHead, Exchange), RouterError> {
        let (request, error) = match exchange.send(request).await {
            Ok(head) => return Ok((head, exchange)),
            Err(SendError::Failed(e)) => return Err(failed(&e)),
            Err(SendError::NotSent { request, error }) => (request, error),
        };
        // Boxed: a request sent at the first try needs none of the retry's state.
        Box::pin(self.retry(deployment, exchange, request, error)).await
    }

    /// Connecting for `exchange` failed with `error` (nothing was sent): `request` is sent on
    /// another pod that has a free slot now, once.
    async fn retry(
        &self,
        deployment: &Arc<Deployment>,
        exchange: Exchange,
        request: Box<PodRequest>,
        error: std::io::Error,
    ) -> Result<(PodHead, Exchange), RouterError> {
        deployment.metrics.connect_errors().increment(1);
        let failed_pod = exchange.pod().clone();
        tracing::debug!(pod = %failed_pod.address(), %error, "connecting to the pod failed; retrying elsewhere");
        drop(exchange);
        let retry = self
            .admitter
            .retry(deployment.target(), &failed_pod)
            .await
            .ok_or(RouterError::UpstreamConnectFailed)?;
        deployment.metrics.retries().increment(1);
        let mut exchange = self.exchange(deployment, retry);
        match exchange.send(*request).await {
            Ok(head) => Ok((head, exchange)),
            Err(SendError::Failed(e)) => Err(failed(&e)),
            Err(SendError::NotSent { error, .. }) => {
                deployment.metrics.connect_errors().increment(1);
                tracing::debug!(pod = %exchange.address(), %error, "connecting to the retry pod failed");
                Err(RouterError::UpstreamConnectFailed)
            }
        }
    }
}

/// `send`'s output, or `None` when `timer` fires first.
async fn within<F: Future>(mut send: Pin<Box<F>>, mut timer: Pin<&mut Sleep>) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(output) = send.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Whose fault a failed send was: the client's body (413, 408, 400) or the pod (502).
fn failed(error: &PodError) -> RouterError {
    match error {
        PodError::Body(RequestBodyError::TooLarge { .. }) => RouterError::PayloadTooLarge,
        PodError::Body(RequestBodyError::Timeout(_)) => RouterError::BodyTimeout,
        PodError::Body(RequestBodyError::Client(_)) => RouterError::BadRequestBody,
        _ => RouterError::UpstreamFailed,
    }
}

/// The request as the pod gets it: its fields by the contract's rules (`pod_head`), the path
/// rewritten, HTTP/1.1.
pub(super) fn upstream_request(
    mut parts: Parts,
    body: RequestBody,
    path: PathAndQuery,
    cx: &Context,
    pod_authority: &HeaderValue,
) -> Request<RequestBody> {
    pod_head::rewrite_map(&mut parts, cx, pod_authority);
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}
