//! The client write timeout (nginx `send_timeout`, HAProxy `timeout client`): a client that
//! accepts no response bytes for `limits.send_timeout_ms` is disconnected, so it holds no
//! connection, and through its response no buffer or pod, longer than that.
//!
//! [`SendTimeout`] wraps every client connection under its protocol's own wrapper
//! (`server::guard` for HTTP/1, `server::h2` for HTTP/2): a write, flush or shutdown that stays
//! pending for the timeout fails with `TimedOut`, which ends the connection. Writes that
//! complete cost one branch; reads pass through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client connection whose writes are timed.
pub struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Made at the first write that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether a write is waiting now (the sleep's deadline is this wait's).
    waiting: bool,
    timed_out: metrics::Counter,
}

impl<T> SendTimeout<T> {
    /// `inner`, failing writes that wait longer than `timeout`, counting each in `timed_out`.
    pub fn new(inner: T, timeout: Duration, timed_out: metrics::Counter) -> Self {
        SendTimeout {
            inner,
            timeout,
            sleep: None,
            waiting: false,
            timed_out,
        }
    }

    /// Passes on what a write polled; one that has waited for the timeout fails.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = false;
            return polled;
        }
        if !self.waiting {
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        let sleep = self.sleep.as_mut().expect("armed when the wait began");
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.waiting = false;
        self.timed_out.increment(1);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no response bytes for the send timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

impl<T> std::fmt::Debug for SendTimeout<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendTimeout")
            .field("timeout", &self.timeout)
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}
