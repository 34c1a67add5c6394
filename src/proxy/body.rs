//! The body sent to the client: the pod's response (read ahead of the client up to the response
//! buffer, `upstream::readahead`), or a body the router wrote itself. The pod's body writes the
//! request's access-log line when it ends, fails, or the client goes away.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::finish::Finish;
use crate::upstream::PodBody;

/// A response body from a pod, with what to log when it ends.
struct Streaming {
    inner: PodBody,
    record: Option<Finish>,
    bytes: u64,
}

impl Streaming {
    /// Records the body and writes its access-log line (once): `complete` says whether the body
    /// reached its end.
    fn log(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.finish(self.bytes, complete);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // The client went away before the end (a body still pumped from the pod stops with it:
        // its exchange is abandoned).
        self.log(false);
    }
}

enum Kind {
    Streaming(Streaming),
    Full(Option<Bytes>),
}

/// The body sent to the client.
pub struct ResponseBody {
    kind: Kind,
}

impl ResponseBody {
    /// The pod's body; `record` is finished (counted, logged) when it ends or is dropped.
    pub fn streaming(inner: PodBody, record: Option<Finish>) -> Self {
        let mut streaming = Streaming {
            inner,
            record,
            bytes: 0,
        };
        if streaming.inner.is_end_stream() {
            streaming.log(true);
        }
        ResponseBody {
            kind: Kind::Streaming(streaming),
        }
    }

    /// A body the router wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = crate::upstream::PodError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming(s) => {
                let polled = Pin::new(&mut s.inner).poll_frame(cx);
                match &polled {
                    Poll::Pending => {}
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            s.bytes += data.len() as u64;
                            if let Some(record) = &mut s.record {
                                record.chunk(data.len());
                            }
                        }
                        if s.inner.is_end_stream() {
                            s.log(true);
                        }
                    }
                    Poll::Ready(None) => s.log(true),
                    Poll::Ready(Some(Err(_))) => s.log(false),
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming(s) => s.inner.size_hint(),
        }
    }
}
