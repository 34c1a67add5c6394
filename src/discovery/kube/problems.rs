//! Why something is not served as declared, and reporting it once.
//!
//! Every problem has a [`Reason`] from a closed set (the `reason` label of
//! `scoregate_discovery_rejections_total`) and a message that names the object, the field and the
//! fix. [`Reports`] logs a problem as a warning and counts it once per subject (an endpoint or an
//! object) while it stays the same: a rebuild that finds it again says nothing. When the problem
//! is gone, one line says so; `scoregate_discovery_rejected` is how many subjects have one now.

use std::collections::HashMap;

use metrics::Gauge;

use super::names;
use crate::telemetry::Metrics;

/// Why an endpoint or object is not served as declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A field of an OnlineEndpoint's or OnlineDeployment's `spec` cannot be read: a wrong type,
    /// a required field missing, no `spec` at all, or a Service name that is not one.
    InvalidSpec,
    /// The declaration breaks Azure ML's rules (weights that do not sum to 100, limits, names).
    Invalid,
    /// The endpoint's keys Secret is missing, not Opaque, or has no usable `primaryKey`.
    Keys,
    /// Two objects claim one name (an endpoint name in two namespaces, a deployment name twice).
    Conflict,
    /// An OnlineDeployment names an endpoint that has no OnlineEndpoint in its namespace.
    EndpointMissing,
    /// An OnlineDeployment's Service has no EndpointSlices (it does not exist, or has no
    /// selector): the deployment has no pods.
    ServiceMissing,
    /// An EndpointSlice lists an address that is not an IP address (it is ignored).
    SliceAddress,
}

impl Reason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "invalid_spec",
            Reason::Invalid => "invalid",
            Reason::Keys => "keys",
            Reason::Conflict => "conflict",
            Reason::EndpointMissing => "endpoint_missing",
            Reason::ServiceMissing => "service_missing",
            Reason::SliceAddress => "slice_address",
        }
    }
}

/// One problem: why, and what to tell the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Why.
    pub reason: Reason,
    /// What is wrong, where (object and field), and the fix.
    pub message: String,
}

impl Problem {
    /// A problem of `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// The problems reported now, by subject.
pub struct Reports {
    metrics: Metrics,
    current: HashMap<String, Problem>,
    /// Endpoint name → the object subjects its last resolution reported.
    by_endpoint: HashMap<String, Vec<String>>,
    rejected: Gauge,
}

impl Reports {
    /// Reports counted in `metrics`.
    pub fn new(metrics: &Metrics) -> Reports {
        Reports {
            metrics: metrics.clone(),
            current: HashMap::new(),
            by_endpoint: HashMap::new(),
            rejected: metrics.gauge(names::REJECTED, &[]),
        }
    }

    /// `subject` has `problem`: logged and counted unless it was already reported as is.
    pub fn report(&mut self, subject: &str, problem: Problem) {
        if self.current.get(subject) == Some(&problem) {
            return;
        }
        tracing::warn!(reason = problem.reason.as_str(), "{}", problem.message);
        self.metrics
            .counter(names::REJECTIONS, &[("reason", problem.reason.as_str())])
            .increment(1);
        self.current.insert(subject.to_string(), problem);
        self.rejected.set(self.current.len() as f64);
    }

    /// `subject` has no problem (any more).
    pub fn clear(&mut self, subject: &str) {
        if self.current.remove(subject).is_some() {
            tracing::info!("{subject} is served as declared again");
            self.rejected.set(self.current.len() as f64);
        }
    }

    /// What the resolution of endpoint `name` found wrong with other objects (shadowed
    /// OnlineEndpoints, OnlineDeployments without their endpoint or Service): replaces what the
    /// last resolution of `name` found.
    pub fn note_objects(&mut self, name: &str, objects: Vec<(String, Problem)>) {
        let subjects: Vec<String> = objects.iter().map(|(s, _)| s.clone()).collect();
        let before = if subjects.is_empty() {
            self.by_endpoint.remove(name).unwrap_or_default()
        } else {
            self.by_endpoint
                .insert(name.to_string(), subjects.clone())
                .unwrap_or_default()
        };
        for subject in before.iter().filter(|s| !subjects.contains(s)) {
            self.clear(subject);
        }
        for (subject, problem) in objects {
            self.report(&subject, problem);
        }
    }

    /// The problem `subject` has now, if any.
    pub fn problem(&self, subject: &str) -> Option<&Problem> {
        self.current.get(subject)
    }

    /// How many subjects have a problem now.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether nothing has a problem now.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}
