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
    let prepared = {
        let state = state.clone();
        params::off_the_runtime(move || params::completion(&state, parse(&body)?, parse(&body)?))
            .await?
    };
    // Every prompt of a batch has the same flags and parameters but its own tokens.
    let first = &prepared[0];
    let (stream, include_usage) = (first.stream, first.include_usage);
    let wants_logprobs = first.request.params.logprobs.is_some();
    let top = first.request.params.logprobs.unwrap_or(0);
    // Without prompt scores the echo needs nothing from the engine: it goes out first.
    let echo_at_start = first.request.params.prompt_logprobs.is_none();
    // Without a tokenizer the ids are the only output.
    let return_token_ids = first.return_token_ids || state.engine.tokenizer().is_none();
    let n = first.request.params.n;
    // A batch is refused whole before any of it runs. (Only a queue that fills between
    // these checks and the submissions refuses part of one; the submissions before it are
    // dropped, which cancels them.)
    for p in &prepared {
        state
            .engine
            .check(&p.request)
            .map_err(|e| ApiError::from_submit(e, state.config.retry_after_secs))?;
    }
    let mut echoes = Vec::with_capacity(prepared.len());
    let mut scored = Vec::with_capacity(prepared.len());
    let mut submissions = Vec::with_capacity(prepared.len());
    for p in prepared {
        echoes.push(p.echo);
        scored.push(p.prompt_scores);
        submissions.push(Submission::start(&state, p.request)?);
    }
    let header = response_header(&state, "cmpl", "text_completion");
    if !stream {
        let results =
            futures_util::future::try_join_all(submissions.into_iter().map(|s| s.collect()))
                .await?;
        let tokenizer = state.engine.tokenizer();
        let mut usage = Usage::default();
        let mut choices = Vec::with_capacity(results.len() * n);
        for ((done, echo), scored) in results.into_iter().zip(&echoes).zip(&scored) {
            usage = usage.plus(done.usage);
            // The echoed prompt's entries, once for all of its samples.
            let prompt = echo
                .as_ref()
                .filter(|_| wants_logprobs)
                .map(|e| logprobs::echoed_prompt(tokenizer, &e.tokens, &done.prompt_logprobs, top));
            let prompt_logprobs = scored.as_ref().map(|(k, tokens)| {
                logprobs::prompt_logprobs(tokenizer, tokens, &done.prompt_logprobs, *k)
            });
            for s in done.samples {
                let generated =
                    wants_logprobs.then(|| logprobs::completion(tokenizer, &s.logprobs));
                let (text, logprobs) = match echo {
                    None => (s.text, generated),
                    Some(e) => {
                        let lp = prompt
                            .clone()
                            .zip(generated)
                            .map(|(p, g)| p.then(g, e.text.len()));
                        (format!("{}{}", e.text, s.text), lp)
                    }
                };
                choices.push(CompletionChoice {
                    index: choices.len(),
                    logprobs,
                    finish_reason: s.finish.map(finish_reason),
                    token_ids: return_token_ids.then_some(s.tokens),
                    text,
                    prompt_logprobs: prompt_logprobs.clone(),
                });
            }
        }
        let response = CompletionResponse {
            header,
            choices,
            usage: Some(Some(usage)),
            prompt_logprobs: None,
        };
        return Ok(Json(response).into_response());
    }
    let render = CompletionStream {
        return_token_ids,
        engine: state.engine.clone(),
        header,
        n,
        emitted: vec![0; submissions.len() * n],
        include_usage,
        echoes,
        echo_at_start,
        wants_logprobs,
    };
    Ok(sse::respond(submissions, render, include_usage))
}

/// Renders a completions stream: prompt `p`'s sample `i` is choice `p · n + i`.
struct CompletionStream {
    engine: Engine,
    header: Header,
    /// Samples per prompt.
    n: usize,
    /// Bytes of text sent per choice (the next token's `text_offset`).
    emitted: Vec<usize>,
    include_usage: bool,
    return_token_ids: bool,
    /// Each prompt's echo, until sent.
    echoes: Vec<Option<Echo>>,
    /// The echoes go out before any event (no [`Event::Prompt`] is coming).
    echo_at_start: bool,
    wants_logprobs: bool,
}

impl CompletionStream {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Bytes {
        frame(&CompletionResponse {
            header: self.header.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
            prompt_logprobs: None,
        })
    }

    /// Prompt `prompt`'s choices' echo (nothing without `echo`), scored by `scores` when the
    /// request asked for logprobs.
    fn echo_chunks(&mut self, prompt: usize, scores: &[TokenLogprob]) -> Vec<Bytes> {
        let Some(echo) = self.echoes.get_mut(prompt).and_then(Option::take) else {
            return vec![];
        };
        let tokenizer = self.engine.tokenizer();
        let logprobs = self
            .wants_logprobs
            // (A stream's scores hold exactly `logprobs` alternatives: `prompt_logprobs` is
            // refused with `stream`.)
            .then(|| logprobs::echoed_prompt(tokenizer, &echo.tokens, scores, usize::MAX));
        let choices = prompt * self.n..(prompt + 1) * self.n;
        for at in &mut self.emitted[choices.clone()] {
            *at += echo.text.len();
        }
        choices
            .map(|index| {
                let choice = CompletionChoice {
                    index,
                    text: echo.text.clone(),
                    logprobs: logprobs.clone(),
                    finish_reason: None,
                    token_ids: None,
                    prompt_logprobs: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
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
            true => (0..self.echoes.len())
                .flat_map(|p| self.echo_chunks(p, &[]))
                .collect(),
            false => vec![],
        }
    }

    fn event(&mut self, prompt: usize, event: Event) -> Option<Bytes> {
        let c = match event {
            Event::Token {
                sample,
                token,
                text,
                logprob,
            } => {
                let index = prompt * self.n + sample;
                let offset = self.advance(index, &text);
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
                    index,
                    text,
                    logprobs,
                    finish_reason: None,
                    token_ids: self.return_token_ids.then(|| vec![token]),
                    prompt_logprobs: None,
                }
            }
            Event::Finished {
                sample,
                reason,
                text,
                ..
            } => {
                let index = prompt * self.n + sample;
                self.advance(index, &text);
                CompletionChoice {
                    index,
                    text,
                    logprobs: None,
                    finish_reason: Some(finish_reason(reason)),
                    token_ids: None,
                    prompt_logprobs: None,
                }
            }
            Event::Prompt { logprobs } => {
                return Some(self.echo_chunks(prompt, &logprobs).concat().into())
            }
            Event::Error(_) => return None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn usage(&mut self, usage: Usage) -> Bytes {
        self.chunk(vec![], Some(usage))
    }
}
