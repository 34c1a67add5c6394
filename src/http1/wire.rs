//! One side of an HTTP/1 connection read through a buffer: heads are parsed from the buffer
//! and split off it, bodies are copied from it (`super::copy`). The byte-level path drives both
//! of a request's connections this way in the request's own task: the client's (plain or TLS)
//! and the pod's.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::head::{self, HeadIndex, HeadLimits, RequestHead};
use super::response::{InvalidResponse, Parsed, ResponseHead};
use super::violation::Violation;

/// Bytes asked of the socket at least per read (hyper's read buffer starts at 8 KiB too).
const READ_SIZE: usize = 8 * 1024;

/// Largest pod response head (hyper's client default buffer limit).
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024 + 4096 * 100;

/// Why no request head came.
#[derive(Debug, thiserror::Error)]
pub enum RequestHeadError {
    /// The head breaks a framing rule: the client gets the violation's status.
    #[error("{}", .0.message())]
    Refused(Violation),
    /// The connection ended inside a head.
    #[error("the client closed the connection inside a request head")]
    Truncated,
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why no response head came from a pod.
#[derive(Debug, thiserror::Error)]
pub enum ResponseHeadError {
    /// The head is not a valid response.
    #[error(transparent)]
    Invalid(#[from] InvalidResponse),
    /// The head grew past [`MAX_RESPONSE_HEAD`].
    #[error("the pod's response head is larger than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    /// The pod closed the connection before a whole head; `nothing` when not one byte came.
    #[error("the pod closed the connection before answering")]
    Closed {
        /// Whether no byte of a response arrived.
        nothing: bool,
    },
    /// Reading failed; `nothing` when not one byte of a response came.
    #[error("reading the pod's response failed: {error}")]
    Io {
        /// The error.
        error: io::Error,
        /// Whether no byte of a response arrived.
        nothing: bool,
    },
}

/// A connection with its read buffer.
#[derive(Debug)]
pub struct Wire<IO> {
    io: IO,
    buf: BytesMut,
    /// How far the buffer was searched for the end of a request head.
    scanned: usize,
    /// Whether the buffer was extended while it held more than a quarter of a read: only then
    /// can its memory grow past about twice [`READ_SIZE`] ([`Wire::release_outgrown_buffer`]).
    outgrown: bool,
}

impl<IO> Wire<IO> {
    /// `io`, with nothing read yet.
    pub fn new(io: IO) -> Self {
        Wire {
            io,
            buf: BytesMut::new(),
            scanned: 0,
            outgrown: false,
        }
    }

    /// `io`, with `read` already read from it.
    pub fn with_buffered(io: IO, read: BytesMut) -> Self {
        Wire {
            io,
            buf: read,
            scanned: 0,
            outgrown: true,
        }
    }

    /// The connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The connection, to write to it.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The connection and what was read from it but not consumed.
    pub fn into_parts(self) -> (IO, BytesMut) {
        (self.io, self.buf)
    }

    /// Bytes read and not consumed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        let _ = self.buf.split_to(n);
        self.scanned = self.scanned.saturating_sub(n);
    }

    /// Splits `len` bytes off the buffer after skipping `skip`, then drops what is left of the
    /// first `used` bytes (a piece of body data and the framing around it): the data, without a
    /// copy.
    pub fn split_data(&mut self, skip: usize, len: usize, used: usize) -> Bytes {
        self.consume(skip);
        let data = self.buf.split_to(len).freeze();
        self.scanned = self.scanned.saturating_sub(len);
        self.consume(used - skip - len);
        data
    }

    /// Appends `bytes`, read from the connection elsewhere, to the buffer.
    pub fn extend_buffered(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Gives the buffer's memory back when nothing is buffered (an idle connection keeps none).
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.scanned = 0;
            self.outgrown = false;
        }
    }

    /// Gives the buffer's memory back when nothing is buffered and it may have grown past its
    /// usual size (about twice [`READ_SIZE`] at most: the buffer is extended by a read's size
    /// when less than a quarter of one is free, so it grows further only while more than a
    /// quarter of a read is buffered, a large head being read). A buffer of the usual size is
    /// kept for the connection's next reads.
    pub fn release_outgrown_buffer(&mut self) {
        if self.outgrown {
            self.release_buffer();
        }
    }

    /// Bytes the buffer can take before it must grow (0 when it holds no memory).
    pub fn spare_capacity(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }
}

impl<IO: AsyncRead + Unpin> Wire<IO> {
    /// Reads more bytes into the buffer: how many (0 at the end of the stream).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.outgrown |= self.buf.len() > READ_SIZE / 4;
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Reads more bytes into the buffer: how many (0 at the end of the stream).
    pub async fn fill(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads a request head, checked and indexed, and splits it off the buffer; `None` when the
    /// connection ends before any byte of one. Empty lines before a request line are skipped
    /// (RFC 9112 §2.2).
    pub async fn request_head(
        &mut self,
        limits: HeadLimits,
    ) -> Result<Option<RequestHead>, RequestHeadError> {
        self.request_head_indexed(limits, |_, _| None).await
    }

    /// Like [`Self::request_head`], but a head is checked and indexed only when `indexed` does
    /// not give its index: it is asked, with the connection and the bytes buffered, for the
    /// index of a head the connection checked as it was read and that starts the buffer (so the
    /// head's end is known without looking for it).
    pub async fn request_head_indexed(
        &mut self,
        limits: HeadLimits,
        mut indexed: impl FnMut(&mut IO, &[u8]) -> Option<Box<HeadIndex>>,
    ) -> Result<Option<RequestHead>, RequestHeadError> {
        loop {
            let blank = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if blank > 0 {
                self.consume(blank);
            }
            if let Some(index) = indexed(&mut self.io, &self.buf) {
                self.scanned = 0;
                let bytes = self.buf.split_to(index.len()).freeze();
                if let Ok(head) = RequestHead::with_index(bytes, index) {
                    return Ok(Some(head));
                }
            }
            let end = head::find_end(&self.buf, self.scanned.saturating_sub(3))
                .map_err(RequestHeadError::Refused)?;
            match end {
                Some(end) if end <= limits.max_header_bytes => {
                    self.scanned = 0;
                    let bytes = self.buf.split_to(end).freeze();
                    return RequestHead::parse(bytes, limits)
                        .map(Some)
                        .map_err(RequestHeadError::Refused);
                }
                Some(_) => return Err(RequestHeadError::Refused(Violation::HeadTooLarge)),
                None if self.buf.len() > limits.max_header_bytes => {
                    return Err(RequestHeadError::Refused(Violation::HeadTooLarge))
                }
                None => self.scanned = self.buf.len(),
            }
            if self.fill().await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(RequestHeadError::Truncated),
                };
            }
        }
    }

    /// Reads a pod's final response head to a request (`to_head`: the request was `HEAD`),
    /// skipping interim (1xx) responses, and splits it off the buffer with its bytes.
    pub async fn response_head(
        &mut self,
        to_head: bool,
    ) -> Result<(Box<ResponseHead>, Bytes), ResponseHeadError> {
        let mut nothing = true;
        loop {
            if !self.buf.is_empty() {
                nothing = false;
                match ResponseHead::parse(&self.buf, to_head)? {
                    Parsed::Complete(head, len) => {
                        return Ok((head, self.buf.split_to(len).freeze()))
                    }
                    Parsed::Interim(len) => {
                        self.consume(len);
                        continue;
                    }
                    Parsed::Partial if self.buf.len() > MAX_RESPONSE_HEAD => {
                        return Err(ResponseHeadError::TooLarge)
                    }
                    Parsed::Partial => {}
                }
            }
            match self.fill().await {
                Ok(0) => return Err(ResponseHeadError::Closed { nothing }),
                Ok(_) => {}
                Err(error) => return Err(ResponseHeadError::Io { error, nothing }),
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> Wire<IO> {
    /// Writes all of `bytes` and flushes (a TLS connection sends them as one record when they
    /// fit in one).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_headers: 16,
    };

    /// A wire reading what `writes` sends, in those pieces.
    async fn wire_fed(writes: Vec<Vec<u8>>) -> Wire<tokio::io::DuplexStream> {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            for piece in writes {
                theirs.write_all(&piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        Wire::new(ours)
    }

    #[tokio::test]
    async fn request_heads_are_split_off_whatever_the_reads() {
        let stream = b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        for cut in 1..stream.len() {
            let mut wire = wire_fed(vec![stream[..cut].to_vec(), stream[cut..].to_vec()]).await;
            let first = wire.request_head(LIMITS).await.unwrap().unwrap();
            assert_eq!(first.path(), "/a");
            let second = wire.request_head(LIMITS).await.unwrap().unwrap();
            assert_eq!(second.path(), "/b");
            while wire.buffered().len() < 2 {
                assert!(wire.fill().await.unwrap() > 0);
            }
            assert_eq!(wire.buffered(), b"{}");
            wire.consume(2);
            assert!(wire.request_head(LIMITS).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn bad_truncated_and_oversized_heads() {
        let mut wire = wire_fed(vec![b"GET / HTTP/1.1\nHost: x\r\n\r\n".to_vec()]).await;
        assert!(matches!(
            wire.request_head(LIMITS).await,
            Err(RequestHeadError::Refused(Violation::BareLineFeed))
        ));
        let mut wire = wire_fed(vec![b"GET / HTTP/1.1\r\nHo".to_vec()]).await;
        assert!(matches!(
            wire.request_head(LIMITS).await,
            Err(RequestHeadError::Truncated)
        ));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "y".repeat(2000)
        );
        let mut wire = wire_fed(vec![big.into_bytes()]).await;
        assert!(matches!(
            wire.request_head(LIMITS).await,
            Err(RequestHeadError::Refused(Violation::HeadTooLarge))
        ));
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let pod = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut wire = wire_fed(pod.chunks(7).map(<[u8]>::to_vec).collect()).await;
        let (head, bytes) = wire.response_head(false).await.unwrap();
        assert_eq!(head.status(), 200);
        assert!(bytes.starts_with(b"HTTP/1.1 200 OK"));
        while wire.buffered().len() < 2 {
            wire.fill().await.unwrap();
        }
        assert_eq!(wire.buffered(), b"ok");
    }

    #[tokio::test]
    async fn a_pod_that_closes_says_whether_anything_came() {
        let mut wire = wire_fed(vec![]).await;
        assert!(matches!(
            wire.response_head(false).await,
            Err(ResponseHeadError::Closed { nothing: true })
        ));
        let mut wire = wire_fed(vec![b"HTTP/1.1 200 OK\r\n".to_vec()]).await;
        assert!(matches!(
            wire.response_head(false).await,
            Err(ResponseHeadError::Closed { nothing: false })
        ));
    }
}
