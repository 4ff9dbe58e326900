//! Generation: one prefill over the prompt, then decode steps over the latent cache, with
//! greedy or sampled selection, EOS ids, stop strings, a token budget and a streaming callback.
//!
//! Two decodings share every rule ([`Decoding`]): plain (one main forward per token) and MTP
//! speculative decoding (the checkpoint's MTP modules draft, one main forward verifies and
//! commits 1 to `D + 1` tokens; greedy output is identical, sampled output has the same
//! distribution). Stop tokens, stop strings, the budget, the callback, the timing split and
//! the finish reason are applied token by token to what either one commits, so MTP never
//! overshoots the budget or a stop.
//!
//! [`generate`] / [`generate_text`] take a bare model and load the MTP modules on each MTP
//! call; a [`Generator`] owns the model and loads them once, for callers that generate many
//! times (eval).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use mtp::{AcceptanceStats, Speculator};

use crate::error::{ModelError, Result};
use crate::model::{DeepSeek, PathPolicy};
use crate::mtp::{into_model_error, load_mtp_modules, Module};
use crate::penalties::{Penalties, TokenHistory};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TextStream, Tokenizer};

/// How tokens are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decoding {
    /// One main forward per token.
    #[default]
    Plain,
    /// MTP speculative decoding with all of the checkpoint's MTP modules
    /// (`num_nextn_predict_layers`, 1 for V3/R1): an error on checkpoints without them.
    Mtp,
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Token budget.
    pub max_new_tokens: usize,
    /// Greedy or sampled selection.
    pub sampling: SamplingParams,
    /// Logit bias and presence / frequency / repetition penalties before each selection
    /// (plain decoding only: [`Decoding::Mtp`] with penalties is an error).
    pub penalties: Penalties,
    /// Ids that end generation (the EOS token is not part of the output).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation (the text is cut before them; needs a tokenizer).
    pub stop_strings: Vec<String>,
    /// Plain or MTP speculative decoding.
    pub decoding: Decoding,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            penalties: Penalties::default(),
            stop_tokens: vec![],
            stop_strings: vec![],
            decoding: Decoding::Plain,
        }
    }
}

impl GenerateOptions {
    /// What [`generate`] refuses before it starts, for a model of `vocab` tokens: sampling
    /// values ([`SamplingParams::check`]), penalties ([`Penalties::check`]), and penalties
    /// with MTP decoding.
    pub fn check(&self, vocab: usize) -> Result<()> {
        let input = |(_, message): (&str, String)| ModelError::Input(message);
        self.sampling.check().map_err(input)?;
        self.penalties.check(vocab).map_err(input)?;
        if self.decoding == Decoding::Mtp && !self.penalties.is_neutral() {
            // Speculative acceptance would need every draft position's history-dependent
            // distribution; plain decoding applies them exactly.
            return Err(ModelError::Input(
                "logit bias and penalties need plain decoding, not MTP speculative decoding".into(),
            ));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Eos,
    /// A stop string appeared in the text.
    StopString,
    /// The token budget ran out.
    MaxTokens,
    /// The callback asked to stop.
    Callback,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (without the stop token).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Seconds spent in the prefill.
    pub prefill_secs: f64,
    /// Seconds spent in decode steps (MTP: draft + verify steps).
    pub decode_secs: f64,
    /// Draft acceptance when MTP speculative decoding ran.
    pub mtp: Option<AcceptanceStats>,
}

impl Generation {
    /// Prefill throughput.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-12)
    }

    /// Decode throughput (tokens produced by decode steps; the first comes from the prefill).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-12)
    }
}

/// A model and its MTP modules, loaded on first use and kept: what callers that generate many
/// times with [`Decoding::Mtp`] hold. Plain decoding never loads the modules.
pub struct Generator {
    model: Arc<DeepSeek>,
    mtp: OnceLock<Vec<Module>>,
    /// Serialises the one load of `mtp` (concurrent first MTP requests wait for it).
    mtp_load: Mutex<()>,
}

impl Generator {
    /// Wraps `model` (its `paths` policy, the MTP blocks' too); an `Arc` lets the same
    /// weights serve an [`crate::Engine`] as well.
    pub fn new(model: impl Into<Arc<DeepSeek>>) -> Self {
        Self {
            model: model.into(),
            mtp: OnceLock::new(),
            mtp_load: Mutex::new(()),
        }
    }

    /// The model.
    pub fn model(&self) -> &DeepSeek {
        &self.model
    }

    /// The model back.
    pub fn into_model(self) -> Arc<DeepSeek> {
        self.model
    }

    /// Sets the MLA path policy of the model and of the MTP blocks (loaded modules are
    /// dropped and load again with it on the next MTP call). An error while another owner
    /// (an engine) shares the model.
    pub fn set_path_policy(&mut self, paths: PathPolicy) -> Result<()> {
        let model = Arc::get_mut(&mut self.model).ok_or_else(|| {
            ModelError::Input("the model is shared: set its path policy before sharing it".into())
        })?;
        model.paths = paths;
        self.mtp = OnceLock::new();
        Ok(())
    }

    /// The MTP modules, loaded on the first call; an error naming the checkpoint when it has
    /// none.
    pub fn mtp_modules(&self) -> Result<&[Module]> {
        if let Some(m) = self.mtp.get() {
            return Ok(m);
        }
        let _guard = self
            .mtp_load
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = self.mtp.get() {
            return Ok(m);
        }
        let modules = required_mtp_modules(&self.model)?;
        Ok(self.mtp.get_or_init(|| modules))
    }

    /// [`generate`] with the kept modules.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: impl FnMut(u32) -> Result<bool>,
    ) -> Result<Generation> {
        match opts.decoding {
            Decoding::Plain => generate_plain(&self.model, prompt, opts, on_token),
            Decoding::Mtp => generate_mtp(&self.model, self.mtp_modules()?, prompt, opts, on_token),
        }
    }

    /// [`generate_text`] with the kept modules.
    pub fn generate_text(
        &self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<(Generation, String)> {
        stream_text(tokenizer, opts, on_text, |on_token| {
            self.generate(prompt, opts, on_token)
        })
    }
}

/// The model's MTP modules, or an error naming the checkpoint when it has none.
fn required_mtp_modules(model: &DeepSeek) -> Result<Vec<Module>> {
    let n = model.config().num_nextn_predict_layers;
    if n == 0 {
        return Err(ModelError::Input(format!(
            "{}: MTP speculative decoding needs MTP modules, but the checkpoint has none \
             (num_nextn_predict_layers is {n} in config.json)",
            model.checkpoint().dir().display()
        )));
    }
    load_mtp_modules(model).map_err(into_model_error)
}

/// Generates after `prompt` with `opts.decoding`. `on_token` sees each new id and returns
/// false to stop. [`Decoding::Mtp`] loads the MTP modules for this call (a [`Generator`]
/// loads them once).
pub fn generate(
    model: &DeepSeek,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    opts.check(model.config().vocab_size)?;
    match opts.decoding {
        Decoding::Plain => generate_plain(model, prompt, opts, on_token),
        Decoding::Mtp => {
            let modules = required_mtp_modules(model)?;
            generate_mtp(model, &modules, prompt, opts, on_token)
        }
    }
}

/// Where a commit loop stands after one token.
enum Next {
    Continue,
    Done(FinishReason),
}

/// The rules both decodings apply to each token they commit, in order: a stop token ends
/// generation (not emitted), the token is emitted, the callback may stop, the budget may run
/// out.
struct Commit<'a, F> {
    opts: &'a GenerateOptions,
    on_token: F,
    tokens: Vec<u32>,
}

impl<'a, F: FnMut(u32) -> Result<bool>> Commit<'a, F> {
    /// A commit loop with no token yet, and whether it may run (a budget of 0 ends it).
    fn begin(opts: &'a GenerateOptions, on_token: F) -> (Self, Next) {
        let commit = Self {
            opts,
            on_token,
            tokens: Vec::new(),
        };
        let state = commit.start();
        (commit, state)
    }

    /// A `Done` before any token when the budget is 0.
    fn start(&self) -> Next {
        if self.tokens.len() >= self.opts.max_new_tokens {
            Next::Done(FinishReason::MaxTokens)
        } else {
            Next::Continue
        }
    }

    fn push(&mut self, next: u32) -> Result<Next> {
        if self.opts.stop_tokens.contains(&next) {
            return Ok(Next::Done(FinishReason::Eos));
        }
        self.tokens.push(next);
        if !(self.on_token)(next)? {
            return Ok(Next::Done(FinishReason::Callback));
        }
        Ok(self.start())
    }

    /// The result once the loop has ended (`state` is `Done`); `decode_start` is when the
    /// first decode step began.
    fn finish(
        self,
        state: Next,
        prompt_tokens: usize,
        prefill_secs: f64,
        decode_start: Instant,
        mtp: Option<AcceptanceStats>,
    ) -> Generation {
        let Next::Done(finish) = state else {
            unreachable!("generation loops end on Done")
        };
        Generation {
            tokens: self.tokens,
            finish,
            prompt_tokens,
            prefill_secs,
            decode_secs: decode_start.elapsed().as_secs_f64(),
            mtp,
        }
    }
}

fn check_prompt(prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(ModelError::Input(
            "empty prompt: nothing to generate after".into(),
        ));
    }
    Ok(())
}

/// Plain decoding: one main forward per token.
fn generate_plain(
    model: &DeepSeek,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    check_prompt(prompt)?;
    let mut sampler = Sampler::new(opts.sampling);
    let mut session = model.new_session()?;
    let t0 = Instant::now();
    let mut out = model.forward_last(prompt, &mut session)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut history = (!opts.penalties.is_neutral()).then(|| TokenHistory::new(prompt));
    let (mut commit, mut state) = Commit::begin(opts, on_token);
    while let Next::Continue = state {
        let mut logits = DeepSeek::last_logits(&out)?;
        if let Some(history) = &history {
            opts.penalties.apply(&mut logits, history);
        }
        let next = sampler.sample(&logits);
        if let Some(history) = &mut history {
            history.push(next);
        }
        state = commit.push(next)?;
        if let Next::Continue = state {
            out = model.forward(&[next], &mut session)?;
        }
    }
    Ok(commit.finish(state, prompt.len(), prefill_secs, t1, None))
}

/// MTP speculative decoding: the prefill (main forward over the prompt + the first token),
/// then draft + verify steps, each committing 1 to `D + 1` tokens that go through the same
/// rules one by one; tokens a step committed past a stop are dropped.
fn generate_mtp(
    model: &DeepSeek,
    modules: &[Module],
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    check_prompt(prompt)?;
    let mut sampler = Sampler::new(opts.sampling);
    let t0 = Instant::now();
    let mut spec =
        Speculator::new(model, modules, prompt, &mut sampler).map_err(into_model_error)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (mut commit, mut state) = Commit::begin(opts, on_token);
    let mut fresh = spec.generated().to_vec();
    while let Next::Continue = state {
        for &next in &fresh {
            state = commit.push(next)?;
            if let Next::Done(_) = state {
                break;
            }
        }
        if let Next::Continue = state {
            fresh = spec.step(&mut sampler).map_err(into_model_error)?.to_vec();
        }
    }
    let stats = spec.stats().clone();
    Ok(commit.finish(state, prompt.len(), prefill_secs, t1, Some(stats)))
}

/// [`generate`] with text: streams decoded pieces to `on_text`, honours `stop_strings` (text
/// that could start a stop string is held back until it cannot), and returns the final text.
/// Either decoding ([`GenerateOptions::decoding`]).
pub fn generate_text(
    model: &DeepSeek,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str),
) -> Result<(Generation, String)> {
    stream_text(tokenizer, opts, on_text, |on_token| {
        generate(model, prompt, opts, on_token)
    })
}

/// The text side of [`generate_text`] around `run`, which generates with the per-token
/// callback it is given.
fn stream_text(
    tokenizer: &Tokenizer,
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
    run: impl FnOnce(&mut dyn FnMut(u32) -> Result<bool>) -> Result<Generation>,
) -> Result<(Generation, String)> {
    let mut text = TextStops::new(opts.stop_strings.clone());
    let mut gen = run(&mut |id| {
        let piece = text.push(tokenizer, id)?;
        if !piece.is_empty() {
            on_text(&piece);
        }
        Ok(!text.stopped())
    })?;
    let rest = text.flush(tokenizer)?;
    if !rest.is_empty() {
        on_text(&rest);
    }
    if text.stopped() {
        gen.finish = FinishReason::StopString;
    }
    Ok((gen, text.into_text()))
}

/// Generated text under stop strings, token by token: decodes incrementally, cuts the text
/// before the first stop string that appears, and holds back the tail that could still be the
/// start of one, so what has been handed out never needs taking back.
#[derive(Debug, Clone, Default)]
pub struct TextStops {
    stream: TextStream,
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl TextStops {
    /// Text ending at the first of `stops` (none: plain streaming).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Adds a token; returns the text now safe to hand out (often empty). After a stop string
    /// appeared ([`TextStops::stopped`]) further tokens add nothing.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        match self.stream.push(tokenizer, id)? {
            Some(piece) => Ok(self.accept(&piece, false)),
            None => Ok(String::new()),
        }
    }

    /// Generation ended: the held-back tail, with any incomplete character the last tokens
    /// left (as U+FFFD), still cut at a stop string.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let rest = self.stream.finish(tokenizer)?;
        Ok(self.accept(&rest, true))
    }

    /// Appends `piece` and returns what may be handed out: up to a stop string, else all but
    /// the tail that could start one (everything when `last`).
    fn accept(&mut self, piece: &str, last: bool) -> String {
        // A stop string may begin in text already held back, so search from the start of the
        // held tail (at most the longest stop string minus one byte before the new piece).
        let from = self.emitted.min(self.text.len());
        self.text.push_str(piece);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            self.text.truncate(cut);
            self.stopped = true;
            return self.take(self.text.len());
        }
        if last {
            return self.take(self.text.len());
        }
        let hold = self.stops.iter().map(String::len).max().unwrap_or(1) - 1;
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        self.take(safe)
    }

    fn take(&mut self, upto: usize) -> String {
        if upto <= self.emitted {
            return String::new();
        }
        let piece = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        piece
    }

    /// True once a stop string appeared (the text ends before it).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All the text (cut before the stop string, if one appeared).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text, owned.
    pub fn into_text(self) -> String {
        self.text
    }
}
