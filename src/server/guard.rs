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
//! stream never counts against the client. (Writes are timed beneath, by
//! `server::send_timeout`.) When a head is refused, the router writes its own
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

use super::linger::{poll_discard, LINGER};
use crate::http1::framing::{Framing, HeadLimits, Scan, Violation};
use crate::http1::head::HeadIndex;
use crate::proxy::error::{http1_refusal, RouterError};

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
    /// The guard's timer found the connection idle for its park time ([`GuardedIo::park_after`]).
    park_due: AtomicBool,
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
            park_due: AtomicBool::new(false),
        })
    }

    /// Whether the connection has been idle for its park time since this was last asked (set
    /// by the guard's timer, [`GuardedIo::park_after`]).
    pub fn take_park_due(&self) -> bool {
        let due = self.park_due.load(Ordering::Relaxed);
        if due {
            self.park_due.store(false, Ordering::Relaxed);
        }
        due
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
    /// The close lingers (`server::linger`): set when a request is refused, since the client
    /// may still be sending it. Once the shutdown is under way, when the lingering ends.
    linger: Linger,
    /// How long the lingering close lasts at most ([`LINGER`]).
    linger_limit: Duration,
    /// An idle connection's park time, when its reader parks it ([`GuardedIo::park_after`]).
    park_after: Option<Duration>,
    /// The park time of the current wait for a next request has passed.
    parked: bool,
}

/// What missing the deadline that applies now does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Closes the connection quietly (nothing of a request arrived).
    Close,
    /// Refuses the head in progress (408).
    Refuse,
    /// Tells the reader the connection has been idle for its park time.
    Park,
}

/// Whether the connection's close lingers, and until when.
enum Linger {
    /// It does not: the client is not known to be sending anything.
    No,
    /// It will, once this side is half-closed.
    Wanted,
    /// This side is half-closed; what the client sends is discarded until this passes.
    Until(Pin<Box<Sleep>>),
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
            linger: Linger::No,
            linger_limit: LINGER,
            park_after: None,
            parked: false,
        }
    }

    /// Has the guard's timer also mark an idle connection's park time, `after` the last
    /// response (or the accept), in [`Activity::take_park_due`] (the byte-level reader parks
    /// it then; one timer serves both, so the reader sets none of its own per request), or no
    /// more (`None`).
    pub fn park_after(&mut self, after: Option<Duration>) {
        self.park_after = after;
    }

    /// Makes the connection's close linger (`server::linger`): the caller refused a request
    /// whose rest the client may still be sending.
    pub fn linger_on_close(&mut self) {
        if matches!(self.linger, Linger::No) {
            self.linger = Linger::Wanted;
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

    /// Keeps the index of every request head the framing rules check from now on, for
    /// [`Self::take_head_index`] (the byte-level path reads the heads without checking them
    /// again), or stops keeping them.
    pub fn keep_head_indexes(&mut self, keep: bool) {
        self.framing.keep_indexes(keep);
    }

    /// The index of the oldest head checked and not taken yet, when `buffered`, what the
    /// connection's reader holds, starts with that head (as many bytes, the last of them the
    /// empty line's CRLF). The reader reads the bytes the guard checked, in order, so it always
    /// does once it holds a whole head; when it does not (never expected), the keeping stops
    /// and the reader finds and checks its heads itself.
    pub fn take_head_index(&mut self, buffered: &[u8]) -> Option<Box<HeadIndex>> {
        let len = self.framing.next_index_len()?;
        match buffered.get(..len) {
            Some(head) if head.ends_with(b"\r\n\r\n") => self.framing.take_index(),
            _ => {
                self.framing.keep_indexes(false);
                None
            }
        }
    }

    /// Gives back the memory of the kept head indexes while none is waiting (an idle
    /// connection).
    pub fn release_head_indexes(&mut self) {
        self.framing.release_indexes();
    }

    /// Starts writing a refusal (only called while no response is being written).
    fn refuse(&mut self, error: RouterError) {
        self.refusal = http1_refusal(error);
        self.refusal_written = 0;
        self.phase = Phase::Refusing;
        self.linger_on_close();
        tracing::debug!(
            status = error.status().as_u16(),
            code = error.code(),
            "refusing a request before it reached the proxy"
        );
    }

    /// The deadline of whichever timer applies now, if any, and what missing it does: a 408
    /// (part of a head arrived), a quiet close (nothing arrived), or the park time of an idle
    /// connection (when it comes first).
    fn deadline(&self) -> Option<(Instant, Due)> {
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
            let close = since_done + timeout;
            match self.park_after.filter(|_| !self.parked) {
                Some(after) if since_done + after < close => Some((since_done + after, Due::Park)),
                _ => Some((close, Due::Close)),
            }
        } else if self.framing.in_head() {
            let started = self.first_head_byte.unwrap_or(since_done).max(since_done);
            Some((started + self.settings.header_timeout, Due::Refuse))
        } else {
            None
        }
    }
}

/// What the framing rules made of bytes just read.
enum Inspected {
    /// Hand them to hyper.
    Pass,
    /// Nothing to hand over (a refused head is held back): read on.
    Withheld,
    /// A body already being forwarded broke its chunked framing.
    BrokenBody(Violation),
}

impl<T: AsyncRead + AsyncWrite + Unpin> GuardedIo<T> {
    /// Writes the refusal, then reads as end-of-file.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.refusal_written < self.refusal.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.refusal[self.refusal_written..])
            )?;
            if n == 0 {
                break;
            }
            self.refusal_written += n;
        }
        let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.phase = Phase::Closed;
        Poll::Ready(Ok(()))
    }

    /// Whether the timer that applies now has fired; it then starts a 408 or closes quietly.
    /// An idle connection's park time passing is marked ([`Activity::take_park_due`]) and the
    /// timer set for what applies next.
    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some((deadline, due)) = self.deadline() else {
                return false;
            };
            if !self.timer_passed(deadline, cx) {
                return false;
            }
            match due {
                Due::Park => {
                    self.parked = true;
                    self.activity.park_due.store(true, Ordering::Relaxed);
                }
                Due::Refuse => {
                    self.refuse(RouterError::HeadTimeout);
                    return true;
                }
                Due::Close => {
                    self.phase = Phase::Closed;
                    return true;
                }
            }
        }
    }

    /// Whether `deadline` has passed, by the timer (woken then otherwise). The timer is moved
    /// to an earlier deadline only: set for an earlier one (each response moves the keep-alive
    /// deadline on), it fires early and is set then.
    fn timer_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if deadline < self.timer.deadline() {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.timer.deadline() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Feeds the bytes read from `before` on to the framing rules, holding back a refused head.
    fn inspect(&mut self, buf: &mut ReadBuf<'_>, before: usize) -> Inspected {
        let was_boundary = self.framing.at_boundary();
        if let Scan::Refused {
            valid,
            violation,
            in_head,
        } = self.framing.feed(&buf.filled()[before..])
        {
            buf.set_filled(before + valid);
            if !in_head {
                // A broken chunk in a body already being forwarded: fail the body; the proxy
                // answers 400 and hyper closes the connection.
                return Inspected::BrokenBody(violation);
            }
            self.pending = Some(violation);
            if valid == 0 {
                return Inspected::Withheld;
            }
        }
        self.first_request = false;
        self.parked = false;
        self.activity
            .at_boundary
            .store(self.framing.at_boundary(), Ordering::SeqCst);
        if self.framing.at_boundary() {
            self.first_head_byte = None;
        } else if was_boundary && self.framing.in_head() {
            self.first_head_byte = Some(Instant::now());
        }
        Inspected::Pass
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
                Phase::Refusing => return this.poll_refusal(cx),
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
                this.refuse(RouterError::Framing(violation));
                continue;
            }
            let before = buf.filled().len();
            // The timers are looked at when nothing is there to read: bytes that arrived are
            // read first (a head in progress then goes on being timed until it is whole).
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(read) => read?,
                Poll::Pending if this.timer_fired(cx) => continue,
                Poll::Pending => return Poll::Pending,
            }
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            match this.inspect(buf, before) {
                Inspected::Pass => return Poll::Ready(Ok(())),
                Inspected::Withheld => continue,
                Inspected::BrokenBody(violation) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        violation.message(),
                    )))
                }
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
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

    /// Half-closes the connection; after a refusal, then reads and discards what the client
    /// still sends until it closes or [`LINGER`] passes (hyper shuts a connection down when it
    /// is done with it, the byte-level path when it closes one).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.linger {
                Linger::Until(until) => {
                    ready!(poll_discard(&mut this.inner, until.as_mut(), cx));
                    this.linger = Linger::No;
                    return Poll::Ready(Ok(()));
                }
                Linger::No => return Pin::new(&mut this.inner).poll_shutdown(cx),
                Linger::Wanted => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.linger = Linger::Until(Box::pin(tokio::time::sleep(this.linger_limit)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// `io` guarded with timers and a lingering close longer than any test.
    fn guarded(io: tokio::io::DuplexStream) -> GuardedIo<tokio::io::DuplexStream> {
        let settings = GuardSettings {
            limits: HeadLimits {
                max_header_bytes: 8 * 1024,
                max_headers: 100,
            },
            header_timeout: Duration::from_secs(3600),
            keep_alive_timeout: Duration::from_secs(3600),
        };
        let mut io = GuardedIo::new(io, settings, Activity::new(Instant::now()));
        io.linger_limit = Duration::from_secs(3600);
        io
    }

    /// A refused head: the client gets the refusal and the router's end of stream, then what it
    /// still sends is read and discarded until it closes, rather than answered by a TCP reset.
    /// (The lingering close is made longer than any test: only the client's close ends it.)
    #[tokio::test]
    async fn a_refused_connection_closes_lingering() {
        let (router_side, mut client) = tokio::io::duplex(16 * 1024);
        let mut io = guarded(router_side);
        let router = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while io.read(&mut buf).await? > 0 {}
            io.shutdown().await
        });
        client
            .write_all(b"POST / HTTP/1.1\nhost: x\r\ncontent-length: 65536\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 400 "), "{got:?}");
        client.write_all(&[b'x'; 64 * 1024]).await.unwrap();
        drop(client);
        router.await.unwrap().unwrap();
    }

    /// With a park time, the guard's timer marks it once while the connection is idle, keeps
    /// the connection open, and marks it again for the next wait after a request.
    #[tokio::test]
    async fn an_idle_connection_is_marked_for_parking() {
        let (router_side, mut client) = tokio::io::duplex(16 * 1024);
        let mut io = guarded(router_side);
        io.park_after(Some(Duration::from_millis(20)));
        let activity = io.activity.clone();
        let (read_tx, mut read_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                let _ = read_tx.send(n).await;
                if n == 0 {
                    break;
                }
            }
        });
        let marked = || async {
            for _ in 0..1000 {
                if activity.take_park_due() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        };
        assert!(marked().await, "the park time was marked");
        assert!(read_rx.try_recv().is_err(), "nothing read, not closed");
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_rx.recv().await.unwrap() > 0);
        // Between requests again (the request had no body): marked anew.
        assert!(marked().await, "the park time was marked for the next wait");
    }

    /// A connection that refused nothing closes at once.
    #[tokio::test]
    async fn an_unrefused_connection_closes_at_once() {
        let (router_side, mut client) = tokio::io::duplex(16 * 1024);
        let mut io = guarded(router_side);
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }
}
