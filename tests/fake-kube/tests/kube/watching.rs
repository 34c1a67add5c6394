//! `Api::watch`, `runtime::watcher` and `reflector` against the fake, including every fault hook.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::ResourceExt;
use serde_json::json;

use crate::support::{
    cm, cm_json, names, next, setup, spawn_reflector, spawn_stream, wait_until, NS,
};

fn describe(item: Result<Event<ConfigMap>, watcher::Error>) -> String {
    match item {
        Ok(Event::Init) => "Init".into(),
        Ok(Event::InitApply(o)) => format!("InitApply:{}", o.name_any()),
        Ok(Event::InitDone) => "InitDone".into(),
        Ok(Event::Apply(o)) => format!("Apply:{}", o.name_any()),
        Ok(Event::Delete(o)) => format!("Delete:{}", o.name_any()),
        Err(e) => format!("Err:{e}"),
    }
}

fn count(server: &scoregate_fake_kube::FakeApiServer, watches: bool) -> usize {
    let prefix = format!("/api/v1/namespaces/{NS}/configmaps");
    server
        .requests_with_prefix(&prefix)
        .iter()
        .filter(|r| r.method == "GET" && r.is_watch() == watches)
        .count()
}

#[tokio::test]
async fn watcher_lists_then_streams_http_and_programmatic_changes() {
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let (server, client) = setup().await;
        server.apply(cm_json("a", "web")).unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, NS);
        let mut events = spawn_stream(watcher(api.clone(), config));
        for expected in ["Init", "InitApply:a", "InitDone"] {
            assert_eq!(describe(next(&mut events).await), expected);
        }
        api.create(&PostParams::default(), &cm("b", "web"))
            .await
            .unwrap();
        assert_eq!(describe(next(&mut events).await), "Apply:b");
        let mut changed = cm_json("a", "web");
        changed["data"]["key"] = json!("changed");
        server.apply(changed).unwrap();
        match next(&mut events).await {
            Ok(Event::Apply(a)) => assert_eq!(a.data.unwrap()["key"], "changed"),
            other => panic!("expected Apply:a, got {}", describe(other)),
        }
        server.delete("v1", "configmaps", NS, "b").unwrap();
        assert_eq!(describe(next(&mut events).await), "Delete:b");
    }
}

#[tokio::test]
async fn reflector_converges_on_selected_objects() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let store = spawn_reflector(api.clone(), watcher::Config::default().labels("app=web"));
    for (name, app) in [("a", "web"), ("b", "db"), ("c", "web")] {
        api.create(&PostParams::default(), &cm(name, app))
            .await
            .unwrap();
    }
    wait_until("a and c", || names(&store) == ["a", "c"]).await;
    server.apply(cm_json("a", "db")).unwrap();
    server.apply(cm_json("b", "web")).unwrap();
    wait_until("b and c", || names(&store) == ["b", "c"]).await;
    server.delete("v1", "ConfigMap", NS, "c").unwrap();
    wait_until("only b", || names(&store) == ["b"]).await;
}

#[tokio::test]
async fn rewatch_after_timeout_resumes_from_the_last_version_without_relisting() {
    let (server, client) = setup().await;
    server.set_max_watch_timeout(Some(Duration::from_millis(200)));
    server.apply(cm_json("a", "web")).unwrap();
    let store = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, NS),
        watcher::Config::default(),
    );
    wait_until("two watches", || count(&server, true) >= 2).await;
    server.apply(cm_json("b", "web")).unwrap();
    let rv = server.resource_version().to_string();
    wait_until("a watch from the latest version", || {
        server
            .requests()
            .iter()
            .any(|r| r.is_watch() && r.param("resourceVersion").as_deref() == Some(rv.as_str()))
    })
    .await;
    assert_eq!(names(&store), ["a", "b"]);
    assert_eq!(count(&server, false), 1, "no relist");
}

#[tokio::test]
async fn injected_410_makes_the_watcher_relist() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let store = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, NS),
        watcher::Config::default(),
    );
    wait_until("a watch", || count(&server, true) == 1).await;
    server.expire_watches();
    server.apply(cm_json("b", "web")).unwrap();
    wait_until("a relist", || count(&server, false) == 2).await;
    wait_until("a and b", || names(&store) == ["a", "b"]).await;
}

#[tokio::test]
async fn too_old_resource_version_is_an_in_stream_410() {
    let (server, client) = setup().await;
    server.set_history_limit(2);
    for i in 0..5 {
        server.apply(cm_json(&format!("c{i}"), "web")).unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let mut stream = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected an in-stream 410, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );
    assert_eq!(server.requests().last().map(|r| r.status), Some(200));

    let recent = (server.resource_version() - 1).to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &recent)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Added(o))) => assert_eq!(o.name_any(), "c4"),
        other => panic!("expected the last change, got {other:?}"),
    }
}

#[tokio::test]
async fn dropped_connections_resume_from_the_last_version() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let store = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, NS),
        watcher::Config::default(),
    );
    wait_until("a watch", || {
        count(&server, true) == 1 && names(&store) == ["a"]
    })
    .await;
    server.drop_watches();
    server.apply(cm_json("b", "web")).unwrap();
    wait_until("a and b", || names(&store) == ["a", "b"]).await;
    wait_until("a second watch", || count(&server, true) == 2).await;
    assert_eq!(count(&server, false), 1, "no relist");
}

#[tokio::test]
async fn restart_on_the_same_port_resumes_and_compaction_forces_a_relist() {
    let (server, client) = setup().await;
    server.apply(cm_json("a", "web")).unwrap();
    let store = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, NS),
        watcher::Config::default(),
    );
    wait_until("a watch", || {
        count(&server, true) == 1 && names(&store) == ["a"]
    })
    .await;

    server.stop().await;
    server.apply(cm_json("b", "web")).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.restart().await.unwrap();
    wait_until("a and b", || names(&store) == ["a", "b"]).await;
    assert_eq!(count(&server, false), 1, "resumed without relisting");

    server.stop().await;
    server.delete("v1", "ConfigMap", NS, "a").unwrap();
    server.compact();
    server.restart().await.unwrap();
    wait_until("only b", || names(&store) == ["b"]).await;
    assert_eq!(count(&server, false), 2, "relisted after the in-stream 410");
}

#[tokio::test]
async fn stalled_watches_send_nothing_until_resumed() {
    let (server, client) = setup().await;
    server.set_bookmark_interval(Duration::from_millis(20));
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        stream.next().await,
        Some(Ok(WatchEvent::Bookmark(_)))
    ));

    server.stall_watches(Duration::from_secs(600));
    server.apply(cm_json("a", "web")).unwrap();
    // Bookmarks already on the wire may still arrive; after them, silence. A watch that ignored
    // the stall would send one bookmark every 20 ms and never go quiet.
    for in_flight in 0.. {
        match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
            Err(_silence) => break,
            Ok(Some(Ok(WatchEvent::Bookmark(_)))) => {
                assert!(in_flight < 50, "a stalled watch kept sending")
            }
            Ok(other) => panic!("a stalled watch sent {other:?}"),
        }
    }
    server.resume_watches();
    loop {
        match stream.next().await {
            Some(Ok(WatchEvent::Bookmark(_))) => continue,
            Some(Ok(WatchEvent::Added(o))) => break assert_eq!(o.name_any(), "a"),
            other => panic!("expected ADDED a, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn selector_transitions_become_added_and_deleted() {
    let (server, client) = setup().await;
    server.set_bookmark_interval(Duration::from_secs(3600));
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().labels("app=web");
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    server.apply(cm_json("skip", "db")).unwrap();
    for (app, expected) in [
        ("web", "ADDED"),
        ("web", "MODIFIED"),
        ("db", "DELETED"),
        ("web", "ADDED"),
    ] {
        let mut obj = cm_json("a", app);
        obj["data"]["key"] = json!(expected);
        server.apply(obj).unwrap();
        let (kind, object) = match stream.next().await {
            Some(Ok(WatchEvent::Added(o))) => ("ADDED", o),
            Some(Ok(WatchEvent::Modified(o))) => ("MODIFIED", o),
            Some(Ok(WatchEvent::Deleted(o))) => ("DELETED", o),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!((kind, object.name_any().as_str()), (expected, "a"));
    }
}
