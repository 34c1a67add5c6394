//! The request path as explicit phases, each a function in its own module with a typed result,
//! run in order by [`Proxy::handle`]:
//!
//! | phase | module | result |
//! |---|---|---|
//! | route | [`route`] | [`route::Routed`]: the deployment (one snapshot load, auth, the choice), the mirror, the pod's path |
//! | receive | [`receive`] | [`receive::Received`]: the request body, whole up to the request buffer, before any slot is taken |
//! | admit | [`admit`] | [`admit::Admitted`]: a slot on a pod, and the time waited for it |
//! | forward | [`forward`] | [`forward::Forwarded`]: the pod's response head on the request's exchange |
//! | respond | [`respond`] | [`respond::Responded`]: the pod's head and body, and the fields the router sets |
//! | record | [`record`] | the metrics now, the access-log line when the body ends; the [`Answer`] |
//!
//! Every early exit is a [`Rejection`]: a [`RouterError`] and what to count it against; it is
//! recorded and rendered in one place ([`Proxy::handle`], [`error`]). The request path and the
//! module map are described in `docs/ARCHITECTURE.md`.

pub mod admit;
pub mod answer;
pub mod body;
pub mod context;
pub mod error;
pub mod finish;
pub mod forward;
pub mod headers;
pub mod mirror;
mod pod_head;
pub mod receive;
pub mod record;
pub mod request;
pub mod respond;
pub mod route;
pub mod target;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admitter;
use crate::table::TableHandle;
use crate::telemetry::{AccessLog, Metrics, StatusCounters};
use crate::trace::export::Exporter;
use crate::upstream::Upstream;

pub use answer::Answer;
pub use body::ResponseBody;
pub use context::{ClientConn, Context, ProxySettings};
pub use error::{Attempt, Rejection, RouterError};
use forward::Forwarder;
use headers::{RequestIds, Tracing};
pub use receive::ClientBody;
pub use request::ClientRequest;

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

    /// Answers one request; never fails (errors become responses). The answer is the pod's
    /// head as bytes or the router's response ([`Answer`]). The request is read and
    /// routed when this is called; the returned future runs the phases after routing, one
    /// state machine that holds the request once (`docs/ARCHITECTURE.md`, "The request's
    /// future").
    pub fn handle(
        self: Arc<Self>,
        request: ClientRequest,
        conn: ClientConn,
    ) -> impl Future<Output = Answer> + Send + 'static {
        let mut cx = Context {
            started: Instant::now(),
            ids: RequestIds::read(request.id_fields(), self.tracing()),
            conn,
            line: request.line(request.body().declared_length()),
        };
        let routed = route::route(&self.table, &self.settings, &request);
        let (parts, body) = request.into_parts();
        async move {
            let route::Routed { deployment, target } = match routed {
                Ok(routed) => routed,
                Err(rejection) => return self.render_rejection(rejection, &cx),
            };
            let log = (&self.access_log, self.export.as_ref());
            // A routed request whose client goes away before the answer is counted and logged
            // as 499 when this is dropped unsettled.
            let pending = record::Pending::new(log, &self.unknown, &deployment, &cx);
            let rejected = |error, pending: record::Pending<'_>| {
                pending.settled();
                Rejection::at_deployment(error, &deployment)
            };
            let received = match receive::receive(body, cx.started, &self.settings).await {
                Ok(received) => received,
                Err(e) => return self.render_rejection(rejected(e, pending), &cx),
            };
            let prefix = admit::key(&deployment, &parts, &received.body);
            let since = received.waited_until.unwrap_or(cx.started);
            let admitted = match admit::admit(&self.admitter, &deployment, since, &prefix).await {
                Ok(admitted) => admitted,
                Err(e) => {
                    let rejection = rejected(e, pending).after(Attempt::queued(since.elapsed()));
                    return self.render_rejection(rejection, &cx);
                }
            };
            let (pod, queue_wait) = (admitted.slot.pod().address(), admitted.queue_wait);
            let request = parts.with_body(received.body);
            let (slot, at) = (admitted.slot, admitted.at);
            let forwarding = (self.forwarder).forward(&deployment, target, slot, request, &cx, at);
            let forwarded = match forwarding.await {
                Ok(forwarded) => forwarded,
                Err(e) => {
                    let upstream = since.elapsed().saturating_sub(queue_wait);
                    let rejection =
                        rejected(e, pending).after(Attempt::sent(pod, queue_wait, upstream));
                    return self.render_rejection(rejection, &cx);
                }
            };
            pending.settled();
            let responded = respond::respond(forwarded, &deployment, &mut cx.ids);
            record::routed(log, responded, &deployment, queue_wait, &cx)
        }
    }

    /// Records `rejection` and renders it.
    fn render_rejection(&self, rejection: Rejection, cx: &Context) -> Answer {
        let log = (&self.access_log, self.export.as_ref());
        record::rejected(log, &self.unknown, &rejection, cx);
        let response = error::error_response(rejection.error, &cx.ids, rejection.deployment_name());
        Answer::Router(Box::new(response))
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
}
