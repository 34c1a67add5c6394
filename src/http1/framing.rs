//! HTTP/1 request framing as the router enforces it before hyper parses anything.
//!
//! [`Framing`] follows the client's byte stream request by request: it gathers each request
//! head, checks it, learns the body's framing (`Content-Length` or `chunked`), and skips the
//! body to find the next head, so every head of a pipelined stream is checked too. What it
//! refuses never reaches the proxy, and the connection is closed after:
//!
//! | refused | status |
//! |---|---|
//! | head larger than `max_header_bytes`, or more than `max_headers` fields | 431 |
//! | `Content-Length` together with `Transfer-Encoding` | 400 |
//! | more than one `Content-Length` (even equal), or one that is not plain digits (`+3`, `1,1`) | 400 |
//! | a `Transfer-Encoding` other than exactly `chunked`, or in more than one field, or on HTTP/1.0 | 400 |
//! | obs-fold (a field line starting with a space or tab), whitespace before a field's colon | 400 |
//! | a malformed request line (method, target or version), a character a field name or value may not hold | 400 |
//! | a bare LF (a line ending without CR) | 400 |
//! | a chunk size that is not hex, longer than 16 digits, a chunk not ended by CRLF, oversized extensions or trailers | 400 |
//! | an HTTP/1.1 request without a `Host` field, or any request with several (RFC 9112 §3.2) | 400 |
//!
//! A broken chunk that arrives in the same read as the end of its request's head is refused like
//! a broken head: the request never reaches the proxy. One that arrives later fails a body
//! already being streamed: the upstream request is aborted before its body completes, so the
//! model never receives it as a complete request.
//!
//! The stance (reject rather than normalise ambiguous framing): `docs/ARCHITECTURE.md`, "HTTP/1
//! framing".

pub use super::head::HeadLimits;
pub use super::violation::Violation;

use super::chunked::{BadChunk, Chunk, ChunkedDecoder};
use std::collections::VecDeque;

use super::head::{self, BodyFraming, HeadIndex};

#[derive(Clone, Debug)]
enum State {
    /// Gathering a request head.
    Head,
    /// A body of known length: bytes left.
    Body(u64),
    /// A chunked body.
    Chunked(ChunkedDecoder),
}

/// The framing state of one HTTP/1 connection.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    limits: HeadLimits,
    /// The index of each head checked and not taken yet, in order, when they are kept (boxed:
    /// an index holds its fields inline, and it is moved from here to the reader's head).
    indexes: Option<VecDeque<Box<HeadIndex>>>,
}

/// What feeding bytes found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// All bytes are fine.
    Ok,
    /// The first `valid` bytes are fine; what follows breaks `violation`.
    Refused {
        /// Bytes before the offending request or chunk.
        valid: usize,
        /// The rule broken.
        violation: Violation,
        /// Whether the offence is in a head (the request never reached the proxy) rather than
        /// in a body already being forwarded.
        in_head: bool,
    },
}

impl Framing {
    /// A connection about to read its first request.
    pub fn new(limits: HeadLimits) -> Self {
        Framing {
            state: State::Head,
            head: Vec::new(),
            limits,
            indexes: None,
        }
    }

    /// Keeps the index of every head checked from now on (for [`Self::take_index`]), or stops
    /// keeping them and forgets those kept.
    pub fn keep_indexes(&mut self, keep: bool) {
        self.indexes = keep.then(VecDeque::new);
    }

    /// The index of the oldest head checked and not taken yet (heads are taken in the order of
    /// the stream, so a reader of the same bytes need not check them again).
    pub fn take_index(&mut self) -> Option<Box<HeadIndex>> {
        self.indexes.as_mut()?.pop_front()
    }

    /// The length of the head of the oldest index not taken yet.
    pub fn next_index_len(&self) -> Option<usize> {
        self.indexes.as_ref()?.front().map(|index| index.len())
    }

    /// Gives back the memory of the kept indexes when none is waiting (a connection idle
    /// between requests keeps nothing for its next head).
    pub fn release_indexes(&mut self) {
        if let Some(indexes) = self.indexes.as_mut().filter(|i| i.is_empty()) {
            *indexes = VecDeque::new();
        }
    }

    /// Whether the stream is between requests (no byte of the next head seen yet).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head) && self.head.is_empty()
    }

    /// Whether part of a head has arrived but not all of it.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head) && !self.head.is_empty()
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) -> Scan {
        let total = data.len();
        // Bytes before the start of the request (or chunk) being processed.
        let mut unit_start = 0;
        // Where the request whose body is being scanned began, when its head ended in this
        // feed: hyper has not seen that head whole yet, so the request can still be withheld.
        let mut undispatched: Option<usize> = None;
        while !data.is_empty() {
            let consumed_before = total - data.len();
            match &mut self.state {
                State::Head => {
                    if self.head.is_empty() {
                        unit_start = consumed_before;
                        // Empty lines before a request line are allowed (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        if skip > 0 {
                            data = &data[skip..];
                            continue;
                        }
                        // The usual case: the whole head is in this read; check it in place.
                        match self.whole_head(data) {
                            Ok(Some(end)) => {
                                undispatched = Some(unit_start);
                                data = &data[end..];
                                continue;
                            }
                            Ok(None) => {}
                            Err(v) => return refused(unit_start, v, true),
                        }
                    }
                    let (used, done) = match self.take_head(data) {
                        Ok(taken) => taken,
                        Err(v) => return refused(unit_start, v, true),
                    };
                    data = &data[used..];
                    if self.head.len() > self.limits.max_header_bytes {
                        return refused(unit_start, Violation::HeadTooLarge, true);
                    }
                    if done {
                        match body_state(&self.head, self.limits, &mut self.indexes) {
                            Ok(next) => {
                                self.state = next;
                                self.head.clear();
                                undispatched = Some(unit_start);
                            }
                            Err(v) => return refused(unit_start, v, true),
                        }
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if *left == n {
                        State::Head
                    } else {
                        State::Body(*left - n)
                    };
                }
                State::Chunked(decoder) => match decoder.decode(data) {
                    Ok((used, found)) => {
                        data = &data[used..];
                        if found == Chunk::End {
                            self.state = State::Head;
                        }
                    }
                    Err(BadChunk { at }) => return bad_chunk(undispatched, consumed_before + at),
                },
            }
        }
        Scan::Ok
    }

    /// Checks the head at the start of `data` when it is all there and within the limit, and
    /// moves on to its body: how much of `data` it took (`None`: the head is not all there, or
    /// is over the limit, and is gathered).
    fn whole_head(&mut self, data: &[u8]) -> Result<Option<usize>, Violation> {
        if let Some(index) = head::inspect_at_start(data, self.limits) {
            let end = index.len();
            self.state = next_state(index, self.limits, &mut self.indexes);
            return Ok(Some(end));
        }
        match head::find_end(data, 0)? {
            Some(end) if end <= self.limits.max_header_bytes => {
                self.state = body_state(&data[..end], self.limits, &mut self.indexes)?;
                Ok(Some(end))
            }
            _ => Ok(None),
        }
    }

    /// Appends head bytes up to and including the blank line; returns (bytes used, head complete),
    /// or the bare LF found on the way. A bare LF is refused as soon as it is seen: parsers that
    /// accept it (httparse does) could see a complete head where CRLFCRLF has not appeared.
    fn take_head(&mut self, data: &[u8]) -> Result<(usize, bool), Violation> {
        let already = self.head.len();
        // Keep at most one byte more than the limit: enough to know it was passed.
        let room = (self.limits.max_header_bytes + 1)
            .saturating_sub(already)
            .max(1);
        let window = &data[..data.len().min(room)];
        self.head.extend_from_slice(window);
        // Rescan the last bytes already held: a CRLFCRLF may straddle the two reads.
        match head::find_end(&self.head, already.saturating_sub(3))? {
            Some(end) => {
                self.head.truncate(end);
                Ok((end - already, true))
            }
            None => Ok((window.len(), false)),
        }
    }
}

fn refused(valid: usize, violation: Violation, in_head: bool) -> Scan {
    Scan::Refused {
        valid,
        violation,
        in_head,
    }
}

/// A broken chunk: the whole request is withheld when its head ended in this feed (`undispatched`
/// is where it began), else the bytes before the chunk pass and the body fails.
fn bad_chunk(undispatched: Option<usize>, chunk_start: usize) -> Scan {
    match undispatched {
        Some(request_start) => refused(request_start, Violation::InvalidChunk, true),
        None => refused(chunk_start, Violation::InvalidChunk, false),
    }
}

/// Checks one complete head and returns the state its body puts the stream in; its index is
/// kept in `indexes` when they are kept.
fn body_state(
    head: &[u8],
    limits: HeadLimits,
    indexes: &mut Option<VecDeque<Box<HeadIndex>>>,
) -> Result<State, Violation> {
    Ok(next_state(head::inspect(head, limits)?, limits, indexes))
}

/// The state the body of the head `index` indexes puts the stream in; the index is kept in
/// `indexes` when they are kept.
fn next_state(
    index: HeadIndex,
    limits: HeadLimits,
    indexes: &mut Option<VecDeque<Box<HeadIndex>>>,
) -> State {
    let state = match index.body() {
        BodyFraming::Empty => State::Head,
        BodyFraming::Length(n) => State::Body(n),
        BodyFraming::Chunked => State::Chunked(ChunkedDecoder::new(limits.max_header_bytes)),
    };
    if let Some(indexes) = indexes {
        indexes.push_back(Box::new(index));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_headers: 10,
    };

    #[test]
    fn kept_indexes_are_those_of_the_heads_in_order_whatever_the_reads() {
        let first = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n";
        let second = "GET /bb HTTP/1.1\r\nHost: x\r\n\r\n";
        let stream = format!("\r\n{first}{{}}{second}");
        for cut in 1..stream.len() {
            let mut f = Framing::new(LIMITS);
            f.keep_indexes(true);
            assert_eq!(f.feed(&stream.as_bytes()[..cut]), Scan::Ok);
            assert_eq!(f.feed(&stream.as_bytes()[cut..]), Scan::Ok);
            let a = f.take_index().unwrap();
            assert_eq!((a.len(), a.body()), (first.len(), BodyFraming::Length(2)));
            let b = f.take_index().unwrap();
            assert_eq!((b.len(), b.body()), (second.len(), BodyFraming::Empty));
            assert!(f.take_index().is_none(), "cut at {cut}");
        }
        let mut f = Framing::new(LIMITS);
        f.feed(first.as_bytes());
        assert!(f.take_index().is_none(), "not kept unless asked");
    }

    #[test]
    fn released_indexes_free_their_memory_only_when_none_is_waiting() {
        let head = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut f = Framing::new(LIMITS);
        f.keep_indexes(true);
        f.feed(head.repeat(2).as_bytes());
        f.take_index().unwrap();
        f.release_indexes();
        assert!(f.take_index().is_some(), "a waiting index is kept");
        assert!(f.indexes.as_ref().unwrap().capacity() > 0);
        f.release_indexes();
        assert_eq!(
            f.indexes.as_ref().unwrap().capacity(),
            0,
            "nothing held when idle"
        );
        f.feed(head.as_bytes());
        assert!(f.take_index().is_some(), "still kept after the release");
    }

    /// Feeds `input` split at every position and checks the outcome is the same.
    fn scan_all_splits(input: &[u8]) -> Scan {
        let whole = Framing::new(LIMITS).feed(input);
        for split in 1..input.len() {
            let mut f = Framing::new(LIMITS);
            let first = f.feed(&input[..split]);
            let outcome = match first {
                Scan::Ok => match f.feed(&input[split..]) {
                    Scan::Ok => Scan::Ok,
                    Scan::Refused {
                        valid,
                        violation,
                        in_head,
                    } => Scan::Refused {
                        valid: valid + split,
                        violation,
                        in_head,
                    },
                },
                refused => refused,
            };
            match (whole, outcome) {
                (Scan::Ok, Scan::Ok) => {}
                (Scan::Refused { violation: a, .. }, Scan::Refused { violation: b, .. }) => {
                    assert_eq!(a, b, "split at {split}")
                }
                (a, b) => panic!("split at {split}: whole {a:?}, split {b:?}"),
            }
        }
        whole
    }

    fn violation(input: &str) -> Option<Violation> {
        match scan_all_splits(input.as_bytes()) {
            Scan::Ok => None,
            Scan::Refused { violation, .. } => Some(violation),
        }
    }

    #[test]
    fn ordinary_requests_pass_and_end_on_a_boundary() {
        let stream = "POST /score HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
                      GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                      POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(scan_all_splits(stream.as_bytes()), Scan::Ok);
        let mut f = Framing::new(LIMITS);
        assert_eq!(f.feed(stream.as_bytes()), Scan::Ok);
        assert!(f.at_boundary());
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::LengthAndChunked),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Violation::LengthAndChunked),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Violation::DuplicateLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Violation::InvalidLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Violation::InvalidLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Violation::InvalidLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Violation::InvalidLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Violation::InvalidTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::InvalidTransferEncoding),
            ("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Violation::InvalidTransferEncoding),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n continued\r\n\r\n", Violation::ObsFold),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Violation::InvalidHeaderLine),
            ("GET / HTTP/1.1\r\nHost: a\r\nno-colon\r\n\r\n", Violation::InvalidHeaderLine),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", Violation::BareLineFeed),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\n\r\n{}", Violation::BareLineFeed),
            ("GET / HTTP/1.1\r\nHost: a\n\n", Violation::BareLineFeed),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Violation::InvalidChunk),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", Violation::InvalidChunk),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n", Violation::InvalidChunk),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\n", Violation::InvalidChunk),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", Violation::InvalidChunk),
        ];
        for (input, expected) in cases {
            assert_eq!(violation(input), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn a_bad_pipelined_head_is_refused_after_the_good_one() {
        let good = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let stream = format!(
            "{good}POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        );
        match Framing::new(LIMITS).feed(stream.as_bytes()) {
            Scan::Refused {
                valid,
                violation,
                in_head,
            } => {
                assert_eq!(valid, good.len());
                assert_eq!(violation, Violation::DuplicateLength);
                assert!(in_head);
            }
            Scan::Ok => panic!("the second head must be refused"),
        }
    }

    #[test]
    fn head_limits() {
        let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            violation(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Some(Violation::TooManyHeaders)
        );
        let big = "x".repeat(2000);
        assert_eq!(
            violation(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {big}\r\n\r\n")),
            Some(Violation::HeadTooLarge)
        );
        // No end of head at all, just a stream of bytes.
        assert_eq!(violation(&"a".repeat(2000)), Some(Violation::HeadTooLarge));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        assert_eq!(violation("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
    }

    #[test]
    fn boundary_and_head_states() {
        let mut f = Framing::new(LIMITS);
        assert!(f.at_boundary());
        assert_eq!(f.feed(b"GET / HT"), Scan::Ok);
        assert!(f.in_head());
        assert_eq!(f.feed(b"TP/1.1\r\nHost: a\r\n\r\n"), Scan::Ok);
        assert!(f.at_boundary());
        assert_eq!(
            f.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nab"),
            Scan::Ok
        );
        assert!(!f.at_boundary() && !f.in_head());
        assert_eq!(f.feed(b"c"), Scan::Ok);
        assert!(f.at_boundary());
    }
}
