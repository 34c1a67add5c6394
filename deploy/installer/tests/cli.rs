//! The command line without a cluster: `create --dry-run` output formats, and refusals that
//! happen before any cluster is contacted.

mod support;

async fn cli(args: &[&str]) -> (anyhow::Result<()>, String, String) {
    let mut argv = vec!["scoregate-ext".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    support::run_cli(argv).await
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

/// `create --dry-run` of the HTTPS scenario with HA, plus `extra` arguments.
async fn https_ha_dry_run_result(extra: &[&str]) -> (anyhow::Result<()>, String, String) {
    let protected = support::fixture_protected();
    let mut args = vec![
        "create",
        "--name",
        "scoregate",
        "--dry-run",
        "--config",
        "enableInference=True",
        "inferenceRouterServiceType=LoadBalancer",
        "sslCname=ml.contoso.com",
        "--config-protected",
    ];
    args.extend(protected.iter().map(String::as_str));
    args.extend_from_slice(extra);
    cli(&args).await
}

async fn https_ha_dry_run(extra: &[&str]) -> String {
    let (result, out, err) = https_ha_dry_run_result(extra).await;
    result.unwrap();
    assert!(err.is_empty(), "{err}");
    out
}

/// How a Secret's `data` prints `bytes`.
fn base64(bytes: &[u8]) -> String {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_dry_run_redacts_private_keys_and_says_how_to_make_the_cluster_credential() {
    let out = https_ha_dry_run(&[]).await;
    let key = std::fs::read(support::fixture("key.pem")).unwrap();
    let cert = std::fs::read(support::fixture("cert.pem")).unwrap();
    assert!(
        !out.contains(&base64(&key)),
        "the private key is not printed"
    );
    assert!(out.contains(&base64(&cert)), "the certificate is");
    assert!(
        out.contains("key.pem: '<redacted: run again with --show-secrets to print it>'"),
        "{out}"
    );
    assert!(
        out.contains("# NOTE private keys and credentials are redacted"),
        "{out}"
    );
    // The credential HA needs is not in the output; the one command that makes it is.
    assert!(
        !out.contains("name: azureml-fe-cluster\n  namespace"),
        "{out}"
    );
    assert!(
        out.contains("kubectl create secret generic azureml-fe-cluster -n azureml --from-literal=secret=\"$(openssl rand -base64 32)\""),
        "{out}"
    );
}

#[tokio::test]
async fn a_dry_run_with_show_secrets_can_be_applied_as_it_stands() {
    let out = https_ha_dry_run(&["--show-secrets"]).await;
    let key = std::fs::read(support::fixture("key.pem")).unwrap();
    assert!(out.contains(&base64(&key)), "the private key is printed");
    assert!(!out.contains("redacted"), "{out}");
    let documents: Vec<serde_yaml::Value> = out
        .split("---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let position = |kind: &str, name: &str| {
        documents
            .iter()
            .position(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} is in the output"))
    };
    let secret = &documents[position("Secret", "azureml-fe-cluster")];
    assert!(
        position("Secret", "azureml-fe-cluster") < position("Deployment", "azureml-fe-v2"),
        "the credential comes before the router that reads it"
    );
    assert!(secret["metadata"]["annotations"]["scoregate.io/generated"]
        .as_str()
        .unwrap()
        .contains("fresh random credential"));
    let credential = secret["data"]["secret"].as_str().unwrap();
    assert!(credential.len() >= 40, "32 random bytes: {credential}");
    // Freshly generated: another dry run makes another.
    let again = https_ha_dry_run(&["--show-secrets"]).await;
    assert!(!again.contains(credential));
}

#[tokio::test]
async fn a_dry_run_renders_for_the_kubernetes_version_it_is_given() {
    let out = https_ha_dry_run(&["--kubernetes-version", "1.29"]).await;
    assert!(
        out.contains("preStop:\n            exec:\n              command:\n              - scoregate\n              - sleep\n              - 5s"),
        "{out}"
    );
    let (result, _, _) = https_ha_dry_run_result(&["--kubernetes-version", "1.27"]).await;
    let e = result.unwrap_err().to_string();
    assert!(e.contains("older than 1.28"), "{e}");
    let out = https_ha_dry_run(&[]).await;
    assert!(
        out.contains("# NOTE rendered for Kubernetes 1.30 or later (no cluster contacted)"),
        "{out}"
    );
}
