//! Several OpenAI-compatible servers as one source (`eval run --endpoint A --endpoint B ...`),
//! the way large evaluations spread over a vLLM/SGLang fleet.
//!
//! Each sample goes to the healthy endpoint with the fewest requests in flight. An endpoint
//! whose requests keep failing with retryable errors (connection refused, timeouts, 5xx, 429
//! after its own short retries) is marked down for a cooldown and the sample moves to another
//! one; a permanent error (another 4xx, an unreadable reply) is the sample's answer and is not
//! retried elsewhere. When every endpoint is down the sample waits for the first cooldown to
//! end. The runner's response cache is unchanged, so each sample is still asked for and
//! recorded exactly once per run, whichever endpoint answered it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::openai::{OpenAi, OpenAiConfig, Permanent};
use super::{BoxFuture, Generation, Request, ResponseSource};

/// Consecutive failed samples after which an endpoint is marked down.
const FAILURES_TO_DOWN: usize = 2;

/// One endpoint and its health.
struct Member {
    client: OpenAi,
    in_flight: AtomicUsize,
    /// Consecutive samples that failed here.
    failures: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    served: AtomicU64,
}

impl Member {
    fn down_until(&self) -> Option<Instant> {
        let mut d = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_some_and(|t| t <= Instant::now()) {
            *d = None;
        }
        *d
    }
}

/// A pool of endpoints serving the same model.
pub struct EndpointPool {
    members: Vec<Member>,
    cooldown: Duration,
}

impl EndpointPool {
    /// One client per config. Each endpoint's own retries are capped at one so that a failing
    /// endpoint hands the sample on quickly; `cooldown` is how long a failing endpoint rests.
    pub fn new(configs: Vec<OpenAiConfig>, cooldown: Duration) -> Result<Self> {
        if configs.is_empty() {
            bail!("an endpoint pool needs at least one endpoint");
        }
        let members = configs
            .into_iter()
            .map(|mut c| {
                c.max_retries = c.max_retries.min(1);
                Ok(Member {
                    client: OpenAi::new(c)?,
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicUsize::new(0),
                    down_until: Mutex::new(None),
                    served: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { members, cooldown })
    }

    /// Samples answered by each endpoint so far, in the order given.
    pub fn served(&self) -> Vec<u64> {
        self.members
            .iter()
            .map(|m| m.served.load(Ordering::SeqCst))
            .collect()
    }

    /// The member to try next, or how long until one comes back up.
    fn pick(&self, tried: &[usize]) -> std::result::Result<usize, Duration> {
        let now = Instant::now();
        let up = (0..self.members.len())
            .filter(|&i| self.members[i].down_until().is_none())
            .min_by_key(|&i| {
                (
                    tried.contains(&i),
                    self.members[i].in_flight.load(Ordering::SeqCst),
                )
            });
        match up {
            Some(i) => Ok(i),
            None => Err(self
                .members
                .iter()
                .filter_map(Member::down_until)
                .min()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))),
        }
    }

    async fn generate_inner(&self, req: &Request) -> Result<Generation> {
        let mut tried = Vec::new();
        let mut last = None;
        // Every endpoint gets a chance, twice over, before the sample fails.
        for _ in 0..2 * self.members.len() {
            let i = match self.pick(&tried) {
                Ok(i) => i,
                Err(wait) => {
                    tracing::warn!(key = %req.key(), ?wait, "every endpoint is down; waiting");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let m = &self.members[i];
            m.in_flight.fetch_add(1, Ordering::SeqCst);
            let result = m.client.generate(req).await;
            m.in_flight.fetch_sub(1, Ordering::SeqCst);
            match result {
                Ok(g) => {
                    m.failures.store(0, Ordering::SeqCst);
                    m.served.fetch_add(1, Ordering::SeqCst);
                    return Ok(g);
                }
                Err(e) if e.downcast_ref::<Permanent>().is_some() => return Err(e),
                Err(e) => {
                    let failures = m.failures.fetch_add(1, Ordering::SeqCst) + 1;
                    if failures >= FAILURES_TO_DOWN {
                        tracing::warn!(endpoint = %m.client.describe(), "marked down: {e:#}");
                        *m.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now() + self.cooldown);
                    }
                    tried.push(i);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoint answered")))
    }
}

impl ResponseSource for EndpointPool {
    fn describe(&self) -> String {
        let names: Vec<String> = self.members.iter().map(|m| m.client.describe()).collect();
        format!("{} endpoints: {}", names.len(), names.join(", "))
    }

    fn generate<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Generation>> {
        Box::pin(self.generate_inner(req))
    }
}
