//! Every metric the router exports: name, type, labels and meaning, in one table. It gives each
//! metric its `# HELP` line, and it is the README's table of metrics (`tests/metrics.rs` fails
//! when the README, this table and a real `/metrics` disagree).
//!
//! Labels are bounded: `endpoint` and `deployment` are names from configuration (an unknown
//! endpoint is `""`), `code` an HTTP status, `error` one of the router's `error.code`s; the
//! others are small closed sets named in each meaning. No label carries a path, a header or
//! anything else a client chooses; the one pod address, on
//! `scoregate_cluster_pod_peak_in_flight`, is a routed pod's (bounded by the deployments' pods).

use metrics::{KeyName, Recorder, SharedString};

/// What kind of metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The Prometheus type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels, in order.
    pub labels: &'static [&'static str],
    /// What it means (the `# HELP` text).
    pub help: &'static str,
}

const ED: &[&str] = &["endpoint", "deployment"];

const fn entry(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Entry {
    Entry {
        name,
        kind,
        labels,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric, grouped as the README shows them.
pub const CATALOG: &[Entry] = &[
    entry("scoregate_requests_total", Counter, &["endpoint", "deployment", "code", "source", "error"],
        "Answers to clients by status code and by who made them: source=\"model\" (the pod's answer, passed through; error=\"\") or source=\"router\" (the router's own, with its error.code in error, e.g. QueueTimeout, NoReadyPod, UpstreamTimeout). deployment=\"\" before one was chosen, endpoint=\"\" when none was found."),
    entry("scoregate_request_duration_seconds", Histogram, ED,
        "Time from a request's arrival to its response headers, in seconds."),
    entry("scoregate_upstream_duration_seconds", Histogram, ED,
        "Time from sending a request to the pod to the pod's response headers, in seconds."),
    entry("scoregate_queue_wait_seconds", Histogram, ED,
        "Time a request waited for a free slot on a pod, in seconds."),
    entry("scoregate_request_size_bytes", Histogram, ED,
        "Request bodies of routed requests that declare their length (Content-Length), in bytes."),
    entry("scoregate_response_size_bytes", Histogram, ED,
        "Response bodies streamed from pods to clients, in bytes, counted when the body ends or the client goes away."),
    entry("scoregate_response_first_byte_seconds", Histogram, ED,
        "Streamed responses (server-sent events, or bodies of unknown length): time from the request's arrival to the body's first byte (for an LLM, time to first token), in seconds."),
    entry("scoregate_response_chunk_gap_seconds", Histogram, ED,
        "Streamed responses: time between two chunks of a body (for an LLM, between tokens), in seconds."),
    entry("scoregate_response_chunks", Histogram, ED,
        "Streamed responses: chunks per body, counted when the body ends or the client goes away."),
    entry("scoregate_upstream_retries_total", Counter, ED,
        "Requests sent again to another pod because connecting to the first failed (nothing had been sent)."),
    entry("scoregate_upstream_connect_errors_total", Counter, ED,
        "Failed connection attempts to pods."),
    entry("scoregate_in_flight_requests", Gauge, ED,
        "Requests on pods now."),
    entry("scoregate_queue_depth", Gauge, ED,
        "Requests waiting for a slot now."),
    entry("scoregate_routable_pods", Gauge, ED,
        "Pods that get new requests now (ready, not terminating)."),
    entry("scoregate_busy_pods", Gauge, ED,
        "Pods with at least one request in flight now."),
    entry("scoregate_abandoned_requests_total", Counter, &["endpoint", "deployment", "outcome"],
        "Requests the router gave up on (504, client gone, HTTP/2 reset, mirror copy dropped) while their pod was busy, by how their slot was freed: drained (the pod's answer read to its end), closed (the router closed the connection and held the slot to its bound), failed (the pod broke the connection)."),
    entry("scoregate_abandoned_slot_hold_seconds", Histogram, ED,
        "Time an abandoned request kept its slot after the router gave up on it, in seconds."),
    entry("scoregate_pod_ejections_total", Counter, ED,
        "Pods taken out of the rotation by passive outlier detection (consecutive connection failures)."),
    entry("scoregate_ejected_pods", Gauge, ED,
        "Pods out of the rotation now (ejected by outlier detection); appears with the deployment's first ejection."),
    entry("scoregate_pod_scrapes_total", Counter, &["endpoint", "deployment", "outcome"],
        "Scrapes of the pods' own metrics (routing podMetrics) by outcome: ok, failed (refused, an error status, or a page without the load metrics), timeout. A failed pod keeps its last report, which ages out."),
    entry("scoregate_mirror_requests_total", Counter, &["endpoint", "deployment", "result"],
        "Mirrored copies by result: sent, skipped (body over the mirror cap), dropped (no free slot), failed."),
    entry("scoregate_table_reloads_total", Counter, &["source", "result"],
        "Routing-table loads by source (file, kube) and result (applied, refused)."),
    entry("scoregate_table_endpoints", Gauge, &[],
        "Endpoints in the routing table now."),
    entry("scoregate_open_connections", Gauge, &["listener"],
        "Client connections open now, by listener (http, https)."),
    entry("scoregate_client_send_timeouts_total", Counter, &[],
        "Client connections closed because the client accepted no response bytes for limits.send_timeout_ms (a stalled socket, or an HTTP/2 stream stalled by flow control)."),
    entry("scoregate_h2_reset_floods_total", Counter, &[],
        "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for resetting accepted streams faster than limits.h2_reset_streams_per_second."),
    entry("scoregate_tls_certificate_reloads_total", Counter, &["result"],
        "Certificate loads by result (applied, refused)."),
    entry("scoregate_tls_certificate_expiry_days", Gauge, &[],
        "Days until the served certificate expires, with their fraction; below 0 once it has expired."),
    entry("scoregate_tls_sni_mismatches_total", Counter, &[],
        "TLS handshakes whose server name was not sslCname (served anyway)."),
    entry("scoregate_tls_handshake_errors_total", Counter, &[],
        "TLS handshakes that failed or timed out, plain HTTP sent to the HTTPS port included."),
    entry("scoregate_discovery_up", Gauge, &[],
        "1 while every Kubernetes watch works; 0 while one cannot list or watch (the last table is served)."),
    entry("scoregate_discovery_watch_errors_total", Counter, &["resource"],
        "Failed lists and watches by resource (onlineendpoints, onlinedeployments, endpointslices, secrets, tls-secret)."),
    entry("scoregate_discovery_relists_total", Counter, &["resource"],
        "Relists after a 410 Expired, by resource."),
    entry("scoregate_discovery_rejections_total", Counter, &["reason"],
        "Problems found with endpoints and objects, each counted once, by reason (invalid_spec, invalid, keys, conflict, endpoint_missing, service_missing, slice_address)."),
    entry("scoregate_discovery_rejected", Gauge, &[],
        "Endpoints and objects not served as declared now."),
    entry("scoregate_discovery_event_to_routable_seconds", Histogram, &[],
        "Time from a watch event reaching the router to the table that reflects it being published, in seconds."),
    entry("scoregate_discovery_rebuild_seconds", Histogram, &[],
        "Time one rebuild of the changed endpoints takes, in seconds."),
    entry("scoregate_status_writes_total", Counter, &["kind", "result"],
        "Writes of status.conditions by kind (OnlineEndpoint, OnlineDeployment) and result (applied, failed)."),
    entry("scoregate_autoscale_desired_replicas", Gauge, ED,
        "Replicas the load asks for, within minInstances..maxInstances."),
    entry("scoregate_autoscale_current_replicas", Gauge, ED,
        "Replicas of the target Deployment after the last decision."),
    entry("scoregate_autoscale_scale_events_total", Counter, &["endpoint", "deployment", "direction"],
        "Replica changes made, by direction (up, down)."),
    entry("scoregate_autoscale_decisions_total", Counter, ED,
        "Decisions made by this replica as the deployment's owner (one per pollingInterval)."),
    entry("scoregate_autoscale_refused", Gauge, &["endpoint", "deployment", "reason"],
        "1 while the autoscaler leaves the deployment alone, by reason (hpa)."),
    entry("scoregate_autoscale_refusals_total", Counter, &["endpoint", "deployment", "reason"],
        "Times the autoscaler started leaving a deployment alone, by reason (hpa)."),
    entry("scoregate_autoscale_conflicts_total", Counter, ED,
        "Scale writes that lost to a concurrent change (409 Conflict)."),
    entry("scoregate_autoscale_errors_total", Counter, ED,
        "Failed reads and writes of scales and statuses."),
    entry("scoregate_cluster_admissions_total", Counter, &["via"],
        "Admissions by how the slot was obtained: owner (this replica owns the deployment), remote (granted by the owner), fallback (owner unreachable)."),
    entry("scoregate_cluster_grant_duration_seconds", Histogram, &[],
        "Time from asking the owner replica for a slot to having it (queue wait at the owner included), in seconds."),
    entry("scoregate_cluster_grants_served_total", Counter, &[],
        "Grants this replica gave other replicas, as owner."),
    entry("scoregate_cluster_handovers_total", Counter, &[],
        "Deployments this replica took over when its view changed."),
    entry("scoregate_cluster_leases_reported_total", Counter, &[],
        "Held slots reported to the replica that owns them in its view."),
    entry("scoregate_cluster_over_admissions_total", Counter, &[],
        "Slots taken over a pod's cap: reported fallback admissions that did not fit."),
    entry("scoregate_cluster_lease_expiries_total", Counter, &[],
        "Leases that expired before their holder released them."),
    entry("scoregate_cluster_leases_vanished_total", Counter, &[],
        "Leases whose holder vanished with its connection, kept until they expire or the holder reports again."),
    entry("scoregate_cluster_refused_total", Counter, &[],
        "Requests and handshakes refused for a missing or wrong cluster credential."),
    entry("scoregate_cluster_members", Gauge, &[],
        "Members of this replica's view, itself included when it is one."),
    entry("scoregate_cluster_view_epoch", Gauge, &[],
        "The epoch of this replica's view (it only grows)."),
    entry("scoregate_cluster_view_changes_total", Counter, &[],
        "Times this replica took a new view (members or epoch)."),
    entry("scoregate_cluster_stalls_total", Counter, &[],
        "Times this replica found it had been stopped or starved for longer than a peer timeout."),
    entry("scoregate_cluster_isolated", Gauge, &[],
        "1 while this replica is isolated: not ready, admitting only under cluster.fallback."),
    entry("scoregate_cluster_stale_grants_total", Counter, &[],
        "Grants ignored because the owner answered from an older epoch than this replica's view."),
    entry("scoregate_cluster_pod_peak_in_flight", Gauge, &["endpoint", "deployment", "pod"],
        "The most requests this replica counted on the pod at once when it admitted or granted for it as the owner (every replica's requests) or under the fallback."),
    entry("scoregate_build_info", Gauge, &["version", "revision"],
        "1, labelled with the version and git revision of this build."),
    entry("process_cpu_seconds_total", Counter, &[],
        "User and system CPU time spent, in whole seconds."),
    entry("process_resident_memory_bytes", Gauge, &[],
        "Resident memory, in bytes."),
    entry("process_virtual_memory_bytes", Gauge, &[],
        "Virtual memory, in bytes."),
    entry("process_virtual_memory_max_bytes", Gauge, &[],
        "The limit on virtual memory, in bytes (absent when unlimited)."),
    entry("process_open_fds", Gauge, &[],
        "Open file descriptors (client and pod connections among them)."),
    entry("process_max_fds", Gauge, &[],
        "The limit on open file descriptors."),
    entry("process_start_time_seconds", Gauge, &[],
        "When the process started, in seconds since the Unix epoch."),
    entry("process_threads", Gauge, &[],
        "OS threads in the process."),
];

/// The entry of metric `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// Gives every metric of the catalog its `# HELP` line in `recorder`.
pub fn describe(recorder: &impl Recorder) {
    for e in CATALOG {
        let name = KeyName::from_const_str(e.name);
        let help = SharedString::const_str(e.help);
        match e.kind {
            Kind::Counter => recorder.describe_counter(name, None, help),
            Kind::Gauge => recorder.describe_gauge(name, None, help),
            Kind::Histogram => recorder.describe_histogram(name, None, help),
        }
    }
}

/// The catalog as the README's Markdown table.
pub fn markdown_table() -> String {
    let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for e in CATALOG {
        let labels: Vec<String> = e.labels.iter().map(|l| format!("`{l}`")).collect();
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            e.name,
            e.kind.as_str(),
            labels.join(", "),
            e.help.replace('|', "\\|")
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        let mut names: Vec<_> = CATALOG.iter().map(|e| e.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "a metric is listed twice");
        for e in CATALOG {
            assert_eq!(
                e.kind == Kind::Counter,
                e.name.ends_with("_total"),
                "{}",
                e.name
            );
        }
    }
}
