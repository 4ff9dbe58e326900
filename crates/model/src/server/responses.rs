//! `POST /v1/responses`: OpenAI's Responses API (what the `openai` clients' `responses.create`
//! / `responses.stream` / `responses.parse` and agent frameworks built on them send), over the
//! same chat template, engine and reply reading as chat completions.
//!
//! A request becomes a chat request: `instructions` the system message; `input` a string (one
//! user message) or items: messages (text parts), `function_call` items (an assistant turn's
//! calls) and `function_call_output` items (tool messages); `reasoning` items are dropped,
//! as R1's template drops the reasoning of earlier turns. Function `tools` take the chat
//! shape, `text.format` becomes `response_format`, `max_output_tokens` the budget, and
//! `tool_choice`, `parallel_tool_calls`, sampling and vLLM's extra fields carry over.
//!
//! The reply becomes output items: a `reasoning` item (R1's reasoning, with the split on), a
//! `message` with one `output_text`, and a `function_call` per call; `status` is `incomplete`
//! (`max_output_tokens`) when the budget ran out. Streamed, the events are OpenAI's:
//! `response.created`, `response.in_progress`, then per item `response.output_item.added`,
//! `response.content_part.added`, the text deltas (`response.reasoning_text.delta`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`), their `.done`
//! events and `response.output_item.done`, and `response.completed` (or
//! `response.incomplete`) with the whole response, each with its `sequence_number`.
//!
//! Nothing is stored: `previous_response_id`, `conversation` and `background` are refused
//! (send the whole conversation as `input`), `store` is answered as `false`. Features of the
//! API beyond text and functions (built-in tools, images, files, `top_logprobs`) are refused
//! with a 400 naming the field.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::extract::{parse, JsonBody};
use super::generation::Submission;
use super::openai::Usage;
use super::params::{self, Prepared};
use super::reply::{Piece, ReplyReader};
use super::sse::{self, Render};
use super::state::{unix_now, AppState};
use crate::engine::Event;
use crate::generate::FinishReason;

/// Fields carried over to the chat request as they are (sampling and vLLM's extensions).
const CARRIED: [&str; 13] = [
    "model",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "min_tokens",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "chat_template_kwargs",
];

/// Fields of the API that this server refuses rather than ignores, and why.
const REFUSED: [(&str, &str); 5] = [
    (
        "previous_response_id",
        "stored responses (this server stores none: send the whole conversation as `input`)",
    ),
    (
        "conversation",
        "stored conversations (send the whole conversation as `input`)",
    ),
    ("background", "background responses"),
    ("top_logprobs", "top_logprobs in the Responses API"),
    ("max_tool_calls", "max_tool_calls"),
];

/// The handler.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (prepared, echo) = {
        let state = state.clone();
        params::off_the_runtime(move || {
            let (chat, echo) = chat_request(&body)?;
            let prepared = params::chat(&state, parse(&chat)?, parse(&chat)?, parse(&chat)?)
                .map_err(renamed)?;
            Ok((prepared, echo))
        })
        .await?
    };
    let stream = prepared.stream;
    let builder = Builder::new(&state, &prepared, echo);
    let submission = Submission::start(&state, prepared.request).map_err(renamed)?;
    if stream {
        let render = ResponseStream {
            builder,
            prompt_tokens: submission.prompt_tokens,
        };
        return Ok(sse::respond(vec![submission], render, false));
    }
    let mut builder = builder;
    let mut submission = submission;
    let prompt_tokens = submission.prompt_tokens;
    while let Some(event) = submission.next().await {
        builder.event(event?, prompt_tokens);
    }
    Ok(Json(builder.response).into_response())
}

/// The chat parameter names of an error, as the Responses API names them.
fn renamed(e: ApiError) -> ApiError {
    e.with_param_renamed("messages", "input")
        .with_param_renamed("prompt", "input")
        .with_param_renamed("max_completion_tokens", "max_output_tokens")
        .with_param_renamed("max_tokens", "max_output_tokens")
        .with_param_renamed("response_format", "text.format")
}

/// The request as a chat completions body, and the fields the response repeats.
fn chat_request(body: &Value) -> Result<(Value, Value), ApiError> {
    for (field, what) in REFUSED {
        // Null, false and 0 ask for nothing.
        let unset = |v: &Value| v.is_null() || *v == false || *v == 0;
        if !body.get(field).is_none_or(unset) {
            return Err(ApiError::unsupported(field, what));
        }
    }
    let mut chat = Map::new();
    for field in CARRIED {
        if let Some(v) = body.get(field) {
            chat.insert(field.to_string(), v.clone());
        }
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "instructions",
                "instructions must be a string",
            ))
        }
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "input must be a string or an array of items",
            ))
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(n) = body.get("max_output_tokens") {
        chat.insert("max_completion_tokens".into(), n.clone());
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        chat.insert("tools".into(), function_tools(tools)?);
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        chat.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(p) = body.get("parallel_tool_calls") {
        chat.insert("parallel_tool_calls".into(), p.clone());
    }
    if let Some(format) = body.pointer("/text/format").filter(|f| !f.is_null()) {
        chat.insert("response_format".into(), response_format(format)?);
    }
    chat.insert(
        "stream".into(),
        body.get("stream").cloned().unwrap_or(json!(false)),
    );
    let echo = json!({
        "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": body.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "parallel_tool_calls": body.get("parallel_tool_calls").cloned().unwrap_or(json!(true)),
        "text": body.get("text").cloned().unwrap_or(json!({"format": {"type": "text"}})),
        "tool_choice": body.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": body.get("tools").cloned().unwrap_or(json!([])),
        "user": body.get("user").cloned().unwrap_or(Value::Null),
    });
    Ok((Value::Object(chat), echo))
}

/// `input` items as chat messages.
fn input_items(items: &[Value], messages: &mut Vec<Value>) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let bad = |field: &str, why: &str| ApiError::invalid_param(&format!("{param}{field}"), why);
        let kind = match item.get("type") {
            Some(Value::String(t)) => t.as_str(),
            None if item.get("role").is_some() => "message",
            _ => return Err(bad("", "an input item needs a `type` (or a `role`)")),
        };
        match kind {
            "message" => {
                let role = match item["role"].as_str() {
                    Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
                    _ => {
                        return Err(bad(
                            ".role",
                            "role must be user, system, developer or assistant",
                        ))
                    }
                };
                let content = message_text(&item["content"])
                    .map_err(|(at, why)| bad(&format!(".content{at}"), &why))?;
                messages.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (item["call_id"].as_str(), item["name"].as_str())
                else {
                    return Err(bad("", "a function_call needs `call_id` and `name`"));
                };
                // Arguments are JSON text; an object is taken too and written out.
                let arguments = match &item["arguments"] {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        return Err(bad(".arguments", "a function_call needs `arguments`"))
                    }
                    other => other.to_string(),
                };
                let call = json!({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}});
                // Consecutive calls are one assistant turn.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let Some(call_id) = item["call_id"].as_str() else {
                    return Err(bad(".call_id", "a function_call_output needs `call_id`"));
                };
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    parts @ Value::Array(_) => message_text(parts)
                        .map_err(|(at, why)| bad(&format!(".output{at}"), &why))?,
                    _ => return Err(bad(".output", "output must be a string or text parts")),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Earlier reasoning: R1's template drops it from the prompt anyway.
            "reasoning" => {}
            other => {
                return Err(bad(
                    ".type",
                    &format!(
                        "input items of type `{other}` are not supported (message, \
                         function_call, function_call_output, reasoning)"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// A message's text: a string, or its text parts joined; an error names the part.
fn message_text(content: &Value) -> Result<String, (String, String)> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err((
                            format!("[{j}]"),
                            "only text parts (input_text, output_text) are supported".into(),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err((String::new(), "content must be a string or parts".into())),
    }
}

/// Responses-shaped function tools (`{"type": "function", "name", "parameters", ...}`) in
/// the chat shape (`{"type": "function", "function": {...}}`).
fn function_tools(tools: &Value) -> Result<Value, ApiError> {
    let Some(list) = tools.as_array() else {
        return Err(ApiError::invalid_param("tools", "tools must be an array"));
    };
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool["type"] != "function" {
                return Err(ApiError::invalid_param(
                    &format!("tools[{i}]"),
                    "only function tools are supported (no built-in tools)",
                ));
            }
            let mut function = tool.as_object().cloned().unwrap_or_default();
            function.remove("type");
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// `tool_choice` in the chat shape.
fn tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(_) => Ok(choice.clone()),
        Value::Object(o) if o.get("type") == Some(&json!("function")) => {
            let name = o.get("name").cloned().unwrap_or(Value::Null);
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::invalid_param(
            "tool_choice",
            "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \
             \"name\": ...}",
        )),
    }
}

/// `text.format` as a chat `response_format`.
fn response_format(format: &Value) -> Result<Value, ApiError> {
    match format["type"].as_str() {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => Ok(json!({"type": "json_schema", "json_schema": {
            "name": format["name"], "schema": format["schema"], "strict": format["strict"]}})),
        _ => Err(ApiError::invalid_param(
            "text.format",
            "text.format.type must be text, json_object or json_schema",
        )),
    }
}

/// A fresh id: `prefix_` and 24 hex digits.
fn fresh_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}

/// The item being written.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Builds a response from the reply's events: the stream's events as it goes, and the
/// whole response (with `output`, `status` and `usage`) at the end.
struct Builder {
    reader: ReplyReader,
    response: Value,
    open: Option<Open>,
    /// Finished output items.
    items: Vec<Value>,
    sequence: u64,
    /// Tokens before the reply's content started (the reasoning, with the split on).
    reasoning_tokens: usize,
    content_started: bool,
}

impl Builder {
    fn new(state: &AppState, prepared: &Prepared, echo: Value) -> Self {
        let mut response = json!({
            "id": fresh_id("resp"),
            "object": "response",
            "created_at": unix_now(),
            "status": "in_progress",
            "error": null,
            "incomplete_details": null,
            "model": state.config.model_name,
            "output": [],
            "store": false,
            "truncation": "disabled",
            "temperature": prepared.request.params.sampling.temperature,
            "top_p": prepared.request.params.sampling.top_p,
            "usage": null,
        });
        if let (Some(r), Value::Object(e)) = (response.as_object_mut(), echo) {
            r.extend(e);
        }
        Self {
            reader: ReplyReader::new(prepared.thinking, prepared.tool_calls),
            response,
            open: None,
            items: Vec::new(),
            sequence: 0,
            reasoning_tokens: 0,
            content_started: !prepared.thinking,
        }
    }

    /// An event of type `kind` with `fields`, numbered.
    fn emit(&mut self, out: &mut Vec<Value>, kind: &str, fields: Value) {
        let mut event = json!({"type": kind, "sequence_number": self.sequence});
        if let (Some(e), Value::Object(f)) = (event.as_object_mut(), fields) {
            e.extend(f);
        }
        self.sequence += 1;
        out.push(event);
    }

    /// The opening events (`response.created`, `response.in_progress`).
    fn start(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let response = self.response.clone();
        self.emit(&mut out, "response.created", json!({"response": response}));
        let response = self.response.clone();
        self.emit(
            &mut out,
            "response.in_progress",
            json!({"response": response}),
        );
        out
    }

    /// The events for an engine event (`prompt_tokens` for the final usage).
    fn event(&mut self, event: Event, prompt_tokens: usize) -> Vec<Value> {
        let mut out = Vec::new();
        match event {
            Event::Token { text, .. } => {
                if !self.content_started {
                    self.reasoning_tokens += 1;
                }
                let piece = self.reader.push(&text);
                self.write(&mut out, piece);
            }
            Event::Finished {
                reason,
                completion_tokens,
                cached_tokens,
                text,
                ..
            } => {
                let piece = self.reader.finish(&text);
                let called = !piece.calls.is_empty();
                self.write(&mut out, piece);
                // Text cut off by the budget is incomplete (a reply whose calls were read
                // is not: see `end`).
                let cut = reason == FinishReason::MaxTokens && !called;
                self.close(&mut out, if cut { "incomplete" } else { "completed" });
                if !called {
                    // A section that streamed as calls but did not parse came back as
                    // content: the response keeps that, not the calls.
                    self.items.retain(|i| i["type"] != "function_call");
                }
                self.end(
                    &mut out,
                    reason,
                    Usage::new(prompt_tokens, completion_tokens, cached_tokens),
                );
            }
            Event::Prompt { .. } | Event::Error(_) => {}
        }
        out
    }

    /// Writes a piece: reasoning, content, then the calls' progress.
    fn write(&mut self, out: &mut Vec<Value>, piece: Piece) {
        if !piece.reasoning.is_empty() {
            if !matches!(self.open, Some(Open::Reasoning { .. })) {
                self.close(out, "completed");
                let id = fresh_id("rs");
                let item = json!({"type": "reasoning", "id": id, "summary": [], "content": [],
                    "status": "in_progress"});
                self.added(
                    out,
                    item,
                    Some(json!({"type": "reasoning_text", "text": ""})),
                    &id,
                );
                self.open = Some(Open::Reasoning {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Reasoning { id, text }) = &mut self.open {
                text.push_str(&piece.reasoning);
                let fields = json!({"item_id": id, "output_index": self.items.len(),
                    "content_index": 0, "delta": piece.reasoning});
                self.emit(out, "response.reasoning_text.delta", fields);
            }
        }
        if !piece.content.is_empty() {
            self.content_started = true;
            if !matches!(self.open, Some(Open::Message { .. })) {
                self.close(out, "completed");
                let id = fresh_id("msg");
                let item = json!({"type": "message", "id": id, "role": "assistant",
                    "status": "in_progress", "content": []});
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                self.added(out, item, Some(part), &id);
                self.open = Some(Open::Message {
                    id,
                    text: String::new(),
                });
            }
            if let Some(Open::Message { id, text }) = &mut self.open {
                text.push_str(&piece.content);
                let fields = json!({"item_id": id, "output_index": self.items.len(),
                    "content_index": 0, "delta": piece.content, "logprobs": []});
                self.emit(out, "response.output_text.delta", fields);
            }
        }
        for delta in piece.deltas {
            if let Some(name) = delta.name {
                // A new call: the item before it is done.
                self.close(out, "completed");
                let (id, call_id) = (fresh_id("fc"), fresh_id("call"));
                let item = json!({"type": "function_call", "id": id, "call_id": call_id,
                    "name": name, "arguments": "", "status": "in_progress"});
                self.added(out, item, None, &id);
                self.open = Some(Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            if delta.arguments.is_empty() {
                continue;
            }
            if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
                arguments.push_str(&delta.arguments);
                let fields = json!({"item_id": id, "output_index": self.items.len(),
                    "delta": delta.arguments});
                self.emit(out, "response.function_call_arguments.delta", fields);
            }
        }
    }

    /// `response.output_item.added`, and `response.content_part.added` for an item with
    /// content, for a new item.
    fn added(&mut self, out: &mut Vec<Value>, item: Value, part: Option<Value>, id: &str) {
        let index = self.items.len();
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        if let Some(part) = part {
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            );
        }
    }

    /// Ends the open item with `status`: its `.done` events, and it joins the output.
    fn close(&mut self, out: &mut Vec<Value>, status: &str) {
        let index = self.items.len();
        let (item, part) = match self.open.take() {
            None => return,
            Some(Open::Reasoning { id, text }) => {
                let part = json!({"type": "reasoning_text", "text": text});
                let fields = json!({"item_id": id, "output_index": index, "content_index": 0,
                    "text": text});
                self.emit(out, "response.reasoning_text.done", fields);
                let item = json!({"type": "reasoning", "id": id, "summary": [],
                    "content": [part], "status": status});
                (item, Some(part))
            }
            Some(Open::Message { id, text }) => {
                let part = json!({"type": "output_text", "text": text, "annotations": [],
                    "logprobs": []});
                let fields = json!({"item_id": id, "output_index": index, "content_index": 0,
                    "text": text, "logprobs": []});
                self.emit(out, "response.output_text.done", fields);
                let item = json!({"type": "message", "id": id, "role": "assistant",
                    "status": status, "content": [part]});
                (item, Some(part))
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                let fields = json!({"item_id": id, "output_index": index, "name": name,
                    "arguments": arguments});
                self.emit(out, "response.function_call_arguments.done", fields);
                let item = json!({"type": "function_call", "id": id, "call_id": call_id,
                    "name": name, "arguments": arguments, "status": "completed"});
                (item, None)
            }
        };
        if let Some(part) = part {
            let id = item["id"].clone();
            self.emit(
                out,
                "response.content_part.done",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            );
        }
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.items.push(item);
    }

    /// The whole response, and its final event.
    fn end(&mut self, out: &mut Vec<Value>, reason: FinishReason, usage: Usage) {
        // A reply whose calls were read is complete, as chat's `finish_reason` is then
        // `tool_calls`.
        let called = self.items.iter().any(|i| i["type"] == "function_call");
        let incomplete = reason == FinishReason::MaxTokens && !called;
        let reasoning_tokens = if self.content_started {
            self.reasoning_tokens
        } else {
            usage.completion_tokens
        };
        let fields = json!({
            "status": if incomplete { "incomplete" } else { "completed" },
            "incomplete_details": if incomplete {
                json!({"reason": "max_output_tokens"})
            } else {
                Value::Null
            },
            "completed_at": (!incomplete).then(unix_now),
            "output": self.items,
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {
                    "cached_tokens": usage.prompt_tokens_details.cached_tokens,
                },
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": usage.total_tokens,
            },
        });
        if let (Some(r), Value::Object(f)) = (self.response.as_object_mut(), fields) {
            r.extend(f);
        }
        let kind = if incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let response = self.response.clone();
        self.emit(out, kind, json!({"response": response}));
    }
}

/// Renders a response stream: each event as `event: TYPE` and `data: JSON`.
struct ResponseStream {
    builder: Builder,
    prompt_tokens: usize,
}

fn frames(events: Vec<Value>) -> Option<Bytes> {
    if events.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e["type"].as_str().unwrap_or_default().as_bytes());
        out.extend_from_slice(b"\n");
        out.extend_from_slice(&sse::frame(&e));
    }
    Some(out.into())
}

impl Render for ResponseStream {
    fn start(&mut self) -> Vec<Bytes> {
        frames(self.builder.start()).into_iter().collect()
    }

    fn event(&mut self, _: usize, event: Event) -> Option<Bytes> {
        frames(self.builder.event(event, self.prompt_tokens))
    }

    fn usage(&mut self, _: Usage) -> Bytes {
        // The usage is in `response.completed`.
        Bytes::new()
    }
}
