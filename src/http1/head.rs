//! HTTP/1 request heads, checked and indexed in one pass.
//!
//! [`inspect`] reads a complete head once: it checks every rule of the framing table
//! (`docs/ARCHITECTURE.md`, "HTTP/1 framing") and the characters RFC 9112 allows in a request
//! line and in field names and values, learns the body's framing, and records where each part
//! is ([`HeadIndex`]). The framing guard keeps only the framing; the byte-level path keeps the
//! index with the bytes ([`RequestHead`]) so that routing, authentication and the rewrite for the
//! pod read fields in place, without building a header map. A head that arrived whole and is
//! made of the usual lines (the common case) is found and checked in the same pass
//! ([`inspect_at_start`]); any other is found first ([`find_end`]) and then checked.

use bytes::Bytes;
use smallvec::SmallVec;

use super::violation::Violation;

/// Limits on heads.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest head, request line and CRLFs included.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// The protocol version of a request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no framing field, or `Content-Length: 0`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Fields the HTTP/1 layer itself acts on (framing, connection management, the hop-by-hop
/// fields of RFC 9110 §7.6.1), and those the proxy reads or rewrites on its way to the pod
/// (`docs/ARCHITECTURE.md`, "The request path"): classified in the head's one pass, so reading
/// one is not a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `TE`.
    Te,
    /// `Trailer`.
    Trailer,
    /// `Upgrade`.
    Upgrade,
    /// `Expect`.
    Expect,
    /// `Authorization`.
    Authorization,
    /// `User-Agent`.
    UserAgent,
    /// `azureml-model-deployment`.
    ModelDeployment,
    /// `x-request-id`.
    RequestId,
    /// `x-ms-client-request-id`.
    ClientRequestId,
    /// `traceparent`.
    Traceparent,
    /// `x-forwarded-for`.
    ForwardedFor,
    /// `x-forwarded-host`.
    ForwardedHost,
    /// `x-forwarded-proto`.
    ForwardedProto,
}

/// How many kinds [`Known`] has.
const KNOWN_KINDS: usize = Known::ForwardedProto as usize + 1;

impl Known {
    /// The field `name` is, when it is one of these (ASCII case-insensitive). Run over every
    /// field of every request and response head, so it is cheap: the name's length and first
    /// letter pick the one kind it can be, and the name is compared with that kind's eight
    /// bytes at a time ([`KnownName`]).
    pub fn of(name: &[u8]) -> Option<Known> {
        let known = match (name.len(), name.first()? | 0x20) {
            (2, b't') => Known::Te,
            (4, b'h') => Known::Host,
            (6, b'e') => Known::Expect,
            (7, b't') => Known::Trailer,
            (7, b'u') => Known::Upgrade,
            (10, b'c') => Known::Connection,
            (10, b'k') => Known::KeepAlive,
            (10, b'u') => Known::UserAgent,
            (11, b't') => Known::Traceparent,
            (12, b'x') => Known::RequestId,
            (13, b'a') => Known::Authorization,
            (14, b'c') => Known::ContentLength,
            (15, b'x') => Known::ForwardedFor,
            (16, b'p') => Known::ProxyConnection,
            (16, b'x') => Known::ForwardedHost,
            (17, b't') => Known::TransferEncoding,
            (17, b'x') => Known::ForwardedProto,
            (22, b'x') => Known::ClientRequestId,
            (24, b'a') => Known::ModelDeployment,
            _ => return None,
        };
        KNOWN_NAMES[known as usize].matches(name).then_some(known)
    }

    /// Whether the field is hop-by-hop by definition (it never crosses the proxy as it came).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::TransferEncoding
                | Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::Te
                | Known::Trailer
                | Known::Upgrade
        )
    }
}

/// The lowercase name of each kind of [`Known`], in the order of the kinds.
static KNOWN_NAMES: [KnownName; KNOWN_KINDS] = [
    KnownName::new(b"host"),
    KnownName::new(b"content-length"),
    KnownName::new(b"transfer-encoding"),
    KnownName::new(b"connection"),
    KnownName::new(b"keep-alive"),
    KnownName::new(b"proxy-connection"),
    KnownName::new(b"te"),
    KnownName::new(b"trailer"),
    KnownName::new(b"upgrade"),
    KnownName::new(b"expect"),
    KnownName::new(b"authorization"),
    KnownName::new(b"user-agent"),
    KnownName::new(b"azureml-model-deployment"),
    KnownName::new(b"x-request-id"),
    KnownName::new(b"x-ms-client-request-id"),
    KnownName::new(b"traceparent"),
    KnownName::new(b"x-forwarded-for"),
    KnownName::new(b"x-forwarded-host"),
    KnownName::new(b"x-forwarded-proto"),
];

/// A lowercase field name of at most 24 bytes (letters and `-`) as three words, and which of
/// their bits are a letter's case bit: a name of the same length is the same name, ASCII
/// case-insensitively, when its words with those bits set equal these (setting `0x20` makes an
/// uppercase letter lowercase and leaves the bytes that are not letters unequal to a letter;
/// the positions of the `-` are compared exactly).
struct KnownName {
    words: [u64; 3],
    case_bits: [u64; 3],
    len: usize,
}

impl KnownName {
    const fn new(name: &[u8]) -> Self {
        let mut case = [0u8; 24];
        let mut i = 0;
        while i < name.len() {
            if name[i].is_ascii_lowercase() {
                case[i] = 0x20;
            }
            i += 1;
        }
        KnownName {
            words: words(name),
            case_bits: words_at(&case, name.len()),
            len: name.len(),
        }
    }

    /// Whether `name`, of the same length, is this name (ASCII case-insensitive).
    fn matches(&self, name: &[u8]) -> bool {
        if name.len() != self.len {
            return false;
        }
        let found = name_words(name);
        (found[0] | self.case_bits[0]) == self.words[0]
            && (found[1] | self.case_bits[1]) == self.words[1]
            && (found[2] | self.case_bits[2]) == self.words[2]
    }
}

/// The words of a name of at most 24 bytes: for eight bytes and more, the first eight, the
/// eight in the middle and the last eight (overlapping, so every byte is in one); for fewer,
/// the bytes in the first word.
const fn words(name: &[u8]) -> [u64; 3] {
    words_at(name, name.len())
}

/// [`words`], as the request path computes them (whole words loaded at once).
fn name_words(name: &[u8]) -> [u64; 3] {
    let len = name.len();
    if len < 8 {
        return words(name);
    }
    let at = |from: usize| {
        name.get(from..from + 8)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map_or(0, u64::from_le_bytes)
    };
    [at(0), at((len - 8) / 2), at(len - 8)]
}

/// [`words`] of the first `len` bytes of `bytes`.
const fn words_at(bytes: &[u8], len: usize) -> [u64; 3] {
    if len < 8 {
        return [word(bytes, 0, len), 0, 0];
    }
    [
        word(bytes, 0, 8),
        word(bytes, (len - 8) / 2, 8),
        word(bytes, len - 8, 8),
    ]
}

/// The `n` (at most eight) bytes of `bytes` from `at`, little-endian.
const fn word(bytes: &[u8], at: usize, n: usize) -> u64 {
    let mut word = 0;
    let mut i = 0;
    while i < n {
        word |= (bytes[at + i] as u64) << (8 * i);
        i += 1;
    }
    word
}

/// Where one field line is in the head (byte offsets), and what kind of field it is.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    line: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
    line_end: u32,
    known: Option<Known>,
}

impl Field {
    /// The field's name as sent.
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.line as usize..self.name_end as usize]
    }

    /// The field's value without surrounding whitespace.
    pub fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.value_start as usize..self.value_end as usize]
    }

    /// The whole line, CRLF included, as sent.
    pub fn line<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.line as usize..self.line_end as usize]
    }

    /// Where the whole line is: (start, end), CRLF included.
    pub fn line_range(&self) -> (usize, usize) {
        (self.line as usize, self.line_end as usize)
    }

    /// The field's kind, when the HTTP/1 layer acts on it.
    pub fn known(&self) -> Option<Known> {
        self.known
    }
}

/// Fields kept inline; a head with more moves them to the heap.
const INLINE_FIELDS: usize = 16;

/// What one pass over a request head found: its parts and the body's framing.
#[derive(Clone, Debug)]
pub struct HeadIndex {
    method_end: u32,
    target: (u32, u32),
    path_end: u32,
    query: Option<(u32, u32)>,
    origin_form: bool,
    version: Version,
    fields: SmallVec<[Field; INLINE_FIELDS]>,
    body: BodyFraming,
    connection_close: bool,
    connection_keep_alive: bool,
    /// A `Connection` field lists a name other than the hop-by-hop ones.
    connection_lists: bool,
    expect_continue: bool,
    /// Per kind of [`Known`]: the position of its first field plus one (0: none).
    first: [u16; KNOWN_KINDS],
    /// Bit `k` set: more than one field of kind `k`.
    repeated: u32,
    /// The length of the head it indexes.
    len: u32,
}

impl HeadIndex {
    /// The body's framing.
    pub fn body(&self) -> BodyFraming {
        self.body
    }

    /// The length of the head it indexes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it indexes an empty head (never: a head has at least its request line).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes note of a field of kind `known` about to be pushed.
    fn note(&mut self, known: Known) {
        let first = &mut self.first[known as usize];
        if *first == 0 {
            // At most `max_headers` fields, which the configuration keeps far below `u16::MAX`;
            // a position that does not fit is not recorded (the lookup then searches).
            *first = u16::try_from(self.fields.len() + 1).unwrap_or(u16::MAX);
        } else {
            self.repeated |= 1 << known as u32;
        }
    }
}

/// The end (exclusive) of the first CRLFCRLF in `bytes` at or after `from`, checking on the way
/// that every LF ends a CRLF.
pub fn find_end(bytes: &[u8], from: usize) -> Result<Option<usize>, Violation> {
    for i in memchr::memchr_iter(b'\n', &bytes[from..]).map(|i| i + from) {
        if i == 0 || bytes[i - 1] != b'\r' {
            return Err(Violation::BareLineFeed);
        }
        if i >= 3 && bytes[i - 3..=i] == *b"\r\n\r\n" {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// Checks one complete head (`head` starts with the request line and ends with the empty line;
/// every LF in it follows a CR) and indexes it.
pub fn inspect(head: &[u8], limits: HeadLimits) -> Result<HeadIndex, Violation> {
    let unusual = |start, index: &HeadIndex| field_or_end(head, start, index, limits);
    let (mut index, _) = read(head, limits, unusual)?;
    index.len = head.len() as u32;
    Ok(index)
}

/// The head at the start of `bytes` (after its blank lines), checked and indexed in one pass,
/// when it is all there, within the limits, and made of usual lines only ([`plain_field`]):
/// the common case, where finding its end first ([`find_end`]) would read it twice. `None`
/// otherwise, a head [`inspect`] refuses included: the caller then finds its end and inspects
/// it, which says why. The head is `bytes[..index.len()]`.
pub fn inspect_at_start(bytes: &[u8], limits: HeadLimits) -> Option<HeadIndex> {
    let usual_only = |_, _: &HeadIndex| Err(Violation::InvalidHeaderLine);
    let (mut index, empty_line) = read(bytes, limits, usual_only).ok()?;
    // Every line before the empty one ended with CRLF and held no other CR or LF: the first
    // CRLFCRLF ends the empty line.
    let end = empty_line + 2;
    if end > limits.max_header_bytes {
        return None;
    }
    index.len = end as u32;
    Some(index)
}

/// Reads the request line and the field lines of `head` up to its empty line; a line that is
/// not of the usual kind goes to `unusual` (with where it starts), which reads it, says it is
/// the end, or refuses it. Returns the index (its length unset) and where the loop stopped.
fn read(
    head: &[u8],
    limits: HeadLimits,
    mut unusual: impl FnMut(usize, &HeadIndex) -> Result<Option<(Field, usize)>, Violation>,
) -> Result<(HeadIndex, usize), Violation> {
    let line_end = memchr::memchr(b'\n', head).ok_or(Violation::InvalidRequestLine)?;
    let mut index = request_line(without_crlf(head, 0, line_end)?)?;
    let mut counts = Counts::default();
    let mut start = line_end + 1;
    loop {
        if head[start..].starts_with(b"\r\n") {
            break;
        }
        let found = match plain_field(head, start) {
            Some(found) if index.fields.len() < limits.max_headers => found,
            _ => match unusual(start, &index)? {
                Some(found) => found,
                None => break,
            },
        };
        let (field, next) = found;
        counts.add(&field, head, &mut index)?;
        if let Some(known) = field.known {
            index.note(known);
        }
        index.fields.push(field);
        start = next;
    }
    index.body = counts.framing(index.version)?;
    Ok((index, start))
}

/// The field line at `start` and where the next line starts, when the line is the usual
/// kind: a name of token characters, a colon, a value of the characters a value may hold,
/// CRLF; read in one pass. Anything else (`None`) is left to [`field_or_end`], which says
/// what is wrong with it, as it would have had it been read first.
fn plain_field(head: &[u8], start: usize) -> Option<(Field, usize)> {
    let rest = &head[start..];
    let colon = rest.iter().position(|b| !TOKEN[*b as usize])?;
    if colon == 0 || rest[colon] != b':' {
        return None;
    }
    let cr = value_end(rest, colon + 1)?;
    if rest[cr..].starts_with(b"\r\n") {
        let field = field_at(&rest[..cr], colon, start as u32, (start + cr + 2) as u32);
        return Some((field, start + cr + 2));
    }
    None
}

/// Where the first byte from `from` on that a field value may not hold is (its CR, for a usual
/// line). Eight bytes at a time while none of them is a control character or DEL (every other
/// byte may be in a value); from a word with one, a byte at a time.
fn value_end(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte below 0x20, or some byte 0x7f (a zero byte once DEL is XORed away): the
    // classic tests, exact as to whether there is one.
    let unusual = |word: u64| {
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let del = word ^ (ONES * 0x7f);
        below_space | (del.wrapping_sub(ONES) & !del & HIGHS) != 0
    };
    let mut at = from;
    while let Some(word) = bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    {
        if unusual(u64::from_ne_bytes(word)) {
            break;
        }
        at += 8;
    }
    let found = bytes[at..].iter().position(|b| !FIELD_VALUE[*b as usize])?;
    Some(at + found)
}

/// The field line at `start`, checked rule by rule, and where the next line starts; `None` at
/// the empty line (or when no line ends after `start`).
fn field_or_end(
    head: &[u8],
    start: usize,
    index: &HeadIndex,
    limits: HeadLimits,
) -> Result<Option<(Field, usize)>, Violation> {
    let Some(lf) = memchr::memchr(b'\n', &head[start..]).map(|i| i + start) else {
        return Ok(None);
    };
    let line = without_crlf(head, start, lf)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line[0] == b' ' || line[0] == b'\t' {
        return Err(Violation::ObsFold);
    }
    if index.fields.len() == limits.max_headers {
        return Err(Violation::TooManyHeaders);
    }
    let field = field_line(line, start as u32, lf as u32 + 1)?;
    Ok(Some((field, lf + 1)))
}

/// The line from `start` to the LF at `lf`, without its CRLF; a bare LF is refused.
fn without_crlf(head: &[u8], start: usize, lf: usize) -> Result<&[u8], Violation> {
    match lf.checked_sub(1) {
        Some(cr) if cr >= start && head[cr] == b'\r' => Ok(&head[start..cr]),
        _ => Err(Violation::BareLineFeed),
    }
}

/// Counts of the fields whose number matters, and the body length declared.
#[derive(Default)]
struct Counts {
    hosts: u32,
    lengths: u32,
    encodings: u32,
    length: u64,
}

impl Counts {
    /// Takes note of one field; refuses a malformed framing value at once.
    fn add(&mut self, field: &Field, head: &[u8], index: &mut HeadIndex) -> Result<(), Violation> {
        let value = field.value(head);
        match field.known {
            Some(Known::Host) => self.hosts += 1,
            Some(Known::ContentLength) => {
                self.lengths += 1;
                if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                    return Err(Violation::InvalidLength);
                }
                self.length = value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
            }
            Some(Known::TransferEncoding) => {
                self.encodings += 1;
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(Violation::InvalidTransferEncoding);
                }
            }
            Some(Known::Connection) => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        index.connection_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        index.connection_keep_alive = true;
                    } else {
                        index.connection_lists |= lists_a_field(token);
                    }
                }
            }
            Some(Known::Expect) => {
                index.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        Ok(())
    }

    /// The body's framing, once every field was seen.
    fn framing(&self, version: Version) -> Result<BodyFraming, Violation> {
        if self.hosts > 1 {
            return Err(Violation::DuplicateHost);
        }
        if self.hosts == 0 && version == Version::Http11 {
            return Err(Violation::MissingHost);
        }
        if self.lengths > 1 {
            return Err(Violation::DuplicateLength);
        }
        if self.encodings > 0 && self.lengths > 0 {
            return Err(Violation::LengthAndChunked);
        }
        if self.encodings > 1 || (self.encodings == 1 && version == Version::Http10) {
            return Err(Violation::InvalidTransferEncoding);
        }
        Ok(match (self.encodings, self.length) {
            (1, _) => BodyFraming::Chunked,
            (_, 0) => BodyFraming::Empty,
            (_, n) => BodyFraming::Length(n),
        })
    }
}

/// Whether a `Connection` token names a field that is not hop-by-hop already.
pub fn lists_a_field(token: &[u8]) -> bool {
    Known::of(token).is_none_or(|known| !known.is_hop_by_hop())
}

/// The comma-separated tokens of a list value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// `method SP request-target SP HTTP-version`, without its CRLF.
fn request_line(line: &[u8]) -> Result<HeadIndex, Violation> {
    let bad = Violation::InvalidRequestLine;
    let method_end = memchr::memchr(b' ', line).ok_or(bad)?;
    let target_end = memchr::memchr(b' ', &line[method_end + 1..]).ok_or(bad)? + method_end + 1;
    let (method, target) = (&line[..method_end], &line[method_end + 1..target_end]);
    if method.is_empty() || !method.iter().all(|b| TOKEN[*b as usize]) || target.is_empty() {
        return Err(bad);
    }
    let version = match &line[target_end + 1..] {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        _ => return Err(bad),
    };
    let (path_end, query) = scan_target(target)?;
    let at = |i: usize| (method_end + 1 + i) as u32;
    Ok(HeadIndex {
        method_end: method_end as u32,
        target: (at(0), at(target.len())),
        path_end: at(path_end),
        query: query.map(|(s, e)| (at(s), at(e))),
        origin_form: target[0] == b'/',
        version,
        fields: SmallVec::new(),
        body: BodyFraming::Empty,
        connection_close: false,
        connection_keep_alive: false,
        connection_lists: false,
        expect_continue: false,
        first: [0; KNOWN_KINDS],
        repeated: 0,
        len: 0,
    })
}

/// Checks a request target's characters (httparse's rule: visible ASCII or obs-text, and
/// UTF-8); for the origin form (`/path?query#fragment`) also finds the end of the path and the
/// query, with the rules of the `http` crate that hyper applies (a fragment is dropped).
fn scan_target(target: &[u8]) -> Result<(usize, Option<(usize, usize)>), Violation> {
    let bad = Violation::InvalidRequestLine;
    let utf8 = |target: &[u8]| target.is_ascii() || std::str::from_utf8(target).is_ok();
    if target[0] != b'/' {
        // Absolute form, authority form, `*`: the URI parser of the path that serves them
        // checks the rest.
        return match target.iter().all(|b| TARGET[*b as usize]) && utf8(target) {
            true => Ok((target.len(), None)),
            false => Err(bad),
        };
    }
    let end_of = |from: usize, class: &[bool; 256]| {
        target[from..]
            .iter()
            .position(|b| !class[*b as usize])
            .map_or(target.len(), |i| i + from)
    };
    let path_end = end_of(0, &PATH);
    let mut end = path_end;
    let mut query = None;
    if target.get(path_end) == Some(&b'?') {
        end = end_of(path_end + 1, &QUERY);
        query = Some((path_end + 1, end));
    }
    // The path's and the query's characters are target characters; what follows them must be
    // a fragment of target characters.
    let fragment = &target[end..];
    let fragment_ok =
        fragment.first().is_none_or(|b| *b == b'#') && fragment.iter().all(|b| TARGET[*b as usize]);
    match fragment_ok && utf8(target) {
        true => Ok((path_end, query)),
        false => Err(bad),
    }
}

/// One field line (without its CRLF) starting at offset `start`; `line_end` is after its LF.
fn field_line(line: &[u8], start: u32, line_end: u32) -> Result<Field, Violation> {
    let colon = memchr::memchr(b':', line).ok_or(Violation::InvalidHeaderLine)?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|b| TOKEN[*b as usize]) {
        return Err(Violation::InvalidHeaderLine);
    }
    if !line[colon + 1..].iter().all(|b| FIELD_VALUE[*b as usize]) {
        return Err(Violation::InvalidHeaderLine);
    }
    Ok(field_at(line, colon, start, line_end))
}

/// The index of a checked field line (without its CRLF) whose colon is at `colon`.
fn field_at(line: &[u8], colon: usize, start: u32, line_end: u32) -> Field {
    let raw = &line[colon + 1..];
    let leading = raw
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let trailing = raw[leading..]
        .iter()
        .rev()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let value_start = start + colon as u32 + 1 + leading as u32;
    Field {
        line: start,
        name_end: start + colon as u32,
        value_start,
        value_end: start + line.len() as u32 - trailing as u32,
        line_end,
        known: Known::of(&line[..colon]),
    }
}

/// A table of the bytes `$allowed` accepts, built at compile time.
macro_rules! byte_set {
    (|$b:ident| $allowed:expr) => {{
        let mut set = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $b = i as u8;
            set[i] = $allowed;
            i += 1;
        }
        set
    }};
}

/// `tchar` (RFC 9110 §5.6.2): method and field-name characters.
static TOKEN: [bool; 256] = byte_set!(|b| b.is_ascii_alphanumeric()
    || matches!(
        b,
        b'!' | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~'
    ));
/// Field-value characters as httparse allows them: HTAB, SP, visible ASCII, obs-text.
static FIELD_VALUE: [bool; 256] = byte_set!(|b| b == b'\t' || b >= b' ' && b != 0x7f);
/// Request-target characters as httparse allows them: visible ASCII and obs-text.
static TARGET: [bool; 256] = byte_set!(|b| b > b' ' && b != 0x7f);
/// Path characters (the `http` crate's, after the WHATWG URL path state).
static PATH: [bool; 256] = byte_set!(
    |b| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E)
        || matches!(b, b'"' | b'{' | b'}')
        || b >= 0x80
);
/// Query characters (the `http` crate's, after the WHATWG URL query state).
static QUERY: [bool; 256] =
    byte_set!(|b| matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E) || b >= 0x80);

/// A request head: its bytes and what [`inspect`] found in them. Routing, authentication and the
/// rewrite for the pod read it in place.
#[derive(Clone, Debug)]
pub struct RequestHead {
    bytes: Bytes,
    /// Boxed: an index holds its fields inline, and a head is moved several times on its way
    /// to the request path (`docs/ARCHITECTURE.md`, "The request's future").
    index: Box<HeadIndex>,
}

impl RequestHead {
    /// Checks and indexes `bytes`, a complete head (see [`inspect`]).
    pub fn parse(bytes: Bytes, limits: HeadLimits) -> Result<Self, Violation> {
        let index = Box::new(inspect(&bytes, limits)?);
        Ok(RequestHead { bytes, index })
    }

    /// The head as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `bytes`, a complete head that was checked already, with the `index` that check made;
    /// the bytes back when the index is not of a head of their length.
    pub fn with_index(bytes: Bytes, index: Box<HeadIndex>) -> Result<Self, Bytes> {
        match index.len as usize == bytes.len() {
            true => Ok(RequestHead { bytes, index }),
            false => Err(bytes),
        }
    }

    /// The head as received, shared (field values can be sliced off it without a copy).
    pub fn shared(&self) -> &Bytes {
        &self.bytes
    }

    /// The method.
    pub fn method(&self) -> &[u8] {
        &self.bytes[..self.index.method_end as usize]
    }

    /// The request target as sent.
    pub fn target(&self) -> &[u8] {
        let (start, end) = self.index.target;
        &self.bytes[start as usize..end as usize]
    }

    /// Whether the target is in origin form (`/path?query`); the others are absolute form,
    /// authority form and `*`.
    pub fn is_origin_form(&self) -> bool {
        self.index.origin_form
    }

    /// The path of an origin-form target (for the others, the whole target), valid UTF-8.
    pub fn path(&self) -> &str {
        let start = self.index.target.0 as usize;
        std::str::from_utf8(&self.bytes[start..self.index.path_end as usize]).unwrap_or("")
    }

    /// The query of an origin-form target, without `?` (and without a fragment).
    pub fn query(&self) -> Option<&str> {
        let (start, end) = self.index.query?;
        std::str::from_utf8(&self.bytes[start as usize..end as usize]).ok()
    }

    /// The path and query of an origin-form target, without a fragment (for the others, the
    /// whole target): valid UTF-8, shared with the head.
    pub fn path_and_query(&self) -> Bytes {
        let start = self.index.target.0 as usize;
        let end = self.index.query.map_or(self.index.path_end, |(_, end)| end);
        self.bytes.slice(start..end as usize)
    }

    /// The length of the path of an origin-form target (for the others, of the whole target).
    pub fn path_len(&self) -> usize {
        (self.index.path_end - self.index.target.0) as usize
    }

    /// The version.
    pub fn version(&self) -> Version {
        self.index.version
    }

    /// The body's framing.
    pub fn body(&self) -> BodyFraming {
        self.index.body
    }

    /// The field lines, in order.
    pub fn fields(&self) -> &[Field] {
        &self.index.fields
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.index
            .fields
            .iter()
            .find(|f| f.name(&self.bytes).eq_ignore_ascii_case(name))
            .map(|f| f.value(&self.bytes))
    }

    /// How many fields are named `name`.
    pub fn count(&self, name: &[u8]) -> usize {
        self.index
            .fields
            .iter()
            .filter(|f| f.name(&self.bytes).eq_ignore_ascii_case(name))
            .count()
    }

    /// The value of the first field of kind `known` (found by the head's one pass, not searched).
    pub fn get_known(&self, known: Known) -> Option<&[u8]> {
        let field = match self.index.first[known as usize] {
            0 => return None,
            u16::MAX => self.index.fields.iter().find(|f| f.known == Some(known))?,
            position => &self.index.fields[usize::from(position) - 1],
        };
        Some(field.value(&self.bytes))
    }

    /// Whether the head has more than one field of kind `known`.
    pub fn is_repeated(&self, known: Known) -> bool {
        self.index.repeated & (1 << known as u32) != 0
    }

    /// Whether the client asks to keep the connection open after this request: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        match self.index.version {
            Version::Http11 => !self.index.connection_close,
            Version::Http10 => self.index.connection_keep_alive && !self.index.connection_close,
        }
    }

    /// Whether the client waits for `100 Continue` before sending its body.
    pub fn expects_continue(&self) -> bool {
        self.index.expect_continue && self.index.version == Version::Http11
    }

    /// Whether `name` is listed in a `Connection` field (other than as `close` or `keep-alive`,
    /// the connection's options): such a field is hop-by-hop too.
    pub fn is_connection_listed(&self, name: &[u8]) -> bool {
        self.index.connection_lists
            && !name.eq_ignore_ascii_case(b"close")
            && !name.eq_ignore_ascii_case(b"keep-alive")
            && self
                .index
                .fields
                .iter()
                .filter(|f| f.known == Some(Known::Connection))
                .flat_map(|f| tokens(f.value(&self.bytes)))
                .any(|token| token.eq_ignore_ascii_case(name))
    }
}

/// A test's request head: `text` checked under generous limits (4 KiB, 32 fields).
#[cfg(test)]
pub(crate) fn test_head(text: &str) -> RequestHead {
    let limits = HeadLimits {
        max_header_bytes: 4096,
        max_headers: 32,
    };
    RequestHead::parse(Bytes::copy_from_slice(text.as_bytes()), limits).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 4096,
        max_headers: 8,
    };

    fn parse(head: &str) -> Result<RequestHead, Violation> {
        RequestHead::parse(Bytes::copy_from_slice(head.as_bytes()), LIMITS)
    }

    #[test]
    fn a_head_is_indexed_in_place() {
        let head = parse(
            "POST /api/v1/endpoint/ep/score?x=1#frag HTTP/1.1\r\nHost: ml.example.com\r\n\
             Content-Length:  12 \r\nX-Empty:\r\nconnection: Keep-Alive, X-Secret\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.method(), b"POST");
        assert_eq!(head.path(), "/api/v1/endpoint/ep/score");
        assert_eq!(head.query(), Some("x=1"));
        assert!(head.is_origin_form());
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(head.body(), BodyFraming::Length(12));
        assert_eq!(head.get(b"HOST"), Some(&b"ml.example.com"[..]));
        assert_eq!(head.get(b"x-empty"), Some(&b""[..]));
        assert_eq!(head.get_known(Known::ContentLength), Some(&b"12"[..]));
        assert_eq!(head.fields().len(), 4);
        assert_eq!(
            head.fields()[1].line(head.bytes()),
            b"Content-Length:  12 \r\n"
        );
        assert!(head.keep_alive());
        assert!(head.is_connection_listed(b"x-secret"));
        assert!(!head.is_connection_listed(b"host"));
    }

    /// The classification the word comparison makes is the plain one (each kind's name, ASCII
    /// case-insensitively): for every name, in both cases, with any byte at any position
    /// replaced, and cut or lengthened by one byte.
    #[test]
    fn known_names_are_classified_as_by_a_plain_comparison() {
        let names: Vec<(&[u8], Known)> = (0..KNOWN_KINDS)
            .map(|k| {
                let known = Known::of(KNOWN_TEXT[k]).unwrap();
                assert_eq!(known as usize, k);
                (KNOWN_TEXT[k], known)
            })
            .collect();
        let plain = |name: &[u8]| {
            names
                .iter()
                .find(|(text, _)| name.eq_ignore_ascii_case(text))
                .map(|(_, known)| *known)
        };
        for (text, _) in &names {
            let upper = text.to_ascii_uppercase();
            for variant in [text.to_vec(), upper.clone()] {
                assert_eq!(Known::of(&variant), plain(&variant));
                for at in 0..variant.len() {
                    for byte in 0..=255u8 {
                        let mut changed = variant.clone();
                        changed[at] = byte;
                        assert_eq!(Known::of(&changed), plain(&changed), "{changed:?}");
                    }
                }
                let cut = &variant[..variant.len() - 1];
                assert_eq!(Known::of(cut), plain(cut));
                let longer = [variant.as_slice(), b"s"].concat();
                assert_eq!(Known::of(&longer), plain(&longer));
            }
        }
        assert_eq!(Known::of(b""), None);
    }

    /// Each kind's name, in the order of the kinds, written out apart from the classifier.
    const KNOWN_TEXT: [&[u8]; KNOWN_KINDS] = [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"authorization",
        b"user-agent",
        b"azureml-model-deployment",
        b"x-request-id",
        b"x-ms-client-request-id",
        b"traceparent",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    ];

    /// A path's and a query's characters are target characters: `scan_target` checks the
    /// target's characters only where neither class applies.
    #[test]
    fn path_and_query_characters_are_target_characters() {
        for b in 0..=255usize {
            assert!(!PATH[b] || TARGET[b], "{b:#x}");
            assert!(!QUERY[b] || TARGET[b], "{b:#x}");
        }
    }

    #[test]
    fn keep_alive_and_continue_follow_the_version() {
        let close = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!close.keep_alive());
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!old.keep_alive());
        let kept = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(kept.keep_alive());
        let expect =
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(parse(expect).unwrap().expects_continue());
        let expect10 = expect.replace("HTTP/1.1", "HTTP/1.0");
        assert!(!parse(&expect10).unwrap().expects_continue());
    }

    #[test]
    fn other_target_forms_keep_their_bytes() {
        for target in ["http://a.example/x?y", "a.example:443", "*"] {
            let head = parse(&format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n")).unwrap();
            assert!(!head.is_origin_form());
            assert_eq!(head.target(), target.as_bytes());
        }
    }

    #[test]
    fn malformed_request_lines_and_fields_are_refused() {
        let cases = [
            (
                "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET / http/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET /a?b\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET /\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n",
                Violation::InvalidRequestLine,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
                Violation::InvalidHeaderLine,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\0b\r\n\r\n",
                Violation::InvalidHeaderLine,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n",
                Violation::InvalidHeaderLine,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n",
                Violation::InvalidHeaderLine,
            ),
            ("GET / HTTP/1.1\r\n\r\n", Violation::MissingHost),
        ];
        for (head, violation) in cases {
            assert_eq!(parse(head).err(), Some(violation), "{head:?}");
        }
        let bad_utf8 = b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n";
        let refused = RequestHead::parse(Bytes::from_static(bad_utf8), LIMITS);
        assert_eq!(refused.err(), Some(Violation::InvalidRequestLine));
        let utf8 = "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\nX-Obs: \u{e9}t\u{e9}\r\n\r\n";
        assert_eq!(parse(utf8).unwrap().path(), "/caf\u{e9}");
    }
}
