//! The head of a response written to an HTTP/1.1 client, by the rules hyper's HTTP/1 server
//! applied on this path before the byte-level server path (`server::h1`) took it over, so that
//! clients see the same bytes. One set of rules, two sources: `http` parts ([`response_head`],
//! the router's own answers) and field lines in a header map's order ([`head`], a pod's head
//! written from its bytes by `relay`):
//!
//! * the status line in the response's version, `HTTP/1.1 200 OK` written at once, a custom
//!   reason phrase ([`hyper::ext::ReasonPhrase`]) as it is, else the canonical one (`<none>`);
//! * the fields in the map's order, lowercase names, one line per value, but `Content-Length`
//!   (kept, once, for a body of known length; dropped for an empty body except in the answer to
//!   `HEAD`), `Transfer-Encoding` and `Connection` (their values joined on one line);
//! * the framing when no field gave it: `content-length` for a body of known length
//!   (`content-length: 0` for none, but for `HEAD`, 204 and 304), `transfer-encoding: chunked`
//!   otherwise (until the close for an HTTP/1.0 response or where chunks may not go);
//! * `date` when the response has none; `connection: close` when the connection ends after it.

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{HeaderName, StatusCode, Version};
use smallvec::SmallVec;

use super::body::BodyEncoder;
use super::write::HeadWriter;

/// What is known of the body about to be written, before its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// It has already ended: nothing to write.
    Ended,
    /// Exactly this many bytes.
    Known(u64),
    /// Unknown until it ends.
    Unknown,
}

/// How the body goes to the client after the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Not at all (`HEAD`, 204, 304, or nothing to send): the body is not read.
    None,
    /// With the encoder.
    Body(BodyEncoder),
}

/// The request's side of the answer.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// Whether the request was `HEAD`.
    pub head_request: bool,
    /// Whether the connection stays open after this response (else `connection: close`).
    pub keep_alive: bool,
}

/// What a field is to these rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Date`.
    Date,
    /// Any other field: written as it is.
    Other,
}

impl FieldKind {
    /// The kind of the field `name` (ASCII case-insensitive).
    pub fn of(name: &[u8]) -> Self {
        let is = |candidate: &[u8]| name.eq_ignore_ascii_case(candidate);
        match name.len() {
            4 if is(b"date") => FieldKind::Date,
            10 if is(b"connection") => FieldKind::Connection,
            14 if is(b"content-length") => FieldKind::ContentLength,
            17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
            _ => FieldKind::Other,
        }
    }

    fn of_name(name: &HeaderName) -> Self {
        match *name {
            CONTENT_LENGTH => FieldKind::ContentLength,
            TRANSFER_ENCODING => FieldKind::TransferEncoding,
            CONNECTION => FieldKind::Connection,
            DATE => FieldKind::Date,
            _ => FieldKind::Other,
        }
    }
}

/// One field line of a response, in the order an `http::HeaderMap` walks its fields: the
/// values of one name consecutive, the first of them marked.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// The name (written lowercase).
    pub name: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// What the name is to these rules.
    pub kind: FieldKind,
    /// Whether this is the first value of its name.
    pub first: bool,
}

/// The status line of a response.
#[derive(Clone, Copy, Debug)]
pub struct Status<'a> {
    /// The response's version is HTTP/1.0.
    pub http10: bool,
    /// The status code (100 to 999).
    pub code: u16,
    /// A reason phrase other than the status's canonical one, written as it is.
    pub custom_reason: Option<&'a [u8]>,
}

/// Writes the head of a response with `parts` and a body of `length` to `out`. Returns how the
/// body is written, and whether the connection must close after it.
pub fn response_head(
    out: &mut Vec<u8>,
    parts: &Parts,
    length: BodyLength,
    asked: Asked,
) -> (Framing, bool) {
    let status = Status {
        http10: parts.version == Version::HTTP_10,
        code: parts.status.as_u16(),
        custom_reason: parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|reason| reason.as_bytes()),
    };
    let mut previous = None;
    let lines = parts.headers.iter().map(|(name, value)| {
        let first = previous != Some(name);
        previous = Some(name);
        Line {
            name: name.as_str().as_bytes(),
            value: value.as_bytes(),
            kind: FieldKind::of_name(name),
            first,
        }
    });
    head(out, status, lines, length, asked)
}

/// Writes the head of a response with `status`, the field `lines` (in a header map's order) and
/// a body of `length` to `out`, by the rules of this module. Returns how the body is written,
/// and whether the connection must close after it.
pub fn head<'a>(
    out: &mut Vec<u8>,
    status: Status<'_>,
    lines: impl Iterator<Item = Line<'a>>,
    length: BodyLength,
    asked: Asked,
) -> (Framing, bool) {
    status_line(out, status);
    let mut writer = HeadWriter::continuing(out);
    let chunks_allowed = !status.http10 && can_chunk(status.code, asked);
    let written = fields(&mut writer, lines, length, asked, chunks_allowed);
    if !asked.keep_alive && !written.connection {
        writer.field(b"connection", b"close");
    }
    let mut framing = match written.framing {
        Some(encoder) => Framing::Body(encoder),
        None => implied_framing(&mut writer, status.code, length, asked, chunks_allowed),
    };
    if !can_chunk(status.code, asked) || length == BodyLength::Ended {
        framing = Framing::None;
    }
    if !written.date {
        writer.date();
    }
    writer.finish();
    let until_close = framing == Framing::Body(BodyEncoder::UntilClose);
    (framing, !asked.keep_alive || written.close || until_close)
}

/// What writing a response's own fields settled.
struct Written {
    /// The framing its fields gave, if any.
    framing: Option<BodyEncoder>,
    /// Whether it had a `date`.
    date: bool,
    /// Whether it had a `Connection` field, and whether that says `close`.
    connection: bool,
    close: bool,
}

/// Writes the response's field `lines` in their order (walked once, without a lookup by name);
/// `Connection` gets `close` added when the connection ends after this response.
fn fields<'a>(
    writer: &mut HeadWriter<'_>,
    lines: impl Iterator<Item = Line<'a>>,
    length: BodyLength,
    asked: Asked,
    chunks_allowed: bool,
) -> Written {
    let mut written = Written {
        framing: None,
        date: false,
        connection: false,
        close: false,
    };
    let mut lines = lines.peekable();
    while let Some(line) = lines.next() {
        if !matches!(
            line.kind,
            FieldKind::ContentLength | FieldKind::TransferEncoding | FieldKind::Connection
        ) {
            written.date |= line.kind == FieldKind::Date;
            writer.field_lowercased(line.name, line.value);
            continue;
        }
        // A name's values are consecutive in the map's order.
        let mut values: SmallVec<[&[u8]; 2]> = SmallVec::new();
        values.push(line.value);
        while let Some(more) = lines.next_if(|next| !next.first) {
            values.push(more.value);
        }
        match line.kind {
            FieldKind::ContentLength => match length {
                BodyLength::Known(_) | BodyLength::Unknown => {
                    writer.field(b"content-length", line.value);
                    written.framing = Some(BodyEncoder::Length);
                }
                BodyLength::Ended if asked.head_request => {
                    for value in &values {
                        writer.field(b"content-length", value);
                    }
                    written.framing = Some(BodyEncoder::Length);
                }
                BodyLength::Ended => {}
            },
            FieldKind::TransferEncoding if chunks_allowed => {
                let chunked_last = values.last().is_some_and(|v| is_chunked(v));
                writer.joined_field(b"transfer-encoding", values.iter().copied(), !chunked_last);
                written.framing = Some(BodyEncoder::Chunked);
            }
            FieldKind::TransferEncoding => {}
            _ => {
                written.connection = true;
                written.close = values.iter().any(|v| lists_close(v));
                writer.joined_field(b"connection", values.iter().copied(), false);
                if !asked.keep_alive && !written.close {
                    writer.append_to_last(b", close");
                }
            }
        }
    }
    written
}

/// The framing fields of a response whose fields gave none.
fn implied_framing(
    writer: &mut HeadWriter<'_>,
    code: u16,
    length: BodyLength,
    asked: Asked,
    chunks_allowed: bool,
) -> Framing {
    let may_have_length = may_have_body(code);
    match length {
        BodyLength::Unknown if chunks_allowed => {
            writer.field(b"transfer-encoding", b"chunked");
            Framing::Body(BodyEncoder::Chunked)
        }
        BodyLength::Unknown => Framing::Body(BodyEncoder::UntilClose),
        BodyLength::Ended | BodyLength::Known(0) => {
            if may_have_length && !asked.head_request {
                writer.field(b"content-length", b"0");
            }
            Framing::Body(BodyEncoder::Length)
        }
        BodyLength::Known(n) if may_have_length => {
            writer.field(b"content-length", itoa::Buffer::new().format(n).as_bytes());
            Framing::Body(BodyEncoder::Length)
        }
        BodyLength::Known(_) => Framing::None,
    }
}

/// The status line: the response's version, its status, and its reason phrase (the custom one,
/// else the canonical one, else `<none>`).
fn status_line(out: &mut Vec<u8>, status: Status<'_>) {
    if !status.http10 && status.code == 200 && status.custom_reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(match status.http10 {
        true => b"HTTP/1.0 ",
        false => b"HTTP/1.1 ",
    });
    out.extend_from_slice(itoa::Buffer::new().format(status.code).as_bytes());
    out.push(b' ');
    match status.custom_reason {
        Some(reason) => out.extend_from_slice(reason),
        None => out.extend_from_slice(canonical_reason(status.code).unwrap_or("<none>").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
}

/// The canonical reason phrase of `code`, when it has one.
pub fn canonical_reason(code: u16) -> Option<&'static str> {
    StatusCode::from_u16(code).ok()?.canonical_reason()
}

/// Whether a response of status `code` may have a body (not 1xx, 204 or 304).
fn may_have_body(code: u16) -> bool {
    !matches!(code, 100..=199 | 204 | 304)
}

/// Whether a response to the request may carry a body (and so chunks).
fn can_chunk(code: u16, asked: Asked) -> bool {
    !asked.head_request && may_have_body(code)
}

/// Whether a `Transfer-Encoding` value ends with `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a `Connection` value lists `close`.
fn lists_close(value: &[u8]) -> bool {
    super::head::tokens(value).any(|t| t.eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use http::header::{CONTENT_TYPE, RETRY_AFTER};
    use http::HeaderValue;

    use super::*;

    const KEEP: Asked = Asked {
        head_request: false,
        keep_alive: true,
    };

    fn parts(status: u16, fields: &[(&'static str, &'static str)]) -> Parts {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        for (name, value) in fields {
            response
                .headers_mut()
                .append(*name, HeaderValue::from_static(value));
        }
        response.into_parts().0
    }

    fn head(parts: &Parts, length: BodyLength, asked: Asked) -> (String, Framing, bool) {
        let mut out = Vec::new();
        let (framing, close) = response_head(&mut out, parts, length, asked);
        let text = String::from_utf8(out).unwrap();
        let now = |l: &&str| l.starts_with("date: ") && l.len() == 35;
        let dated = text.split("\r\n").filter(now).count();
        assert!(dated == 1 || text.contains("date: x"), "{text}");
        let text = text
            .split("\r\n")
            .filter(|l| !now(l))
            .collect::<Vec<_>>()
            .join("\r\n");
        (text, framing, close)
    }

    #[test]
    fn a_known_length_is_written_once_and_the_fields_keep_their_order() {
        let p = parts(
            200,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("content-length", "2"),
            ],
        );
        let (text, framing, close) = head(&p, BodyLength::Known(2), KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nset-cookie: a=1\r\n\
             set-cookie: b=2\r\ncontent-length: 2\r\n\r\n"
        );
        assert_eq!(
            (framing, close),
            (Framing::Body(BodyEncoder::Length), false)
        );
        let p = parts(503, &[(RETRY_AFTER.as_str(), "1")]);
        let (text, framing, _) = head(&p, BodyLength::Known(9), KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 9\r\n\r\n"
        );
        assert_eq!(framing, Framing::Body(BodyEncoder::Length));
    }

    #[test]
    fn repeated_framing_and_connection_values_are_joined_or_kept_once() {
        let p = parts(
            200,
            &[
                ("connection", "x-a"),
                ("content-length", "2"),
                ("content-length", "2"),
                ("connection", "x-b"),
                ("x-after", "1"),
            ],
        );
        let (text, framing, close) = head(&p, BodyLength::Known(2), KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nconnection: x-a, x-b\r\ncontent-length: 2\r\nx-after: 1\r\n\r\n"
        );
        assert_eq!(
            (framing, close),
            (Framing::Body(BodyEncoder::Length), false)
        );
        let p = parts(200, &[("transfer-encoding", "gzip"), ("x-after", "1")]);
        let (text, framing, _) = head(&p, BodyLength::Unknown, KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nx-after: 1\r\n\r\n"
        );
        assert_eq!(framing, Framing::Body(BodyEncoder::Chunked));
    }

    #[test]
    fn an_unknown_length_is_chunked_and_an_ended_body_is_empty() {
        let p = parts(200, &[(CONTENT_TYPE.as_str(), "text/event-stream")]);
        let (text, framing, _) = head(&p, BodyLength::Unknown, KEEP);
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        assert_eq!(framing, Framing::Body(BodyEncoder::Chunked));
        let p = parts(200, &[("content-length", "0")]);
        let (text, framing, _) = head(&p, BodyLength::Ended, KEEP);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn head_204_and_304_keep_hypers_rules() {
        let asked_head = Asked {
            head_request: true,
            ..KEEP
        };
        let p = parts(200, &[("content-length", "9")]);
        let (text, framing, _) = head(&p, BodyLength::Ended, asked_head);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n");
        assert_eq!(framing, Framing::None);
        let p = parts(200, &[]);
        let (text, ..) = head(&p, BodyLength::Ended, asked_head);
        assert_eq!(text, "HTTP/1.1 200 OK\r\n\r\n");
        let p = parts(204, &[("content-length", "9")]);
        let (text, framing, _) = head(&p, BodyLength::Ended, KEEP);
        assert_eq!(text, "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(framing, Framing::None);
        let p = parts(304, &[]);
        let (text, framing, _) = head(&p, BodyLength::Known(5), KEEP);
        assert_eq!(text, "HTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn closing_custom_reasons_dates_and_http10_responses() {
        let closing = Asked {
            keep_alive: false,
            ..KEEP
        };
        let mut p = parts(200, &[("Date", "x")]);
        p.extensions
            .insert(hyper::ext::ReasonPhrase::from_static(b"Fine"));
        let (text, _, close) = head(&p, BodyLength::Known(1), closing);
        assert_eq!(
            text,
            "HTTP/1.1 200 Fine\r\ndate: x\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"
        );
        assert!(close);
        let p = parts(200, &[("connection", "x-hop")]);
        let (text, _, close) = head(&p, BodyLength::Known(1), closing);
        assert!(text.contains("\r\nconnection: x-hop, close\r\n"), "{text}");
        assert!(close);
        let p = parts(799, &[("connection", "close")]);
        let (text, _, close) = head(&p, BodyLength::Known(1), KEEP);
        assert_eq!(
            text,
            "HTTP/1.1 799 <none>\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"
        );
        assert!(close);
        let mut p = parts(201, &[]);
        p.version = Version::HTTP_10;
        let (text, framing, close) = head(&p, BodyLength::Unknown, KEEP);
        assert_eq!(text, "HTTP/1.0 201 Created\r\n\r\n");
        assert_eq!(
            (framing, close),
            (Framing::Body(BodyEncoder::UntilClose), true)
        );
    }
}
