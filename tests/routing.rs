//! Routing over real sockets: the traffic split, the deployment header, mirroring, host and path
//! routing, request ids, hop-by-hop and forwarding headers, credentials kept from the pod, and
//! `azureml-model-deployment` on every routed response.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use scoregate::sample_model::SampleModel;
use support::*;

const WIDE: &str = "max_concurrent_requests_per_instance: 64, max_queue_wait_ms: 30000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_split_90_10_within_two_points() {
    let blue = [
        SampleModel::start_local("blue").await.unwrap(),
        SampleModel::start_local("blue").await.unwrap(),
    ];
    let green = SampleModel::start_local("green").await.unwrap();
    let h = Harness::start(&routes(
        &[endpoint("ep-one", &["traffic: { blue: 90, green: 10 }"])],
        &[
            deployment(
                "blue",
                "ep-one",
                &[blue[0].address(), blue[1].address()],
                WIDE,
            ),
            deployment("green", "ep-one", &[green.address()], WIDE),
        ],
    ))
    .await;
    const WORKERS: usize = 16;
    const EACH: usize = 625;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let uri = h.url("ep-one", "/score");
        tasks.push(tokio::spawn(async move {
            let client = client();
            let auth = format!("Bearer {KEY}");
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..EACH {
                let r = send(
                    &client,
                    Method::POST,
                    &uri,
                    &[("authorization", &auth)],
                    full("[1]"),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.text());
                let named = r.deployment().unwrap().to_owned();
                assert_eq!(
                    named,
                    r.model(),
                    "the header names the deployment that served"
                );
                *seen.entry(named).or_default() += 1;
            }
            seen
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in guard("a split worker", t).await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let n = WORKERS * EACH;
    let (b, g) = (total["blue"], total["green"]);
    assert_eq!(b + g, n, "{total:?}");
    let green_share = g as f64 * 100.0 / n as f64;
    assert!(
        (8.0..=12.0).contains(&green_share),
        "green got {green_share:.2} % ({g} of {n}), expected 10 ± 2"
    );
    // The pods agree with the headers.
    assert_eq!(
        (blue[0].stats().requests() + blue[1].stats().requests()) as usize,
        b
    );
    assert_eq!(green.stats().requests() as usize, g);
    assert!(blue[0].stats().requests() > 0 && blue[1].stats().requests() > 0);
    let counted = |d: &'static str| {
        let h = &h;
        async move {
            h.metric_or_zero(
                "scoregate_requests_total",
                &[
                    ("endpoint", "ep-one"),
                    ("deployment", d),
                    ("code", "200"),
                    ("source", "model"),
                    ("error", ""),
                ],
            )
            .await as usize
        }
    };
    assert_eq!(counted("blue").await, b);
    assert_eq!(counted("green").await, g);
}

#[tokio::test]
async fn the_header_reaches_a_zero_percent_deployment() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let green = SampleModel::start_local("green").await.unwrap();
    let h = Harness::start(&routes(
        &[endpoint("ep-one", &["traffic: { blue: 100, green: 0 }"])],
        &[
            deployment("blue", "ep-one", &[blue.address()], WIDE),
            deployment("green", "ep-one", &[green.address()], WIDE),
        ],
    ))
    .await;
    for _ in 0..200 {
        let r = h.score("ep-one", "").await;
        assert_eq!((r.deployment(), r.model().as_str()), (Some("blue"), "blue"));
    }
    assert_eq!(green.stats().requests(), 0, "0 % gets nothing by weight");
    for _ in 0..5 {
        let r = h
            .score_with("ep-one", "", &[("azureml-model-deployment", "green")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.deployment(), Some("green"));
        assert_eq!(r.model(), "green");
    }
    assert_eq!(green.stats().requests(), 5);
    // And it can pick the 100 % one too.
    let r = h
        .score_with("ep-one", "", &[("azureml-model-deployment", "blue")])
        .await;
    assert_eq!(r.model(), "blue");
}

/// The four mirror outcome counters of `shadow`.
async fn mirror_counts(h: &Harness) -> HashMap<&'static str, f64> {
    let text = h.metrics_text().await;
    ["sent", "skipped", "dropped", "failed"]
        .into_iter()
        .map(|result| {
            let v = metric_value(
                &text,
                "scoregate_mirror_requests_total",
                &[
                    ("endpoint", "ep-one"),
                    ("deployment", "shadow"),
                    ("result", result),
                ],
            )
            .unwrap_or(0.0);
            (result, v)
        })
        .collect()
}

/// Waits until the mirror counters stop moving (mirrored copies run after the client's
/// response) and returns them.
async fn settled_mirror_counts(h: &Harness) -> HashMap<&'static str, f64> {
    guard("mirror counters settling", async {
        let mut last = mirror_counts(h).await;
        let mut stable = 0;
        while stable < 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = mirror_counts(h).await;
            if now == last {
                stable += 1;
            } else {
                stable = 0;
                last = now;
            }
        }
        last
    })
    .await
}

fn mirror_routes(
    blue: &SampleModel,
    shadow: std::net::SocketAddr,
    percent: u8,
    settings: &str,
) -> String {
    routes(
        &[endpoint(
            "ep-one",
            &[
                "traffic: { blue: 100 }",
                &format!("mirror_traffic: {{ shadow: {percent} }}"),
            ],
        )],
        &[
            deployment("blue", "ep-one", &[blue.address()], WIDE),
            deployment("shadow", "ep-one", &[shadow], settings),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_its_share_and_named_requests_are_not_mirrored() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let shadow = SampleModel::start_local("shadow").await.unwrap();
    let h = Harness::start(&mirror_routes(&blue, shadow.address(), 20, WIDE)).await;
    const N: u64 = 1000;
    let body = r#"{"data": [[1, 2, 3, 4]]}"#;
    for _ in 0..N {
        let r = h.score("ep-one", "").await;
        assert_eq!(r.status, 200);
        assert_eq!((r.deployment(), r.model().as_str()), (Some("blue"), "blue"));
    }
    let counts = settled_mirror_counts(&h).await;
    let mirrored = shadow.stats().requests();
    assert_eq!(counts["sent"], mirrored as f64, "{counts:?}");
    assert_eq!(
        counts["skipped"] + counts["dropped"] + counts["failed"],
        0.0,
        "{counts:?}"
    );
    assert!(
        (140..=260).contains(&mirrored),
        "shadow got {mirrored} of {N}, expected about 20 %"
    );
    assert_eq!(blue.stats().requests(), N, "mirroring adds no live request");
    assert_eq!(
        shadow.stats().scored_bytes(),
        mirrored * body.len() as u64,
        "each copy carries the client's body"
    );
    let seen = shadow.stats().last_headers().unwrap();
    assert!(seen.get("authorization").is_none());
    assert!(is_guid(seen["x-request-id"].to_str().unwrap()));

    // Requests that name a deployment are never mirrored.
    for _ in 0..200 {
        let r = h
            .score_with("ep-one", "", &[("azureml-model-deployment", "blue")])
            .await;
        assert_eq!(r.status, 200);
    }
    let after = settled_mirror_counts(&h).await;
    assert_eq!(shadow.stats().requests(), mirrored, "{after:?}");
    assert_eq!(after, counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_chunked_bodies_are_mirrored_too() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let shadow = SampleModel::start_local("shadow").await.unwrap();
    let h = Harness::start(&mirror_routes(&blue, shadow.address(), 50, WIDE)).await;
    let auth = format!("Bearer {KEY}");
    for _ in 0..100 {
        let r = send(
            &h.client,
            Method::GET,
            &h.url("ep-one", "/score?empty=1"),
            &[("authorization", &auth)],
            empty(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let empties = settled_mirror_counts(&h).await;
    // 50 expected; fewer than 20 is a six-sigma event.
    assert!(empties["sent"] >= 20.0, "{empties:?}");
    assert_eq!(empties["skipped"], 0.0, "{empties:?}");
    assert_eq!(shadow.stats().requests() as f64, empties["sent"]);
    assert_eq!(shadow.stats().scored_bytes(), 0);

    for _ in 0..100 {
        let chunks = futures_util::stream::iter(["ab", "cd", "ef"].map(|c| {
            Ok::<_, BoxError>(hyper::body::Frame::data(bytes::Bytes::from_static(
                c.as_bytes(),
            )))
        }));
        let r = send(
            &h.client,
            Method::POST,
            &h.url("ep-one", "/score"),
            &[("authorization", &auth)],
            streamed(chunks),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["input"], "abcdef");
    }
    let chunked = settled_mirror_counts(&h).await;
    let copies = chunked["sent"] - empties["sent"];
    assert!(copies >= 20.0, "{chunked:?}");
    assert_eq!(chunked["skipped"], 0.0, "{chunked:?}");
    assert_eq!(
        shadow.stats().scored_bytes() as f64,
        copies * 6.0,
        "whole bodies"
    );
}

/// Sends 200 requests to an endpoint mirroring 50 % to `shadow`; every client response must be
/// blue's 200, whatever the mirror does. Returns the settled mirror counters.
async fn mirror_never_leaks(
    shadow: std::net::SocketAddr,
    settings: &str,
) -> HashMap<&'static str, f64> {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&mirror_routes(&blue, shadow, 50, settings)).await;
    for i in 0..200 {
        let r = h.score("ep-one", "").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.deployment(), Some("blue"));
        assert_eq!(r.model(), "blue");
        assert_eq!(r.header("x-ms-run-function-failed"), Some("False"));
    }
    assert_eq!(blue.stats().requests(), 200);
    settled_mirror_counts(&h).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_resets_never_reaches_the_client() {
    let pod = RawPod::start(RawMode::Reset).await;
    let counts = mirror_never_leaks(pod.address(), "max_concurrent_requests_per_instance: 4").await;
    assert!(counts["failed"] >= 1.0, "{counts:?}");
    assert_eq!(counts["sent"], 0.0, "{counts:?}");
    assert!(pod.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_hangs_never_delays_the_client() {
    // Mirror copies would wait a minute for an answer that never comes; the 200 client
    // requests finish long before (each is guarded by the hang timeout of `send`).
    let pod = RawPod::start(RawMode::Hang).await;
    let counts = mirror_never_leaks(
        pod.address(),
        "request_timeout_ms: 60000, max_concurrent_requests_per_instance: 1, max_queue_wait_ms: 0",
    )
    .await;
    assert_eq!(pod.requests(), 1, "one copy holds the only mirror slot");
    assert!(
        counts["dropped"] >= 1.0,
        "the others are dropped: {counts:?}"
    );
    assert_eq!(counts["sent"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_fails_never_reaches_the_client() {
    let pod = RawPod::start(RawMode::Respond(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\nx-ms-run-function-failed: True\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    ))
    .await;
    let counts = mirror_never_leaks(pod.address(), "max_concurrent_requests_per_instance: 4").await;
    assert!(pod.requests() >= 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_nothing_listening_never_reaches_the_client() {
    let counts =
        mirror_never_leaks(dead_address(), "max_concurrent_requests_per_instance: 4").await;
    assert!(counts["failed"] >= 1.0, "{counts:?}");
    assert_eq!(counts["sent"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_mirror_cap_are_not_mirrored() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let shadow = SampleModel::start_local("shadow").await.unwrap();
    let h = Harness::start_with(&mirror_routes(&blue, shadow.address(), 50, WIDE), |c| {
        c.mirror.max_body_bytes = 1024
    })
    .await;
    let auth = format!("Bearer {KEY}");
    for _ in 0..100 {
        let r = send(
            &h.client,
            Method::POST,
            &h.url("ep-one", "/score"),
            &[("authorization", &auth)],
            full(vec![b'x'; 4096]),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["input_bytes"], 4096, "the live pod gets all of it");
    }
    let counts = settled_mirror_counts(&h).await;
    assert_eq!(shadow.stats().requests(), 0, "{counts:?}");
    assert!(counts["skipped"] >= 1.0, "{counts:?}");
    assert_eq!(counts["sent"], 0.0);
}

#[tokio::test]
async fn host_routing_and_path_routing() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let yaml = simple_routes("ep-one", &[pod.address()], WIDE);
    let h = Harness::start_with(&yaml, |c| {
        c.routing.host_domain = Some("ml.example.com".into())
    })
    .await;
    let auth = format!("Bearer {KEY}");
    let get = |path: &str, host: Option<&str>| {
        let (client, url, auth) = (h.client.clone(), h.raw_url(path), auth.clone());
        let host = host.map(str::to_owned);
        async move {
            let mut headers = vec![("authorization", auth.as_str())];
            if let Some(host) = &host {
                headers.push(("host", host.as_str()));
            }
            send(&client, Method::GET, &url, &headers, empty()).await
        }
    };

    // Host routing keeps the whole path.
    let r = get("/score?a=1&b=two", Some("ep-one.ml.example.com")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["input"], "a=1&b=two");
    assert_eq!(r.deployment(), Some("blue"));
    let seen = pod.stats().last_headers().unwrap();
    assert_eq!(seen["x-forwarded-host"], "ep-one.ml.example.com");
    let r = get("/", Some("ep-one.ML.Example.com:8443")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "Healthy"));
    let r = get("/swagger.json", Some("ep-one.ml.example.com")).await;
    assert_eq!(r.json()["swagger"], "2.0");
    // Host names are case-insensitive, the endpoint's part included; so are endpoint names in
    // paths.
    let r = get("/score", Some("EP-ONE.ML.EXAMPLE.COM")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get("/api/v1/endpoint/Ep-One/score", None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    assert_router_error(
        &get("/score", Some("other.ml.example.com")).await,
        404,
        "EndpointNotFound",
    );
    assert_router_error(
        &get("/score", Some("ep-one.example.org")).await,
        404,
        "RouteNotFound",
    );
    assert_router_error(
        &get("/score", Some("a.ep-one.ml.example.com")).await,
        404,
        "RouteNotFound",
    );

    // Path routing still works, and wins over the host.
    let r = get(
        "/api/v1/endpoint/ep-one/score?x=1",
        Some("other.ml.example.com"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["input"], "x=1");
    let r = get("/api/v1/endpoint/ep-one/swagger.json", None).await;
    assert_eq!(r.json()["swagger"], "2.0");
    let r = get("/api/v1/endpoint/ep-one", None).await;
    assert_eq!(r.text(), "Healthy", "the endpoint root is the pod's /");

    // Without a domain configured, the host means nothing.
    let plain = Harness::start(&yaml).await;
    let r = send(
        &plain.client,
        Method::GET,
        &plain.raw_url("/score"),
        &[("authorization", &auth), ("host", "ep-one.ml.example.com")],
        empty(),
    )
    .await;
    assert_router_error(&r, 404, "RouteNotFound");
}

#[tokio::test]
async fn request_ids_are_kept_replaced_cleaned_and_echoed() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], WIDE)).await;
    let pod_saw = |name: &str| {
        pod.stats()
            .last_headers()
            .unwrap()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };

    // A valid GUID is kept (any case of hex digits).
    for guid in [
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "3F2504E0-4F89-11D3-9A0C-0305E82C3301",
    ] {
        let r = h.score_with("ep-one", "", &[("x-request-id", guid)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some(guid));
        assert_eq!(pod_saw("x-request-id").as_deref(), Some(guid));
    }

    // Anything else is replaced by a new GUID, the same one for the pod and the client.
    let mut issued = Vec::new();
    for bad in [
        None,
        Some("not-a-guid"),
        Some("3f2504e04f8911d39a0c0305e82c3301"),
        Some("{3f2504e0-4f89-11d3-9a0c-0305e82c3301}"),
        Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301-extra"),
    ] {
        let headers: Vec<(&str, &str)> = bad.map(|b| ("x-request-id", b)).into_iter().collect();
        let r = h.score_with("ep-one", "", &headers).await;
        let id = r.header("x-request-id").unwrap().to_owned();
        assert!(is_guid(&id), "{bad:?} → {id}");
        assert_ne!(Some(id.as_str()), bad);
        assert_eq!(pod_saw("x-request-id"), Some(id.clone()), "{bad:?}");
        issued.push(id);
    }
    issued.sort();
    issued.dedup();
    assert_eq!(issued.len(), 5, "each request gets its own id");

    // The client id keeps only [A-Za-z0-9_-], cut to 40 characters.
    let raw = "Order 42/ä-b_c!".to_owned() + &"z".repeat(50);
    let raw = raw.replace('ä', "");
    let cleaned: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    assert_eq!(cleaned.len(), 40);
    assert!(cleaned.starts_with("Order42-b_c"));
    let r = h
        .score_with("ep-one", "", &[("x-ms-client-request-id", &raw)])
        .await;
    assert_eq!(r.header("x-ms-client-request-id"), Some(cleaned.as_str()));
    assert_eq!(pod_saw("x-ms-client-request-id"), Some(cleaned.clone()));
    assert!(
        is_guid(r.header("x-request-id").unwrap()),
        "both ids echoed"
    );

    // A short clean id is unchanged.
    let r = h
        .score_with("ep-one", "", &[("x-ms-client-request-id", "abc-123_X")])
        .await;
    assert_eq!(r.header("x-ms-client-request-id"), Some("abc-123_X"));
    assert_eq!(
        pod_saw("x-ms-client-request-id").as_deref(),
        Some("abc-123_X")
    );

    // Nothing left after cleaning: not forwarded, not echoed.
    let r = h
        .score_with("ep-one", "", &[("x-ms-client-request-id", "!!! ///")])
        .await;
    assert_eq!(r.header("x-ms-client-request-id"), None);
    assert_eq!(pod_saw("x-ms-client-request-id"), None);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], WIDE)).await;
    let r = h
        .score_with(
            "ep-one",
            "",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "from the client"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = pod.stats().last_headers().unwrap();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(seen.get(gone).is_none(), "the pod got {gone}: {seen:?}");
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["content-type"], "application/json");

    // And from the pod back to the client.
    let raw = RawPod::start(RawMode::Respond(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: x-pod-secret\r\nx-pod-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nx-pod-kept: 1\r\ncontent-length: 2\r\n\r\n{}",
    ))
    .await;
    let h = Harness::start(&simple_routes("ep-one", &[raw.address()], WIDE)).await;
    let r = h.score("ep-one", "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{}"));
    for gone in ["x-pod-secret", "keep-alive", "proxy-connection"] {
        assert!(
            r.headers.get(gone).is_none(),
            "the client got {gone}: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-pod-kept"), Some("1"));
    assert_eq!(r.deployment(), Some("blue"));
}

#[tokio::test]
async fn forwarding_headers_are_added_and_credentials_stay_with_the_router() {
    let pod = SampleModel::start_local("blue").await.unwrap();
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], WIDE)).await;
    let r = h.score("ep-one", "").await;
    assert_eq!(r.status, 200);
    let seen = pod.stats().last_headers().unwrap();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], h.http.to_string());
    assert!(
        seen.get("authorization").is_none(),
        "the key never reaches the model's code"
    );

    // A client's own forwarding headers: the chain is extended, the rest is the router's word.
    let r = h
        .score_with(
            "ep-one",
            "",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "spoofed.example.com"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = pod.stats().last_headers().unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], h.http.to_string());
    assert_eq!(seen.get_all("x-forwarded-proto").iter().count(), 1);
    assert_eq!(seen.get_all("x-forwarded-host").iter().count(), 1);

    // A secondary key is not forwarded either.
    let auth = format!("Bearer {KEY2}");
    let r = send(
        &h.client,
        Method::POST,
        &h.url("ep-one", "/score"),
        &[("authorization", &auth)],
        full("{}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(pod
        .stats()
        .last_headers()
        .unwrap()
        .get("authorization")
        .is_none());
}

#[tokio::test]
async fn every_routed_response_names_its_deployment() {
    let blue = SampleModel::start_local("blue").await.unwrap();
    let green = SampleModel::start_local("green").await.unwrap();
    let h = Harness::start(&routes(
        &[endpoint("ep-one", &["traffic: { blue: 100 }"])],
        &[
            deployment("blue", "ep-one", &[blue.address()], WIDE),
            deployment("green", "ep-one", &[green.address()], WIDE),
        ],
    ))
    .await;
    let auth = format!("Bearer {KEY}");
    let cases: [(Method, &str, u16); 6] = [
        (Method::POST, "/score", 200),
        (Method::GET, "/score?q=1", 200),
        (Method::GET, "/swagger.json", 200),
        (Method::GET, "/", 200),
        (Method::PUT, "/score", 405),
        (Method::GET, "/no-such-route", 404),
    ];
    for deployment in ["blue", "green"] {
        for (method, rest, status) in &cases {
            let r = send(
                &h.client,
                method.clone(),
                &h.url("ep-one", rest),
                &[
                    ("authorization", &auth),
                    ("azureml-model-deployment", deployment),
                ],
                full("{}"),
            )
            .await;
            assert_eq!(r.status.as_u16(), *status, "{method} {rest}: {}", r.text());
            assert_eq!(r.deployment(), Some(deployment), "{method} {rest}");
            if *status != 200 {
                // The pod's own answer, not a router error.
                assert!(r.json().get("error").is_none(), "{}", r.text());
                assert!(r.json().get("message").is_some(), "{}", r.text());
            }
        }
    }
    // By weight too.
    let r = h.score("ep-one", "?fail=1").await;
    assert_eq!((r.status.as_u16(), r.deployment()), (500, Some("blue")));
}

#[tokio::test]
async fn a_pod_that_closes_after_each_response_costs_no_request() {
    // The pod answers without `Connection: close` and then closes: a pooled connection may be
    // dead by the time it is reused. The router must notice or retry, never answer 502.
    let pod = RawPod::start(RawMode::Respond(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    ))
    .await;
    let h = Harness::start(&simple_routes("ep-one", &[pod.address()], WIDE)).await;
    for i in 0..200 {
        let r = h.score("ep-one", "").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(pod.requests(), 200);
}
