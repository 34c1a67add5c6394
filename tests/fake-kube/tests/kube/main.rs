//! The real kube 5 client, watcher and reflector against the fake API server.

mod api;
mod support;
mod watching;
mod wire;
