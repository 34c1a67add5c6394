//! What a replica says about itself in every hello, both ways: whether it may own deployments,
//! its view (id, members, age), the replicas it reaches, and which of the receiver's views it
//! has reported its slots for. Carried in headers, so a hello stays one small HTTP/2 exchange.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::protocol::{READY, VIEW};
use super::view_id::ViewId;

/// This process's random instance number (a replica restarted at the same address has another).
pub static INSTANCE: HeaderName = HeaderName::from_static("x-scoregate-instance");
/// The sender's view's members, comma-separated.
pub static MEMBERS: HeaderName = HeaderName::from_static("x-scoregate-members");
/// `true` when the sender's view has a majority of the replicas it knows.
pub static QUORUM: HeaderName = HeaderName::from_static("x-scoregate-quorum");
/// The replicas the sender reaches (its live peers), comma-separated.
pub static LIVE: HeaderName = HeaderName::from_static("x-scoregate-live");
/// Milliseconds since the sender took its view.
pub static VIEW_AGE_MS: HeaderName = HeaderName::from_static("x-scoregate-view-age-ms");
/// The receiver's view the sender has reported every slot for, `epoch.hash`.
pub static SYNCED: HeaderName = HeaderName::from_static("x-scoregate-synced");
/// Where every slot the sender admitted itself is held besides, `id@instance` comma-separated
/// (possibly none); absent when one is held nowhere else.
pub static OWN_SLOTS_AT: HeaderName = HeaderName::from_static("x-scoregate-own-slots-at");

/// One replica's state, as it announces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    /// The process's instance number.
    pub instance: u64,
    /// Whether it may own deployments.
    pub ready: bool,
    /// Its view.
    pub view: ViewId,
    /// Its view's members, sorted.
    pub members: Vec<Arc<str>>,
    /// Whether its view has a majority of the replicas it knows (it can act in it).
    pub quorum: bool,
    /// The replicas it reaches.
    pub live: Vec<Arc<str>>,
    /// How long it has had its view.
    pub age: Duration,
    /// The receiver's view it has reported its slots for.
    pub synced: Option<ViewId>,
    /// The replicas (with their instances) that hold the slots it admitted itself, when every
    /// one is held by another replica too ([`super::shadow`]).
    pub own_slots_at: Option<Vec<(Arc<str>, u64)>>,
}

impl Announce {
    /// Writes the state into `headers`.
    pub fn write(&self, headers: &mut HeaderMap) {
        let mut put = |name: &HeaderName, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put(&INSTANCE, self.instance.to_string());
        put(&READY, self.ready.to_string());
        put(&VIEW, self.view.encode());
        put(&MEMBERS, self.members.join(","));
        put(&QUORUM, self.quorum.to_string());
        put(&LIVE, self.live.join(","));
        put(&VIEW_AGE_MS, self.age.as_millis().to_string());
        if let Some(synced) = self.synced {
            put(&SYNCED, synced.encode());
        }
        if let Some(at) = &self.own_slots_at {
            let list: Vec<String> = at.iter().map(|(id, i)| format!("{id}@{i}")).collect();
            put(&OWN_SLOTS_AT, list.join(","));
        }
    }

    /// Reads the state from `headers`; `None` when the view is missing or malformed (a replica
    /// that speaks another version of the protocol).
    pub fn read(headers: &HeaderMap) -> Option<Announce> {
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let list = |name: &HeaderName| -> Vec<Arc<str>> {
            text(name)
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(Arc::from)
                .collect()
        };
        let mut members = list(&MEMBERS);
        members.sort();
        Some(Announce {
            instance: text(&INSTANCE)?.parse().ok()?,
            ready: text(&READY) == Some("true"),
            view: ViewId::decode(text(&VIEW)?)?,
            members,
            quorum: text(&QUORUM) == Some("true"),
            live: list(&LIVE),
            age: Duration::from_millis(text(&VIEW_AGE_MS)?.parse().ok()?),
            synced: text(&SYNCED).and_then(ViewId::decode),
            own_slots_at: text(&OWN_SLOTS_AT).map(holders),
        })
    }
}

/// `id@instance,…` read back; a malformed entry is left out.
fn holders(text: &str) -> Vec<(Arc<str>, u64)> {
    text.split(',')
        .filter_map(|entry| {
            let (id, instance) = entry.rsplit_once('@')?;
            Some((Arc::from(id), instance.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let state = Announce {
            instance: 42,
            ready: true,
            view: ViewId { epoch: 7, hash: 9 },
            members: vec!["10.0.0.1:9190".into(), "10.0.0.2:9190".into()],
            quorum: true,
            live: vec!["10.0.0.2:9190".into()],
            age: Duration::from_millis(1500),
            synced: Some(ViewId { epoch: 6, hash: 1 }),
            own_slots_at: Some(vec![
                ("10.0.0.2:9190".into(), 5),
                ("10.0.0.3:9190".into(), 6),
            ]),
        };
        let mut headers = HeaderMap::new();
        state.write(&mut headers);
        assert_eq!(Announce::read(&headers), Some(state.clone()));
        let alone = Announce {
            members: Vec::new(),
            live: Vec::new(),
            synced: None,
            own_slots_at: Some(Vec::new()),
            ..state.clone()
        };
        let mut headers = HeaderMap::new();
        alone.write(&mut headers);
        assert_eq!(Announce::read(&headers), Some(alone.clone()));
        let alone = Announce {
            own_slots_at: None,
            ..alone
        };
        let mut headers = HeaderMap::new();
        alone.write(&mut headers);
        assert_eq!(Announce::read(&headers), Some(alone));
        assert_eq!(Announce::read(&HeaderMap::new()), None);
    }
}
