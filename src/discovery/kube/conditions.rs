//! The `Ready` condition of each OnlineEndpoint and OnlineDeployment, decided from what the
//! resolution of its endpoint found: the problems [`super::problems`] already classifies (so a
//! problem is never classified twice) and, for deployments, whether their pods are ready. The
//! conditions go on the [`Board`] that the status writer (`crate::conditions::writer`) reads.
//!
//! | reason | object | when |
//! |---|---|---|
//! | `Serving` (True) | both | served as declared; a deployment with at least one ready pod |
//! | `KeysMissing` | OnlineEndpoint | the keys Secret is missing, not Opaque, or has no `primaryKey` |
//! | `InvalidSpec` | both | a field of `spec` cannot be read |
//! | `WeightsInvalid` | OnlineEndpoint | `traffic`/`mirrorTraffic` break Azure ML's rules |
//! | `KeysInvalid`, `SettingsInvalid` | OnlineEndpoint | keys too short; other rules (names, limits) |
//! | `NameConflict` | both | an endpoint name in two namespaces, a deployment name twice |
//! | `EndpointNotFound` | OnlineDeployment | its namespace has no OnlineEndpoint of that name |
//! | `EndpointNotReady` | OnlineDeployment | its endpoint is not served (see the endpoint's reason) |
//! | `ServiceNotFound` | OnlineDeployment | its Service has no EndpointSlices |
//! | `NoReadyPods` | OnlineDeployment | its Service lists no ready pod |

use super::problems::{Problem, Reason};
use super::resources::ObjKey;
use super::translate::{Cluster, Declaration, ObjectState};
use crate::conditions::{Board, Entry, Kind, ObjectRef, Ready, Writer};
use crate::model::RouteSpec;

/// What the resolution of one endpoint found, for its objects' conditions.
pub struct Resolved<'a> {
    /// The endpoint's name.
    pub name: &'a str,
    /// The namespace of the OnlineEndpoint that serves the name.
    pub namespace: &'a str,
    /// The endpoint's own problem, as reported.
    pub problem: Option<&'a Problem>,
    /// What is served for it now (its declaration, or its last valid one), if anything.
    pub served: Option<&'a RouteSpec>,
    /// The declaration served (which OnlineDeployment is which deployment).
    pub declaration: Option<&'a Declaration>,
    /// Problems of other objects it found, by subject (`OnlineDeployment ns/name`, …).
    pub objects: &'a [(String, Problem)],
}

/// The condition word of a problem's reason; `message` refines Azure ML's rules.
fn reason_word(problem: &Problem) -> &'static str {
    match problem.reason {
        Reason::InvalidSpec => "InvalidSpec",
        Reason::Keys => "KeysMissing",
        Reason::Conflict => "NameConflict",
        Reason::EndpointMissing => "EndpointNotFound",
        Reason::ServiceMissing => "ServiceNotFound",
        Reason::SliceAddress => "SliceAddressInvalid",
        Reason::Invalid
            if problem.message.contains(".traffic")
                || problem.message.contains(".mirror_traffic") =>
        {
            "WeightsInvalid"
        }
        Reason::Invalid if problem.message.contains(".keys.") => "KeysInvalid",
        Reason::Invalid => "SettingsInvalid",
    }
}

fn not_ready(problem: &Problem) -> Ready {
    Ready {
        ready: false,
        reason: reason_word(problem),
        message: problem.message.clone(),
        observed_generation: None,
    }
}

fn serving(message: String) -> Ready {
    Ready {
        ready: true,
        reason: "Serving",
        message,
        observed_generation: None,
    }
}

/// The object a report's subject names (`OnlineEndpoint ns/name`, `OnlineDeployment ns/name`).
pub fn object_of(subject: &str) -> Option<ObjectRef> {
    let (kind, rest) = subject.split_once(' ')?;
    let kind = match kind {
        "OnlineEndpoint" => Kind::Endpoint,
        "OnlineDeployment" => Kind::Deployment,
        _ => return None,
    };
    let (namespace, name) = rest.split_once('/')?;
    Some(ObjectRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// The condition of one OnlineDeployment of the endpoint (`spec_error` when its spec cannot be
/// read), and who writes it.
fn deployment_ready(
    resolved: &Resolved<'_>,
    object: &str,
    spec_error: Option<&String>,
) -> (Ready, Writer) {
    let ns = resolved.namespace;
    let subject = format!("OnlineDeployment {ns}/{object}");
    let declared = resolved
        .declaration
        .and_then(|d| d.deployments.iter().find(|d| d.object == object));
    let writer = declared.map_or(Writer::Endpoints, |d| {
        Writer::Deployment(resolved.name.to_string(), d.spec.name.clone())
    });
    if let Some((_, problem)) = resolved.objects.iter().find(|(s, _)| *s == subject) {
        return (not_ready(problem), writer);
    }
    if let Some(error) = spec_error {
        let problem = Problem::new(Reason::InvalidSpec, error.clone());
        return (not_ready(&problem), writer);
    }
    let (Some(served), Some(declared)) = (resolved.served, declared) else {
        let why = resolved
            .problem
            .map_or("it is not served".to_string(), |p| p.message.clone());
        let ready = Ready {
            ready: false,
            reason: match resolved.problem {
                Some(p) if resolved.served.is_some() => reason_word(p),
                _ => "EndpointNotReady",
            },
            message: format!("endpoint `{}`: {why}", resolved.name),
            observed_generation: None,
        };
        return (ready, writer);
    };
    let key = (resolved.name.to_string(), declared.spec.name.clone());
    let routable = served
        .deployments
        .get(&key)
        .map_or(0, |d| d.pods.iter().filter(|p| p.routable()).count());
    let ready = if routable == 0 {
        Ready {
            ready: false,
            reason: "NoReadyPods",
            message: format!(
                "Service {ns}/{} lists no ready pod: requests to deployment `{}` get 503 NoReadyPod until one is ready",
                declared.service, declared.spec.name
            ),
            observed_generation: None,
        }
    } else {
        serving(format!(
            "deployment `{}` of endpoint `{}` is served by the ready pods of Service {ns}/{}",
            declared.spec.name, resolved.name, declared.service
        ))
    };
    (ready, writer)
}

/// Puts the conditions of every object the resolution of endpoint `resolved.name` looked at on
/// `board`.
pub fn post(board: &Board, cluster: &Cluster, resolved: &Resolved<'_>) {
    let ns = resolved.namespace;
    let endpoint = match resolved.problem {
        Some(problem) => not_ready(problem),
        None => serving(format!(
            "endpoint `{}` is served as declared",
            resolved.name
        )),
    };
    let key: ObjKey = (ns.to_string(), resolved.name.to_string());
    set(
        board,
        Kind::Endpoint,
        &key,
        cluster.endpoint_state(&key),
        endpoint,
        Writer::Endpoints,
    );
    for (object, spec_error) in cluster.deployments_naming(ns, resolved.name) {
        let (ready, writer) = deployment_ready(resolved, &object, spec_error.as_ref());
        let key = (ns.to_string(), object);
        set(
            board,
            Kind::Deployment,
            &key,
            cluster.deployment_state(&key),
            ready,
            writer,
        );
    }
    // Objects of other namespaces: shadowed OnlineEndpoints, OnlineDeployments without their
    // OnlineEndpoint.
    for (subject, problem) in resolved.objects {
        let Some(object) = object_of(subject).filter(|o| o.namespace != ns) else {
            continue;
        };
        post_problem(board, cluster, &object, problem);
    }
}

/// Puts the condition of an object with `problem` that no endpoint's resolution covers.
pub fn post_problem(board: &Board, cluster: &Cluster, object: &ObjectRef, problem: &Problem) {
    let key = (object.namespace.clone(), object.name.clone());
    let state = match object.kind {
        Kind::Endpoint => cluster.endpoint_state(&key),
        Kind::Deployment => cluster.deployment_state(&key),
    };
    set(
        board,
        object.kind,
        &key,
        state,
        not_ready(problem),
        Writer::Endpoints,
    );
}

fn set(
    board: &Board,
    kind: Kind,
    key: &ObjKey,
    state: Option<ObjectState>,
    mut ready: Ready,
    writer: Writer,
) {
    let Some(state) = state else {
        return;
    };
    ready.observed_generation = state.generation;
    let object = ObjectRef {
        kind,
        namespace: key.0.clone(),
        name: key.1.clone(),
    };
    board.set(
        object,
        Entry {
            desired: ready,
            shown: state.shown,
            version: state.version,
            writer,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_problems() {
        let word = |reason, message: &str| reason_word(&Problem::new(reason, message));
        assert_eq!(word(Reason::Keys, "x"), "KeysMissing");
        assert_eq!(
            word(Reason::Invalid, "endpoints[e].traffic: weights sum to 95"),
            "WeightsInvalid"
        );
        assert_eq!(
            word(Reason::Invalid, "endpoints[e].keys.primary: 3 characters"),
            "KeysInvalid"
        );
        assert_eq!(word(Reason::ServiceMissing, "x"), "ServiceNotFound");
        assert_eq!(
            object_of("OnlineDeployment ns/blue"),
            Some(ObjectRef {
                kind: Kind::Deployment,
                namespace: "ns".into(),
                name: "blue".into()
            })
        );
        assert_eq!(object_of("endpoint `e`"), None);
    }
}
