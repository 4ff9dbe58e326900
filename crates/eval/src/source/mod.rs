//! Where responses come from: JSONL files ([`file`]), OpenAI-compatible servers
//! ([`openai`], several at once: [`pool`]), and the local model crate (`local`, behind the `local-model` feature).
//!
//! Every source answers one [`Request`] (one sample of one problem) at a time; the
//! runner asks for samples concurrently and appends each answer to the [`cache`] before
//! scoring it, so an interrupted run resumes without asking again.

pub mod cache;
pub mod file;
#[cfg(feature = "local-model")]
pub mod local;
pub mod openai;
pub mod pool;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::Sampling;

/// A boxed future, so that sources can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One sample to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// Task name.
    pub task: String,
    /// Problem id.
    pub id: String,
    /// Sample index, `0..k`.
    pub sample: usize,
    /// The rendered prompt (the user message).
    pub prompt: String,
    /// Optional system prompt.
    pub system: Option<String>,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Request {
    /// `task/id/sample`, the cache and log key.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.task, self.id, self.sample)
    }
}

/// A generated response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Generation {
    /// The response text (the answer; may contain the reasoning for R1 raw output).
    pub text: String,
    /// Reasoning returned separately (`reasoning_content`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Why generation stopped (`stop`, `length`...), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Generated tokens, if reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

impl Generation {
    /// The text to judge: a separately returned reasoning is put back in R1 form,
    /// `<think>\nreasoning\n</think>\n` + text.
    pub fn full_text(&self) -> String {
        match self.reasoning.as_deref() {
            Some(r) if !r.is_empty() => format!("<think>\n{r}\n</think>\n{}", self.text),
            _ => self.text.clone(),
        }
    }
}

/// A source of responses.
pub trait ResponseSource: Send + Sync {
    /// A short description for logs and reports.
    fn describe(&self) -> String;
    /// Whether answers should go through the response cache (false for response files).
    fn wants_cache(&self) -> bool {
        true
    }
    /// Generates one sample.
    fn generate<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, anyhow::Result<Generation>>;
}
