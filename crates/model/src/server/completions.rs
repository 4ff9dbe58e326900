//! `POST /v1/completions`: a text or token-id prompt continued as is (`text_completion`,
//! whole or streamed).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::extract::{parse, JsonBody};
use super::generation::{finish_reason, Scored, Submission};
use super::logprobs;
use super::openai::{CompletionChoice, Header, Usage};
use super::sse::{self, frame, Render};
use super::state::AppState;
use super::{params, response_header};
use crate::engine::{Engine, Event};

type CompletionResponse = super::openai::Response<CompletionChoice>;

/// The handler.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let prepared = params::completion(&state, parse(&body)?, parse(&body)?)?;
    let wants_logprobs = prepared.request.params.logprobs.is_some();
    let submission = Submission::start(&state, prepared.request)?;
    let header = response_header(&state, "cmpl", "text_completion");
    if !prepared.stream {
        let (samples, usage) = submission.collect().await?;
        let tokenizer = state.engine.tokenizer();
        let choices = samples
            .into_iter()
            .enumerate()
            .map(|(index, s)| CompletionChoice {
                index,
                logprobs: wants_logprobs.then(|| logprobs::completion(tokenizer, &s.logprobs)),
                finish_reason: s.finish.map(finish_reason),
                token_ids: (prepared.return_token_ids || tokenizer.is_none()).then_some(s.tokens),
                text: s.text,
            })
            .collect();
        let response = CompletionResponse {
            header,
            choices,
            usage: Some(Some(usage)),
        };
        return Ok(Json(response).into_response());
    }
    let render = CompletionStream {
        // Without a tokenizer the ids are the only output.
        return_token_ids: prepared.return_token_ids || state.engine.tokenizer().is_none(),
        engine: state.engine.clone(),
        header,
        emitted: vec![0; submission.n],
        include_usage: prepared.include_usage,
    };
    Ok(sse::respond(submission, render, prepared.include_usage))
}

/// Renders a completions stream.
struct CompletionStream {
    engine: Engine,
    header: Header,
    /// Bytes of text sent per choice (the next token's `text_offset`).
    emitted: Vec<usize>,
    include_usage: bool,
    return_token_ids: bool,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Bytes {
        frame(&CompletionResponse {
            header: self.header.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    /// Counts `text` as sent for choice `index`; returns the offset it starts at.
    fn advance(&mut self, index: usize, text: &str) -> usize {
        match self.emitted.get_mut(index) {
            Some(at) => {
                let start = *at;
                *at += text.len();
                start
            }
            None => 0,
        }
    }
}

impl Render for CompletionStream {
    fn start(&mut self) -> Vec<Bytes> {
        vec![]
    }

    fn event(&mut self, event: Event) -> Option<Bytes> {
        let c = match event {
            Event::Token {
                sample,
                token,
                text,
                logprob,
            } => {
                let offset = self.advance(sample, &text);
                if text.is_empty() && logprob.is_none() && !self.return_token_ids {
                    return None;
                }
                let logprobs = logprob.map(|logprob| {
                    let scored = Scored {
                        token,
                        logprob,
                        offset,
                    };
                    logprobs::completion(self.engine.tokenizer(), &[scored])
                });
                CompletionChoice {
                    index: sample,
                    text,
                    logprobs,
                    finish_reason: None,
                    token_ids: self.return_token_ids.then(|| vec![token]),
                }
            }
            Event::Finished {
                sample,
                reason,
                text,
                ..
            } => {
                self.advance(sample, &text);
                CompletionChoice {
                    index: sample,
                    text,
                    logprobs: None,
                    finish_reason: Some(finish_reason(reason)),
                    token_ids: None,
                }
            }
            Event::Error(_) => return None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn usage(&mut self, usage: Usage) -> Bytes {
        self.chunk(vec![], Some(usage))
    }
}
