//! Every object the installer renders, checked against the schemas a real API server would apply:
//! the built-in kinds against the Kubernetes OpenAPI schemas of each supported minor version
//! (`kubernetes-validate --strict`: unknown fields are errors), ServiceMonitors against the
//! Prometheus Operator's schema, and the CRDs for the structural-schema rules the API server
//! enforces. The seed's four scenarios and the one with every setting on are rendered for each
//! version, as `create` renders them for a cluster of that version.
//!
//! The validators come from `deploy/schema/install.sh`, which `.ci/run` runs; point
//! `SCOREGATE_SCHEMA_TOOLS` at its directory. Without it the external checks are skipped with a
//! message (never under CI, where a missing tool is a failure); the structural check needs none.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use scoregate_ext::render::Manifest;
use scoregate_ext::validate::{MAX_VALIDATED_KUBERNETES_MINOR, MIN_KUBERNETES_MINOR};
use serde_json::Value;

/// Every scenario rendered for Kubernetes `1.minor`.
fn rendered_for(minor: u32) -> Vec<(String, Manifest)> {
    support::all_scenarios()
        .iter()
        .map(|s| (s.name.to_owned(), support::render_for(s, minor)))
        .collect()
}

/// The validators' directory, or `None` (with a message) where they are not installed.
fn tools() -> Option<PathBuf> {
    match std::env::var_os("SCOREGATE_SCHEMA_TOOLS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("CI").is_some() => {
            panic!("SCOREGATE_SCHEMA_TOOLS is not set under CI: .ci/run installs the validators with deploy/schema/install.sh")
        }
        None => {
            eprintln!("skipped: the schema validators are not installed; run deploy/schema/install.sh and set SCOREGATE_SCHEMA_TOOLS to the directory it prints");
            None
        }
    }
}

fn run(command: &mut Command, input: Option<&[u8]>) -> (bool, String) {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or_default())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn write_all(dir: &Path, rendered: &[(String, Manifest)]) -> Vec<PathBuf> {
    rendered
        .iter()
        .map(|(name, manifest)| {
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, manifest.to_yaml()).unwrap();
            path
        })
        .collect()
}

#[test]
fn built_in_kinds_pass_the_openapi_schemas_of_every_supported_version() {
    let Some(tools) = tools() else { return };
    let validator = tools.join("venv/bin/kubernetes-validate");
    let mut failures = Vec::new();
    let mut checked = 0;
    for minor in MIN_KUBERNETES_MINOR..=MAX_VALIDATED_KUBERNETES_MINOR {
        let dir = tempfile::tempdir().unwrap();
        let rendered = rendered_for(minor);
        checked += rendered
            .iter()
            .flat_map(|(_, m)| &m.objects)
            .filter(|o| o["kind"].as_str() != Some("ServiceMonitor"))
            .count();
        let files = write_all(dir.path(), &rendered);
        let (ok, text) = run(
            Command::new(&validator)
                .args([
                    "--strict",
                    "--quiet",
                    "--no-warn",
                    "-k",
                    &format!("1.{minor}.0"),
                ])
                .args(&files),
            None,
        );
        if !ok {
            failures.push(format!("Kubernetes 1.{minor}:\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{checked} renderings of built-in kinds valid against the schemas of 1.{MIN_KUBERNETES_MINOR} to 1.{MAX_VALIDATED_KUBERNETES_MINOR}"
    );
}

#[test]
fn the_validator_refuses_what_a_server_of_that_version_refuses() {
    // The check can fail: the `sleep` preStop action is unknown to 1.28's schema (which is why
    // 1.28 gets the exec hook), and an unknown field is refused in strict mode.
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = rendered_for(30);
    rendered.truncate(1);
    let files = write_all(dir.path(), &rendered);
    let validator = tools.join("venv/bin/kubernetes-validate");
    let (ok, text) = run(
        Command::new(&validator)
            .args(["--strict", "--quiet", "--no-warn", "-k", "1.28.0"])
            .args(&files),
        None,
    );
    assert!(!ok && text.contains("'sleep' was unexpected"), "{text}");
    let mut manifest = rendered.remove(0).1;
    let deployment = manifest
        .objects
        .iter_mut()
        .find(|o| o["kind"].as_str() == Some("Deployment"))
        .unwrap();
    deployment["spec"]["replica"] = 3.into();
    let path = dir.path().join("typo.yaml");
    std::fs::write(&path, manifest.to_yaml()).unwrap();
    let (ok, text) = run(
        Command::new(&validator)
            .args(["--strict", "--quiet", "--no-warn", "-k", "1.33.0"])
            .arg(&path),
        None,
    );
    assert!(!ok && text.contains("'replica' was unexpected"), "{text}");
}

/// Every ServiceMonitor rendered for any supported version, as `{source, object}` JSON.
fn service_monitors() -> Vec<Value> {
    let mut out = Vec::new();
    for minor in MIN_KUBERNETES_MINOR..=MAX_VALIDATED_KUBERNETES_MINOR {
        for (name, manifest) in rendered_for(minor) {
            for object in manifest
                .objects
                .iter()
                .filter(|o| o["kind"].as_str() == Some("ServiceMonitor"))
            {
                out.push(serde_json::json!({
                    "source": format!("{name} (1.{minor})"),
                    "object": serde_json::to_value(object).unwrap(),
                }));
            }
        }
    }
    out
}

#[test]
fn service_monitors_pass_the_prometheus_operator_schema() {
    let Some(tools) = tools() else { return };
    let monitors = service_monitors();
    assert!(!monitors.is_empty());
    let script = tools.join("servicemonitors.mjs");
    let input = serde_json::to_vec(&monitors).unwrap();
    let (ok, text) = run(Command::new("node").arg(&script), Some(&input));
    assert!(ok, "{text}");
    // And a wrong one is refused: the check can fail.
    let mut bad = monitors[0].clone();
    bad["object"]["spec"]["endpoints"][0]["interval"] = "every 15 seconds".into();
    let (ok, text) = run(
        Command::new("node").arg(&script),
        Some(&serde_json::to_vec(&[bad]).unwrap()),
    );
    assert!(!ok && text.contains("interval"), "{text}");
}

/// Keywords a structural schema may not use anywhere (the API server refuses them in CRDs).
const FORBIDDEN: &[&str] = &[
    "$ref",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
];
/// What the logical junctors (`allOf`, `anyOf`, `oneOf`, `not`) may not set.
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "default",
    "additionalProperties",
    "nullable",
    "description",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
];

/// The structural-schema rules (Kubernetes' "Specifying a structural schema") for `schema` at
/// `path`; every violation is pushed to `problems`.
fn check_structural(path: &str, schema: &Value, problems: &mut Vec<String>) {
    let Some(map) = schema.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let typed = map
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !typed && !preserve && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    for key in FORBIDDEN {
        if map.contains_key(*key) {
            problems.push(format!("{path}: uses {key}"));
        }
    }
    if map.get("uniqueItems") == Some(&Value::Bool(true)) {
        problems.push(format!("{path}: uniqueItems: true"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    for (name, child) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_structural(&format!("{path}.{name}"), child, problems);
    }
    if let Some(items) = map.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
        check_structural(&format!("{path}{{*}}"), extra, problems);
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        let branches: Vec<&Value> = match map.get(junctor) {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(one) => vec![one],
            None => continue,
        };
        for branch in branches {
            check_junctor(&format!("{path}.{junctor}"), branch, schema, problems);
        }
    }
}

/// Inside a junctor: only value validations, on fields the outer schema specifies.
fn check_junctor(path: &str, branch: &Value, outer: &Value, problems: &mut Vec<String>) {
    let Some(map) = branch.as_object() else {
        return;
    };
    for key in NOT_IN_JUNCTORS {
        if map.contains_key(*key) {
            problems.push(format!("{path}: sets {key}"));
        }
    }
    for (name, inner) in map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match outer["properties"].get(name) {
            Some(outer_child) => {
                check_junctor(&format!("{path}.{name}"), inner, outer_child, problems)
            }
            None => problems.push(format!(
                "{path}: `{name}` is not specified outside the junctor"
            )),
        }
    }
}

/// The root's `metadata` may restrict only `name` and `generateName`.
fn check_metadata(path: &str, root: &Value, problems: &mut Vec<String>) {
    let Some(metadata) = root["properties"].get("metadata") else {
        return;
    };
    for (name, _) in metadata["properties"].as_object().into_iter().flatten() {
        if name != "name" && name != "generateName" {
            problems.push(format!("{path}.metadata: restricts `{name}`"));
        }
    }
}

fn structural_problems(crd: &serde_yaml::Value) -> Vec<String> {
    let crd: Value = serde_json::to_value(crd).unwrap();
    let mut problems = Vec::new();
    for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
        let path = format!(
            "{}/{}",
            crd["metadata"]["name"].as_str().unwrap_or("?"),
            version["name"].as_str().unwrap_or("?")
        );
        let root = &version["schema"]["openAPIV3Schema"];
        if root.is_null() {
            problems.push(format!("{path}: no openAPIV3Schema"));
            continue;
        }
        if root["type"] != "object" {
            problems.push(format!("{path}: the root is not of type object"));
        }
        check_structural(&path, root, &mut problems);
        check_metadata(&path, root, &mut problems);
    }
    problems
}

#[test]
fn the_crds_are_structural() {
    let manifest = support::render(&support::everything_on());
    let crds: Vec<&serde_yaml::Value> = manifest
        .objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some("CustomResourceDefinition"))
        .collect();
    assert_eq!(crds.len(), 2);
    for crd in crds {
        let problems = structural_problems(crd);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

#[test]
fn the_structural_check_finds_what_the_api_server_refuses() {
    let manifest = support::render(&support::everything_on());
    let crd = manifest
        .objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("CustomResourceDefinition"))
        .unwrap();
    let mut broken = crd.clone();
    let root = &mut broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let spec = root["properties"]["spec"]
        .as_mapping_mut()
        .expect("the CRD's spec schema is a map");
    spec.remove("type");
    root["properties"]["metadata"] =
        serde_yaml::from_str("{type: object, properties: {labels: {type: object}}}").unwrap();
    let problems = structural_problems(&broken).join("\n");
    assert!(problems.contains(".spec: no type"), "{problems}");
    assert!(
        problems.contains(".metadata: restricts `labels`"),
        "{problems}"
    );
}
