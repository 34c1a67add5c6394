//! The simulated inference engine: continuous batching of sequences, each paying a prefill for
//! its prompt tokens that are not in the prefix cache and then one decode step per output token.
//!
//! One task runs the engine in steps. Before a step, waiting sequences join the batch up to its
//! limit; the step lasts one decode interval plus the prefill of every sequence that joined
//! (prefill is not chunked, so a long uncached prompt delays the whole batch, as in vLLM without
//! chunked prefill); after it, every sequence in the batch has one more token. All times are
//! multiplied by the engine's slowdown factor, so a benchmark can make one pod slower.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use super::cache::{block_hashes, PrefixCache, BYTES_PER_TOKEN};
use super::histogram::Histogram;

/// How fast the simulated model is and how much it holds.
#[derive(Clone, Debug)]
pub struct LlmProfile {
    /// Prefill time per prompt token not found in the prefix cache.
    pub prefill_per_token: Duration,
    /// Time of one decode step (one token for every sequence in the batch).
    pub decode_step: Duration,
    /// Sequences decoded together at most (vLLM's `max_num_seqs`).
    pub max_batch: usize,
    /// Tokens per cached block.
    pub block_tokens: usize,
    /// Blocks the prefix cache holds at most.
    pub cache_blocks: usize,
    /// Tokens of KV cache the batch may use (for the reported KV-cache usage).
    pub kv_tokens: usize,
}

impl Default for LlmProfile {
    /// A small model on one GPU, scaled down in time: 0.1 ms per prefill token, 10 ms per
    /// decode step, batches of 16, 16-token blocks, 4,096 cached blocks, 64 Ki KV tokens.
    fn default() -> Self {
        LlmProfile {
            prefill_per_token: Duration::from_micros(100),
            decode_step: Duration::from_millis(10),
            max_batch: 16,
            block_tokens: 16,
            cache_blocks: 4096,
            kv_tokens: 64 * 1024,
        }
    }
}

/// One request for the engine: the prompt as text, and how many tokens to produce.
#[derive(Debug)]
pub struct Job {
    /// The prompt as the model sees it.
    pub prompt: Vec<u8>,
    /// Tokens to generate (at least one).
    pub max_tokens: u32,
    /// Where generated tokens go; the job ends early when the receiver is dropped.
    pub tokens: mpsc::UnboundedSender<String>,
}

/// Counts the pod reports on `/metrics` and to tests.
#[derive(Debug, Default)]
pub struct EngineStats {
    running: AtomicU32,
    waiting: AtomicU32,
    kv_used_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    finished: AtomicU64,
    first_token: Histogram,
    token_gap: Histogram,
}

impl EngineStats {
    /// Sequences in the batch now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }

    /// Sequences waiting for a place in the batch.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// KV-cache tokens the batch uses now.
    pub fn kv_used_tokens(&self) -> u64 {
        self.kv_used_tokens.load(Ordering::Relaxed)
    }

    /// Prompt tokens received, since start.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens.load(Ordering::Relaxed)
    }

    /// Prompt tokens found in the prefix cache (not prefilled), since start.
    pub fn cached_tokens(&self) -> u64 {
        self.cached_tokens.load(Ordering::Relaxed)
    }

    /// Tokens generated, since start.
    pub fn generated_tokens(&self) -> u64 {
        self.generated_tokens.load(Ordering::Relaxed)
    }

    /// Sequences finished (or abandoned by their client), since start.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// Time from a job's submission to its first token, seconds (vLLM's
    /// `time_to_first_token_seconds`).
    pub fn first_token(&self) -> &Histogram {
        &self.first_token
    }

    /// Time between two tokens of a sequence, seconds (vLLM's `time_per_output_token_seconds`).
    pub fn token_gap(&self) -> &Histogram {
        &self.token_gap
    }
}

/// The handle requests submit jobs through.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    profile: LlmProfile,
    stats: EngineStats,
    waiting: Mutex<VecDeque<(Instant, Job)>>,
    wake: Notify,
    /// The slowdown factor as `f64` bits.
    slowdown: AtomicU64,
}

/// A sequence in the batch.
struct Sequence {
    job: Job,
    /// Prompt text plus generated text, for caching the completion's blocks when it ends.
    text: Vec<u8>,
    prompt_tokens: usize,
    generated: u32,
    submitted: Instant,
}

impl Engine {
    /// Starts an engine task with `profile`; it ends when the last handle is dropped.
    pub fn start(profile: LlmProfile) -> Engine {
        let inner = Arc::new(Shared {
            profile,
            stats: EngineStats::default(),
            waiting: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            slowdown: AtomicU64::new(1f64.to_bits()),
        });
        tokio::spawn(run(Arc::downgrade(&inner)));
        Engine { inner }
    }

    /// Queues a job; its tokens arrive on the job's channel.
    pub fn submit(&self, job: Job) {
        self.inner.waiting.lock().push_back((Instant::now(), job));
        self.inner.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// The engine's counts.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// The engine's profile.
    pub fn profile(&self) -> &LlmProfile {
        &self.inner.profile
    }

    /// KV-cache usage now, 0 to 1.
    pub fn kv_usage(&self) -> f64 {
        let used = self.inner.stats.kv_used_tokens() as f64;
        (used / self.inner.profile.kv_tokens.max(1) as f64).min(1.0)
    }

    /// Makes every step `factor` times longer (1 is normal speed).
    pub fn set_slowdown(&self, factor: f64) {
        self.inner
            .slowdown
            .store(factor.max(0.0).to_bits(), Ordering::Relaxed);
    }
}

/// The engine loop; holds only a weak reference between steps so dropping the last handle ends it.
async fn run(shared: std::sync::Weak<Shared>) {
    let mut cache: Option<PrefixCache> = None;
    let mut batch: Vec<Sequence> = Vec::new();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let cache = cache.get_or_insert_with(|| PrefixCache::new(shared.profile.cache_blocks));
        let prefill_tokens = admit(&shared, cache, &mut batch);
        if batch.is_empty() {
            let woken = shared.wake.notified();
            if shared.waiting.lock().is_empty() {
                // Wake up now and then to notice that the last handle is gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
            }
            continue;
        }
        let profile = &shared.profile;
        let step = profile.decode_step + profile.prefill_per_token * prefill_tokens as u32;
        let slowdown = f64::from_bits(shared.slowdown.load(Ordering::Relaxed));
        let started = Instant::now();
        tokio::time::sleep(step.mul_f64(slowdown)).await;
        decode_one(&shared, cache, &mut batch, started.elapsed());
    }
}

/// Moves waiting jobs into the batch up to its limit; returns the tokens they must prefill.
fn admit(shared: &Shared, cache: &mut PrefixCache, batch: &mut Vec<Sequence>) -> usize {
    let profile = &shared.profile;
    let mut prefill = 0;
    let mut waiting = shared.waiting.lock();
    while batch.len() < profile.max_batch {
        let Some((submitted, job)) = waiting.pop_front() else {
            break;
        };
        shared.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        if job.tokens.is_closed() {
            shared.stats.finished.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let prompt_tokens = job.prompt.len().div_ceil(BYTES_PER_TOKEN).max(1);
        let hashes = block_hashes(&job.prompt, profile.block_tokens);
        let cached_tokens = cache.matched(&hashes) * profile.block_tokens;
        cache.insert(&hashes);
        let uncached_tokens = prompt_tokens.saturating_sub(cached_tokens).max(1);
        prefill += uncached_tokens;
        let stats = &shared.stats;
        stats
            .prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        stats
            .cached_tokens
            .fetch_add((prompt_tokens - uncached_tokens) as u64, Ordering::Relaxed);
        stats
            .kv_used_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        batch.push(Sequence {
            text: job.prompt.clone(),
            job,
            prompt_tokens,
            generated: 0,
            submitted,
        });
    }
    shared
        .stats
        .running
        .store(batch.len() as u32, Ordering::Relaxed);
    prefill
}

/// One token for every sequence in the batch, after a step that lasted `step`; ends the
/// finished ones, caching their text.
fn decode_one(shared: &Shared, cache: &mut PrefixCache, batch: &mut Vec<Sequence>, step: Duration) {
    let stats = &shared.stats;
    batch.retain_mut(|seq| {
        if seq.generated == 0 {
            stats.first_token.observe(seq.submitted.elapsed());
        } else {
            stats.token_gap.observe(step);
        }
        let token = token_text(seq.generated);
        seq.generated += 1;
        seq.text.extend_from_slice(token.as_bytes());
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        stats.kv_used_tokens.fetch_add(1, Ordering::Relaxed);
        let delivered = seq.job.tokens.send(token).is_ok();
        let done = !delivered || seq.generated >= seq.job.max_tokens.max(1);
        if done {
            stats.finished.fetch_add(1, Ordering::Relaxed);
            stats.kv_used_tokens.fetch_sub(
                (seq.prompt_tokens + seq.generated as usize) as u64,
                Ordering::Relaxed,
            );
            cache.insert(&block_hashes(&seq.text, shared.profile.block_tokens));
        }
        !done
    });
    stats.running.store(batch.len() as u32, Ordering::Relaxed);
}

/// The text of the `n`-th generated token: a short word, about one token long.
fn token_text(n: u32) -> String {
    const WORDS: [&str; 8] = [
        "the ", "model ", "says ", "tok ", "and ", "so ", "on ", "yes ",
    ];
    WORDS[n as usize % WORDS.len()].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> LlmProfile {
        LlmProfile {
            prefill_per_token: Duration::from_micros(1),
            decode_step: Duration::from_millis(1),
            max_batch: 2,
            ..LlmProfile::default()
        }
    }

    async fn generate(engine: &Engine, prompt: &[u8], max_tokens: u32) -> Vec<String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        engine.submit(Job {
            prompt: prompt.to_vec(),
            max_tokens,
            tokens: tx,
        });
        let mut out = Vec::new();
        while let Some(token) = rx.recv().await {
            out.push(token);
        }
        out
    }

    #[tokio::test]
    async fn generates_the_asked_tokens_and_caches_prefixes() {
        let engine = Engine::start(profile());
        let prompt = vec![b'x'; 64 * 10];
        assert_eq!(generate(&engine, &prompt, 5).await.len(), 5);
        assert_eq!(engine.stats().cached_tokens(), 0);
        assert_eq!(engine.stats().prompt_tokens(), 160);
        generate(&engine, &prompt, 1).await;
        // The whole prompt is cached the second time, except the one token always computed.
        assert_eq!(engine.stats().cached_tokens(), 159);
        assert_eq!(engine.stats().finished(), 2);
        assert_eq!(engine.stats().kv_used_tokens(), 0);
    }

    #[tokio::test]
    async fn batch_is_bounded_and_the_rest_waits() {
        let engine = Engine::start(profile());
        let mut receivers = Vec::new();
        for _ in 0..5 {
            let (tx, rx) = mpsc::unbounded_channel();
            engine.submit(Job {
                prompt: b"hello".to_vec(),
                max_tokens: 1_000_000,
                tokens: tx,
            });
            receivers.push(rx);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while engine.stats().running() != 2 || engine.stats().waiting() != 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                engine.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(receivers);
        while engine.stats().finished() != 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                engine.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(engine.stats().running(), 0);
    }
}
