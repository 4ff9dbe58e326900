//! Group-relative advantages: each completion's reward compared with the other completions
//! sampled for the same prompt.
//!
//! For a group of `G` completions with rewards `r_1..r_G`:
//!
//! ```text
//! mean_g = (1/G) Σ_j r_j
//! std_g  = sqrt( Σ_j (r_j - mean_g)² / (G - 1) )        (unbiased sample std)
//!
//! AdvantageScaling::GroupStd { eps }:  A_i = (r_i - mean_g) / (std_g + eps)   GRPO
//! AdvantageScaling::None:              A_i =  r_i - mean_g                      Dr. GRPO
//! ```
//!
//! * GRPO: Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in
//!   Open Language Models" (outcome supervision, eq. in §4.1.2).
//! * Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
//!   Perspective", which drops the std division (it up-weights groups that are nearly all
//!   right or all wrong, a question-difficulty bias).
//!
//! **Which std.** `std_g` is the *unbiased sample* standard deviation (divisor `G - 1`), as
//! `torch.std` computes it by default and therefore as TRL's `GRPOTrainer` does
//! (`rewards.view(-1, G).std(dim=1)`); `eps` defaults to TRL's `1e-4`.
//!
//! **Degenerate groups.** A group whose rewards are all equal (every completion right, or
//! every one wrong) carries no learning signal: its advantages are exactly `0`, never
//! `NaN` (the formula would give `0 / (0 + eps)`; the crate sets the zeros explicitly so
//! rounding in the mean cannot leave `1e-13` residues). A group of one completion
//! (`G = 1`) is degenerate by definition.

use candle_core::{DType, Tensor};

use crate::error::{arg, shape, Result};

/// How group-centred rewards are scaled into advantages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdvantageScaling {
    /// GRPO (Shao et al. 2024): divide by the group's unbiased sample std plus `eps`.
    GroupStd {
        /// Added to the std before dividing (TRL: `1e-4`). Must be finite and `>= 0`.
        eps: f64,
    },
    /// Dr. GRPO (Liu et al. 2025): no scaling, `A_i = r_i - mean_g`.
    None,
}

impl AdvantageScaling {
    /// GRPO's scaling with TRL's `eps = 1e-4`.
    pub const GRPO: AdvantageScaling = AdvantageScaling::GroupStd { eps: 1e-4 };
}

impl Default for AdvantageScaling {
    /// [`AdvantageScaling::GRPO`].
    fn default() -> Self {
        Self::GRPO
    }
}

/// Group-relative advantages of a flat reward vector laid out group after group
/// (`rewards[g * group_size + i]` is completion `i` of prompt `g`), in the same layout.
///
/// Arithmetic is in `f64`. Errors when `group_size` is 0, the length is not a multiple of
/// `group_size`, a reward is not finite, or `eps` is negative or not finite.
///
/// ```
/// use grpo::{group_advantages, AdvantageScaling};
/// let a = group_advantages(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, AdvantageScaling::None).unwrap();
/// assert!((a[0] - 2.0 / 3.0).abs() < 1e-6);
/// assert_eq!(&a[3..], &[0.0, 0.0, 0.0]); // all right: no signal
/// ```
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    scaling: AdvantageScaling,
) -> Result<Vec<f32>> {
    if group_size == 0 {
        return Err(arg("group_size", "must be at least 1"));
    }
    if !rewards.len().is_multiple_of(group_size) {
        return Err(arg(
            "rewards",
            format!(
                "length {} is not a multiple of group_size {group_size}",
                rewards.len()
            ),
        ));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(arg(
            "rewards",
            format!("reward {i} is {}, not finite", rewards[i]),
        ));
    }
    if let AdvantageScaling::GroupStd { eps } = scaling {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(arg("eps", format!("{eps} must be finite and >= 0")));
        }
    }
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let first = group[0];
        if group.iter().all(|&r| r == first) {
            out.extend(std::iter::repeat_n(0.0, group.len()));
            continue;
        }
        let n = group.len() as f64;
        let mean = group.iter().map(|&r| r as f64).sum::<f64>() / n;
        let denom = match scaling {
            AdvantageScaling::None => 1.0,
            AdvantageScaling::GroupStd { eps } => {
                let var = group
                    .iter()
                    .map(|&r| (r as f64 - mean).powi(2))
                    .sum::<f64>()
                    / (n - 1.0);
                var.sqrt() + eps
            }
        };
        out.extend(group.iter().map(|&r| ((r as f64 - mean) / denom) as f32));
    }
    Ok(out)
}

/// Group-relative advantages of rewards shaped `[groups, group_size]` (any float dtype,
/// any device), returned with the same shape, dtype and device. See
/// [`group_advantages`] for the formula; the result carries no gradient.
pub fn group_advantages_tensor(rewards: &Tensor, scaling: AdvantageScaling) -> Result<Tensor> {
    let (groups, group_size) = match rewards.dims() {
        &[g, n] => (g, n),
        d => return Err(shape("rewards", "[groups, group_size]", d)),
    };
    if !rewards.dtype().is_float() {
        return Err(crate::GrpoError::DType {
            name: "rewards",
            expected: "a float dtype",
            got: rewards.dtype(),
        });
    }
    if group_size == 0 {
        return Err(shape(
            "rewards",
            "[groups, group_size >= 1]",
            rewards.dims(),
        ));
    }
    let flat = rewards
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let adv = group_advantages(&flat, group_size, scaling)?;
    Ok(Tensor::from_vec(adv, (groups, group_size), rewards.device())?.to_dtype(rewards.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_std_and_degenerate_groups() {
        // r = [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3).
        let a = group_advantages(
            &[1.0, 0.0, 0.0, 1.0],
            4,
            AdvantageScaling::GroupStd { eps: 0.0 },
        )
        .unwrap();
        let want = 0.5 / (1.0f64 / 3.0).sqrt();
        assert!((a[0] as f64 - want).abs() < 1e-6);
        assert!((a[1] as f64 + want).abs() < 1e-6);
        // Degenerate: exact zeros even with eps = 0 and awkward values.
        let a =
            group_advantages(&[0.1, 0.1, 0.1], 3, AdvantageScaling::GroupStd { eps: 0.0 }).unwrap();
        assert_eq!(a, vec![0.0; 3]);
        let a = group_advantages(&[0.7], 1, AdvantageScaling::GRPO).unwrap();
        assert_eq!(a, vec![0.0]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let s = AdvantageScaling::GRPO;
        assert!(group_advantages(&[1.0, 2.0, 3.0], 2, s)
            .unwrap_err()
            .to_string()
            .contains("rewards"));
        assert!(group_advantages(&[1.0], 0, s)
            .unwrap_err()
            .to_string()
            .contains("group_size"));
        assert!(group_advantages(&[1.0, f32::NAN], 2, s)
            .unwrap_err()
            .to_string()
            .contains("reward 1"));
        assert!(
            group_advantages(&[1.0, 0.0], 2, AdvantageScaling::GroupStd { eps: -1.0 })
                .unwrap_err()
                .to_string()
                .contains("eps")
        );
        let t = Tensor::zeros(4, DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(group_advantages_tensor(&t, s)
            .unwrap_err()
            .to_string()
            .contains("[groups, group_size]"));
    }
}
