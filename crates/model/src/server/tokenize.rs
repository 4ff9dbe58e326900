//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes (SGLang's are the same): how
//! clients count a prompt's tokens, check it against the context, or see what a chat
//! request's template makes of a conversation before sending it.
//!
//! `/tokenize` takes either `prompt` (text, encoded as `/v1/completions` encodes it: with BOS
//! unless `add_special_tokens` is false) or `messages` (with `tools`, `add_generation_prompt`,
//! `continue_final_message`, `chat_template_kwargs`: exactly the prompt
//! `/v1/chat/completions` would run, R1's `<think>\n` prefill included; `add_special_tokens`
//! true encodes the render with BOS added again, as vLLM does). It answers
//! `{"count", "max_model_len", "tokens", "token_strs"}`; `token_strs` (with
//! `return_token_strs`) are the tokens' texts, decoded one by one as in `logprobs`.
//! `/detokenize` takes `tokens` and answers `{"prompt"}`, special tokens kept.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{parse, JsonBody};
use super::logprobs::token_text;
use super::openai::ChatMessage;
use super::params::{self, check_model, ToolUse};
use super::state::AppState;

/// `/tokenize`'s fields beside [`TemplateFields`].
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    tools: Option<Vec<Value>>,
    add_special_tokens: Option<bool>,
    return_token_strs: Option<bool>,
}

/// `/tokenize`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct Tokenized {
    count: usize,
    max_model_len: Option<usize>,
    tokens: Vec<u32>,
    token_strs: Option<Vec<String>>,
}

/// `/detokenize`'s request.
#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

/// `/detokenize`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct Detokenized {
    pub prompt: String,
}

/// `POST /tokenize`.
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Tokenized>, ApiError> {
    params::off_the_runtime(move || {
        let req: TokenizeRequest = parse(&body)?;
        check_model(&state, req.model.as_deref())?;
        let tokens = match (req.prompt, req.messages) {
            (Some(prompt), None) => match req.add_special_tokens {
                Some(false) => params::tokenizer(&state, "prompt", "tokenizing needs a tokenizer")?
                    .encode_plain(&prompt)
                    .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
                _ => params::encode(&state, &prompt)?,
            },
            (None, Some(messages)) => {
                let ToolUse { tools, .. } = params::tools(req.tools, None, None)?;
                let (text, _) =
                    params::chat_text(&state, messages, tools.as_deref(), parse(&body)?)?;
                match req.add_special_tokens {
                    Some(true) => params::encode(&state, &text)?,
                    _ => params::encode_chat(&state, &text)?,
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "send either `prompt` (text) or `messages` (a conversation)",
                ))
            }
        };
        let tokenizer = state.engine.tokenizer();
        let token_strs = (req.return_token_strs == Some(true))
            .then(|| tokens.iter().map(|&t| token_text(tokenizer, t)).collect());
        Ok(Tokenized {
            count: tokens.len(),
            max_model_len: state.engine.max_context(),
            tokens,
            token_strs,
        })
    })
    .await
    .map(Json)
}

/// `POST /detokenize`.
pub(crate) async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Detokenized>, ApiError> {
    params::off_the_runtime(move || {
        let req: DetokenizeRequest = parse(&body)?;
        check_model(&state, req.model.as_deref())?;
        let tokenizer = params::tokenizer(&state, "tokens", "detokenizing needs a tokenizer")?;
        let vocab = tokenizer.vocab_size();
        if let Some(i) = req.tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(ApiError::invalid_param(
                &format!("tokens[{i}]"),
                format!(
                    "token id {} is outside the tokenizer's {vocab} tokens",
                    req.tokens[i]
                ),
            ));
        }
        let prompt = tokenizer
            .decode(&req.tokens)
            .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))?;
        Ok(Detokenized { prompt })
    })
    .await
    .map(Json)
}
