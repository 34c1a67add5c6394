//! The view: the members this replica agrees to coordinate with, identified by an epoch that
//! only grows and a hash of the members, and who owns each deployment in it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::peers::Peer;
use super::ring;
use super::view_id::{members_hash, ViewId};

/// The members at one epoch, as this replica sees them.
pub struct View {
    id: ViewId,
    /// Identities, sorted.
    members: Box<[Arc<str>]>,
    /// Live peers by identity (this replica excluded), members or not.
    peers: HashMap<Arc<str>, Arc<Peer>>,
    me: Arc<str>,
    me_member: bool,
    /// Whether the members are a majority of the replicas known.
    quorum: bool,
    /// When this replica took this view.
    installed: Instant,
}

/// Who owns a deployment in a view.
pub enum Owner<'a> {
    /// This replica.
    Me,
    /// Another live replica.
    Peer(&'a Arc<Peer>),
    /// Nobody (no members, or the owner is not a live peer).
    Nobody,
}

impl View {
    /// The view at `epoch` with `members` (sorted), `live` peers and whether the members are a
    /// majority of the replicas known.
    pub fn new(
        me: Arc<str>,
        epoch: u64,
        members: Vec<Arc<str>>,
        live: &[Arc<Peer>],
        quorum: bool,
    ) -> Self {
        let me_member = members.contains(&me);
        View {
            id: ViewId {
                epoch,
                hash: members_hash(&members),
            },
            members: members.into_boxed_slice(),
            peers: live.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            me,
            me_member,
            quorum,
            installed: Instant::now(),
        }
    }

    /// The view a replica starts with: no members, epoch 0.
    pub fn empty(me: Arc<str>) -> Self {
        View::new(me, 0, Vec::new(), &[], false)
    }

    /// The same members and peers at another epoch (taken from a peer), installed now.
    pub fn at_epoch(&self, epoch: u64) -> Self {
        View {
            id: ViewId {
                epoch,
                hash: self.id.hash,
            },
            members: self.members.clone(),
            peers: self.peers.clone(),
            me: self.me.clone(),
            me_member: self.me_member,
            quorum: self.quorum,
            installed: Instant::now(),
        }
    }

    /// The same view (id, members, install time) with the current live peers and majority.
    pub fn refreshed(&self, live: &[Arc<Peer>], quorum: bool) -> Self {
        View {
            id: self.id,
            members: self.members.clone(),
            peers: live.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            me: self.me.clone(),
            me_member: self.me_member,
            quorum,
            installed: self.installed,
        }
    }

    /// Whether `live` are exactly the live peers this view knows.
    pub fn same_peers(&self, live: &[Arc<Peer>]) -> bool {
        live.len() == self.peers.len()
            && live
                .iter()
                .all(|p| self.peers.get(&p.id).is_some_and(|q| Arc::ptr_eq(p, q)))
    }

    /// Its identity.
    pub fn id(&self) -> ViewId {
        self.id
    }

    /// When this replica took it.
    pub fn installed(&self) -> Instant {
        self.installed
    }

    /// Whether this replica is a member.
    pub fn me_member(&self) -> bool {
        self.me_member
    }

    /// Whether the members are a majority of the replicas known.
    pub fn has_quorum(&self) -> bool {
        self.quorum
    }

    /// The owner of `endpoint/deployment`.
    pub fn owner(&self, endpoint: &str, deployment: &str) -> Owner<'_> {
        match ring::owner(&self.members, endpoint, deployment) {
            None => Owner::Nobody,
            Some(i) if self.members[i] == self.me => Owner::Me,
            Some(i) => self
                .peers
                .get(&self.members[i])
                .map_or(Owner::Nobody, Owner::Peer),
        }
    }

    /// The owner's identity, `None` for nobody.
    pub fn owner_id(&self, endpoint: &str, deployment: &str) -> Option<&Arc<str>> {
        ring::owner(&self.members, endpoint, deployment).map(|i| &self.members[i])
    }

    /// Every member's identity, sorted.
    pub fn members(&self) -> &[Arc<str>] {
        &self.members
    }

    /// Live peers (this replica excluded).
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// The live peer called `id`.
    pub fn peer(&self, id: &str) -> Option<&Arc<Peer>> {
        self.peers.get(id)
    }

    /// Whether the view has exactly `members`.
    pub fn same_members(&self, members: &[Arc<str>]) -> bool {
        *self.members == *members
    }
}

/// The owner of `endpoint/deployment` among `members` (sorted), by identity.
pub fn owner_among<'a>(
    members: &'a [Arc<str>],
    endpoint: &str,
    deployment: &str,
) -> Option<&'a Arc<str>> {
    ring::owner(members, endpoint, deployment).map(|i| &members[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::<str>::from(*s)).collect()
    }

    #[test]
    fn alone_it_owns_everything_and_without_members_nobody_does() {
        let me: Arc<str> = "10.0.0.1:9190".into();
        let alone = View::new(me.clone(), 1, ids(&["10.0.0.1:9190"]), &[], true);
        assert!(matches!(alone.owner("credit", "blue"), Owner::Me));
        assert!(alone.me_member());
        let draining = View::empty(me);
        assert!(matches!(draining.owner("credit", "blue"), Owner::Nobody));
        assert_ne!(alone.id(), draining.id());
    }

    #[test]
    fn the_id_is_the_epoch_and_the_members() {
        let a = View::new("a".into(), 3, ids(&["a", "b"]), &[], true);
        let b = View::new("b".into(), 3, ids(&["a", "b"]), &[], true);
        assert_eq!(a.id(), b.id(), "two replicas with the same members agree");
        assert_ne!(a.id(), a.at_epoch(4).id());
        assert_eq!(a.id().hash, a.at_epoch(4).id().hash);
        let text = a.id().encode();
        assert_eq!(ViewId::decode(&text), Some(a.id()));
        assert_eq!(ViewId::decode("x.1"), None);
        assert_eq!(ViewId::decode("3"), None);
    }
}
