//! Timing of a streamed response body (server-sent events, chunked): time to its first byte
//! (for an LLM, time to first token), the gaps between its chunks, and its chunks and bytes.
//! Gaps go to their histogram as they happen; the rest when the body ends (the proxy's record
//! phase), with the access-log line.

use std::time::{Duration, Instant};

use metrics::Histogram;

/// What a streamed body measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// From the request's arrival to the body's first byte.
    pub first_byte: Option<Duration>,
    /// Data chunks (frames) sent.
    pub chunks: u64,
    /// The longest gap between two chunks.
    pub longest_gap: Duration,
}

/// Measures one streamed body frame by frame.
#[derive(Debug)]
pub struct StreamTiming {
    started: Instant,
    last: Option<Instant>,
    stats: StreamStats,
    gaps: Histogram,
}

impl StreamTiming {
    /// Timing for a request that arrived at `started`, recording each gap into `gaps`.
    pub fn new(started: Instant, gaps: Histogram) -> Self {
        StreamTiming {
            started,
            last: None,
            stats: StreamStats::default(),
            gaps,
        }
    }

    /// One data chunk of `len` bytes went out now (empty chunks do not count).
    pub fn chunk(&mut self, len: usize) {
        if len == 0 {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => self.stats.first_byte = Some(now - self.started),
            Some(last) => {
                let gap = now - last;
                self.gaps.record(gap.as_secs_f64());
                self.stats.longest_gap = self.stats.longest_gap.max(gap);
            }
        }
        self.last = Some(now);
        self.stats.chunks += 1;
    }

    /// What was measured so far.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_gaps_and_chunks() {
        let started = Instant::now() - Duration::from_millis(50);
        let mut timing = StreamTiming::new(started, Histogram::noop());
        assert_eq!(timing.stats(), StreamStats::default());
        timing.chunk(0);
        assert_eq!(timing.stats().chunks, 0);
        timing.chunk(10);
        let first = timing.stats().first_byte.unwrap();
        assert!(first >= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(2));
        timing.chunk(5);
        timing.chunk(5);
        let stats = timing.stats();
        assert_eq!(stats.chunks, 3);
        assert_eq!(stats.first_byte, Some(first));
        assert!(stats.longest_gap >= Duration::from_millis(2));
    }
}
