//! Server-sent events: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end, the
//! usage chunk before it when `stream_options.include_usage` is on, and an error event when
//! the engine fails after the stream started (the status is already sent).
//!
//! The body owns the [`Submission`]s (a completions request batches prompts, each its own
//! submission, their events merged as they come): a client that disconnects drops the body,
//! which cancels every request.

use std::convert::Infallible;
use std::pin::Pin;

use futures_util::stream::{self, Stream, StreamExt};

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::generation::Submission;
use super::openai::Usage;
use crate::engine::Event;

/// How an endpoint turns events into chunks.
pub(crate) trait Render: Send + 'static {
    /// Chunks before the first token (chat: each choice's role).
    fn start(&mut self) -> Vec<Bytes>;
    /// The chunk for an event of the `prompt`-th submission, if it has anything to say.
    fn event(&mut self, prompt: usize, event: Event) -> Option<Bytes>;
    /// The final usage chunk.
    fn usage(&mut self, usage: Usage) -> Bytes;
}

/// One SSE event holding `value` as JSON.
pub(crate) fn frame<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Our response types always serialise.
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// The submissions' events, each with its submission's place, as they arrive.
type Events = Pin<Box<dyn Stream<Item = (usize, Result<Event, super::error::ApiError>)> + Send>>;

struct State<R> {
    events: Events,
    /// Prompt tokens over all submissions (usage).
    prompt_tokens: usize,
    render: R,
    include_usage: bool,
    completion_tokens: usize,
    /// Prompt tokens from the prefix cache, over all submissions (sample 0 of each).
    cached_tokens: usize,
    started: bool,
    done: bool,
}

impl<R: Render> State<R> {
    /// The next bytes to send; `None` at the end of the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            let chunks = self.render.start();
            if !chunks.is_empty() {
                return Some(chunks.concat().into());
            }
        }
        loop {
            match self.events.next().await {
                Some((prompt, Ok(event))) => {
                    if let Event::Finished {
                        sample,
                        completion_tokens,
                        cached_tokens,
                        ..
                    } = &event
                    {
                        self.completion_tokens += completion_tokens;
                        if *sample == 0 {
                            self.cached_tokens += cached_tokens;
                        }
                    }
                    if let Some(chunk) = self.render.event(prompt, event) {
                        return Some(chunk);
                    }
                }
                Some((_, Err(e))) => {
                    self.done = true;
                    let mut out = b"data: ".to_vec();
                    out.extend(e.body_json());
                    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
                    return Some(out.into());
                }
                None => {
                    self.done = true;
                    let mut out = Vec::new();
                    if self.include_usage {
                        let usage = Usage::new(
                            self.prompt_tokens,
                            self.completion_tokens,
                            self.cached_tokens,
                        );
                        out.extend_from_slice(&self.render.usage(usage));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    return Some(out.into());
                }
            }
        }
    }
}

/// The streaming response for `submissions`.
pub(crate) fn respond<R: Render>(
    submissions: Vec<Submission>,
    render: R,
    include_usage: bool,
) -> Response {
    let prompt_tokens = submissions.iter().map(|s| s.prompt_tokens).sum();
    let each = submissions.into_iter().enumerate().map(|(i, s)| {
        stream::unfold(s, move |mut s| async move {
            let event = s.next().await?;
            Some(((i, event), s))
        })
        .boxed()
    });
    let state = State {
        events: stream::select_all(each).boxed(),
        prompt_tokens,
        render,
        include_usage,
        completion_tokens: 0,
        cached_tokens: 0,
        started: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        let bytes = state.next().await?;
        Some((Ok::<_, Infallible>(bytes), state))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
