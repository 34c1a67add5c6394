//! Mirrored traffic: a copy of a share of requests goes to the mirror deployment, off the
//! client's path. The copy's body is the one the client sent, buffered up to a cap while it
//! streams to the live deployment; a larger body is not mirrored. The mirror's response is read
//! and discarded; nothing about it reaches the client.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::admission::Admitter;
use crate::table::Deployment;
use crate::telemetry::MirrorResult;
use crate::upstream::{PodBody, PodRequest, RequestBody, Upstream, WrittenHead};

/// The head of the live request as the mirror copy reuses it.
pub enum MirrorHead {
    /// An `http` request's parts as the live pod got them; the copy's head is written from them
    /// for its own body.
    Parts {
        /// Request method.
        method: Method,
        /// Origin-form URI as sent to the live pod.
        uri: Uri,
        /// Headers as sent to the live pod.
        headers: HeaderMap,
    },
    /// The head written for the live pod (a body received whole: the copy is the same body).
    Written(WrittenHead),
}

impl MirrorHead {
    /// The head of `request` as the live pod gets it.
    pub fn of<B>(request: &Request<B>) -> Self {
        MirrorHead::Parts {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        }
    }

    /// The copy's request, with `body`.
    fn request(self, body: Bytes) -> PodRequest {
        let body = RequestBody::full(body);
        match self {
            MirrorHead::Parts {
                method,
                uri,
                headers,
            } => {
                let mut request = Request::new(body);
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                PodRequest::from_http(request)
            }
            MirrorHead::Written(head) => PodRequest::new(head, body),
        }
    }
}

/// Sends the copy once `body` arrives, admitted like any request (cluster-wide with several
/// replicas); counts the outcome in the mirror deployment's metrics.
pub fn spawn(
    upstream: Upstream,
    admitter: Admitter,
    deployment: Arc<Deployment>,
    head: MirrorHead,
    body: oneshot::Receiver<Bytes>,
) {
    tokio::spawn(async move {
        let metrics = &deployment.metrics;
        let Ok(body) = body.await else {
            metrics.mirror(MirrorResult::Skipped);
            return;
        };
        let wait = deployment.settings.max_queue_wait;
        let Ok(slot) = admitter.admit(deployment.target(), wait).await else {
            metrics.mirror(MirrorResult::Dropped);
            return;
        };
        let request = head.request(body);
        let timeout = deployment.settings.request_timeout;
        let mut exchange = upstream.exchange(slot, timeout, &deployment.metrics);
        // Past the timeout the copy is dropped, and with it the exchange: abandoned, it holds
        // the mirror pod's slot until the pod is done (`upstream::abandon`).
        let copy = async move {
            match exchange.send(request).await {
                // The body ends the exchange: read to its end, the connection is reused.
                Ok(_) => drained(exchange.respond()).await,
                Err(_) => false,
            }
        };
        match tokio::time::timeout(timeout, copy).await {
            Ok(true) => metrics.mirror(MirrorResult::Sent),
            _ => metrics.mirror(MirrorResult::Failed),
        }
    });
}

/// Reads the mirror pod's body to its end; false when it broke.
async fn drained(mut body: PodBody) -> bool {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
}
