//! Rendezvous (highest-random-weight) hashing: every replica that sees the same live peers picks
//! the same owner for a deployment, without a vote, and a peer joining or leaving moves only the
//! deployments it wins or held.

/// A stable 64-bit hash of `peer` and the deployment key `endpoint/deployment` (FNV-1a, then a
/// splitmix64 finaliser so that similar peer names spread well). Stable across processes,
/// builds and platforms; hashes the key's parts without joining them.
pub fn weight(peer: &str, endpoint: &str, deployment: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = peer
        .as_bytes()
        .iter()
        .chain([0xff].iter())
        .chain(endpoint.as_bytes())
        .chain(b"/".iter())
        .chain(deployment.as_bytes());
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The index of the peer in `peers` that owns `endpoint/deployment`: the highest weight, ties
/// broken by name. `None` when `peers` is empty.
pub fn owner<S: AsRef<str>>(peers: &[S], endpoint: &str, deployment: &str) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (i, peer) in peers.iter().enumerate() {
        let w = weight(peer.as_ref(), endpoint, deployment);
        let wins = match best {
            None => true,
            Some((j, bw)) => w > bw || (w == bw && peer.as_ref() > peers[j].as_ref()),
        };
        if wins {
            best = Some((i, w));
        }
    }
    best.map(|(i, _)| i)
}

/// The index of the peer in `peers` that would own `endpoint/deployment` were `me` not among
/// them: the owner once `me` leaves. `None` when no other peer is there.
pub fn successor<S: AsRef<str>>(
    peers: &[S],
    me: &str,
    endpoint: &str,
    deployment: &str,
) -> Option<usize> {
    let others: Vec<(usize, &str)> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.as_ref()))
        .filter(|(_, p)| *p != me)
        .collect();
    let names: Vec<&str> = others.iter().map(|(_, p)| *p).collect();
    owner(&names, endpoint, deployment).map(|i| others[i].0)
}

/// Whether `a` wins `endpoint/deployment` over `b` (as [`owner`] decides between the two).
pub fn beats(a: &str, b: &str, endpoint: &str, deployment: &str) -> bool {
    let (wa, wb) = (
        weight(a, endpoint, deployment),
        weight(b, endpoint, deployment),
    );
    wa > wb || (wa == wb && a > b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_of_the_peers_picks_the_same_owner() {
        let peers = ["10.0.0.1:9190", "10.0.0.2:9190", "10.0.0.3:9190"];
        for (e, d) in [
            ("a", "blue"),
            ("a", "green"),
            ("b", "blue"),
            ("credit", "v7"),
        ] {
            let first = peers[owner(&peers, e, d).unwrap()];
            let reversed: Vec<&str> = peers.iter().rev().copied().collect();
            assert_eq!(reversed[owner(&reversed, e, d).unwrap()], first);
        }
    }

    #[test]
    fn a_leaving_peer_moves_only_the_keys_it_owned() {
        let all = ["p1", "p2", "p3", "p4"];
        let keys: Vec<String> = (0..1000).map(|i| format!("endpoint-{i}")).collect();
        let without_p3 = ["p1", "p2", "p4"];
        let mut moved = 0;
        for key in &keys {
            let before = all[owner(&all, key, "blue").unwrap()];
            let after = without_p3[owner(&without_p3, key, "blue").unwrap()];
            if before != "p3" {
                assert_eq!(before, after, "{key} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(
            (150..350).contains(&moved),
            "p3 owned {moved} of 1000 keys; a fair share is about 250"
        );
    }

    #[test]
    fn the_successor_is_the_owner_once_this_peer_left() {
        let all = ["p1", "p2", "p3", "p4"];
        for i in 0..200 {
            let key = format!("endpoint-{i}");
            let owner = all[owner(&all, &key, "blue").unwrap()];
            let next = all[successor(&all, owner, &key, "blue").unwrap()];
            let without: Vec<&str> = all.iter().copied().filter(|p| *p != owner).collect();
            assert_eq!(next, without[self::owner(&without, &key, "blue").unwrap()]);
            assert_ne!(next, owner);
        }
        assert_eq!(successor(&["p1"], "p1", "e", "d"), None);
    }

    #[test]
    fn no_peers_no_owner() {
        let none: [&str; 0] = [];
        assert_eq!(owner(&none, "a", "b"), None);
    }

    const PINNED: u64 = 1_471_447_450_872_091_805;

    #[test]
    fn the_weight_is_stable() {
        // Replicas built from different commits must still agree: pin the function.
        assert_eq!(weight("10.0.0.1:9190", "credit", "blue"), PINNED);
        assert_ne!(weight("p1", "e", "d"), weight("p2", "e", "d"));
        assert_ne!(weight("p", "e", "d1"), weight("p", "e", "d2"));
        assert_ne!(weight("p", "ab", "c"), weight("p", "a", "bc"));
    }
}
