//! W3C Trace Context (`traceparent`, `tracestate`) for each request, and the optional export of
//! one span per request over OTLP ([`export`]).
//!
//! - A valid `traceparent` from the client is accepted. Without span export it goes to the pod
//!   unchanged (the router records nothing, so it does not put itself in the trace); with export,
//!   the pod gets the router's upstream span as its parent, sampled as the client said.
//! - Without one, the router starts a trace: its trace id is the request's id (a new request id
//!   is a random GUID, and a GUID's 32 hex digits are a trace id), the parent is a new span id,
//!   and the sampled flag is set only when the router exports the span.
//! - When the client sent a `traceparent` but no usable `x-request-id`, the request id is the
//!   trace id written as a GUID (`4bf92f35-77b3-4da6-a3ce-929d0e0e4736`), so the access log, the
//!   pod and the client's trace share one id.
//! - `tracestate` always goes to the pod unchanged (the router adds no entry of its own).
//!
//! Reading the header costs one lookup; a request that brings its own `traceparent` costs
//! nothing more while export is off.

pub mod export;

use http::header::HeaderName;
use http::HeaderValue;

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The sampled flag of `trace-flags`.
pub const SAMPLED: u8 = 0x01;

/// One request's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The client's span (the parent of the router's), when the client sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// `trace-flags` as received, or as set for a new trace.
    pub flags: u8,
}

impl TraceContext {
    /// The context of a `traceparent` value (version 00, or a later version read as 00, as the
    /// specification asks), or `None` when it is malformed or all-zero.
    pub fn parse(b: &[u8]) -> Option<TraceContext> {
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        hex_into(&b[3..35], &mut trace_id)?;
        let mut parent = [0u8; 8];
        hex_into(&b[36..52], &mut parent)?;
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent: Some(parent),
            flags,
        })
    }

    /// A new trace whose id is `request_id`'s 16 bytes (a GUID the router just made).
    pub fn start(request_id: &[u8; 16], sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: *request_id,
            parent: None,
            flags: if sampled { SAMPLED } else { 0 },
        }
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The trace id written as a GUID (8-4-4-4-12), the form of request ids.
    pub fn trace_id_guid(&self) -> HeaderValue {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = uuid::Uuid::from_bytes(self.trace_id)
            .hyphenated()
            .encode_lower(&mut buf);
        HeaderValue::from_str(text).expect("a GUID is a valid header value")
    }

    /// The `traceparent` that makes `span` the parent of the next hop.
    pub fn header_for(&self, span: [u8; 8]) -> HeaderValue {
        let out = self.header_bytes(span);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }

    /// [`Self::header_for`] as bytes.
    pub fn header_bytes(&self, span: [u8; 8]) -> [u8; 55] {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        write_hex(&span, &mut out[36..52]);
        out[52] = b'-';
        write_hex(&[self.flags & SAMPLED], &mut out[53..55]);
        out
    }
}

/// A new random span id (never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are UTF-8")
}

/// Two lower-case hexadecimal digits for each byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    pairs
};

/// Writes the lower-case hex digits of `bytes` into `out`, two per byte from a table (a
/// `traceparent` and a request id are written on every request without them). `out` must be
/// twice as long as `bytes`.
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(&text[2 * i..2 * i + 2])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specifications_example_and_writes_it_back() {
        let cx = TraceContext::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            cx.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(cx.sampled());
        assert_eq!(cx.header_for(cx.parent.unwrap()), EXAMPLE);
        assert_eq!(cx.trace_id_guid(), "4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(TraceContext::parse(future.as_bytes()).is_some());
    }

    #[test]
    fn a_new_trace_is_the_request_id() {
        let guid = uuid::Uuid::new_v4();
        let cx = TraceContext::start(guid.as_bytes(), false);
        assert_eq!(cx.trace_id_guid(), guid.hyphenated().to_string().as_str());
        let header = cx.header_for(new_span_id());
        assert!(header.to_str().unwrap().ends_with("-00"), "not sampled");
        assert_eq!(
            TraceContext::parse(header.as_bytes()).unwrap().trace_id,
            cx.trace_id
        );
    }
}
