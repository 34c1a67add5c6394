//! One keep-alive HTTP/1.1 connection to a pod, driven in the task of the request that uses
//! it: no task of its own, no channel. The request is written as bytes (`upstream::codec`), the
//! response head parsed once (`http1::wire`), the body decoded with the framing it came with
//! (`http1::body`) into frames that share the read buffer.
//!
//! A connection is reused only when the last exchange on it ended cleanly: the request was
//! sent whole, the pod kept the connection open (HTTP/1.1 without `Connection: close`, a body
//! not ended by the close) and sent nothing after its response. An idle pooled connection that
//! the pod closed (or sent anything on) is noticed when it is taken ([`PodConnection::is_idle`])
//! without a system call: the runtime has seen the socket turn readable.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::body::{RequestBody, RequestBodyError};
use crate::http1::body::{BodyDecoder, BodyEncoder, BodyError};
use crate::http1::chunked::Chunk;
use crate::http1::pending::Pending;
use crate::http1::response::{ResponseFraming, ResponseHead, MAX_FIELDS};
use crate::http1::wire::{ResponseHeadError, Wire};

/// TCP keepalive on pod connections: a pod that vanished without closing (node lost, network
/// cut) is noticed after about 60 s idle + 3 probes 10 s apart.
pub const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Largest trailer section accepted at the end of a pod's chunked body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Request bodies received whole up to this size go out in the same write as the head.
const COALESCE_BODY: u64 = 64 * 1024;

/// How pod connections are made and kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// Time to establish a connection.
    pub(super) connect: Duration,
    /// Idle time after which a pooled connection is closed rather than reused.
    pub(super) idle: Duration,
}

/// Why an exchange with a pod failed once the request was (at least partly) written.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// The request body failed while it was sent (too large, stalled, or the client's broke):
    /// the router closed the connection.
    #[error(transparent)]
    Body(#[from] RequestBodyError),
    /// Writing the request to the pod failed.
    #[error("writing the request to the pod failed: {0}")]
    Write(io::Error),
    /// No valid response head came.
    #[error(transparent)]
    Head(#[from] ResponseHeadError),
    /// The pod's response body is malformed or ended early.
    #[error("the pod's response body broke: {0}")]
    BrokenBody(#[from] BodyError),
    /// Reading the pod's response body failed.
    #[error("reading the pod's response body failed: {0}")]
    Read(io::Error),
}

/// How far a request body went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// All of it.
    Complete,
    /// The pod answered (or closed) before all of it was sent: the connection carries nothing
    /// after this response.
    PodAnswered,
}

/// One connection to a pod, with its read buffer.
#[derive(Debug)]
pub struct PodConnection {
    wire: Wire<TcpStream>,
    /// Whether the connection can carry another request once the current response has ended.
    reusable: bool,
    /// The trailer section of the chunked body being read, as it arrives.
    trailers: Vec<u8>,
    /// The timer of the last request on the connection, set anew for the next one
    /// (`proxy::forward`): a timer set to a later deadline stays in the runtime's timer wheel,
    /// where a new one would be entered and removed for every request.
    timer: Option<Pin<Box<Sleep>>>,
}

impl PodConnection {
    /// Whether the idle connection is still usable: the pod has not closed it, reset it, or
    /// sent anything unasked. Costs no system call unless the socket turned readable.
    pub(super) fn is_idle(&self) -> bool {
        if !self.wire.buffered().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.wire.get_ref().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Whether the connection may go back to the pool now that its response has ended.
    pub(super) fn is_reusable(&self) -> bool {
        self.reusable && self.wire.buffered().is_empty()
    }

    /// The timer kept from the connection's last request, if any.
    pub(super) fn take_timer(&mut self) -> Option<Pin<Box<Sleep>>> {
        self.timer.take()
    }

    /// Keeps `timer` for the connection's next request.
    pub(super) fn keep_timer(&mut self, timer: Pin<Box<Sleep>>) {
        self.timer = Some(timer);
    }

    /// Gives back the read buffer's memory (the connection stays idle in a pool for a while).
    pub(super) fn release_buffer(&mut self) {
        self.wire.release_buffer();
    }

    /// Gives back the read buffer's memory if it grew past its usual size (a large response
    /// head); a buffer of the usual size is kept for the next response.
    pub(super) fn release_outgrown_buffer(&mut self) {
        self.wire.release_outgrown_buffer();
    }

    /// Bytes the read buffer can take before it must grow (0 when it holds no memory).
    #[cfg(test)]
    pub(super) fn spare_buffer(&self) -> usize {
        self.wire.spare_capacity()
    }

    /// Writes all of `bytes` (a request head, possibly followed by a whole body).
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.get_mut().write_all(bytes).await
    }

    /// Tells the pod the router sends nothing more on this connection (a FIN, the read side stays
    /// open). A server that watches its connection mid-response (hyper, uvicorn: "client
    /// disconnected") stops the request and closes; one that does not finishes its answer. The
    /// connection is not reused.
    pub(super) async fn shutdown_write(&mut self) -> io::Result<()> {
        self.reusable = false;
        self.wire.get_mut().shutdown().await
    }

    /// Sends `body` after the head, framed by `encoder`, while watching the pod: it stops when
    /// the pod answers (or closes) before the body has been sent.
    pub(super) async fn send_body(
        &mut self,
        body: &mut RequestBody,
        encoder: BodyEncoder,
    ) -> Result<Sent, PodError> {
        let mut out = Pending::default();
        let mut ended = false;
        let sent = poll_fn(|cx| loop {
            match out.poll_write_to(self.wire.get_mut(), cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PodError::Write(e))),
                Poll::Pending => return self.poll_answered(cx),
            }
            if ended {
                return Poll::Ready(Ok(Sent::Complete));
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers of a request body are dropped, as hyper's client did.
                    if let Some(data) = frame.data_ref() {
                        encoder.encode(data, out.buf());
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(PodError::Body(e))),
                Poll::Ready(None) => {
                    encoder.finish(out.buf());
                    ended = true;
                }
                Poll::Pending => return self.poll_answered(cx),
            }
        })
        .await?;
        if sent == Sent::PodAnswered {
            self.reusable = false;
        }
        Ok(sent)
    }

    /// While the request is still being sent: ready when the pod has sent something or closed.
    fn poll_answered(&mut self, cx: &mut Context<'_>) -> Poll<Result<Sent, PodError>> {
        self.wire.poll_fill(cx).map(|_| Ok(Sent::PodAnswered))
    }

    /// Reads the final response head (interim 1xx responses skipped) to a request whose method
    /// was `HEAD` when `to_head`, and how its body is read. Cancel-safe: what was read stays in
    /// the buffer.
    pub(super) async fn response_head(
        &mut self,
        to_head: bool,
    ) -> Result<(Box<ResponseHead>, Bytes, BodyDecoder), PodError> {
        let (head, bytes) = self.wire.response_head(to_head).await?;
        self.trailers.clear();
        if !head.keep_alive() {
            self.reusable = false;
        }
        let decoder = match head.framing() {
            ResponseFraming::Empty => BodyDecoder::length(0),
            ResponseFraming::Length(n) => BodyDecoder::length(n),
            ResponseFraming::Chunked => BodyDecoder::chunked(MAX_TRAILER_BYTES),
            ResponseFraming::UntilClose => BodyDecoder::UntilClose,
        };
        Ok((head, bytes, decoder))
    }

    /// The next frame of the response body `decoder` reads: data (sharing the read buffer's
    /// memory, no copy), then the trailers of a chunked body when the pod sent any, as hyper's
    /// client passed them on; `None` at the end.
    pub(super) fn poll_frame(
        &mut self,
        decoder: &mut BodyDecoder,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, PodError>> {
        loop {
            let input = self.wire.buffered();
            let trailers_before = decoder.trailer_len();
            let (used, found) = decoder.decode(input)?;
            let trailer_bytes = decoder.trailer_len() - trailers_before;
            self.trailers
                .extend_from_slice(&input[used - trailer_bytes..used]);
            match found {
                Chunk::Data(data) => {
                    let skip = data.as_ptr() as usize - input.as_ptr() as usize;
                    let len = data.len();
                    let data = self.wire.split_data(skip, len, used);
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Chunk::End => {
                    self.wire.consume(used);
                    return Poll::Ready(self.take_trailers().map(|t| t.map(Frame::trailers)));
                }
                Chunk::More => self.wire.consume(used),
            }
            match ready!(self.wire.poll_fill(cx)) {
                Ok(0) => {
                    decoder.at_eof()?;
                    return Poll::Ready(Ok(None));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(PodError::Read(e))),
            }
        }
    }

    /// The trailer fields gathered at the end of a chunked body, if it had any.
    fn take_trailers(&mut self) -> Result<Option<HeaderMap>, PodError> {
        let section = std::mem::take(&mut self.trailers);
        if section.len() <= 2 {
            return Ok(None);
        }
        let broken = || PodError::BrokenBody(BodyError::BadChunk(0));
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&section, &mut fields)
        else {
            return Err(broken());
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| broken())?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| broken())?;
            trailers.append(name, value);
        }
        Ok(Some(trailers))
    }

    /// Reads the response body `decoder` reads to its end, discarding it.
    pub(super) async fn discard_body(&mut self, mut decoder: BodyDecoder) -> Result<(), PodError> {
        while poll_fn(|cx| self.poll_frame(&mut decoder, cx))
            .await?
            .is_some()
        {}
        Ok(())
    }
}

/// The request body, when it was received whole and is small enough to go out in the same
/// write as the head.
pub(super) fn coalesced_body(body: &RequestBody) -> Option<Bytes> {
    body.whole_up_to(COALESCE_BODY)
}

/// Connects to `address` within `timeout`. The connection is boxed once for its whole life, so
/// an exchange that holds it stays small to move.
pub(super) async fn connect(
    address: SocketAddr,
    timeout: Duration,
) -> io::Result<Box<PodConnection>> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    socket2::SockRef::from(&stream).set_tcp_keepalive(&TCP_KEEPALIVE)?;
    Ok(Box::new(PodConnection {
        wire: Wire::new(stream),
        reusable: true,
        trailers: Vec::new(),
        timer: None,
    }))
}
