//! The workload: multi-turn chat conversations that share a few long system prompts, with
//! request arrivals as a Poisson process.
//!
//! Shapes follow public chat traces (ShareGPT, LMSYS-Chat-1M) scaled down for a short run: a
//! conversation has a geometric number of turns (mean 4), user messages and answers have
//! log-normal lengths (medians 60 and 48 tokens), and each conversation starts with one of 8
//! system prompts of 600 to 1,500 tokens, picked with Zipf-like weights (a few apps dominate).
//! Each arrival is the next turn of an idle open conversation, or a new conversation with
//! probability 1 / mean turns (and whenever none is idle).

use std::collections::VecDeque;

use fastrand::Rng;

/// Bytes per token, as the simulated pod counts them.
const BYTES_PER_TOKEN: usize = 4;

/// The workload's shape.
#[derive(Clone, Debug)]
pub struct Shape {
    /// System prompts to choose from.
    pub system_prompts: usize,
    /// Mean turns per conversation.
    pub mean_turns: f64,
    /// Median user-message length, tokens.
    pub user_tokens_median: f64,
    /// Median answer length, tokens.
    pub answer_tokens_median: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            system_prompts: 8,
            mean_turns: 4.0,
            user_tokens_median: 60.0,
            answer_tokens_median: 48.0,
        }
    }
}

/// One conversation's state.
#[derive(Debug)]
pub struct Conversation {
    /// Its messages so far, `(role, content)`.
    pub messages: Vec<(String, String)>,
    turns_left: u32,
}

/// One request to send: the conversation it continues and its messages and answer length.
#[derive(Debug)]
pub struct Turn {
    /// The conversation (to hand back with [`Workload::answered`]).
    pub conversation: Conversation,
    /// Output tokens to ask for.
    pub max_tokens: u32,
}

/// The generator: deterministic for a seed.
pub struct Workload {
    rng: Rng,
    shape: Shape,
    system: Vec<String>,
    weights: Vec<f64>,
    idle: VecDeque<Conversation>,
    words: u64,
}

impl Workload {
    /// A generator of `shape` seeded with `seed`.
    pub fn new(shape: Shape, seed: u64) -> Self {
        let mut rng = Rng::with_seed(seed);
        let system = (0..shape.system_prompts)
            .map(|i| {
                let tokens = 600 + rng.usize(..900);
                text(&mut rng, &format!("system{i}"), tokens)
            })
            .collect();
        let weights = (1..=shape.system_prompts).map(|k| 1.0 / k as f64).collect();
        Workload {
            rng,
            shape,
            system,
            weights,
            idle: VecDeque::new(),
            words: 0,
        }
    }

    /// Seconds until the next arrival at `rate` per second (exponential gaps).
    pub fn gap(&mut self, rate: f64) -> f64 {
        -(1.0 - self.rng.f64()).ln() / rate
    }

    /// The next turn: of an idle conversation, or of a new one.
    pub fn next_turn(&mut self) -> Turn {
        let start_new = self.idle.is_empty() || self.rng.f64() < 1.0 / self.shape.mean_turns;
        let mut conversation = if start_new {
            self.new_conversation()
        } else {
            let i = self.rng.usize(..self.idle.len());
            self.idle.swap_remove_back(i).expect("index in range")
        };
        self.words += 1;
        let tokens = self.lognormal(self.shape.user_tokens_median).max(4.0) as usize;
        let user = text(&mut self.rng, &format!("u{}", self.words), tokens);
        conversation.messages.push(("user".into(), user));
        conversation.turns_left -= 1;
        let max_tokens = self
            .lognormal(self.shape.answer_tokens_median)
            .clamp(4.0, 512.0) as u32;
        Turn {
            conversation,
            max_tokens,
        }
    }

    /// Records a turn's answer; the conversation goes back to the idle ones unless it is over.
    pub fn answered(&mut self, mut turn: Turn, answer: String) {
        turn.conversation
            .messages
            .push(("assistant".into(), answer));
        if turn.conversation.turns_left > 0 {
            self.idle.push_back(turn.conversation);
        }
    }

    fn new_conversation(&mut self) -> Conversation {
        let pick = self.zipf();
        let system = self.system[pick].clone();
        // Geometric turn count with the configured mean.
        let p = 1.0 / self.shape.mean_turns;
        let mut turns = 1;
        while self.rng.f64() > p && turns < 32 {
            turns += 1;
        }
        Conversation {
            messages: vec![("system".into(), system)],
            turns_left: turns,
        }
    }

    fn zipf(&mut self) -> usize {
        let total: f64 = self.weights.iter().sum();
        let mut x = self.rng.f64() * total;
        for (i, w) in self.weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        self.weights.len() - 1
    }

    /// A log-normal draw with `median` and σ = 0.8 (Box–Muller).
    fn lognormal(&mut self, median: f64) -> f64 {
        let (u1, u2) = (1.0 - self.rng.f64(), self.rng.f64());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        median * (0.8 * normal).exp()
    }
}

/// About `tokens` tokens of text, unique to `tag`.
fn text(rng: &mut Rng, tag: &str, tokens: usize) -> String {
    let mut s = String::with_capacity(tokens * BYTES_PER_TOKEN + tag.len());
    s.push_str(tag);
    while s.len() < tokens * BYTES_PER_TOKEN {
        s.push(' ');
        for _ in 0..3 {
            s.push(rng.lowercase());
        }
    }
    s
}
