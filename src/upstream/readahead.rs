//! The pod's response read ahead of the client, so the pod is freed at its own speed.
//!
//! When the head arrives, what the pod has already sent of the body is taken at once; a
//! response that is then complete (the usual small answer, which arrives with its head) ends
//! the exchange there — the slot is released before the client is sent a byte — and its frames
//! go to the client as they are, never copied. Anything else is pumped by a task of its own
//! into a queue of at most the response buffer (`upstream.response_buffer_bytes`, default
//! 1 MiB): a response that fits ends the exchange when the pod has sent it, however slowly the
//! client reads; a larger or never-ending one (`text/event-stream`, chunked streams) flows at
//! the client's pace beyond the buffer, as it would without it. Frames are passed on as they
//! arrive, so streams are not delayed.
//!
//! If the client goes away before a pumped response has ended, the pump stops and drops the
//! exchange: it is abandoned mid-body (`upstream::abandon`).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use super::connection::PodError;
use super::exchange::Exchange;
use super::frames::Frames;

/// The pod's response body as the client reads it.
pub struct PodBody {
    kind: Kind,
    hint: SizeHint,
}

enum Kind {
    /// The whole body, read before the client got the head; the exchange has ended.
    Whole {
        frames: Frames,
        error: Option<PodError>,
    },
    /// The body as a pump task reads it from the pod.
    Pumped(Arc<Shared>),
}

/// Reads what the pod has already sent of `exchange`'s response body and, unless that is all
/// of it, starts pumping the rest.
pub(super) fn read_ahead(mut exchange: Exchange) -> PodBody {
    let bound = exchange.terms.response_buffer;
    let hint = exchange.body_size_hint();
    let mut frames = Frames::default();
    // Only what is ready now: nothing waits here, so the noop waker is never needed.
    let mut now = Context::from_waker(Waker::noop());
    while !exchange.is_done() && frames.bytes() <= bound {
        match exchange.poll_frame(&mut now) {
            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
            Poll::Ready(Some(Err(error))) => return PodBody::whole(frames, Some(error), hint),
            Poll::Ready(None) => break,
            Poll::Pending => return PodBody::pumped(exchange, frames, hint),
        }
    }
    if exchange.is_done() {
        PodBody::whole(frames, None, hint)
    } else {
        PodBody::pumped(exchange, frames, hint)
    }
}

impl PodBody {
    fn whole(frames: Frames, error: Option<PodError>, hint: SizeHint) -> Self {
        let hint = match error {
            None => SizeHint::with_exact(frames.bytes()),
            Some(_) => hint,
        };
        PodBody {
            kind: Kind::Whole { frames, error },
            hint,
        }
    }

    fn pumped(exchange: Exchange, frames: Frames, left: SizeHint) -> Self {
        let read = frames.bytes();
        let mut hint = SizeHint::new();
        hint.set_lower(left.lower() + read);
        if let Some(upper) = left.upper() {
            hint.set_upper(upper + read);
        }
        let shared = Arc::new(Shared {
            bound: exchange.terms.response_buffer,
            queue: Mutex::new(Queue {
                frames,
                end: End::Open,
                reader_gone: false,
                reader: None,
                pump: None,
            }),
        });
        tokio::spawn(pump(exchange, shared.clone()));
        PodBody {
            kind: Kind::Pumped(shared),
            hint,
        }
    }

    /// Whether the whole body was read before the client got the head (the exchange has ended).
    pub fn is_whole(&self) -> bool {
        matches!(self.kind, Kind::Whole { .. })
    }
}

impl Body for PodBody {
    type Data = Bytes;
    type Error = PodError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Whole { frames, error } => Poll::Ready(match frames.pop() {
                Some(frame) => Some(Ok(frame)),
                None => error.take().map(Err),
            }),
            Kind::Pumped(shared) => shared.poll_read(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole { frames, error } => frames.is_empty() && error.is_none(),
            Kind::Pumped(shared) => shared.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for PodBody {
    fn drop(&mut self) {
        if let Kind::Pumped(shared) = &self.kind {
            shared.reader_gone();
        }
    }
}

impl std::fmt::Debug for PodBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBody")
            .field("whole", &self.is_whole())
            .finish()
    }
}

/// How a pumped body ended.
enum End {
    /// The pod is still sending.
    Open,
    /// The pod's body ended.
    Complete,
    /// The pod broke it; the error is handed to the client once.
    Failed(Option<PodError>),
}

/// The queue between the pump and the client's body.
struct Queue {
    frames: Frames,
    end: End,
    reader_gone: bool,
    reader: Option<Waker>,
    /// Set while the pump waits (for room, or for the pod).
    pump: Option<Waker>,
}

struct Shared {
    bound: u64,
    queue: Mutex<Queue>,
}

impl Shared {
    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, PodError>>> {
        let mut queue = self.queue.lock();
        if let Some(frame) = queue.frames.pop() {
            if queue.frames.bytes() < self.bound {
                if let Some(pump) = queue.pump.take() {
                    pump.wake();
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut queue.end {
            End::Open => {
                set_waker(&mut queue.reader, cx);
                Poll::Pending
            }
            End::Complete => Poll::Ready(None),
            End::Failed(error) => Poll::Ready(error.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        let queue = self.queue.lock();
        queue.frames.is_empty() && matches!(queue.end, End::Complete)
    }

    fn reader_gone(&self) {
        let mut queue = self.queue.lock();
        queue.reader_gone = true;
        if let Some(pump) = queue.pump.take() {
            pump.wake();
        }
    }

    /// Whether the pump may read on: the reader is there and the queue has room. Registers the
    /// pump's waker either way, so a reader that leaves (or makes room) wakes it.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut queue = self.queue.lock();
        if queue.reader_gone {
            return Poll::Ready(false);
        }
        set_waker(&mut queue.pump, cx);
        if queue.frames.bytes() >= self.bound {
            return Poll::Pending;
        }
        Poll::Ready(true)
    }

    fn push(&self, frame: Frame<Bytes>) {
        let mut queue = self.queue.lock();
        queue.frames.push(frame);
        wake(&mut queue.reader);
    }

    fn end(&self, end: End) {
        let mut queue = self.queue.lock();
        queue.end = end;
        wake(&mut queue.reader);
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// Reads the pod's body into the queue while the client is there and the queue has room; the
/// exchange ends with the body. A client gone first drops the exchange mid-body (abandoned).
async fn pump(mut exchange: Exchange, shared: Arc<Shared>) {
    loop {
        let next = poll_fn(|cx| match shared.poll_room(cx) {
            Poll::Ready(true) => exchange.poll_frame(cx).map(Some),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match next {
            // The client went away: the exchange is dropped with its body unread.
            None => return,
            Some(Some(Ok(frame))) => shared.push(frame),
            Some(Some(Err(error))) => return shared.end(End::Failed(Some(error))),
            Some(None) => return shared.end(End::Complete),
        }
    }
}

impl Exchange {
    /// The pod's response body, read ahead of the client up to the response buffer
    /// (`upstream::readahead`).
    pub fn respond(self) -> PodBody {
        read_ahead(self)
    }
}
