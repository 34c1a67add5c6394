//! Which EndpointSlices are watched: only those of the Services that OnlineDeployments name.
//!
//! The set of Services changes as deployments come and go, and a label selector is fixed for the
//! life of a watch, so the Services of a scope are packed into **shards**: each shard is one
//! watch with the selector `kubernetes.io/service-name in (s1,s2,…)`. A shard holds Services until
//! its selector reaches [`MAX_SELECTOR_BYTES`] (about 4 KB, comfortably inside every API server's
//! and proxy's request-line limits) or [`MAX_SERVICES_PER_SHARD`] names. A new Service joins the
//! last shard that has room; only that shard's watch restarts (relisting at most one shard's
//! slices, while the slices already known keep routing until the new list is complete). A Service
//! no longer named is dropped from its shard the same way; an emptied shard's watch stops.
//!
//! At 3,000 Services with 20-character names this is about 16 watches (about 48 with 63-character
//! names); kube's client speaks HTTP/1.1, so each watch is one connection. The alternatives were
//! worse: one watch per Service (3,000 connections), one selector with every name (a 190 KB URL,
//! and every new deployment relists everything), or all slices of the namespace (every unrelated
//! pod's churn streamed to every router).
//!
//! In the all-namespaces scope a shard selects by Service name across namespaces; slices of a
//! same-named Service in a namespace no deployment uses are ignored on arrival.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kube::Client;
use tokio::time::Instant;

use super::resources::{spawn_slices, Kind, Scope, Sender, WatchId};
use crate::k8s::{Health, WatchTask};

/// Most bytes of Service names (plus separators) in one shard's selector.
pub const MAX_SELECTOR_BYTES: usize = 4_000;
/// Most Services in one shard.
pub const MAX_SERVICES_PER_SHARD: usize = 200;

/// One shard: its Services (name → namespaces using it) and its running watch.
#[derive(Default)]
struct Shard {
    services: BTreeMap<String, BTreeSet<String>>,
    bytes: usize,
    generation: u64,
    task: Option<WatchTask>,
    /// When the current watch completed its first list.
    listed_at: Option<Instant>,
    /// The Services changed since the watch started: restart it.
    dirty: bool,
}

impl Shard {
    fn has_room_for(&self, name: &str) -> bool {
        self.services.len() < MAX_SERVICES_PER_SHARD && self.bytes + name.len() < MAX_SELECTOR_BYTES
    }
}

/// The shards of every scope.
#[derive(Default)]
pub struct SliceShards {
    scopes: HashMap<Scope, Vec<Shard>>,
    /// (scope, Service name) → shard index.
    placement: HashMap<(Scope, String), usize>,
}

impl SliceShards {
    /// Starts selecting the slices of Service `name` in namespace `ns` (watched through `scope`).
    pub fn add(&mut self, scope: &Scope, ns: &str, name: &str) {
        let shards = self.scopes.entry(scope.clone()).or_default();
        let index = match self.placement.get(&(scope.clone(), name.to_string())) {
            Some(index) => *index,
            None => {
                let index = match shards.iter().rposition(|s| s.has_room_for(name)) {
                    Some(i) => i,
                    None => {
                        shards.push(Shard::default());
                        shards.len() - 1
                    }
                };
                self.placement
                    .insert((scope.clone(), name.to_string()), index);
                index
            }
        };
        let shard = &mut shards[index];
        let namespaces = shard.services.entry(name.to_string()).or_insert_with(|| {
            shard.dirty = true;
            BTreeSet::new()
        });
        if namespaces.is_empty() {
            shard.bytes += name.len() + 1;
        }
        namespaces.insert(ns.to_string());
    }

    /// Stops selecting the slices of Service `name` in namespace `ns`.
    pub fn remove(&mut self, scope: &Scope, ns: &str, name: &str) {
        let place = (scope.clone(), name.to_string());
        let Some(index) = self.placement.get(&place).copied() else {
            return;
        };
        let Some(shard) = self.scopes.get_mut(scope).and_then(|s| s.get_mut(index)) else {
            return;
        };
        if let Some(namespaces) = shard.services.get_mut(name) {
            namespaces.remove(ns);
            if namespaces.is_empty() {
                shard.services.remove(name);
                shard.bytes -= name.len() + 1;
                shard.dirty = true;
                self.placement.remove(&place);
            }
        }
    }

    /// Restarts the watch of every shard whose Services changed (a new generation) and stops
    /// those left empty. Returns the watches started and the shards whose watch stopped.
    pub fn apply(
        &mut self,
        client: &Client,
        tx: &Sender,
        health: &Health,
    ) -> (Vec<WatchId>, Vec<WatchId>) {
        let mut started = Vec::new();
        let mut stopped = Vec::new();
        for (scope, shards) in &mut self.scopes {
            for (index, shard) in shards.iter_mut().enumerate() {
                if !shard.dirty {
                    continue;
                }
                shard.dirty = false;
                shard.task = None; // stops the watch
                shard.listed_at = None;
                shard.generation += 1;
                let id = WatchId {
                    kind: Kind::Slices,
                    scope: scope.clone(),
                    shard: index,
                    generation: shard.generation,
                };
                if shard.services.is_empty() {
                    stopped.push(id);
                    continue;
                }
                shard.task = Some(spawn_slices(
                    client,
                    id.clone(),
                    shard.services.keys().map(String::as_str),
                    tx.clone(),
                    health,
                ));
                started.push(id);
            }
        }
        (started, stopped)
    }

    /// The current watch `id` of a shard has completed a list (the first one counts).
    pub fn listed(&mut self, id: &WatchId) {
        if !self.is_current(id) {
            return;
        }
        if let Some(shard) = self
            .scopes
            .get_mut(&id.scope)
            .and_then(|s| s.get_mut(id.shard))
        {
            shard.listed_at.get_or_insert_with(Instant::now);
        }
    }

    /// When the watch selecting the slices of Service `name` completed its first list, if it has.
    pub fn listed_at(&self, scope: &Scope, name: &str) -> Option<Instant> {
        let index = self.placement.get(&(scope.clone(), name.to_string()))?;
        self.shard(scope, *index).and_then(|s| s.listed_at)
    }

    /// Whether `id` is the current watch of its shard (messages from replaced ones are ignored).
    pub fn is_current(&self, id: &WatchId) -> bool {
        self.shard(&id.scope, id.shard)
            .is_some_and(|s| s.generation == id.generation && s.task.is_some())
    }

    /// Whether the slices of Service `name` in `ns` are selected.
    pub fn selects(&self, scope: &Scope, ns: &str, name: &str) -> bool {
        self.placement
            .get(&(scope.clone(), name.to_string()))
            .and_then(|index| self.shard(scope, *index))
            .and_then(|shard| shard.services.get(name))
            .is_some_and(|namespaces| namespaces.contains(ns))
    }

    /// The shard index Service `name` is in.
    pub fn shard_of(&self, scope: &Scope, name: &str) -> Option<usize> {
        self.placement
            .get(&(scope.clone(), name.to_string()))
            .copied()
    }

    /// The running watches, for the readiness check.
    pub fn running(&self) -> Vec<WatchId> {
        let mut ids = Vec::new();
        for (scope, shards) in &self.scopes {
            for (index, shard) in shards.iter().enumerate() {
                if shard.task.is_some() {
                    ids.push(WatchId {
                        kind: Kind::Slices,
                        scope: scope.clone(),
                        shard: index,
                        generation: shard.generation,
                    });
                }
            }
        }
        ids
    }

    /// How many shard watches run (for logs and the scale report).
    pub fn watch_count(&self) -> usize {
        self.scopes
            .values()
            .flatten()
            .filter(|s| s.task.is_some())
            .count()
    }

    fn shard(&self, scope: &Scope, index: usize) -> Option<&Shard> {
        self.scopes.get(scope).and_then(|s| s.get(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_pack_into_bounded_shards() {
        let mut shards = SliceShards::default();
        let scope = Some("ns".to_string());
        for i in 0..3_000 {
            shards.add(&scope, "ns", &format!("service-with-a-name-{i:04}"));
        }
        let list = &shards.scopes[&scope];
        assert!(list.len() > 1);
        for shard in list {
            let selector =
                super::super::resources::slice_selector(shard.services.keys().map(String::as_str));
            assert!(
                selector.len() <= MAX_SELECTOR_BYTES + 64,
                "{}",
                selector.len()
            );
            assert!(shard.services.len() <= MAX_SERVICES_PER_SHARD);
        }
        assert!(shards.selects(&scope, "ns", "service-with-a-name-0042"));
        assert!(!shards.selects(&scope, "other", "service-with-a-name-0042"));

        // Removing one Service dirties only its shard.
        for shard in shards.scopes.get_mut(&scope).unwrap() {
            shard.dirty = false;
        }
        let index = shards.shard_of(&scope, "service-with-a-name-0042").unwrap();
        shards.remove(&scope, "ns", "service-with-a-name-0042");
        let dirty: Vec<usize> = shards.scopes[&scope]
            .iter()
            .enumerate()
            .filter(|(_, s)| s.dirty)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(dirty, [index]);
        assert!(!shards.selects(&scope, "ns", "service-with-a-name-0042"));

        // A new Service reuses the freed room rather than disturbing a full shard... or goes last.
        shards.add(&scope, "ns", "fresh");
        assert!(shards.selects(&scope, "ns", "fresh"));
    }

    #[test]
    fn a_name_shared_by_namespaces_stays_until_the_last_goes() {
        let mut shards = SliceShards::default();
        shards.add(&None, "a", "svc");
        shards.add(&None, "b", "svc");
        shards.remove(&None, "a", "svc");
        assert!(shards.selects(&None, "b", "svc"));
        assert!(!shards.selects(&None, "a", "svc"));
        shards.remove(&None, "b", "svc");
        assert!(shards.shard_of(&None, "svc").is_none());
    }
}
