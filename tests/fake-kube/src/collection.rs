//! Collection verbs: list (with `limit`/`continue` paging), watch, and delete-collection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kinds::KindInfo;
use crate::server::Shared;
use crate::service::{stream_response, Body, Request};
use crate::status::ApiError;
use crate::store::Key;
use crate::watch::{self, partial_metadata, WatchSpec};

/// Default `timeoutSeconds` when a watch sets none (kube-apiserver picks 30–60 minutes).
const DEFAULT_WATCH_TIMEOUT: u64 = 1800;

/// LIST: a page of matching objects with the list's resourceVersion and a continue token.
pub(crate) fn list(
    shared: &Shared,
    req: &Request,
    info: &KindInfo,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let filter = req.filter()?;
    let limit = req
        .number("limit")?
        .filter(|l| *l > 0)
        .map_or(usize::MAX, |l| l as usize);
    let store = shared.store.lock();
    let token = req.param("continue").filter(|t| !t.is_empty());
    let token = token.map(|t| ContinueToken::decode(&t)).transpose()?;
    if token.as_ref().is_some_and(|t| t.epoch != store.token_epoch) {
        return Err(ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        ));
    }
    let list_rv = token.as_ref().map_or(store.rv(), |t| t.rv);
    let after = token.as_ref().map(|t| &t.after);
    let mut matching = store
        .list(&info.gvr, ns, after)
        .filter(|(_, obj)| filter.matches(obj));
    let page: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let (Some(_), Some((last, _))) = (matching.next(), page.last()) {
        let next = ContinueToken {
            epoch: store.token_epoch,
            rv: list_rv,
            after: (*last).clone(),
        };
        metadata["continue"] = json!(next.encode());
    }
    let (api_version, kind) = if req.metadata_only() {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (info.gvr.api_version(), format!("{}List", info.kind))
    };
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, obj)| {
            if req.metadata_only() {
                partial_metadata(obj)
            } else {
                obj.clone()
            }
        })
        .collect();
    Ok(json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}))
}

/// DELETE on a collection: deletes the matching objects and lists them.
pub(crate) fn delete_collection(
    shared: &Shared,
    req: &Request,
    info: &KindInfo,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let filter = req.filter()?;
    let mut store = shared.store.lock();
    let doomed: Vec<Key> = store
        .list(&info.gvr, ns, None)
        .filter(|(_, obj)| filter.matches(obj))
        .map(|(key, _)| key.clone())
        .collect();
    let items: Vec<Value> = doomed
        .iter()
        .filter_map(|(ns, name)| store.delete(info, ns, name).ok())
        .collect();
    let metadata = json!({"resourceVersion": store.rv().to_string()});
    let kind = format!("{}List", info.kind);
    Ok(
        json!({"apiVersion": info.gvr.api_version(), "kind": kind, "metadata": metadata, "items": items}),
    )
}

/// WATCH: validates the parameters and starts the stream.
pub(crate) fn watch(
    shared: &Arc<Shared>,
    req: &Request,
    info: &KindInfo,
    namespace: Option<String>,
) -> Result<http::Response<Body>, ApiError> {
    let resource_version = match req.param("resourceVersion").as_deref() {
        None | Some("" | "0") => None,
        Some(_) => req.number("resourceVersion")?,
    };
    let send_initial_events = req.flag("sendInitialEvents");
    if send_initial_events && req.param("resourceVersionMatch").as_deref() != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
        ));
    }
    let spec = WatchSpec {
        info: info.clone(),
        namespace,
        filter: req.filter()?,
        bookmarks: req.flag("allowWatchBookmarks"),
        timeout: Duration::from_secs(
            req.number("timeoutSeconds")?
                .unwrap_or(DEFAULT_WATCH_TIMEOUT),
        ),
        resource_version,
        send_initial_events,
        metadata_only: req.metadata_only(),
    };
    Ok(stream_response(watch::start(shared.clone(), spec)))
}

/// The opaque `continue` token: compaction epoch, snapshot resourceVersion, last key served.
struct ContinueToken {
    epoch: u64,
    rv: u64,
    after: Key,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let raw = format!(
            "{}/{}/{}/{}",
            self.epoch, self.rv, self.after.0, self.after.1
        );
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(token: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
        let bytes: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| {
                token
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<_>>()
            .ok_or_else(bad)?;
        let raw = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = raw.splitn(4, '/');
        let mut next = || parts.next().ok_or_else(bad);
        let epoch = next()?.parse().map_err(|_| bad())?;
        let rv = next()?.parse().map_err(|_| bad())?;
        let after = (next()?.to_string(), next()?.to_string());
        Ok(Self { epoch, rv, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let token = ContinueToken {
            epoch: 2,
            rv: 42,
            after: ("ns".into(), "a/b".into()),
        };
        let back = ContinueToken::decode(&token.encode()).unwrap();
        assert_eq!(
            (back.epoch, back.rv, back.after),
            (2, 42, ("ns".into(), "a/b".into()))
        );
        assert!(ContinueToken::decode("zz").is_err());
        assert!(ContinueToken::decode("abc").is_err());
    }
}
