//! The IO wrapper between an HTTP/1 client connection and hyper.
//!
//! Every byte the client sends passes through [`GuardedIo::poll_read`], which feeds it to
//! [`Framing`] before hyper sees it, and enforces two timers that hyper cannot tell apart:
//!
//! * the header timeout: from the first byte of a request head (or from the accept, for the
//!   first request) until the head is complete → `408` and close (slowloris);
//! * the keep-alive timeout: an idle connection between requests is closed quietly.
//!
//! Both only run while no response is in progress ([`Activity`]), so a slow model or a long
//! stream never counts against the client. When a head is refused, the router writes its own
//! JSON error and returns end-of-file to hyper, which therefore never parses the request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{Framing, HeadLimits, Scan, Violation};
use crate::proxy::error::error_json;

/// Requests in progress on one connection, and when the last one finished.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    in_progress: AtomicU32,
    last_done_ms: AtomicU64,
    /// Woken when a response ends (the guard waits on it to refuse a pipelined request).
    response_done: AtomicWaker,
    /// Requests started on the connection.
    started: AtomicU64,
    /// Whether the client's byte stream is between requests (no byte of a next head yet).
    at_boundary: AtomicBool,
}

impl Activity {
    /// A connection accepted at `accepted`.
    pub fn new(accepted: Instant) -> Arc<Self> {
        Arc::new(Activity {
            base: accepted,
            in_progress: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            response_done: AtomicWaker::new(),
            started: AtomicU64::new(0),
            at_boundary: AtomicBool::new(true),
        })
    }

    /// Marks a request as started; the guard marks it finished when dropped.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        ActivityGuard(self.clone())
    }

    /// Requests started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Whether the client is between requests: nothing of a next head has arrived.
    pub fn at_boundary(&self) -> bool {
        self.at_boundary.load(Ordering::SeqCst)
    }

    /// Requests whose response has not ended.
    pub fn in_progress(&self) -> u32 {
        self.in_progress.load(Ordering::SeqCst)
    }

    /// When the last response ended (or the connection was accepted).
    pub fn last_done(&self) -> Instant {
        self.base + Duration::from_millis(self.last_done_ms.load(Ordering::SeqCst))
    }
}

/// Held from the start of a request to the end of its response.
#[derive(Debug)]
pub struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let ms = self.0.base.elapsed().as_millis() as u64;
        self.0.last_done_ms.store(ms, Ordering::SeqCst);
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
        self.0.response_done.wake();
    }
}

/// Timeouts and limits of the guard.
#[derive(Clone, Copy, Debug)]
pub struct GuardSettings {
    /// Head limits.
    pub limits: HeadLimits,
    /// Time to send a complete head.
    pub header_timeout: Duration,
    /// Time an idle connection stays open.
    pub keep_alive_timeout: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Passing bytes through.
    Open,
    /// Writing a refusal; then end-of-file.
    Refusing,
    /// End-of-file for hyper.
    Closed,
}

/// An HTTP/1 client connection as hyper sees it.
pub struct GuardedIo<T> {
    inner: T,
    framing: Framing,
    settings: GuardSettings,
    activity: Arc<Activity>,
    timer: Pin<Box<Sleep>>,
    first_head_byte: Option<Instant>,
    first_request: bool,
    phase: Phase,
    refusal: Vec<u8>,
    refusal_written: usize,
    /// A refused pipelined request, acted on once the responses before it are done.
    pending: Option<Violation>,
    /// Bytes already read (and checked) that must be handed out again first: what a released
    /// hyper connection had read, or what arrived while the connection was parked.
    replay: Bytes,
}

impl<T> GuardedIo<T> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: T, settings: GuardSettings, activity: Arc<Activity>) -> Self {
        let deadline = activity.last_done() + settings.header_timeout;
        GuardedIo {
            inner,
            framing: Framing::new(settings.limits),
            settings,
            activity,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            first_head_byte: None,
            first_request: true,
            phase: Phase::Open,
            refusal: Vec::new(),
            refusal_written: 0,
            pending: None,
            replay: Bytes::new(),
        }
    }

    /// Hands `bytes`, already read and checked, out again before anything new.
    pub fn replay(&mut self, bytes: Bytes) {
        if self.replay.is_empty() {
            self.replay = bytes;
        } else {
            let mut joined = Vec::with_capacity(self.replay.len() + bytes.len());
            joined.extend_from_slice(&self.replay);
            joined.extend_from_slice(&bytes);
            self.replay = Bytes::from(joined);
        }
    }

    /// Starts writing a refusal (only called while no response is being written).
    fn refuse(&mut self, status: u16, code: &str, message: &str) {
        let request_id = crate::proxy::headers::new_request_id();
        let request_id = request_id.to_str().unwrap_or_default();
        let body = error_json(code, message, request_id);
        let reason = match status {
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let mut response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        self.refusal = response;
        self.refusal_written = 0;
        self.phase = Phase::Refusing;
        tracing::debug!(
            status,
            code,
            "refusing a request before it reached the proxy"
        );
    }

    /// The deadline of whichever timer applies now, if any, and whether missing it is a 408
    /// (part of a head arrived) rather than a quiet close (nothing arrived).
    fn deadline(&self) -> Option<(Instant, bool)> {
        if self.activity.in_progress() > 0 {
            return None;
        }
        let since_done = self.activity.last_done();
        if self.framing.at_boundary() {
            // Nothing of a next request: a new connection gets the header timeout, an idle
            // keep-alive connection the keep-alive timeout; both end quietly, as nginx does.
            let timeout = if self.first_request {
                self.settings.header_timeout
            } else {
                self.settings.keep_alive_timeout
            };
            Some((since_done + timeout, false))
        } else if self.framing.in_head() {
            let started = self.first_head_byte.unwrap_or(since_done).max(since_done);
            Some((started + self.settings.header_timeout, true))
        } else {
            None
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.replay.is_empty() {
                let n = this.replay.len().min(buf.remaining());
                buf.put_slice(&this.replay.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Refusing => {
                    while this.refusal_written < this.refusal.len() {
                        let n = ready!(Pin::new(&mut this.inner)
                            .poll_write(cx, &this.refusal[this.refusal_written..]))?;
                        if n == 0 {
                            break;
                        }
                        this.refusal_written += n;
                    }
                    let _ = ready!(Pin::new(&mut this.inner).poll_flush(cx));
                    this.phase = Phase::Closed;
                    return Poll::Ready(Ok(()));
                }
                Phase::Open => {}
            }
            if let Some(violation) = this.pending {
                // Responses before the refused request come first: wait for them to end (an
                // end-of-file now would make hyper abandon them), then refuse.
                this.activity.response_done.register(cx.waker());
                if this.activity.in_progress() > 0 {
                    return Poll::Pending;
                }
                this.pending = None;
                this.refuse(violation.status(), violation.code(), violation.message());
                continue;
            }
            if let Some((deadline, is_header)) = this.deadline() {
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    if is_header {
                        this.refuse(
                            408,
                            "RequestTimeout",
                            "the request head was not received in time: send the whole head promptly",
                        );
                    } else {
                        this.phase = Phase::Closed;
                    }
                    continue;
                }
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let new = &buf.filled()[before..];
            if new.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let was_boundary = this.framing.at_boundary();
            match this.framing.feed(new) {
                Scan::Ok => {}
                Scan::Refused {
                    valid,
                    violation,
                    in_head,
                } => {
                    buf.set_filled(before + valid);
                    if in_head {
                        this.pending = Some(violation);
                    } else {
                        // A broken chunk in a body already being forwarded: fail the body; the
                        // proxy answers 400 and hyper closes the connection.
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            violation.message(),
                        )));
                    }
                    if valid == 0 {
                        continue;
                    }
                }
            }
            this.first_request = false;
            this.activity
                .at_boundary
                .store(this.framing.at_boundary(), Ordering::SeqCst);
            if this.framing.at_boundary() {
                this.first_head_byte = None;
            } else if was_boundary && this.framing.in_head() {
                this.first_head_byte = Some(Instant::now());
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
