//! Writing HTTP/1.1 messages as bytes.

use http::{HeaderMap, StatusCode};

/// A whole HTTP/1.1 response: the status line, `headers` and a `content-length` for `body`,
/// then the body.
pub fn response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len() + 48 * headers.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use http::header::{CONNECTION, CONTENT_TYPE};
    use http::HeaderValue;

    use super::*;

    #[test]
    fn a_response_is_a_status_line_headers_and_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        let bytes = response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &headers, b"{}");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
