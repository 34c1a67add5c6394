//! The process's own metrics, read from `/proc` at every scrape (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, … as Prometheus's client libraries name
//! them, through the `metrics-process` crate), and `scoregate_build_info`.

use super::{names, Metrics};

/// The version of this build (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision this build was made from (`unknown` outside a git checkout; set
/// `SCOREGATE_REVISION` when building from an archive).
pub const REVISION: &str = env!("SCOREGATE_REVISION");

/// Collects the process metrics into whichever recorder is current when it runs.
#[derive(Default)]
pub struct ProcessMetrics {
    collector: metrics_process::Collector,
}

impl ProcessMetrics {
    /// Reads `/proc/self` and sets the `process_*` metrics.
    pub fn collect(&self) {
        self.collector.collect();
    }
}

/// Sets `scoregate_build_info{version,revision} 1`.
pub fn set_build_info(metrics: &Metrics) {
    metrics
        .gauge(
            names::BUILD_INFO,
            &[("version", VERSION), ("revision", REVISION)],
        )
        .set(1.0);
}
