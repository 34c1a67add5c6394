//! Prefix affinity: send a prompt to a pod that recently served the longest shared prefix of it
//! (whose KV cache likely still holds it), among those whose load is within a bound of the
//! least-loaded pod's; then, and for prompts seen nowhere, pick on load.
//!
//! The memory of which pods served which block hash is bounded and approximate: sharded LRU maps
//! from block hash to the [`OWNERS`] pods that served it most recently (as fingerprints of
//! their addresses), so hash collisions or evictions cost a cache miss, never a wrong answer.
//! Remembering several pods per block matters for prefixes many requests share (a system
//! prompt): every pod that holds one is a good choice for a new conversation, and the least
//! loaded of them gets it, where a single owner would pile every new conversation onto one pod.
//!
//! The choice walks the prompt's blocks from the longest prefix to the shortest; at each block
//! remembered with pods other than the previous one's, the least loaded of its pods is taken if
//! its load is at most `min + max(4, mean)` (`min` and `mean` over the pods with room:
//! consistent hashing with bounded loads in spirit). So a conversation stays on its pod while
//! that pod is not much busier than the others, moves to another pod holding its system prompt
//! when it is, and only then to the least-loaded pod. Loads are as [`super::load`] combines
//! them when the pods' metrics are scraped, the router's in-flight counts otherwise.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::load::{lowest, PodLoads};
use crate::admission::{Candidates, Pod, Policy};

/// Memory shards (independent locks), a power of two.
const SHARDS: usize = 16;
/// Pods remembered per block, most recent first.
pub const OWNERS: usize = 4;
/// Distinct sets of pods a choice looks at, at most, before falling back to load alone (each
/// look is a scan of the candidates).
const LOOKS: usize = 3;
/// Load above the least-loaded pod's that a preferred pod may always have.
const BOUND_ABSOLUTE: f64 = 4.0;
/// Load above the least-loaded pod's, as a share of the mean load, that a preferred pod may
/// have. Generous, because moving a conversation costs its whole history's prefill on the new
/// pod (stalling that pod's batch), while a few more sequences in a batch cost little until
/// the batch is full; `benches/llm` measured `max(2, mean / 2)` against `max(4, mean)` (one
/// 20 s run each: TTFT p50 29 against 27 ms, p99 170 against 88 ms).
const BOUND_RELATIVE: f64 = 1.0;

/// The pods that served a block, as address fingerprints, most recent first (0: none).
pub type Owners = [u64; OWNERS];

/// A pod's fingerprint in the memory (never 0).
pub fn fingerprint(address: SocketAddr) -> u64 {
    foldhash::quality::FixedState::with_seed(0x0a11_0ca7).hash_one(address) | 1
}

/// Which pods last served each block hash: bounded, least recently used first out.
#[derive(Debug)]
pub struct AffinityMemory {
    shards: Box<[Mutex<LruCache<u64, Owners>>]>,
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

    fn shard(&self, hash: u64) -> &Mutex<LruCache<u64, Owners>> {
        &self.shards[(hash as usize) & (SHARDS - 1)]
    }

    /// The pods that served `hash` (all 0 when none is remembered); marks it recently used.
    pub fn owners(&self, hash: u64) -> Owners {
        self.shard(hash)
            .lock()
            .get(&hash)
            .copied()
            .unwrap_or_default()
    }

    /// The longest prefix of `blocks` remembered, its length in blocks, and its pods.
    pub fn longest(&self, blocks: &[u64]) -> Option<(Owners, usize)> {
        blocks.iter().enumerate().rev().find_map(|(i, hash)| {
            let owners = self.owners(*hash);
            (owners[0] != 0).then_some((owners, i + 1))
        })
    }

    /// Remembers that the pod with fingerprint `pod` served `blocks`: it becomes their most
    /// recent pod. The leading blocks are the most recently used, so they are evicted last.
    pub fn remember(&self, blocks: &[u64], pod: u64) {
        for hash in blocks.iter().rev() {
            let mut shard = self.shard(*hash).lock();
            let owners = shard.get_or_insert_mut(*hash, Owners::default);
            let at = owners.iter().position(|o| *o == pod).unwrap_or(OWNERS - 1);
            owners.copy_within(..at, 1);
            owners[0] = pod;
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

/// Chooses a pod holding the longest prefix of the request's prompt, within a load bound.
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
        if !blocks.is_empty() {
            let limit = load_limit(candidates, &score);
            let mut looked: [Owners; LOOKS] = Default::default();
            let mut looks = 0;
            for hash in blocks.iter().rev() {
                let owners = self.memory.owners(*hash);
                if owners[0] == 0 || looked[..looks].contains(&owners) {
                    continue;
                }
                if let Some(i) = least_loaded_owner(candidates, &owners, &score, limit) {
                    return Some(i);
                }
                looked[looks] = owners;
                looks += 1;
                if looks == LOOKS {
                    break;
                }
            }
        }
        lowest(candidates, score)
    }

    /// Remembers that `pod` got the request whose prompt has `blocks`.
    pub fn served(&self, blocks: &[u64], pod: &Pod) {
        if !blocks.is_empty() {
            self.memory.remember(blocks, fingerprint(pod.address()));
        }
    }
}

/// The load a preferred pod may have: the bound over the pods with room.
fn load_limit(candidates: &Candidates<'_>, score: &impl Fn(usize) -> f64) -> f64 {
    let (mut min, mut sum, mut n) = (f64::INFINITY, 0.0, 0usize);
    for i in (0..candidates.len()).filter(|i| candidates.has_room(*i)) {
        let s = score(i);
        min = min.min(s);
        sum += s;
        n += 1;
    }
    let mean = sum / n.max(1) as f64;
    min + BOUND_ABSOLUTE.max(BOUND_RELATIVE * mean)
}

/// The candidate among `owners` with room and the lowest load, if that load is within `limit`.
fn least_loaded_owner(
    candidates: &Candidates<'_>,
    owners: &Owners,
    score: &impl Fn(usize) -> f64,
    limit: f64,
) -> Option<usize> {
    (0..candidates.len())
        .filter(|i| owners.contains(&fingerprint(candidates.pod(*i).address())))
        .filter(|i| candidates.has_room(*i))
        .map(|i| (i, score(i)))
        .filter(|(_, s)| *s <= limit)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
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
        let (a, b) = (3, 5);
        memory.remember(&[1, 2], a);
        memory.remember(&[1, 2, 3, 4], b);
        memory.remember(&[1, 5], a);
        assert_eq!(memory.longest(&[1, 2, 3, 4, 9]), Some(([b, 0, 0, 0], 4)));
        assert_eq!(memory.longest(&[1, 5, 7]), Some(([a, 0, 0, 0], 2)));
        // Block 1 was served by both, a most recently.
        assert_eq!(memory.owners(1), [a, b, 0, 0]);
        assert_eq!(memory.longest(&[8]), None);
        for i in 100..10_000 {
            memory.remember(&[i], a);
        }
        assert!(memory.len() <= 64);
    }

    #[test]
    fn a_block_keeps_its_most_recent_pods() {
        let memory = AffinityMemory::new(64);
        for pod in [3, 5, 7, 9, 11] {
            memory.remember(&[1], pod);
        }
        assert_eq!(memory.owners(1), [11, 9, 7, 5]);
        // Serving it again moves a pod to the front, without duplicates.
        memory.remember(&[1], 7);
        assert_eq!(memory.owners(1), [7, 11, 9, 5]);
        memory.remember(&[1], 7);
        assert_eq!(memory.owners(1), [7, 11, 9, 5]);
    }

    #[test]
    fn a_shared_prefix_goes_to_the_least_loaded_pod_holding_it() {
        let pods = pods(4);
        let policy = PrefixAffinity::new(1024, None);
        // A system prompt served by pods 0 and 1; pod 3 is idle but never saw it.
        let system = [21, 22];
        policy.served(&system, &pods[0]);
        policy.served(&system, &pods[1]);
        let mut held = take(&pods[0], 2);
        held.extend(take(&pods[1], 1));
        held.extend(take(&pods[2], 3));
        let candidates = Candidates::new(&pods, 8, None);
        // A new conversation with that system prompt: pod 1, the less busy holder.
        assert_eq!(policy.pick(&candidates, &[21, 22, 40]), Some(1));
        // A conversation that was on pod 0 stays there while pod 0 is within the bound …
        policy.served(&[21, 22, 50], &pods[0]);
        assert_eq!(policy.pick(&candidates, &[21, 22, 50, 51]), Some(0));
        // … and when pod 0 is far busier, moves to the other holder of its system prompt
        // rather than to the idle pod that has nothing of it.
        held.extend(take(&pods[0], 4));
        assert_eq!(policy.pick(&candidates, &[21, 22, 50, 51]), Some(1));
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
