//! Why an HTTP/1 request is refused before it reaches the proxy, with the status, code and
//! message the client gets (the framing table of `docs/ARCHITECTURE.md`).

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The head is over `max_header_bytes`.
    HeadTooLarge,
    /// More than `max_headers` fields.
    TooManyHeaders,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// Several `Content-Length` fields.
    DuplicateLength,
    /// A `Content-Length` that is not a plain decimal number.
    InvalidLength,
    /// A transfer coding other than `chunked`, repeated, or on HTTP/1.0.
    InvalidTransferEncoding,
    /// A folded (obs-fold) field line.
    ObsFold,
    /// A malformed field line (no colon, whitespace before the colon, empty name, a character
    /// a field name or value may not hold).
    InvalidHeaderLine,
    /// A line ending in LF without CR.
    BareLineFeed,
    /// A malformed request line: method, target or version.
    InvalidRequestLine,
    /// A malformed chunk size line, chunk end or trailer.
    InvalidChunk,
    /// An HTTP/1.1 request without a `Host` field (RFC 9112 §3.2).
    MissingHost,
    /// Several `Host` fields.
    DuplicateHost,
}

impl Violation {
    /// The status the client gets.
    pub fn status(self) -> http::StatusCode {
        match self {
            Violation::HeadTooLarge | Violation::TooManyHeaders => {
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The stable error code.
    pub fn code(self) -> &'static str {
        match self {
            Violation::HeadTooLarge | Violation::TooManyHeaders => "RequestHeaderFieldsTooLarge",
            Violation::MissingHost | Violation::DuplicateHost => "InvalidHost",
            _ => "BadRequestFraming",
        }
    }

    /// What is wrong, for the client.
    pub fn message(self) -> &'static str {
        match self {
            Violation::HeadTooLarge => "the request head is larger than the router accepts",
            Violation::TooManyHeaders => {
                "the request has more header fields than the router accepts"
            }
            Violation::LengthAndChunked => {
                "the request has both Content-Length and Transfer-Encoding"
            }
            Violation::DuplicateLength => "the request has more than one Content-Length",
            Violation::InvalidLength => {
                "the request's Content-Length is not a plain decimal number"
            }
            Violation::InvalidTransferEncoding => {
                "the request's Transfer-Encoding is not exactly `chunked`"
            }
            Violation::ObsFold => "the request has a folded header line (obs-fold)",
            Violation::InvalidHeaderLine => "the request has a malformed header line",
            Violation::BareLineFeed => "the request has a line ending without CR",
            Violation::InvalidRequestLine => {
                "the request line is malformed: send `METHOD /path HTTP/1.1`"
            }
            Violation::InvalidChunk => "the request body's chunked framing is malformed",
            Violation::MissingHost => "an HTTP/1.1 request needs a Host header",
            Violation::DuplicateHost => "the request has more than one Host header",
        }
    }
}
