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
    /// renormalised), as `(token, probability)` pairs in decreasing probability (ties: lower
    /// id first).
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        if self.params.temperature <= 0.0 {
            return vec![(argmax(logits), 1.0)];
        }
        let mut kept = self.kept(logits);
        kept.sort_unstable_by(by_probability);
        let total: f32 = kept.iter().map(|x| x.1).sum();
        kept.iter_mut().for_each(|x| x.1 /= total);
        kept
    }

    /// Every token with its weight `exp((logit - max) / temperature)` (its probability up
    /// to their sum).
    fn weights(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t = self.params.temperature;
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
            .collect()
    }

    /// [`Sampler::distribution`] by its definition: a full sort of the vocabulary, then the
    /// top-k and top-p cuts (how it was computed before partial selection). Slow; kept as the
    /// oracle of the fast path's tests and the baseline of `benchmarks --bin sampling`.
    pub fn distribution_by_full_sort(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = self.params;
        if p.temperature <= 0.0 {
            return vec![(argmax(logits), 1.0)];
        }
        let mut probs = self.weights(logits);
        probs.sort_by(by_probability);
        if p.top_k > 0 {
            probs.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            let total: f64 = probs.iter().map(|x| x.1 as f64).sum();
            let mut acc = 0.0f64;
            let keep = probs
                .iter()
                .position(|&(_, w)| {
                    acc += w as f64;
                    acc >= p.top_p as f64 * total
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().map(|x| x.1).sum();
        probs.iter_mut().for_each(|x| x.1 /= total);
        probs
    }

    /// The tokens that survive top-k and top-p, with their weights
    /// `exp((logit - max) / temperature)`, in no particular order.
    ///
    /// Nothing is sorted: top-k is a linear-time selection, and the top-p cut a bisection
    /// of selections ([`nucleus`]) among the tokens a histogram of binary exponents leaves.
    /// Over DeepSeek's 129K-token vocabulary the full sort this replaces cost 6-8 ms a
    /// sample per step (`benchmarks --bin sampling`).
    fn kept(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let p = self.params;
        let mut items = self.weights(logits);
        if p.top_k > 0 && p.top_k < items.len() {
            items.select_nth_unstable_by(p.top_k - 1, by_probability);
            items.truncate(p.top_k);
        }
        if p.top_p < 1.0 {
            // In f64, so that the order weights are added in does not move the cut.
            let total: f64 = items.iter().map(|x| x.1 as f64).sum();
            let target = p.top_p as f64 * total;
            // The nucleus is a prefix of the order, so it lies within the tokens at or above
            // the binary exponent where the mass, summed from the top, reaches the target:
            // keep those (one exponent lower, against rounding) and cut among them. A
            // peaked distribution leaves a handful.
            let exponent = |w: f32| (w.to_bits() >> 23) as usize & 0xff;
            let mut mass = [0.0f64; 256];
            for x in &items {
                mass[exponent(x.1)] += x.1 as f64;
            }
            let mut acc = 0.0;
            let floor = (0..256)
                .rev()
                .find(|&e| {
                    acc += mass[e];
                    acc >= target
                })
                .map_or(0, |e| e.saturating_sub(1));
            items.retain(|x| exponent(x.1) >= floor);
            let n = nucleus(&mut items, target);
            items.truncate(n);
        }
        items
    }

    /// Picks the next token (drawn from [`Sampler::distribution`]'s tokens, without sorting
    /// them).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let kept = self.kept(logits);
        let total: f32 = kept.iter().map(|x| x.1).sum();
        let target = self.uniform() * total;
        pick(&kept, target)
    }

    /// Draws from an explicit `(token, probability)` distribution (probabilities sum to 1).
    pub fn draw(&mut self, dist: &[(u32, f32)]) -> u32 {
        let target = self.uniform();
        pick(dist, target)
    }

    /// A uniform draw in `[0, 1)` from the same stream (speculative acceptance tests use it).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random()
    }
}

/// The token where the running sum of `weights` first passes `target` (a uniform draw times
/// their total). Where rounding leaves `target` at the very top, the last token that can be
/// drawn (weight above zero); 0 for no tokens.
fn pick(weights: &[(u32, f32)], target: f32) -> u32 {
    let mut acc = 0.0;
    for &(t, w) in weights {
        acc += w;
        if target < acc {
            return t;
        }
    }
    weights
        .iter()
        .rev()
        .find(|x| x.1 > 0.0)
        .or(weights.last())
        .map_or(0, |x| x.0)
}

/// Decreasing weight, then increasing id: the order top-k and top-p truncate in.
fn by_probability(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Moves the smallest set of `items` that comes first in [`by_probability`] order and
/// whose weights reach `mass` to the front, in no particular order, and returns its size
/// (all of them when even their sum falls short by rounding).
///
/// A bisection on the cut: `items[..lo]` always holds the `lo` heaviest items (weight sum
/// `acc < mass`) and the cut lies in `lo + 1 ..= hi`; one selection over `lo..hi` halves that
/// range. Expected linear time in all (`n + n/2 + ...` selection steps).
fn nucleus(items: &mut [(u32, f32)], mass: f64) -> usize {
    let (mut lo, mut hi) = (0, items.len());
    let mut acc = 0.0f64;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        items[lo..hi].select_nth_unstable_by(mid - lo, by_probability);
        let upper: f64 = items[lo..mid].iter().map(|x| x.1 as f64).sum();
        if acc + upper >= mass {
            hi = mid;
        } else {
            acc += upper;
            lo = mid;
        }
    }
    hi
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
    fn a_draw_lands_on_the_token_whose_running_sum_passes_it() {
        let dist = [(7, 0.25), (3, 0.5), (9, 0.25), (4, 0.0)];
        assert_eq!(pick(&dist, 0.0), 7);
        assert_eq!(pick(&dist, 0.25), 3);
        assert_eq!(pick(&dist, 0.74), 3);
        assert_eq!(pick(&dist, 0.8), 9);
        // Rounding at the top: never the zero-weight token after the last that can be drawn.
        assert_eq!(pick(&dist, 1.0), 9);
        assert_eq!(pick(&[(5, 0.0)], 0.5), 5);
        assert_eq!(pick(&[], 0.5), 0);
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
    fn distribution_matches_the_full_sort_oracle() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let vocab = 1 + (next() % 3000) as usize;
            // Peaked or flat logits, with ties (values on a coarse grid).
            let spread = [0.5f32, 4.0, 20.0][case % 3];
            let logits: Vec<f32> = (0..vocab)
                .map(|_| ((next() % 200) as f32 / 200.0 - 0.5) * spread)
                .collect();
            let p = SamplingParams {
                temperature: [0.3f32, 0.6, 1.0, 1.7][case % 4],
                top_p: [1.0f32, 0.95, 0.5, 0.999, 0.01][(case / 4) % 5],
                top_k: [0usize, 1, 5, 50, 5000][(case / 20) % 5],
                seed: 0,
            };
            let got = Sampler::new(p).distribution(&logits);
            let want = Sampler::new(p).distribution_by_full_sort(&logits);
            assert_eq!(got.len(), want.len(), "case {case} {p:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "case {case} {p:?}");
                assert!(
                    (g.1 - w.1).abs() <= 1e-5 * w.1.max(1e-3),
                    "case {case}: {g:?} {w:?}"
                );
            }
        }
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
        // Truncated (top-p 0.8 keeps tokens 2 and 1 of weights 3, 2, 1, ...): draws follow
        // `distribution`, token for token.
        let logits = [0.0f32, (2f32).ln(), (3f32).ln(), -5.0, -6.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            top_k: 4,
            seed: 8,
        });
        let dist = s.distribution(&logits);
        assert_eq!(dist.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 1]);
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[s.sample(&logits) as usize] += 1;
        }
        for (t, want) in dist {
            let got = counts[t as usize] as f64 / n as f64;
            assert!(
                (got - want as f64).abs() < 0.01,
                "token {t}: {got} vs {want}"
            );
        }
        assert_eq!(counts[0] + counts[3] + counts[4], 0);
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
