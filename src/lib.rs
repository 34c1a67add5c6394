//! scoregate: an inference router for Azure ML style online endpoints on Kubernetes.
//!
//! The request path, phase by phase ([`proxy`]): route against the [`table::RoutingTable`] that
//! [`discovery`] publishes, admit onto a pod under its cap ([`admission`], across replicas
//! through [`cluster`]), forward on the pod's connection ([`upstream`]), respond, record
//! ([`telemetry`]). [`server`] accepts the connections and guards HTTP/1 framing ([`http1`]);
//! [`router::Router`] assembles one instance (the only module that wires the layers together);
//! [`demo`] runs one with [`sample_model`] pods.
//!
//! `docs/ARCHITECTURE.md` describes the request path, the module map, the layers (a module
//! imports only from the layers below it) and the invariants, and where each is kept.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod autoscale;
pub mod cluster;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod demo;
pub mod discovery;
pub mod http1;
pub mod k8s;
pub mod model;
pub mod picking;
pub mod proxy;
pub mod router;
pub mod sample_llm;
pub mod sample_model;
pub mod server;
pub mod table;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod watch;
