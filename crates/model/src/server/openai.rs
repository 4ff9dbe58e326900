//! The JSON of OpenAI's chat and (legacy) completions APIs, with vLLM's extensions
//! (`top_k`, `min_tokens`, `ignore_eos`, `stop_token_ids`, `return_token_ids`,
//! `repetition_penalty`, `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`).
//!
//! Requests keep every field the server acts on, plus the ones it must refuse rather than
//! silently ignore (tools, response formats, `best_of`...): those are checked in
//! [`super::params`]. Unknown fields are ignored, as OpenAI's clients send extras. A body is
//! read twice from the same JSON value, as [`CommonRequest`] and as the endpoint's own
//! fields, rather than through `#[serde(flatten)]`, which would lose the field names in type
//! errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct CommonRequest {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub n: Option<u64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u64>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub return_token_ids: Option<bool>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, Value>>,
    // Structured outputs: OpenAI's, and vLLM's extensions.
    pub response_format: Option<ResponseFormat>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    // Refused unless equal to `n`.
    pub best_of: Option<u64>,
    // vLLM's: the prompt's tokens scored, with this many alternatives each.
    pub prompt_logprobs: Option<u64>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `response_format`: `{"type": "text" | "json_object"}` or `{"type": "json_schema",
/// "json_schema": {"name", "schema", "strict"}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// The `json_schema` of a `response_format` (its `name` and `strict` change nothing here:
/// output always follows the schema).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JsonSchemaFormat {
    pub schema: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`: the fields beside [`CommonRequest`]'s.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<Vec<Value>>,
}

/// How a chat request's conversation is rendered beside its messages and tools: vLLM's and
/// SGLang's chat-template extensions (chat completions and `/tokenize`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TemplateFields {
    pub add_generation_prompt: Option<bool>,
    pub continue_final_message: Option<bool>,
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// One message of a conversation.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
    pub tool_calls: Option<Vec<ToolCallIn>>,
    pub tool_call_id: Option<String>,
}

/// A past call in an assistant message.
#[derive(Debug, Deserialize)]
pub(crate) struct ToolCallIn {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionIn,
}

/// The function of a past call; `arguments` is JSON text in OpenAI's API (an object is
/// taken too and written out as JSON).
#[derive(Debug, Deserialize)]
pub(crate) struct FunctionIn {
    pub name: String,
    pub arguments: Value,
}

/// A call in a reply: `message.tool_calls[i]` (every field), or a stream delta's piece of
/// call `index` (its id, type and name on its first delta only, then pieces of arguments).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionOut,
}

/// The function of a [`ToolCallOut`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FunctionOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// Message content: a string, or parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message (`{"type": "text", "text": ...}`).
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/completions`: the fields beside [`CommonRequest`]'s.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub prompt: Prompt,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

/// `prompt`: text, token ids, or a batch of either.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string, an array of token ids, or an array of either"
)]
pub(crate) enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// `usage`, with OpenAI's `prompt_tokens_details.cached_tokens`: the prompt tokens the
/// engine's prefix cache supplied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }

    /// Every count summed (a batch of prompts).
    pub fn plus(self, other: Usage) -> Self {
        Self::new(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.prompt_tokens_details.cached_tokens + other.prompt_tokens_details.cached_tokens,
        )
    }
}

/// What every response and chunk starts with.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Header {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
}

/// A whole response (`chat.completion`, `text_completion`) or a stream chunk: the header,
/// the choices, and usage (`None`: absent; `Some(None)`: `null`, as chunks carry it while
/// `stream_options.include_usage` is on).
#[derive(Debug, Serialize)]
pub(crate) struct Response<C> {
    #[serde(flatten)]
    pub header: Header,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    /// vLLM's `prompt_logprobs` of a chat request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

/// vLLM's `prompt_logprobs`: per prompt token, `null` for the first, then by token id (as a
/// string) the prompt's token and the most likely alternatives.
pub(crate) type PromptLogprobs = Vec<Option<BTreeMap<String, PromptLogprob>>>;

/// One token of a [`PromptLogprobs`] entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PromptLogprob {
    pub logprob: f32,
    pub rank: usize,
    pub decoded_token: String,
}

/// A chat choice: `message` in a response, `delta` in a chunk.
#[derive(Debug, Serialize)]
pub(crate) struct ChatChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatOutput>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// A message or a delta. In a message `content` is always present (`null` when empty after
/// reasoning, as vLLM's reasoning parsers do); in a delta absent fields are left out.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ChatOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// Chat `logprobs`: one entry per generated token.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// A chosen token with its alternatives.
#[derive(Debug, Serialize)]
pub(crate) struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One alternative.
#[derive(Debug, Serialize)]
pub(crate) struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A completions choice (whole or chunk).
#[derive(Debug, Serialize)]
pub(crate) struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

/// The legacy completions `logprobs` object.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for an echoed prompt's first token (nothing precedes it).
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<usize>,
}

/// `GET /v1/models` entries.
#[derive(Debug, Serialize)]
pub(crate) struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}
