//! A simulated LLM pod for tests and benchmarks: an OpenAI-style server (`/v1/chat/completions`,
//! `/v1/completions`, streamed as server-sent events or answered whole) in front of a simulated
//! engine ([`engine`]) with continuous batching and a bounded prefix cache ([`cache`]), and a
//! vLLM-style `/metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
//! `vllm:gpu_cache_usage_perc`, prefix-cache counters, and the time-to-first-token and
//! time-per-output-token histograms).
//!
//! A chat prompt is what the engine sees: every message as `role\ncontent\n`, in order, so a
//! conversation's next turn (earlier messages, the assistant's answer as it was streamed, a new
//! user message) starts with the blocks the pod cached at the end of the previous turn.

pub mod cache;
pub mod engine;
pub mod histogram;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use engine::{Engine, EngineStats, Job, LlmProfile};

type Body = BoxBody<Bytes, Infallible>;

/// The response header naming the pod that answered (its address), for tests.
pub const POD_HEADER: &str = "x-sample-llm-pod";

/// Output tokens when a request does not say `max_tokens`.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// A running simulated LLM pod.
pub struct SampleLlm {
    address: SocketAddr,
    engine: Engine,
    task: tokio::task::JoinHandle<()>,
}

impl SampleLlm {
    /// Starts a pod with `profile` on `address` (port 0 picks a free one).
    pub async fn start(address: SocketAddr, profile: LlmProfile) -> std::io::Result<SampleLlm> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let engine = Engine::start(profile);
        let task = tokio::spawn(serve(listener, engine.clone(), address));
        Ok(SampleLlm {
            address,
            engine,
            task,
        })
    }

    /// Starts a pod on a free port of 127.0.0.1.
    pub async fn start_local(profile: LlmProfile) -> std::io::Result<SampleLlm> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), profile).await
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its engine (counts, slowdown).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for SampleLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, engine: Engine, address: SocketAddr) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (engine, builder) = (engine.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let engine = engine.clone();
                async move {
                    let mut response = handle(request, &engine).await;
                    if let Ok(pod) = HeaderValue::from_str(&address.to_string()) {
                        response.headers_mut().insert(POD_HEADER, pod);
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(request: Request<Incoming>, engine: &Engine) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/" | "/health") => text(StatusCode::OK, "text/plain", "Healthy".into()),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            exposition(engine),
        ),
        (&Method::POST, path @ ("/v1/chat/completions" | "/v1/completions")) => {
            let chat = path == "/v1/chat/completions";
            match request.into_body().collect().await {
                Ok(body) => complete(&body.to_bytes(), chat, engine).await,
                Err(_) => error(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such route on this pod"),
    }
}

/// The parts of an OpenAI completion request the simulation uses.
#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// The prompt text a chat request's messages make: `role\ncontent\n` each, then the generation
/// prompt `assistant\n` (as chat templates add it), so the answer the engine generates, and
/// caches, is the text the conversation's next turn repeats.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut prompt = Vec::new();
    for (role, content) in messages {
        prompt.extend_from_slice(role.as_bytes());
        prompt.push(b'\n');
        prompt.extend_from_slice(content.as_bytes());
        prompt.push(b'\n');
    }
    prompt.extend_from_slice(b"assistant\n");
    prompt
}

async fn complete(body: &[u8], chat: bool, engine: &Engine) -> Response<Body> {
    let request: CompletionRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
    };
    let prompt = match (&request.prompt, chat) {
        (Some(prompt), false) => prompt.as_bytes().to_vec(),
        (None, true) if !request.messages.is_empty() => chat_prompt(
            request
                .messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str())),
        ),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body needs `messages` or `prompt`",
            )
        }
    };
    let (tokens, mut generated) = mpsc::unbounded_channel();
    engine.submit(Job {
        prompt,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        tokens,
    });
    if request.stream {
        return event_stream(generated, chat);
    }
    let mut content = String::new();
    while let Some(token) = generated.recv().await {
        content.push_str(&token);
    }
    let choice = if chat {
        serde_json::json!({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"})
    } else {
        serde_json::json!({"index": 0, "text": content, "finish_reason": "length"})
    };
    let body = serde_json::json!({"object": "chat.completion", "choices": [choice]});
    text(StatusCode::OK, "application/json", body.to_string())
}

/// Tokens as server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
fn event_stream(generated: mpsc::UnboundedReceiver<String>, chat: bool) -> Response<Body> {
    let events = futures_util::stream::unfold(Some(generated), move |state| async move {
        let mut generated = state?;
        let data = match generated.recv().await {
            Some(token) => {
                let choice = if chat {
                    serde_json::json!({"index": 0, "delta": {"content": token}})
                } else {
                    serde_json::json!({"index": 0, "text": token})
                };
                let chunk =
                    serde_json::json!({"object": "chat.completion.chunk", "choices": [choice]});
                let event = Bytes::from(format!("data: {chunk}\n\n"));
                return Some((Ok(Frame::data(event)), Some(generated)));
            }
            None => Bytes::from_static(b"data: [DONE]\n\n"),
        };
        Some((Ok(Frame::data(data)), None))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// The vLLM-style metrics text.
fn exposition(engine: &Engine) -> String {
    let stats = engine.stats();
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{model_name=\"sample-llm\"}} {value}");
    };
    gauge(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in the batch.",
        f64::from(stats.running()),
    );
    gauge(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting for the batch.",
        f64::from(stats.waiting()),
    );
    let usage = engine.kv_usage();
    gauge(
        "vllm:gpu_cache_usage_perc",
        "gauge",
        "KV-cache usage, 1 is 100 %.",
        usage,
    );
    gauge(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage, 1 is 100 %.",
        usage,
    );
    gauge(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        stats.prompt_tokens() as f64,
    );
    gauge(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        stats.cached_tokens() as f64,
    );
    let labels = "model_name=\"sample-llm\"";
    stats.first_token().write(
        &mut out,
        "vllm:time_to_first_token_seconds",
        "Time from a request's arrival to its first token, seconds.",
        labels,
    );
    stats.token_gap().write(
        &mut out,
        "vllm:time_per_output_token_seconds",
        "Time between two output tokens of a request, seconds.",
        labels,
    );
    out
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": message}});
    text(status, "application/json", body.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
