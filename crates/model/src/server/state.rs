//! What every handler shares: the engine, the configuration, and the shutdown state (the
//! closing flag and the count of requests in flight that the drain waits for).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::ServerConfig;
use crate::engine::Engine;

/// Shared by the handlers (behind an `Arc`).
pub(crate) struct AppState {
    pub engine: Engine,
    pub config: ServerConfig,
    /// Ids that end a sample: the tokenizer's EOS and the config's `eos_token_id`s.
    pub stop_tokens: Vec<u32>,
    /// Unix seconds when the server started (the models' `created`).
    pub created: u64,
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    pub fn new(engine: Engine, config: ServerConfig) -> Self {
        let mut stop_tokens = engine.model().config().eos_token_ids.clone();
        stop_tokens.extend(engine.tokenizer().and_then(|t| t.eos_id()));
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        Self {
            engine,
            config,
            stop_tokens,
            created: unix_now(),
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// True once shutdown began: new requests get 503.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Requests submitted to the engine whose responses have not ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request in flight until the guard drops.
    pub fn flight(self: &Arc<Self>) -> FlightGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        FlightGuard(self.clone())
    }

    /// Stops admitting requests and waits until none is in flight.
    pub async fn drain(&self) {
        self.closing.store(true, Ordering::SeqCst);
        loop {
            // Register before checking, so a guard dropping in between still wakes us.
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Holds one request in flight (see [`AppState::flight`]).
pub(crate) struct FlightGuard(Arc<AppState>);

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Seconds since the Unix epoch (the API's `created`).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
