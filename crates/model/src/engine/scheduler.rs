//! The engine thread: queues, admission, steps, sampling and events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use mla::LatentKvCache;
use moe::Dispatch;
use rope_yarn::RopeCache;

use super::guide::Guide;
use super::prefix::{adopt, PrefixCache};
use super::{
    pages_for, EngineConfig, EngineStats, Event, Msg, RequestId, RequestParams, Shared, Sink,
    Submitted, TokenLogprob,
};
use crate::error::Result;
use crate::generate::{FinishReason, TextStops};
use crate::model::DeepSeek;
use crate::penalties::TokenHistory;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// An admitted request.
struct Live {
    sink: Sink,
    params: RequestParams,
    /// Samples not finished yet (before the prompt is in, all `n`).
    open: usize,
    /// Pages reserved for its worst case, released when it ends.
    reserved: usize,
    submitted: Instant,
    answered: bool,
    /// Prompt tokens adopted from the prefix cache.
    cached: usize,
}

/// One running sequence: a sample of a request, or (while prefilling) the request's prompt.
struct Seq {
    request: RequestId,
    sample: usize,
    cache: LatentKvCache,
    prompt: Arc<Vec<u32>>,
    /// Prompt tokens in the cache.
    prefilled: usize,
    /// The sampled token to feed next.
    pending: Option<u32>,
    generated: usize,
    sampler: Sampler,
    /// What the sequence has seen, kept only when its request has penalties to apply.
    history: Option<TokenHistory>,
    /// Where its output stands in the request's grammar (structured outputs).
    guide: Option<Guide>,
    text: TextStops,
    /// With [`RequestParams::prompt_logprobs`] (its value), the prompt tokens scored so far.
    prompt_scores: Option<(usize, Vec<TokenLogprob>)>,
}

impl Seq {
    fn prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }
}

/// One sequence's share of a forward pass.
struct Work {
    seq: usize,
    tokens: Vec<u32>,
    /// Its last row's logits are needed (decode, or the prompt's last chunk).
    logits: bool,
    /// Its rows score the prompt tokens that follow them (a prefill chunk of a request with
    /// [`RequestParams::prompt_logprobs`]).
    scores: bool,
}

pub(super) struct Scheduler {
    model: Arc<DeepSeek>,
    tokenizer: Option<Arc<Tokenizer>>,
    config: EngineConfig,
    shared: Arc<Shared>,
    rope: RopeCache,
    waiting: VecDeque<Box<Submitted>>,
    live: HashMap<RequestId, Live>,
    seqs: Vec<Seq>,
    /// Running slots taken: the open samples of every admitted request.
    slots: usize,
    reserved: usize,
    prefix: PrefixCache,
    closing: bool,
    stats: EngineStats,
    /// Decode rows per pass in batch-invariant mode ([`DeepSeek::batch_invariant_rows`]).
    invariant_rows: usize,
}

impl Scheduler {
    pub(super) fn new(
        model: Arc<DeepSeek>,
        tokenizer: Option<Arc<Tokenizer>>,
        config: EngineConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let rope = RopeCache::new(model.config().mla.rope);
        let stats = EngineStats {
            pages_total: config.total_pages(),
            ..EngineStats::default()
        };
        // Under batch invariance a prefix is reused only in whole prefill chunks (see prefix.rs).
        let align = if config.batch_invariant {
            config.prefill_chunk
        } else {
            config.page_tokens
        };
        Self {
            prefix: PrefixCache::new(config.page_tokens, align),
            invariant_rows: model.batch_invariant_rows(),
            model,
            tokenizer,
            config,
            shared,
            rope,
            waiting: VecDeque::new(),
            live: HashMap::new(),
            seqs: Vec::new(),
            slots: 0,
            reserved: 0,
            closing: false,
            stats,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            if self.seqs.is_empty() && self.waiting.is_empty() {
                if self.closing {
                    break;
                }
                match rx.recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            self.admit();
            if !self.seqs.is_empty() {
                // A panic inside the model (a bug, never a request's fault: inputs are checked
                // at submission) fails the requests in flight instead of killing the engine.
                let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
                if let Err(panic) = step {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    let ids: Vec<RequestId> = self.live.keys().copied().collect();
                    for id in ids {
                        self.abort(id, Some(Abort::Failed(format!("internal error: {what}"))));
                    }
                }
            }
            self.publish();
        }
        self.publish();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit(s) => self.waiting.push_back(s),
            Msg::Cancel(id) => self.cancel(id),
            Msg::Shutdown => self.closing = true,
        }
    }

    fn cancel(&mut self, id: RequestId) {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let mut s = self.waiting.remove(i).expect("found above");
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            for sample in 0..s.request.params.n {
                (s.sink)(Event::Finished {
                    sample,
                    reason: FinishReason::Callback,
                    completion_tokens: 0,
                    cached_tokens: 0,
                    text: String::new(),
                });
            }
            self.stats.requests_aborted += 1;
        } else if self.live.contains_key(&id) {
            self.abort(id, Some(Abort::Cancelled));
        }
    }

    /// Admits waiting requests in arrival order while their worst case fits. A request whose
    /// prompt shares a prefix with one still being prefilled waits for that prefill, then
    /// adopts its pages.
    fn admit(&mut self) {
        while let Some(front) = self.waiting.front() {
            let p = &front.request.params;
            // Checked at submission: the worst case fits the budget.
            let need = pages_for(
                front.request.prompt.len(),
                p.max_tokens,
                p.n,
                self.config.page_tokens,
            )
            .unwrap_or(usize::MAX);
            if self.slots + p.n > self.config.max_running {
                break;
            }
            let total = self.config.total_pages();
            let wanted = |s: &Self| {
                s.reserved
                    .saturating_add(need)
                    .saturating_add(s.prefix.len())
            };
            while wanted(self) > total && self.prefix.evict() {}
            if wanted(self) > total {
                break;
            }
            // A scoring request reuses only pages that kept their scores (see prefix.rs).
            let scoring = p.prompt_logprobs;
            let mut hit = self.prefix.lookup(&front.request.prompt, scoring);
            let reused = hit.as_ref().map_or(0, |h| h.tokens);
            if self.prefix_in_flight(&front.request.prompt, scoring) > reused {
                break;
            }
            let reused_scores = hit.as_mut().map(|h| std::mem::take(&mut h.scores));
            let s = self.waiting.pop_front().expect("front exists");
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let cache = self
                .model
                .new_cache(self.config.page_tokens)
                .and_then(|c| match hit {
                    Some(hit) => adopt(c, hit),
                    None => Ok(c),
                })
                .map_err(|e| e.to_string());
            // The structure was compiled at submission ([`super::Engine::check`]), so this
            // is a copy of the kept compilation and an error here is rare.
            let params = &s.request.params;
            let guide = params.structure.as_ref().map(|structure| {
                let marker = params.structure_after.as_deref();
                self.shared
                    .constraint(&self.model, self.tokenizer.as_deref(), structure)
                    .map(|c| Guide::new(c, marker))
            });
            let (cache, guide) = match (cache, guide.transpose()) {
                (Ok(cache), Ok(guide)) => (cache, guide),
                (Err(e), _) | (_, Err(e)) => {
                    let mut sink = s.sink;
                    sink(Event::Error(e));
                    self.stats.requests_aborted += 1;
                    continue;
                }
            };
            let Submitted {
                id,
                request,
                sink,
                at,
            } = *s;
            self.slots += request.params.n;
            self.reserved += need;
            self.stats.prompt_tokens_reused += reused as u64;
            let history = (!request.params.penalties.is_neutral())
                .then(|| TokenHistory::new(&request.prompt));
            self.seqs.push(Seq {
                request: id,
                sample: 0,
                cache,
                prompt: Arc::new(request.prompt),
                prefilled: reused,
                pending: None,
                generated: 0,
                sampler: Sampler::new(sample_params(&request.params.sampling, 0)),
                history,
                guide,
                text: TextStops::new(request.params.stop_strings.clone()),
                prompt_scores: request
                    .params
                    .prompt_logprobs
                    .map(|k| (k, reused_scores.unwrap_or_default())),
            });
            self.live.insert(
                id,
                Live {
                    sink,
                    open: request.params.n,
                    params: request.params,
                    reserved: need,
                    submitted: at,
                    answered: false,
                    cached: reused,
                },
            );
        }
    }

    /// Tokens of `prompt` that a sequence still prefilling will make reusable (its common
    /// prefix with `prompt`, as the prefix cache would round it). For a scoring request
    /// (`scoring`, its `prompt_logprobs`), only sequences scoring at least as many
    /// alternatives, and a page only with the token after it in common (its last score).
    fn prefix_in_flight(&self, prompt: &[u32], scoring: Option<usize>) -> usize {
        self.seqs
            .iter()
            .filter(|s| s.prefilling())
            .filter(|s| match (scoring, &s.prompt_scores) {
                (None, _) => true,
                (Some(k), Some((top, _))) => *top >= k,
                (Some(_), None) => false,
            })
            .map(|s| {
                let common = s
                    .prompt
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                let common = common - usize::from(scoring.is_some() && common > 0);
                self.prefix.reusable(common, prompt.len())
            })
            .max()
            .unwrap_or(0)
    }

    /// One step: every pending decode token and some prefill, then sampling.
    fn step(&mut self) {
        self.stats.steps += 1;
        let decode: Vec<Work> = self
            .seqs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.pending.map(|t| Work {
                    seq: i,
                    tokens: vec![t],
                    logits: true,
                    scores: false,
                })
            })
            .collect();
        let mut budget = self.config.prefill_chunk;
        let mut prefill = Vec::new();
        for (i, s) in self.seqs.iter().enumerate() {
            if !s.prefilling() || budget == 0 {
                continue;
            }
            let take = (s.prompt.len() - s.prefilled).min(self.config.prefill_chunk);
            // Batch invariance fixes every prompt's chunks (whole chunks, one per step);
            // otherwise the step's prefill budget is shared out.
            let take = if self.config.batch_invariant {
                take
            } else {
                take.min(budget)
            };
            budget = budget.saturating_sub(take);
            prefill.push(Work {
                seq: i,
                tokens: s.prompt[s.prefilled..s.prefilled + take].to_vec(),
                logits: s.prefilled + take == s.prompt.len(),
                scores: s.prompt_scores.is_some(),
            });
        }
        let largest = if self.config.batch_invariant {
            decode.len().min(self.invariant_rows)
        } else {
            decode.len()
        };
        self.stats.largest_decode_pass = self.stats.largest_decode_pass.max(largest);
        let passes: Vec<Vec<Work>> = if self.config.batch_invariant {
            let mut passes = Vec::new();
            let mut decode = decode.into_iter().peekable();
            while decode.peek().is_some() {
                passes.push(decode.by_ref().take(self.invariant_rows).collect());
            }
            passes.extend(prefill.into_iter().map(|w| vec![w]));
            passes
        } else {
            vec![decode.into_iter().chain(prefill).collect()]
        };
        let dispatch = if self.config.batch_invariant {
            Dispatch::Grouped
        } else {
            Dispatch::Auto
        };
        let mut sampled: Vec<(usize, Vec<f32>)> = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        for pass in passes {
            match self.forward(&pass, dispatch) {
                Ok(rows) => sampled.extend(rows),
                Err(e) => failed.extend(pass.iter().map(|w| (w.seq, e.to_string()))),
            }
        }
        // Act on the results by request id: sequences move when others finish.
        let ids: Vec<(RequestId, usize)> =
            self.seqs.iter().map(|s| (s.request, s.sample)).collect();
        let mut draws = Vec::new();
        for (k, (seq, _)) in sampled.iter().enumerate() {
            let (id, sample) = ids[*seq];
            draws.extend(self.after_logits(id, sample).map(|sample| Draw {
                id,
                sample,
                logits: k,
            }));
        }
        let drawn = self.draw_all(&draws, &sampled);
        for (d, token) in draws.into_iter().zip(drawn) {
            // None: the sequence went meanwhile.
            let Some(token) = token else { continue };
            let outcome =
                token.and_then(|(token, logprob)| self.commit(d.id, d.sample, token, logprob));
            self.act(d.id, d.sample, outcome);
        }
        for (seq, error) in failed {
            let (id, _) = ids[seq];
            if self.live.contains_key(&id) {
                self.abort(id, Some(Abort::Failed(error)));
            }
        }
    }

    /// One forward pass over `work`'s sequences; the logits rows the work asked for.
    fn forward(&mut self, work: &[Work], dispatch: Dispatch) -> Result<Vec<(usize, Vec<f32>)>> {
        let mut order: Vec<&Work> = work.iter().collect();
        order.sort_by_key(|w| w.seq);
        let mut caches: Vec<&mut LatentKvCache> = Vec::with_capacity(order.len());
        let mut next = order.iter().peekable();
        for (i, s) in self.seqs.iter_mut().enumerate() {
            if next.peek().is_some_and(|w| w.seq == i) {
                next.next();
                caches.push(&mut s.cache);
            }
        }
        let mut parts: Vec<(&[u32], &mut LatentKvCache)> = order
            .iter()
            .map(|w| w.tokens.as_slice())
            .zip(caches)
            .collect();
        let hidden = self
            .model
            .forward_packed(&mut parts, &mut self.rope, dispatch)?;
        let mut rows = Vec::new();
        let mut wanted = Vec::new();
        let mut row = 0;
        for w in &order {
            if w.scores {
                self.score_prompt(w, &hidden.narrow(0, row, w.tokens.len())?)?;
            }
            row += w.tokens.len();
            if w.logits {
                rows.push((row - 1) as u32);
                wanted.push(w.seq);
            }
        }
        for w in &order {
            let s = &mut self.seqs[w.seq];
            if s.prefilling() {
                s.prefilled += w.tokens.len();
                self.stats.prompt_tokens += w.tokens.len() as u64;
                // Pages of whole chunks are offered for reuse (all of them without batch
                // invariance, where chunking does not matter).
                if !self.config.batch_invariant || w.tokens.len() == self.config.prefill_chunk {
                    let scores = s.prompt_scores.as_ref().map(|(k, v)| (*k, v.as_slice()));
                    self.prefix.insert(&s.prompt, &s.cache, s.prefilled, scores);
                }
            } else {
                s.pending = None;
            }
        }
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let index = Tensor::new(rows.as_slice(), hidden.device())?;
        let logits = self.model.head(&hidden.index_select(&index, 0)?)?;
        Ok(wanted
            .into_iter()
            .zip(linear::host::vec2::<f32>(&logits)?)
            .collect())
    }

    /// Scores the prompt tokens that follow the rows of prefill chunk `w` (`hidden`, its
    /// rows' final hidden states): each row's logits give the next prompt token's
    /// log-probability. The head runs over at most [`SCORED_ROWS`] rows at a time. The
    /// prompt's last row is not scored here: its logits are the first sample's, computed as
    /// without scoring, so the samples do not depend on whether the prompt is scored.
    fn score_prompt(&mut self, w: &Work, hidden: &Tensor) -> Result<()> {
        let s = &self.seqs[w.seq];
        let (first, prompt) = (s.prefilled, s.prompt.clone());
        // Rows whose next token is in the prompt.
        let rows = w.tokens.len().min(prompt.len() - 1 - first);
        let mut scored = Vec::with_capacity(rows);
        let top = s.prompt_scores.as_ref().map_or(0, |p| p.0);
        for start in (0..rows).step_by(SCORED_ROWS) {
            let len = SCORED_ROWS.min(rows - start);
            let logits = self.model.head(&hidden.narrow(0, start, len)?)?;
            for (i, logits) in linear::host::vec2::<f32>(&logits)?.iter().enumerate() {
                let next = prompt[first + start + i + 1];
                scored.push(token_logprob(logits, next, top));
            }
        }
        if let Some((_, scores)) = &mut self.seqs[w.seq].prompt_scores {
            scores.extend(scored);
        }
        Ok(())
    }

    /// The samples of request `id` to draw from sample `sample`'s logits: that one, or all
    /// `n` when the prompt has just been read (its cache is forked for the others then).
    /// With [`RequestParams::prompt_logprobs`], the prompt's scores go out first, and a
    /// request of `max_tokens` 0 ends there.
    fn after_logits(&mut self, id: RequestId, sample: usize) -> std::ops::Range<usize> {
        let none = 0..0;
        let Some(live) = self.live.get(&id) else {
            return none;
        };
        let n = live.params.n;
        let Some(pos) = self.position(id, sample) else {
            return none;
        };
        let read = sample == 0 && self.seqs[pos].generated == 0;
        if let (true, Some((_, scores))) = (read, self.seqs[pos].prompt_scores.take()) {
            let sent = self
                .live
                .get_mut(&id)
                .map(|live| (live.sink)(Event::Prompt { logprobs: scores }));
            if sent == Some(false) {
                self.abort(id, None);
                return none;
            }
        }
        let Some(live) = self.live.get(&id) else {
            return none;
        };
        if read && n > 1 {
            let parent = &self.seqs[pos];
            let forks: Vec<Seq> = (1..n)
                .map(|i| Seq {
                    request: id,
                    sample: i,
                    cache: parent.cache.fork(),
                    prompt: parent.prompt.clone(),
                    prefilled: parent.prefilled,
                    pending: None,
                    generated: 0,
                    sampler: Sampler::new(sample_params(&live.params.sampling, i)),
                    history: parent.history.as_ref().map(TokenHistory::fork),
                    guide: parent.guide.as_ref().map(Guide::fork),
                    text: TextStops::new(live.params.stop_strings.clone()),
                    prompt_scores: None,
                })
                .collect();
            self.seqs.extend(forks);
        }
        let samples = if read { 0..n } else { sample..sample + 1 };
        if live.params.max_tokens == 0 {
            for i in samples {
                self.finish(id, i, FinishReason::MaxTokens);
            }
            return none;
        }
        samples
    }

    /// Each draw's token (and log-probability), from its sequence's penalties, grammar and
    /// sampler over `logits[d.logits]`: in parallel, as each sequence has its own (a draw
    /// over a 129K vocabulary takes about a millisecond, and 16 streams draw 16 a step).
    fn draw_all(&mut self, draws: &[Draw], logits: &[(usize, Vec<f32>)]) -> Vec<Option<Drawn>> {
        use rayon::prelude::*;
        let at: HashMap<(RequestId, usize), usize> = draws
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.id, d.sample), i))
            .collect();
        let live = &self.live;
        let mut jobs: Vec<(usize, &mut Seq, &RequestParams, &[f32])> = self
            .seqs
            .iter_mut()
            .filter_map(|seq| {
                let i = *at.get(&(seq.request, seq.sample))?;
                let params = &live.get(&seq.request)?.params;
                Some((i, seq, params, logits[draws[i].logits].1.as_slice()))
            })
            .collect();
        let mut out: Vec<Option<Drawn>> = (0..draws.len()).map(|_| None).collect();
        let drawn: Vec<(usize, Drawn)> = jobs
            .par_iter_mut()
            .map(|(i, seq, params, logits)| (*i, draw(seq, params, logits)))
            .collect();
        for (i, d) in drawn {
            out[i] = Some(d);
        }
        out
    }

    fn position(&self, id: RequestId, sample: usize) -> Option<usize> {
        self.seqs
            .iter()
            .position(|s| s.request == id && s.sample == sample)
    }

    /// Carries out what [`Scheduler::commit`] decided.
    fn act(&mut self, id: RequestId, sample: usize, outcome: Result<Outcome>) {
        match outcome {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::Finish(reason)) => self.finish(id, sample, reason),
            Ok(Outcome::Gone) => self.abort(id, None),
            Err(e) => self.abort(id, Some(Abort::Failed(e.to_string()))),
        }
    }

    /// Applies the rules to sample `sample`'s drawn `token` in order: a stop token ends it
    /// (not emitted), the token is sent, a stop string or the budget may end it. A sequence
    /// gone meanwhile (its request aborted by an earlier sample's event) is left alone.
    fn commit(
        &mut self,
        id: RequestId,
        sample: usize,
        token: u32,
        logprob: Option<TokenLogprob>,
    ) -> Result<Outcome> {
        let (Some(pos), Some(live)) = (self.position(id, sample), self.live.get_mut(&id)) else {
            return Ok(Outcome::Continue);
        };
        let seq = &mut self.seqs[pos];
        let p = &live.params;
        let stop_token = p.stop_tokens.contains(&token);
        if stop_token && (!p.ignore_eos || seq.guide.as_ref().is_some_and(Guide::finished)) {
            return Ok(Outcome::Finish(FinishReason::Eos));
        }
        if let Some(guide) = &mut seq.guide {
            // The marker is looked for in each token's own text (`</think>` is one token in
            // R1's vocabulary; longer markers are found across tokens).
            let piece = match (&self.tokenizer, guide.active().is_some()) {
                (Some(tok), false) => tok.decode(&[token])?,
                _ => String::new(),
            };
            guide.commit(token, &piece)?;
        }
        let text = match &self.tokenizer {
            Some(tok) => seq.text.push(tok, token)?,
            None => String::new(),
        };
        seq.generated += 1;
        if let Some(history) = &mut seq.history {
            history.push(token);
        }
        self.stats.generated_tokens += 1;
        if !live.answered {
            live.answered = true;
            self.stats.ttft_sum_secs += live.submitted.elapsed().as_secs_f64();
            self.stats.ttft_count += 1;
        }
        if !(live.sink)(Event::Token {
            sample,
            token,
            text,
            logprob,
        }) {
            return Ok(Outcome::Gone);
        }
        Ok(if seq.text.stopped() {
            Outcome::Finish(FinishReason::StopString)
        } else if seq.guide.as_ref().is_some_and(Guide::finished) {
            // The output is complete: its grammar allows nothing more.
            Outcome::Finish(FinishReason::Eos)
        } else if seq.generated >= live.params.max_tokens {
            Outcome::Finish(FinishReason::MaxTokens)
        } else {
            seq.pending = Some(token);
            Outcome::Continue
        })
    }

    /// Ends one sample: its event, its pages; the request's reservation once all are done.
    fn finish(&mut self, id: RequestId, sample: usize, reason: FinishReason) {
        let Some(pos) = self.position(id, sample) else {
            return;
        };
        let mut seq = self.seqs.remove(pos);
        self.slots -= 1;
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let text = match &self.tokenizer {
            Some(tok) => seq.text.flush(tok).unwrap_or_default(),
            None => String::new(),
        };
        // A stop string completed by the flushed tail still counts as one.
        let reason = if seq.text.stopped() {
            FinishReason::StopString
        } else {
            reason
        };
        let alive = (live.sink)(Event::Finished {
            sample,
            reason,
            completion_tokens: seq.generated,
            cached_tokens: live.cached,
            text,
        });
        live.open -= 1;
        if !alive {
            self.abort(id, None);
        } else if live.open == 0 {
            self.reserved -= live.reserved;
            self.live.remove(&id);
            self.stats.requests_finished += 1;
        }
    }

    /// Ends every sample of request `id` and frees its pages, telling the sink why (nothing
    /// when the sink is gone).
    fn abort(&mut self, id: RequestId, why: Option<Abort>) {
        let Some(mut live) = self.live.remove(&id) else {
            return;
        };
        let mut open: Vec<(usize, usize)> = Vec::new();
        self.seqs.retain(|s| {
            if s.request == id {
                open.push((s.sample, s.generated));
                false
            } else {
                true
            }
        });
        // Before the prompt is in, only sample 0 exists but all n are open.
        if open.len() < live.open {
            let have: HashSet<usize> = open.iter().map(|o| o.0).collect();
            open.extend(
                (0..live.params.n)
                    .filter(|i| !have.contains(i))
                    .map(|i| (i, 0))
                    .take(live.open - open.len()),
            );
        }
        self.slots -= live.open;
        self.reserved -= live.reserved;
        self.stats.requests_aborted += 1;
        match why {
            None => {}
            Some(Abort::Cancelled) => {
                for (sample, generated) in open {
                    (live.sink)(Event::Finished {
                        sample,
                        reason: FinishReason::Callback,
                        completion_tokens: generated,
                        cached_tokens: live.cached,
                        text: String::new(),
                    });
                }
            }
            Some(Abort::Failed(e)) => {
                (live.sink)(Event::Error(e));
            }
        }
    }

    fn publish(&mut self) {
        let mut pages: HashSet<usize> = self.prefix.page_ids().collect();
        for s in &self.seqs {
            if let Ok(layer) = s.cache.layer(0) {
                pages.extend(layer.page_ids());
            }
        }
        self.stats.running = self.seqs.len();
        self.stats.pages_used = pages.len();
        self.stats.pages_reserved = self.reserved;
        self.stats.prefix_cache_pages = self.prefix.len();
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = self.stats.clone();
        }
    }
}

enum Abort {
    Cancelled,
    Failed(String),
}

/// A drawn token and its log-probability (when asked for).
type Drawn = Result<(u32, Option<TokenLogprob>)>;

/// A sample to draw a token for this step, from the logits row `logits`.
struct Draw {
    id: RequestId,
    sample: usize,
    logits: usize,
}

/// Draws `seq`'s next token from `logits` under its request's rules: stop tokens masked until
/// `min_tokens`, penalties over what it has seen, its grammar's mask; the log-probability
/// (of the model's own distribution) when asked for.
fn draw(seq: &mut Seq, p: &RequestParams, logits: &[f32]) -> Drawn {
    let mut mask_stops = seq.generated < p.min_tokens && !p.stop_tokens.is_empty();
    let mut constraint = seq.guide.as_mut().and_then(Guide::active);
    let token = if mask_stops || seq.history.is_some() || constraint.is_some() {
        let mut adjusted = logits.to_vec();
        if let Some(history) = &seq.history {
            p.penalties.apply(&mut adjusted, history);
        }
        if let Some(constraint) = &mut constraint {
            constraint.mask(&mut adjusted)?;
            // A complete output allows only its end: the grammar wins over min_tokens.
            mask_stops &= adjusted
                .iter()
                .enumerate()
                .any(|(t, l)| *l > f32::NEG_INFINITY && !p.stop_tokens.contains(&(t as u32)));
        }
        if mask_stops {
            for &t in &p.stop_tokens {
                if let Some(l) = adjusted.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        seq.sampler.sample(&adjusted)
    } else {
        seq.sampler.sample(logits)
    };
    Ok((
        token,
        p.logprobs.map(|top| token_logprob(logits, token, top)),
    ))
}

/// What [`Scheduler::commit`] decided for a sample.
enum Outcome {
    Continue,
    Finish(FinishReason),
    /// The sink is gone: cancel the request silently.
    Gone,
}

/// Rows per head call when scoring a prompt ([`Scheduler::score_prompt`]): 64 rows of logits
/// over DeepSeek's 102,400-token vocabulary are 26 MB.
const SCORED_ROWS: usize = 64;

/// Sample `i`'s sampling settings: the request's, with seed `seed + i`.
fn sample_params(p: &SamplingParams, i: usize) -> SamplingParams {
    SamplingParams {
        seed: p.seed.wrapping_add(i as u64),
        ..*p
    }
}

/// `log softmax(logits)[token]`, its rank and the `top` most likely tokens with theirs.
fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
    }
    let own = logits.get(token as usize).copied();
    TokenLogprob {
        logprob: own.map_or(f32::NEG_INFINITY, |l| l - lse),
        rank: 1 + own.map_or(logits.len(), |own| {
            logits.iter().filter(|&&l| l > own).count()
        }),
        top: best.into_iter().map(|(t, l)| (t, l - lse)).collect(),
    }
}
