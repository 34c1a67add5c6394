//! Who is in the view: from the replicas each one reports it can reach, the largest group of
//! replicas that all reach each other, chosen the same way by every replica that knows the same
//! links; and whether that group is a majority of the replicas there are.
//!
//! A replica sees directly only its own links. Every hello carries the sender's list of live
//! peers, so a replica also knows the links among its live peers. A link counts only when both
//! of its ends report it: a replica that one side can reach and the other cannot is left out.
//!
//! The group is built greedily: candidates sorted by how many other candidates they reach (most
//! first), ties by identity; each joins if it reaches every replica already in. When the links
//! between two replicas are cut while a third reaches both (a partial partition), every replica
//! that sees the third one's reports computes the same group, which leaves one of the two out;
//! that one finds its view different from its peers' and stops admitting as an owner.

use std::collections::HashSet;
use std::sync::Arc;

/// One replica this replica can reach, and the replicas it says it reaches.
#[derive(Clone, Copy, Debug)]
pub struct Reach<'a> {
    /// Its identity.
    pub id: &'a str,
    /// The replicas it reports live.
    pub live: &'a [Arc<str>],
}

/// The members of the view: `me` (when it may be a member: routes loaded, not draining) and the
/// live `peers` that, with it, all reach each other. Sorted by identity.
pub fn members(me: &str, me_eligible: bool, peers: &[Reach<'_>]) -> Vec<Arc<str>> {
    let mut candidates: Vec<&str> = peers.iter().map(|p| p.id).collect();
    if me_eligible {
        candidates.push(me);
    }
    let live_of =
        |id: &str| -> Option<&[Arc<str>]> { peers.iter().find(|p| p.id == id).map(|p| p.live) };
    let reports = |from: &str, to: &str| -> bool {
        if from == me {
            // This replica's own live set: every peer passed in.
            return peers.iter().any(|p| p.id == to);
        }
        live_of(from).is_some_and(|live| live.iter().any(|l| &**l == to))
    };
    let linked = |a: &str, b: &str| reports(a, b) && reports(b, a);
    let degree = |a: &str| {
        candidates
            .iter()
            .filter(|b| **b != a && linked(a, b))
            .count()
    };
    let mut order: Vec<(usize, &str)> = candidates.iter().map(|c| (degree(c), *c)).collect();
    order.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(y.1)));
    let mut group: Vec<&str> = Vec::new();
    for (_, candidate) in order {
        if group.iter().all(|m| linked(m, candidate)) {
            group.push(candidate);
        }
    }
    let mut members: Vec<Arc<str>> = group.into_iter().map(Arc::from).collect();
    members.sort();
    members
}

/// The number of members a view needs to act: a majority of the replicas known (the configured
/// list, or the router Service's replicas, and this one).
pub fn majority(known: usize) -> usize {
    known.max(1) / 2 + 1
}

/// The replicas known: `listed` and `me`, counted once.
pub fn known<'a>(me: &'a str, listed: impl IntoIterator<Item = &'a str>) -> usize {
    let mut all: HashSet<&str> = listed.into_iter().collect();
    all.insert(me);
    all.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::<str>::from(*s)).collect()
    }

    /// The view `me` computes when each of `links` (pairs that reach each other) is up.
    fn view_of(me: &str, all: &[&str], links: &[(&str, &str)]) -> Vec<String> {
        let up = |a: &str, b: &str| links.iter().any(|l| *l == (a, b) || *l == (b, a));
        let lives: Vec<(String, Vec<Arc<str>>)> = all
            .iter()
            .filter(|p| **p != me && up(me, p))
            .map(|p| {
                let live: Vec<&str> = all.iter().copied().filter(|q| up(p, q)).collect();
                (p.to_string(), ids(&live))
            })
            .collect();
        let reach: Vec<Reach<'_>> = lives.iter().map(|(id, live)| Reach { id, live }).collect();
        members(me, true, &reach)
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    #[test]
    fn everyone_linked_is_a_member() {
        let all = ["a", "b", "c"];
        let links = [("a", "b"), ("b", "c"), ("a", "c")];
        for me in all {
            assert_eq!(view_of(me, &all, &links), ["a", "b", "c"]);
        }
    }

    #[test]
    fn a_partial_partition_leaves_one_side_out_and_the_others_agree() {
        // b and c cannot reach each other; a reaches both.
        let all = ["a", "b", "c"];
        let links = [("a", "b"), ("a", "c")];
        let a = view_of("a", &all, &links);
        let b = view_of("b", &all, &links);
        let c = view_of("c", &all, &links);
        assert_eq!(a, ["a", "b"], "a keeps the first of the two by name");
        assert_eq!(b, a, "b agrees with a");
        assert_ne!(c, a, "c is left out, and sees that its view differs");
    }

    #[test]
    fn a_link_only_one_side_reports_does_not_count() {
        // b lists a as live, a does not list b (its connection to b is down).
        let a_live = ids(&["c"]);
        let b_live = ids(&["a", "c"]);
        let peers = [
            Reach {
                id: "b",
                live: &b_live,
            },
            Reach {
                id: "a",
                live: &a_live,
            },
        ];
        let view = members("c", true, &peers);
        assert_eq!(view.len(), 2, "{view:?}");
        assert!(view.iter().any(|m| &**m == "c"));
    }

    #[test]
    fn a_draining_replica_is_not_a_member_but_sees_the_others() {
        let live = ids(&["b"]);
        let live_b = ids(&["a"]);
        let peers = [
            Reach {
                id: "a",
                live: &live,
            },
            Reach {
                id: "b",
                live: &live_b,
            },
        ];
        assert_eq!(members("me", false, &peers), ids(&["a", "b"]));
    }

    #[test]
    fn majorities() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(known("a", ["a", "b", "c"]), 3);
        assert_eq!(known("d", ["a", "b"]), 3);
    }
}
