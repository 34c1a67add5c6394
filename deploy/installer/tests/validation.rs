//! One test per validation rule, each asserting the message: it names the setting and the fix.
//! az's rules are numbered as in `deploy/README.md`, "Checks" (rule numbers below); the rest
//! go beyond az.

mod support;

use std::path::Path;

use scoregate_ext::problem::Problems;
use scoregate_ext::settings::RawSettings;
use scoregate_ext::validate::{ClusterFacts, KeySpelling, NodeFact, Plan, SecretFact, TlsSource};
use support::{cluster_of, fixture, fixture_protected, nodes, plan};

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn problems(config: &[&str], protected: &[String], facts: &ClusterFacts) -> Problems {
    match plan(config, protected, facts) {
        Ok(plan) => panic!("expected problems, got a plan: {plan:?}"),
        Err(p) => p,
    }
}

/// The message for `key`, which must be there.
fn message(p: &Problems, key: &str) -> String {
    p.message_for(key)
        .unwrap_or_else(|| panic!("no problem for `{key}` in: {p}"))
        .to_owned()
}

fn ok(config: &[&str], protected: &[String], facts: &ClusterFacts) -> Plan {
    plan(config, protected, facts).unwrap_or_else(|e| panic!("expected a plan: {e}"))
}

fn notes(plan: &Plan) -> String {
    plan.notices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

const HTTP_LB: &[&str] = &[
    "enableInference=True",
    "inferenceRouterServiceType=loadBalancer",
    "allowInsecureConnections=True",
];

// az rule 2.
#[test]
fn a_key_in_both_lists_is_a_duplicate() {
    for key in ["sslCname", "sslCertPemFile"] {
        let word = vec![format!("{key}=x")];
        let e = RawSettings::parse(&word, &word).unwrap_err();
        assert_eq!(e.0.len(), 1, "only the duplicate is reported: {e}");
        let m = message(&e, key);
        assert!(m.contains("Duplicate keys found"), "{m}");
        assert!(m.contains("give it in one of them"), "{m}");
    }
}

// az rule 3.
#[test]
fn training_or_inference_must_be_enabled() {
    let p = problems(&["enableTraining=False"], &[], &cluster_of(3));
    let m = message(&p, "enableTraining, enableInference");
    assert!(m.contains("nothing to install"), "{m}");
    assert!(m.contains("set enableInference=True"), "{m}");
}

// az rule 4, first half.
#[test]
fn https_needs_a_certificate_unless_insecure_is_allowed() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
        ],
        &[],
        &cluster_of(3),
    );
    let m = message(&p, "allowInsecureConnections");
    assert!(
        m.contains("sslCertPemFile=<cert.pem> sslKeyPemFile=<key.pem>"),
        "{m}"
    );
    assert!(m.contains("sslSecret="), "{m}");
    assert!(m.contains("allowInsecureConnections=True"), "{m}");
    ok(HTTP_LB, &[], &cluster_of(3));
}

#[test]
fn both_pem_files_are_needed() {
    let cert = vec![format!("sslCertPemFile={}", fixture("cert.pem").display())];
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
            "sslCname=ml.contoso.com",
        ],
        &cert,
        &cluster_of(3),
    );
    let m = message(&p, "sslKeyPemFile");
    assert!(
        m.contains("add --config-protected sslKeyPemFile=<key.pem>"),
        "{m}"
    );
}

// az rule 4, second half.
#[test]
fn tls_needs_ssl_cname() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
        ],
        &fixture_protected(),
        &cluster_of(3),
    );
    let m = message(&p, "sslCname");
    assert!(m.contains("required when TLS is on"), "{m}");
    assert!(m.contains("one of the certificate's names"), "{m}");
}

// az rule 5.
#[test]
fn service_type_is_one_of_three_in_any_case() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=Ingress",
            "allowInsecureConnections=True",
        ],
        &[],
        &cluster_of(3),
    );
    let m = message(&p, "inferenceRouterServiceType");
    assert!(m.contains("`Ingress` is not a service type"), "{m}");
    assert!(
        m.contains("loadBalancer, nodePort or clusterIP (any case)"),
        "{m}"
    );
    for spelling in ["LOADBALANCER", "nodeport", "ClusterIP"] {
        let setting = format!("inferenceRouterServiceType={spelling}");
        ok(
            &[
                "enableInference=True",
                &setting,
                "allowInsecureConnections=True",
            ],
            &[],
            &cluster_of(3),
        );
    }
}

#[test]
fn service_type_is_required_with_inference() {
    let p = problems(
        &["enableInference=True", "allowInsecureConnections=True"],
        &[],
        &cluster_of(3),
    );
    let m = message(&p, "inferenceRouterServiceType");
    assert!(m.contains("required when enableInference=True"), "{m}");
}

// az rule 6.
#[test]
fn node_port_excludes_the_internal_load_balancer() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=NodePort",
            "internalLoadBalancerProvider=azure",
            "allowInsecureConnections=True",
        ],
        &[],
        &cluster_of(3),
    );
    let m = message(
        &p,
        "inferenceRouterServiceType, internalLoadBalancerProvider",
    );
    assert!(m.contains("mutually exclusive"), "{m}");
    assert!(
        m.contains("remove internalLoadBalancerProvider or use loadBalancer"),
        "{m}"
    );
}

// az rule 7.
#[test]
fn the_internal_load_balancer_warns_it_is_aks_only_and_annotates_the_service() {
    let plan = ok(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=LoadBalancer",
            "internalLoadBalancerProvider=azure",
            "allowInsecureConnections=True",
        ],
        &[],
        &cluster_of(3),
    );
    assert!(notes(&plan).contains("only supported on AKS and AKS Engine clusters"));
    assert!(plan.inference.unwrap().internal_load_balancer);
}

#[test]
fn the_only_internal_load_balancer_provider_is_azure() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=LoadBalancer",
            "internalLoadBalancerProvider=aws",
            "allowInsecureConnections=True",
        ],
        &[],
        &cluster_of(3),
    );
    let m = message(&p, "internalLoadBalancerProvider");
    assert!(m.contains("the only value is `azure`"), "{m}");
}

// az rule 8, stricter: explicit HA on too few nodes is an error.
#[test]
fn explicit_ha_needs_three_schedulable_nodes() {
    let mut config = HTTP_LB.to_vec();
    config.push("inferenceRouterHA=True");
    let mut facts = cluster_of(3);
    facts.nodes.as_mut().unwrap()[2].unschedulable = Some("cordoned".into());
    let p = problems(&config, &[], &facts);
    let m = message(&p, "inferenceRouterHA");
    assert!(m.contains("True needs 3 schedulable nodes"), "{m}");
    assert!(m.contains("the cluster has 2"), "{m}");
    assert!(m.contains("node-2 (cordoned)"), "{m}");
    assert!(m.contains("set inferenceRouterHA=False"), "{m}");
}

// az rule 8: left at its default, HA is turned off with a notice.
#[test]
fn default_ha_turns_itself_off_on_small_clusters() {
    let plan = ok(HTTP_LB, &[], &cluster_of(2));
    assert!(!plan.inference.as_ref().unwrap().ha);
    let n = notes(&plan);
    assert!(n.contains("set to False (1 router replica)"), "{n}");
    assert!(n.contains("the cluster has 2"), "{n}");
    assert!(ok(HTTP_LB, &[], &cluster_of(3)).inference.unwrap().ha);
}

#[test]
fn ha_counts_only_nodes_matching_the_node_selector() {
    let mut config = HTTP_LB.to_vec();
    config.extend(["inferenceRouterHA=True", "nodeSelector.pool=router"]);
    let mut all = nodes(2, &[("pool", "router")]);
    all.extend(nodes(3, &[("pool", "gpu")]));
    let facts = ClusterFacts {
        nodes: Some(all),
        ..ClusterFacts::default()
    };
    let m = message(&problems(&config, &[], &facts), "inferenceRouterHA");
    assert!(m.contains("matching nodeSelector pool=router"), "{m}");
    assert!(m.contains("the cluster has 2"), "{m}");
}

#[test]
fn a_node_selector_no_node_matches_is_an_error() {
    let mut config = HTTP_LB.to_vec();
    config.extend(["inferenceRouterHA=False", "nodeSelector.pool=router"]);
    let facts = ClusterFacts {
        nodes: Some(vec![NodeFact {
            name: "only".into(),
            labels: [("pool".to_owned(), "router".to_owned())].into(),
            unschedulable: Some("tainted dedicated=gpu:NoSchedule".into()),
        }]),
        ..ClusterFacts::default()
    };
    let m = message(&problems(&config, &[], &facts), "nodeSelector");
    assert!(m.contains("no schedulable node matches pool=router"), "{m}");
    assert!(m.contains("only (tainted dedicated=gpu:NoSchedule)"), "{m}");
}

#[test]
fn without_a_cluster_ha_is_kept_and_the_output_says_it_was_not_checked() {
    let plan = ok(HTTP_LB, &[], &ClusterFacts::default());
    assert!(plan.inference.as_ref().unwrap().ha);
    assert!(notes(&plan).contains("the node count was not checked"));
}

// Beyond az: unknown keys.
#[test]
fn an_unknown_key_suggests_the_nearest_real_one() {
    let e = RawSettings::parse(&words(&["InferenceRouterHA=False"]), &[]).unwrap_err();
    let m = message(&e, "InferenceRouterHA");
    assert!(m.contains("did you mean `inferenceRouterHA`?"), "{m}");
    assert!(m.contains("case-sensitive"), "{m}");

    let e = RawSettings::parse(&words(&["enableInferance=True"]), &[]).unwrap_err();
    assert!(message(&e, "enableInferance").contains("did you mean `enableInference`?"));

    let e = RawSettings::parse(&words(&["NodeSelector.pool=a"]), &[]).unwrap_err();
    assert!(message(&e, "NodeSelector.pool").contains("did you mean `nodeSelector.pool`?"));

    let e = RawSettings::parse(&words(&["replicas=3"]), &[]).unwrap_err();
    let m = message(&e, "replicas");
    assert!(m.contains("known keys are enableTraining"), "{m}");
}

#[test]
fn keys_from_older_docs_say_what_replaced_them() {
    let e = RawSettings::parse(&words(&["inferenceLoadBalancerHA=False"]), &[]).unwrap_err();
    assert!(message(&e, "inferenceLoadBalancerHA").contains("use inferenceRouterHA"));
    let e = RawSettings::parse(&[], &words(&["sslCertKeyFile=key.pem"])).unwrap_err();
    assert!(message(&e, "sslCertKeyFile").contains("use sslKeyPemFile"));
}

#[test]
fn protected_keys_belong_in_config_protected_and_the_others_do_not() {
    let e = RawSettings::parse(&words(&["sslKeyPemFile=key.pem"]), &[]).unwrap_err();
    assert!(message(&e, "sslKeyPemFile").contains("pass it with --config-protected"));
    let e = RawSettings::parse(&[], &words(&["sslSecret=tls"])).unwrap_err();
    assert!(message(&e, "sslSecret").contains("pass it with --config, not --config-protected"));
}

#[test]
fn words_must_be_key_value_pairs_given_once() {
    let e = RawSettings::parse(&words(&["enableInference"]), &[]).unwrap_err();
    assert!(message(&e, "enableInference").contains("write `enableInference=<value>`"));
    let e = RawSettings::parse(
        &words(&["enableInference=True", "enableInference=False"]),
        &[],
    )
    .unwrap_err();
    assert!(message(&e, "enableInference").contains("given twice in --config"));
}

#[test]
fn booleans_are_true_or_false_in_any_case() {
    let p = problems(&["enableInference=yes"], &[], &cluster_of(3));
    let m = message(&p, "enableInference");
    assert!(
        m.contains("`yes` is not a boolean: use True or False (any case)"),
        "{m}"
    );
    ok(
        &[
            "enableInference=tRuE",
            "inferenceRouterServiceType=clusterIP",
            "allowInsecureConnections=TRUE",
        ],
        &[],
        &cluster_of(3),
    );
}

#[test]
fn names_and_labels_are_checked() {
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
            "sslSecret=My_Secret",
        ],
        &[],
        &cluster_of(3),
    );
    assert!(message(&p, "sslSecret").contains("is not a Secret name"));
    let p = problems(
        &[
            "enableInference=True",
            "inferenceRouterServiceType=clusterIP",
            "allowInsecureConnections=True",
            "sslCname=ml contoso",
        ],
        &[],
        &cluster_of(3),
    );
    assert!(message(&p, "sslCname").contains("is not a DNS name"));
    let e = RawSettings::parse(&words(&["nodeSelector.bad key=x"]), &[]).unwrap_err();
    assert!(message(&e, "nodeSelector.bad key").contains("is not a label name"));
    let p = problems(
        &["enableTraining=True", "nodeSelector.pool=-x"],
        &[],
        &cluster_of(3),
    );
    assert!(message(&p, "nodeSelector.pool").contains("is not a label value"));
}

// Beyond az: the PEM files are parsed and checked.
fn tls_config() -> Vec<&'static str> {
    vec![
        "enableInference=True",
        "inferenceRouterServiceType=loadBalancer",
        "sslCname=ml.contoso.com",
    ]
}

fn pem_files(dir: &Path, cert: &str, key: &str) -> Vec<String> {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    vec![
        format!("sslCertPemFile={}", dir.join("cert.pem").display()),
        format!("sslKeyPemFile={}", dir.join("key.pem").display()),
    ]
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

#[test]
fn good_pem_files_make_a_tls_plan() {
    let plan = ok(&tls_config(), &fixture_protected(), &cluster_of(3));
    let tls = plan.inference.unwrap().tls.unwrap();
    assert_eq!(tls.cname, "ml.contoso.com");
}

#[test]
fn an_unreadable_pem_file_names_the_key_and_the_path() {
    let protected = vec![
        "sslCertPemFile=/nonexistent/cert.pem".to_owned(),
        format!("sslKeyPemFile={}", fixture("key.pem").display()),
    ];
    let m = message(
        &problems(&tls_config(), &protected, &cluster_of(3)),
        "sslCertPemFile",
    );
    assert!(m.contains("cannot read `/nonexistent/cert.pem`"), "{m}");
    assert!(
        m.contains("give the path to the certificate chain (PEM)"),
        "{m}"
    );
}

#[test]
fn the_key_must_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let protected = pem_files(dir.path(), &read("cert.pem"), &other);
    let m = message(
        &problems(&tls_config(), &protected, &cluster_of(3)),
        "sslCertPemFile, sslKeyPemFile",
    );
    assert!(
        m.contains("the private key does not match the certificate"),
        "{m}"
    );
}

#[test]
fn the_key_must_not_have_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let protected = pem_files(dir.path(), &read("cert.pem"), &read("key-encrypted.pem"));
    let m = message(
        &problems(&tls_config(), &protected, &cluster_of(3)),
        "sslKeyPemFile",
    );
    assert!(m.contains("encrypted with a passphrase"), "{m}");
    assert!(
        m.contains("openssl pkey -in key.pem -out key-plain.pem"),
        "{m}"
    );
}

#[test]
fn the_certificate_must_be_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let protected = pem_files(dir.path(), "not a certificate\n", &read("key.pem"));
    let m = message(
        &problems(&tls_config(), &protected, &cluster_of(3)),
        "sslCertPemFile",
    );
    assert!(m.contains("no certificate found"), "{m}");
}

#[test]
fn ssl_cname_must_be_a_name_of_the_certificate() {
    let mut config = tls_config();
    config[2] = "sslCname=ml.fabrikam.com";
    let m = message(
        &problems(&config, &fixture_protected(), &cluster_of(3)),
        "sslCname",
    );
    assert!(
        m.contains("`ml.fabrikam.com` is not a name of the certificate"),
        "{m}"
    );
    assert!(m.contains("ml.contoso.com, *.ml.contoso.com"), "{m}");
    // The wildcard covers one label.
    config[2] = "sslCname=scoring.ml.contoso.com";
    ok(&config, &fixture_protected(), &cluster_of(3));
}

#[test]
fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ml.contoso.com".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let protected = pem_files(dir.path(), &cert.pem(), &key.serialize_pem());
    let m = message(
        &problems(&tls_config(), &protected, &cluster_of(3)),
        "sslCertPemFile",
    );
    assert!(m.contains("expired"), "{m}");
    assert!(m.contains("renew it"), "{m}");
}

// Beyond az: the sslSecret is looked up and checked on a reachable cluster.
fn secret_config() -> Vec<&'static str> {
    vec![
        "enableInference=True",
        "inferenceRouterServiceType=loadBalancer",
        "sslCname=ml.contoso.com",
        "sslSecret=contoso-tls",
    ]
}

#[test]
fn a_missing_ssl_secret_is_an_error() {
    let facts = ClusterFacts {
        ssl_secret: Some(SecretFact::Missing),
        ..cluster_of(3)
    };
    let m = message(&problems(&secret_config(), &[], &facts), "sslSecret");
    assert!(m.contains("does not exist in namespace azureml"), "{m}");
    assert!(
        m.contains("kubectl create secret tls contoso-tls -n azureml"),
        "{m}"
    );
}

fn secret_with(keys: &[(&str, &str)]) -> ClusterFacts {
    ClusterFacts {
        ssl_secret: Some(SecretFact::Found {
            data: keys
                .iter()
                .map(|(key, file)| ((*key).to_owned(), read(file).into_bytes()))
                .collect(),
        }),
        ..cluster_of(3)
    }
}

#[test]
fn the_ssl_secret_needs_a_certificate_pair_in_either_spelling() {
    let facts = secret_with(&[("cert.pem", "cert.pem"), ("tls.key", "key.pem")]);
    let m = message(&problems(&secret_config(), &[], &facts), "sslSecret");
    assert!(m.contains("has no certificate pair"), "{m}");
    assert!(m.contains("tls.crt and tls.key"), "{m}");
    assert!(m.contains("it has cert.pem, tls.key"), "{m}");
}

#[test]
fn a_good_ssl_secret_is_used_and_files_win_over_it() {
    let facts = secret_with(&[("cert.pem", "cert.pem"), ("key.pem", "key.pem")]);
    let plan = ok(&secret_config(), &[], &facts);
    assert_eq!(
        plan.inference.unwrap().tls.unwrap().source,
        TlsSource::Secret {
            name: "contoso-tls".into(),
            spelling: Some(KeySpelling::AzureMl)
        }
    );
    // az rule 9: files win over sslSecret.
    let plan = ok(&secret_config(), &fixture_protected(), &facts);
    assert!(notes(&plan).contains(
        "sslSecret: ignored: sslCertPemFile and sslKeyPemFile are given and take precedence"
    ));
}

#[test]
fn a_kubernetes_tls_secret_as_cert_manager_writes_it_is_accepted_and_checked() {
    let facts = secret_with(&[
        ("tls.crt", "cert.pem"),
        ("tls.key", "key.pem"),
        ("ca.crt", "cert.pem"),
    ]);
    let plan = ok(&secret_config(), &[], &facts);
    assert_eq!(
        plan.inference.unwrap().tls.unwrap().source,
        TlsSource::Secret {
            name: "contoso-tls".into(),
            spelling: Some(KeySpelling::KubernetesTls)
        }
    );
    // Checked like the other spelling: a key of another certificate is refused.
    let mut facts = secret_with(&[("tls.crt", "cert.pem")]);
    if let Some(SecretFact::Found { data }) = facts.ssl_secret.as_mut() {
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        data.insert("tls.key".to_owned(), other.into_bytes());
    }
    let m = message(&problems(&secret_config(), &[], &facts), "sslSecret");
    assert!(m.contains("does not match"), "{m}");
}

#[test]
fn training_says_what_it_does_not_install() {
    let plan = ok(&["enableTraining=True"], &[], &cluster_of(1));
    let n = notes(&plan);
    assert!(n.contains("https://github.com/kubeflow/trainer"), "{n}");
    assert!(n.contains("https://github.com/volcano-sh/volcano"), "{n}");
    assert!(plan.inference.is_none());
}

#[test]
fn inference_settings_without_inference_are_reported_as_ignored() {
    let plan = ok(
        &["enableTraining=True", "sslCname=ml.contoso.com"],
        &[],
        &cluster_of(1),
    );
    assert!(notes(&plan).contains("sslCname: ignored: enableInference is False"));
}

#[test]
fn extension_names_are_checked() {
    let e = scoregate_ext::ops::check_name("My.Extension").unwrap_err();
    assert!(message(&e, "--name").contains("use lowercase letters, digits and `-`"));
    scoregate_ext::ops::check_name("scoregate").unwrap();
}

// az rule 1.
#[tokio::test]
async fn only_cluster_scope_is_accepted() {
    use clap::Parser;
    let cli = scoregate_ext::cli::Cli::try_parse_from([
        "scoregate-ext",
        "create",
        "--name",
        "x",
        "--scope",
        "namespace",
        "--config",
        "enableTraining=True",
    ])
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let e = scoregate_ext::cli::run(cli, &mut out, &mut err)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("the extension is cluster-scoped"),
        "{e}"
    );
}
