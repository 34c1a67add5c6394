//! Step 1 of the request path: which endpoint a request is for, and the path the pod gets.
//!
//! Path routing: `/api/v1/endpoint/{endpoint}/{rest}` goes to the pod's `/{rest}` (query kept).
//! Host routing (when a domain is configured): `Host: {endpoint}.{domain}` keeps the whole path.

/// The scoring URI prefix Azure ML uses for Kubernetes online endpoints.
pub const PATH_PREFIX: &str = "/api/v1/endpoint/";

/// The endpoint named in a path, and the rest of the path (always starting with `/`).
pub fn from_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(PATH_PREFIX)?;
    // A byte search: endpoint names are short, and `str::find` sets up a general searcher.
    let (endpoint, rest) = match after.bytes().position(|b| b == b'/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    (!endpoint.is_empty()).then_some((endpoint, rest))
}

/// The endpoint named by a `Host` (or `:authority`) of the form `{endpoint}.{domain}[:port]`.
/// `domain` is lowercase without a leading dot.
pub fn from_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(']') => {
            &host[..i]
        }
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let split = host.len().checked_sub(domain.len() + 1)?;
    let (endpoint, suffix) = host.split_at(split);
    let suffix_matches = suffix.as_bytes()[0] == b'.' && suffix[1..].eq_ignore_ascii_case(domain);
    (suffix_matches && !endpoint.is_empty() && !endpoint.contains('.')).then_some(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_routing() {
        assert_eq!(
            from_path("/api/v1/endpoint/my-ep/score"),
            Some(("my-ep", "/score"))
        );
        assert_eq!(
            from_path("/api/v1/endpoint/my-ep/swagger.json"),
            Some(("my-ep", "/swagger.json"))
        );
        assert_eq!(
            from_path("/api/v1/endpoint/my-ep/a/b"),
            Some(("my-ep", "/a/b"))
        );
        assert_eq!(from_path("/api/v1/endpoint/my-ep"), Some(("my-ep", "/")));
        assert_eq!(from_path("/api/v1/endpoint/my-ep/"), Some(("my-ep", "/")));
        assert_eq!(from_path("/api/v1/endpoint/"), None);
        assert_eq!(from_path("/api/v1/endpoint//score"), None);
        assert_eq!(from_path("/api/v1/service/x/score"), None);
        assert_eq!(from_path("/"), None);
    }

    #[test]
    fn host_routing() {
        assert_eq!(
            from_host("my-ep.ml.example.com", "ml.example.com"),
            Some("my-ep")
        );
        assert_eq!(
            from_host("My-Ep.ML.example.com:8443", "ml.example.com"),
            Some("My-Ep")
        );
        assert_eq!(
            from_host("my-ep.ml.example.com.", "ml.example.com"),
            Some("my-ep")
        );
        assert_eq!(from_host("ml.example.com", "ml.example.com"), None);
        assert_eq!(from_host("a.b.ml.example.com", "ml.example.com"), None);
        assert_eq!(from_host("my-epxml.example.com", "ml.example.com"), None);
        assert_eq!(from_host("[::1]", "ml.example.com"), None);
        assert_eq!(from_host("", "ml.example.com"), None);
    }
}
