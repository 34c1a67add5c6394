//! HTTP/1.1 on the wire, below both legs of the proxy. Nothing here depends on the rest of the
//! crate; the byte-level path of `docs/ARCHITECTURE.md` is built from these pieces.
//!
//! | module | concern |
//! |---|---|
//! | [`head`] | request heads checked and indexed in one pass ([`head::RequestHead`]) |
//! | [`framing`] | the request framing rules, following a client's byte stream request by request |
//! | [`chunked`] | the chunked coding, decoded incrementally and written |
//! | [`body`] | bodies read with the framing they came with and written with the other side's |
//! | [`response`] | pod response heads parsed once, with their body's framing |
//! | [`wire`] | a connection read through a buffer: request and response heads split off it |
//! | [`pending`] | bytes queued for a connection, written in as few writes as possible |
//! | [`write`] | the heads the byte-level path writes: the request for the pod, field lines for both |
//! | [`reply`] | the rules a response head is written to an HTTP/1.1 client by (hyper's), from `http` parts or field lines |
//! | [`relay`] | a pod's response head written to the client from its bytes, as `reply` wrote it from a header map |
//! | [`violation`] | why a request is refused, with its status and message |
//! | [`encode`] | writing a response as bytes |

pub mod body;
pub mod chunked;
pub mod encode;
pub mod framing;
pub mod head;
pub mod pending;
pub mod relay;
pub mod reply;
pub mod response;
pub mod violation;
pub mod wire;
pub mod write;

#[cfg(test)]
mod proptests;
