//! HTTP/2 client connections: what keeps one connection from holding resources without
//! progress, or churning the pods.
//!
//! * A connection that never opens a stream closes at the header timeout, as an HTTP/1 one
//!   that never sends a request; an idle one at the keep-alive timeout.
//! * Writes are timed beneath (`server::send_timeout`); and a stream whose response the client
//!   stops accepting (flow-control window 0) is a stalled client too: a stream that has had
//!   something to send for the send timeout without hyper taking it closes the connection
//!   ([`H2Watch::stalled`]).
//! * Accepted streams the client resets, or drops with the connection, before their response
//!   ended are rationed per connection ([`H2Watch::stream_abandoned`]; a token bucket of
//!   `limits.h2_reset_streams_per_second`, bursts of ten times as many). Beyond, the connection
//!   gets GOAWAY `ENHANCE_YOUR_CALM` and closes: hyper only offers a GOAWAY with `NO_ERROR`,
//!   so [`H2Io`] follows the frame boundaries of what hyper writes, writes the GOAWAY itself at
//!   the next one, and fails the connection there — after a lingering close
//!   (`server::linger`), so a client still sending frames reads the GOAWAY rather than a TCP
//!   reset. (Streams reset before the router accepted
//!   them are bounded by h2 itself: `limits.h2_max_pending_accept_reset_streams`.)
//!
//! Abandoned streams never over-admit a pod (`upstream::abandon` holds their slots); the bound
//! keeps one connection from making the pods work for nothing at the rate it can open streams.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::linger::{poll_discard, LINGER};

/// The HTTP/2 connection preface a client sends first.
const PREFACE_LEN: usize = 24;
/// Frame types and error codes of RFC 9113.
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// A stream that is not waiting for the client.
const NOT_WAITING: u64 = u64::MAX;

/// Per connection: the reset budget, whether it is spent, and the streams being answered.
pub struct H2Watch {
    base: Instant,
    bucket: Mutex<Bucket>,
    rate: f64,
    burst: f64,
    calm: AtomicBool,
    calmed: Notify,
    last_stream: AtomicU32,
    streams: Mutex<Vec<Weak<StreamClock>>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl H2Watch {
    /// A connection whose clients may abandon `per_second` accepted streams per second, with
    /// bursts of ten times as many.
    pub fn new(per_second: u32) -> Arc<Self> {
        let rate = f64::from(per_second.max(1));
        let now = Instant::now();
        Arc::new(H2Watch {
            base: now,
            bucket: Mutex::new(Bucket {
                tokens: rate * 10.0,
                at: now,
            }),
            rate,
            burst: rate * 10.0,
            calm: AtomicBool::new(false),
            calmed: Notify::new(),
            last_stream: AtomicU32::new(0),
            streams: Mutex::new(Vec::new()),
        })
    }

    /// Counts an accepted stream that ended before its response did; asks for GOAWAY
    /// `ENHANCE_YOUR_CALM` once the budget is spent.
    fn stream_abandoned(&self) {
        let mut bucket = self.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
        } else if !self.calm.swap(true, Ordering::SeqCst) {
            self.calmed.notify_one();
        }
    }

    /// Resolves when the connection must be told to calm down.
    pub async fn calm_requested(&self) {
        if !self.calm.load(Ordering::SeqCst) {
            self.calmed.notified().await;
        }
    }

    /// A guard for one accepted stream, from its request to the end of its response.
    pub fn stream(self: &Arc<Self>) -> StreamGuard {
        StreamGuard {
            watch: self.clone(),
            clock: None,
            finished: false,
        }
    }

    /// Whether a stream has had something to send for `timeout` without hyper taking it
    /// (the client's flow-control window stays closed); forgets streams that ended.
    pub fn stalled(&self, timeout: Duration) -> bool {
        let now = self.ms_since_base(Instant::now());
        let timeout = timeout.as_millis() as u64;
        let mut streams = self.streams.lock();
        streams.retain(|stream| stream.strong_count() > 0);
        streams.iter().filter_map(Weak::upgrade).any(|clock| {
            let since = clock.waiting_since.load(Ordering::Relaxed);
            since != NOT_WAITING && now.saturating_sub(since) >= timeout
        })
    }

    fn ms_since_base(&self, at: Instant) -> u64 {
        at.duration_since(self.base).as_millis() as u64
    }
}

/// Since when one stream's response has been waiting for the client to take it.
#[derive(Debug)]
struct StreamClock {
    waiting_since: AtomicU64,
}

/// One accepted stream: counted as abandoned if it ends before its response did; while its
/// response is sent, it tells the watch when it waits for the client.
pub struct StreamGuard {
    watch: Arc<H2Watch>,
    clock: Option<Arc<StreamClock>>,
    finished: bool,
}

impl StreamGuard {
    /// The response's head went to hyper: its body now waits to be taken.
    pub fn responding(&mut self) {
        let clock = Arc::new(StreamClock {
            waiting_since: AtomicU64::new(self.watch.ms_since_base(Instant::now())),
        });
        self.watch.streams.lock().push(Arc::downgrade(&clock));
        self.clock = Some(clock);
    }

    /// hyper took a frame of the body (it waits for the client again), or found none ready
    /// (it waits for the pod, not the client).
    pub fn polled(&self, took_frame: bool) {
        if let Some(clock) = &self.clock {
            let since = if took_frame {
                self.watch.ms_since_base(Instant::now())
            } else {
                NOT_WAITING
            };
            clock.waiting_since.store(since, Ordering::Relaxed);
        }
    }

    /// The response has ended.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.watch.stream_abandoned();
        }
    }
}

/// Follows the frame boundaries of an HTTP/2 byte stream.
#[derive(Debug, Default)]
struct FrameCursor {
    /// Bytes of the current frame's payload (or of the preface) still to pass.
    skip: usize,
    header: [u8; 9],
    have: usize,
}

impl FrameCursor {
    /// Passes `bytes`, calling `on_header` with each complete frame header.
    fn advance(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&[u8; 9])) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                on_header(&self.header);
                self.skip = usize::from(self.header[0]) << 16
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]);
                self.have = 0;
            }
        }
    }

    /// Bytes that may pass before the next frame boundary; `None` at a boundary.
    fn to_boundary(&self) -> Option<usize> {
        match (self.skip, self.have) {
            (0, 0) => None,
            (0, have) => Some(9 - have),
            (skip, _) => Some(skip),
        }
    }
}

/// The GOAWAY `ENHANCE_YOUR_CALM` frame naming `last_stream` as the last one processed.
fn goaway_frame(last_stream: u32) -> [u8; 17] {
    let mut frame = [0u8; 17];
    frame[2] = 8;
    frame[3] = GOAWAY;
    frame[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    frame[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame
}

/// An HTTP/2 client connection as hyper sees it: frames followed both ways, and a GOAWAY
/// `ENHANCE_YOUR_CALM` written in place of hyper's next frame when the watch asks.
pub struct H2Io<T> {
    inner: T,
    watch: Arc<H2Watch>,
    read: FrameCursor,
    written: FrameCursor,
    /// The GOAWAY being written, how much of it is out, and the lingering close after it.
    goaway: Option<Goaway>,
    /// How long the lingering close lasts at most ([`LINGER`]).
    linger: Duration,
}

/// A GOAWAY `ENHANCE_YOUR_CALM` on its way out, then the connection's lingering close.
struct Goaway {
    frame: [u8; 17],
    sent: usize,
    /// Whether this side is half-closed (the frame is out and flushed).
    shut: bool,
    /// When the lingering close ends whatever the client still sends: [`LINGER`] after the
    /// GOAWAY was due (a slow client's write of it included).
    until: Pin<Box<tokio::time::Sleep>>,
}

impl Goaway {
    fn new(last_stream: u32, linger: Duration) -> Self {
        Goaway {
            frame: goaway_frame(last_stream),
            sent: 0,
            shut: false,
            until: Box::pin(tokio::time::sleep(linger)),
        }
    }
}

impl<T> H2Io<T> {
    /// Wraps `inner` for the connection `watch` follows.
    pub fn new(inner: T, watch: Arc<H2Watch>) -> Self {
        H2Io {
            inner,
            watch,
            read: FrameCursor {
                skip: PREFACE_LEN,
                ..FrameCursor::default()
            },
            written: FrameCursor::default(),
            goaway: None,
            linger: LINGER,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> H2Io<T> {
    /// Writes the GOAWAY, half-closes, and reads and discards what the client still sends
    /// until it closes or [`LINGER`] passes; then the connection fails (hyper closes it).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let goaway = self.goaway.as_mut().expect("a GOAWAY is being written");
        let inner = &mut self.inner;
        while goaway.sent < goaway.frame.len() {
            match ready!(Pin::new(&mut *inner).poll_write(cx, &goaway.frame[goaway.sent..])) {
                Ok(0) => break,
                Ok(n) => goaway.sent += n,
                Err(e) => return Poll::Ready(e),
            }
        }
        if !goaway.shut {
            if let Err(e) = ready!(Pin::new(&mut *inner).poll_shutdown(cx)) {
                return Poll::Ready(e);
            }
            goaway.shut = true;
        }
        ready!(poll_discard(inner, goaway.until.as_mut(), cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "GOAWAY ENHANCE_YOUR_CALM: too many streams reset",
        ))
    }

    /// How much of `len` bytes may be written now: all, unless a GOAWAY is due, in which case
    /// up to the next frame boundary (`None`: at the boundary, write the GOAWAY).
    fn writable(&mut self, len: usize) -> Option<usize> {
        if self.goaway.is_some() {
            return None;
        }
        if !self.watch.calm.load(Ordering::Relaxed) {
            return Some(len);
        }
        match self.written.to_boundary() {
            Some(n) => Some(n.min(len)),
            None => {
                let last = self.watch.last_stream.load(Ordering::Relaxed);
                self.goaway = Some(Goaway::new(last, self.linger));
                None
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for H2Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let last_stream = &this.watch.last_stream;
        this.read.advance(&buf.filled()[before..], |header| {
            if header[3] == HEADERS {
                let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                last_stream.fetch_max(id & 0x7fff_ffff, Ordering::Relaxed);
            }
        });
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(allowed) = this.writable(data.len()) else {
            return this.poll_goaway(cx).map(Err);
        };
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..allowed]))?;
        this.written.advance(&data[..written], |_| {});
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.goaway.is_some() || this.watch.calm.load(Ordering::Relaxed) {
            // Frame by frame from here: the first non-empty slice, up to the boundary.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let mut left = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let written = left;
        for buf in bufs {
            let n = left.min(buf.len());
            this.written.advance(&buf[..n], |_| {});
            left -= n;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.goaway.is_some() {
            return this.poll_goaway(cx).map(Err);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_cursor_finds_every_header_however_the_bytes_are_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, 0, &[0; 6]));
        stream.extend(frame(HEADERS, 1, &[1, 2, 3]));
        stream.extend(frame(HEADERS, 5, &[]));
        stream.extend(frame(0x0, 5, &[7; 40]));
        for chunk in [1, 2, 5, 9, 13, stream.len()] {
            let mut cursor = FrameCursor {
                skip: PREFACE_LEN,
                ..FrameCursor::default()
            };
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                cursor.advance(piece, |h| {
                    seen.push((h[3], u32::from_be_bytes([h[5], h[6], h[7], h[8]])));
                });
            }
            assert_eq!(seen, [(0x4, 0), (HEADERS, 1), (HEADERS, 5), (0x0, 5)]);
            assert_eq!(cursor.to_boundary(), None, "ends on a boundary");
        }
    }

    #[test]
    fn the_boundary_is_at_the_end_of_the_current_frame() {
        let mut cursor = FrameCursor::default();
        let data = frame(0x0, 1, &[0; 10]);
        cursor.advance(&data[..4], |_| {});
        assert_eq!(cursor.to_boundary(), Some(5), "the rest of the header");
        cursor.advance(&data[4..9], |_| {});
        assert_eq!(cursor.to_boundary(), Some(10), "the payload");
        cursor.advance(&data[9..], |_| {});
        assert_eq!(cursor.to_boundary(), None);
    }

    #[test]
    fn the_goaway_says_enhance_your_calm() {
        assert_eq!(
            goaway_frame(7),
            [0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0xb]
        );
    }

    /// Told to calm down, the connection writes the GOAWAY, half-closes, and reads on until the
    /// client closes: a client still sending frames is not answered by a TCP reset. (The
    /// lingering close is made longer than any test: only the client's close ends it.)
    #[tokio::test]
    async fn a_connection_told_to_calm_down_closes_lingering() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (router_side, mut client) = tokio::io::duplex(16 * 1024);
        let watch = H2Watch::new(1);
        watch.calm.store(true, Ordering::SeqCst);
        let mut io = H2Io::new(router_side, watch);
        io.linger = Duration::from_secs(3600);
        let router = tokio::spawn(async move { io.write_all(&frame(0x0, 1, &[1; 3])).await });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got,
            goaway_frame(0),
            "the GOAWAY, then the router's end of stream"
        );
        client.write_all(&[0; 256 * 1024]).await.unwrap();
        drop(client);
        let error = router.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn the_budget_allows_bursts_then_the_rate() {
        let watch = H2Watch::new(2);
        for _ in 0..20 {
            drop(watch.stream());
        }
        assert!(
            !watch.calm.load(Ordering::SeqCst),
            "a burst of ten seconds' worth"
        );
        let mut finished = watch.stream();
        finished.finished();
        drop(finished);
        assert!(
            !watch.calm.load(Ordering::SeqCst),
            "a finished stream costs nothing"
        );
        drop(watch.stream());
        assert!(watch.calm.load(Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(5), watch.calm_requested())
            .await
            .unwrap();
    }
}
