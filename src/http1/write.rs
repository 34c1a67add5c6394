//! Writing the heads the byte-level path forwards: the request as the pod gets it, and the
//! field lines every response head is made of (the response's rules are `reply`'s, one set for
//! the router's own answers and the pod's). The fields of a request being forwarded are copied
//! as they came, except those HTTP says never cross a proxy (hop-by-hop fields, the fields a
//! `Connection` field lists); the caller names the fields it replaces and writes its own (a
//! request's framing fields too).
//!
//! The choices hyper made on this path before, kept: requests go out as HTTP/1.1; a chunked
//! request body is sent chunked, without its extensions and trailers (a chunked `GET` body too,
//! which hyper dropped); a body of known length goes with `content-length`.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::head::{Known, RequestHead};

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

    /// Goes on with a head whose first line is already in `out`.
    pub fn continuing(out: &'a mut Vec<u8>) -> Self {
        HeadWriter { out }
    }

    /// Adds a field whose `values` are joined on one line with `, `, and `, chunked` after them
    /// when `add_chunked`.
    pub fn joined_field<'v>(
        &mut self,
        name: &[u8],
        values: impl Iterator<Item = &'v [u8]>,
        add_chunked: bool,
    ) -> &mut Self {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        for (i, value) in values.enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.out.extend_from_slice(value);
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

    /// Adds a field, its name written lowercase.
    pub fn field_lowercased(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        let start = self.out.len();
        self.field(name, value);
        self.out[start..start + name.len()].make_ascii_lowercase();
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

    use crate::http1::head::test_head as request;

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
