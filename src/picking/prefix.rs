//! The key prefix-affinity routes on: chained hashes of a prompt's leading blocks, from an
//! OpenAI-style JSON body (`messages` of chat completions, `prompt` of completions) or from a
//! header such as a session id.
//!
//! Block `k`'s hash covers the whole text up to the end of block `k`, so two prompts share
//! block hash `k` exactly when they share their first `k + 1` blocks (up to hash collisions).
//! Only full blocks are hashed (a prompt shorter than one block is one block), and at most
//! `max_blocks`, so the work per request is bounded whatever the body's size.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};

use http::HeaderName;
use serde::Deserialize;

use crate::model::PrefixSettings;

/// What a request's prefix key is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixSource {
    /// The JSON body's `messages` or `prompt`.
    Body,
    /// A header's value, as one block.
    Header(HeaderName),
}

/// Where a deployment's prefix key comes from, and how it is cut into blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixKey {
    /// The body's prompt, or a header.
    pub source: PrefixSource,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Blocks hashed at most.
    pub max_blocks: usize,
}

impl PrefixKey {
    /// The key `settings` declare (validated: a header name that does not parse reads the body).
    pub fn of(settings: &PrefixSettings) -> Self {
        let header = settings.header.as_deref();
        PrefixKey {
            source: match header.and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()) {
                Some(name) => PrefixSource::Header(name),
                None => PrefixSource::Body,
            },
            block_bytes: settings.block_bytes as usize,
            max_blocks: settings.max_blocks as usize,
        }
    }

    /// Whether the key is read from the body (so the body must be received before admission).
    pub fn needs_body(&self) -> bool {
        matches!(self.source, PrefixSource::Body)
    }

    /// The block hashes of a request: from its header (`header` reads a field's value by
    /// name), or from its body when the body is an OpenAI-style JSON request. Empty when there
    /// is nothing to hash.
    pub fn blocks<'r>(
        &self,
        header: impl FnOnce(&HeaderName) -> Option<&'r [u8]>,
        body: Option<&[u8]>,
    ) -> Vec<u64> {
        match &self.source {
            PrefixSource::Header(name) => header(name)
                .map(|value| Blocks::new(self).whole(value))
                .unwrap_or_default(),
            PrefixSource::Body => body.map(|body| self.body_blocks(body)).unwrap_or_default(),
        }
    }

    /// The block hashes of a JSON body's `messages` (each as `role`, NUL, text, NUL) or
    /// `prompt`; empty when the body is not such JSON.
    pub fn body_blocks(&self, body: &[u8]) -> Vec<u64> {
        let Ok(prompted) = serde_json::from_slice::<Prompted<'_>>(body) else {
            return Vec::new();
        };
        let mut blocks = Blocks::new(self);
        if let Some(messages) = &prompted.messages {
            for message in messages {
                blocks.feed(message.role.as_bytes());
                blocks.feed(b"\0");
                message.content.feed(&mut blocks);
                blocks.feed(b"\0");
            }
        } else if let Some(prompt) = &prompted.prompt {
            blocks.feed(prompt.as_bytes());
        }
        blocks.finish()
    }
}

/// The parts of a completion request that make the prompt; everything else is skipped.
#[derive(Deserialize)]
struct Prompted<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(borrow, default)]
    prompt: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Content<'a>,
}

/// A message's content: a string, or a list of parts of which the text ones count.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    #[default]
    None,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

impl Content<'_> {
    fn feed(&self, blocks: &mut Blocks) {
        match self {
            Content::Text(text) => blocks.feed(text.as_bytes()),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .for_each(|text| blocks.feed(text.as_bytes())),
            Content::None => {}
        }
    }
}

/// Cuts a stream of bytes into blocks and hashes each whole block, chained to the one before
/// (so the hashes do not depend on how the stream was split into pieces).
struct Blocks {
    state: foldhash::quality::FixedState,
    block: Vec<u8>,
    block_bytes: usize,
    max_blocks: usize,
    out: Vec<u64>,
}

impl Blocks {
    fn new(key: &PrefixKey) -> Self {
        let block_bytes = key.block_bytes.max(1);
        Blocks {
            state: foldhash::quality::FixedState::with_seed(0x9e37_79b9_7f4a_7c15),
            block: Vec::with_capacity(block_bytes),
            block_bytes,
            max_blocks: key.max_blocks.max(1),
            out: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.out.len() < self.max_blocks {
            let take = bytes.len().min(self.block_bytes - self.block.len());
            self.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.block.len() == self.block_bytes {
                self.end_block();
            }
        }
    }

    fn end_block(&mut self) {
        let mut hasher = self.state.build_hasher();
        hasher.write_u64(self.out.last().copied().unwrap_or(0));
        hasher.write(&self.block);
        self.out.push(hasher.finish());
        self.block.clear();
    }

    /// The full blocks; a non-empty stream shorter than one block is one block.
    fn finish(mut self) -> Vec<u64> {
        if self.out.is_empty() && !self.block.is_empty() {
            self.end_block();
        }
        self.out
    }

    /// `bytes` as one block.
    fn whole(mut self, bytes: &[u8]) -> Vec<u64> {
        self.block.extend_from_slice(bytes);
        self.end_block();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(block_bytes: usize) -> PrefixKey {
        PrefixKey {
            source: PrefixSource::Body,
            block_bytes,
            max_blocks: 8,
        }
    }

    fn chat(messages: &[(&str, &str)]) -> Vec<u8> {
        let messages: Vec<_> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"model": "m", "stream": true, "messages": messages}))
            .unwrap()
    }

    #[test]
    fn the_next_turn_of_a_conversation_shares_the_earlier_blocks() {
        let system = "You are a helpful assistant. ".repeat(10);
        let first = chat(&[("system", &system), ("user", "What is a router?")]);
        let second = chat(&[
            ("system", &system),
            ("user", "What is a router?"),
            (
                "assistant",
                "A thing that routes requests to the pods that serve them.",
            ),
            ("user", "And a pod?"),
        ]);
        let (a, b) = (key(64).body_blocks(&first), key(64).body_blocks(&second));
        // 321 bytes of `role\0text\0`: 5 full blocks.
        assert_eq!(a.len(), 5);
        assert!(b.len() > a.len());
        assert_eq!(a[..], b[..a.len()]);
        // Another system prompt shares nothing.
        let other = chat(&[
            ("system", &"Be terse. ".repeat(30)),
            ("user", "What is a router?"),
        ]);
        assert_ne!(key(64).body_blocks(&other)[0], a[0]);
    }

    #[test]
    fn fields_other_than_the_prompt_do_not_matter() {
        let a = br#"{"model":"a","messages":[{"role":"user","content":"hello there, friend"}]}"#;
        let b = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"hello there, friend"}]}],"max_tokens":5}"#;
        assert_eq!(key(8).body_blocks(a), key(8).body_blocks(b));
        assert_eq!(key(8).body_blocks(a).len(), 3);
    }

    #[test]
    fn completions_prompts_short_prompts_and_bounds() {
        let body = serde_json::to_vec(&serde_json::json!({"prompt": "x".repeat(1000)})).unwrap();
        assert_eq!(key(10).body_blocks(&body).len(), 8);
        assert_eq!(key(64).body_blocks(br#"{"prompt": "hi"}"#).len(), 1);
        assert!(key(64).body_blocks(b"not json").is_empty());
        assert!(key(64).body_blocks(br#"{"input": [1, 2]}"#).is_empty());
    }

    #[test]
    fn a_header_is_one_block() {
        let header = PrefixKey {
            source: PrefixSource::Header(HeaderName::from_static("x-session-id")),
            block_bytes: 64,
            max_blocks: 8,
        };
        let mut headers = http::HeaderMap::new();
        let blocks = |headers: &http::HeaderMap, body: Option<&[u8]>| {
            header.blocks(|name| headers.get(name).map(|v| v.as_bytes()), body)
        };
        assert!(blocks(&headers, None).is_empty());
        headers.insert("x-session-id", "abc".parse().unwrap());
        let a = blocks(&headers, Some(b"ignored"));
        headers.insert("x-session-id", "abd".parse().unwrap());
        assert_eq!(a.len(), 1);
        assert_ne!(a, blocks(&headers, None));
    }
}
