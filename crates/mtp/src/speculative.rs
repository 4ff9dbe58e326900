//! Speculative decoding with MTP drafts, exact for greedy and for sampling.
//!
//! Notation: committed tokens `t_0..t_N`, where `t_N` (the *pending* token) is chosen but not
//! yet run through the main model, whose cache therefore holds `N` tokens and whose hidden
//! states `h_0..h_{N-1}` are known. Module `k`'s cache entry `i` is built from
//! `(h_i^{k-1}, t_{i+k})` (`h^0 = h`, the main model's final-normed states) and predicts
//! `t_{i+k+1}`.
//!
//! One step with `D` modules:
//!
//! 1. **Draft.** Module `k = 1..D` appends its missing entries `i = len_k..N-1` in one block
//!    call; its last output gives logits for `t_{N+k}`, from which draft `d_{N+k}` is drawn
//!    (distribution `q_k`). Tokens past `t_N` in those entries are the drafts of the
//!    shallower modules.
//! 2. **Verify.** One main forward over `[t_N, d_{N+1}, ..., d_{N+D}]` gives the target
//!    distributions `p_0..p_D`.
//! 3. **Accept.** Draft `j` is accepted with probability `min(1, p_{j-1}(d)/q_j(d))`; the first
//!    rejection resamples from `norm(max(0, p - q))` and ends the step, otherwise a bonus token
//!    is drawn from `p_D`. With a greedy sampler both distributions are one-hot, so this is
//!    "accept iff the draft is the arg-max", and the output equals plain greedy decoding.
//! 4. **Roll back.** With `a` drafts accepted, `N' = N + a + 1`: the main cache is truncated
//!    to `N'` and module `k` keeps exactly the entries whose tokens were all committed,
//!    `i + k <= N + a`, i.e. `len_k = N - max(0, k - 1 - a)`. No entry computed from a
//!    rejected token survives.

use candle_core::{DType, Tensor};

use crate::block::{DecoderBlock, MainModel};
use crate::error::{MtpError, Result};
use crate::module::MtpModule;
use crate::sampling::{accept, residual, TokenSampler};

/// Acceptance statistics of a speculative run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcceptanceStats {
    /// Drafts verified at each depth (`[k - 1]` for depth `k`).
    pub proposed: Vec<usize>,
    /// Drafts accepted at each depth.
    pub accepted: Vec<usize>,
    /// Speculative steps (draft + verify).
    pub steps: usize,
    /// Main-model forward passes, prefill included.
    pub main_forwards: usize,
    /// Tokens committed by speculative steps (accepted drafts + one resampled/bonus each).
    pub step_tokens: usize,
}

impl AcceptanceStats {
    fn new(depth: usize) -> Self {
        Self {
            proposed: vec![0; depth],
            accepted: vec![0; depth],
            ..Self::default()
        }
    }

    /// Accepted / proposed over all depths (0 before any step).
    pub fn acceptance_rate(&self) -> f64 {
        let p: usize = self.proposed.iter().sum();
        let a: usize = self.accepted.iter().sum();
        if p == 0 {
            0.0
        } else {
            a as f64 / p as f64
        }
    }

    /// Fraction of depth-`k` drafts accepted (1-based `k`; they are accepted only when every
    /// shallower draft of the step was).
    pub fn depth_rate(&self, k: usize) -> f64 {
        match (self.proposed.get(k - 1), self.accepted.get(k - 1)) {
            (Some(&p), Some(&a)) if p > 0 => a as f64 / p as f64,
            _ => 0.0,
        }
    }

    /// Mean tokens committed per speculative step (1 + accepted drafts).
    pub fn tokens_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.step_tokens as f64 / self.steps as f64
        }
    }
}

/// Rows `start..start + rows.len()` of a `[*, C]` sequence, kept as `[1, C]` views.
struct Rows {
    start: usize,
    rows: Vec<Tensor>,
}

impl Rows {
    fn new() -> Self {
        Self {
            start: 0,
            rows: Vec::new(),
        }
    }

    fn end(&self) -> usize {
        self.start + self.rows.len()
    }

    /// Appends the rows of `t` `[n, C]`.
    fn push(&mut self, t: &Tensor) -> Result<()> {
        for j in 0..t.dim(0)? {
            self.rows.push(t.narrow(0, j, 1)?);
        }
        Ok(())
    }

    fn truncate(&mut self, end: usize) {
        self.rows.truncate(end.saturating_sub(self.start));
    }

    fn drop_before(&mut self, i: usize) {
        let n = i.saturating_sub(self.start).min(self.rows.len());
        self.rows.drain(..n);
        self.start += n;
    }

    /// Rows `a..b` as `[b - a, C]`.
    fn range(&self, a: usize, b: usize) -> Result<Tensor> {
        if a < self.start || b > self.end() || a >= b {
            return Err(MtpError::Input(format!(
                "internal: rows {a}..{b} requested, {}..{} held",
                self.start,
                self.end()
            )));
        }
        Ok(Tensor::cat(&self.rows[a - self.start..b - self.start], 0)?)
    }
}

/// Speculative decoding state for one sequence: the main session, one cache per MTP module
/// and the hidden states the modules still have to consume.
pub struct Speculator<'a, M: MainModel, B: DecoderBlock> {
    main: &'a M,
    modules: &'a [MtpModule<B>],
    session: M::Session,
    caches: Vec<B::Cache>,
    /// `prev[0]`: main hidden states; `prev[k]`: module `k`'s outputs (for module `k + 1`).
    prev: Vec<Rows>,
    tokens: Vec<u32>,
    prompt_len: usize,
    stats: AcceptanceStats,
}

impl<'a, M: MainModel, B: DecoderBlock> Speculator<'a, M, B> {
    /// Prefills `prompt` and draws the first token. Drafts come from all of `modules`
    /// (depth `D = modules.len()`, at least 1; pass a prefix for fewer).
    pub fn new(
        main: &'a M,
        modules: &'a [MtpModule<B>],
        prompt: &[u32],
        sampler: &mut impl TokenSampler,
    ) -> Result<Self> {
        if modules.is_empty() {
            return Err(MtpError::Input(
                "speculative decoding needs at least one MTP module".into(),
            ));
        }
        if prompt.is_empty() {
            return Err(MtpError::Input("empty prompt".into()));
        }
        let mut session = main.new_session()?;
        let (logits, hidden) = main.forward(prompt, &mut session)?;
        let mut prev: Vec<Rows> = (0..modules.len()).map(|_| Rows::new()).collect();
        prev[0].push(&hidden)?;
        let last = row(&logits, prompt.len() - 1)?;
        let mut tokens = prompt.to_vec();
        tokens.push(sampler.sample(&last));
        let mut stats = AcceptanceStats::new(modules.len());
        stats.main_forwards = 1;
        Ok(Self {
            main,
            modules,
            session,
            caches: modules
                .iter()
                .map(|m| m.new_cache())
                .collect::<Result<_>>()?,
            prev,
            tokens,
            prompt_len: prompt.len(),
            stats,
        })
    }

    /// Draft depth `D`.
    pub fn depth(&self) -> usize {
        self.modules.len()
    }

    /// Prompt and committed tokens (the last one is not yet in the main cache).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens generated after the prompt.
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// The main model's session.
    pub fn session(&self) -> &M::Session {
        &self.session
    }

    /// Module `k`'s cache (1-based `k`).
    pub fn mtp_cache(&self, k: usize) -> &B::Cache {
        &self.caches[k - 1]
    }

    /// Statistics so far.
    pub fn stats(&self) -> &AcceptanceStats {
        &self.stats
    }

    /// One draft + verify step; returns the newly committed tokens (1 to `D + 1`).
    pub fn step(&mut self, sampler: &mut impl TokenSampler) -> Result<&[u32]> {
        let d = self.depth();
        let n = self.tokens.len() - 1; // index of the pending token t_N
        debug_assert_eq!(M::session_len(&self.session), n);

        // 1. Draft d_{N+1..N+D}.
        let mut drafts: Vec<u32> = Vec::with_capacity(d);
        let mut q: Vec<Vec<(u32, f32)>> = Vec::with_capacity(d);
        for k in 1..=d {
            let cache = &mut self.caches[k - 1];
            let start = B::cache_len(cache);
            let toks: Vec<u32> = (start..n)
                .map(|i| {
                    let j = i + k;
                    if j <= n {
                        self.tokens[j]
                    } else {
                        drafts[j - n - 1]
                    }
                })
                .collect();
            let prev = self.prev[k - 1].range(start, n)?.unsqueeze(0)?; // [1, n - start, C]
            let emb = self.main.embed(&toks)?; // [1, n - start, C]
            let g = self.modules[k - 1]
                .forward(&emb, &prev, cache)?
                .squeeze(0)?;
            if k < d {
                self.prev[k].push(&g)?;
            }
            let rows = g.dim(0)?;
            let logits = self.main.head(&g.narrow(0, rows - 1, 1)?)?;
            let dist = sampler.distribution(&row(&logits, 0)?);
            drafts.push(if dist.len() == 1 {
                dist[0].0
            } else {
                sampler.draw(&dist)
            });
            q.push(dist);
        }

        // 2. Verify [t_N, d_{N+1}, ..., d_{N+D}] in one main forward.
        let mut block = Vec::with_capacity(d + 1);
        block.push(self.tokens[n]);
        block.extend_from_slice(&drafts);
        let (logits, hidden) = self.main.forward(&block, &mut self.session)?;
        self.stats.main_forwards += 1;
        let rows: Vec<Vec<f32>> = linear::host::vec2(&logits.to_dtype(DType::F32)?)?;

        // 3. Accept a prefix, then one resampled or bonus token.
        let mut a = 0;
        let mut next = None;
        for (j, &draft) in drafts.iter().enumerate() {
            let p = sampler.distribution(&rows[j]);
            self.stats.proposed[j] += 1;
            if accept(sampler, &p, &q[j], draft) {
                self.stats.accepted[j] += 1;
                a += 1;
            } else {
                let r = residual(&p, &q[j]);
                next = Some(if r.len() == 1 {
                    r[0].0
                } else {
                    sampler.draw(&r)
                });
                break;
            }
        }
        // Drafts past the first rejection count as proposed (and rejected).
        for j in a + 1..d {
            self.stats.proposed[j] += 1;
        }
        let next = match next {
            Some(t) => t,
            None => sampler.sample(&rows[d]),
        };

        // 4. Commit and roll back.
        let old_len = self.tokens.len();
        self.tokens.extend_from_slice(&drafts[..a]);
        self.tokens.push(next);
        self.stats.steps += 1;
        self.stats.step_tokens += a + 1;
        M::truncate(&mut self.session, n + a + 1);
        self.prev[0].push(&hidden.narrow(0, 0, a + 1)?)?;
        for k in 1..=d {
            let keep = n - (k - 1).saturating_sub(a).min(n);
            B::truncate(&mut self.caches[k - 1], keep);
            if k < d {
                self.prev[k].truncate(keep);
            }
            self.prev[k - 1].drop_before(keep);
        }
        Ok(&self.tokens[old_len..])
    }
}

/// Generation settings.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    /// Token budget.
    pub max_new_tokens: usize,
    /// Ids that end generation (not part of the output).
    pub stop_tokens: Vec<u32>,
}

/// Result of a speculative generation.
#[derive(Debug, Clone)]
pub struct SpecOutput {
    /// Generated tokens.
    pub tokens: Vec<u32>,
    /// Whether a stop token ended it.
    pub stopped: bool,
    /// Acceptance statistics.
    pub stats: AcceptanceStats,
}

/// Generates up to `opts.max_new_tokens` after `prompt` with MTP speculative decoding.
/// `on_token` sees each committed token and returns false to stop.
pub fn speculative_generate<M: MainModel, B: DecoderBlock>(
    main: &M,
    modules: &[MtpModule<B>],
    prompt: &[u32],
    opts: &SpecOptions,
    sampler: &mut impl TokenSampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<SpecOutput> {
    let mut out = Vec::new();
    if opts.max_new_tokens == 0 {
        return Ok(SpecOutput {
            tokens: out,
            stopped: false,
            stats: AcceptanceStats::new(modules.len()),
        });
    }
    let mut spec = Speculator::new(main, modules, prompt, sampler)?;
    let mut fresh = spec.generated().to_vec();
    loop {
        for &t in &fresh {
            if opts.stop_tokens.contains(&t) {
                return Ok(SpecOutput {
                    tokens: out,
                    stopped: true,
                    stats: spec.stats.clone(),
                });
            }
            out.push(t);
            if !on_token(t) || out.len() == opts.max_new_tokens {
                return Ok(SpecOutput {
                    tokens: out,
                    stopped: false,
                    stats: spec.stats.clone(),
                });
            }
        }
        fresh = spec.step(sampler)?.to_vec();
    }
}

/// Plain decoding (one main forward per token) with the same sampler interface: the baseline
/// speculative decoding must reproduce (greedy) or match in distribution (sampling).
pub fn plain_generate<M: MainModel>(
    main: &M,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut impl TokenSampler,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(max_new_tokens);
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let mut session = main.new_session()?;
    let (mut logits, _) = main.forward(prompt, &mut session)?;
    loop {
        let t = sampler.sample(&row(&logits, logits.dim(0)? - 1)?);
        out.push(t);
        if out.len() == max_new_tokens {
            return Ok(out);
        }
        logits = main.forward(&[t], &mut session)?.0;
    }
}

/// Row `i` of `[T, V]` logits as f32.
fn row(logits: &Tensor, i: usize) -> Result<Vec<f32>> {
    Ok(linear::host::vec1(&logits.get(i)?.to_dtype(DType::F32)?)?)
}
