//! Pod response heads: parsed once, with the body's framing decided as RFC 9112 §6.3 says and
//! as hyper's client decided it before (the byte-level path keeps its choices):
//!
//! | response | body |
//! |---|---|
//! | 1xx other than 101 | none: an interim response, skipped ([`Parsed::Interim`]) |
//! | 101 | refused: the router never asks a pod to switch protocols |
//! | to `HEAD`; 204; 304 | none, whatever the fields say |
//! | `Transfer-Encoding` ending in `chunked` (HTTP/1.1) | chunked; `Content-Length` ignored |
//! | another `Transfer-Encoding` (HTTP/1.1) | until the pod closes |
//! | `Transfer-Encoding` on HTTP/1.0 | refused |
//! | `Content-Length` (several only if equal) | that many bytes; an invalid one is refused |
//! | none of these | until the pod closes |
//!
//! A head is parsed with httparse, as hyper's client did: lenient where pods commonly are (a
//! bare LF, a missing reason phrase), strict where ambiguity would hurt (obs-fold, invalid
//! characters, more than [`MAX_FIELDS`] fields, a status below 100, a field name longer than
//! `http` takes).

use std::mem::MaybeUninit;

use smallvec::SmallVec;

use super::head::{lists_a_field, tokens, Known};

/// Most fields a pod's response head may have (hyper's client default).
pub const MAX_FIELDS: usize = 100;

/// The longest field name a pod's head may have (`http`'s bound, as hyper's client had it).
const MAX_NAME: usize = (1 << 16) - 1;

/// How a response body is framed on the pod's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Everything until the pod closes the connection.
    UntilClose,
}

/// Why a pod's response head is refused (the client gets 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    /// Not HTTP/1.x, or malformed.
    #[error("the pod's response head is malformed: {0}")]
    Malformed(httparse::Error),
    /// More than [`MAX_FIELDS`] fields.
    #[error("the pod's response head has more than {MAX_FIELDS} fields")]
    TooManyFields,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("the pod switched protocols unasked")]
    UnaskedUpgrade,
    /// `Content-Length` values that are not one decimal number.
    #[error("the pod's response has an invalid Content-Length")]
    InvalidLength,
    /// `Transfer-Encoding` on an HTTP/1.0 response.
    #[error("the pod's HTTP/1.0 response has a Transfer-Encoding")]
    TransferEncodingOnHttp10,
}

/// One response field: offsets of its name and value in the head.
#[derive(Clone, Copy, Debug)]
pub struct ResponseField {
    name: (u32, u32),
    value: (u32, u32),
    known: Option<Known>,
}

impl ResponseField {
    /// The name as the pod sent it.
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.0 as usize..self.name.1 as usize]
    }

    /// The value as the pod sent it (without surrounding whitespace).
    pub fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value.0 as usize..self.value.1 as usize]
    }

    /// The field's kind, when the HTTP/1 layer acts on it.
    pub fn known(&self) -> Option<Known> {
        self.known
    }
}

/// A pod's final response head: where its parts are in the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    status: u16,
    reason: (u32, u32),
    http10: bool,
    fields: SmallVec<[ResponseField; 16]>,
    framing: ResponseFraming,
    keep_alive: bool,
    has_date: bool,
    /// A `Connection` field lists a name other than the hop-by-hop ones.
    connection_lists: bool,
}

/// What parsing the start of a pod's byte stream found.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// An interim (1xx) response of this many bytes: skip it and parse what follows.
    Interim(usize),
    /// The final response head, of this many bytes. Its index (its fields inline, about 350
    /// bytes) is boxed here, so the head moves through the request's futures as a pointer.
    Complete(Box<ResponseHead>, usize),
}

impl ResponseHead {
    /// Parses the response at the start of `buf`, the answer to a request whose method was
    /// `HEAD` when `to_head` is true.
    pub fn parse(buf: &[u8], to_head: bool) -> Result<Parsed, InvalidResponse> {
        let mut storage = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut storage,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(InvalidResponse::TooManyFields),
            Err(e) => return Err(InvalidResponse::Malformed(e)),
        };
        let status = response.code.unwrap_or(0);
        match status {
            // Not a status `http` or hyper's client would take.
            0..=99 => return Err(InvalidResponse::Malformed(httparse::Error::Status)),
            101 => return Err(InvalidResponse::UnaskedUpgrade),
            100..=199 => return Ok(Parsed::Interim(len)),
            _ => {}
        }
        let offset = |s: &[u8]| (s.as_ptr() as usize - buf.as_ptr() as usize) as u32;
        let span = |s: &[u8]| (offset(s), offset(s) + s.len() as u32);
        let reason = response.reason.unwrap_or("").as_bytes();
        let mut head = ResponseHead {
            status,
            reason: if reason.is_empty() {
                (0, 0)
            } else {
                span(reason)
            },
            http10: response.version == Some(0),
            fields: SmallVec::new(),
            framing: ResponseFraming::UntilClose,
            keep_alive: response.version == Some(1),
            has_date: false,
            connection_lists: false,
        };
        let mut framing = FramingFields::default();
        for header in response.headers.iter() {
            let name = header.name.as_bytes();
            if name.len() > MAX_NAME {
                return Err(InvalidResponse::Malformed(httparse::Error::HeaderName));
            }
            let field = ResponseField {
                name: span(name),
                value: span(header.value),
                known: Known::of(name),
            };
            framing.note(&field, buf, &mut head);
            head.fields.push(field);
        }
        head.framing = framing.decide(&head, to_head)?;
        Ok(Parsed::Complete(Box::new(head), len))
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the pod answered in HTTP/1.0.
    pub fn is_http10(&self) -> bool {
        self.http10
    }

    /// The reason phrase as the pod sent it (empty when it sent none).
    pub fn reason<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.reason.0 as usize..self.reason.1 as usize]
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[ResponseField] {
        &self.fields
    }

    /// How the body is framed on the pod's connection.
    pub fn framing(&self) -> ResponseFraming {
        self.framing
    }

    /// Whether the pod keeps the connection open after this response (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `Connection: keep-alive`, and a body that does not
    /// end with the connection).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive && self.framing != ResponseFraming::UntilClose
    }

    /// Whether the pod sent a `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Whether the pod listed `name` in a `Connection` field (such a field is hop-by-hop).
    pub fn is_connection_listed(&self, head: &[u8], name: &[u8]) -> bool {
        self.connection_lists
            && self
                .fields
                .iter()
                .filter(|f| f.known == Some(Known::Connection))
                .flat_map(|f| tokens(f.value(head)))
                .any(|token| token.eq_ignore_ascii_case(name))
    }
}

/// The fields that decide a response's framing, as they were seen.
#[derive(Default)]
struct FramingFields {
    length: Option<Result<u64, InvalidResponse>>,
    encoding: Option<bool>,
}

impl FramingFields {
    fn note(&mut self, field: &ResponseField, buf: &[u8], head: &mut ResponseHead) {
        let value = field.value(buf);
        match field.known {
            Some(Known::ContentLength) => {
                self.length = Some(match (self.length, content_length(value)) {
                    (Some(Err(e)), _) => Err(e),
                    (_, None) => Err(InvalidResponse::InvalidLength),
                    (Some(Ok(seen)), Some(n)) if seen != n => Err(InvalidResponse::InvalidLength),
                    (_, Some(n)) => Ok(n),
                });
            }
            Some(Known::TransferEncoding) => {
                // The last coding of the last field decides.
                let last = tokens(value).last().unwrap_or_default();
                self.encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            Some(Known::Connection) => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        head.keep_alive |= head.http10;
                    } else {
                        head.connection_lists |= lists_a_field(token);
                    }
                }
            }
            None if field.name(buf).eq_ignore_ascii_case(b"date") => head.has_date = true,
            _ => {}
        }
    }

    fn decide(
        &self,
        head: &ResponseHead,
        to_head: bool,
    ) -> Result<ResponseFraming, InvalidResponse> {
        if to_head || head.status == 204 || head.status == 304 {
            return Ok(ResponseFraming::Empty);
        }
        match (self.encoding, self.length) {
            (Some(_), _) if head.http10 => Err(InvalidResponse::TransferEncodingOnHttp10),
            (Some(true), _) => Ok(ResponseFraming::Chunked),
            (Some(false), _) => Ok(ResponseFraming::UntilClose),
            (None, Some(Ok(0))) => Ok(ResponseFraming::Empty),
            (None, Some(Ok(n))) => Ok(ResponseFraming::Length(n)),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Ok(ResponseFraming::UntilClose),
        }
    }
}

/// A `Content-Length` value: one decimal number, or a list of equal ones (`5, 5`).
fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = token.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|seen| seen != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(head: &str, to_head: bool) -> (Box<ResponseHead>, usize) {
        match ResponseHead::parse(head.as_bytes(), to_head) {
            Ok(Parsed::Complete(h, len)) => (h, len),
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn framing(head: &str) -> Result<ResponseFraming, InvalidResponse> {
        match ResponseHead::parse(head.as_bytes(), false)? {
            Parsed::Complete(h, _) => Ok(h.framing()),
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn a_head_is_indexed_in_place() {
        let text =
            "HTTP/1.1 299 Custom Reason\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
                    Connection: x-hop\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\nhello";
        let (head, len) = complete(text, false);
        let bytes = text.as_bytes();
        assert_eq!(&text[len..], "hello");
        assert_eq!(head.status(), 299);
        assert_eq!(head.reason(bytes), b"Custom Reason");
        assert_eq!(head.framing(), ResponseFraming::Length(5));
        assert!(head.keep_alive() && head.has_date());
        assert!(head.is_connection_listed(bytes, b"X-Hop"));
        let names: Vec<_> = head.fields().iter().map(|f| f.name(bytes)).collect();
        assert_eq!(
            names,
            [
                &b"Content-Type"[..],
                b"Content-Length",
                b"Connection",
                b"Date"
            ]
        );
        assert_eq!(head.fields()[1].known(), Some(Known::ContentLength));
        let (head, _) = complete("HTTP/1.1 204\r\n\r\n", false);
        assert_eq!(head.reason(b"HTTP/1.1 204\r\n\r\n"), b"");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use ResponseFraming::*;
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Ok(Empty)),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Ok(Length(7)),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
                Ok(Length(7)),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                Ok(Chunked),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Ok(UntilClose),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Ok(UntilClose)),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                Ok(Empty),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Empty),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
                Err(InvalidResponse::InvalidLength),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                Err(InvalidResponse::InvalidLength),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: x\r\n\r\n",
                Err(InvalidResponse::InvalidLength),
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(InvalidResponse::TransferEncodingOnHttp10),
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(framing(head), expected, "{head:?}");
        }
        let (head, _) = complete("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(head.framing(), Empty, "a response to HEAD has no body");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", true),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Close\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false),
        ];
        for (head, keep_alive) in cases {
            assert_eq!(complete(head, false).0.keep_alive(), keep_alive, "{head:?}");
        }
    }

    #[test]
    fn interim_partial_and_invalid_heads() {
        let text = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(
            ResponseHead::parse(text, false),
            Ok(Parsed::Interim(25))
        ));
        assert!(matches!(
            ResponseHead::parse(&text[25..], false),
            Ok(Parsed::Partial)
        ));
        let refused = [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"garbage\r\n\r\n",
        ];
        for head in refused {
            assert!(
                ResponseHead::parse(head, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            ResponseHead::parse(head.as_bytes(), false).err(),
            Some(InvalidResponse::TooManyFields)
        );
    }
}
