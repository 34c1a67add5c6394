//! A fake Kubernetes API server for scoregate's tests.
//!
//! It serves plain HTTP/1.1 on `127.0.0.1` and speaks the list/watch protocol exactly as kube 5
//! expects it (its README lists what is faithful and what is simplified), so tests run the real
//! `kube::Client`, `watcher` and `reflector` against it. Tests also drive it directly: a
//! programmatic object API (whose writes emit the same watch events), a request log, and fault
//! hooks (dropped or stalled watches, in-stream 410s, compaction, 503s, delays, restarts).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod collection;
mod discovery;
mod faults;
mod kinds;
mod objects;
mod patch;
mod paths;
mod requests_log;
mod routes;
mod selectors;
mod server;
mod service;
mod status;
mod store;
mod subresources;
mod watch;

pub use requests_log::RecordedRequest;
pub use server::FakeApiServer;
pub use status::ApiError;
