//! OpenAI-compatible servers (`/v1/chat/completions` or `/v1/completions`): vLLM,
//! SGLang, llama.cpp, DeepSeek's API...
//!
//! Each request carries the per-request timeout; 429, 5xx, timeouts, connection errors
//! (refused, reset, closed without reply) and unreadable bodies are retried with
//! exponential backoff and full jitter (a `Retry-After` header in seconds is honoured as a
//! lower bound); other 4xx fail at once. Reasoning returned in `reasoning_content` (or
//! `reasoning`) is kept separately and put back in `<think>` form for judging. Each
//! request also carries an `x-eval-sample: task/id/sample` header for server-side logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::{BoxFuture, Generation, Request, ResponseSource};

/// Marks an error no retry can fix (a 4xx other than 429, a reply that is not a completion):
/// [`super::pool::EndpointPool`] does not try such a sample on another endpoint.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Which endpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `/v1/chat/completions` with one user message (and the optional system prompt).
    Chat,
    /// `/v1/completions` with the raw prompt.
    Completions,
}

/// Client options.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL (`http://host:port`, `.../v1`, or the full endpoint URL).
    pub base_url: String,
    /// Model name sent in the request.
    pub model: String,
    /// Endpoint kind (default chat).
    pub api: Api,
    /// Bearer token, if any.
    pub api_key: Option<String>,
    /// Retries after the first attempt (default 6).
    pub max_retries: u32,
    /// First backoff (default 500 ms), doubled per retry.
    pub backoff_base: Duration,
    /// Largest backoff (default 30 s).
    pub backoff_max: Duration,
}

impl OpenAiConfig {
    /// Defaults for a server and model.
    pub fn new(base_url: &str, model: &str) -> Self {
        OpenAiConfig {
            base_url: base_url.to_string(),
            model: model.to_string(),
            api: Api::Chat,
            api_key: None,
            max_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        let b = self.base_url.trim_end_matches('/');
        let tail = match self.api {
            Api::Chat => "chat/completions",
            Api::Completions => "completions",
        };
        if b.ends_with("/completions") {
            b.to_string()
        } else if b.ends_with("/v1") {
            format!("{b}/{tail}")
        } else {
            format!("{b}/v1/{tail}")
        }
    }
}

/// An OpenAI-compatible client.
pub struct OpenAi {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: String,
}

enum Attempt {
    Done(Generation),
    Retry(String, Option<Duration>),
    Fail(anyhow::Error),
}

fn jitter(max: Duration) -> Duration {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    max.mul_f64((x % 1_000_000) as f64 / 1_000_000.0)
}

/// Parses a response body into a generation.
pub fn parse_body(api: Api, v: &Value) -> Result<Generation> {
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| anyhow!("response has no choices: {v}"))?;
    let s = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
    let (text, reasoning) = match api {
        Api::Chat => {
            let m = choice
                .get("message")
                .ok_or_else(|| anyhow!("choice has no message"))?;
            (
                s(m.get("content")).unwrap_or_default(),
                s(m.get("reasoning_content")).or_else(|| s(m.get("reasoning"))),
            )
        }
        Api::Completions => (s(choice.get("text")).unwrap_or_default(), None),
    };
    Ok(Generation {
        text,
        reasoning,
        finish_reason: s(choice.get("finish_reason")),
        completion_tokens: v
            .get("usage")
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64),
    })
}

impl OpenAi {
    /// A client for `config`.
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let url = config.url();
        Ok(OpenAi {
            config,
            client,
            url,
        })
    }

    /// The request body for a sample.
    pub fn body(&self, req: &Request) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "temperature": req.sampling.temperature,
            "top_p": req.sampling.top_p,
            "max_tokens": req.sampling.max_tokens,
            "n": 1,
        });
        match self.config.api {
            Api::Chat => {
                let mut msgs = Vec::new();
                if let Some(s) = &req.system {
                    msgs.push(json!({"role": "system", "content": s}));
                }
                msgs.push(json!({"role": "user", "content": req.prompt}));
                body["messages"] = Value::Array(msgs);
            }
            Api::Completions => body["prompt"] = Value::String(req.prompt.clone()),
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if let Some(seed) = req.sampling.seed {
            body["seed"] = json!(seed.wrapping_add(req.sample as u64));
        }
        body
    }

    async fn attempt(&self, req: &Request, body: &Value) -> Attempt {
        let mut rb = self
            .client
            .post(&self.url)
            .timeout(req.timeout)
            .header("x-eval-sample", req.key())
            .json(body);
        if let Some(k) = &self.config.api_key {
            rb = rb.bearer_auth(k);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(format!("request: {e}"), None),
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Retry(format!("reading body: {e}"), None),
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Attempt::Retry(format!("HTTP {status}"), retry_after);
        }
        if !status.is_success() {
            return Attempt::Fail(anyhow!(Permanent(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            ))));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => match parse_body(self.config.api, &v) {
                Ok(g) => Attempt::Done(g),
                Err(e) => Attempt::Fail(anyhow!(Permanent(format!("{e:#}")))),
            },
            Err(e) => Attempt::Retry(format!("bad JSON body: {e}"), None),
        }
    }

    async fn generate_inner(&self, req: &Request) -> Result<Generation> {
        let body = self.body(req);
        let mut last = String::new();
        for attempt in 0..=self.config.max_retries {
            match self.attempt(req, &body).await {
                Attempt::Done(g) => return Ok(g),
                Attempt::Fail(e) => return Err(e.context(req.key())),
                Attempt::Retry(why, after) => {
                    if attempt == self.config.max_retries {
                        last = why;
                        break;
                    }
                    let cap = self
                        .config
                        .backoff_base
                        .saturating_mul(1 << attempt.min(20))
                        .min(self.config.backoff_max);
                    let wait = jitter(cap).max(after.unwrap_or_default());
                    tracing::debug!(key = %req.key(), attempt, ?wait, "retrying: {why}");
                    last = why;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        bail!(
            "{}: giving up after {} attempts: {last}",
            req.key(),
            self.config.max_retries + 1
        )
    }
}

impl ResponseSource for OpenAi {
    fn describe(&self) -> String {
        format!("{} ({})", self.url, self.config.model)
    }
    fn generate<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Generation>> {
        Box::pin(self.generate_inner(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_reasoning_content() {
        let mut c = OpenAiConfig::new("http://h:1/", "m");
        assert_eq!(c.url(), "http://h:1/v1/chat/completions");
        c.api = Api::Completions;
        c.base_url = "http://h:1/v1".into();
        assert_eq!(c.url(), "http://h:1/v1/completions");
        let v = json!({"choices": [{"message": {"content": "\\boxed{2}", "reasoning_content": "1+1"}, "finish_reason": "stop"}],
                       "usage": {"completion_tokens": 7}});
        let g = parse_body(Api::Chat, &v).unwrap();
        assert_eq!(g.full_text(), "<think>\n1+1\n</think>\n\\boxed{2}");
        assert_eq!(g.completion_tokens, Some(7));
        assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
    }
}
