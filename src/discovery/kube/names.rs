//! Metric names and label values of Kubernetes discovery (`telemetry::names` holds the router's
//! others).

/// Time from a watch event reaching the router to the table that reflects it being
/// published, in seconds.
pub const EVENT_TO_ROUTABLE: &str = "scoregate_discovery_event_to_routable_seconds";
/// Time one rebuild (resolve, validate, publish the changed endpoints) takes, in seconds.
pub const REBUILD: &str = "scoregate_discovery_rebuild_seconds";
/// 1 while every watch works; 0 while one cannot list or watch (the last table is served).
pub const UP: &str = "scoregate_discovery_up";
/// Failed lists and watches, by resource.
pub const WATCH_ERRORS: &str = "scoregate_discovery_watch_errors_total";
/// Relists after a 410 Expired, by resource.
pub const RELISTS: &str = "scoregate_discovery_relists_total";
/// Problems found with endpoints and objects, each counted once, by `reason` (the closed set
/// of [`super::problems::Reason`]).
pub const REJECTIONS: &str = "scoregate_discovery_rejections_total";
/// Endpoints and objects not served as declared now.
pub const REJECTED: &str = "scoregate_discovery_rejected";

/// The `resource` label of the TLS Secret's watch.
pub const RESOURCE_TLS_SECRET: &str = "tls-secret";
