//! One request in the engine: submission, its events as an async sequence, and
//! cancellation when the client goes away.
//!
//! The engine calls the request's sink on its own thread; the sink forwards events into an
//! unbounded channel (it must never block the engine; a request sends at most
//! `n * max_tokens` events). The [`Submission`] owns the receiving end: when a client
//! disconnects, the handler future (or the streaming body) that owns it is dropped, which
//! drops the receiver, so the sink's next send fails and the engine cancels the request, and
//! [`Drop`] also calls [`Engine::cancel`] so that a request still waiting for admission leaves
//! the queue at once.

use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::error::ApiError;
use super::openai::Usage;
use super::state::{AppState, FlightGuard};
use crate::engine::{Engine, Event, Request, RequestId, TokenLogprob};
use crate::generate::FinishReason;

/// A request accepted by the engine.
pub(crate) struct Submission {
    engine: Engine,
    id: RequestId,
    rx: UnboundedReceiver<Event>,
    /// Samples not finished yet; 0 once the request ended (or failed).
    open: usize,
    /// Prompt length (usage).
    pub prompt_tokens: usize,
    /// Samples.
    pub n: usize,
    _flight: FlightGuard,
}

impl Submission {
    /// Submits `request`; refusals become 4xx/5xx errors with nothing left queued.
    pub fn start(state: &Arc<AppState>, request: Request) -> Result<Self, ApiError> {
        if state.closing() {
            return Err(ApiError::shutting_down());
        }
        let flight = state.flight();
        let (prompt_tokens, n) = (request.prompt.len(), request.params.n);
        let (tx, rx) = unbounded_channel();
        let id = state
            .engine
            .submit(request, Box::new(move |event| tx.send(event).is_ok()))
            .map_err(|e| ApiError::from_submit(e, state.config.retry_after_secs))?;
        Ok(Self {
            engine: state.engine.clone(),
            id,
            rx,
            open: n,
            prompt_tokens,
            n,
            _flight: flight,
        })
    }

    /// The next event (never [`Event::Error`]: that is the `Err`); `None` once every sample
    /// has finished.
    pub async fn next(&mut self) -> Option<Result<Event, ApiError>> {
        if self.open == 0 {
            return None;
        }
        Some(match self.rx.recv().await {
            Some(Event::Error(e)) => {
                self.open = 0;
                Err(ApiError::internal(format!("generation failed: {e}")))
            }
            Some(event) => {
                if matches!(event, Event::Finished { .. }) {
                    self.open -= 1;
                }
                Ok(event)
            }
            None => {
                self.open = 0;
                Err(ApiError::internal(
                    "the engine stopped before the request finished",
                ))
            }
        })
    }

    /// Runs the request to the end: one [`Sample`] per sample, the prompt's scores (when the
    /// request asked for them) and the usage.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut samples: Vec<Sample> = (0..self.n).map(|_| Sample::default()).collect();
        let mut prompt_logprobs = Vec::new();
        let mut cached = 0;
        while let Some(event) = self.next().await {
            match event? {
                Event::Token {
                    sample,
                    token,
                    text,
                    logprob,
                } => {
                    let Some(s) = samples.get_mut(sample) else {
                        continue;
                    };
                    if let Some(lp) = logprob {
                        s.logprobs.push(Scored {
                            token,
                            logprob: lp,
                            offset: s.text.len(),
                        });
                    }
                    s.tokens.push(token);
                    s.text.push_str(&text);
                }
                Event::Finished {
                    sample,
                    reason,
                    completion_tokens,
                    cached_tokens,
                    text,
                } => {
                    cached = cached.max(cached_tokens);
                    let Some(s) = samples.get_mut(sample) else {
                        continue;
                    };
                    s.text.push_str(&text);
                    s.finish = Some(reason);
                    s.completion_tokens = completion_tokens;
                }
                Event::Prompt { logprobs } => prompt_logprobs = logprobs,
                Event::Error(e) => return Err(ApiError::internal(e)),
            }
        }
        let completion = samples.iter().map(|s| s.completion_tokens).sum();
        Ok(Collected {
            samples,
            prompt_logprobs,
            usage: Usage::new(self.prompt_tokens, completion, cached),
        })
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if self.open > 0 {
            self.engine.cancel(self.id);
        }
    }
}

/// One generated token with its log-probabilities and where its text starts in the sample's
/// text (the legacy `text_offset`: text is released when complete, so a token whose bytes
/// finish a character later shares the offset of the text it completes).
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub token: u32,
    pub logprob: TokenLogprob,
    pub offset: usize,
}

/// A finished sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub tokens: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<Scored>,
    pub finish: Option<FinishReason>,
    pub completion_tokens: usize,
}

/// A request run to the end ([`Submission::collect`]).
pub(crate) struct Collected {
    pub samples: Vec<Sample>,
    /// The prompt's tokens after the first, scored (an echo with logprobs), once for all
    /// samples.
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub usage: Usage,
}

/// OpenAI's `finish_reason`: `stop` for EOS and stop strings, `length` for the budget
/// (vLLM's `abort` for a cancelled request).
pub(crate) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::MaxTokens => "length",
        FinishReason::Callback => "abort",
    }
}
