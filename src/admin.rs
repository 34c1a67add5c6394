//! The admin listener: `/healthz` (the process runs), `/readyz` (a routing table is loaded, the
//! router is not shutting down, and it is not isolated from its cluster) and `/metrics`
//! (Prometheus text).
//!
//! It has its own port so probes and scrapes never queue behind scoring traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::server::Lifecycle;
use crate::table::Readiness;
use crate::table::TableHandle;
use crate::telemetry::Metrics;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Loaded once a first table is published.
    pub readiness: Readiness,
    /// Shutdown progress.
    pub lifecycle: Lifecycle,
    /// The routing table, for live gauges.
    pub table: TableHandle,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Why the replica should get no traffic although it runs, if it should not (with
    /// coordinated admission: isolated from its cluster).
    pub not_ready: Option<NotReady>,
}

/// A check `/readyz` asks: the reason the replica is not ready, or `None`.
pub type NotReady = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl AdminState {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.lifecycle.shutting_down.is_cancelled() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if !self.readiness.is_loaded() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no routing table loaded yet\n",
                    )
                } else if let Some(reason) = self.not_ready.as_ref().and_then(|check| check()) {
                    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "");
                    *response.body_mut() = Full::new(Bytes::from(format!("cluster: {reason}\n")));
                    response
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            "/metrics" => {
                let table = self.table.snapshot();
                for endpoint in table.endpoints() {
                    for deployment in endpoint.deployments.iter() {
                        deployment
                            .metrics
                            .set_admission(deployment.admission.stats());
                    }
                }
                self.metrics.run_upkeep();
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves the admin endpoints until the process stops (it outlives the scoring listeners so
/// probes see the drain).
pub async fn serve(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = state.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
