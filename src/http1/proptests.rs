//! Property tests of the HTTP/1 codec: generated and mutated messages, split at arbitrary
//! points, against httparse and the `http` crate (what hyper applied before the byte-level
//! path): the router's parser never accepts what they refuse, never panics, and what it writes
//! parses back to what was meant.

use bytes::Bytes;
use proptest::prelude::*;

use super::body::BodyEncoder;
use super::chunked::{self, Chunk, ChunkedDecoder};
use super::framing::{Framing, Scan};
use super::head::{HeadLimits, RequestHead};
use super::relay;
use super::reply::{Asked, BodyLength};
use super::response::{Parsed, ResponseHead};
use super::write;

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 * 1024,
    max_headers: 64,
};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

fn field_value() -> impl Strategy<Value = String> {
    "[ -~]{0,24}".prop_map(|v| v.trim().to_string())
}

fn path() -> impl Strategy<Value = String> {
    (
        "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,8}){1,4}",
        proptest::option::of("[A-Za-z0-9=&%/?-]{0,12}"),
    )
        .prop_map(|(p, q)| match q {
            Some(q) => format!("{p}?{q}"),
            None => p,
        })
}

/// A field name: a token, or one of the names the head classifies, in any case.
fn field_name() -> impl Strategy<Value = String> {
    let known = proptest::sample::select(vec![
        "Authorization",
        "User-Agent",
        "azureml-model-deployment",
        "X-Request-Id",
        "x-ms-client-request-id",
        "traceparent",
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-Forwarded-Proto",
        "Connection",
        "Keep-Alive",
        "Expect",
    ]);
    prop_oneof![
        token(),
        (known, any::<bool>()).prop_map(|(n, upper)| match upper {
            true => n.to_ascii_uppercase(),
            false => n.to_string(),
        }),
    ]
}

prop_compose! {
    fn request_head()(
        method in "(GET|POST|PUT|DELETE|PATCH|OPTIONS|[A-Z]{1,8})",
        target in path(),
        fields in proptest::collection::vec((token(), field_value()), 0..12),
        length in proptest::option::of(0u64..100_000),
    ) -> String {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: ml.example.com\r\n");
        for (name, value) in fields {
            let lower = name.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding"].contains(&lower.as_str()) {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(n) = length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        head
    }
}

/// A request head as method, target and fields (name, value).
type View = (String, String, Vec<(String, Vec<u8>)>);

/// httparse's view of a request head, when it accepts it.
fn httparse_view(bytes: &[u8]) -> Option<View> {
    let mut headers = [httparse::EMPTY_HEADER; 80];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        _ => return None,
    }
    let fields = request
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Some((
        request.method?.to_string(),
        request.path?.to_string(),
        fields,
    ))
}

/// The router's view of the same head.
fn router_view(head: &RequestHead) -> View {
    let bytes = head.bytes();
    let fields = head
        .fields()
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(f.name(bytes)).into_owned(),
                f.value(bytes).to_vec(),
            )
        })
        .collect();
    (
        String::from_utf8_lossy(head.method()).into_owned(),
        String::from_utf8_lossy(head.target()).into_owned(),
        fields,
    )
}

fn chunked_body(chunks: &[Vec<u8>], upper: bool, trailers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
        let size = if upper {
            format!("{:X}", chunk.len())
        } else {
            format!("{:x}", chunk.len())
        };
        out.extend_from_slice(size.as_bytes());
        if i % 2 == 1 {
            out.extend_from_slice(b";ext=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Decodes `input` fed in the pieces `cuts` makes: the data and where the body ended.
fn decode_pieces(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut decoder = ChunkedDecoder::new(4096);
    let (mut data, mut at) = (Vec::new(), 0);
    for end in points {
        while at < end {
            let (used, found) = decoder.decode(&input[at..end]).map_err(|bad| at + bad.at)?;
            if let Chunk::Data(d) = found {
                data.extend_from_slice(d);
            }
            at += used;
            if found == Chunk::End {
                return Ok((data, at));
            }
            if used == 0 {
                break;
            }
        }
    }
    Err(usize::MAX)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunked_bodies_decode_whatever_the_splits(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        upper in any::<bool>(),
        trailers in proptest::collection::vec((token(), field_value()), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        after in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut input = chunked_body(&chunks, upper, &trailers);
        let body_len = input.len();
        input.extend_from_slice(&after);
        let (data, end) = decode_pieces(&input, &cuts).unwrap();
        prop_assert_eq!(data, chunks.concat());
        prop_assert_eq!(end, body_len);
    }

    #[test]
    fn chunked_decoding_never_panics_and_blames_a_byte_it_saw(
        input in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        if let Err(at) = decode_pieces(&input, &cuts) {
            prop_assert!(at == usize::MAX || at < input.len());
        }
    }

    #[test]
    fn reframed_bodies_keep_their_bytes(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..6),
    ) {
        let mut out = Vec::new();
        for chunk in &chunks {
            BodyEncoder::Chunked.encode(chunk, &mut out);
        }
        BodyEncoder::Chunked.finish(&mut out);
        let (data, input) = super::body::decode_chunked(&out);
        prop_assert!(input.is_empty());
        prop_assert_eq!(data, chunks.concat());
        let mut size = Vec::new();
        chunked::write_chunk_size(&mut size, 1);
        prop_assert_eq!(size, b"1\r\n".to_vec());
    }

    #[test]
    fn generated_heads_are_read_as_httparse_reads_them(head in request_head()) {
        let parsed = RequestHead::parse(Bytes::from(head.clone()), LIMITS);
        let parsed = parsed.map_err(|v| TestCaseError::fail(format!("{v:?} for {head:?}")))?;
        prop_assert_eq!(Some(router_view(&parsed)), httparse_view(head.as_bytes()));
        let target = std::str::from_utf8(parsed.target()).unwrap();
        let uri = target.parse::<http::uri::PathAndQuery>().unwrap();
        prop_assert_eq!(parsed.path(), uri.path());
        prop_assert_eq!(parsed.query(), uri.query());
    }

    #[test]
    fn the_router_never_accepts_a_head_httparse_or_http_refuse(
        head in request_head(),
        at in any::<usize>(),
        byte in any::<u8>(),
        replace in any::<bool>(),
    ) {
        let mut bytes = head.into_bytes();
        // Mutate inside the head, before its final CRLFCRLF.
        let at = at % (bytes.len() - 4);
        if replace {
            bytes[at] = byte;
        } else {
            bytes.insert(at, byte);
        }
        if let Ok(parsed) = RequestHead::parse(Bytes::from(bytes.clone()), LIMITS) {
            let theirs = httparse_view(&bytes);
            prop_assert!(theirs.is_some(), "accepted what httparse refuses: {:?}", String::from_utf8_lossy(&bytes));
            prop_assert_eq!(Some(router_view(&parsed)), theirs);
            if parsed.is_origin_form() {
                prop_assert!(http::uri::PathAndQuery::try_from(parsed.target()).is_ok());
            }
        }
    }

    #[test]
    fn the_framing_guard_decides_the_same_whatever_the_reads(
        heads in proptest::collection::vec(request_head(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        corrupt in proptest::option::of((any::<usize>(), any::<u8>())),
    ) {
        let mut stream = Vec::new();
        for head in &heads {
            stream.extend_from_slice(head.as_bytes());
            let length = RequestHead::parse(Bytes::from(head.clone()), LIMITS).unwrap();
            if let super::head::BodyFraming::Length(n) = length.body() {
                stream.extend(std::iter::repeat_n(b'x', n as usize));
            }
        }
        if let Some((at, byte)) = corrupt {
            let at = at % stream.len();
            stream[at] = byte;
        }
        let whole = Framing::new(LIMITS).feed(&stream);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut framing = Framing::new(LIMITS);
        let mut from = 0;
        let mut split = Scan::Ok;
        for end in points {
            if let Scan::Refused { valid, violation, in_head } = framing.feed(&stream[from..end]) {
                split = Scan::Refused { valid: from + valid, violation, in_head };
                break;
            }
            from = end;
        }
        match (whole, split) {
            (Scan::Ok, Scan::Ok) => {}
            (Scan::Refused { violation: a, .. }, Scan::Refused { violation: b, .. }) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "whole {:?}, split {:?}", a, b),
        }
    }

    #[test]
    fn response_heads_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300), to_head in any::<bool>()) {
        let _ = ResponseHead::parse(&input, to_head);
    }

    #[test]
    fn known_fields_are_found_where_a_search_finds_them(
        fields in proptest::collection::vec((field_name(), field_value()), 0..16),
    ) {
        use super::head::Known;
        let mut head = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for (name, value) in fields {
            let lower = name.to_ascii_lowercase();
            if ["host", "content-length", "transfer-encoding"].contains(&lower.as_str()) {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let request = RequestHead::parse(Bytes::from(head), LIMITS).unwrap();
        let bytes = request.bytes();
        for field in request.fields() {
            let name = field.name(bytes);
            let Some(known) = Known::of(name) else { continue };
            let first = request.fields().iter().find(|f| f.name(bytes).eq_ignore_ascii_case(name));
            prop_assert_eq!(request.get_known(known), first.map(|f| f.value(bytes)));
            prop_assert_eq!(request.is_repeated(known), request.count(name) > 1);
        }
        for name in ["authorization", "x-request-id", "traceparent", "user-agent"] {
            let known = Known::of(name.as_bytes()).unwrap();
            prop_assert_eq!(request.get_known(known), request.get(name.as_bytes()));
        }
    }

    #[test]
    fn request_heads_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = RequestHead::parse(Bytes::from(input.clone()), LIMITS);
        let _ = Framing::new(LIMITS).feed(&input);
    }

    #[test]
    fn written_heads_parse_back(
        head in request_head(),
        status in 200u16..600,
        fields in proptest::collection::vec((token(), field_value()), 0..8),
        chunked in any::<bool>(),
    ) {
        let request = RequestHead::parse(Bytes::from(head), LIMITS).unwrap();
        let mut out = Vec::new();
        write::forward_request(&mut out, &request, &[b"/score"], |_| false, |w| {
            w.field(b"x-forwarded-proto", b"http");
        });
        out.extend_from_slice(b"\r\n");
        let forwarded = httparse_view(&out).expect("the forwarded head parses");
        prop_assert_eq!(forwarded.1, "/score");
        let kept = router_view(&request).2.into_iter().filter(|(n, _)| {
            super::head::Known::of(n.as_bytes()).is_none_or(|k| !k.is_hop_by_hop())
                && !request.is_connection_listed(n.as_bytes())
        });
        let mut expected: Vec<_> = kept.collect();
        expected.push(("x-forwarded-proto".into(), b"http".to_vec()));
        prop_assert_eq!(forwarded.2, expected);

        let mut pod = format!("HTTP/1.1 {status} Whatever\r\n");
        for (name, value) in &fields {
            if super::head::Known::of(name.as_bytes()).is_none() {
                pod.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        pod.push_str(if chunked { "Transfer-Encoding: chunked\r\n\r\n" } else { "Content-Length: 3\r\n\r\n" });
        let Ok(Parsed::Complete(response, _)) = ResponseHead::parse(pod.as_bytes(), false) else {
            return Err(TestCaseError::fail("the pod's head parses"));
        };
        let asked = Asked { head_request: false, keep_alive: true };
        let length = if chunked { BodyLength::Unknown } else { BodyLength::Known(3) };
        let mut out = Vec::new();
        relay::relayed_head(&mut out, &response, pod.as_bytes(), &[], length, asked);
        let mut headers = [httparse::EMPTY_HEADER; 80];
        let mut parsed = httparse::Response::new(&mut headers);
        prop_assert_eq!(parsed.parse(&out), Ok(httparse::Status::Complete(out.len())));
        prop_assert_eq!(parsed.code, Some(status));
    }
}
