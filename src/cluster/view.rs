//! Which replicas are live, as every replica computes it, and who owns each deployment.

use std::collections::HashMap;
use std::sync::Arc;

use super::peers::Peer;
use super::ring;

/// The live replicas at one moment, this one included unless it is draining.
pub struct View {
    /// Identities, sorted.
    members: Box<[Arc<str>]>,
    /// Live peers by identity (this replica excluded).
    peers: HashMap<Arc<str>, Arc<Peer>>,
    /// Whether this replica is a member.
    me_member: bool,
    me: Arc<str>,
    hash: u64,
}

/// Who owns a deployment in a view.
pub enum Owner<'a> {
    /// This replica.
    Me,
    /// Another live replica.
    Peer(&'a Arc<Peer>),
    /// Nobody (this replica is draining and no peer is live).
    Nobody,
}

impl View {
    /// The view with `me` (unless draining) and the given live peers.
    pub fn new(me: Arc<str>, me_member: bool, live: Vec<Arc<Peer>>) -> Self {
        let mut members: Vec<Arc<str>> = live.iter().map(|p| p.id.clone()).collect();
        if me_member {
            members.push(me.clone());
        }
        members.sort();
        members.dedup();
        let hash = members.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, m| {
            m.as_bytes().iter().chain([0u8].iter()).fold(h, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        });
        View {
            members: members.into_boxed_slice(),
            peers: live.into_iter().map(|p| (p.id.clone(), p)).collect(),
            me_member,
            me,
            hash,
        }
    }

    /// The owner of `endpoint/deployment`.
    pub fn owner(&self, endpoint: &str, deployment: &str) -> Owner<'_> {
        if self.members.len() == 1 && self.me_member {
            return Owner::Me;
        }
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

    /// A hash of the member list: two replicas with the same hash agree on every owner.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Whether `other` has the same members.
    pub fn same_members(&self, other: &View) -> bool {
        self.members == other.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_it_owns_everything_and_draining_alone_nobody_does() {
        let me: Arc<str> = "10.0.0.1:9190".into();
        let alone = View::new(me.clone(), true, Vec::new());
        assert!(matches!(alone.owner("credit", "blue"), Owner::Me));
        assert_eq!(alone.members().len(), 1);
        let draining = View::new(me, false, Vec::new());
        assert!(matches!(draining.owner("credit", "blue"), Owner::Nobody));
        assert!(draining.members().is_empty());
        assert_ne!(alone.hash(), draining.hash());
    }

    #[test]
    fn the_hash_depends_on_the_members_only() {
        let peer = |a: &str| Peer::new(a.parse().unwrap());
        let a = View::new("10.0.0.1:9190".into(), true, vec![peer("10.0.0.2:9190")]);
        let b = View::new("10.0.0.2:9190".into(), true, vec![peer("10.0.0.1:9190")]);
        assert!(a.same_members(&b));
        assert_eq!(
            a.hash(),
            b.hash(),
            "two replicas with the same members agree"
        );
    }
}
