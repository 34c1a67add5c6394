//! The request path as explicit phases, each a function in its own module with a typed result,
//! run in order by [`Proxy::handle`]:
//!
//! | phase | module | result |
//! |---|---|---|
//! | route | [`route`] | [`route::Routed`]: the deployment (one snapshot load, auth, the choice), the mirror, the pod's path |
//! | receive | [`receive`] | [`receive::Received`]: the request body, whole up to the request buffer, before any slot is taken |
//! | admit | [`admit`] | [`admit::Admitted`]: a slot on a pod, and the time waited for it |
//! | forward | [`forward`] | [`forward::Forwarded`]: the pod's response head on the request's exchange |
//! | respond | [`respond`] | [`respond::Responded`]: the response as the client gets it |
//! | record | [`record`] | the metrics now, the access-log line when the body ends |
//!
//! Every early exit is a [`Rejection`]: a [`RouterError`] and what to count it against; it is
//! recorded and rendered in one place ([`Proxy::handle`], [`error`]). The request path and the
//! module map are described in `docs/ARCHITECTURE.md`.

pub mod admit;
pub mod body;
pub mod context;
pub mod error;
pub mod finish;
pub mod forward;
pub mod headers;
pub mod mirror;
pub mod receive;
pub mod record;
pub mod respond;
pub mod route;
pub mod target;

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use crate::admission::Admitter;
use crate::table::{Deployment, TableHandle};
use crate::telemetry::access::RequestLine;
use crate::telemetry::{AccessLog, Metrics, StatusCounters};
use crate::trace::export::Exporter;
use crate::upstream::Upstream;

pub use body::ResponseBody;
pub use context::{ClientConn, Context, ProxySettings};
pub use error::{Attempt, Rejection, RouterError};
use forward::Forwarder;
use headers::{RequestIds, Tracing};
pub use receive::ClientBody;

/// The router's request handler.
pub struct Proxy {
    table: TableHandle,
    admitter: Admitter,
    forwarder: Forwarder,
    settings: ProxySettings,
    access_log: AccessLog,
    unknown: StatusCounters,
    export: Option<Arc<Exporter>>,
}

impl Proxy {
    /// A proxy reading routes from `table` and admitting through `admitter`.
    pub fn new(
        table: TableHandle,
        admitter: Admitter,
        upstream: Upstream,
        settings: ProxySettings,
        (access_log, export): (AccessLog, Option<Arc<Exporter>>),
        metrics: &Metrics,
    ) -> Self {
        Proxy {
            table,
            forwarder: Forwarder::new(upstream, admitter.clone(), &settings),
            admitter,
            settings,
            access_log,
            unknown: StatusCounters::new(metrics, "", ""),
            export,
        }
    }

    /// The proxy's settings.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Answers one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<ClientBody>,
        conn: ClientConn,
    ) -> Response<ResponseBody> {
        let cx = Context {
            started: Instant::now(),
            ids: RequestIds::read(request.headers(), self.tracing()),
            conn,
            line: RequestLine::of(&request, request.body().declared_length()),
        };
        match self.serve(request, &cx).await {
            Ok(response) => response,
            Err(rejection) => {
                let log = (&self.access_log, self.export.as_ref());
                record::rejected(log, &self.unknown, &rejection, &cx);
                error::error_response(rejection.error, &cx.ids, rejection.deployment_name())
            }
        }
    }

    /// How this request's trace context is treated: exported or not, and whether a new trace
    /// is sampled.
    fn tracing(&self) -> Tracing {
        match &self.export {
            Some(export) => Tracing {
                exporting: true,
                sample_new: export.sample_new(),
            },
            None => Tracing::default(),
        }
    }

    /// The phases, in order. A routed request whose client goes away before the answer is
    /// counted and logged as 499 ([`record::Pending`]).
    async fn serve(
        &self,
        request: Request<ClientBody>,
        cx: &Context,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let route::Routed { deployment, target } =
            route::route(&self.table, &self.settings, &request)?;
        let log = (&self.access_log, self.export.as_ref());
        let pending = record::Pending::new(log, &self.unknown, &deployment, cx);
        let answered = self.answer(&deployment, target, request, cx).await;
        pending.settled();
        answered
    }

    /// The phases after routing: receive, admit, forward, respond, record.
    async fn answer(
        &self,
        deployment: &Arc<Deployment>,
        target: route::UpstreamTarget,
        request: Request<ClientBody>,
        cx: &Context,
    ) -> Result<Response<ResponseBody>, Rejection> {
        let rejected = |error| Rejection::at_deployment(error, deployment);
        let (parts, body) = request.into_parts();
        let received = receive::receive(body, cx.started, &self.settings)
            .await
            .map_err(rejected)?;
        let prefix = admit::key(deployment, &parts.headers, &received.body);
        let request = Request::from_parts(parts, received.body);
        let since = received.waited_until.unwrap_or(cx.started);
        let admitted = admit::admit(&self.admitter, deployment, since, &prefix)
            .await
            .map_err(|e| rejected(e).after(Attempt::queued(since.elapsed())))?;
        let (pod, queue_wait) = (admitted.slot.pod().address(), admitted.queue_wait);
        let forwarded = self
            .forwarder
            .forward(deployment, target, admitted.slot, request, cx)
            .await
            .map_err(|e| {
                let upstream = since.elapsed().saturating_sub(queue_wait);
                rejected(e).after(Attempt::sent(pod, queue_wait, upstream))
            })?;
        let responded = respond::respond(forwarded, deployment, &cx.ids);
        Ok(record::routed(
            (&self.access_log, self.export.as_ref()),
            responded,
            deployment,
            queue_wait,
            cx,
        ))
    }
}
