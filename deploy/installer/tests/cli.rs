//! The command line without a cluster: `create --dry-run` output formats, and refusals that
//! happen before any cluster is contacted.

mod support;

use clap::Parser;
use scoregate_ext::cli::{run, Cli};

async fn cli(args: &[&str]) -> (anyhow::Result<()>, String, String) {
    let mut argv = vec!["scoregate-ext".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let cli = Cli::try_parse_from(argv).expect("arguments parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = run(cli, &mut out, &mut err).await;
    (
        result,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

const POC: &[&str] = &[
    "create",
    "--name",
    "scoregate",
    "--dry-run",
    // az accepts several words after one --config, and --config repeated.
    "--config",
    "enableInference=True",
    "inferenceRouterServiceType=LoadBalancer",
    "--config",
    "allowInsecureConnections=True",
    "inferenceRouterHA=False",
];

#[tokio::test]
async fn dry_run_prints_yaml_with_notices_as_comments() {
    let (result, out, err) = cli(POC).await;
    result.unwrap();
    assert!(out.starts_with("# Rendered by scoregate-ext"), "{out}");
    assert!(out.contains("# NOTE installPromOp"), "{out}");
    assert!(out.contains("kind: Deployment"), "{out}");
    assert!(err.is_empty(), "{err}");
    // Without --image: the default, and how to bring one's own.
    assert!(
        out.contains("# NOTE no --image given: the router runs ghcr.io/scoregate/scoregate:")
            && out.contains("deploy/image/build.sh"),
        "{out}"
    );
}

#[tokio::test]
async fn dry_run_prints_a_json_list_and_notices_on_stderr() {
    let mut args = POC.to_vec();
    args.extend(["-o", "json", "--image", "registry.example/scoregate:dev"]);
    let (result, out, err) = cli(&args).await;
    result.unwrap();
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let deployment = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/scoregate:dev"
    );
    assert!(err.contains("note: installPromOp"), "{err}");
    assert!(!err.contains("--image"), "an image was given: {err}");
}

#[tokio::test]
async fn a_typo_is_refused_before_anything_happens() {
    let (result, out, _) = cli(&[
        "create",
        "--name",
        "scoregate",
        "--dry-run",
        "--config",
        "enableInference=True",
        "InferenceRouterHA=False",
    ])
    .await;
    let e = result.unwrap_err().to_string();
    assert!(e.contains("InferenceRouterHA: is not a setting"), "{e}");
    assert!(e.contains("did you mean `inferenceRouterHA`?"), "{e}");
    assert!(out.is_empty());
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let (result, _, _) = cli(&[
        "create",
        "--name",
        "scoregate",
        "--dry-run",
        "--config",
        "enableInference=True",
        "inferenceRouterServiceType=NodePort",
        "internalLoadBalancerProvider=azure",
    ])
    .await;
    let e = result.unwrap_err().to_string();
    assert!(e.starts_with("2 invalid settings:"), "{e}");
    assert!(e.contains("mutually exclusive"), "{e}");
    assert!(
        e.contains("allowInsecureConnections: False (the default) means HTTPS only"),
        "{e}"
    );
}

#[tokio::test]
async fn table_output_is_for_installed_extensions_and_delete_asks_for_yes() {
    let mut args = POC.to_vec();
    args.extend(["-o", "table"]);
    let (result, _, _) = cli(&args).await;
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("a dry run prints -o yaml or -o json"));
    let (result, _, _) = cli(&["delete", "--name", "scoregate"]).await;
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("run again with --yes"));
}
