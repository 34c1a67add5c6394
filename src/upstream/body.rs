//! The body sent to a pod: the client's body streamed frame by frame (never buffered), with
//! the body limit enforced as it streams and, for mirrored requests, a capped copy kept; or a
//! body already in memory (mirror copies).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

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
