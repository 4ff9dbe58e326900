//! The clipped surrogate policy loss of GRPO and its DAPO and Dr. GRPO variants, with
//! Schulman's k3 KL penalty.
//!
//! Inputs are per-token log-probabilities `[B, T]` of the sampled completion tokens:
//! `logp` under the policy being trained (differentiable), `logp_old` under the policy
//! that sampled them, `logp_ref` under the frozen reference policy, plus advantages
//! `A` (`[B]`, one per completion, or `[B, T]` per token) and a completion mask `m`
//! `[B, T]` (non-zero on completion tokens, zero on padding and prompt).
//!
//! Per token (Shao et al. 2024, eq. 3; PPO's clip, Schulman et al. 2017):
//!
//! ```text
//! ρ_t  = exp(logp_t - logp_old_t)
//! k3_t = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1      ≥ 0, an unbiased
//!                                                                  estimate of KL(π ‖ π_ref)
//! ℓ_t  = -min( ρ_t A, clip(ρ_t, 1 - ε_low, 1 + ε_high) A ) + β k3_t
//! ```
//!
//! k3 is the estimator of J. Schulman, "Approximating KL Divergence" (2020), the one
//! DeepSeekMath and TRL use. ε_low = ε_high is PPO's symmetric clip; DAPO's "clip-higher"
//! sets ε_high > ε_low (0.2 / 0.28) so low-probability tokens can grow.
//!
//! Aggregation over the batch ([`LossAggregation`]), with `|o_i| = Σ_t m_it`:
//!
//! ```text
//! SequenceMean        (GRPO, Shao et al. 2024):  L = (1/B) Σ_i (1/max(|o_i|,1)) Σ_t m_it ℓ_it
//! TokenMean           (DAPO, Yu et al. 2025):    L = Σ_i Σ_t m_it ℓ_it / max(Σ_i |o_i|, 1)
//! ConstantNormalizer  (Dr. GRPO, Liu et al. 2025): L = Σ_i Σ_t m_it ℓ_it / (B · max_len)
//! ```
//!
//! GRPO's per-sequence mean weights a token of a short completion more than one of a long
//! completion (a length bias: wrong answers are pushed to grow long). DAPO's token-level
//! mean gives every token in the batch the same weight; Dr. GRPO divides by a constant
//! (the generation budget), so the gradient is an unbiased policy gradient. The `max(·, 1)`
//! guards match TRL (`clamp(min=1.0)`): an empty completion contributes zero.
//!
//! With a single policy update per batch (`num_iterations = 1`), `logp_old` is `logp`
//! detached: pass `None` and ρ = 1 exactly while the gradient is still `A ∇logp`.

use candle_core::{DType, Tensor};

use crate::error::{arg, shape, GrpoError, Result};

/// How per-token losses are reduced to the batch loss (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossAggregation {
    /// GRPO (Shao et al. 2024): mean over each completion's tokens, then over completions.
    SequenceMean,
    /// DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
    /// Scale"): mean over all completion tokens of the batch.
    TokenMean,
    /// Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): sum over all
    /// completion tokens divided by `B · max_len`.
    ConstantNormalizer {
        /// The constant per-completion length (the generation budget); must be at least 1
        /// and at least `T`.
        max_len: usize,
    },
}

/// Hyper-parameters of [`policy_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyLossConfig {
    /// ε_low: the ratio is clipped below at `1 - epsilon_low` (in `[0, 1]`).
    pub epsilon_low: f64,
    /// ε_high: the ratio is clipped above at `1 + epsilon_high` (`>= 0`).
    pub epsilon_high: f64,
    /// β: weight of the k3 KL penalty (`>= 0`; `> 0` requires reference log-probs).
    pub beta: f64,
    /// How per-token losses become the batch loss.
    pub aggregation: LossAggregation,
}

impl PolicyLossConfig {
    /// GRPO as in DeepSeekMath: ε = 0.2 both sides, β = 0.04, per-sequence mean.
    pub fn grpo() -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.04,
            aggregation: LossAggregation::SequenceMean,
        }
    }

    /// DAPO: clip-higher ε_low = 0.2, ε_high = 0.28, no KL (β = 0), token-level mean.
    pub fn dapo() -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
            beta: 0.0,
            aggregation: LossAggregation::TokenMean,
        }
    }

    /// Dr. GRPO: ε = 0.2 both sides, β = 0, sum over tokens divided by `B · max_len`.
    /// Pair it with [`AdvantageScaling::None`](crate::AdvantageScaling::None).
    pub fn dr_grpo(max_len: usize) -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            aggregation: LossAggregation::ConstantNormalizer { max_len },
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.epsilon_low.is_finite() && (0.0..=1.0).contains(&self.epsilon_low)) {
            return Err(arg(
                "epsilon_low",
                format!("{} must be in [0, 1]", self.epsilon_low),
            ));
        }
        if !(self.epsilon_high.is_finite() && self.epsilon_high >= 0.0) {
            return Err(arg(
                "epsilon_high",
                format!("{} must be finite and >= 0", self.epsilon_high),
            ));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(arg(
                "beta",
                format!("{} must be finite and >= 0", self.beta),
            ));
        }
        Ok(())
    }
}

impl Default for PolicyLossConfig {
    /// [`PolicyLossConfig::grpo`].
    fn default() -> Self {
        Self::grpo()
    }
}

/// The result of [`policy_loss`].
#[derive(Debug, Clone)]
pub struct PolicyLoss {
    /// The scalar batch loss, differentiable with respect to `logp`.
    pub loss: Tensor,
    /// `m_t ℓ_t`, `[B, T]` (zero off the mask), differentiable.
    pub per_token_loss: Tensor,
    /// Masked token mean of k3 (detached scalar); `None` without reference log-probs.
    pub kl: Option<Tensor>,
    /// Fraction of completion tokens whose gradient the clip removes (ρ < 1 - ε_low with
    /// A < 0, or ρ > 1 + ε_high with A > 0), as TRL logs it; detached scalar.
    pub clip_fraction: Tensor,
}

fn check_2d(name: &'static str, t: &Tensor, b: usize, n: usize) -> Result<()> {
    if t.dims() != [b, n] {
        return Err(shape(name, format!("[{b}, {n}] (same as logp)"), t.dims()));
    }
    Ok(())
}

fn check_float(name: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(GrpoError::DType {
            name,
            expected: "a float dtype",
            got: t.dtype(),
        });
    }
    Ok(())
}

/// The clipped surrogate loss with the k3 KL penalty, aggregated per
/// `config.aggregation` (equations in the [module](self) docs).
///
/// * `logp`: `[B, T]` float, log-probabilities of the sampled tokens under the policy
///   (carry the gradient; typically from [`token_log_probs`](crate::token_log_probs)).
/// * `logp_old`: `[B, T]`, under the sampling policy; `None` means `logp` detached.
/// * `logp_ref`: `[B, T]`, under the reference policy; required when `beta > 0`, and
///   used for [`PolicyLoss::kl`] whenever given.
/// * `advantages`: `[B]` (one per completion, broadcast over tokens) or `[B, T]`.
/// * `mask`: `[B, T]`, any dtype; non-zero marks a completion token.
///
/// `logp_old`, `logp_ref` and `advantages` are treated as constants (detached) and cast
/// to `logp`'s dtype. Values at masked-out positions are ignored entirely (replaced by
/// zeros before any arithmetic), so padding may hold anything, even `-inf`.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use grpo::{policy_loss, PolicyLossConfig};
///
/// let dev = Device::Cpu;
/// let logp = Var::from_tensor(&Tensor::new(&[[-1.0f32, -2.0], [-0.5, -0.1]], &dev)?)?;
/// let adv = Tensor::new(&[1.0f32, -1.0], &dev)?;
/// let mask = Tensor::new(&[[1u8, 1], [1, 0]], &dev)?;
/// let out = policy_loss(&PolicyLossConfig::dapo(), logp.as_tensor(), None, None, &adv, &mask)?;
/// // On-policy: ρ = 1, so L = -(1 + 1 - 1) / 3 and dL/dlogp = -A m / 3.
/// assert!((out.loss.to_scalar::<f32>()? + 1.0 / 3.0).abs() < 1e-6);
/// let grads = out.loss.backward()?;
/// let g = grads.get(&logp).unwrap().to_vec2::<f32>()?;
/// assert!((g[1][0] - 1.0 / 3.0).abs() < 1e-6 && g[1][1] == 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn policy_loss(
    config: &PolicyLossConfig,
    logp: &Tensor,
    logp_old: Option<&Tensor>,
    logp_ref: Option<&Tensor>,
    advantages: &Tensor,
    mask: &Tensor,
) -> Result<PolicyLoss> {
    config.validate()?;
    let (b, t) = match logp.dims() {
        &[b, t] if b > 0 && t > 0 => (b, t),
        d => return Err(shape("logp", "[batch, T] with batch, T >= 1", d)),
    };
    check_float("logp", logp)?;
    check_2d("mask", mask, b, t)?;
    if let Some(o) = logp_old {
        check_2d("logp_old", o, b, t)?;
        check_float("logp_old", o)?;
    }
    if let Some(r) = logp_ref {
        check_2d("logp_ref", r, b, t)?;
        check_float("logp_ref", r)?;
    }
    check_float("advantages", advantages)?;
    let dtype = logp.dtype();
    let adv = match advantages.dims() {
        &[n] if n == b => advantages.reshape((b, 1))?.broadcast_as((b, t))?,
        &[n, m] if n == b && m == t => advantages.clone(),
        d => {
            return Err(shape(
                "advantages",
                format!("[{b}] or [{b}, {t}] (batch of logp)"),
                d,
            ))
        }
    }
    .detach()
    .to_dtype(dtype)?;
    if config.beta > 0.0 && logp_ref.is_none() {
        return Err(arg("logp_ref", "required when beta > 0"));
    }
    if let LossAggregation::ConstantNormalizer { max_len } = config.aggregation {
        if max_len == 0 || max_len < t {
            return Err(arg(
                "max_len",
                format!("{max_len} must be >= 1 and >= the completion length T = {t}"),
            ));
        }
    }

    let keep = mask.ne(0.0)?;
    let maskf = keep.to_dtype(dtype)?;
    let zeros = logp.zeros_like()?.detach();
    let clean = |x: &Tensor| -> Result<Tensor> {
        Ok(keep.where_cond(&x.detach().to_dtype(dtype)?, &zeros)?)
    };
    let logp_m = keep.where_cond(logp, &zeros)?;
    let old = match logp_old {
        Some(o) => clean(o)?,
        None => logp_m.detach(),
    };

    let ratio = (&logp_m - &old)?.exp()?;
    let lo = 1.0 - config.epsilon_low;
    let hi = 1.0 + config.epsilon_high;
    let unclipped = (&ratio * &adv)?;
    let clipped = (ratio.clamp(lo, hi)? * &adv)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;

    let k3 = match logp_ref {
        Some(r) => {
            let d = (clean(r)? - &logp_m)?;
            Some(((d.exp()? - &d)? - 1.0)?)
        }
        None => None,
    };
    if config.beta > 0.0 {
        if let Some(k3) = &k3 {
            per_token = (per_token + (k3 * config.beta)?)?;
        }
    }
    let per_token = (per_token * &maskf)?;

    let n_tokens = maskf.sum_all()?.maximum(1.0)?;
    let loss = match config.aggregation {
        LossAggregation::SequenceMean => {
            let lens = maskf.sum(1)?.maximum(1.0)?;
            (per_token.sum(1)? / lens)?.mean(0)?
        }
        LossAggregation::TokenMean => per_token.sum_all()?.broadcast_div(&n_tokens)?,
        LossAggregation::ConstantNormalizer { max_len } => per_token
            .sum_all()?
            .affine(1.0 / (b as f64 * max_len as f64), 0.0)?,
    };

    let kl = match &k3 {
        Some(k3) => Some(
            (k3.detach() * &maskf)?
                .sum_all()?
                .broadcast_div(&n_tokens)?,
        ),
        None => None,
    };
    let ratio = ratio.detach();
    let low = (ratio.lt(lo)?.to_dtype(dtype)? * adv.lt(0.0)?.to_dtype(dtype)?)?;
    let high = (ratio.gt(hi)?.to_dtype(dtype)? * adv.gt(0.0)?.to_dtype(dtype)?)?;
    let clip_fraction = ((low + high)? * &maskf)?
        .sum_all()?
        .broadcast_div(&n_tokens)?;

    Ok(PolicyLoss {
        loss,
        per_token_loss: per_token,
        kl,
        clip_fraction,
    })
}

/// Masked mean helper shared with distillation: `Σ x m / max(Σ m, 1)` over all elements.
pub(crate) fn masked_mean(x: &Tensor, maskf: &Tensor) -> Result<Tensor> {
    let n = maskf.sum_all()?.maximum(1.0)?;
    Ok((x * maskf)?.sum_all()?.broadcast_div(&n)?)
}

/// Converts a mask of any dtype to `dtype` zeros and ones (non-zero means kept).
pub(crate) fn mask_to(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(mask.ne(0.0)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(v: &[[f32; 3]; 2]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn degenerate_and_padding_are_finite() {
        let logp = Var::from_tensor(&t2(&[
            [-1.0, f32::NEG_INFINITY, f32::NAN],
            [-0.3, -0.2, -0.1],
        ]))
        .unwrap();
        let old = t2(&[[-1.1, 0.0, 0.0], [-0.2, -0.2, f32::NEG_INFINITY]]);
        let r = t2(&[[-0.9, f32::NAN, 0.0], [-0.1, -0.5, -0.1]]);
        let mask = t2(&[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]);
        let adv = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        for agg in [
            LossAggregation::SequenceMean,
            LossAggregation::TokenMean,
            LossAggregation::ConstantNormalizer { max_len: 4 },
        ] {
            let cfg = PolicyLossConfig {
                aggregation: agg,
                ..PolicyLossConfig::grpo()
            };
            let out =
                policy_loss(&cfg, logp.as_tensor(), Some(&old), Some(&r), &adv, &mask).unwrap();
            let l = out.loss.to_scalar::<f32>().unwrap();
            assert!(l.is_finite() && l > 0.0, "{agg:?}: {l}");
            let g = out.loss.backward().unwrap();
            let g = g
                .get(&logp)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{agg:?}: {g:?}");
            assert_eq!(g[1], 0.0);
            assert_eq!(g[2], 0.0);
        }
    }

    #[test]
    fn bad_shapes_name_the_argument() {
        let logp = t2(&[[0.0; 3]; 2]);
        let adv = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let cfg = PolicyLossConfig::dapo();
        let e = |r: Result<PolicyLoss>| r.unwrap_err().to_string();
        let bad = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(e(policy_loss(&cfg, &logp, None, None, &adv, &bad)).contains("`mask`"));
        assert!(e(policy_loss(&cfg, &logp, Some(&bad), None, &adv, &logp)).contains("logp_old"));
        assert!(e(policy_loss(&cfg, &logp, None, None, &bad, &logp)).contains("advantages"));
        assert!(e(policy_loss(
            &PolicyLossConfig::grpo(),
            &logp,
            None,
            None,
            &adv,
            &logp
        ))
        .contains("logp_ref"));
        assert!(e(policy_loss(
            &PolicyLossConfig::dr_grpo(2),
            &logp,
            None,
            None,
            &adv,
            &logp
        ))
        .contains("max_len"));
        let cfg = PolicyLossConfig {
            epsilon_low: -0.1,
            ..cfg
        };
        assert!(e(policy_loss(&cfg, &logp, None, None, &adv, &logp)).contains("epsilon_low"));
        let ids = Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap();
        assert!(e(policy_loss(
            &PolicyLossConfig::dapo(),
            &ids,
            None,
            None,
            &adv,
            &logp
        ))
        .contains("dtype"));
    }
}
