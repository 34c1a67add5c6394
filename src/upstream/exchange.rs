//! One exchange with a pod: the slot and the pod connection for one request, from the send to
//! an explicit end.
//!
//! An [`Exchange`] owns both for as long as the pod may be busy with the request. It ends in
//! one of three ways ([`Ending`]): the response was read to its end and the connection goes back
//! to the pod's pool; the exchange failed and the connection is closed; or the router gave up
//! (a timeout, the client went away, a mirror copy dropped) — an exchange dropped without an
//! end is abandoned. The slot is released when the exchange ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::body::RequestBody;
use super::connection::{self, PodConnection};
use super::pool::PodPool;
use crate::admission::{Pod, Slot};

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The pod's response ended cleanly: the connection can carry the next request.
    Returned,
    /// The exchange failed (nothing was sent, the pod reset, a body broke): the connection is
    /// closed.
    Discarded,
    /// The router gave up before the response ended: the connection is closed.
    Abandoned,
}

/// Why a request did not get response headers from a pod.
#[derive(Debug)]
pub enum SendError {
    /// Nothing reached the pod: the request is handed back for a retry elsewhere.
    NotSent {
        /// The untouched request.
        request: Box<Request<RequestBody>>,
        /// Why connecting failed.
        error: io::Error,
    },
    /// The request was (at least partly) sent and the exchange failed.
    Failed(hyper::Error),
}

/// The slot and the pod connection of one request.
pub struct Exchange {
    slot: Option<Slot>,
    pool: Arc<PodPool>,
    connection: Option<PodConnection>,
}

impl Exchange {
    pub(super) fn new(slot: Slot, pool: Arc<PodPool>) -> Self {
        Exchange {
            slot: Some(slot),
            pool,
            connection: None,
        }
    }

    /// The pod this exchange is with.
    pub fn pod(&self) -> &Arc<Pod> {
        self.slot().pod()
    }

    /// The pod's `ip:port`, for a request that names no host.
    pub fn authority(&self) -> &HeaderValue {
        self.pool.authority()
    }

    fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("an exchange holds its slot until it ends")
    }

    /// Sends `request` on a pooled connection to the pod, or a new one, and waits for the
    /// response head. A pooled connection that turns out to be closed is skipped without losing
    /// the request; only a failure to connect at all is [`SendError::NotSent`].
    pub async fn send(
        &mut self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let timeouts = self.pool.timeouts();
        while let Some(mut connection) = self.pool.take(timeouts.idle) {
            if connection.ready().await.is_err() {
                continue;
            }
            match connection.try_send_request(request).await {
                Ok(response) => {
                    self.connection = Some(connection);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let address = self.pool.address();
        let mut connection = match connection::connect(address, timeouts.connect).await {
            Ok(connection) => connection,
            Err(error) => {
                return Err(SendError::NotSent {
                    request: Box::new(request),
                    error,
                })
            }
        };
        match connection.try_send_request(request).await {
            Ok(response) => {
                self.connection = Some(connection);
                Ok(response)
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => Err(SendError::NotSent {
                    request: Box::new(unsent),
                    error: io::Error::new(io::ErrorKind::ConnectionAborted, e.into_error()),
                }),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }

    /// The response with its body streamed from the pod; the body ends the exchange.
    pub fn respond(self, head: Response<Incoming>) -> Response<PodBody> {
        head.map(|inner| PodBody::new(inner, self))
    }

    /// Ends the exchange: the connection goes back to the pod's pool when `ending` is
    /// [`Ending::Returned`], and the slot is released.
    pub fn end(mut self, ending: Ending) {
        self.finish(ending);
    }

    fn finish(&mut self, ending: Ending) {
        let connection = self.connection.take();
        if let (Ending::Returned, Some(connection)) = (ending, connection) {
            self.pool.put(connection);
        }
        self.slot = None;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.slot.is_some() {
            self.finish(Ending::Abandoned);
        }
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("slot", &self.slot)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

/// The pod's response body, streamed frame by frame; it ends its exchange when the body ends
/// (returned), fails (discarded) or is dropped before the end (abandoned).
pub struct PodBody {
    inner: Incoming,
    exchange: Option<Exchange>,
}

impl PodBody {
    fn new(inner: Incoming, exchange: Exchange) -> Self {
        let mut body = PodBody {
            inner,
            exchange: Some(exchange),
        };
        if body.inner.is_end_stream() {
            body.end(Ending::Returned);
        }
        body
    }

    fn end(&mut self, ending: Ending) {
        if let Some(exchange) = self.exchange.take() {
            exchange.end(ending);
        }
    }

    /// Ends the exchange now if the body has not ended: the router gives up on the rest.
    pub fn abandon(&mut self) {
        self.end(Ending::Abandoned);
    }

    /// Whether the body has ended, and with it the exchange.
    pub fn is_done(&self) -> bool {
        self.exchange.is_none()
    }
}

impl Body for PodBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.is_done() {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(None) => self.end(Ending::Returned),
            Poll::Ready(Some(Ok(_))) => {
                if self.inner.is_end_stream() {
                    self.end(Ending::Returned);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(Ending::Discarded),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.is_done() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for PodBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBody")
            .field("done", &self.is_done())
            .finish()
    }
}
