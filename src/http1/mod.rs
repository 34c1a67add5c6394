//! HTTP/1.1 on the wire, below both legs of the proxy: the request framing rules the router
//! enforces before anything parses a request ([`framing`]), and the writing of a response head
//! as bytes ([`encode`]). Nothing here depends on the rest of the crate.

pub mod encode;
pub mod framing;
