//! From an API request to an engine [`Request`]: the prompt (chat template or completion
//! prompt), the sampling and stopping rules, and the checks the engine does not make
//! (model name, features this server refuses rather than ignores, API-level ranges).
//! Everything else (context length, cache budget, `n`, `top_p`...) the engine checks at
//! submission, and its message becomes the 400.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ServerError};
use super::openai::{
    ChatMessage, ChatRequest, CommonRequest, CompletionRequest, Content, Prompt, ResponseFormat,
    TemplateFields, ToolCallIn,
};
use super::reasoning::{generation_think, Think};
use super::state::AppState;
use super::tool_calls::{self, Calls};
use crate::engine::{Request, RequestParams};
use crate::penalties::Penalties;
use crate::sampling::SamplingParams;
use crate::structured::Structure;
use crate::tokenizer::{ChatExtras, ChatOptions, FunctionCall, Message, Tokenizer, ToolCall};

/// Most alternatives per token `logprobs` / `top_logprobs` may ask for (OpenAI: 20).
pub(crate) const MAX_LOGPROBS: u64 = 20;

/// Sampling used when a request leaves a field out: the checkpoint's
/// `generation_config.json` (vLLM's default), else OpenAI's (temperature 1, top-p 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    /// Temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Top-k (0: off).
    pub top_k: usize,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

impl SamplingDefaults {
    /// Reads `temperature`, `top_p` and `top_k` from `dir/generation_config.json`; fields or
    /// a file that are absent keep OpenAI's defaults.
    pub fn from_generation_config(dir: &Path) -> Result<Self, ServerError> {
        #[derive(Deserialize)]
        struct GenerationConfig {
            temperature: Option<f32>,
            top_p: Option<f32>,
            top_k: Option<usize>,
        }
        let path = dir.join("generation_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(Self::default());
        };
        let g: GenerationConfig = serde_json::from_str(&text)
            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        let d = Self::default();
        Ok(Self {
            temperature: g.temperature.unwrap_or(d.temperature),
            top_p: g.top_p.unwrap_or(d.top_p),
            top_k: g.top_k.unwrap_or(d.top_k),
        })
    }
}

/// A request ready for the engine, and how to answer it.
pub(crate) struct Prepared {
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
    pub return_token_ids: bool,
    /// Chat with the reasoning split: the reply starts inside `<think>`.
    pub thinking: bool,
    /// Chat with tools: replies are read for calls ([`super::tool_calls`]), this many.
    pub tool_calls: Option<Calls>,
    /// Completions with `echo`: the prompt as each choice's text starts.
    pub echo: Option<Echo>,
    /// vLLM's `prompt_logprobs`: the alternatives asked for, and the prompt.
    pub prompt_scores: Option<(usize, Vec<u32>)>,
}

/// An echoed prompt: its text (as sent, or decoded from the ids sent) and its tokens.
pub(crate) struct Echo {
    pub text: String,
    pub tokens: Vec<u32>,
}

/// Runs `prepare` (a request's parsing, chat template and tokenisation) on tokio's blocking
/// pool: tokenising a prompt of tens of MiB takes seconds, and on a runtime worker it would
/// stall every other connection's stream for that long.
pub(crate) async fn off_the_runtime<T: Send + 'static>(
    prepare: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(prepare)
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// `POST /v1/chat/completions` into an engine request.
pub(crate) fn chat(
    state: &AppState,
    common: CommonRequest,
    req: ChatRequest,
    template: TemplateFields,
) -> Result<Prepared, ApiError> {
    check_common(state, &common)?;
    let ToolUse {
        tools,
        read_calls,
        forced,
    } = tools(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    if req.functions.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::unsupported("functions", "function calling"));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs set to true",
            ))
        }
        (false, None) => None,
        (true, top) => Some(logprob_count("top_logprobs", top.unwrap_or(0))?),
    };
    let (text, thinking) = chat_text(state, req.messages, tools.as_deref(), template)?;
    let prompt = encode_chat(state, &text)?;
    if let Some(k) = common.prompt_logprobs {
        // Chat gives the prompt's scores once, whatever `n`.
        check_scores(
            "prompt_logprobs",
            logprob_count("prompt_logprobs", k)?,
            prompt.len(),
            1,
        )?;
    }
    let max_tokens = req.max_completion_tokens.or(common.max_tokens);
    let mut prepared = build(state, common, prompt, max_tokens, logprobs)?;
    prepared.thinking = thinking;
    prepared.tool_calls = read_calls;
    if let Some(forced) = forced {
        let params = &mut prepared.request.params;
        if params.structure.is_some() {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "a tool_choice that forces a call constrains the reply, and so does the \
                 response format given: send one of them",
            ));
        }
        state
            .engine
            .check_structure(&forced)
            .map_err(|e| ApiError::invalid_param("tool_choice", e))?;
        params.structure = Some(forced);
    }
    if thinking {
        // The reply starts inside R1's reasoning: the structure applies to the answer.
        prepared.request.params.structure_after = Some(super::reasoning::CLOSE.to_string());
    }
    Ok(prepared)
}

/// A conversation's prompt (the chat template's render, with `tools` and the template
/// fields), and whether the reply starts inside the reasoning.
pub(crate) fn chat_text(
    state: &AppState,
    messages: Vec<ChatMessage>,
    tools: Option<&[Value]>,
    template: TemplateFields,
) -> Result<(String, bool), ApiError> {
    let messages = self::messages(messages)?;
    let tokenizer = tokenizer(state, "messages", "chat prompts need a tokenizer")?;
    let continue_final_message = template.continue_final_message.unwrap_or(false);
    let opts = ChatOptions {
        // vLLM's default: a generation prompt unless the final message is continued.
        add_generation_prompt: template
            .add_generation_prompt
            .unwrap_or(!continue_final_message),
        think_prefill: false,
        continue_final_message,
    };
    let extras = ChatExtras {
        tools,
        kwargs: template.chat_template_kwargs.as_ref(),
    };
    extras
        .check()
        .map_err(|e| ApiError::invalid_param("chat_template_kwargs", e.to_string()))?;
    chat_prompt(state, tokenizer, &messages, extras, opts)
}

/// The tokens of a rendered conversation (the template writes BOS itself).
pub(crate) fn encode_chat(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer(state, "messages", "chat prompts need a tokenizer")?
        .encode_plain(text)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))
}

/// The request's `tools` (none when empty), whether replies are read for calls, and the
/// grammar that forces a call: `tool_choice` `auto` (the default) reads calls, `none` shows
/// the tools but reads none, `required` forces one or more calls and
/// `{"type": "function", "function": {"name": ...}}` exactly one call of that function (both
/// through [`tool_calls::forced_calls`], with arguments valid under the tool's schema).
pub(crate) fn tools(
    tools: Option<Vec<Value>>,
    choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<ToolUse, ApiError> {
    let tools = tools.filter(|t| !t.is_empty());
    let limit = match parallel {
        Some(false) => Calls::One,
        _ => Calls::Parallel,
    };
    for (i, tool) in tools.iter().flatten().enumerate() {
        let named = tool["function"]["name"]
            .as_str()
            .is_some_and(|n| !n.trim().is_empty());
        if tool["type"] != "function" || !named {
            return Err(ApiError::invalid_param(
                &format!("tools[{i}]"),
                "a tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
    }
    let Some(choice) = choice else {
        return Ok(ToolUse {
            read_calls: tools.is_some().then_some(limit),
            tools,
            forced: None,
        });
    };
    let needs_tools = || {
        ApiError::invalid_param(
            "tool_choice",
            "a tool_choice that forces a call needs tools",
        )
    };
    let forced = |only: Option<&str>| {
        let list = tools.as_deref().ok_or_else(needs_tools)?;
        tool_calls::forced_calls(list, only, limit)
            .map_err(|e| ApiError::invalid_param("tool_choice", e.to_string()))
    };
    let (read, forced) =
        match (&choice, choice["function"]["name"].as_str()) {
            (Value::String(c), _) if c == "auto" => (tools.is_some().then_some(limit), None),
            (Value::String(c), _) if c == "none" => (None, None),
            (Value::String(c), _) if c == "required" => (Some(limit), Some(forced(None)?)),
            (Value::Object(_), Some(name)) if choice["type"] == "function" => {
                let known = tools
                    .iter()
                    .flatten()
                    .any(|t| t["function"]["name"] == name);
                if !known {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("tool_choice names `{name}`, which is not among the tools"),
                    ));
                }
                (Some(limit), Some(forced(Some(name))?))
            }
            _ => return Err(ApiError::invalid_param(
                "tool_choice",
                "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \
                 \"function\": {\"name\": ...}}",
            )),
        };
    Ok(ToolUse {
        tools,
        read_calls: read,
        forced,
    })
}

/// What a chat request's `tools` and `tool_choice` ask for.
pub(crate) struct ToolUse {
    /// The tools, for the template (none when empty).
    pub tools: Option<Vec<Value>>,
    /// Replies are read for calls, this many.
    pub read_calls: Option<Calls>,
    /// The grammar that forces calls (`required` or a named function).
    pub forced: Option<Structure>,
}

/// The rendered conversation, and whether the reply starts inside the reasoning (only with
/// [`super::ServerConfig::reasoning`]). With the generation prompt, [`generation_think`]
/// reads it off what the prompt adds; a reply that continues the final message
/// (`continue_final_message`) is inside the reasoning when that message opened it and did
/// not close it; without either, the reply is content. Tools that the template does not
/// show to the model are refused rather than silently dropped.
fn chat_prompt(
    state: &AppState,
    tokenizer: &Tokenizer,
    messages: &[Message],
    extras: ChatExtras<'_>,
    opts: ChatOptions,
) -> Result<(String, bool), ApiError> {
    let render = |extras, opts| {
        tokenizer.render_chat(messages, extras, opts).map_err(|e| {
            let param = match e {
                crate::ModelError::Input(_) if opts.continue_final_message => {
                    "continue_final_message"
                }
                _ => "messages",
            };
            ApiError::invalid_param(param, e.to_string())
        })
    };
    let mut text = render(extras, opts)?;
    let without_tools = ChatExtras {
        tools: None,
        ..extras
    };
    if extras.tools.is_some() && text == render(without_tools, opts)? {
        return Err(ApiError::invalid_param(
            "tools",
            "this server's chat template does not show `tools` to the model (DeepSeek-V3's own \
             does not): start the server with --chat-template FILE of a template that renders \
             them",
        ));
    }
    if !state.config.reasoning {
        return Ok((text, false));
    }
    let think = if opts.continue_final_message {
        let last = messages.last().and_then(|m| m.content.as_deref());
        match generation_think(last.unwrap_or_default(), "") {
            Think::Silent => Think::Closed,
            think => think,
        }
    } else if opts.add_generation_prompt {
        let without = ChatOptions {
            add_generation_prompt: false,
            ..opts
        };
        generation_think(&text, &render(extras, without)?)
    } else {
        Think::Closed
    };
    Ok(match think {
        Think::Open => (text, true),
        Think::Closed => (text, false),
        Think::Silent => {
            text.push_str("<think>\n");
            (text, true)
        }
    })
}

/// Refuses prompt scores (`tokens` prompt tokens with `k` alternatives each, repeated in
/// `copies` choices) that would weigh more than [`MAX_ECHO_SCORES`] in the response.
fn check_scores(param: &str, k: usize, tokens: usize, copies: usize) -> Result<(), ApiError> {
    let scores = tokens.saturating_mul(k + 1).saturating_mul(copies);
    if scores <= MAX_ECHO_SCORES {
        return Ok(());
    }
    Err(ApiError::invalid_param(
        param,
        format!(
            "{param} {k} over {tokens} prompt tokens in {copies} choices asks for {scores} \
             scores, more than the {MAX_ECHO_SCORES} one request may: send fewer or shorter \
             prompts, a smaller n, or fewer alternatives"
        ),
    ))
}

/// Prompts one `/v1/completions` request may batch: each becomes its own engine request.
pub(crate) const MAX_BATCHED_PROMPTS: usize = 256;

/// Scores one `echo` with `logprobs`, or vLLM's `prompt_logprobs`, may return,
/// `Σ tokens · (k + 1) · n` over its prompts (every completions choice repeats its prompt's;
/// chat gives them once): a prefill is cheap next to what its scores
/// weigh as JSON (tens of bytes each), so a 32 MB body of token ids could otherwise ask for
/// gigabytes. 8M scores are lm-eval's log-likelihood requests (`logprobs` 1, `n` 1) of 64
/// prompts of 64K tokens.
pub(crate) const MAX_ECHO_SCORES: usize = 1 << 23;

/// `POST /v1/completions` into engine requests, one per prompt of a batch (OpenAI numbers
/// the choices of prompt `p` from `p · n`).
pub(crate) fn completion(
    state: &AppState,
    common: CommonRequest,
    req: CompletionRequest,
) -> Result<Vec<Prepared>, ApiError> {
    check_common(state, &common)?;
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "suffix"));
    }
    let logprobs = req
        .logprobs
        .map(|k| logprob_count("logprobs", k))
        .transpose()?;
    let prompts: Vec<(Vec<u32>, Option<String>)> = match req.prompt {
        Prompt::Tokens(ids) => vec![(ids, None)],
        Prompt::Text(text) => vec![(encode(state, &text)?, Some(text))],
        Prompt::TokenLists(lists) => lists.into_iter().map(|ids| (ids, None)).collect(),
        Prompt::Texts(texts) => texts
            .into_iter()
            .map(|text| Ok((encode(state, &text)?, Some(text))))
            .collect::<Result<_, ApiError>>()?,
    };
    if prompts.is_empty() || prompts.len() > MAX_BATCHED_PROMPTS {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "a batch holds 1 to {MAX_BATCHED_PROMPTS} prompts, got {}",
                prompts.len()
            ),
        ));
    }
    let echo = req.echo == Some(true);
    // Every choice repeats its prompt's scores, for the echo and for `prompt_logprobs`.
    let tokens: usize = prompts.iter().map(|(p, _)| p.len()).sum();
    let n = common.n.unwrap_or(1).try_into().unwrap_or(usize::MAX);
    if let (true, Some(k)) = (echo, logprobs) {
        check_scores("logprobs", k, tokens, n)?;
    }
    if let Some(k) = common.prompt_logprobs {
        check_scores(
            "prompt_logprobs",
            logprob_count("prompt_logprobs", k)?,
            tokens,
            n,
        )?;
    }
    prompts
        .into_iter()
        .map(|(prompt, text)| completion_one(state, common.clone(), prompt, text, echo, logprobs))
        .collect()
}

/// One prompt of a completions request (`text`: as sent, when it was text).
fn completion_one(
    state: &AppState,
    common: CommonRequest,
    prompt: Vec<u32>,
    text: Option<String>,
    echo: bool,
    logprobs: Option<usize>,
) -> Result<Prepared, ApiError> {
    let max_tokens = common.max_tokens;
    let mut prepared = build(state, common, prompt, max_tokens, logprobs)?;
    if echo {
        let params = &mut prepared.request.params;
        // The prompt's tokens are scored when logprobs are asked for, and always with
        // `max_tokens` 0 (the engine then ends the request once the prompt is read).
        // (With vLLM's `prompt_logprobs` too, the larger count is scored.)
        if logprobs.is_some() || params.max_tokens == 0 {
            let k = params
                .prompt_logprobs
                .unwrap_or(0)
                .max(logprobs.unwrap_or(0));
            params.prompt_logprobs = Some(k);
        }
        let tokens = prepared.request.prompt.clone();
        let text = text.unwrap_or_else(|| {
            state
                .engine
                .tokenizer()
                .and_then(|t| t.decode(&tokens).ok())
                .unwrap_or_default()
        });
        prepared.echo = Some(Echo { text, tokens });
    }
    Ok(prepared)
}

/// The model name, and the OpenAI parameters this server refuses unless they are neutral.
/// A 404 for a model name this server does not serve (none named: this one).
pub(crate) fn check_model(state: &AppState, name: Option<&str>) -> Result<(), ApiError> {
    match name {
        Some(name) if name != state.config.model_name => Err(ApiError::model_not_found(name)),
        _ => Ok(()),
    }
}

fn check_common(state: &AppState, c: &CommonRequest) -> Result<(), ApiError> {
    check_model(state, c.model.as_deref())?;
    if let Some(best_of) = c.best_of {
        if best_of != c.n.unwrap_or(1) {
            return Err(ApiError::unsupported("best_of", "best_of other than n"));
        }
    }
    Ok(())
}

/// The engine request: sampling (request values over the server's defaults), stops, budget.
fn build(
    state: &AppState,
    c: CommonRequest,
    prompt: Vec<u32>,
    max_tokens: Option<u64>,
    logprobs: Option<usize>,
) -> Result<Prepared, ApiError> {
    let d = state.config.sampling;
    let top_k = match c.top_k {
        None => d.top_k,
        // vLLM: -1 (and 0) turn top-k off.
        Some(k) if (-1..=0).contains(&k) => 0,
        Some(k) if k > 0 => to_usize("top_k", k as u64)?,
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("top_k must be -1, 0 (off) or positive, got {k}"),
            ))
        }
    };
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(d.temperature),
        top_p: c.top_p.unwrap_or(d.top_p),
        top_k,
        // No seed: a fresh one, so repeated requests differ as OpenAI's do.
        seed: c.seed.map_or_else(rand::random, |s| s as u64),
    };
    let structure = match structure(&c)? {
        // Compiled here, off the runtime (the first one also indexes the vocabulary), so
        // that the error names the parameter the client used.
        Some((param, structure)) => {
            state
                .engine
                .check_structure(&structure)
                .map_err(|e| ApiError::invalid_param(param, e))?;
            Some(structure)
        }
        None => None,
    };
    let penalties = Penalties {
        presence: c.presence_penalty.unwrap_or(0.0),
        frequency: c.frequency_penalty.unwrap_or(0.0),
        repetition: c.repetition_penalty.unwrap_or(1.0),
        logit_bias: logit_bias(c.logit_bias.unwrap_or_default())?,
    };
    let n = to_usize("n", c.n.unwrap_or(1))?;
    let max_tokens = match max_tokens {
        Some(m) => to_usize("max_tokens", m)?,
        None => default_max_tokens(state, prompt.len(), n),
    };
    let stop_strings = c.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop_strings.iter().any(String::is_empty) {
        // Every text contains "": ending at once and never are both defensible readings.
        return Err(ApiError::invalid_param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    let mut stop_tokens = state.stop_tokens.clone();
    stop_tokens.extend(c.stop_token_ids.unwrap_or_default());
    let stream = c.stream.unwrap_or(false);
    let prompt_logprobs = match c.prompt_logprobs {
        None => None,
        Some(_) if stream => {
            return Err(ApiError::invalid_param(
                "prompt_logprobs",
                "prompt_logprobs is not available with stream (as in vLLM)",
            ))
        }
        // The response's weight is checked by the endpoint: completions repeat the scores
        // in every choice, chat gives them once.
        Some(k) => Some(logprob_count("prompt_logprobs", k)?),
    };
    let params = RequestParams {
        n,
        max_tokens,
        min_tokens: to_usize("min_tokens", c.min_tokens.unwrap_or(0))?,
        sampling,
        penalties,
        structure,
        structure_after: None,
        stop_tokens,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        stop_strings,
        logprobs,
        prompt_logprobs,
    };
    let prompt_scores = prompt_logprobs.map(|k| (k, prompt.clone()));
    Ok(Prepared {
        request: Request { prompt, params },
        stream,
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        return_token_ids: c.return_token_ids.unwrap_or(false),
        thinking: false,
        tool_calls: None,
        echo: None,
        prompt_scores,
    })
}

/// Without `max_tokens`: the server's default, cut to what the context and the whole cache
/// budget leave for `n` samples (at least 1, so that a prompt too long for either gets the
/// engine's message).
fn default_max_tokens(state: &AppState, prompt: usize, n: usize) -> usize {
    let ctx_room = state
        .engine
        .max_context()
        .map_or(usize::MAX, |ctx| ctx.saturating_sub(prompt));
    // The engine reserves ceil((prompt + max) / page) pages per sample, the prompt's full
    // pages once: w + (n - 1)(w - shared) <= total pages.
    let cfg = state.engine.config();
    let (page, n) = (cfg.page_tokens, n.max(1));
    let shared = prompt / page;
    let per_sample = (cfg.total_pages() + (n - 1) * shared) / n;
    let cache_room = (per_sample * page).saturating_sub(prompt);
    state
        .config
        .default_max_tokens
        .min(ctx_room)
        .min(cache_room)
        .max(1)
}

/// What the output must be: OpenAI's `response_format`, or one of vLLM's `guided_json`,
/// `guided_regex`, `guided_choice`, `guided_grammar` (llguidance's Lark syntax; at most one
/// of them all), and the parameter it came from.
fn structure(c: &CommonRequest) -> Result<Option<(&'static str, Structure)>, ApiError> {
    let format = match &c.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(("response_format", Structure::JsonObject)),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.clone().ok_or_else(|| {
                ApiError::invalid_param(
                    "response_format.json_schema.schema",
                    "a json_schema response format needs its schema",
                )
            })?;
            Some(("response_format", Structure::JsonSchema(schema)))
        }
    };
    let given: Vec<(&'static str, Structure)> = [
        format,
        c.guided_json
            .clone()
            .map(|s| ("guided_json", Structure::JsonSchema(s))),
        c.guided_regex
            .clone()
            .map(|r| ("guided_regex", Structure::Regex(r))),
        c.guided_choice
            .clone()
            .map(|v| ("guided_choice", Structure::Choice(v))),
        c.guided_grammar
            .clone()
            .map(|g| ("guided_grammar", Structure::Lark(g))),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.as_slice() {
        [] => Ok(None),
        [(param, structure)] => Ok(Some((param, structure.clone()))),
        [_, (second, _), ..] => Err(ApiError::invalid_param(
            second,
            format!(
                "one output structure per request: {} are all given",
                given.iter().map(|g| g.0).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// OpenAI's `logit_bias`, token ids (as JSON object keys) to numbers; the engine checks the
/// ids against the vocabulary and the values' range.
fn logit_bias(map: BTreeMap<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    map.into_iter()
        .map(|(key, value)| {
            let token = key.trim().parse::<u32>().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias keys must be token ids, got {key:?}"),
                )
            })?;
            let bias = value.as_f64().ok_or_else(|| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias values must be numbers, got {value} for token {token}"),
                )
            })?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// A count from the request, at most `u32::MAX`: far beyond any context, and small enough
/// that the engine's token and page arithmetic cannot overflow.
fn to_usize(param: &str, v: u64) -> Result<usize, ApiError> {
    u32::try_from(v).map(|v| v as usize).map_err(|_| {
        ApiError::invalid_param(
            param,
            format!("{param} must be at most {}, got {v}", u32::MAX),
        )
    })
}

fn logprob_count(param: &str, k: u64) -> Result<usize, ApiError> {
    if k > MAX_LOGPROBS {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} must be at most {MAX_LOGPROBS}, got {k}"),
        ));
    }
    to_usize(param, k)
}

pub(crate) fn tokenizer<'a>(
    state: &'a AppState,
    param: &str,
    why: &str,
) -> Result<&'a Tokenizer, ApiError> {
    state
        .engine
        .tokenizer()
        .ok_or_else(|| ApiError::invalid_param(param, format!("{why}, and this server has none")))
}

pub(crate) fn encode(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    tokenizer(
        state,
        "prompt",
        "text prompts need a tokenizer (send token ids instead)",
    )?
    .encode(text)
    .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))
}

/// A call from an earlier assistant turn, as templates render it (`arguments` as JSON text).
fn past_call(param: &str, call: ToolCallIn) -> Result<ToolCall, ApiError> {
    if call.kind.as_deref().is_some_and(|k| k != "function") {
        return Err(ApiError::invalid_param(
            &format!("{param}.type"),
            "tool calls are of type function",
        ));
    }
    let arguments = match call.function.arguments {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(ToolCall {
        id: call.id.unwrap_or_default(),
        kind: "function".into(),
        function: FunctionCall {
            name: call.function.name,
            arguments,
        },
    })
}

/// Conversation messages for the template: text parts only, and the calls of earlier
/// assistant turns.
fn messages(input: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    if input.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                "tool" => "tool",
                other => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.role"),
                        format!(
                            "role `{other}` is not supported (system, developer, user, \
                             assistant, tool)"
                        ),
                    ))
                }
            };
            let tool_calls = m.tool_calls.unwrap_or_default();
            if !tool_calls.is_empty() && role != "assistant" {
                return Err(ApiError::invalid_param(
                    &format!("{param}.tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
            let tool_calls = tool_calls
                .into_iter()
                .enumerate()
                .map(|(j, call)| past_call(&format!("{param}.tool_calls[{j}]"), call))
                .collect::<Result<Vec<_>, _>>()?;
            let content = match m.content {
                // OpenAI allows a null content only beside tool calls.
                None if !tool_calls.is_empty() => None,
                None => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.content"),
                        "content must be a string or an array of content parts, not null",
                    ))
                }
                Some(Content::Text(t)) => Some(t),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(ApiError::unsupported(
                                    &format!("{param}.content[{j}]"),
                                    "content other than text",
                                ))
                            }
                        }
                    }
                    Some(text)
                }
            };
            Ok(Message {
                role: role.to_string(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id,
            })
        })
        .collect()
}
