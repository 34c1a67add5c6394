//! scoregate: an inference router for Azure ML style online endpoints on Kubernetes.
//!
//! The request path (DESIGN.md): [`proxy`] answers requests from the [`table::RoutingTable`]
//! that [`discovery`] publishes; [`balance`] admits them onto pods; [`upstream`] forwards them.
//! [`router::Router`] assembles one instance; [`demo`] runs one with [`sample_model`] pods.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod autoscale;
pub mod cluster;
pub mod config;
pub mod crd;
pub mod demo;
pub mod discovery;
pub mod http1;
pub mod k8s;
pub mod model;
pub mod proxy;
pub mod router;
pub mod sample_model;
pub mod server;
pub mod table;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
