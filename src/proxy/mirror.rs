//! Mirrored traffic: a copy of a share of requests goes to the mirror deployment, off the
//! client's path. The copy's body is the one the client sent, buffered up to a cap while it
//! streams to the live deployment; a larger body is not mirrored. The mirror's response is read
//! and discarded; nothing about it reaches the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::body::RequestBody;
use crate::cluster::Admitter;
use crate::table::Deployment;
use crate::telemetry::MirrorResult;
use crate::upstream::Upstream;

/// The parts of the live request the mirror copy reuses.
pub struct MirrorHead {
    /// Request method.
    pub method: Method,
    /// Origin-form URI as sent to the live pod.
    pub uri: Uri,
    /// Headers as sent to the live pod.
    pub headers: HeaderMap,
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
        let wait = Duration::from_millis(deployment.settings.max_queue_wait_ms);
        let Ok(slot) = admitter.admit(&deployment, wait).await else {
            metrics.mirror(MirrorResult::Dropped);
            return;
        };
        let mut request = Request::new(RequestBody::full(body));
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.headers_mut() = head.headers;
        let timeout = Duration::from_millis(deployment.settings.request_timeout_ms);
        let exchange = async {
            let (response, sender) = upstream.send(slot.pod(), request).await.ok()?;
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame.ok()?;
            }
            slot.pod().idle.put(sender);
            Some(())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Some(())) => metrics.mirror(MirrorResult::Sent),
            _ => metrics.mirror(MirrorResult::Failed),
        }
        drop(slot);
    });
}
