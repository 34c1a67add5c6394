//! Kubernetes watches: the one way scoregate follows objects in the API server (discovery, the
//! TLS Secret, the autoscaler's objects, the cluster's peers).
//!
//! | module | concern |
//! |---|---|
//! | [`client`] | the shared client (kube's per-request retry off: watches retry themselves) |
//! | [`watch`] | the primitive: watcher → reflector store → bounded channel, driven with backoff |
//! | [`backoff`] | the retry schedule: 250 ms doubling to 5 s, ±20 % jitter, reset only by progress |
//! | [`pacing`] | watches the API server ends at once are reopened after a growing delay |
//! | [`health`] | outages per group of watches: throttled logs, and an [`health::Observer`] for metrics |
//! | [`trim`] | dropping what no consumer reads before objects are stored |
//!
//! The protocol itself (list, watch from the last resourceVersion, relist after a 410, bookmarks)
//! is kube-runtime's `watcher`; this module adds the policy around it. It depends on nothing of
//! scoregate: consumers pass names, selectors, a trimming function, a [`health::Observer`] and a
//! channel.

pub mod backoff;
pub mod client;
pub mod health;
pub mod pacing;
pub mod trim;
pub mod watch;

pub use client::client;
pub use health::{Health, Observer};
pub use watch::{start, start_store, Sink, Spec, Update, Watch, WatchTask};
