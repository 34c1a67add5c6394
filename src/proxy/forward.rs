//! Phase "forward": the request as the pod gets it, sent on the admitted pod's exchange within
//! `request_timeout_ms`, and retried once on another pod when nothing could be sent. A mirrored
//! request's copy leaves from here, off the client's path.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, EXPECT, HOST};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::context::{Context, ProxySettings};
use super::error::RouterError;
use super::route::UpstreamTarget;
use super::{headers, mirror};
use crate::admission::{Admitter, Slot};
use crate::table::Deployment;
use crate::upstream::{
    Ending, Exchange, MirrorTee, RequestBody, RequestBodyError, SendError, Upstream,
};

/// A request the pod has answered: its response head, on the exchange that holds the slot and
/// the connection until the body ends.
pub struct Forwarded {
    /// The pod's response head (and its body, not yet read).
    pub response: Response<Incoming>,
    /// The request's exchange with the pod.
    pub exchange: Exchange,
    /// Time from sending to the response head.
    pub upstream_time: Duration,
}

/// What forwarding uses: the pods' connections, the admitter (for the retry and mirror copies)
/// and the body limits.
pub struct Forwarder {
    upstream: Upstream,
    admitter: Admitter,
    max_request_body_bytes: u64,
    mirror_max_body_bytes: usize,
}

impl Forwarder {
    /// Forwarding with `upstream` and `admitter`, under the limits of `settings`.
    pub fn new(upstream: Upstream, admitter: Admitter, settings: &ProxySettings) -> Self {
        Forwarder {
            upstream,
            admitter,
            max_request_body_bytes: settings.max_request_body_bytes,
            mirror_max_body_bytes: settings.mirror_max_body_bytes,
        }
    }

    /// Sends `request` to the pod of `slot` (or, when connecting fails, another one) and waits
    /// for the response head.
    pub async fn forward(
        &self,
        deployment: &Arc<Deployment>,
        target: UpstreamTarget,
        slot: Slot,
        request: Request<Incoming>,
        cx: &Context,
    ) -> Result<Forwarded, RouterError> {
        let (parts, body) = request.into_parts();
        let (body, copy) = self.request_body(body, target.mirror.is_some());
        let exchange = self.upstream.exchange(slot);
        let request = upstream_request(parts, body, target.path, cx, exchange.authority());
        if let (Some(mirror), Some(copy)) = (target.mirror, copy) {
            let head = mirror::MirrorHead::of(&request);
            let (upstream, admitter) = (self.upstream.clone(), self.admitter.clone());
            mirror::spawn(upstream, admitter, mirror, head, copy);
        }
        let sent_at = Instant::now();
        let timeout = deployment.settings.request_timeout;
        let (response, exchange) =
            tokio::time::timeout(timeout, self.send(deployment, exchange, request))
                .await
                .map_err(|_| RouterError::UpstreamTimeout)??;
        Ok(Forwarded {
            response,
            exchange,
            upstream_time: sent_at.elapsed(),
        })
    }

    /// The body to send: the client's, streamed under the body limit; with a mirror, also the
    /// receiver of the capped copy.
    fn request_body(
        &self,
        body: Incoming,
        mirrored: bool,
    ) -> (RequestBody, Option<oneshot::Receiver<Bytes>>) {
        let (tee, copy) = if mirrored {
            let (done, copy) = oneshot::channel();
            let tee = MirrorTee::new(self.mirror_max_body_bytes, done);
            (Some(tee), Some(copy))
        } else {
            (None, None)
        };
        let body = RequestBody::streaming(body, self.max_request_body_bytes, tee);
        (body, copy)
    }

    /// Sends on the admitted pod; when connecting fails (nothing was sent), retries once on
    /// another pod that has a free slot now.
    async fn send(
        &self,
        deployment: &Arc<Deployment>,
        mut exchange: Exchange,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Exchange), RouterError> {
        let (request, error) = match exchange.send(request).await {
            Ok(response) => return Ok((response, exchange)),
            Err(SendError::Failed(e)) => return Err(failed(exchange, &e)),
            Err(SendError::NotSent { request, error }) => (request, error),
        };
        deployment.metrics.connect_errors().increment(1);
        let failed_pod = exchange.pod().clone();
        tracing::debug!(pod = %failed_pod.address(), %error, "connecting to the pod failed; retrying elsewhere");
        exchange.end(Ending::Discarded);
        let retry = self
            .admitter
            .retry(deployment.target(), &failed_pod)
            .await
            .ok_or(RouterError::UpstreamConnectFailed)?;
        deployment.metrics.retries().increment(1);
        let mut exchange = self.upstream.exchange(retry);
        match exchange.send(*request).await {
            Ok(response) => Ok((response, exchange)),
            Err(SendError::Failed(e)) => Err(failed(exchange, &e)),
            Err(SendError::NotSent { error, .. }) => {
                deployment.metrics.connect_errors().increment(1);
                tracing::debug!(pod = %exchange.pod().address(), %error, "connecting to the retry pod failed");
                exchange.end(Ending::Discarded);
                Err(RouterError::UpstreamConnectFailed)
            }
        }
    }
}

/// Ends an exchange whose send failed, and says whose fault it was: the client's body (413,
/// 400) or the pod (502).
fn failed(exchange: Exchange, error: &hyper::Error) -> RouterError {
    exchange.end(Ending::Discarded);
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(body_error) = cause.downcast_ref::<RequestBodyError>() {
            return match body_error {
                RequestBodyError::TooLarge { .. } => RouterError::PayloadTooLarge,
                RequestBodyError::Client(_) => RouterError::BadRequestBody,
            };
        }
        source = cause.source();
    }
    RouterError::UpstreamFailed
}

/// The request as the pod gets it: hop-by-hop headers and the router's credential removed,
/// `Host` kept (or set from the target's authority, or to the pod), the forwarding headers and
/// the request ids set, the path rewritten.
fn upstream_request(
    mut parts: Parts,
    body: RequestBody,
    path: PathAndQuery,
    cx: &Context,
    pod_authority: &HeaderValue,
) -> Request<RequestBody> {
    let mut present = headers::Present::scan(&parts.headers);
    let original_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(HOST).cloned());
    let headers = &mut parts.headers;
    headers::strip_present_hop_by_hop(headers, &mut present);
    if present.authorization {
        // The credential is for the router, not for the model's code.
        headers.remove(AUTHORIZATION);
    }
    if present.expect {
        // The router already answered `100-continue` by reading the body.
        headers.remove(EXPECT);
    }
    if !present.host || parts.uri.authority().is_some() {
        // An authority in the target (HTTP/2, or HTTP/1 absolute form) is the host; an
        // origin-form request keeps its Host as it is.
        headers.insert(
            HOST,
            original_host
                .clone()
                .unwrap_or_else(|| pod_authority.clone()),
        );
    }
    let conn = &cx.conn;
    headers::add_present_forwarded(headers, &present, &conn.client_ip, conn.tls, original_host);
    cx.ids.apply_to_request(headers);
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}
