//! Load-balancing utilities for training DeepSeek-style models (V3 report, section 2.1.2).
//!
//! * [`update_bias`]: auxiliary-loss-free balancing. After each step, for every expert i with
//!   load c_i against the mean load c̄: `b_i -= gamma` if `c_i > c̄`, `b_i += gamma` if
//!   `c_i < c̄` (V3 used gamma = 0.001). The bias only changes which experts are *selected*
//!   (see [`crate::gate::route`]), never the weights.
//! * [`sequence_balance_loss`]: the complementary sequence-wise loss
//!   `alpha * sum_i f_i * P_i` with `f_i = N_r / (K_r * T) * count_i` and
//!   `P_i = (1/T) * sum_t s_{i,t} / sum_j s_{j,t}`.
//! * [`LoadStats`]: counts, max/mean and min/mean imbalance, coefficient of variation and the
//!   normalised entropy of the load distribution.

use crate::gate::Routing;

/// One auxiliary-loss-free bias step: `b_i -= gamma` for overloaded experts
/// (`counts[i] > mean`), `+= gamma` for underloaded ones, unchanged at exactly the mean.
pub fn update_bias(bias: &mut [f32], counts: &[usize], gamma: f32) {
    assert_eq!(bias.len(), counts.len(), "one bias per expert");
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    for (b, &c) in bias.iter_mut().zip(counts) {
        let c = c as f64;
        if c > mean {
            *b -= gamma;
        } else if c < mean {
            *b += gamma;
        }
    }
}

/// The sequence-wise balance loss `alpha * sum_i f_i * P_i` for one sequence.
///
/// `scores` are the raw affinities s (`[T, E]` row-major, sigmoid or softmax), `routing` the
/// chosen experts of the same T tokens. A perfectly balanced router gives `alpha` (f_i = 1,
/// sum P_i = 1); the loss grows as load and affinity concentrate on the same experts.
pub fn sequence_balance_loss(
    scores: &[f32],
    routing: &Routing,
    n_experts: usize,
    alpha: f32,
) -> f32 {
    let t = routing.n_tokens;
    if t == 0 {
        return 0.0;
    }
    assert_eq!(scores.len(), t * n_experts, "scores must be [T, E]");
    let k = routing.top_k as f64;
    let counts = routing.counts(n_experts);
    let mut p = vec![0f64; n_experts];
    for row in scores.chunks_exact(n_experts) {
        let sum: f64 = row.iter().map(|&s| s as f64).sum();
        for (pi, &s) in p.iter_mut().zip(row) {
            *pi += s as f64 / sum / t as f64;
        }
    }
    let scale = n_experts as f64 / (k * t as f64);
    let loss: f64 = counts
        .iter()
        .zip(&p)
        .map(|(&c, &pi)| scale * c as f64 * pi)
        .sum();
    alpha * loss as f32
}

/// Per-expert load statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadStats {
    /// Tokens (or load units) per expert.
    pub counts: Vec<usize>,
    /// Mean load.
    pub mean: f64,
    /// max / mean (1.0 = perfect balance).
    pub max_over_mean: f64,
    /// min / mean.
    pub min_over_mean: f64,
    /// Coefficient of variation (std / mean).
    pub cv: f64,
    /// Entropy of the load distribution divided by ln(E): 1.0 = uniform.
    pub normalized_entropy: f64,
}

impl LoadStats {
    /// Statistics of a count vector.
    pub fn from_counts(counts: Vec<usize>) -> Self {
        let loads: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let s = load_summary(&loads);
        Self {
            counts,
            mean: s.mean,
            max_over_mean: s.max_over_mean,
            min_over_mean: s.min_over_mean,
            cv: s.cv,
            normalized_entropy: s.normalized_entropy,
        }
    }

    /// Statistics of a routing decision.
    pub fn from_routing(routing: &Routing, n_experts: usize) -> Self {
        Self::from_counts(routing.counts(n_experts))
    }
}

/// Summary of a real-valued load vector (used for experts and for devices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSummary {
    /// Mean load.
    pub mean: f64,
    /// max / mean.
    pub max_over_mean: f64,
    /// min / mean.
    pub min_over_mean: f64,
    /// std / mean.
    pub cv: f64,
    /// Entropy / ln(n).
    pub normalized_entropy: f64,
}

/// Summarises loads (all zero gives ratios of 1 and entropy 1).
pub fn load_summary(loads: &[f64]) -> LoadSummary {
    let n = loads.len().max(1) as f64;
    let total: f64 = loads.iter().sum();
    let mean = total / n;
    if total <= 0.0 {
        return LoadSummary {
            mean,
            max_over_mean: 1.0,
            min_over_mean: 1.0,
            cv: 0.0,
            normalized_entropy: 1.0,
        };
    }
    let max = loads.iter().copied().fold(f64::MIN, f64::max);
    let min = loads.iter().copied().fold(f64::MAX, f64::min);
    let var = loads.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    let entropy: f64 = loads
        .iter()
        .filter(|&&l| l > 0.0)
        .map(|&l| {
            let p = l / total;
            -p * p.ln()
        })
        .sum();
    LoadSummary {
        mean,
        max_over_mean: max / mean,
        min_over_mean: min / mean,
        cv: var.sqrt() / mean,
        normalized_entropy: if n > 1.0 { entropy / n.ln() } else { 1.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_moves_against_load() {
        let mut b = vec![0.0; 4];
        // mean load 5: expert 0 is overloaded, expert 3 exactly balanced.
        update_bias(&mut b, &[11, 2, 2, 5], 0.001);
        assert_eq!(b, vec![-0.001, 0.001, 0.001, 0.0]);
    }

    #[test]
    fn balanced_loss_is_alpha() {
        // 2 tokens, 4 experts, top-2, uniform scores, each expert used once.
        let r = Routing {
            n_tokens: 2,
            top_k: 2,
            indices: vec![0, 1, 2, 3],
            weights: vec![0.5; 4],
        };
        let loss = sequence_balance_loss(&[0.25; 8], &r, 4, 1e-4);
        assert!((loss - 1e-4).abs() < 1e-9, "{loss}");
        let s = LoadStats::from_routing(&r, 4);
        assert_eq!(s.max_over_mean, 1.0);
        assert!((s.normalized_entropy - 1.0).abs() < 1e-12);
    }
}
