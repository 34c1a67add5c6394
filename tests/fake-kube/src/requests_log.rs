//! A log of every request the fake served, for tests that pin what the client sends.

use std::time::SystemTime;

use parking_lot::Mutex;

/// One request as received, with the status the fake answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// URL path without the query.
    pub path: String,
    /// The raw query string exactly as received (without the `?`), if there was one.
    pub query: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// The `Accept-Encoding` header.
    pub accept_encoding: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// The HTTP status code the fake answered with.
    pub status: u16,
    /// When the request arrived.
    pub at: SystemTime,
}

impl RecordedRequest {
    /// `path?query` as it appeared on the request line.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// The decoded query parameters, in order (empty pairs such as kube's leading `&` skipped).
    pub fn params(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The first value of a decoded query parameter.
    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Whether this was a watch (`watch=true`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

/// The shared, append-only request log.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    entries: Mutex<Vec<RecordedRequest>>,
}

impl RequestLog {
    pub(crate) fn push(&self, request: RecordedRequest) {
        self.entries.lock().push(request);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.entries.lock().clone()
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}
