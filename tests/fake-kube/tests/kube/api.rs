//! Request/response verbs through `kube::Api`: paging, CRUD errors, patches, subresources,
//! discovery, namespaces and request-level faults.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::WatchParams;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Discovery, Scope};
use serde_json::json;

use crate::support::{cm, cm_json, setup, NS};

/// The code and reason of an API error.
fn api_error<T: Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn err(code: u16, reason: &str) -> (u16, String) {
    (code, reason.to_string())
}

#[tokio::test]
async fn list_pages_through_continue_tokens_until_compaction_expires_them() {
    let (server, client) = setup().await;
    for i in 0..7 {
        server.apply(cm_json(&format!("cm-{i}"), "web")).unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let (mut names, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut params = ListParams::default().limit(3);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert_eq!(page.metadata.resource_version.as_deref(), Some("7"));
        names.extend(page.items.into_iter().filter_map(|c| c.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());

    let first = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    server.compact();
    let expired = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await;
    assert_eq!(api_error(expired), err(410, "Expired"));
}

#[tokio::test]
async fn crud_failures_are_status_objects() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let created = api
        .create(&PostParams::default(), &cm("a", "web"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let again = api.create(&PostParams::default(), &cm("a", "web")).await;
    assert_eq!(api_error(again), err(409, "AlreadyExists"));
    assert_eq!(api_error(api.get("missing").await), err(404, "NotFound"));

    let mut changed = created.clone();
    changed.data = Some([("key".to_string(), "v2".to_string())].into());
    let replaced = api
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let stale = api.replace("a", &PostParams::default(), &changed).await;
    assert_eq!(api_error(stale), err(409, "Conflict"));

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_error(api.delete("a", &DeleteParams::default()).await),
        err(404, "NotFound")
    );
    assert!(server.get("v1", "ConfigMap", NS, "a").is_none());

    let malformed = http::Request::post(format!("/api/v1/namespaces/{NS}/configmaps"))
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    let malformed = client.request::<serde_json::Value>(malformed).await;
    assert_eq!(api_error(malformed), err(400, "BadRequest"));
    let unknown = http::Request::get("/no/such/path").body(vec![]).unwrap();
    assert_eq!(
        api_error(client.request::<serde_json::Value>(unknown).await),
        err(404, "NotFound")
    );
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_prunes_its_own_fields() {
    let (server, client) = setup().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let apply = PatchParams::apply("scoregate").force();
    let first = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied", "labels": {"a": "1", "b": "2"}},
        "data": {"x": "1", "y": "2"},
    });
    api.patch("applied", &apply, &Patch::Apply(&first))
        .await
        .unwrap();
    let other = Patch::Merge(json!({"data": {"z": "other"}}));
    api.patch("applied", &PatchParams::default(), &other)
        .await
        .unwrap();
    let second = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied", "labels": {"a": "1"}},
        "data": {"x": "2"},
    });
    let applied = api
        .patch("applied", &apply, &Patch::Apply(&second))
        .await
        .unwrap();
    let data = applied.data.unwrap();
    assert_eq!(data.get("x").map(String::as_str), Some("2"));
    assert_eq!(data.get("z").map(String::as_str), Some("other"));
    assert!(!data.contains_key("y"));
    assert_eq!(applied.metadata.labels.unwrap().len(), 1);
    let managers = applied.metadata.managed_fields.unwrap();
    assert!(managers
        .iter()
        .any(|m| m.manager.as_deref() == Some("scoregate")
            && m.operation.as_deref() == Some("Apply")));

    let json_patch = http::Request::patch(format!("/api/v1/namespaces/{NS}/configmaps/applied"))
        .header("content-type", "application/json-patch+json")
        .body(br#"[{"op":"replace","path":"/data/x","value":"3"}]"#.to_vec())
        .unwrap();
    let patched: ConfigMap = client.request(json_patch).await.unwrap();
    assert_eq!(
        patched.data.unwrap().get("x").map(String::as_str),
        Some("3")
    );

    let log = server.requests_with_prefix(&format!("/api/v1/namespaces/{NS}/configmaps/applied"));
    let apply_request = log
        .iter()
        .find(|r| r.content_type.as_deref() == Some("application/apply-patch+yaml"))
        .unwrap();
    assert_eq!(
        apply_request.query.as_deref(),
        Some("&force=true&fieldManager=scoregate")
    );
    assert_eq!(apply_request.field_manager.as_deref(), Some("scoregate"));
}

#[tokio::test]
async fn scale_and_status_subresources_touch_only_their_fields() {
    let (server, client) = setup().await;
    let api: Api<Deployment> = Api::namespaced(client, NS);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let scale = Patch::Merge(json!({"spec": {"replicas": 3}}));
    let scale = api
        .patch_scale("web", &PatchParams::default(), &scale)
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
    let mut scale = api.get_scale("web").await.unwrap();
    scale.spec.as_mut().unwrap().replicas = Some(5);
    let replaced = api
        .replace_scale("web", &PostParams::default(), &scale)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().replicas, Some(5));
    let stale = api
        .replace_scale("web", &PostParams::default(), &scale)
        .await;
    assert_eq!(api_error(stale), err(409, "Conflict"));
    let current = api.get("web").await.unwrap();
    assert_eq!(current.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(current.metadata.generation, Some(3));

    let status = Patch::Merge(
        json!({"spec": {"replicas": 9}, "status": {"replicas": 5, "readyReplicas": 4}}),
    );
    let patched = api
        .patch_status("web", &PatchParams::default(), &status)
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(5));
    assert_eq!(patched.status.unwrap().ready_replicas, Some(4));
    assert_eq!(patched.metadata.generation, Some(3));

    server
        .set_status(
            "apps/v1",
            "Deployment",
            NS,
            "web",
            json!({"replicas": 5, "readyReplicas": 5}),
        )
        .unwrap();
    assert_eq!(
        api.get_status("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .ready_replicas,
        Some(5)
    );
}

#[tokio::test]
async fn discovery_serves_builtin_registered_and_learned_kinds() {
    let (server, client) = setup().await;
    server.register_kind(
        "scoregate.io",
        "v1",
        "onlineendpoints",
        "OnlineEndpoint",
        true,
    );
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
    let endpoint = GroupVersionKind::gvk("scoregate.io", "v1", "OnlineEndpoint");
    let classic = Discovery::new(client.clone()).run().await.unwrap();
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    for discovery in [classic, aggregated] {
        let (resource, caps) = discovery.resolve_gvk(&endpoint).unwrap();
        assert_eq!(
            (resource.plural.as_str(), caps.scope),
            ("onlineendpoints", Scope::Namespaced)
        );
        let (resource, caps) = discovery
            .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Node"))
            .unwrap();
        assert_eq!(
            (resource.plural.as_str(), caps.scope),
            ("nodes", Scope::Cluster)
        );
        assert!(discovery
            .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
            .is_some());
    }

    let (resource, _) = pinned_kind(&client, &endpoint).await.unwrap();
    let endpoints: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    let object = DynamicObject::new("ep", &resource).data(json!({"spec": {"authMode": "key"}}));
    let created = endpoints
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert!(server
        .get("scoregate.io/v1", "OnlineEndpoint", NS, "ep")
        .is_some());
    let mut unversioned = created.clone();
    unversioned.metadata.resource_version = None;
    let put = endpoints
        .replace("ep", &PostParams::default(), &unversioned)
        .await;
    assert_eq!(api_error(put), err(422, "Invalid"));

    let learned = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "scoregate.io",
        "v1",
        "OnlineDeployment",
    ));
    let deployments: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &learned);
    let object = DynamicObject::new("blue", &learned).data(json!({"spec": {"model": "m"}}));
    deployments
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    assert_eq!(
        server
            .list("scoregate.io/v1", "onlinedeployments", NS)
            .len(),
        1
    );
    let rediscovered = Discovery::new(client).run().await.unwrap();
    let gvk = GroupVersionKind::gvk("scoregate.io", "v1", "OnlineDeployment");
    assert!(rediscovered.resolve_gvk(&gvk).is_some());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() {
    let (server, client) = setup().await;
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    server.apply(cm_json("a", "web")).unwrap();
    let mut elsewhere = cm_json("b", "web");
    elsewhere["metadata"]["namespace"] = json!("other");
    server.apply(elsewhere).unwrap();
    Api::<Namespace>::all(client)
        .delete(NS, &DeleteParams::default())
        .await
        .unwrap();
    assert!(server.list("v1", "ConfigMap", NS).is_empty());
    assert_eq!(server.list("v1", "configmaps", "").len(), 1);
}

#[tokio::test]
async fn refused_failed_and_delayed_requests() {
    let (server, client) = setup().await;
    let mut config = server.config(NS).await.unwrap();
    config.default_retry = false;
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    server.refuse_requests_for(Duration::from_secs(600));
    assert_eq!(
        api_error(api.list(&ListParams::default()).await),
        err(503, "ServiceUnavailable")
    );
    server.accept_requests();
    server.fail_next_requests(&format!("/api/v1/namespaces/{NS}/configmaps"), 500, 1);
    assert_eq!(api_error(api.list(&ListParams::default()).await).0, 500);
    server.set_response_delay(Duration::from_millis(20));
    assert!(api.list(&ListParams::default()).await.is_ok());
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 200]);

    server.set_response_delay(Duration::ZERO);
    server.clear_requests();
    server.refuse_requests_for(Duration::from_millis(200));
    let retrying: Api<ConfigMap> = Api::namespaced(client, NS);
    assert!(
        retrying.list(&ListParams::default()).await.is_ok(),
        "kube retries 503s by default"
    );
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        (statuses.first(), statuses.last()),
        (Some(&503), Some(&200))
    );
}

#[tokio::test]
async fn list_only_failures_and_watches_that_end_at_once() {
    let (server, _) = setup().await;
    let mut config = server.config(NS).await.unwrap();
    config.default_retry = false;
    let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), NS);
    api.create(&PostParams::default(), &cm("a", "x"))
        .await
        .unwrap();
    server.fail_lists(&format!("/api/v1/namespaces/{NS}/configmaps"), 403);
    for _ in 0..2 {
        assert_eq!(
            api_error(api.list(&ListParams::default()).await),
            err(403, "Forbidden")
        );
    }
    assert!(api.get("a").await.is_ok(), "a GET of one object is served");
    let watch = api.watch(&WatchParams::default(), "0").await;
    assert!(watch.is_ok(), "watches are served");
    server.clear_list_failures();
    assert!(api.list(&ListParams::default()).await.is_ok());

    server.end_watches_at_once(true);
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version;
    let events: Vec<_> = api
        .watch(&WatchParams::default(), &rv.unwrap())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        events.is_empty(),
        "accepted, then ended with nothing: {events:?}"
    );
}
