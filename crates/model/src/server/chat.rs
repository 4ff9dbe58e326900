//! `POST /v1/chat/completions`: whole responses (`chat.completion`) and streams
//! (`chat.completion.chunk`), with the R1 reasoning split when the reply starts inside
//! `<think>` (see [`super::reasoning`]) and, when the request has tools, DeepSeek's tool
//! calls read into `tool_calls` (see [`super::tool_calls`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::{parse, JsonBody};
use super::generation::{finish_reason, Collected, Sample, Submission};
use super::logprobs::{self, chat_entry};
use super::openai::{
    ChatChoice, ChatLogprobs, ChatOutput, FunctionOut, Header, ToolCallOut, Usage,
};
use super::reply::{read_whole, Piece, ReplyReader};
use super::sse::{self, frame, Render};
use super::state::AppState;
use super::tool_calls::{CallDelta, Calls};
use super::{params, response_header};
use crate::engine::{Engine, Event};
use crate::tokenizer::FunctionCall;

type ChatResponse = super::openai::Response<ChatChoice>;

/// The handler.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let prepared = {
        let state = state.clone();
        params::off_the_runtime(move || {
            params::chat(&state, parse(&body)?, parse(&body)?, parse(&body)?)
        })
        .await?
    };
    // The engine names the token prompt; here it was built from `messages`.
    let submission = Submission::start(&state, prepared.request)
        .map_err(|e| e.with_param_renamed("prompt", "messages"))?;
    let header = response_header(&state, "chatcmpl", "chat.completion");
    let reasoning = prepared.thinking;
    let tools = prepared.tool_calls;
    if !prepared.stream {
        let Collected {
            samples,
            usage,
            prompt_logprobs,
        } = submission.collect().await?;
        let choices = samples
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                whole_choice(
                    &state.engine,
                    index,
                    s,
                    Reading { reasoning, tools },
                    prepared.return_token_ids,
                )
            })
            .collect();
        let prompt_logprobs = prepared.prompt_scores.map(|(k, tokens)| {
            logprobs::prompt_logprobs(state.engine.tokenizer(), &tokens, &prompt_logprobs, k)
        });
        let response = ChatResponse {
            header,
            choices,
            usage: Some(Some(usage)),
            prompt_logprobs,
        };
        return Ok(Json(response).into_response());
    }
    let render = ChatStream {
        engine: state.engine.clone(),
        header: Header {
            object: "chat.completion.chunk",
            ..header
        },
        readers: (0..submission.n)
            .map(|_| ReplyReader::new(reasoning, tools))
            .collect(),
        include_usage: prepared.include_usage,
        return_token_ids: prepared.return_token_ids,
    };
    Ok(sse::respond(
        vec![submission],
        render,
        prepared.include_usage,
    ))
}

/// How a reply is read: the R1 reasoning split, tool calls.
#[derive(Clone, Copy)]
struct Reading {
    reasoning: bool,
    tools: Option<Calls>,
}

/// A finished sample as a response choice.
fn whole_choice(
    engine: &Engine,
    index: usize,
    s: Sample,
    reading: Reading,
    return_token_ids: bool,
) -> ChatChoice {
    let (reasoning, content, calls) = read_whole(&s.text, reading.reasoning, reading.tools);
    let tool_calls = calls_out(calls);
    let finish_reason = match (&tool_calls, s.finish) {
        (Some(_), Some(_)) => Some("tool_calls"),
        (_, finish) => finish.map(finish_reason),
    };
    let message = ChatOutput {
        role: Some("assistant"),
        content: Some(content),
        reasoning_content: reasoning,
        tool_calls,
    };
    let logprobs = (!s.logprobs.is_empty()).then(|| ChatLogprobs {
        content: s
            .logprobs
            .iter()
            .map(|x| chat_entry(engine.tokenizer(), x.token, &x.logprob))
            .collect(),
    });
    ChatChoice {
        index,
        message: Some(message),
        delta: None,
        logprobs,
        finish_reason,
        token_ids: return_token_ids.then_some(s.tokens),
    }
}

/// A fresh call id.
fn call_id() -> String {
    format!("call_{:016x}", rand::random::<u64>())
}

/// A whole reply's calls in OpenAI's shape, each with a fresh id; `None` when there are none.
fn calls_out(calls: Vec<FunctionCall>) -> Option<Vec<ToolCallOut>> {
    let out: Vec<ToolCallOut> = calls
        .into_iter()
        .map(|f| ToolCallOut {
            index: None,
            id: Some(call_id()),
            kind: Some("function"),
            function: FunctionOut {
                name: Some(f.name),
                arguments: f.arguments,
            },
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Calls' progress as stream delta pieces: a call's first piece carries its fresh id, type
/// and name.
fn call_deltas(deltas: Vec<CallDelta>) -> Option<Vec<ToolCallOut>> {
    let out: Vec<ToolCallOut> = deltas
        .into_iter()
        .map(|d| {
            let first = d.name.is_some();
            ToolCallOut {
                index: Some(d.index),
                id: first.then(call_id),
                kind: first.then_some("function"),
                function: FunctionOut {
                    name: d.name,
                    arguments: d.arguments,
                },
            }
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Renders a chat stream.
struct ChatStream {
    engine: Engine,
    header: Header,
    /// Per choice.
    readers: Vec<ReplyReader>,
    include_usage: bool,
    return_token_ids: bool,
}

impl ChatStream {
    fn chunk(&self, choices: Vec<ChatChoice>, usage: Option<Usage>) -> Bytes {
        frame(&ChatResponse {
            header: self.header.clone(),
            choices,
            // With include_usage every chunk carries `usage`, null until the last.
            usage: self.include_usage.then_some(usage),
            prompt_logprobs: None,
        })
    }

    /// The delta for a piece of choice `index`'s text (`last`: the reply ends, so held text
    /// and the rest of the calls go out), and whether the reply's calls were read (at the
    /// end).
    fn delta(&mut self, index: usize, text: &str, last: bool) -> (ChatOutput, bool) {
        let Piece {
            reasoning,
            content,
            deltas,
            calls,
        } = match self.readers.get_mut(index) {
            Some(reader) if last => reader.finish(text),
            Some(reader) => reader.push(text),
            None => Piece::default(),
        };
        let delta = ChatOutput {
            role: None,
            content: (!content.is_empty()).then_some(Some(content)),
            reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
            tool_calls: call_deltas(deltas),
        };
        (delta, !calls.is_empty())
    }
}

fn choice(index: usize, delta: ChatOutput) -> ChatChoice {
    ChatChoice {
        index,
        message: None,
        delta: Some(delta),
        logprobs: None,
        finish_reason: None,
        token_ids: None,
    }
}

impl Render for ChatStream {
    fn start(&mut self) -> Vec<Bytes> {
        (0..self.readers.len())
            .map(|index| {
                let delta = ChatOutput {
                    role: Some("assistant"),
                    content: Some(Some(String::new())),
                    ..ChatOutput::default()
                };
                self.chunk(vec![choice(index, delta)], None)
            })
            .collect()
    }

    fn event(&mut self, _: usize, event: Event) -> Option<Bytes> {
        let c = match event {
            Event::Token {
                sample,
                token,
                text,
                logprob,
            } => {
                let (delta, _) = self.delta(sample, &text, false);
                let logprobs = logprob.map(|lp| ChatLogprobs {
                    content: vec![chat_entry(self.engine.tokenizer(), token, &lp)],
                });
                if delta.content.is_none()
                    && delta.reasoning_content.is_none()
                    && delta.tool_calls.is_none()
                    && logprobs.is_none()
                    && !self.return_token_ids
                {
                    return None;
                }
                ChatChoice {
                    logprobs,
                    token_ids: self.return_token_ids.then(|| vec![token]),
                    ..choice(sample, delta)
                }
            }
            Event::Finished {
                sample,
                reason,
                text,
                ..
            } => {
                let (delta, called) = self.delta(sample, &text, true);
                let reason = if called {
                    "tool_calls"
                } else {
                    finish_reason(reason)
                };
                ChatChoice {
                    finish_reason: Some(reason),
                    ..choice(sample, delta)
                }
            }
            Event::Prompt { .. } | Event::Error(_) => return None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn usage(&mut self, usage: Usage) -> Bytes {
        self.chunk(vec![], Some(usage))
    }
}
