//! Body types of the proxy: both directions stream frame by frame and never buffer.
//!
//! [`RequestBody`] carries the client's body to the pod, enforcing the body limit while it
//! streams and, for mirrored requests, keeping a capped copy. [`ResponseBody`] carries the pod's
//! body to the client and holds the admission [`Slot`] and the pooled connection until the body
//! ends (slot freed, connection back to the pool) or the client goes away (slot freed, connection
//! dropped).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::balance::Slot;
use crate::telemetry::RequestRecord;
use crate::upstream::PooledSender;

/// Errors while streaming a request body.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The body grew past the configured maximum.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Reading the client's body failed (reset, malformed chunking, timeout).
    #[error("reading the request body failed: {0}")]
    Client(#[from] hyper::Error),
}

/// A copy of a request body for a mirror, kept while the original streams.
pub struct MirrorTee {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    done: Option<oneshot::Sender<Bytes>>,
}

impl MirrorTee {
    /// A tee that keeps at most `cap` bytes and delivers them to `done` when the body ends.
    /// A body longer than `cap` is not mirrored: `done` is dropped.
    pub fn new(cap: usize, done: oneshot::Sender<Bytes>) -> Self {
        MirrorTee {
            chunks: Vec::new(),
            len: 0,
            cap,
            done: Some(done),
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        self.len += data.len();
        if self.len > self.cap {
            self.done = None;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(data.clone());
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let body = match self.chunks.len() {
                0 => Bytes::new(),
                1 => self.chunks.pop().unwrap_or_default(),
                _ => {
                    let mut all = Vec::with_capacity(self.len);
                    for chunk in self.chunks.drain(..) {
                        all.extend_from_slice(&chunk);
                    }
                    Bytes::from(all)
                }
            };
            let _ = done.send(body);
        }
    }
}

enum RequestKind {
    Streaming {
        inner: Incoming,
        limit: u64,
        seen: u64,
        tee: Option<MirrorTee>,
    },
    Full(Option<Bytes>),
}

/// The body sent to a pod.
pub struct RequestBody {
    kind: RequestKind,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Streaming { limit, seen, .. } => f
                .debug_struct("RequestBody::Streaming")
                .field("limit", limit)
                .field("seen", seen)
                .finish(),
            RequestKind::Full(bytes) => f.debug_tuple("RequestBody::Full").field(bytes).finish(),
        }
    }
}

impl RequestBody {
    /// The client's body, streamed, failing once more than `limit` bytes have arrived.
    pub fn streaming(inner: Incoming, limit: u64, mut tee: Option<MirrorTee>) -> Self {
        // An empty body is never polled: its (empty) copy is complete now.
        if inner.is_end_stream() {
            if let Some(tee) = &mut tee {
                tee.finish();
            }
        }
        RequestBody {
            kind: RequestKind::Streaming {
                inner,
                limit,
                seen: 0,
                tee,
            },
        }
    }

    /// A body already in memory (mirrored requests, tests).
    pub fn full(bytes: Bytes) -> Self {
        RequestBody {
            kind: RequestKind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            RequestKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestKind::Streaming {
                inner,
                limit,
                seen,
                tee,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    if let Some(tee) = tee {
                        tee.finish();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    *tee = None;
                    Poll::Ready(Some(Err(RequestBodyError::Client(e))))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if *seen > *limit {
                            *tee = None;
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                                limit: *limit,
                            })));
                        }
                        if let Some(tee) = tee {
                            tee.push(data);
                        }
                    }
                    // A body of known length ends with its last data frame: the client
                    // connection stops polling there and never sees `None`, so the copy is
                    // complete now.
                    if inner.is_end_stream() {
                        if let Some(tee) = tee {
                            tee.finish();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Full(bytes) => bytes.is_none(),
            RequestKind::Streaming { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestKind::Streaming { inner, .. } => inner.size_hint(),
        }
    }
}

/// What a streaming response holds until its body ends.
struct Streaming {
    inner: Incoming,
    slot: Option<Slot>,
    sender: Option<PooledSender>,
    record: Option<Box<RequestRecord>>,
    bytes: u64,
    done: bool,
}

impl Streaming {
    /// The body ended cleanly: the connection can be reused and the slot freed.
    fn finish(&mut self) {
        self.done = true;
        if let (Some(sender), Some(slot)) = (self.sender.take(), self.slot.as_ref()) {
            slot.pod().idle.put(sender);
        }
        self.slot = None;
        if let Some(record) = self.record.take() {
            record.finish(self.bytes, true);
        }
    }

    /// The pod's body failed: nothing is reused.
    fn fail(&mut self) {
        self.done = true;
        self.sender = None;
        self.slot = None;
        if let Some(record) = self.record.take() {
            record.finish(self.bytes, false);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // The client went away before the end: never reuse the connection.
        if !self.done {
            self.fail();
        }
    }
}

enum ResponseKind {
    Streaming(Streaming),
    Full(Option<Bytes>),
}

/// The body sent to the client.
pub struct ResponseBody {
    kind: ResponseKind,
}

impl ResponseBody {
    /// The pod's body, streamed; `slot` and `sender` are released when it ends or is dropped.
    pub fn streaming(
        inner: Incoming,
        slot: Slot,
        sender: PooledSender,
        record: Option<Box<RequestRecord>>,
    ) -> Self {
        let mut streaming = Streaming {
            inner,
            slot: Some(slot),
            sender: Some(sender),
            record,
            bytes: 0,
            done: false,
        };
        if streaming.inner.is_end_stream() {
            streaming.finish();
        }
        ResponseBody {
            kind: ResponseKind::Streaming(streaming),
        }
    }

    /// A body the router wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            kind: ResponseKind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody {
            kind: ResponseKind::Full(None),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseKind::Streaming(s) => {
                if s.done {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut s.inner).poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        s.finish();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            s.bytes += data.len() as u64;
                        }
                        if s.inner.is_end_stream() {
                            s.finish();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        s.fail();
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full(bytes) => bytes.is_none(),
            ResponseKind::Streaming(s) => s.done || s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseKind::Streaming(s) => s.inner.size_hint(),
        }
    }
}
