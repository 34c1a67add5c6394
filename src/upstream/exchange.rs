//! One exchange with a pod: the slot and the pod connection of one request, from the send to
//! the end of the pod's response.
//!
//! An [`Exchange`] owns the slot, the connection and whatever of the request is in progress on
//! it — the response head it waits for, then the response body — for as long as the pod may be
//! busy with the request, so the slot lives exactly as long as the pod's work. It ends in one of
//! three ways ([`Ending`]):
//!
//! * returned: the pod's response was read to its end (into the client's response, or a buffer
//!   — see `upstream::readahead`); the connection goes back to the pod's pool;
//! * discarded: nothing is in progress (nothing was sent, or the pod broke the connection); the
//!   connection is closed and the slot released at once;
//! * abandoned: the router gave up while the pod was busy (a timeout, the client went away, an
//!   HTTP/2 reset, a mirror copy dropped) — an exchange dropped with its request in progress.
//!   Its slot stays taken until the pod is done, within a bound (`upstream::abandon`), and its
//!   connection carries nothing else meanwhile.
//!
//! What the pod showed — it answered, or its connection failed — is reported to admission's
//! outlier detection ([`crate::admission::outlier`]).
//!
//! Two of its methods live with the modules that carry them out, so neither imports back into
//! this one: its `Drop` (abandon or discard) in `upstream::abandon`, and `Exchange::respond`
//! (the pod's body read ahead) in `upstream::readahead`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::body::RequestBody;
use super::codec::{Outgoing, PodHead, PodRequest};
use super::connection::{self, PodConnection, PodError};
use super::pool::PodPool;
use crate::admission::{Pod, Slot};
use crate::http1::body::BodyDecoder;
use crate::telemetry::DeploymentMetrics;

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The pod's response ended cleanly: the connection can carry the next request.
    Returned,
    /// Nothing is in progress on the connection (nothing was sent, or the pod broke it): it is
    /// closed and the slot released.
    Discarded,
}

/// Why a request did not get response headers from a pod.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the pod: the request is handed back for a retry elsewhere.
    NotSent {
        /// The untouched request.
        request: Box<PodRequest>,
        /// Why connecting failed.
        error: io::Error,
    },
    /// The request was (at least partly) sent and the exchange failed.
    Failed(PodError),
}

/// What an exchange needs to know of its deployment and of the router.
#[derive(Clone)]
pub struct Terms {
    /// The deployment's `request_timeout_ms`; it also bounds how long an abandoned request
    /// keeps its slot (`upstream::abandon`).
    pub request_timeout: Duration,
    /// Where abandoned requests and ejected pods are counted.
    pub metrics: Arc<DeploymentMetrics>,
    /// How much of the pod's response is read ahead of the client (`upstream::readahead`).
    pub response_buffer: u64,
}

impl std::fmt::Debug for Terms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terms")
            .field("request_timeout", &self.request_timeout)
            .field("response_buffer", &self.response_buffer)
            .finish_non_exhaustive()
    }
}

/// What of the request is in progress on the connection.
pub(super) enum Progress {
    /// Nothing: not sent yet, or done.
    Idle,
    /// The request is being written: the pod may have part of it.
    Sending,
    /// Sent (or the pod answered before all of it was): waiting for the response head to a
    /// request whose method was `HEAD` when `to_head`.
    Waiting {
        /// The request's method was `HEAD` (its response has no body).
        to_head: bool,
    },
    /// The head arrived; the body is being read with this decoder.
    Reading(BodyDecoder),
    /// The router closed the connection while the request was being sent (its body broke): the
    /// pod may have started on it.
    Cut,
}

/// The slot and the pod connection of one request.
pub struct Exchange {
    pub(super) slot: Option<Slot>,
    pub(super) pool: Arc<PodPool>,
    pub(super) terms: Terms,
    pub(super) connection: Option<Box<PodConnection>>,
    pub(super) progress: Progress,
    /// When the request was handed to the connection that answered (or failed) it: when the
    /// pooled connection taken for it before sending was taken ([`Exchange::request_timer`]).
    pub(super) sent_at: Option<Instant>,
}

impl Exchange {
    pub(super) fn new(slot: Slot, pool: Arc<PodPool>, terms: Terms) -> Self {
        Exchange {
            slot: Some(slot),
            pool,
            terms,
            connection: None,
            progress: Progress::Idle,
            sent_at: None,
        }
    }

    /// A timer set to `deadline`, for the request this exchange is about to send (at `now`):
    /// the timer a pooled connection kept from its last request ([`Exchange::keep_timer`]) when
    /// one is idle in the pool (taken now, and sent on first), else a new one. Setting a kept
    /// timer to a later deadline leaves it where it is in the runtime's timer wheel.
    pub fn request_timer(&mut self, now: Instant, deadline: Instant) -> Pin<Box<Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.connection.is_none() && self.sent_at.is_none() {
            self.connection = self.pool.take(self.pool.timeouts().idle, now);
            self.sent_at = self.connection.as_ref().map(|_| now);
        }
        match self.connection.as_mut().and_then(|c| c.take_timer()) {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer`, done with, for the next request on the exchange's connection (it goes
    /// back to the pool with the connection); dropped when the exchange holds none.
    pub fn keep_timer(&mut self, timer: Pin<Box<Sleep>>) {
        if let Some(connection) = self.connection.as_mut() {
            connection.keep_timer(timer);
        }
    }

    /// The pod this exchange is with, while the exchange holds its slot.
    pub fn pod(&self) -> &Arc<Pod> {
        self.slot().pod()
    }

    /// The pod's address (also once the exchange has ended).
    pub fn address(&self) -> std::net::SocketAddr {
        self.pool.address()
    }

    /// The pod's `ip:port`, for a request that names no host.
    pub fn authority(&self) -> &HeaderValue {
        self.pool.authority()
    }

    /// When the request was sent (handed to the connection that answered it).
    pub fn sent_at(&self) -> Option<Instant> {
        self.sent_at
    }

    fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("an exchange holds its slot until it ends")
    }

    /// Whether the exchange has ended (its slot released).
    pub fn is_done(&self) -> bool {
        self.slot.is_none()
    }

    /// Sends `request` on a pooled connection to the pod, or a new one, and waits for the
    /// response head; the body stays in the exchange ([`Exchange::respond`]). A pooled
    /// connection that turns out to be closed is skipped without losing the request; only a
    /// failure to connect at all (or a new connection that fails at once) is
    /// [`SendError::NotSent`]. If this future is dropped while the pod has the request, the
    /// exchange keeps waiting for it when dropped in turn (abandoned). The head is written into
    /// a buffer when this is called; the returned future holds the request's parts once
    /// (`docs/ARCHITECTURE.md`, "The request's future").
    pub fn send(
        &mut self,
        request: PodRequest,
    ) -> impl Future<Output = Result<PodHead, SendError>> + Send + '_ {
        let PodRequest { mut head, mut body } = request;
        if let Outgoing::Body(_) = head.outgoing {
            if let Some(whole) = connection::coalesced_body(&body) {
                // Sent with the head; a retry sends the same bytes.
                head.bytes.extend_from_slice(&whole);
                head.outgoing = Outgoing::Nothing;
                body = RequestBody::full(Bytes::new());
            }
        }
        async move {
            if let Err(error) = self.write_head(&head.bytes).await {
                return Err(self.not_sent(Box::new(PodRequest::new(head, body)), error));
            }
            let (to_head, outgoing) = (head.to_head, head.outgoing);
            drop(head);
            if let Outgoing::Body(encoder) = outgoing {
                let connection = self
                    .connection
                    .as_mut()
                    .expect("the head was written on it");
                if let Err(error) = connection.send_body(&mut body, encoder).await {
                    return Err(self.failed(error));
                }
            }
            drop(body);
            self.await_head(to_head).await.map_err(|e| self.failed(e))
        }
    }

    /// Writes `head` on a live pooled connection (the one taken for the exchange first, if any),
    /// or a new one, which the exchange then keeps. A pooled connection whose write fails (the
    /// pod closed it meanwhile) is skipped.
    async fn write_head(&mut self, head: &[u8]) -> io::Result<()> {
        let timeouts = self.pool.timeouts();
        loop {
            // Taken for the exchange before sending (when it was, `sent_at`), or now.
            let pooled = match self.connection.take() {
                Some(connection) => Some(connection),
                None => {
                    let now = Instant::now();
                    let pooled = self.pool.take(timeouts.idle, now);
                    self.sent_at = pooled.as_ref().map(|_| now);
                    pooled
                }
            };
            let (mut connection, pooled) = match pooled {
                Some(connection) => (connection, true),
                None => {
                    let address = self.pool.address();
                    // Boxed: a request sent on a pooled connection needs none of this state.
                    let connecting = Box::pin(connection::connect(address, timeouts.connect));
                    let connection = connecting.await?;
                    self.sent_at = Some(Instant::now());
                    (connection, false)
                }
            };
            self.progress = Progress::Sending;
            let written = connection.write_all(head).await;
            match written {
                Ok(()) => {
                    self.connection = Some(connection);
                    return Ok(());
                }
                Err(_) if pooled => self.progress = Progress::Idle,
                Err(error) => {
                    self.progress = Progress::Idle;
                    return Err(error);
                }
            }
        }
    }

    /// Waits for the response head on the exchange's connection; a body to read stays in the
    /// exchange, an empty one ends it.
    async fn await_head(&mut self, to_head: bool) -> Result<PodHead, PodError> {
        self.progress = Progress::Waiting { to_head };
        let connection = self
            .connection
            .as_mut()
            .expect("the request was sent on it");
        let (head, bytes, decoder) = connection.response_head(to_head).await?;
        self.report(true);
        if decoder.is_done() {
            self.finish(Ending::Returned);
        } else {
            self.progress = Progress::Reading(decoder);
        }
        Ok(PodHead { head, bytes })
    }

    /// Connecting failed: nothing reached the pod.
    fn not_sent(&mut self, request: Box<PodRequest>, error: io::Error) -> SendError {
        self.report(false);
        SendError::NotSent { request, error }
    }

    /// The request was sent and the exchange failed: the pod's doing (counted against it; the
    /// connection is closed), or the request body's (the router closed the connection: the
    /// pod may be working on it).
    fn failed(&mut self, error: PodError) -> SendError {
        self.connection = None;
        if let PodError::Body(_) = error {
            self.progress = Progress::Cut;
        } else {
            self.progress = Progress::Idle;
            self.report(false);
        }
        SendError::Failed(error)
    }

    /// The next frame of the pod's response body; the exchange ends with the body (returned),
    /// or when the pod breaks it (discarded).
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PodError>>> {
        let Progress::Reading(decoder) = &mut self.progress else {
            return Poll::Ready(None);
        };
        let connection = self
            .connection
            .as_mut()
            .expect("a body is read on its connection");
        let polled = ready!(connection.poll_frame(decoder, cx));
        let ended = decoder.is_done();
        Poll::Ready(match polled {
            Ok(Some(frame)) => {
                if ended {
                    self.finish(Ending::Returned);
                }
                Some(Ok(frame))
            }
            Ok(None) => {
                self.finish(Ending::Returned);
                None
            }
            Err(error) => {
                self.report(false);
                self.finish(Ending::Discarded);
                Some(Err(error))
            }
        })
    }

    /// What is left of the pod's response body.
    pub(super) fn body_size_hint(&self) -> SizeHint {
        match &self.progress {
            Progress::Reading(BodyDecoder::Length(left)) => SizeHint::with_exact(*left),
            Progress::Reading(_) => SizeHint::new(),
            _ => SizeHint::with_exact(0),
        }
    }

    /// Ends the exchange now: the connection goes back to the pod's pool when `ending` is
    /// [`Ending::Returned`]; the slot is released.
    pub(super) fn finish(&mut self, ending: Ending) {
        self.progress = Progress::Idle;
        let connection = self.connection.take();
        if let (Ending::Returned, Some(connection)) = (ending, connection) {
            self.pool.put(connection);
        }
        self.slot = None;
    }

    /// Tells outlier detection what the pod showed; logs and counts an ejection it leads to.
    fn report(&self, ok: bool) {
        let Some(ejection) = self.slot().report(ok) else {
            return;
        };
        let metrics = &self.terms.metrics;
        metrics.ejection();
        tracing::warn!(
            endpoint = metrics.endpoint(),
            deployment = metrics.deployment(),
            pod = %self.pod().address(),
            failures = ejection.failures,
            ejection = ejection.repeat,
            out_for_ms = ejection.duration.as_millis() as u64,
            "pod ejected from the rotation: its connections failed {} times in a row",
            ejection.failures,
        );
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = match self.progress {
            Progress::Idle => "idle",
            Progress::Sending => "sending",
            Progress::Waiting { .. } => "waiting for the head",
            Progress::Reading(_) => "reading the body",
            Progress::Cut => "cut",
        };
        f.debug_struct("Exchange")
            .field("slot", &self.slot)
            .field("progress", &progress)
            .finish()
    }
}
