//! Request paths: discovery documents or a resource collection, object or subresource.

use crate::kinds::Gvr;

/// Where a request path points.
#[derive(Debug, PartialEq)]
pub(crate) enum Target {
    Version,
    Api,
    Apis,
    Resources { group: String, version: String },
    Object(ObjectPath),
}

/// A resource path: collection (no name), object, or subresource.
#[derive(Debug, PartialEq)]
pub(crate) struct ObjectPath {
    pub(crate) gvr: Gvr,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

/// Parses `/version`, `/api[/v1/...]` and `/apis[/{group}/{version}/...]` paths.
pub(crate) fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Some(Target::Version),
        ["api"] => Some(Target::Api),
        ["apis"] => Some(Target::Apis),
        ["api", version, rest @ ..] => parse_resource("", version, rest),
        ["apis", group, version, rest @ ..] => parse_resource(group, version, rest),
        _ => None,
    }
}

fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    if rest.is_empty() {
        let (group, version) = (group.to_string(), version.to_string());
        return Some(Target::Resources { group, version });
    }
    // `/api/v1/namespaces/{name}/status` is the namespace's own subresource.
    let namespace_subresource =
        group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() && !namespace_subresource => {
            (Some(ns.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (plural, None, None),
        [plural, name] => (plural, Some(name.to_string()), None),
        [plural, name, sub] => (plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let gvr = Gvr::new(group, version, plural);
    Some(Target::Object(ObjectPath {
        gvr,
        namespace,
        name,
        subresource,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        match parse_path(path) {
            Some(Target::Object(o)) => (o.gvr.plural, o.namespace, o.name, o.subresource),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        let s = |v: &str| Some(v.to_string());
        let scale = object("/apis/apps/v1/namespaces/ns/deployments/web/scale");
        assert_eq!(scale, ("deployments".into(), s("ns"), s("web"), s("scale")));
        assert_eq!(
            object("/api/v1/namespaces/ns"),
            ("namespaces".into(), None, s("ns"), None)
        );
        let status = object("/api/v1/namespaces/ns/status");
        assert_eq!(status, ("namespaces".into(), None, s("ns"), s("status")));
        assert_eq!(object("/api/v1/pods"), ("pods".into(), None, None, None));
        let group = Target::Resources {
            group: "g".into(),
            version: "v1".into(),
        };
        assert_eq!(parse_path("/apis/g/v1"), Some(group));
        assert_eq!(parse_path("/healthz/x"), None);
        assert_eq!(parse_path("/api/v1/ns/a/b/c/d"), None);
    }
}
