//! scoregate: an inference router for Azure ML style online endpoints on Kubernetes.
//!
//! The request path (DESIGN.md): [`proxy`] answers requests from the [`table::RoutingTable`]
//! that discovery publishes; [`balance`] admits them onto pods; [`upstream`] forwards them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod balance;
pub mod body;
pub mod model;
pub mod proxy;
pub mod table;
pub mod telemetry;
pub mod upstream;
