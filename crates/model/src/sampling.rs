//! Next-token selection: greedy, or sampling with temperature, top-k and top-p (nucleus).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 selects the arg-max (greedy).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability mass reaches `top_p` (1: off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0: off).
    pub top_k: usize,
    /// Seed of the random generator.
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }

    /// Whether the settings can be sampled from: a finite `temperature >= 0` and `top_p` in
    /// `(0, 1]`; otherwise the field at fault and why (the one check the engine, the server
    /// and [`crate::generate`] make).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err((
                "temperature",
                format!("temperature must be >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err((
                "top_p",
                format!("top_p must be in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(())
    }

    /// DeepSeek's recommendation for R1 chat: temperature 0.6, top-p 0.95.
    pub fn r1_chat(seed: u64) -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            top_k: 0,
            seed,
        }
    }
}

/// Draws tokens from logits with a seeded generator.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    /// The settings.
    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// The probability distribution sampling draws from (after temperature, top-k, top-p,
    /// renormalised), as `(token, probability)` pairs in decreasing probability.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = self.params;
        if p.temperature <= 0.0 {
            return vec![(argmax(logits), 1.0)];
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / p.temperature).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            probs.truncate(p.top_k);
        }
        let total: f32 = probs.iter().map(|x| x.1).sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&(_, w)| {
                    acc += w / total;
                    acc >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().map(|x| x.1).sum();
        probs.iter_mut().for_each(|x| x.1 /= total);
        probs
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let dist = self.distribution(logits);
        self.draw(&dist)
    }

    /// Draws from an explicit `(token, probability)` distribution (probabilities sum to 1).
    pub fn draw(&mut self, dist: &[(u32, f32)]) -> u32 {
        let u: f32 = self.rng.random();
        let mut acc = 0.0;
        for &(t, w) in dist {
            acc += w;
            if u < acc {
                return t;
            }
        }
        dist.last().map_or(0, |x| x.0)
    }

    /// A uniform draw in `[0, 1)` from the same stream (speculative acceptance tests use it).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.0, 1.0, 5.0]), 2);
    }

    #[test]
    fn settings_that_cannot_be_sampled_name_their_field() {
        let with = |temperature, top_p| SamplingParams {
            temperature,
            top_p,
            ..SamplingParams::greedy()
        };
        assert!(with(0.0, 1.0).check().is_ok());
        assert!(with(0.6, 0.95).check().is_ok());
        for (t, p, field) in [
            (-1.0, 1.0, "temperature"),
            (f32::NAN, 1.0, "temperature"),
            (f32::INFINITY, 1.0, "temperature"),
            (1.0, 0.0, "top_p"),
            (1.0, 1.5, "top_p"),
            (1.0, f32::NAN, "top_p"),
        ] {
            assert_eq!(with(t, p).check().unwrap_err().0, field, "{t} {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_truncate_and_renormalise() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 2,
            seed: 0,
        });
        let d = s.distribution(&logits);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 2]);
        assert!((d[0].1 - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
        // Softmax of [0,1,2,3] is [.032,.087,.237,.644]: top-p 0.8 keeps tokens 3 and 2.
        let s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            top_k: 0,
            seed: 0,
        });
        assert_eq!(s.distribution(&logits).len(), 2);
        let s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            top_k: 0,
            seed: 0,
        });
        assert_eq!(s.distribution(&logits).len(), 1);
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (2f32).ln(), (3f32).ln(), f32::NEG_INFINITY];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 7,
        });
        let mut counts = [0usize; 4];
        let n = 60_000;
        for _ in 0..n {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = counts[i] as f64 / n as f64;
            // ~5 standard deviations of a binomial proportion at n = 60k.
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams::r1_chat(42);
        let (mut a, mut b) = (Sampler::new(p), Sampler::new(p));
        let xs: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..20).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
    }
}
