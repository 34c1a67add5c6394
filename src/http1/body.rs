//! Message bodies on the wire: read with the framing they came with ([`BodyDecoder`]) and
//! written with the framing the other side gets ([`BodyEncoder`]). The byte-level path copies
//! every body through one of each, so a body never crosses the proxy with framing it was not
//! checked against.

use super::chunked::{self, BadChunk, Chunk, ChunkedDecoder};

/// Why a body could not be read to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The chunked coding is malformed at this offset of the bytes given.
    #[error("the body's chunked framing is malformed")]
    BadChunk(usize),
    /// The connection ended before the body did.
    #[error("the connection closed before the body ended")]
    Truncated,
}

/// How a body is framed where it is read.
#[derive(Clone, Debug)]
pub enum BodyDecoder {
    /// This many bytes are left.
    Length(u64),
    /// Chunked.
    Chunked(ChunkedDecoder),
    /// Everything until the connection closes.
    UntilClose,
}

impl BodyDecoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Self {
        BodyDecoder::Length(n)
    }

    /// A chunked body whose trailers take at most `max_trailer_bytes`.
    pub fn chunked(max_trailer_bytes: usize) -> Self {
        BodyDecoder::Chunked(ChunkedDecoder::new(max_trailer_bytes))
    }

    /// Whether the body has ended (a close-delimited body ends only with [`Self::at_eof`]).
    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Length(left) => *left == 0,
            BodyDecoder::Chunked(decoder) => decoder.is_done(),
            BodyDecoder::UntilClose => false,
        }
    }

    /// Bytes of a chunked body's trailer section consumed so far (0 for other bodies).
    pub fn trailer_len(&self) -> usize {
        match self {
            BodyDecoder::Chunked(decoder) => decoder.trailer_len(),
            _ => 0,
        }
    }

    /// Consumes bytes of `input` up to and including the next piece of body data, the end of
    /// the body, or the end of `input`: the bytes consumed and what ended the call. Bytes after
    /// the body's end are never consumed.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Chunk<'a>), BodyError> {
        match self {
            BodyDecoder::Length(0) => Ok((0, Chunk::End)),
            BodyDecoder::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                *left -= n as u64;
                match n {
                    0 => Ok((0, Chunk::More)),
                    _ => Ok((n, Chunk::Data(&input[..n]))),
                }
            }
            BodyDecoder::Chunked(decoder) => decoder
                .decode(input)
                .map_err(|BadChunk { at }| BodyError::BadChunk(at)),
            BodyDecoder::UntilClose if input.is_empty() => Ok((0, Chunk::More)),
            BodyDecoder::UntilClose => Ok((input.len(), Chunk::Data(input))),
        }
    }

    /// The connection ended: fine for a close-delimited body, a truncation for the others
    /// unless they had ended.
    pub fn at_eof(&self) -> Result<(), BodyError> {
        match self {
            BodyDecoder::UntilClose => Ok(()),
            _ if self.is_done() => Ok(()),
            _ => Err(BodyError::Truncated),
        }
    }
}

/// How a body is framed where it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoder {
    /// With `Content-Length` (or no body): the data as it is.
    Length,
    /// Chunked: every piece of data becomes one chunk, and the body ends with the last chunk.
    Chunked,
    /// Until the connection closes: the data as it is, and the end is the close.
    UntilClose,
}

impl BodyEncoder {
    /// Appends `data`, framed, to `out`.
    pub fn encode(self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            BodyEncoder::Chunked => chunked::write_chunk(out, data),
            BodyEncoder::Length | BodyEncoder::UntilClose => out.extend_from_slice(data),
        }
    }

    /// Appends what ends the body (the last chunk of a chunked body).
    pub fn finish(self, out: &mut Vec<u8>) {
        if self == BodyEncoder::Chunked {
            out.extend_from_slice(chunked::LAST_CHUNK);
        }
    }
}

/// Decodes a whole chunked body from `input`: its data, and the bytes after it (for tests).
#[cfg(test)]
pub(crate) fn decode_chunked(input: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut decoder = BodyDecoder::chunked(64);
    let (mut data, mut input) = (Vec::new(), input);
    loop {
        let (used, found) = decoder.decode(input).expect("a well-formed chunked body");
        if let Chunk::Data(d) = found {
            data.extend_from_slice(d);
        }
        input = &input[used..];
        if found == Chunk::End {
            return (data, input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies `input` through `decoder` into `encoder`, fed `step` bytes at a time.
    fn copy(
        mut decoder: BodyDecoder,
        encoder: BodyEncoder,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() && !decoder.is_done() {
            let end = (at + step).min(input.len());
            let (used, found) = decoder.decode(&input[at..end]).map_err(|e| match e {
                BodyError::BadChunk(offset) => BodyError::BadChunk(at + offset),
                other => other,
            })?;
            if let Chunk::Data(data) = found {
                encoder.encode(data, &mut out);
            }
            at += used;
            if found == Chunk::End {
                break;
            }
        }
        if !decoder.is_done() {
            decoder.at_eof()?;
        }
        encoder.finish(&mut out);
        Ok((out, at))
    }

    #[test]
    fn bodies_are_reframed_and_nothing_after_them_is_read() {
        for step in [1, 3, 100] {
            let (out, used) = copy(
                BodyDecoder::length(5),
                BodyEncoder::Chunked,
                b"helloNEXT",
                step,
            )
            .unwrap();
            assert_eq!(used, 5);
            let (back, _) = copy(BodyDecoder::chunked(100), BodyEncoder::Length, &out, 7).unwrap();
            assert_eq!(back, b"hello");
            let chunked = b"3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\nNEXT";
            let (out, used) = copy(
                BodyDecoder::chunked(100),
                BodyEncoder::Length,
                chunked,
                step,
            )
            .unwrap();
            assert_eq!((out.as_slice(), used), (&b"hello"[..], chunked.len() - 4));
            let (out, used) =
                copy(BodyDecoder::UntilClose, BodyEncoder::Chunked, b"abc", step).unwrap();
            assert_eq!(used, 3);
            let (back, _) = copy(BodyDecoder::chunked(100), BodyEncoder::Length, &out, 7).unwrap();
            assert_eq!(back, b"abc");
        }
    }

    #[test]
    fn a_body_cut_short_or_malformed_is_an_error() {
        assert_eq!(
            copy(BodyDecoder::length(10), BodyEncoder::Length, b"short", 2),
            Err(BodyError::Truncated)
        );
        assert_eq!(
            copy(
                BodyDecoder::chunked(100),
                BodyEncoder::Length,
                b"5\r\nhel",
                2
            ),
            Err(BodyError::Truncated)
        );
        assert_eq!(
            copy(
                BodyDecoder::chunked(100),
                BodyEncoder::Length,
                b"5\r\nhelloX",
                4
            ),
            Err(BodyError::BadChunk(8))
        );
        assert!(BodyDecoder::length(0).is_done());
        assert_eq!(BodyDecoder::UntilClose.at_eof(), Ok(()));
    }
}
