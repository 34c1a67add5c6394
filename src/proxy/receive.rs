//! Phase "receive": the request body, received before the request takes a slot, so a slow
//! upload occupies no pod. A body up to the request buffer (`limits.request_buffer_bytes`,
//! default 1 MiB) is received whole; a larger one is received this far and its rest streams to
//! the pod once the request has its slot. The buffered part must arrive within the body timeout
//! (`limits.body_timeout_ms`, counted from the request's arrival), and the streamed rest may not
//! pause longer than it: either way the client gets 408 `BodyTimeout` (its doing, counted as
//! such), never a 504 blamed on the model.
//!
//! A body that has arrived with its head — the usual small request — is taken as hyper handed
//! it over (never copied), with no timer and no clock read.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::context::ProxySettings;
use super::error::RouterError;
use crate::upstream::{Frames, RequestBody};

/// A client's request body as the server hands it to the proxy.
pub enum ClientBody {
    /// A body hyper reads (HTTP/2, and the HTTP/1 connections hyper serves).
    Hyper(Incoming),
    /// A body the byte-level HTTP/1 path (`server::h1`) received whole with its head.
    Whole(Bytes),
}

impl ClientBody {
    /// The body's length when it is known before it is read.
    pub fn declared_length(&self) -> Option<u64> {
        match self {
            ClientBody::Hyper(body) => body.size_hint().exact(),
            ClientBody::Whole(bytes) => Some(bytes.len() as u64),
        }
    }
}

/// A request body as far as it was received before admission.
pub struct Received {
    /// The body the pod gets.
    pub body: RequestBody,
    /// When receiving ended, if it had to wait for the client (else nothing was waited for).
    pub waited_until: Option<Instant>,
}

/// Receives `body` of a request that arrived at `arrived`, under the limits of `settings`. A body
/// the server received whole is taken as it is (the route phase refused it if it was declared
/// over the limit).
pub async fn receive(
    body: ClientBody,
    arrived: Instant,
    settings: &ProxySettings,
) -> Result<Received, RouterError> {
    match body {
        // Boxed: a whole body (the byte-level path's) needs none of this state.
        ClientBody::Hyper(body) => Box::pin(receive_incoming(body, arrived, settings)).await,
        ClientBody::Whole(bytes) if bytes.len() as u64 > settings.max_request_body_bytes => {
            Err(RouterError::PayloadTooLarge)
        }
        ClientBody::Whole(bytes) => Ok(Received {
            body: RequestBody::full(bytes),
            waited_until: None,
        }),
    }
}

/// Receives a body hyper reads, frame by frame.
async fn receive_incoming(
    mut body: Incoming,
    arrived: Instant,
    settings: &ProxySettings,
) -> Result<Received, RouterError> {
    let mut received = Frames::default();
    // Made only if the client has to be waited for.
    let mut timeout: Option<Pin<Box<Sleep>>> = None;
    let mut ended = body.is_end_stream();
    while !ended && received.bytes() <= settings.request_buffer_bytes {
        let frame = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Ok(frame)),
            Poll::Pending => {
                let deadline = arrived + settings.body_timeout;
                let timer = timeout
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                timer
                    .as_mut()
                    .poll(cx)
                    .map(|()| Err(RouterError::BodyTimeout))
            }
        })
        .await?;
        match frame {
            None => ended = true,
            Some(Err(e)) => return Err(client_error(&e)),
            Some(Ok(frame)) => {
                received.push(frame);
                ended = body.is_end_stream();
            }
        }
        if received.bytes() > settings.max_request_body_bytes {
            return Err(RouterError::PayloadTooLarge);
        }
    }
    let waited_until = timeout.is_some().then(Instant::now);
    let body = if ended {
        RequestBody::whole(received)
    } else {
        let limit = settings.max_request_body_bytes;
        RequestBody::streaming(received, body, limit, settings.body_timeout)
    };
    Ok(Received { body, waited_until })
}

/// A body that could not be read: the client went away (499), or sent a broken body (400).
fn client_error(error: &hyper::Error) -> RouterError {
    if error.is_incomplete_message() || error.is_canceled() || h2_reset(error) {
        RouterError::ClientClosedRequest
    } else {
        RouterError::BadRequestBody
    }
}

/// Whether an HTTP/2 body ended because the client reset its stream.
fn h2_reset(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<h2::Error>()
            .is_some_and(h2::Error::is_reset)
        {
            return true;
        }
        source = cause.source();
    }
    false
}
