//! Writing the heads the byte-level path forwards: the request as the pod gets it and the
//! response as the client gets it. The fields of the message being forwarded are copied as
//! they came, except those HTTP says never cross a proxy (hop-by-hop fields, the fields a
//! `Connection` field lists; a response's framing fields, which are written for the body as it
//! is sent — a request's are the caller's); the caller names the fields it replaces and writes
//! its own.
//!
//! The choices hyper made on this path before, kept: requests go out as HTTP/1.1; a chunked
//! request body is sent chunked, without its extensions and trailers (a chunked `GET` body too,
//! which hyper dropped); a body of known length goes with `content-length`; a response is written in
//! the client's version with the pod's status and reason phrase, `Content-Length` when the pod
//! framed the body by length (`content-length: 0` when it has none), chunked otherwise (or
//! until close for an HTTP/1.0 client), the pod's `Content-Length` as it is for `HEAD`, none for
//! 204 and 304, and a `date` when the pod sent none.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::body::BodyEncoder;
use super::head::{Known, RequestHead, Version};
use super::response::{ResponseFraming, ResponseHead};

/// An HTTP/1.1 head being written into a buffer.
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> HeadWriter<'a> {
    /// Starts a request head: `method target HTTP/1.1`, the target given in parts.
    pub fn request(out: &'a mut Vec<u8>, method: &[u8], target: &[&[u8]]) -> Self {
        out.extend_from_slice(method);
        out.push(b' ');
        for part in target {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { out }
    }

    /// Starts a response head in `version` with `status` and `reason` (the status's canonical
    /// reason when empty).
    pub fn response(out: &'a mut Vec<u8>, version: Version, status: u16, reason: &[u8]) -> Self {
        out.extend_from_slice(match version {
            Version::Http11 => b"HTTP/1.1 ",
            Version::Http10 => b"HTTP/1.0 ",
        });
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        if reason.is_empty() {
            let canonical = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason());
            out.extend_from_slice(canonical.unwrap_or("<none>").as_bytes());
        } else {
            out.extend_from_slice(reason);
        }
        out.extend_from_slice(b"\r\n");
        HeadWriter { out }
    }

    /// Goes on with a head whose first line is already in `out`.
    pub fn continuing(out: &'a mut Vec<u8>) -> Self {
        HeadWriter { out }
    }

    /// Adds a field whose `values` are joined on one line with `, `, and `, chunked` after them
    /// when `add_chunked`.
    pub fn joined_field<'v>(
        &mut self,
        name: &[u8],
        values: impl Iterator<Item = &'v http::HeaderValue>,
        add_chunked: bool,
    ) -> &mut Self {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        for (i, value) in values.enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.out.extend_from_slice(value.as_bytes());
        }
        if add_chunked {
            self.out.extend_from_slice(b", chunked");
        }
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Appends `text` to the value of the field written last.
    pub fn append_to_last(&mut self, text: &[u8]) -> &mut Self {
        let end = self.out.len() - 2;
        self.out.splice(end..end, text.iter().copied());
        self
    }

    /// Adds a field.
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        self.out.reserve(name.len() + value.len() + 4);
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Adds `date` with the current time (formatted once a second per thread).
    pub fn date(&mut self) -> &mut Self {
        DATE.with(|date| {
            let mut date = date.borrow_mut();
            date.refresh();
            self.out.extend_from_slice(b"date: ");
            self.out.extend_from_slice(&date.text);
            self.out.extend_from_slice(b"\r\n");
        });
        self
    }

    /// Adds a field whose value is `parts` one after the other.
    pub fn field_parts(&mut self, name: &[u8], parts: &[&[u8]]) -> &mut Self {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        for part in parts {
            self.out.extend_from_slice(part);
        }
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Copies the fields of `head` that may cross a proxy, as they came, in order: all but the
    /// hop-by-hop ones, those a `Connection` field lists, and the kinds `replaced` names.
    /// Consecutive kept lines are copied at once.
    pub fn request_fields(&mut self, head: &RequestHead, mut replaced: impl FnMut(Known) -> bool) {
        let bytes = head.bytes();
        let mut run: Option<(usize, usize)> = None;
        for field in head.fields() {
            let line = field.line_range();
            let keep = match field.known() {
                Some(known) if known.is_hop_by_hop() || replaced(known) => false,
                _ => !head.is_connection_listed(field.name(bytes)),
            };
            run = match (keep, run) {
                (true, Some((start, _))) => Some((start, line.1)),
                (true, None) => Some(line),
                (false, Some((start, end))) => {
                    self.out.extend_from_slice(&bytes[start..end]);
                    None
                }
                (false, None) => None,
            };
        }
        if let Some((start, end)) = run {
            self.out.extend_from_slice(&bytes[start..end]);
        }
    }

    /// Copies the fields of the pod's response `head` (parsed from `bytes`) that may cross a
    /// proxy; `replaced` names the other fields not to copy. `Content-Length` is copied only
    /// when `keep_length` says so.
    pub fn response_fields(
        &mut self,
        head: &ResponseHead,
        bytes: &[u8],
        keep_length: bool,
        mut replaced: impl FnMut(&[u8]) -> bool,
    ) {
        for field in head.fields() {
            let keep = match field.known() {
                Some(Known::ContentLength) => keep_length,
                Some(known) if known.is_hop_by_hop() => false,
                _ => {
                    let name = field.name(bytes);
                    !replaced(name) && !head.is_connection_listed(bytes, name)
                }
            };
            if keep {
                self.field(field.name(bytes), field.value(bytes));
            }
        }
    }

    /// Ends the head (the empty line).
    pub fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Writes the start of the head of `request` as the pod gets it: the method, `target` (in
/// parts), the fields that may cross a proxy as they came (a `Content-Length` among them), but
/// the kinds `replaced` names; then `extra` adds the caller's fields. The framing field and the
/// empty line that ends the head are the caller's to write (`upstream::codec`).
pub fn forward_request(
    out: &mut Vec<u8>,
    request: &RequestHead,
    target: &[&[u8]],
    replaced: impl FnMut(Known) -> bool,
    extra: impl FnOnce(&mut HeadWriter<'_>),
) {
    let mut head = HeadWriter::request(out, request.method(), target);
    head.request_fields(request, replaced);
    extra(&mut head);
}

/// The client's side of a response: what decides its version and framing.
#[derive(Clone, Copy, Debug)]
pub struct ClientSide {
    /// The version of the client's request.
    pub version: Version,
    /// Whether the request was `HEAD`.
    pub head_request: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Writes the head of the pod's `response` (parsed from `bytes`) as the client gets it: the
/// client's version, the pod's status and reason, the fields that may cross a proxy except
/// those `replaced` names, the framing, `date` when the pod sent none, `connection` as
/// `client` says; `extra` adds the caller's fields. Returns how the body is written, and
/// whether the connection must close after it (a body only the close can end).
pub fn client_response(
    out: &mut Vec<u8>,
    response: &ResponseHead,
    bytes: &[u8],
    client: ClientSide,
    replaced: impl FnMut(&[u8]) -> bool,
    extra: impl FnOnce(&mut HeadWriter<'_>),
) -> (BodyEncoder, bool) {
    let status = response.status();
    let mut head = HeadWriter::response(out, client.version, status, response.reason(bytes));
    head.response_fields(response, bytes, client.head_request, replaced);
    let bodiless = status == 204 || status == 304;
    let (encoder, must_close) = match response.framing() {
        _ if client.head_request || bodiless => (BodyEncoder::Length, false),
        ResponseFraming::Empty => {
            head.field(b"content-length", b"0");
            (BodyEncoder::Length, false)
        }
        ResponseFraming::Length(n) => {
            head.field(b"content-length", itoa::Buffer::new().format(n).as_bytes());
            (BodyEncoder::Length, false)
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => match client.version {
            Version::Http11 => {
                head.field(b"transfer-encoding", b"chunked");
                (BodyEncoder::Chunked, false)
            }
            Version::Http10 => (BodyEncoder::UntilClose, true),
        },
    };
    extra(&mut head);
    if !response.has_date() {
        head.date();
    }
    let keep_alive = client.keep_alive && !must_close;
    match (keep_alive, client.version) {
        (false, _) => {
            head.field(b"connection", b"close");
        }
        (true, Version::Http10) => {
            head.field(b"connection", b"keep-alive");
        }
        (true, Version::Http11) => {}
    }
    head.finish();
    (encoder, !keep_alive)
}

/// The `date` value of this second, per thread.
struct CachedDate {
    text: [u8; 29],
    second: u64,
}

impl CachedDate {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if second != self.second {
            let rounded = UNIX_EPOCH + Duration::from_secs(second);
            let text = httpdate::fmt_http_date(rounded);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { text: *b"Thu, 01 Jan 1970 00:00:00 GMT", second: 0 })
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::response::Parsed;

    use crate::http1::head::test_head as request;

    fn response(text: &str, to_head: bool) -> ResponseHead {
        match ResponseHead::parse(text.as_bytes(), to_head).unwrap() {
            Parsed::Complete(head, _) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_forwarded_request_keeps_what_may_cross_and_adds_the_callers_fields() {
        let head = request(
            "POST /api/v1/endpoint/ep/score?a=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer k\r\n\
             Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nX-Kept: 1\r\n\
             X-Kept-Too: 2\r\nTransfer-Encoding: chunked\r\nUpgrade: x\r\nAccept: */*\r\n\r\n",
        );
        let mut out = Vec::new();
        forward_request(
            &mut out,
            &head,
            &[b"/score", b"?", b"a=1"],
            |known| known == Known::Authorization,
            |w| {
                w.field(b"x-forwarded-proto", b"http");
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /score?a=1 HTTP/1.1\r\nHost: h\r\nX-Kept: 1\r\nX-Kept-Too: 2\r\nAccept: */*\r\n\
             x-forwarded-proto: http\r\n"
        );
        let head = request("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        let mut out = Vec::new();
        forward_request(&mut out, &head, &[b"/"], |_| false, |_| {});
        assert_eq!(out, b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n");
        let listed =
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: content-length\r\n\r\n";
        let head = request(listed);
        let mut out = Vec::new();
        forward_request(
            &mut out,
            &head,
            &[b"/"],
            |_| false,
            |w| {
                w.field_parts(b"x-forwarded-for", &[b"a", b", ", b"b"]);
            },
        );
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nHost: h\r\nx-forwarded-for: a, b\r\n"
        );
    }

    fn client_head(pod: &str, client: ClientSide) -> (String, BodyEncoder, bool) {
        let head = response(pod, client.head_request);
        let mut out = Vec::new();
        let (encoder, close) = client_response(
            &mut out,
            &head,
            pod.as_bytes(),
            client,
            |name| name.eq_ignore_ascii_case(b"x-request-id"),
            |w| {
                w.field(b"x-request-id", b"id");
            },
        );
        (String::from_utf8(out).unwrap(), encoder, close)
    }

    const KEEP_11: ClientSide = ClientSide {
        version: Version::Http11,
        head_request: false,
        keep_alive: true,
    };

    #[test]
    fn a_response_is_reframed_for_the_client() {
        let date = "Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n";
        let (text, encoder, close) = client_head(
            &format!("HTTP/1.1 200 OK\r\n{date}Content-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-Request-Id: pod\r\n\r\n"),
            KEEP_11,
        );
        assert_eq!(
            text,
            format!("HTTP/1.1 200 OK\r\n{date}content-length: 5\r\nx-request-id: id\r\n\r\n")
        );
        assert_eq!((encoder, close), (BodyEncoder::Length, false));
        let pod = format!("HTTP/1.1 201 Made It\r\n{date}Transfer-Encoding: chunked\r\n\r\n");
        let (text, encoder, _) = client_head(&pod, KEEP_11);
        assert!(text.starts_with("HTTP/1.1 201 Made It\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(encoder, BodyEncoder::Chunked);
        let http10 = ClientSide {
            version: Version::Http10,
            keep_alive: true,
            ..KEEP_11
        };
        let (text, encoder, close) = client_head(&pod, http10);
        assert!(text.starts_with("HTTP/1.0 201 Made It\r\n") && text.contains("connection: close"));
        assert_eq!((encoder, close), (BodyEncoder::UntilClose, true));
        let (text, _, close) = client_head(
            &format!("HTTP/1.1 200 OK\r\n{date}Content-Length: 1\r\n\r\n"),
            http10,
        );
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert!(!close);
    }

    #[test]
    fn bodiless_responses_and_head_keep_their_rules() {
        let head_request = ClientSide {
            head_request: true,
            ..KEEP_11
        };
        let (text, ..) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", head_request);
        assert!(
            text.contains("Content-Length: 9\r\n"),
            "HEAD keeps the length: {text}"
        );
        let (text, ..) = client_head(
            "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            KEEP_11,
        );
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        let (text, ..) = client_head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", KEEP_11);
        assert!(
            text.contains("content-length: 0\r\n") && text.contains("date: "),
            "{text}"
        );
        let (text, _, close) = client_head(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            ClientSide {
                keep_alive: false,
                ..KEEP_11
            },
        );
        assert!(text.contains("connection: close\r\n") && close);
        let (text, ..) = client_head("HTTP/1.1 799\r\nContent-Length: 0\r\n\r\n", KEEP_11);
        assert!(text.starts_with("HTTP/1.1 799 <none>\r\n"));
    }

    #[test]
    fn the_date_is_an_http_date() {
        let mut out = Vec::new();
        HeadWriter { out: &mut out }.date();
        let text = String::from_utf8(out).unwrap();
        let value = text.strip_prefix("date: ").unwrap().trim_end();
        let parsed = httpdate::parse_http_date(value).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(age < Duration::from_secs(5), "{value}");
    }
}
