//! An OpenAI-compatible HTTP server over the continuous-batching [`Engine`] (feature
//! `server`; `model serve` on the command line).
//!
//! Endpoints, shaped like OpenAI's and vLLM's:
//!
//! - `POST /v1/chat/completions`: messages through the checkpoint's chat template; with
//!   [`ServerConfig::reasoning`] (R1 templates) a reply that starts inside `<think>` (R1's
//!   template opens it, or the server prefills `<think>\n` when the template is silent) is
//!   split into `reasoning_content` and `content` as vLLM's `deepseek_r1` parser does;
//! - `POST /v1/completions`: a text prompt, or token ids (the only kind a checkpoint without
//!   a tokenizer can serve), or a batch of either (prompt `p`'s samples are choices
//!   `p · n ..`); `echo` (the prompt starts each choice's text) with `logprobs` scores the
//!   prompt's tokens too, the first one `null`, and `max_tokens` may then be 0: the
//!   log-likelihood request of lm-evaluation-harness's `local-completions` model;
//! - both: `max_tokens` (chat: `max_completion_tokens`), `temperature`, `top_p`, `top_k`,
//!   `seed`, `n`, `stop`, `stream` (SSE, `stream_options.include_usage`), `logprobs`
//!   (chat: `top_logprobs`), `presence_penalty`, `frequency_penalty`, `logit_bias`, vLLM's
//!   `repetition_penalty`, `ignore_eos`, `min_tokens`, `stop_token_ids`,
//!   `return_token_ids` and `prompt_logprobs` (not with `stream`); structured outputs (`response_format` `json_object` /
//!   `json_schema`, vLLM's `guided_json` / `guided_regex` / `guided_choice` /
//!   `guided_grammar`); parameters the server cannot honour (`suffix`, `best_of` other than
//!   `n`) are refused with a 400, never ignored;
//! - chat: `tools` (shown to the model by the chat template; a template that ignores them is
//!   a 400), replies read for DeepSeek's tool calls into `tool_calls`, `tool_choice` `auto`,
//!   `none`, `required` or a named function (the last two force calls by a grammar),
//!   `parallel_tool_calls` (false: at most one call); vLLM's template fields
//!   `chat_template_kwargs` (DeepSeek-V3.1's `thinking`, say), `add_generation_prompt` and
//!   `continue_final_message` (the reply continues a final assistant message the client
//!   wrote);
//! - `POST /v1/responses`: OpenAI's Responses API, turned into a chat request and its reply
//!   into output items (`reasoning`, `message`, `function_call`), whole or as OpenAI's stream
//!   events (see `responses.rs`); nothing is stored;
//! - `POST /tokenize` (a `prompt`, or `messages` rendered as chat completions would) and
//!   `POST /detokenize`, vLLM's;
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus).
//!
//! Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` with a 4xx for bad
//! input (413 over the body limit, 404 for another model name, 401 without the API key),
//! 429 with `Retry-After` when the engine's queue is full, 503 while shutting down.
//!
//! Browsers may call the API from [`ServerConfig::allowed_origins`] (CORS, any origin by
//! default): preflight `OPTIONS` requests are answered before the API key is checked.
//!
//! A client that disconnects cancels its request in the engine (pages freed at once).
//! [`serve`] returns after its `shutdown` future resolves and the drain ends: new requests
//! get 503 while those in flight finish, then the listener closes and the engine shuts down.

mod chat;
mod completions;
mod connections;
mod error;
mod extract;
mod generation;
mod logprobs;
mod metrics;
mod openai;
mod params;
mod reasoning;
mod reply;
mod responses;
mod routes;
mod sse;
mod state;
mod tokenize;
mod tool_calls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use error::ServerError;
pub use params::SamplingDefaults;
pub use reasoning::template_thinks;

use crate::engine::Engine;
use openai::Header;
use state::AppState;

/// How the server answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The model name clients send and `/v1/models` lists; requests naming another get 404.
    pub model_name: String,
    /// With a key, `/v1` requests need `Authorization: Bearer <key>` (else 401).
    pub api_key: Option<String>,
    /// R1-style chat (see [`template_thinks`]): split replies that start inside `<think>` at
    /// `</think>`, prefilling `<think>\n` when the template's generation prompt neither opens
    /// nor closes the block.
    pub reasoning: bool,
    /// `max_tokens` when a request leaves it out (cut to what the context leaves). The
    /// engine reserves every request's worst case, so this bounds admission, not only
    /// length.
    pub default_max_tokens: usize,
    /// Sampling fields a request leaves out.
    pub sampling: SamplingDefaults,
    /// Largest request body in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_secs: u64,
    /// How long a client may stay silent while the server waits for its request: for a
    /// whole request head, counted from when the server starts waiting for one (then the
    /// connection is closed), and between body chunks (then a 408). This bounds slow or
    /// silent clients and idle keep-alive connections, each of which holds a socket.
    pub read_timeout: Duration,
    /// Origins a browser may call the API from (CORS: preflights answered, responses carry
    /// `Access-Control-Allow-Origin`): `*` for any, as vLLM and llama-server allow by
    /// default; empty for no CORS headers (browsers then refuse cross-origin calls).
    pub allowed_origins: Vec<String>,
}

impl ServerConfig {
    /// Defaults for serving `model_name`: no key, no reasoning split, 4096 default tokens,
    /// OpenAI's sampling defaults, 32 MiB bodies, retry after 1 s, 30 s of silence from a
    /// client (hyper's default for request heads), browser calls from any origin.
    pub fn new(model_name: &str) -> Self {
        Self {
            model_name: model_name.to_string(),
            api_key: None,
            reasoning: false,
            default_max_tokens: 4096,
            sampling: SamplingDefaults::default(),
            max_body_bytes: 32 << 20,
            retry_after_secs: 1,
            read_timeout: Duration::from_secs(30),
            allowed_origins: vec!["*".into()],
        }
    }
}

/// Serves `engine` on `listener` until `shutdown` resolves and the requests in flight have
/// finished; then shuts the engine down (so the engine cannot be reused afterwards).
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let cors = routes::cors(&config.allowed_origins)?;
    let state = Arc::new(AppState::new(engine.clone(), config));
    let app = routes::router(state.clone(), cors);
    let drain = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!(
                in_flight = state.in_flight(),
                "shutting down: draining requests in flight"
            );
            state.drain().await;
        }
    };
    connections::serve_connections(listener, app, state.config.read_timeout, drain).await;
    tracing::info!("requests drained; stopping the engine");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .map_err(|e| ServerError::Shutdown(e.to_string()))?;
    Ok(())
}

/// A response's `id` (`prefix-` and 24 random hex digits), `object`, `created` and `model`.
fn response_header(state: &AppState, prefix: &str, object: &'static str) -> Header {
    Header {
        id: format!("{prefix}-{:024x}", rand::random::<u128>() >> 32),
        object,
        created: state::unix_now(),
        model: state.config.model_name.clone(),
    }
}
