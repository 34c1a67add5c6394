//! The simulated pod's prefix cache: which token blocks of earlier prompts (and their
//! completions) it still holds, as chained block hashes in a bounded LRU, like vLLM's automatic
//! prefix caching.

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroUsize;

use lru::LruCache;

/// Bytes per simulated token (a rough English average for BPE tokenizers).
pub const BYTES_PER_TOKEN: usize = 4;

/// The hashes of the full blocks of `text`, each chained to the one before, so that equal hashes
/// at position `k` mean equal text up to the end of block `k`.
pub fn block_hashes(text: &[u8], block_tokens: usize) -> Vec<u64> {
    let block_bytes = (block_tokens * BYTES_PER_TOKEN).max(1);
    let state = foldhash::quality::FixedState::with_seed(0x5eed);
    let mut previous = 0u64;
    text.chunks_exact(block_bytes)
        .map(|block| {
            let mut hasher = state.build_hasher();
            hasher.write_u64(previous);
            hasher.write(block);
            previous = hasher.finish();
            previous
        })
        .collect()
}

/// A bounded LRU set of cached block hashes.
pub struct PrefixCache {
    blocks: LruCache<u64, ()>,
}

impl PrefixCache {
    /// A cache holding at most `capacity` blocks (at least one).
    pub fn new(capacity: usize) -> Self {
        PrefixCache {
            blocks: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// How many leading blocks of `hashes` are cached; marks them recently used.
    pub fn matched(&mut self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.blocks.get(*h).is_some())
            .count()
    }

    /// Caches `hashes` (evicting the least recently used blocks beyond the capacity).
    pub fn insert(&mut self, hashes: &[u64]) {
        for hash in hashes {
            self.blocks.put(*hash, ());
        }
    }

    /// Blocks held now.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_hashes_match_only_shared_prefixes() {
        let a = block_hashes(&[b'a'; 200], 16);
        let mut text = vec![b'a'; 128];
        text.extend_from_slice(&[b'b'; 72]);
        let b = block_hashes(&text, 16);
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
    }

    #[test]
    fn cache_is_bounded_and_least_recently_used_goes_first() {
        let mut cache = PrefixCache::new(4);
        cache.insert(&[1, 2, 3]);
        assert_eq!(cache.matched(&[1, 2, 3, 4]), 3);
        cache.insert(&[7, 8]);
        assert_eq!(cache.len(), 4);
        // 1 was evicted (the least recently used); the match stops at the first missing block.
        assert_eq!(cache.matched(&[1, 2, 3]), 0);
        assert_eq!(cache.matched(&[2, 3]), 2);
    }
}
