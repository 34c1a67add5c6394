//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally and written.
//!
//! [`ChunkedDecoder`] is the one chunk parser of the router: the framing guard uses it to skip
//! request bodies ([`super::framing`]), and the byte-level path uses it to copy request and
//! response bodies. It refuses what the framing table of `docs/ARCHITECTURE.md` refuses: a
//! chunk size that is not hex or is longer than 16 digits, whitespace after the size without an
//! extension, an extension longer than 4 KiB, a chunk not ended by CRLF, a bare LF anywhere,
//! trailers larger than the head limit. Extensions are read and dropped; trailer fields are
//! consumed like the rest, and [`ChunkedDecoder::trailer_len`] says how many bytes they took, so
//! a caller that forwards them can keep them.

/// Most hex digits in a chunk size (64 bits).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;
/// Longest chunk-size line extension.
const MAX_CHUNK_EXTENSION_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A chunk-size line: digits read, value, bytes of extension, saw CR.
    Size {
        digits: u8,
        value: u64,
        extension: usize,
        cr: bool,
    },
    /// Chunk data: bytes left.
    Data(u64),
    /// The CRLF after chunk data: `false` expects CR, `true` expects LF.
    DataEnd(bool),
    /// Trailer fields after the last chunk: bytes of this line, total trailer bytes, saw CR.
    Trailers { line: usize, total: usize, cr: bool },
    /// The last chunk and the trailers were read.
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] found after the bytes it consumed.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Chunk data (a part of one chunk), the last bytes consumed.
    Data(&'a [u8]),
    /// Only framing bytes were consumed, and the input ended: more is needed.
    More,
    /// The body ended (last chunk and trailers); nothing after it was consumed.
    End,
}

/// A malformed chunk: the offset in the input of the first byte that breaks the coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChunk {
    /// Offset of the offending byte in the input given to `decode`.
    pub at: usize,
}

/// The decoding state of one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    max_trailer_bytes: usize,
    /// Bytes of the trailer section consumed so far (its final CRLF included once done).
    trailer_len: usize,
}

fn size_line() -> State {
    State::Size {
        digits: 0,
        value: 0,
        extension: 0,
        cr: false,
    }
}

impl ChunkedDecoder {
    /// A body about to start; its trailers may take at most `max_trailer_bytes`.
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: size_line(),
            max_trailer_bytes,
            trailer_len: 0,
        }
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the trailer section (the fields after the last chunk and the empty line that
    /// ends them) consumed so far; they are always the last bytes a call consumed.
    pub fn trailer_len(&self) -> usize {
        self.trailer_len
    }

    /// Consumes framing bytes from `input` up to and including the next piece of chunk data,
    /// the end of the body, or the end of `input`. Returns the bytes consumed and what ended
    /// the call; the caller calls again with the rest.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Chunk<'a>), BadChunk> {
        let mut at = 0;
        while at < input.len() {
            if let State::Data(left) = self.state {
                let n = left.min((input.len() - at) as u64) as usize;
                self.state = if n as u64 == left {
                    State::DataEnd(false)
                } else {
                    State::Data(left - n as u64)
                };
                return Ok((at + n, Chunk::Data(&input[at..at + n])));
            }
            if self.state == State::Done {
                return Ok((at, Chunk::End));
            }
            let in_trailers = matches!(self.state, State::Trailers { .. });
            self.state = self.step(input[at]).ok_or(BadChunk { at })?;
            if in_trailers {
                self.trailer_len += 1;
            }
            at += 1;
        }
        let found = if self.state == State::Done {
            Chunk::End
        } else {
            Chunk::More
        };
        Ok((at, found))
    }

    /// The state after one framing byte, or `None` when the byte breaks the coding.
    fn step(&self, byte: u8) -> Option<State> {
        match self.state {
            State::Size {
                digits,
                value,
                extension,
                cr,
            } => size_step(digits, value, extension, cr, byte),
            State::DataEnd(expect_lf) => match (expect_lf, byte) {
                (false, b'\r') => Some(State::DataEnd(true)),
                (true, b'\n') => Some(size_line()),
                _ => None,
            },
            State::Trailers { line, total, cr } => {
                if total + 1 > self.max_trailer_bytes {
                    return None;
                }
                trailer_step(line, total, cr, byte)
            }
            State::Data(_) | State::Done => None,
        }
    }
}

fn size_step(digits: u8, value: u64, extension: usize, cr: bool, byte: u8) -> Option<State> {
    if cr {
        if byte != b'\n' || digits == 0 {
            return None;
        }
        return Some(if value == 0 {
            State::Trailers {
                line: 0,
                total: 0,
                cr: false,
            }
        } else {
            State::Data(value)
        });
    }
    if byte == b'\r' {
        return Some(State::Size {
            digits,
            value,
            extension,
            cr: true,
        });
    }
    if extension > 0 || byte == b';' {
        if byte == b'\n' || extension >= MAX_CHUNK_EXTENSION_BYTES {
            return None;
        }
        return Some(State::Size {
            digits,
            value,
            extension: extension + 1,
            cr: false,
        });
    }
    // Whitespace after the size (BWS before an extension) is not allowed without an extension;
    // anything else but a hex digit is garbage.
    let digit = (byte as char).to_digit(16)?;
    if digits >= MAX_CHUNK_SIZE_DIGITS {
        return None;
    }
    Some(State::Size {
        digits: digits + 1,
        value: (value << 4) | u64::from(digit),
        extension,
        cr: false,
    })
}

fn trailer_step(line: usize, total: usize, cr: bool, byte: u8) -> Option<State> {
    let total = total + 1;
    if cr {
        return match (byte, line) {
            (b'\n', 0) => Some(State::Done),
            (b'\n', _) => Some(State::Trailers {
                line: 0,
                total,
                cr: false,
            }),
            _ => None,
        };
    }
    match byte {
        b'\r' => Some(State::Trailers {
            line,
            total,
            cr: true,
        }),
        b'\n' => None,
        _ => Some(State::Trailers {
            line: line + 1,
            total,
            cr: false,
        }),
    }
}

/// Appends the size line of a chunk of `len` bytes (`len` > 0) to `out`.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len > 0, "a chunk of size 0 is the last chunk");
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    while n > 0 {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends one whole chunk holding `data` (nothing when `data` is empty).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes: the data, or the offset of the bad byte.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), usize> {
        let mut decoder = ChunkedDecoder::new(64);
        let mut data = Vec::new();
        let mut offset = 0;
        while offset < input.len() {
            let end = (offset + step).min(input.len());
            let mut piece = &input[offset..end];
            loop {
                let (used, found) = decoder.decode(piece).map_err(|bad| offset + bad.at)?;
                if let Chunk::Data(d) = found {
                    data.extend_from_slice(d);
                }
                piece = &piece[used..];
                offset += used;
                if found == Chunk::End {
                    return Ok((data, offset));
                }
                if piece.is_empty() {
                    break;
                }
            }
        }
        Err(usize::MAX)
    }

    fn decode_all_ways(input: &[u8]) -> Result<(Vec<u8>, usize), usize> {
        let whole = decode_in_steps(input, input.len().max(1));
        for step in 1..input.len() {
            assert_eq!(decode_in_steps(input, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn chunks_extensions_and_trailers() {
        let body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (data, end) = decode_all_ways(body).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(&body[end..], b"NEXT", "nothing after the body is consumed");
        let (data, end) = decode_all_ways(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!((data.len(), end), (10, 20));
        let mut decoder = ChunkedDecoder::new(64);
        let mut at = 0;
        while !decoder.is_done() {
            let (used, _) = decoder.decode(&body[at..at + 1]).unwrap();
            at += used;
        }
        assert_eq!(decoder.trailer_len(), "X-Trailer: 1\r\n\r\n".len());
    }

    #[test]
    fn malformed_chunks_are_refused_at_the_offending_byte() {
        let cases: &[(&[u8], usize)] = &[
            (b"zz\r\n", 0),
            (b"5\r\nhelloXX", 8),
            (b"11111111111111111\r\n", 16),
            (b"5 \r\nhello\r\n", 1),
            (b"\r\n", 1),
            (b"5\nhello", 1),
            (b"5\r\nhello\r\n0\r\nX: 1\n", 17),
            (b"5\r\nhello\r\n0\r\n\r\r", 14),
        ];
        for (input, at) in cases {
            assert_eq!(
                decode_all_ways(input),
                Err(*at),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_extension = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(5000));
        assert!(decode_all_ways(long_extension.as_bytes()).is_err());
        let big_trailers = format!("0\r\nX: {}\r\n\r\n", "t".repeat(100));
        assert!(decode_all_ways(big_trailers.as_bytes()).is_err());
    }

    #[test]
    fn written_chunks_decode_to_their_data() {
        let mut out = Vec::new();
        for len in [1usize, 15, 16, 255, 4096, 70000] {
            write_chunk(&mut out, &vec![b'x'; len]);
        }
        write_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let (data, end) = decode_in_steps(&out, 777).unwrap();
        assert_eq!(data.len(), 1 + 15 + 16 + 255 + 4096 + 70000);
        assert_eq!(end, out.len());
        let mut size = Vec::new();
        write_chunk_size(&mut size, 0x1a2b);
        assert_eq!(size, b"1a2b\r\n");
    }
}
