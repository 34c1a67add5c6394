//! Prefix affinity: send a prompt to the pod that most recently served the longest shared
//! prefix of it (whose KV cache likely still holds it), unless that pod is much busier than the
//! least-loaded one; then, and for prompts seen nowhere, pick on load.
//!
//! The memory of which pod served which block hash is bounded and approximate: sharded LRU maps
//! from block hash to pod address, so hash collisions or evictions cost a cache miss, never a
//! wrong answer. The load bound is consistent hashing with bounded loads in spirit: the
//! preferred pod is kept while its load is at most `min + max(2, mean / 2)`, with `min` and
//! `mean` over the pods with room (loads as [`super::load`] combines them when the pods'
//! metrics are scraped, the router's in-flight counts otherwise).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::load::{lowest, PodLoads};
use crate::admission::{Candidates, Pod, Policy};

/// Memory shards (independent locks), a power of two.
const SHARDS: usize = 16;
/// Load above the least-loaded pod's that a preferred pod may always have.
const BOUND_ABSOLUTE: f64 = 2.0;
/// Load above the least-loaded pod's, as a share of the mean load, that a preferred pod may have.
const BOUND_RELATIVE: f64 = 0.5;

/// Which pod last served each block hash: bounded, least recently used first out.
#[derive(Debug)]
pub struct AffinityMemory {
    shards: Box<[Mutex<LruCache<u64, SocketAddr>>]>,
}

impl AffinityMemory {
    /// A memory of at most about `blocks` block hashes.
    pub fn new(blocks: usize) -> Self {
        let per_shard = NonZeroUsize::new(blocks.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        AffinityMemory {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<LruCache<u64, SocketAddr>> {
        &self.shards[(hash as usize) & (SHARDS - 1)]
    }

    /// The pod that served the longest remembered prefix of `blocks`, and its length in blocks.
    pub fn longest(&self, blocks: &[u64]) -> Option<(SocketAddr, usize)> {
        blocks
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, hash)| Some((*self.shard(*hash).lock().get(hash)?, i + 1)))
    }

    /// Remembers that `pod` served `blocks`; the leading blocks are the most recently used, so
    /// they are evicted last.
    pub fn remember(&self, blocks: &[u64], pod: SocketAddr) {
        for hash in blocks.iter().rev() {
            self.shard(*hash).lock().put(*hash, pod);
        }
    }

    /// Block hashes held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Chooses the pod holding the longest prefix of the request's prompt, within a load bound.
#[derive(Debug)]
pub struct PrefixAffinity {
    memory: AffinityMemory,
    loads: Option<Arc<PodLoads>>,
}

impl PrefixAffinity {
    /// Affinity remembering about `memory_blocks` block hashes, weighing load with `loads`
    /// when the deployment's pods are scraped (the router's in-flight counts otherwise).
    pub fn new(memory_blocks: usize, loads: Option<Arc<PodLoads>>) -> Self {
        PrefixAffinity {
            memory: AffinityMemory::new(memory_blocks),
            loads,
        }
    }

    /// The memory (for tests and metrics).
    pub fn memory(&self) -> &AffinityMemory {
        &self.memory
    }

    /// The pod for a request whose prompt has `blocks`.
    pub fn pick(&self, candidates: &Candidates<'_>, blocks: &[u64]) -> Option<usize> {
        match &self.loads {
            Some(loads) => self.pick_on(candidates, blocks, loads.scorer(candidates)),
            None => self.pick_on(candidates, blocks, |i| {
                f64::from(candidates.pod(i).in_flight())
            }),
        }
    }

    fn pick_on(
        &self,
        candidates: &Candidates<'_>,
        blocks: &[u64],
        score: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let preferred = self.memory.longest(blocks).and_then(|(address, _)| {
            (0..candidates.len())
                .find(|i| candidates.pod(*i).address() == address && candidates.has_room(*i))
        });
        if let Some(p) = preferred {
            if within_bound(candidates, &score, score(p)) {
                return Some(p);
            }
        }
        lowest(candidates, score)
    }

    /// Remembers that the pod at `pod` got the request whose prompt has `blocks`.
    pub fn served(&self, blocks: &[u64], pod: &Pod) {
        if !blocks.is_empty() {
            self.memory.remember(blocks, pod.address());
        }
    }
}

/// Whether a load of `preferred` is within the bound over the pods with room.
fn within_bound(
    candidates: &Candidates<'_>,
    score: &impl Fn(usize) -> f64,
    preferred: f64,
) -> bool {
    let (mut min, mut sum, mut n) = (f64::INFINITY, 0.0, 0usize);
    for i in (0..candidates.len()).filter(|i| candidates.has_room(*i)) {
        let s = score(i);
        min = min.min(s);
        sum += s;
        n += 1;
    }
    let mean = sum / n.max(1) as f64;
    preferred <= min + BOUND_ABSOLUTE.max(BOUND_RELATIVE * mean)
}

impl Policy for PrefixAffinity {
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize> {
        self.pick(candidates, candidates.prefix())
    }

    fn admitted(&self, candidates: &Candidates<'_>, pod: &Pod) {
        self.served(candidates.prefix(), pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picking::tests::{pods, take};

    #[test]
    fn memory_finds_the_longest_prefix_and_is_bounded() {
        let memory = AffinityMemory::new(64);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        memory.remember(&[1, 2], a);
        memory.remember(&[1, 2, 3, 4], b);
        memory.remember(&[1, 5], a);
        assert_eq!(memory.longest(&[1, 2, 3, 4, 9]), Some((b, 4)));
        assert_eq!(memory.longest(&[1, 5, 7]), Some((a, 2)));
        assert_eq!(memory.longest(&[8]), None);
        for i in 100..10_000 {
            memory.remember(&[i], a);
        }
        assert!(memory.len() <= 64);
    }

    #[test]
    fn follows_the_prefix_while_the_load_is_within_the_bound() {
        let pods = pods(4);
        let policy = PrefixAffinity::new(1024, None);
        let candidates = Candidates::new(&pods, 8, None);
        let prompt = [11, 12, 13];
        // A new prompt goes to a least-loaded pod, and is remembered there.
        let first = policy.pick(&candidates, &prompt).unwrap();
        policy.served(&prompt, &pods[first]);
        // Its next turn, longer, comes back to the same pod, even a little busier.
        let _held = take(&pods[first], 2);
        for _ in 0..20 {
            assert_eq!(policy.pick(&candidates, &[11, 12, 13, 14]), Some(first));
        }
    }

    #[test]
    fn falls_back_to_the_least_loaded_pod_when_the_preferred_one_is_saturated() {
        let pods = pods(3);
        let policy = PrefixAffinity::new(1024, None);
        let prompt = [7, 8];
        policy.served(&prompt, &pods[0]);
        // Over the bound: 5 in flight where the others have none (bound: 0 + max(2, 5/3/2)).
        let mut held = take(&pods[0], 5);
        held.extend(take(&pods[2], 1));
        let candidates = Candidates::new(&pods, 8, None);
        assert_eq!(policy.pick(&candidates, &prompt), Some(1));
        // At its cap it is never chosen, whatever the bound.
        let full = Candidates::new(&pods, 5, None);
        assert_eq!(policy.pick(&full, &prompt), Some(1));
        // Everyone equally busy: the preferred pod again.
        held.extend(take(&pods[1], 5));
        held.extend(take(&pods[2], 4));
        assert_eq!(policy.pick(&candidates, &prompt), Some(0));
    }
}
