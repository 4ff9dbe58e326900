//! Logit adjustments that depend on what a sequence has seen: OpenAI's `logit_bias`,
//! `presence_penalty` and `frequency_penalty`, and the `repetition_penalty` of HF transformers
//! (Keskar et al. 2019, CTRL), with vLLM's semantics and order:
//!
//! ```text
//! l'_t  = l_t + bias_t                                            (logit_bias)
//! l''_t = seen_t ? (l'_t > 0 ? l'_t / r : l'_t · r) : l'_t        (repetition, r > 0)
//! out_t = l''_t − f · count_t − p · [count_t > 0]                 (frequency f, presence p)
//! ```
//!
//! where `count_t` is how often token `t` occurs in the sequence's output so far and `seen_t`
//! whether it occurs in the prompt or the output (HF and vLLM both penalise prompt tokens for
//! repetition; OpenAI's two penalties count the output only). Temperature, top-k and top-p
//! then apply to the adjusted logits ([`crate::sampling::Sampler`]).
//!
//! Only the tokens a sequence has seen and the biased ones are touched, so a step costs the
//! number of distinct tokens, not the vocabulary.

use std::collections::HashMap;
use std::sync::Arc;

/// Most a `logit_bias` entry may add or subtract (OpenAI's range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Most a presence or frequency penalty may be in magnitude (OpenAI's range).
pub const MAX_PENALTY: f32 = 2.0;

/// The adjustments of one request. The default changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Penalties {
    /// Subtracted once from every token the output already holds (OpenAI: `[-2, 2]`).
    pub presence: f32,
    /// Subtracted per occurrence in the output so far (OpenAI: `[-2, 2]`).
    pub frequency: f32,
    /// Positive logits of tokens in the prompt or output are divided by it, negative ones
    /// multiplied (1: off; above 1 discourages repeats).
    pub repetition: f32,
    /// `(token, bias)` pairs added to the logits before the penalties (`[-100, 100]`).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            presence: 0.0,
            frequency: 0.0,
            repetition: 1.0,
            logit_bias: Vec::new(),
        }
    }
}

impl Penalties {
    /// Whether applying them changes nothing (then no history needs keeping).
    pub fn is_neutral(&self) -> bool {
        self.presence == 0.0
            && self.frequency == 0.0
            && self.repetition == 1.0
            && self.logit_bias.is_empty()
    }

    /// Whether they can be applied over a vocabulary of `vocab` tokens; otherwise the
    /// OpenAI parameter at fault and why.
    pub fn check(&self, vocab: usize) -> Result<(), (&'static str, String)> {
        for (param, v) in [
            ("presence_penalty", self.presence),
            ("frequency_penalty", self.frequency),
        ] {
            if !(-MAX_PENALTY..=MAX_PENALTY).contains(&v) {
                return Err((
                    param,
                    format!("{param} must be in [-{MAX_PENALTY}, {MAX_PENALTY}], got {v}"),
                ));
            }
        }
        if !(self.repetition.is_finite() && self.repetition > 0.0) {
            return Err((
                "repetition_penalty",
                format!(
                    "repetition_penalty must be greater than 0, got {}",
                    self.repetition
                ),
            ));
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= vocab {
                return Err((
                    "logit_bias",
                    format!("logit_bias token id {token} is out of range (vocab_size {vocab})"),
                ));
            }
            if !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&bias) {
                return Err((
                    "logit_bias",
                    format!(
                        "logit_bias values must be in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}], \
                         got {bias} for token {token}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adjusts `logits` (one row over the vocabulary) for a sequence with history `seen`.
    /// Token ids beyond the row are ignored ([`Penalties::check`] refuses them up front).
    pub fn apply(&self, logits: &mut [f32], seen: &TokenHistory) {
        for &(token, bias) in &self.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        if self.repetition != 1.0 {
            let r = self.repetition;
            let output_only = seen.output.keys().filter(|t| !seen.in_prompt(**t));
            for &token in seen.prompt.iter().chain(output_only) {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        if self.frequency != 0.0 || self.presence != 0.0 {
            for (&token, &count) in &seen.output {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= self.frequency * count as f32 + self.presence;
                }
            }
        }
    }
}

/// The tokens one sequence has seen: its prompt's distinct tokens (shared by the samples of
/// one prompt) and how often each token occurs in its output so far.
#[derive(Debug, Clone, Default)]
pub struct TokenHistory {
    /// Sorted, without repeats.
    prompt: Arc<Vec<u32>>,
    output: HashMap<u32, u32>,
}

impl TokenHistory {
    /// A history holding `prompt` and no output yet.
    pub fn new(prompt: &[u32]) -> Self {
        let mut distinct = prompt.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        Self {
            prompt: Arc::new(distinct),
            output: HashMap::new(),
        }
    }

    /// The same prompt with no output: another sample of it (the prompt's set is shared).
    pub fn fork(&self) -> Self {
        Self {
            prompt: self.prompt.clone(),
            output: HashMap::new(),
        }
    }

    /// Records one generated token.
    pub fn push(&mut self, token: u32) {
        *self.output.entry(token).or_insert(0) += 1;
    }

    fn in_prompt(&self, token: u32) -> bool {
        self.prompt.binary_search(&token).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The equations over the whole vocabulary, token by token: the oracle for `apply`.
    fn oracle(p: &Penalties, logits: &[f32], prompt: &[u32], output: &[u32]) -> Vec<f32> {
        (0..logits.len())
            .map(|t| {
                let t32 = t as u32;
                let bias: f32 = p
                    .logit_bias
                    .iter()
                    .filter(|b| b.0 == t32)
                    .map(|b| b.1)
                    .sum();
                let mut l = logits[t] + bias;
                let count = output.iter().filter(|&&o| o == t32).count() as f32;
                if prompt.contains(&t32) || count > 0.0 {
                    l = if l > 0.0 {
                        l / p.repetition
                    } else {
                        l * p.repetition
                    };
                }
                l - p.frequency * count - if count > 0.0 { p.presence } else { 0.0 }
            })
            .collect()
    }

    #[test]
    fn neutral_penalties_change_nothing() {
        let p = Penalties::default();
        assert!(p.is_neutral());
        let mut seen = TokenHistory::new(&[1, 2, 2, 3]);
        seen.push(3);
        let logits = vec![0.5f32, -1.0, 2.0, 3.0];
        let mut out = logits.clone();
        p.apply(&mut out, &seen);
        assert_eq!(out, logits);
    }

    #[test]
    fn worked_example() {
        // Prompt [0, 1], output [2, 2, 3]; vocab 5.
        let p = Penalties {
            presence: 0.5,
            frequency: 0.25,
            repetition: 2.0,
            logit_bias: vec![(4, -3.0), (0, 1.0)],
        };
        let mut seen = TokenHistory::new(&[0, 1]);
        for t in [2, 2, 3] {
            seen.push(t);
        }
        let mut logits = vec![1.0f32, -1.0, 4.0, 0.0, 2.0];
        p.apply(&mut logits, &seen);
        // 0: (1 + 1) / 2 = 1; 1: -1 · 2 = -2; 2: 4 / 2 - 0.25 · 2 - 0.5 = 1;
        // 3: 0 · 2 - 0.25 - 0.5 = -0.75; 4: 2 - 3 = -1 (unseen: no repetition penalty).
        assert_eq!(logits, vec![1.0, -2.0, 1.0, -0.75, -1.0]);
    }

    #[test]
    fn apply_matches_the_equations_on_random_histories() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for case in 0..300 {
            let vocab = 1 + next(40) as usize;
            let logits: Vec<f32> = (0..vocab)
                .map(|_| next(2001) as f32 / 100.0 - 10.0)
                .collect();
            let prompt: Vec<u32> = (0..next(30)).map(|_| next(vocab as u64) as u32).collect();
            let output: Vec<u32> = (0..next(30)).map(|_| next(vocab as u64) as u32).collect();
            let p = Penalties {
                presence: next(401) as f32 / 100.0 - 2.0,
                frequency: next(401) as f32 / 100.0 - 2.0,
                repetition: 0.25 + next(300) as f32 / 100.0,
                logit_bias: (0..next(4))
                    .map(|_| (next(vocab as u64) as u32, next(21) as f32 - 10.0))
                    .collect(),
            };
            assert!(p.check(vocab).is_ok());
            let mut seen = TokenHistory::new(&prompt);
            output.iter().for_each(|&t| seen.push(t));
            // Two biases of one token may add in another order: a rounding apart.
            let close = |history: &TokenHistory, output: &[u32], what: &str| {
                let mut got = logits.clone();
                p.apply(&mut got, history);
                let want = oracle(&p, &logits, &prompt, output);
                for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * w.abs().max(1.0);
                    assert!(
                        (g - w).abs() <= tol,
                        "case {case} {what} token {t}: {g} vs {w}"
                    );
                }
            };
            close(&seen, &output, "");
            // A fork keeps the prompt and forgets the output.
            close(&seen.fork(), &[], "(fork)");
        }
    }

    #[test]
    fn out_of_range_settings_name_their_parameter() {
        let bad = [
            (
                Penalties {
                    presence: 2.5,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                Penalties {
                    frequency: -2.01,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                Penalties {
                    frequency: f32::NAN,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                Penalties {
                    repetition: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                Penalties {
                    repetition: f32::INFINITY,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                Penalties {
                    logit_bias: vec![(10, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                Penalties {
                    logit_bias: vec![(1, 100.5)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                Penalties {
                    logit_bias: vec![(1, f32::NAN)],
                    ..Default::default()
                },
                "logit_bias",
            ),
        ];
        for (p, param) in bad {
            assert_eq!(p.check(10).unwrap_err().0, param, "{p:?}");
        }
        let edge = Penalties {
            presence: -2.0,
            frequency: 2.0,
            repetition: 1.3,
            logit_bias: vec![(9, -100.0), (0, 100.0)],
        };
        assert!(edge.check(10).is_ok());
    }
}
