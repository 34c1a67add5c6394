//! Kubernetes discovery, end to end: a router with a real `kube::Client` watches a fake API server
//! over HTTP; tests create, change and delete OnlineEndpoints, OnlineDeployments, EndpointSlices
//! and Secrets in the fake and score through the router after each change.

mod support;

use std::time::Instant;

use http::StatusCode;
use scoregate::config::{SecretRef, TlsConfig};
use support::kube::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_deployments_follow_the_cluster() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 2, "blue", port).await;
    let green = pods(2, 2, "green", port).await;
    one_endpoint(&fake, &blue).await;
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let addr = router.http_addr().unwrap();
    let client = client();

    let first = score(&client, addr, "my-endpoint", KEY, None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.deployment(), Some("blue"));
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY2, None).await.status,
        StatusCode::OK,
        "the secondary key works too"
    );

    // A second deployment, then a 50/50 split.
    fake.apply(deployment(NS, "my-endpoint", "green", "green-svc", port))
        .unwrap();
    fake.apply(slice(
        NS,
        "green-svc-x1",
        "green-svc",
        port,
        &green.all_ready(),
    ))
    .unwrap();
    fake.apply(endpoint(
        NS,
        "my-endpoint",
        "my-endpoint-keys",
        &[("blue", 50), ("green", 50)],
    ))
    .unwrap();
    eventually("green to be routable", || async {
        routable(&router, "my-endpoint")
            .iter()
            .any(|(d, pods)| d == "green" && pods.len() == 2)
    })
    .await;
    eventually("both deployments to answer", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let s = score(&client, addr, "my-endpoint", KEY, None).await;
            assert_eq!(s.status, StatusCode::OK);
            seen.extend(s.deployment().map(str::to_string));
        }
        seen.len() == 2
    })
    .await;
    let named = score(&client, addr, "my-endpoint", KEY, Some("green")).await;
    assert_eq!(named.deployment(), Some("green"));

    // All traffic to green: blue keeps answering only when named.
    fake.apply(endpoint(
        NS,
        "my-endpoint",
        "my-endpoint-keys",
        &[("blue", 0), ("green", 100)],
    ))
    .unwrap();
    eventually("traffic to move to green", || async {
        let table = router.table().snapshot();
        let ep = table.endpoint("my-endpoint").unwrap();
        (0..50).all(|_| ep.choose().is_some_and(|d| &*d.name == "green"))
    })
    .await;
    for _ in 0..10 {
        let s = score(&client, addr, "my-endpoint", KEY, None).await;
        assert_eq!(s.deployment(), Some("green"));
    }
    let blue_named = score(&client, addr, "my-endpoint", KEY, Some("blue")).await;
    assert_eq!(blue_named.status, StatusCode::OK);
    assert_eq!(blue_named.deployment(), Some("blue"));

    // Blue leaves the traffic map and goes away: naming it is a 404. (Deleting it while the
    // traffic map still names it would be refused: the endpoint would keep its last valid
    // declaration.)
    fake.apply(endpoint(
        NS,
        "my-endpoint",
        "my-endpoint-keys",
        &[("green", 100)],
    ))
    .unwrap();
    fake.delete("scoregate.io/v1", "OnlineDeployment", NS, "blue")
        .unwrap();
    eventually("blue to leave the table", || async {
        routable(&router, "my-endpoint")
            .iter()
            .all(|(d, _)| d != "blue")
    })
    .await;
    let gone = score(&client, addr, "my-endpoint", KEY, Some("blue")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // The endpoint goes away: 404; it comes back: 200.
    fake.delete("scoregate.io/v1", "OnlineEndpoint", NS, "my-endpoint")
        .unwrap();
    eventually("the endpoint to leave the table", || async {
        router.table().snapshot().endpoint("my-endpoint").is_none()
    })
    .await;
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY, None).await.status,
        StatusCode::NOT_FOUND
    );
    fake.apply(endpoint(
        NS,
        "my-endpoint",
        "my-endpoint-keys",
        &[("green", 100)],
    ))
    .unwrap();
    eventually("the endpoint to come back", || async {
        score(&client, addr, "my-endpoint", KEY, None).await.status == StatusCode::OK
    })
    .await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_scale_and_turn_unready_and_terminating() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 4, "blue", port).await;
    let ips = blue.ips();
    fake.apply(key_secret(NS, "keys", KEY, None)).unwrap();
    fake.apply(endpoint(NS, "my-endpoint", "keys", &[("blue", 100)]))
        .unwrap();
    fake.apply(deployment(NS, "my-endpoint", "blue", "blue-svc", port))
        .unwrap();
    let set = |pods: &[PodState]| slice(NS, "blue-svc-x1", "blue-svc", port, pods);
    fake.apply(set(&[PodState::ready(ips[0]), PodState::ready(ips[1])]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let addr = router.http_addr().unwrap();
    let client = client();
    let blue_pods = |n: &[usize]| addrs(&n.iter().map(|i| ips[*i]).collect::<Vec<_>>(), port);
    assert_eq!(
        routable(&router, "my-endpoint"),
        [("blue".to_string(), blue_pods(&[0, 1]))]
    );

    // Scale up: the new pod gets requests.
    fake.apply(set(&[
        PodState::ready(ips[0]),
        PodState::ready(ips[1]),
        PodState::ready(ips[2]),
    ]))
    .unwrap();
    eventually("the third pod to get requests", || async {
        score(&client, addr, "my-endpoint", KEY, None).await;
        blue.requests()[2] > 0
    })
    .await;

    // A second slice of the same Service adds a pod; removing the slice removes it.
    fake.apply(slice(
        NS,
        "blue-svc-x2",
        "blue-svc",
        port,
        &[PodState::ready(ips[3])],
    ))
    .unwrap();
    eventually("the second slice's pod", || async {
        routable(&router, "my-endpoint") == [("blue".to_string(), blue_pods(&[0, 1, 2, 3]))]
    })
    .await;
    fake.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "blue-svc-x2")
        .unwrap();
    eventually("the second slice to go", || async {
        routable(&router, "my-endpoint") == [("blue".to_string(), blue_pods(&[0, 1, 2]))]
    })
    .await;

    // Not ready, then terminating: no new requests for them.
    let unready = PodState {
        ip: ips[2],
        ready: false,
        terminating: false,
    };
    let terminating = PodState {
        ip: ips[1],
        ready: false,
        terminating: true,
    };
    fake.apply(set(&[PodState::ready(ips[0]), terminating, unready]))
        .unwrap();
    eventually("only the ready pod to be routable", || async {
        routable(&router, "my-endpoint") == [("blue".to_string(), blue_pods(&[0]))]
    })
    .await;
    let before = blue.requests();
    for _ in 0..20 {
        assert_eq!(
            score(&client, addr, "my-endpoint", KEY, None).await.status,
            StatusCode::OK
        );
    }
    let after = blue.requests();
    assert_eq!(after[0], before[0] + 20, "{before:?} → {after:?}");
    assert_eq!((after[1], after[2]), (before[1], before[2]));

    // Scale down to nothing: 503 (no ready pod), then back.
    fake.apply(set(&[])).unwrap();
    eventually("no pod to be routable", || async {
        routable(&router, "my-endpoint") == [("blue".to_string(), vec![])]
    })
    .await;
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY, None).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    fake.apply(set(&[PodState::ready(ips[0])])).unwrap();
    eventually("a pod to be back", || async {
        score(&client, addr, "my-endpoint", KEY, None).await.status == StatusCode::OK
    })
    .await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_live() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 1, "blue", port).await;
    one_endpoint(&fake, &blue).await;
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let addr = router.http_addr().unwrap();
    let client = client();
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY, None).await.status,
        StatusCode::OK
    );

    const NEW_KEY: &str = "rotated-primary-key-0123456789";
    let started = Instant::now();
    fake.apply(key_secret(NS, "my-endpoint-keys", NEW_KEY, Some(KEY2)))
        .unwrap();
    eventually(
        "the old key to be refused and the new one accepted",
        || async {
            score(&client, addr, "my-endpoint", KEY, None).await.status == StatusCode::UNAUTHORIZED
                && score(&client, addr, "my-endpoint", NEW_KEY, None)
                    .await
                    .status
                    == StatusCode::OK
        },
    )
    .await;
    println!(
        "key rotation: old key 401 and new key 200 after {:?}",
        started.elapsed()
    );
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY2, None).await.status,
        StatusCode::OK,
        "the secondary key still works"
    );

    // The Secret disappears: the endpoint is not served with keys from memory.
    fake.delete("v1", "Secret", NS, "my-endpoint-keys").unwrap();
    eventually("the endpoint to be withheld", || async {
        score(&client, addr, "my-endpoint", NEW_KEY, None)
            .await
            .status
            == StatusCode::NOT_FOUND
    })
    .await;
    let text = metrics_text(&client, &router).await;
    assert!(
        text.contains("scoregate_discovery_rejections_total{reason=\"keys\"}"),
        "{text}"
    );
    fake.apply(key_secret(NS, "my-endpoint-keys", NEW_KEY, None))
        .unwrap();
    eventually("the endpoint to be back", || async {
        score(&client, addr, "my-endpoint", NEW_KEY, None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
    router.shutdown().await;
}

/// Waits until the router's `scoregate_discovery_rejected` gauge reads `n`.
async fn wait_rejected(client: &Client, router: &scoregate::router::Router, n: f64, what: &str) {
    eventually(what, || async {
        metric(
            &metrics_text(client, router).await,
            "scoregate_discovery_rejected",
        ) == Some(n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_endpoint_does_not_hold_back_the_others() {
    let fake = fake().await;
    let port = free_port();
    let a = pods(1, 1, "a", port).await;
    let b = pods(2, 2, "b", port).await;
    fake.apply(key_secret(NS, "keys", KEY, None)).unwrap();
    for (name, pods) in [("ep-a", &a), ("ep-b", &b)] {
        let service = format!("{name}-blue");
        fake.apply(endpoint(NS, name, "keys", &[("blue", 100)]))
            .unwrap();
        fake.apply(deployment(
            NS,
            name,
            &format!("{name}-blue"),
            &service,
            port,
        ))
        .unwrap();
        fake.apply(slice(
            NS,
            &format!("{service}-x1"),
            &service,
            port,
            &pods.all_ready()[..1],
        ))
        .unwrap();
    }
    // The deployment names are `ep-a-blue` / `ep-b-blue` (metadata.name); traffic uses them.
    for name in ["ep-a", "ep-b"] {
        fake.apply(endpoint(
            NS,
            name,
            "keys",
            &[(&format!("{name}-blue"), 100)],
        ))
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let addr = router.http_addr().unwrap();
    let client = client();
    eventually("both endpoints", || async {
        score(&client, addr, "ep-a", KEY, None).await.status == StatusCode::OK
            && score(&client, addr, "ep-b", KEY, None).await.status == StatusCode::OK
    })
    .await;

    // ep-a's weights stop summing to 100: it keeps its last valid declaration...
    fake.apply(endpoint(NS, "ep-a", "keys", &[("ep-a-blue", 90)]))
        .unwrap();
    // ...while ep-b scales up.
    fake.apply(slice(NS, "ep-b-blue-x1", "ep-b-blue", port, &b.all_ready()))
        .unwrap();
    eventually("ep-b to scale up", || async {
        routable(&router, "ep-b")[0].1.len() == 2
    })
    .await;
    // ep-a's change and ep-b's slice come on different watches: either may be applied first.
    wait_rejected(
        &client,
        &router,
        1.0,
        "ep-a's new declaration to be refused",
    )
    .await;
    assert_eq!(
        score(&client, addr, "ep-a", KEY, None).await.status,
        StatusCode::OK,
        "ep-a is served from its last valid declaration"
    );

    // A malformed OnlineDeployment (the fake does not validate schemas) is refused on its own.
    let mut bad = deployment(NS, "ep-c", "ep-c-blue", "ep-c-blue", port);
    bad["spec"]["port"] = serde_json::json!("not-a-port");
    fake.apply(bad).unwrap();
    fake.apply(endpoint(NS, "ep-c", "keys", &[("ep-c-blue", 100)]))
        .unwrap();
    fake.apply(slice(
        NS,
        "ep-b-blue-x1",
        "ep-b-blue",
        port,
        &b.all_ready()[..1],
    ))
    .unwrap();
    eventually("ep-b to scale down", || async {
        routable(&router, "ep-b")[0].1.len() == 1
    })
    .await;
    assert_eq!(
        score(&client, addr, "ep-c", KEY, None).await.status,
        StatusCode::NOT_FOUND,
        "a never-valid endpoint is not served"
    );

    // Fixes are picked up.
    fake.apply(endpoint(NS, "ep-a", "keys", &[("ep-a-blue", 100)]))
        .unwrap();
    fake.apply(deployment(NS, "ep-c", "ep-c-blue", "ep-c-blue", port))
        .unwrap();
    fake.apply(slice(NS, "ep-c-blue-x1", "ep-c-blue", port, &a.all_ready()))
        .unwrap();
    eventually("ep-c to be served", || async {
        score(&client, addr, "ep-c", KEY, None).await.status == StatusCode::OK
    })
    .await;
    wait_rejected(&client, &router, 0.0, "no endpoint to be refused").await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_complete_list() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 1, "blue", port).await;
    one_endpoint(&fake, &blue).await;
    fake.refuse_requests_for(std::time::Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let router = scoregate::router::Router::start(router_config(&fake, &[NS], &dir))
        .await
        .expect("the router starts while the API server refuses");
    let client = client();
    assert_eq!(
        readyz(&client, &router).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(router.table().snapshot().is_empty());
    eventually("ready once the lists succeed", || async {
        readyz(&client, &router).await == StatusCode::OK
    })
    .await;
    assert_eq!(
        score(
            &client,
            router.http_addr().unwrap(),
            "my-endpoint",
            KEY,
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let text = metrics_text(&client, &router).await;
    assert!(
        metric(&text, "scoregate_discovery_watch_errors_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_a_namespace_list_or_all() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 1, "blue", port).await;
    let other = pods(2, 1, "other", port).await;
    one_endpoint(&fake, &blue).await;
    for (name, secret) in [("other-endpoint", "keys"), ("my-endpoint", "keys")] {
        fake.apply(key_secret("other", secret, KEY, None)).unwrap();
        fake.apply(endpoint("other", name, secret, &[("blue", 100)]))
            .unwrap();
    }
    fake.apply(deployment(
        "other",
        "other-endpoint",
        "blue",
        "blue-svc",
        port,
    ))
    .unwrap();
    fake.apply(slice(
        "other",
        "blue-svc-x1",
        "blue-svc",
        port,
        &other.all_ready(),
    ))
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let listed = ready_router(router_config(&fake, &[NS], &dir)).await;
    let mut names: Vec<String> = listed
        .table()
        .snapshot()
        .endpoints()
        .map(|e| e.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["my-endpoint"], "only the listed namespace");
    listed.shutdown().await;

    let all = ready_router(router_config(&fake, &[], &dir)).await;
    let client = client();
    let addr = all.http_addr().unwrap();
    eventually("both namespaces' endpoints", || async {
        all.table().snapshot().len() == 2
    })
    .await;
    let before = other.requests()[0];
    assert_eq!(
        score(&client, addr, "other-endpoint", KEY, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        other.requests()[0],
        before + 1,
        "served by the other namespace's pod"
    );
    // `my-endpoint` exists in both namespaces: one is served (the oldest; here both were created
    // in the same second, so the first namespace by name, `models`), the other is reported.
    let before = blue.requests()[0];
    assert_eq!(
        score(&client, addr, "my-endpoint", KEY, None).await.status,
        StatusCode::OK
    );
    assert_eq!(blue.requests()[0], before + 1);
    let text = metrics_text(&client, &all).await;
    assert!(
        text.contains("scoregate_discovery_rejections_total{reason=\"conflict\"} 1"),
        "{text}"
    );
    all.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_from_a_secret_rotates_live() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 1, "blue", port).await;
    one_endpoint(&fake, &blue).await;
    let (first, first_cert, first_key) = localhost_certificate();
    let (second, second_cert, second_key) = localhost_certificate();
    let roots = [first.clone(), second.clone()];
    let dir = tempfile::tempdir().unwrap();

    // Missing at startup: the router refuses to start and says how to fix it.
    let mut config = router_config(&fake, &[NS], &dir);
    config.tls = Some(TlsConfig::from_secret(
        SecretRef::parse(&format!("{NS}/scoring-tls")).unwrap(),
    ));
    let error = scoregate::router::Router::start(config.clone())
        .await
        .err()
        .expect("no certificate, no start")
        .to_string();
    assert!(
        error.contains("Secret models/scoring-tls")
            && error.contains("kubectl -n models create secret"),
        "{error}"
    );

    fake.apply(tls_secret(NS, "scoring-tls", &first_cert, &first_key))
        .unwrap();
    let router = ready_router(config).await;
    let https = router.https_addr().unwrap();
    assert_eq!(served_certificate(https, &roots).await, first);

    fake.apply(tls_secret(NS, "scoring-tls", &second_cert, &second_key))
        .unwrap();
    eventually("the second certificate to be served", || async {
        served_certificate(https, &roots).await == second
    })
    .await;

    // A broken update (the first certificate with the second key) is refused; the second stays.
    fake.apply(tls_secret(NS, "scoring-tls", &first_cert, &second_key))
        .unwrap();
    let client = client();
    eventually("the broken pair to be refused", || async {
        metrics_text(&client, &router)
            .await
            .contains("scoregate_tls_certificate_reloads_total{result=\"refused\"} 1")
    })
    .await;
    assert_eq!(served_certificate(https, &roots).await, second);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_tls_secret_serves_and_wins_over_azureml_keys() {
    let fake = fake().await;
    let blue = pods(1, 1, "blue", free_port()).await;
    one_endpoint(&fake, &blue).await;
    let (k8s, k8s_cert, k8s_key) = localhost_certificate();
    let (azureml, azureml_cert, azureml_key) = localhost_certificate();
    let roots = [k8s.clone(), azureml.clone()];
    let tls_pair: [(&str, &[u8]); 2] = [("tls.crt", &k8s_cert), ("tls.key", &k8s_key)];
    let azureml_pair: [(&str, &[u8]); 2] = [("cert.pem", &azureml_cert), ("key.pem", &azureml_key)];
    let tls_type = "kubernetes.io/tls";
    fake.apply(secret_of_type(NS, "cert-manager-tls", tls_type, &tls_pair))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = router_config(&fake, &[NS], &dir);
    config.tls = Some(TlsConfig::from_secret(
        SecretRef::parse(&format!("{NS}/cert-manager-tls")).unwrap(),
    ));
    let router = ready_router(config).await;
    let https = router.https_addr().unwrap();
    assert_eq!(
        served_certificate(https, &roots).await,
        k8s,
        "tls.crt and tls.key"
    );

    // Both pairs: tls.crt/tls.key is served (a renewal by cert-manager is picked up).
    let (renewed, renewed_cert, renewed_key) = localhost_certificate();
    let roots = [k8s, azureml.clone(), renewed.clone()];
    let renewed_pair: [(&str, &[u8]); 2] = [("tls.crt", &renewed_cert), ("tls.key", &renewed_key)];
    let both = [renewed_pair, azureml_pair].concat();
    fake.apply(secret_of_type(NS, "cert-manager-tls", "Opaque", &both))
        .unwrap();
    eventually("the renewed tls.crt to be served", || async {
        served_certificate(https, &roots).await == renewed
    })
    .await;

    // Only Azure ML's pair left: it is served.
    fake.apply(secret_of_type(
        NS,
        "cert-manager-tls",
        "Opaque",
        &azureml_pair,
    ))
    .unwrap();
    eventually("cert.pem to be served", || async {
        served_certificate(https, &roots).await == azureml
    })
    .await;
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_runs_with_a_kubeconfig() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 1, "blue", port).await;
    one_endpoint(&fake, &blue).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, NS).unwrap();
    let (http, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args(["serve", "--discovery", "kube", "--namespace", NS])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--allow-insecure-connections"])
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start scoregate serve");
    let client = client();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    eventually("the served endpoint", || async {
        let request =
            http::Request::post(format!("http://{addr}/api/v1/endpoint/my-endpoint/score"))
                .header("authorization", format!("Bearer {KEY}"))
                .body(full("{}"))
                .unwrap();
        matches!(client.request(request).await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_coming_and_going_keep_the_others_in_flight_accounting() {
    let fake = fake().await;
    let port = free_port();
    let blue = pods(1, 2, "blue", port).await;
    let ips = blue.ips();
    fake.apply(key_secret(NS, "keys", KEY, None)).unwrap();
    fake.apply(endpoint(NS, "my-endpoint", "keys", &[("blue", 100)]))
        .unwrap();
    let mut one_at_a_time = deployment(NS, "my-endpoint", "blue", "blue-svc", port);
    one_at_a_time["spec"]["requestSettings"] =
        serde_json::json!({"maxConcurrentRequestsPerInstance": 1, "maxQueueWaitMs": 10000});
    fake.apply(one_at_a_time).unwrap();
    let set = |pods: &[PodState]| slice(NS, "blue-svc-x1", "blue-svc", port, pods);
    fake.apply(set(&[PodState::ready(ips[0])])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let router = ready_router(router_config(&fake, &[NS], &dir)).await;
    let addr = router.http_addr().unwrap();

    // A slow request holds pod 0's only slot.
    let slow = tokio::spawn(async move {
        let request = http::Request::post(format!(
            "http://{addr}/api/v1/endpoint/my-endpoint/score?sleep_ms=1500"
        ))
        .header("authorization", format!("Bearer {KEY}"))
        .body(full("{}"))
        .unwrap();
        client().request(request).await.unwrap().status()
    });
    eventually("the slow request to reach pod 0", || async {
        blue.pods[0].stats().in_flight() == 1
    })
    .await;

    // Pod 1 comes and goes; every rebuild keeps pod 0's accounting.
    fake.apply(set(&[PodState::ready(ips[0]), PodState::ready(ips[1])]))
        .unwrap();
    eventually("pod 1 to join", || async {
        routable(&router, "my-endpoint")[0].1.len() == 2
    })
    .await;
    fake.apply(set(&[PodState::ready(ips[0])])).unwrap();
    eventually("pod 1 to leave", || async {
        routable(&router, "my-endpoint")[0].1.len() == 1
    })
    .await;

    // A second request must wait for pod 0's slot, not join the slow one.
    let second = score(&client(), addr, "my-endpoint", KEY, None).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(
        blue.pods[0].stats().peak_concurrency(),
        1,
        "pod 0 never served two requests at once"
    );
    router.shutdown().await;
}
