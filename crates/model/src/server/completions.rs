//! `POST /v1/completions`: a text or token-id prompt continued as is (`text_completion`,
//! whole or streamed). With `echo` each choice starts with the prompt, and with `logprobs`
//! too its tokens are scored (the first one `null`): how lm-evaluation-harness's
//! `local-completions` model computes log-likelihoods.

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
use super::params::{self, Echo};
use super::response_header;
use super::sse::{self, frame, Render};
use super::state::AppState;
use crate::engine::{Engine, Event, TokenLogprob};

type CompletionResponse = super::openai::Response<CompletionChoice>;

/// The handler.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let prepared = params::completion(&state, parse(&body)?, parse(&body)?)?;
    let wants_logprobs = prepared.request.params.logprobs.is_some();
    // Without prompt scores the echo needs nothing from the engine: it goes out first.
    let echo_at_start = prepared.request.params.prompt_logprobs.is_none();
    let submission = Submission::start(&state, prepared.request)?;
    let header = response_header(&state, "cmpl", "text_completion");
    let echo = prepared.echo;
    if !prepared.stream {
        let (samples, usage) = submission.collect().await?;
        let tokenizer = state.engine.tokenizer();
        let choices = samples
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                let generated =
                    wants_logprobs.then(|| logprobs::completion(tokenizer, &s.logprobs));
                let (text, logprobs) = match &echo {
                    None => (s.text, generated),
                    Some(e) => {
                        let prompt =
                            || logprobs::echoed_prompt(tokenizer, &e.tokens, &s.prompt_logprobs);
                        let lp = generated.map(|g| prompt().then(g, e.text.len()));
                        (format!("{}{}", e.text, s.text), lp)
                    }
                };
                CompletionChoice {
                    index,
                    logprobs,
                    finish_reason: s.finish.map(finish_reason),
                    token_ids: (prepared.return_token_ids || tokenizer.is_none())
                        .then_some(s.tokens),
                    text,
                }
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
        echo,
        echo_at_start,
        wants_logprobs,
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
    echo: Option<Echo>,
    /// The echo goes out before any event (no [`Event::Prompt`] is coming).
    echo_at_start: bool,
    wants_logprobs: bool,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Bytes {
        frame(&CompletionResponse {
            header: self.header.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    /// Each choice's echoed prompt (none without `echo`), scored by `scores` when the request
    /// asked for logprobs.
    fn echo_chunks(&mut self, scores: &[TokenLogprob]) -> Vec<Bytes> {
        let Some(echo) = self.echo.take() else {
            return vec![];
        };
        let tokenizer = self.engine.tokenizer();
        let logprobs = self
            .wants_logprobs
            .then(|| logprobs::echoed_prompt(tokenizer, &echo.tokens, scores));
        let chunks = (0..self.emitted.len()).map(|index| {
            self.chunk(
                vec![CompletionChoice {
                    index,
                    text: echo.text.clone(),
                    logprobs: logprobs.clone(),
                    finish_reason: None,
                    token_ids: None,
                }],
                None,
            )
        });
        let chunks = chunks.collect();
        for at in &mut self.emitted {
            *at += echo.text.len();
        }
        chunks
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
        match self.echo_at_start {
            true => self.echo_chunks(&[]),
            false => vec![],
        }
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
            Event::Prompt { logprobs } => return Some(self.echo_chunks(&logprobs).concat().into()),
            Event::Error(_) => return None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn usage(&mut self, usage: Usage) -> Bytes {
        self.chunk(vec![], Some(usage))
    }
}
