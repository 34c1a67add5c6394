//! The exact requests kube 5 makes. A kube upgrade that changes any of them fails here first
//! (kube-runtime's `watcher` and kube-client's `Api` build them; read their sources for why).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher};
use scoregate_fake_kube::{FakeApiServer, RecordedRequest};

use crate::support::{cm, cm_json, setup, spawn_reflector, spawn_stream, wait_until, NS};

const CMS: &str = "/api/v1/namespaces/ns/configmaps";

/// Waits until `count` requests are logged and returns them.
async fn first_requests(server: &FakeApiServer, count: usize) -> Vec<RecordedRequest> {
    wait_until("requests", || server.requests().len() >= count).await;
    server.requests()
}

#[tokio::test]
async fn default_watcher_lists_with_limit_then_watches_with_bookmarks() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let _store = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, NS),
        watcher::Config::default(),
    );
    let requests = first_requests(&server, 2).await;
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path_and_query(), format!("{CMS}?&limit=500"));
    assert_eq!(requests[0].accept_encoding, None);
    assert_eq!(
        requests[1].path_and_query(),
        format!("{CMS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1")
    );
    assert_eq!(requests[1].accept_encoding.as_deref(), Some("identity"));
    assert_eq!(requests[1].accept, None);
}

#[tokio::test]
async fn selectors_go_before_limit_and_between_timeout_and_bookmarks() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let config = watcher::Config::default()
        .labels("app=web")
        .fields("metadata.name=a");
    let _store = spawn_reflector(Api::<ConfigMap>::namespaced(client, NS), config);
    let requests = first_requests(&server, 2).await;
    let selectors = "fieldSelector=metadata.name%3Da&labelSelector=app%3Dweb";
    assert_eq!(
        requests[0].path_and_query(),
        format!("{CMS}?&{selectors}&limit=500")
    );
    assert_eq!(
        requests[1].path_and_query(),
        format!("{CMS}?&watch=true&timeoutSeconds=290&{selectors}&allowWatchBookmarks=true&resourceVersion=1")
    );
}

#[tokio::test]
async fn streaming_list_asks_for_initial_events_once() {
    let (server, client) = setup().await;
    server.set_max_watch_timeout(Some(Duration::from_millis(100)));
    server.apply(cm_json("a", "web")).unwrap();
    let config = watcher::Config::default().streaming_lists();
    let _store = spawn_reflector(Api::<ConfigMap>::namespaced(client, NS), config);
    let requests = first_requests(&server, 2).await;
    assert_eq!(
        requests[0].path_and_query(),
        format!(
            "{CMS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true\
             &sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
        )
    );
    assert_eq!(
        requests[1].path_and_query(),
        format!("{CMS}?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1")
    );
}

#[tokio::test]
async fn paged_initial_list_passes_the_continue_token() {
    let (server, client) = setup().await;
    for name in ["a", "b", "c"] {
        server.apply(cm_json(name, "web")).unwrap();
    }
    let config = watcher::Config::default().page_size(2);
    let _store = spawn_reflector(Api::<ConfigMap>::namespaced(client, NS), config);
    let requests = first_requests(&server, 3).await;
    assert_eq!(requests[0].query.as_deref(), Some("&limit=2"));
    let second = requests[1].query.as_deref().unwrap();
    assert!(second.starts_with("&limit=2&continue="), "{second}");
    assert_eq!(requests[2].param("resourceVersion").as_deref(), Some("3"));
}

#[tokio::test]
async fn all_namespaces_and_group_paths() {
    let (server, client) = setup().await;
    let _configmaps = spawn_reflector(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default(),
    );
    wait_until("configmap watch", || server.requests().len() >= 2).await;
    let _deployments = spawn_reflector(Api::<Deployment>::all(client), watcher::Config::default());
    wait_until("deployment watch", || server.requests().len() >= 4).await;
    let paths: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| !r.is_watch())
        .map(|r| r.path_and_query())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/configmaps?&limit=500",
            "/apis/apps/v1/deployments?&limit=500"
        ]
    );
}

#[tokio::test]
async fn metadata_only_watcher_asks_for_partial_object_metadata() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let api = Api::<PartialObjectMeta<ConfigMap>>::namespaced(client, NS);
    let mut events = spawn_stream(watcher(api, watcher::Config::default()));
    let mut applied = Vec::new();
    while applied.is_empty() {
        if let Ok(watcher::Event::InitApply(meta)) = crate::support::next(&mut events).await {
            applied.push(meta.metadata.name);
        }
    }
    assert_eq!(applied, [Some("a".to_string())]);
    let requests = first_requests(&server, 2).await;
    let meta = "application/json;as=PartialObjectMetadata";
    assert_eq!(
        requests[0].accept.as_deref(),
        Some(&*format!("{meta}List;g=meta.k8s.io;v=v1"))
    );
    assert_eq!(
        requests[1].accept.as_deref(),
        Some(&*format!("{meta};g=meta.k8s.io;v=v1"))
    );
}

#[tokio::test]
async fn get_create_and_delete_request_lines() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    api.create(&PostParams::default(), &cm("a", "web"))
        .await
        .unwrap();
    api.get("a").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let lines: Vec<(String, String, Option<String>)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method.clone(), r.path_and_query(), r.content_type.clone()))
        .collect();
    let json = Some("application/json".to_string());
    assert_eq!(
        lines,
        [
            ("POST".into(), format!("{CMS}?"), json.clone()),
            ("GET".into(), format!("{CMS}/a"), None),
            ("GET".into(), format!("{CMS}?"), None),
            ("DELETE".into(), format!("{CMS}/a?"), json),
        ]
    );
}

/// Sends a raw HTTP/1.1 GET and returns the open connection.
async fn raw_get(server: &FakeApiServer, path_and_query: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads until EOF (with a safety limit).
async fn read_all(stream: &mut tokio::net::TcpStream, mut buf: Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    let read = stream.read_to_end(&mut buf);
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap()
        .ok();
    String::from_utf8(buf).unwrap()
}

/// The chunks of a chunked body (stops at the terminator or at truncation).
fn chunks(body: &str) -> Vec<&str> {
    let mut rest = body;
    let mut out = Vec::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test]
async fn watch_bodies_are_chunked_json_lines_ending_cleanly_unless_dropped() {
    let (server, _client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    server.set_max_watch_timeout(Some(Duration::from_millis(50)));
    let watch = format!("{CMS}?watch=true&allowWatchBookmarks=true&resourceVersion=0");
    let text = read_all(&mut raw_get(&server, &watch).await, Vec::new()).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("transfer-encoding: chunked")
            && head.contains("content-type: application/json")
    );
    assert!(
        body.ends_with("0\r\n\r\n"),
        "a clean end has the chunked terminator"
    );
    let events: Vec<serde_json::Value> = chunks(body)
        .into_iter()
        .map(|chunk| {
            assert!(
                chunk.ends_with('\n') && chunk.matches('\n').count() == 1,
                "one JSON object per line: {chunk:?}"
            );
            serde_json::from_str(chunk).unwrap()
        })
        .collect();
    assert_eq!(events[0]["type"], "ADDED");
    let last = events.last().unwrap();
    assert_eq!(
        (
            &last["type"],
            &last["object"]["apiVersion"],
            &last["object"]["kind"]
        ),
        (&"BOOKMARK".into(), &"v1".into(), &"ConfigMap".into())
    );

    server.set_max_watch_timeout(None);
    let mut stream = raw_get(&server, &watch).await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ADDED") {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    server.drop_watches();
    let text = read_all(&mut stream, seen).await;
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a dropped watch has no terminator: {text:?}"
    );
}

#[tokio::test]
async fn shutdown_refuses_connections() {
    let (server, _client) = setup().await;
    let addr = server.addr();
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
