//! Generation: one prefill over the prompt, then one decode step per token over the latent
//! cache, with greedy or sampled selection, EOS ids, stop strings, a token budget and a
//! streaming callback.

use std::time::Instant;

use crate::error::Result;
use crate::model::DeepSeek;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{TextStream, Tokenizer};

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Token budget.
    pub max_new_tokens: usize,
    /// Greedy or sampled selection.
    pub sampling: SamplingParams,
    /// Ids that end generation (the EOS token is not part of the output).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation (the text is cut before them; needs a tokenizer).
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop_tokens: vec![],
            stop_strings: vec![],
        }
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
    /// Seconds spent in decode steps.
    pub decode_secs: f64,
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

/// Generates after `prompt`. `on_token` sees each new id and returns false to stop.
pub fn generate(
    model: &DeepSeek,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampling);
    let mut session = model.new_session()?;
    let t0 = Instant::now();
    let mut out = model.forward_last(prompt, &mut session)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut tokens = Vec::new();
    let mut finish = FinishReason::MaxTokens;
    while tokens.len() < opts.max_new_tokens {
        let next = sampler.sample(&DeepSeek::last_logits(&out)?);
        if opts.stop_tokens.contains(&next) {
            finish = FinishReason::Eos;
            break;
        }
        tokens.push(next);
        if !on_token(next)? {
            finish = FinishReason::Callback;
            break;
        }
        if tokens.len() == opts.max_new_tokens {
            break;
        }
        out = model.forward(&[next], &mut session)?;
    }
    Ok(Generation {
        tokens,
        finish,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

/// [`generate`] with text: streams decoded pieces to `on_text`, honours `stop_strings` (text
/// that could start a stop string is held back until it cannot), and returns the final text.
pub fn generate_text(
    model: &DeepSeek,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str),
) -> Result<(Generation, String)> {
    let mut stream = TextStream::new(tokenizer);
    let mut text = String::new();
    let mut emitted = 0;
    let mut stopped = false;
    let hold = opts
        .stop_strings
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut gen = generate(model, prompt, opts, |id| {
        if let Some(piece) = stream.push(id)? {
            text.push_str(&piece);
        }
        if let Some(cut) = opts
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            stopped = true;
        }
        let mut safe = if stopped {
            text.len()
        } else {
            text.len().saturating_sub(hold)
        };
        while !text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > emitted {
            on_text(&text[emitted..safe]);
            emitted = safe;
        }
        Ok(!stopped)
    })?;
    if stopped {
        gen.finish = FinishReason::StopString;
    } else if emitted < text.len() {
        on_text(&text[emitted..]);
    }
    Ok((gen, text))
}
