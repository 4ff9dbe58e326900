//! The serving engine: continuous batching of many requests over one model.
//!
//! A request (a prompt and its [`RequestParams`], `n` samples) is submitted with a [`Sink`]
//! that receives its [`Event`]s on the engine's thread. The engine keeps a waiting queue and a
//! running set and, between steps:
//!
//! - **admits** waiting requests in arrival order while the running set has room
//!   ([`EngineConfig::max_running`] sequences) and the cache budget can hold the request's
//!   worst case (prompt + `max_tokens` for every sample, in pages; pages a fork shares count
//!   once). Admitted requests therefore always finish: there is no preemption, and a request
//!   that could never fit is refused at submission ([`SubmitError::Invalid`]);
//! - runs **one step**: every running sequence's pending token (decode) plus prefill chunks of
//!   sequences still reading their prompt, as [`DeepSeek::forward_packed`] passes: the
//!   projections, norms and MoE run once over all rows, attention per sequence over its own
//!   paged latent cache;
//! - **samples** each sequence that produced logits with its own seeded sampler (after its
//!   request's [`Penalties`] over what that sequence has seen), applies EOS / `min_tokens` /
//!   stop strings / `max_tokens`, and sends the events.
//!
//! **Prefix sharing.** The `n` samples of a request prefill the prompt once: when the prompt
//! is in, sample 0's cache is forked ([`mla::LatentKvCache::fork`]) for the others, sharing
//! every page copy-on-write; each sample then owns only the pages it writes. Across requests,
//! full prompt pages go into a prefix cache (`prefix.rs`): a request whose prompt starts with
//! the same tokens (the next sample of an eval problem, a repeated system prompt) adopts them
//! and prefills only the rest, and one arriving while that prefix is still being prefilled
//! waits for it rather than computing it twice. Cached pages count against the budget and
//! are dropped, least recently used first, when admissions need the room.
//!
//! **Batch invariance** ([`EngineConfig::batch_invariant`], on by default). A request's
//! output must not depend on what else runs. With it on, decode rows go through the model in
//! groups of at most [`DeepSeek::batch_invariant_rows`] (the matrix kernels compute each row
//! identically whatever the group: [`linear::GEMV_MAX_ROWS`] rows, 64 for bf16 matrices under
//! bf16 activations on AVX512-BF16 CPUs (any number on AMX CPUs), any number for quantised
//! matrices held in panels on AVX512-VNNI CPUs, 64 for quantised matrices on AVX2 CPUs
//! without VNNI), routed experts always take grouped dispatch, and each prompt is prefilled
//! alone in fixed chunks of [`EngineConfig::prefill_chunk`]: greedy outputs are then
//! identical alone or among 63 others (tested). Off, each step is one pass over all rows
//! (GEMM above 8 rows): faster at high concurrency, equal up to rounding.
//!
//! **Scoring.** With [`RequestParams::prompt_logprobs`] the head also runs over every
//! prefill row, and [`Event::Prompt`] carries each prompt token's log-probability given the
//! tokens before it (what a log-likelihood evaluation reads). Pages a scoring request prefilled
//! keep their scores in the prefix cache, so the next scoring request with the same prefix (the
//! other choices of a multiple-choice question) prefills and scores only the rest; pages
//! prefilled without scoring are not reused by it. With `max_tokens` 0 it ends once its prompt
//! is read.
//!
//! Cancellation: [`Engine::cancel`], or a sink returning `false` (a disconnected client),
//! ends every sample of the request and frees its pages. [`Engine::shutdown`] stops admitting
//! new submissions and returns once everything accepted has finished.

mod guide;
mod prefix;
mod scheduler;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::error::{ModelError, Result};
use crate::generate::FinishReason;
use crate::model::DeepSeek;
use crate::penalties::Penalties;
use crate::sampling::SamplingParams;
use crate::structured::{Constraint, Grammars, Structure};
use crate::tokenizer::Tokenizer;

/// Engine limits and modes.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Sequences (samples) decoded together at most.
    pub max_running: usize,
    /// Latent-cache budget in tokens over all sequences (rounded down to whole pages).
    pub cache_tokens: usize,
    /// Tokens per cache page: the unit of allocation, sharing and accounting.
    pub page_tokens: usize,
    /// Prompt tokens one step prefills at most (chunked prefill between decode steps); with
    /// batch invariance also the fixed chunk each prompt is prefilled in.
    pub prefill_chunk: usize,
    /// Requests waiting for admission at most; more are refused with
    /// [`SubmitError::QueueFull`].
    pub max_waiting: usize,
    /// Identical outputs whatever else runs (see the module docs).
    pub batch_invariant: bool,
}

impl Default for EngineConfig {
    /// 64 sequences, 256K cache tokens in pages of 512, prefill chunks of 512, 1024 waiting,
    /// batch-invariant.
    fn default() -> Self {
        Self {
            max_running: 64,
            cache_tokens: 256 * 1024,
            page_tokens: mla::FLASH_KEY_BLOCK,
            prefill_chunk: 512,
            max_waiting: 1024,
            batch_invariant: true,
        }
    }
}

impl EngineConfig {
    /// Pages the cache budget holds.
    pub fn total_pages(&self) -> usize {
        self.cache_tokens / self.page_tokens.max(1)
    }

    fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("max_running", self.max_running),
            ("page_tokens", self.page_tokens),
            ("prefill_chunk", self.prefill_chunk),
            ("max_waiting", self.max_waiting),
        ] {
            if v == 0 {
                return Err(ModelError::Input(format!("engine: {name} must be > 0")));
            }
        }
        if self.total_pages() == 0 {
            return Err(ModelError::Input(format!(
                "engine: cache_tokens {} holds no page of {} tokens",
                self.cache_tokens, self.page_tokens
            )));
        }
        Ok(())
    }
}

/// What a request asks for; each of its `n` samples follows the same rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestParams {
    /// Samples of the prompt (the prompt is prefilled once and shared).
    pub n: usize,
    /// Token budget per sample.
    pub max_tokens: usize,
    /// Stop tokens are ignored until a sample has this many tokens.
    pub min_tokens: usize,
    /// Temperature, top-p, top-k; sample `i` draws with seed `seed + i`.
    pub sampling: SamplingParams,
    /// Logit bias and presence / frequency / repetition penalties, applied before sampling
    /// (log-probabilities stay those of the model's own distribution, as vLLM's default).
    pub penalties: Penalties,
    /// Output constrained to a JSON Schema, a regular expression... (needs a tokenizer); a
    /// sample ends once its output is complete.
    pub structure: Option<Structure>,
    /// With a `structure`: it applies only after this text has appeared in the output (R1's
    /// `</think>`: the reasoning is free, the answer follows the structure).
    pub structure_after: Option<String>,
    /// Ids that end a sample (not part of its output).
    pub stop_tokens: Vec<u32>,
    /// Keep generating through stop tokens (benchmarks: always `max_tokens`).
    pub ignore_eos: bool,
    /// Strings that end a sample (its text is cut before them; needs a tokenizer).
    pub stop_strings: Vec<String>,
    /// Log-probabilities of each chosen token and this many alternatives (`None`: off).
    pub logprobs: Option<usize>,
    /// Log-probabilities of each prompt token after the first, given the tokens before it,
    /// and this many alternatives (`None`: off): what scoring a continuation needs (the
    /// completions API's `echo` with `logprobs`, as lm-evaluation-harness asks for it). The
    /// request then prefills its whole prompt (no prefix is reused) and may have
    /// `max_tokens` 0: it ends once the prompt is read.
    pub prompt_logprobs: Option<usize>,
}

impl Default for RequestParams {
    /// One greedy sample of up to 256 tokens.
    fn default() -> Self {
        Self {
            n: 1,
            max_tokens: 256,
            min_tokens: 0,
            sampling: SamplingParams::greedy(),
            penalties: Penalties::default(),
            structure: None,
            structure_after: None,
            stop_tokens: vec![],
            ignore_eos: false,
            stop_strings: vec![],
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

/// A prompt (token ids) and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt ids (at least one).
    pub prompt: Vec<u32>,
    /// The rules for its samples.
    pub params: RequestParams,
}

/// The log-probability of a chosen token and the most likely alternatives, under the model's
/// distribution (log-softmax of the logits, before temperature and truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// `log p(token)`.
    pub logprob: f32,
    /// The token's rank in the distribution: 1 plus the number of tokens more likely.
    pub rank: usize,
    /// The `logprobs` most likely tokens with theirs, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a request's sink receives, on the engine's thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sample `sample` produced `token`; `text` is the newly completed text (empty while a
    /// character or a possible stop string is incomplete, or without a tokenizer).
    Token {
        /// Which sample (0..n).
        sample: usize,
        /// The token id.
        token: u32,
        /// Text now safe to show.
        text: String,
        /// With [`RequestParams::logprobs`].
        logprob: Option<TokenLogprob>,
    },
    /// Sample `sample` ended; `text` is its held-back tail.
    Finished {
        /// Which sample.
        sample: usize,
        /// Why.
        reason: FinishReason,
        /// Tokens it produced.
        completion_tokens: usize,
        /// Prompt tokens taken from the prefix cache rather than prefilled (the same for
        /// every sample of the request; 0 for one that never started).
        cached_tokens: usize,
        /// The rest of its text.
        text: String,
    },
    /// The prompt has been read: with [`RequestParams::prompt_logprobs`], the log-probability
    /// of each prompt token after the first (one entry per token, in order). Sent once,
    /// before any sample's first token.
    Prompt {
        /// `log p(prompt[i] | prompt[..i])` for `i` in `1..prompt.len()`.
        logprobs: Vec<TokenLogprob>,
    },
    /// The request failed; none of its samples sends anything more.
    Error(String),
}

/// Receives a request's events; returning `false` cancels the request (e.g. the client went
/// away), which frees its pages.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Identifies a submitted request (for [`Engine::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// Why a submission was refused (nothing was queued).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The request can never run (empty prompt, ids out of range, longer than the context or
    /// the cache budget, bad parameters); the message says which.
    #[error("{message}")]
    Invalid {
        /// The request field at fault, named as in the OpenAI API (`prompt`, `n`,
        /// `max_tokens`, `temperature`, `top_p`, `stop`, ...).
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The waiting queue is full: retry later.
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Counters and gauges for monitoring (a snapshot).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Sequences (samples) running.
    pub running: usize,
    /// Cache pages in use by sequences and the prefix cache (shared pages once).
    pub pages_used: usize,
    /// Cache pages reserved by admitted requests' worst cases.
    pub pages_reserved: usize,
    /// Pages the budget holds.
    pub pages_total: usize,
    /// Prompt tokens prefilled, total.
    pub prompt_tokens: u64,
    /// Prompt tokens taken from the prefix cache instead of prefilled, total.
    pub prompt_tokens_reused: u64,
    /// Pages the prefix cache holds (also counted in `pages_used`).
    pub prefix_cache_pages: usize,
    /// Tokens generated, total.
    pub generated_tokens: u64,
    /// Requests finished (all samples), total.
    pub requests_finished: u64,
    /// Requests cancelled or failed, total.
    pub requests_aborted: u64,
    /// Sum and count of times to first token, seconds (admission wait included).
    pub ttft_sum_secs: f64,
    /// Number of first tokens timed.
    pub ttft_count: u64,
    /// Engine steps run.
    pub steps: u64,
    /// Most decode rows one forward pass has carried (under batch invariance at most
    /// [`DeepSeek::batch_invariant_rows`]).
    pub largest_decode_pass: usize,
}

/// Messages to the engine thread.
enum Msg {
    Submit(Box<Submitted>),
    Cancel(RequestId),
    Shutdown,
}

/// A request as queued.
struct Submitted {
    id: RequestId,
    request: Request,
    sink: Sink,
    at: std::time::Instant,
}

/// State shared by the handle and the engine thread.
struct Shared {
    stats: Mutex<EngineStats>,
    waiting: AtomicUsize,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// The vocabulary indexed for structured outputs, built by the first request with one.
    grammars: OnceLock<std::result::Result<Arc<Grammars>, String>>,
}

impl Shared {
    /// [`Grammars`] for `tokenizer` over the model's vocabulary (built once).
    fn grammars(
        &self,
        model: &DeepSeek,
        tokenizer: Option<&Tokenizer>,
    ) -> std::result::Result<Arc<Grammars>, String> {
        let tokenizer =
            tokenizer.ok_or("structured outputs need a tokenizer, and this engine has none")?;
        self.grammars
            .get_or_init(|| {
                let eos = tokenizer
                    .eos_id()
                    .or(model.config().eos_token_ids.first().copied())
                    .ok_or("structured outputs need an EOS token")?;
                Grammars::new(tokenizer, model.config().vocab_size, eos)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// A fresh constraint for `structure` (the vocabulary indexed on first use).
    fn constraint(
        &self,
        model: &DeepSeek,
        tokenizer: Option<&Tokenizer>,
        structure: &Structure,
    ) -> std::result::Result<Constraint, String> {
        self.grammars(model, tokenizer)?
            .constraint(structure)
            .map_err(|e| e.to_string())
    }
}

/// A handle to a running engine (cheap to clone; the engine stops when [`Engine::shutdown`]
/// is called or the last handle is dropped).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    model: Arc<DeepSeek>,
    tokenizer: Option<Arc<Tokenizer>>,
    config: EngineConfig,
    shared: Arc<Shared>,
    tx: Mutex<Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Msg::Shutdown);
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Engine {
    /// Starts the engine thread over `model`. With a `tokenizer`, events carry text and stop
    /// strings work. DeepSeek-V3.2 checkpoints (sparse attention) are refused: the engine's
    /// packed passes and page sharing do not carry the indexer caches yet (use
    /// [`crate::generate`]).
    pub fn start(
        model: Arc<DeepSeek>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
    ) -> Result<Self> {
        if model.config().is_dsa() {
            return Err(crate::model::dsa_unsupported("the engine"));
        }
        config.validate()?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(EngineStats {
                pages_total: config.total_pages(),
                ..EngineStats::default()
            }),
            waiting: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            grammars: OnceLock::new(),
        });
        let (tx, rx) = channel();
        let worker = scheduler::Scheduler::new(
            model.clone(),
            tokenizer.clone(),
            config.clone(),
            shared.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| ModelError::Input(format!("engine: cannot start its thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                config,
                shared,
                tx: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The model.
    pub fn model(&self) -> &DeepSeek {
        &self.inner.model
    }

    /// The tokenizer, when the engine has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.inner.tokenizer.as_deref()
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The longest prompt + `max_tokens` a request may have: `max_position_embeddings` when
    /// the config names it.
    pub fn max_context(&self) -> Option<usize> {
        self.inner.model.config().max_position_embeddings
    }

    /// Queues `request`; its events go to `sink`. Checked here, so a refused request leaves
    /// no trace.
    pub fn submit(
        &self,
        request: Request,
        sink: Sink,
    ) -> std::result::Result<RequestId, SubmitError> {
        let inner = &self.inner;
        if inner.shared.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        self.check(&request)?;
        let waiting = inner.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= inner.config.max_waiting {
            inner.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(waiting));
        }
        let id = RequestId(inner.shared.next_id.fetch_add(1, Ordering::SeqCst));
        let msg = Msg::Submit(Box::new(Submitted {
            id,
            request,
            sink,
            at: std::time::Instant::now(),
        }));
        let sent = inner
            .tx
            .lock()
            .map(|tx| tx.send(msg).is_ok())
            .unwrap_or(false);
        if !sent {
            inner.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(id)
    }

    /// Ends every sample of request `id` and frees its pages (no-op once it has finished).
    pub fn cancel(&self, id: RequestId) {
        if let Ok(tx) = self.inner.tx.lock() {
            let _ = tx.send(Msg::Cancel(id));
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self
            .inner
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.waiting = self.inner.shared.waiting.load(Ordering::SeqCst);
        s
    }

    /// Stops admitting submissions, lets everything accepted finish, and stops the thread.
    pub fn shutdown(&self) {
        self.inner.close();
    }

    /// True once [`Engine::shutdown`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.shared.closing.load(Ordering::SeqCst)
    }

    /// Runs `request` to the end and returns its samples (what in-process callers that want
    /// whole completions use; many threads may call it at once and share the batch).
    pub fn generate(&self, request: Request) -> Result<Vec<Completion>> {
        let n = request.params.n;
        let (tx, rx) = channel();
        self.submit(request, Box::new(move |event| tx.send(event).is_ok()))
            .map_err(|e| ModelError::Input(e.to_string()))?;
        let mut out: Vec<Completion> = (0..n).map(|_| Completion::default()).collect();
        let mut prompt_logprobs = Vec::new();
        let mut open = n;
        while open > 0 {
            let event = rx.recv().map_err(|_| {
                ModelError::Input("engine stopped before the request finished".into())
            })?;
            match event {
                Event::Token {
                    sample,
                    token,
                    text,
                    logprob,
                } => {
                    let c = &mut out[sample];
                    c.tokens.push(token);
                    c.text.push_str(&text);
                    c.logprobs.extend(logprob);
                }
                Event::Finished {
                    sample,
                    reason,
                    text,
                    cached_tokens,
                    ..
                } => {
                    out[sample].text.push_str(&text);
                    out[sample].finish = Some(reason);
                    out[sample].cached_tokens = cached_tokens;
                    open -= 1;
                }
                Event::Prompt { logprobs } => prompt_logprobs = logprobs,
                Event::Error(e) => return Err(ModelError::Input(format!("engine: {e}"))),
            }
        }
        for c in &mut out {
            c.prompt_logprobs = prompt_logprobs.clone();
        }
        Ok(out)
    }

    /// Whether `structure` compiles for this engine's tokenizer (the first call indexes the
    /// vocabulary: up to a second for DeepSeek's 129K tokens); otherwise why not.
    pub fn check_structure(&self, structure: &Structure) -> std::result::Result<(), String> {
        let inner = &self.inner;
        inner
            .shared
            .constraint(&inner.model, inner.tokenizer.as_deref(), structure)
            .map(drop)
    }

    /// The checks [`Engine::submit`] makes, without queueing anything: a caller submitting
    /// several requests as one (a batch of prompts) refuses all of them before any runs.
    pub fn check(&self, request: &Request) -> std::result::Result<(), SubmitError> {
        let invalid = |param, message: String| Err(SubmitError::Invalid { param, message });
        let p = &request.params;
        let cfg = &self.inner.config;
        let vocab = self.inner.model.config().vocab_size;
        if request.prompt.is_empty() {
            return invalid("prompt", "the prompt is empty".into());
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return invalid(
                "prompt",
                format!("prompt token id {bad} is out of range (vocab_size {vocab})"),
            );
        }
        if p.n == 0 || p.n > cfg.max_running {
            return invalid(
                "n",
                format!(
                    "n must be between 1 and {} (the engine's max_running), got {}",
                    cfg.max_running, p.n
                ),
            );
        }
        if p.max_tokens == 0 && p.prompt_logprobs.is_none() {
            return invalid(
                "max_tokens",
                "max_tokens must be at least 1 (0 only to score the prompt)".into(),
            );
        }
        if p.min_tokens > p.max_tokens {
            return invalid(
                "min_tokens",
                format!(
                    "min_tokens {} exceeds max_tokens {}",
                    p.min_tokens, p.max_tokens
                ),
            );
        }
        if let Err((param, message)) = p.sampling.check() {
            return invalid(param, message);
        }
        if let Err((param, message)) = p.penalties.check(vocab) {
            return invalid(param, message);
        }
        if let Some(structure) = &p.structure {
            if let Err(message) = self.check_structure(structure) {
                return invalid("response_format", message);
            }
        }
        if !p.stop_strings.is_empty() && self.inner.tokenizer.is_none() {
            return invalid(
                "stop",
                "stop strings need a tokenizer, and this engine has none".into(),
            );
        }
        let Some(total) = request.prompt.len().checked_add(p.max_tokens) else {
            return invalid(
                "max_tokens",
                format!("max_tokens {} is out of range", p.max_tokens),
            );
        };
        if let Some(ctx) = self.max_context() {
            if total > ctx {
                return invalid(
                    "max_tokens",
                    format!(
                        "the prompt ({} tokens) plus max_tokens ({}) is {total} tokens, more \
                         than the model's context of {ctx}",
                        request.prompt.len(),
                        p.max_tokens
                    ),
                );
            }
        }
        let need = pages_for(request.prompt.len(), p.max_tokens, p.n, cfg.page_tokens);
        if need.is_none_or(|need| need > cfg.total_pages()) {
            let need = need.map_or("more than usize::MAX".into(), |n| n.to_string());
            return invalid(
                "max_tokens",
                format!(
                    "the request needs up to {need} cache pages of {} tokens, more than the \
                     engine's whole budget of {}",
                    cfg.page_tokens,
                    cfg.total_pages()
                ),
            );
        }
        Ok(())
    }
}

/// Worst-case pages of a request: each sample may reach prompt + max_tokens tokens; the
/// prompt's full pages are shared by all samples, the rest each sample owns. `None` when that
/// does not fit a `usize` (no budget holds it).
pub(crate) fn pages_for(prompt: usize, max_tokens: usize, n: usize, page: usize) -> Option<usize> {
    let whole = prompt.checked_add(max_tokens)?.div_ceil(page);
    let shared = prompt / page;
    (whole - shared)
        .checked_mul(n.checked_sub(1)?)?
        .checked_add(whole)
}

/// One finished sample, as [`Engine::generate`] returns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// Generated ids (without a stop token).
    pub tokens: Vec<u32>,
    /// Their text (cut before a stop string; empty without a tokenizer).
    pub text: String,
    /// Why it ended.
    pub finish: Option<FinishReason>,
    /// Per-token log-probabilities when requested.
    pub logprobs: Vec<TokenLogprob>,
    /// The prompt's tokens after the first, with [`RequestParams::prompt_logprobs`] (the same
    /// for every sample).
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Prompt tokens taken from the prefix cache rather than prefilled.
    pub cached_tokens: usize,
}
