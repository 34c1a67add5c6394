//! The settings beyond az's (deploy/README.md, "Settings beyond az"): each is validated like az's
//! own, and each reaches the object it belongs to.

mod support;

use scoregate_ext::render::Manifest;
use scoregate_ext::settings::RawSettings;
use scoregate_ext::validate::ClusterFacts;
use serde_yaml::Value;
use support::{cluster_of, now, plan};

const HTTP: &[&str] = &[
    "enableInference=True",
    "inferenceRouterServiceType=LoadBalancer",
    "allowInsecureConnections=True",
    "inferenceRouterHA=False",
];

fn with(extra: &[&str]) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = HTTP.to_vec();
    all.extend(
        extra
            .iter()
            .map(|s| &*Box::leak(s.to_string().into_boxed_str())),
    );
    all
}

fn render_with(config: &[&str], facts: &ClusterFacts) -> Manifest {
    let words: Vec<String> = config.iter().map(|s| (*s).to_owned()).collect();
    let raw = RawSettings::parse(&words, &[]).unwrap();
    scoregate_ext::ops::render_with_facts(
        "scoregate",
        &raw,
        "registry.example/scoregate:1".into(),
        facts,
        now(),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{config:?} renders: {e}"))
}

fn render(extra: &[&str]) -> Manifest {
    render_with(&with(extra), &cluster_of(3))
}

fn problem(extra: &[&str], key: &str) -> String {
    let problems = plan(&with(extra), &[], &cluster_of(3)).unwrap_err();
    problems
        .message_for(key)
        .unwrap_or_else(|| panic!("a problem about {key}: {problems}"))
        .to_owned()
}

fn pod(m: &Manifest) -> &Value {
    &m.find("Deployment", "azureml-fe-v2").unwrap()["spec"]["template"]["spec"]
}

fn notes(m: &Manifest) -> String {
    m.notices.iter().map(|n| format!("{n}\n")).collect()
}

#[test]
fn router_tolerations_are_taints_in_kubectl_syntax() {
    let m = render(&["inferenceRouterTolerations=dedicated=inference:NoSchedule,spot"]);
    let tolerations: Value = serde_yaml::from_str(
        "[{key: dedicated, operator: Equal, value: inference, effect: NoSchedule}, {key: spot, operator: Exists}]",
    )
    .unwrap();
    assert_eq!(pod(&m)["tolerations"], tolerations);
    assert!(pod(&render(&[]))["tolerations"].is_null());
    let m = problem(
        &["inferenceRouterTolerations=spot:Sometimes"],
        "inferenceRouterTolerations",
    );
    assert!(m.contains("`Sometimes` is not a taint effect"), "{m}");
}

#[test]
fn resources_default_to_azureml_fe_s_and_requests_stay_under_limits() {
    let container = |m: &Manifest| pod(m)["containers"][0]["resources"].clone();
    let defaults: Value = serde_yaml::from_str(
        "{limits: {cpu: '2', memory: 1200Mi}, requests: {cpu: 900m, memory: 800Mi}}",
    )
    .unwrap();
    assert_eq!(container(&render(&[])), defaults);
    let m = render(&[
        "inferenceRouterResources.limits.cpu=3500m",
        "inferenceRouterResources.requests.memory=1Gi",
        "inferenceRouterResources.limits.memory=2Gi",
    ]);
    assert_eq!(container(&m)["limits"]["cpu"], "3500m");
    // The router runs one worker per CPU of its limit, rounded up.
    assert_eq!(m.router_config.as_ref().unwrap().workers, 4);
    let e = problem(
        &["inferenceRouterResources.requests.memory=2Gi"],
        "inferenceRouterResources.requests.memory",
    );
    assert!(e.contains("2Gi is more than the limit 1200Mi"), "{e}");
    let e = problem(
        &["inferenceRouterResources.limits.cpu=two"],
        "inferenceRouterResources.limits.cpu",
    );
    assert!(e.contains("`two` is not a quantity"), "{e}");
}

#[test]
fn image_pull_secrets_are_the_pod_s() {
    let m = render(&["imagePullSecrets=acr-pull, mirror"]);
    let expected: Value = serde_yaml::from_str("[{name: acr-pull}, {name: mirror}]").unwrap();
    assert_eq!(pod(&m)["imagePullSecrets"], expected);
    let e = problem(&["imagePullSecrets=Bad_Name"], "imagePullSecrets");
    assert!(e.contains("`Bad_Name` is not a name"), "{e}");
}

#[test]
fn the_service_takes_annotations_a_load_balancer_ip_and_a_traffic_policy() {
    let m = render(&[
        "inferenceRouterServiceAnnotations.service.beta.kubernetes.io/azure-dns-label-name=contoso",
        "internalLoadBalancerProvider=azure",
        "inferenceRouterLoadBalancerIP=10.240.0.77",
        "inferenceRouterExternalTrafficPolicy=local",
    ]);
    let service = m.find("Service", "azureml-fe").unwrap();
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(
        annotations["service.beta.kubernetes.io/azure-dns-label-name"],
        "contoso"
    );
    assert_eq!(
        annotations["service.beta.kubernetes.io/azure-load-balancer-internal"],
        "true"
    );
    assert_eq!(service["spec"]["loadBalancerIP"], "10.240.0.77");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    assert!(
        notes(&m).contains("deprecated since Kubernetes 1.24"),
        "{}",
        notes(&m)
    );

    let node_port = |extra: &str| {
        let mut config: Vec<String> = HTTP
            .iter()
            .map(|s| s.replace("LoadBalancer", "nodePort"))
            .collect();
        config.push(extra.to_owned());
        let config: Vec<&str> = config.iter().map(String::as_str).collect();
        plan(&config, &[], &cluster_of(3))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(node_port("inferenceRouterLoadBalancerIP=10.0.0.1")
        .contains("needs inferenceRouterServiceType=loadBalancer"));
    let e = problem(
        &["inferenceRouterLoadBalancerIP=10.0.0.300"],
        "inferenceRouterLoadBalancerIP",
    );
    assert!(e.contains("is not an IP address"), "{e}");
    let e = problem(
        &["inferenceRouterExternalTrafficPolicy=Nearest"],
        "inferenceRouterExternalTrafficPolicy",
    );
    assert!(e.contains("use Cluster") && e.contains("or Local"), "{e}");
    let e = problem(
        &["inferenceRouterServiceAnnotations.bad key=x"],
        "inferenceRouterServiceAnnotations.bad key",
    );
    assert!(e.contains("is not a label name"), "{e}");
}

#[test]
fn service_monitor_labels_reach_both_service_monitors() {
    let m = render(&["serviceMonitorLabels.release=kube-prometheus-stack"]);
    let monitor = m.find("ServiceMonitor", "azureml-fe").unwrap();
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "scoregate-ext"
    );
    assert!(!notes(&m).contains("serviceMonitorLabels: unset"));
    assert!(notes(&render(&[])).contains("serviceMonitorLabels: unset: kube-prometheus-stack"));
    let m = render(&["installPromOp=False", "serviceMonitorLabels.release=x"]);
    assert!(
        notes(&m).contains("serviceMonitorLabels: ignored"),
        "{}",
        notes(&m)
    );
    // A typo of the prefix is caught like any key.
    let e = RawSettings::parse(&["serviceMonitorLabel.release=x".to_owned()], &[]).unwrap_err();
    assert!(
        e.to_string()
            .contains("did you mean `serviceMonitorLabels`"),
        "{e}"
    );
}

#[test]
fn openshift_mode_fixes_no_user_and_refuses_the_gpu_daemon_sets() {
    let security = |m: &Manifest| pod(m)["securityContext"].clone();
    let fixed = security(&render(&[]));
    assert_eq!(fixed["runAsUser"], 65532);
    assert_eq!(fixed["fsGroup"], 65532);
    let m = render(&["openshift=True"]);
    let open = security(&m);
    assert!(
        open["runAsUser"].is_null() && open["runAsGroup"].is_null() && open["fsGroup"].is_null(),
        "{open:?}"
    );
    assert_eq!(open["runAsNonRoot"], true);
    assert_eq!(open["seccompProfile"]["type"], "RuntimeDefault");
    let e = problem(
        &["openshift=True", "installDcgmExporter=True"],
        "openshift, installNvidiaDevicePlugin, installDcgmExporter",
    );
    assert!(e.contains("GPU Operator"), "{e}");
}

#[test]
fn the_network_policy_is_on_by_default_and_allows_only_what_is_served() {
    let m = render(&[]);
    let policy = m.find("NetworkPolicy", "azureml-fe-v2").unwrap();
    let ingress = policy["spec"]["ingress"].as_sequence().unwrap();
    let ports = |rule: &Value| -> Vec<String> {
        rule["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ports(&ingress[0]),
        ["http"],
        "clients: the scoring port only"
    );
    assert!(ingress[0]["from"].is_null(), "from anywhere");
    assert_eq!(ports(&ingress[1]), ["admin"]);
    assert_eq!(
        ingress[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "prometheus"
    );
    assert_eq!(ingress.len(), 2, "no cluster port without HA");
    assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
    assert!(render(&["networkPolicy=False"])
        .find("NetworkPolicy", "azureml-fe-v2")
        .is_none());
}

#[test]
fn ha_spreads_over_zones_where_it_can() {
    assert!(pod(&render(&[]))["topologySpreadConstraints"].is_null());
    let mut config: Vec<&str> = HTTP.to_vec();
    config.retain(|c| *c != "inferenceRouterHA=False");
    let m = render_with(&config, &cluster_of(3));
    let spread = &pod(&m)["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
}

#[test]
fn gpu_daemon_sets_tolerate_aks_gpu_pools_stay_on_gpu_nodes_and_set_no_critical_priority() {
    let m = render(&["installNvidiaDevicePlugin=True", "installDcgmExporter=True"]);
    for name in ["nvidia-device-plugin-daemonset", "dcgm-exporter"] {
        let spec = &m.find("DaemonSet", name).unwrap()["spec"]["template"]["spec"];
        let tolerations = serde_yaml::to_string(&spec["tolerations"]).unwrap();
        assert!(tolerations.contains("key: nvidia.com/gpu"), "{tolerations}");
        assert!(
            tolerations.contains("key: sku") && tolerations.contains("value: gpu"),
            "{tolerations}"
        );
        let terms = serde_yaml::to_string(&spec["affinity"]["nodeAffinity"]).unwrap();
        for label in [
            "nvidia.com/gpu.present",
            "feature.node.kubernetes.io/pci-10de.present",
            "accelerator",
        ] {
            assert!(terms.contains(label), "{name}: {terms}");
        }
        assert!(spec["priorityClassName"].is_null(), "{name}");
    }
    assert!(
        notes(&m).contains("no node carries a GPU label"),
        "{}",
        notes(&m)
    );

    let mut labelled = cluster_of(3);
    labelled.nodes.as_mut().unwrap()[0]
        .labels
        .insert("accelerator".into(), "nvidia".into());
    let m = render_with(
        &with(&[
            "installDcgmExporter=True",
            "gpuTolerations=gpu:NoExecute",
            "gpuPriorityClassName=system-node-critical",
        ]),
        &labelled,
    );
    assert!(!notes(&m).contains("no node carries a GPU label"));
    assert!(notes(&m).contains("system-node-critical outside kube-system is refused on clusters that limit critical priority classes"));
    let spec = &m.find("DaemonSet", "dcgm-exporter").unwrap()["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    let tolerations: Value =
        serde_yaml::from_str("[{key: gpu, operator: Exists, effect: NoExecute}]").unwrap();
    assert_eq!(spec["tolerations"], tolerations);
    let m = render(&["gpuTolerations=gpu:NoExecute"]);
    assert!(
        notes(&m).contains("gpuTolerations: ignored"),
        "{}",
        notes(&m)
    );
}

#[test]
fn an_ssl_secret_not_checked_projects_both_spellings_optionally() {
    let config = [
        "enableInference=True",
        "inferenceRouterServiceType=LoadBalancer",
        "inferenceRouterHA=False",
        "sslSecret=contoso-tls",
        "sslCname=ml.contoso.com",
    ];
    let sources = |m: &Manifest| pod(m)["volumes"][0]["projected"]["sources"].clone();
    let offline = render_with(&config, &ClusterFacts::default());
    let sources_offline = serde_yaml::to_string(&sources(&offline)).unwrap();
    let expected = "- secret:\n    items:\n    - key: tls.crt\n      path: tls/cert.pem\n    - key: tls.key\n      path: tls/key.pem\n    name: contoso-tls\n    optional: true\n- secret:\n    items:\n    - key: cert.pem\n      path: tls/cert.pem\n    - key: key.pem\n      path: tls/key.pem\n    name: contoso-tls\n    optional: true\n";
    assert!(sources_offline.contains(expected), "{sources_offline}");

    let everything = support::everything_on();
    let m = support::render(&everything);
    let checked = serde_yaml::to_string(&sources(&m)).unwrap();
    assert!(
        checked.contains("- key: tls.crt\n      path: tls/cert.pem"),
        "{checked}"
    );
    assert!(
        !checked.contains("optional") && !checked.contains("key: cert.pem"),
        "{checked}"
    );
}
