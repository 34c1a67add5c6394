//! The body sent to a pod: received whole before the request took its slot (up to the request
//! buffer, `limits.request_buffer_bytes`), or, beyond it, the received part followed by the
//! rest streamed from the client frame by frame, with the body limit and the body timeout
//! enforced as it streams. A mirrored request keeps a capped copy for the mirror.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::frames::Frames;

/// Errors while streaming a request body.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The body grew past the configured maximum.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// No part of the body arrived for the body timeout.
    #[error("no part of the request body arrived for {0:?}")]
    Timeout(Duration),
    /// Reading the client's body failed (reset, malformed chunking).
    #[error("reading the request body failed: {0}")]
    Client(#[from] hyper::Error),
}

/// A copy of a request body for a mirror, kept while the original streams.
pub struct MirrorTee {
    frames: Frames,
    cap: u64,
    done: Option<oneshot::Sender<Bytes>>,
}

impl MirrorTee {
    /// A tee that keeps at most `cap` bytes and delivers them to `done` when the body ends.
    /// A body longer than `cap` is not mirrored: `done` is dropped.
    fn new(cap: u64, done: oneshot::Sender<Bytes>) -> Self {
        MirrorTee {
            frames: Frames::default(),
            cap,
            done: Some(done),
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.frames.bytes() + data.len() as u64 > self.cap {
            self.done = None;
            self.frames = Frames::default();
        } else {
            self.frames.push(Frame::data(data.clone()));
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.frames.to_bytes());
        }
    }
}

/// The rest of a body, streamed from the client.
struct Streaming {
    inner: Incoming,
    limit: u64,
    seen: u64,
    tee: Option<MirrorTee>,
    idle_timeout: Duration,
    /// Armed while the client is waited for.
    idle: Option<Pin<Box<Sleep>>>,
}

/// The body sent to a pod.
pub struct RequestBody {
    /// Received before the slot was taken (all of it, or the first part).
    received: Frames,
    /// The rest, when the body was larger than the request buffer.
    rest: Option<Box<Streaming>>,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("received", &self.received.bytes())
            .field("streaming", &self.rest.is_some())
            .finish()
    }
}

impl RequestBody {
    /// A body received whole.
    pub fn whole(received: Frames) -> Self {
        RequestBody {
            received,
            rest: None,
        }
    }

    /// The whole body as one buffer, when it was received whole before admission (no copy
    /// when it came in one frame); `None` when part of it is still to be streamed.
    pub fn whole_bytes(&self) -> Option<Bytes> {
        self.rest.is_none().then(|| self.received.to_bytes())
    }

    /// The whole body as one buffer, like [`Self::whole_bytes`], when it is at most `max` bytes.
    pub fn whole_up_to(&self, max: u64) -> Option<Bytes> {
        (self.rest.is_none() && self.received.bytes() <= max).then(|| self.received.to_bytes())
    }

    /// A body already in memory (mirrored requests, tests).
    pub fn full(bytes: Bytes) -> Self {
        let mut received = Frames::default();
        if !bytes.is_empty() {
            received.push(Frame::data(bytes));
        }
        Self::whole(received)
    }

    /// The `received` part of a body followed by the client's `rest`, streamed, failing once
    /// more than `limit` bytes have arrived in all, or when the client sends nothing for
    /// `idle_timeout` while it is waited for.
    pub fn streaming(received: Frames, rest: Incoming, limit: u64, idle_timeout: Duration) -> Self {
        let seen = received.bytes();
        RequestBody {
            received,
            rest: Some(Box::new(Streaming {
                inner: rest,
                limit,
                seen,
                tee: None,
                idle_timeout,
                idle: None,
            })),
        }
    }

    /// A copy of the body for a mirror, delivered when the body has been read to its end; never
    /// delivered when the body is larger than `cap` or breaks.
    pub fn copy_for_mirror(&mut self, cap: u64) -> oneshot::Receiver<Bytes> {
        let (done, copy) = oneshot::channel();
        let mut tee = MirrorTee::new(cap, done);
        let mut pending = Frames::default();
        while let Some(frame) = self.received.pop() {
            if let Some(data) = frame.data_ref() {
                tee.push(data);
            }
            pending.push(frame);
        }
        self.received = pending;
        match &mut self.rest {
            Some(rest) if !rest.inner.is_end_stream() => rest.tee = Some(tee),
            _ => tee.finish(),
        }
        copy
    }
}

impl Streaming {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let polled = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return self.poll_idle(cx),
            Poll::Ready(polled) => polled,
        };
        self.idle = None;
        Poll::Ready(match polled {
            None => {
                self.finish_tee();
                None
            }
            Some(Err(e)) => {
                self.tee = None;
                Some(Err(RequestBodyError::Client(e)))
            }
            Some(Ok(frame)) => self.data(frame),
        })
    }

    /// The client sent nothing: the body fails once it has been waited for the idle timeout.
    fn poll_idle(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let timeout = self.idle_timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match idle.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.tee = None;
                Poll::Ready(Some(Err(RequestBodyError::Timeout(timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn data(&mut self, frame: Frame<Bytes>) -> Option<Result<Frame<Bytes>, RequestBodyError>> {
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.limit {
                self.tee = None;
                return Some(Err(RequestBodyError::TooLarge { limit: self.limit }));
            }
            if let Some(tee) = &mut self.tee {
                tee.push(data);
            }
        }
        // A body of known length ends with its last data frame: the pod's connection stops
        // polling there and never sees `None`, so the copy is complete now.
        if self.inner.is_end_stream() {
            self.finish_tee();
        }
        Some(Ok(frame))
    }

    fn finish_tee(&mut self) {
        if let Some(tee) = &mut self.tee {
            tee.finish();
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
        let this = self.get_mut();
        if let Some(frame) = this.received.pop() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut this.rest {
            Some(rest) => rest.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.received.is_empty() && self.rest.as_ref().is_none_or(|r| r.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let received = self.received.bytes();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(received);
        };
        let left = rest.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(left.lower() + received);
        if let Some(upper) = left.upper() {
            hint.set_upper(upper + received);
        }
        hint
    }
}
