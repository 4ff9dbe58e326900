//! Token selection as speculative decoding needs it: the distribution a sampler draws from
//! and its uniform draws, so any sampler (the model crate's temperature / top-k / top-p one)
//! plugs in; plus the speculative-sampling acceptance rule.

/// A sampler seen as "distribution from logits + uniform draws".
pub trait TokenSampler {
    /// The distribution tokens are drawn from (after temperature, top-k, top-p, ...), as
    /// `(token, probability)` pairs summing to 1. Greedy samplers return one pair with 1.
    fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)>;

    /// A uniform draw in `[0, 1)`.
    fn uniform(&mut self) -> f32;

    /// Draws from `dist` with one uniform draw (inverse CDF in the given order).
    fn draw(&mut self, dist: &[(u32, f32)]) -> u32 {
        let u = self.uniform();
        let mut acc = 0.0;
        for &(t, w) in dist {
            acc += w;
            if u < acc {
                return t;
            }
        }
        dist.iter().rev().find(|x| x.1 > 0.0).map_or(0, |x| x.0)
    }

    /// Draws the next token from `logits`.
    fn sample(&mut self, logits: &[f32]) -> u32 {
        let d = self.distribution(logits);
        if d.len() == 1 {
            return d[0].0;
        }
        self.draw(&d)
    }
}

/// Greedy selection (arg-max, first index on ties). Speculative decoding with it reproduces
/// plain greedy decoding token for token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

impl TokenSampler for Greedy {
    fn distribution(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        vec![(best as u32, 1.0)]
    }

    fn uniform(&mut self) -> f32 {
        0.5
    }
}

/// Probability of `token` in a sparse distribution.
pub fn prob(dist: &[(u32, f32)], token: u32) -> f32 {
    dist.iter().find(|x| x.0 == token).map_or(0.0, |x| x.1)
}

/// The residual distribution `norm(max(0, p - q))` a rejected draft is resampled from
/// (Leviathan et al. 2023, Chen et al. 2023). Falls back to `p` when `p <= q` everywhere
/// (impossible after a rejection except by rounding).
pub fn residual(p: &[(u32, f32)], q: &[(u32, f32)]) -> Vec<(u32, f32)> {
    let mut r: Vec<(u32, f32)> = p
        .iter()
        .map(|&(t, w)| (t, (w - prob(q, t)).max(0.0)))
        .filter(|x| x.1 > 0.0)
        .collect();
    let total: f32 = r.iter().map(|x| x.1).sum();
    if total <= 0.0 {
        return p.to_vec();
    }
    r.iter_mut().for_each(|x| x.1 /= total);
    r
}

/// The acceptance test for draft `token` drawn from `q`, under target `p`: accept with
/// probability `min(1, p/q)`. Consumes one uniform draw.
pub fn accept(
    sampler: &mut impl TokenSampler,
    p: &[(u32, f32)],
    q: &[(u32, f32)],
    token: u32,
) -> bool {
    let (pt, qt) = (prob(p, token), prob(q, token));
    if qt <= 0.0 {
        return false;
    }
    sampler.uniform() < pt / qt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_is_normalised_positive_part() {
        let p = [(0, 0.5), (1, 0.3), (2, 0.2)];
        let q = [(0, 0.7), (1, 0.1), (2, 0.2)];
        let r = residual(&p, &q);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 1);
        assert!((r[0].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn greedy_accepts_exactly_the_argmax() {
        let mut g = Greedy;
        let p = g.distribution(&[0.0, 2.0, 1.0]);
        assert!(accept(&mut g, &p, &[(1, 1.0)], 1));
        assert!(!accept(&mut g, &p, &[(2, 1.0)], 2));
        assert_eq!(residual(&p, &[(2, 1.0)]), vec![(1, 1.0)]);
    }
}
