//! Bytes queued for a connection and written in as few writes as possible: the byte-level
//! paths gather a head and what of a body is ready into one [`Pending`] buffer and write it at
//! once (a TLS connection sends it as one record when it fits).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// Bytes queued for a connection: `bytes[written..]` is still to be written.
#[derive(Debug, Default)]
pub struct Pending {
    bytes: Vec<u8>,
    written: usize,
}

impl Pending {
    /// Nothing queued, with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Pending {
            bytes: Vec::with_capacity(capacity),
            written: 0,
        }
    }

    /// The buffer to append to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Bytes still to be written.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.written
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is queued to `io` until all is written (then the buffer is emptied for
    /// reuse) or `io` is not ready.
    pub fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.bytes.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued to `io`, then flushes it.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_to(io, cx)).await?;
        poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt};

    use super::*;

    /// What is queued is written whole, across short writes, and the buffer is then empty for
    /// the next bytes.
    #[tokio::test]
    async fn queued_bytes_are_written_whole_and_the_buffer_reused() {
        let (mut ours, mut theirs) = duplex(7);
        let mut pending = Pending::with_capacity(16);
        pending.buf().extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(pending.len(), 19);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 19];
            theirs.read_exact(&mut got).await.unwrap();
            got
        });
        pending.write_to(&mut ours).await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(reader.await.unwrap(), b"HTTP/1.1 200 OK\r\n\r\n");
        pending.buf().extend_from_slice(b"next");
        assert_eq!(pending.len(), 4);
    }
}
