//! scoregate-ext: installs scoregate the way `az k8s-extension create --extension-type
//! Microsoft.AzureML.Kubernetes` installs Azure ML's inference router, from the same settings.
//!
//! The path: [`settings`] (key=value words → typed settings) → [`validate`] (az's rules and
//! more, against [`cluster`] facts → a plan) → [`render`] (plan → Kubernetes objects) →
//! [`apply`] (server-side apply, prune, delete) and [`status`] (readiness, provisioningState).
//! [`cli`] is the command line over all of it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod cluster;
pub mod dryrun;
pub mod impact;
pub mod kinds;
pub mod names;
pub mod ops;
pub mod pem;
pub mod problem;
pub mod render;
pub mod settings;
pub mod status;
pub mod suggest;
pub mod validate;
pub mod values;
