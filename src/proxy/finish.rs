//! What a pod's response body does as it goes to the client and when it ends: the record
//! phase's accounting that travels with the body (`proxy::record` makes it, `proxy::body` runs
//! it).

use metrics::Histogram;

use crate::telemetry::stream::StreamTiming;
use crate::telemetry::{DeploymentMetrics, RequestRecord};

/// What a response body does as it goes and when it ends, fails or is dropped: times a streamed
/// body's chunks, counts its size and writes the access-log line (when the policy wants one).
pub struct Finish {
    response_size: Histogram,
    record: Option<Box<RequestRecord>>,
    /// Boxed: only streamed responses pay for it.
    stream: Option<Box<Streamed>>,
}

/// A streamed body's timing and where it goes.
struct Streamed {
    timing: StreamTiming,
    first_byte: Histogram,
    chunks: Histogram,
}

impl Finish {
    /// Accounting for a response of the deployment with `metrics`: `record` is its access-log
    /// line and span (when wanted), `stream` the timing of a streamed body.
    pub fn new(
        metrics: &DeploymentMetrics,
        record: Option<Box<RequestRecord>>,
        stream: Option<StreamTiming>,
    ) -> Self {
        Finish {
            response_size: metrics.response_size().clone(),
            record,
            stream: stream.map(|timing| {
                Box::new(Streamed {
                    timing,
                    first_byte: metrics.first_byte().clone(),
                    chunks: metrics.chunks().clone(),
                })
            }),
        }
    }

    /// One data chunk of `len` bytes goes to the client now.
    #[inline]
    pub fn chunk(&mut self, len: usize) {
        if let Some(stream) = &mut self.stream {
            stream.timing.chunk(len);
        }
    }

    /// Records a body of `response_bytes`; `complete` says whether it reached its end.
    pub fn finish(self, response_bytes: u64, complete: bool) {
        self.response_size.record(response_bytes as f64);
        let stats = self.stream.map(|s| {
            let stats = s.timing.stats();
            if let Some(first) = stats.first_byte {
                s.first_byte.record(first.as_secs_f64());
            }
            s.chunks.record(stats.chunks as f64);
            stats
        });
        if let Some(record) = self.record {
            record.finish(response_bytes, complete, stats);
        }
    }
}
