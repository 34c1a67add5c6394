//! A checked request head as an `http` request, for the phases of the proxy that read requests
//! through `http` types (routing, authentication, the pod's request). Built as hyper's HTTP/1
//! server built it: the method, the target as a `Uri`, the version, every field in order with
//! its value trimmed; values share the head's bytes.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

use super::head::{RequestHead, Version};

/// `head` as a request with `body`; `None` when `http` cannot hold a part of it as it is (a
/// target too long for a `Uri`, a value `http` refuses): such a request is left to hyper.
pub fn request<B>(head: &RequestHead, body: B) -> Option<Request<B>> {
    let bytes = head.shared();
    let method = Method::from_bytes(head.method()).ok()?;
    let uri = Uri::from_maybe_shared(bytes.slice_ref(head.target())).ok()?;
    let mut headers = HeaderMap::with_capacity(head.fields().len());
    for field in head.fields() {
        let name = HeaderName::from_bytes(field.name(bytes)).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(field.value(bytes))).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = match head.version() {
        Version::Http11 => http::Version::HTTP_11,
        Version::Http10 => http::Version::HTTP_10,
    };
    *request.headers_mut() = headers;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http1::head::test_head as head;

    #[test]
    fn a_head_becomes_the_request_hyper_made_of_it() {
        let h = head(
            "POST /api/v1/endpoint/ep/score?a=1 HTTP/1.1\r\nHost: x:80\r\nX-Two: 1\r\n\
             Authorization:  Bearer k \r\nx-two: 2\r\nContent-Length: 2\r\n\r\n",
        );
        let built = request(&h, ()).unwrap();
        assert_eq!(built.method(), Method::POST);
        assert_eq!(built.uri().path(), "/api/v1/endpoint/ep/score");
        assert_eq!(built.uri().query(), Some("a=1"));
        assert_eq!(built.version(), http::Version::HTTP_11);
        assert_eq!(built.headers()["authorization"], "Bearer k");
        let twos: Vec<_> = built.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(built.headers().len(), 5);
        let h = head("GET http://x/a HTTP/1.0\r\n\r\n");
        let built = request(&h, ()).unwrap();
        assert_eq!(built.uri().authority().unwrap(), "x");
        assert_eq!(built.version(), http::Version::HTTP_10);
    }
}
