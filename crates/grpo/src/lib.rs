//! The R1 training kit on candle: the losses of DeepSeek-R1's reinforcement learning
//! (GRPO) and of its distillation, as plain differentiable functions of tensors.
//!
//! * [`group_advantages`] / [`group_advantages_tensor`]: group-relative advantages,
//!   `A_i = (r_i - mean_g) / (std_g + eps)` (GRPO, Shao et al. 2024) or `r_i - mean_g`
//!   (Dr. GRPO, Liu et al. 2025), selected by [`AdvantageScaling`].
//! * [`policy_loss`]: the clipped surrogate
//!   `-min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A) + β k3` per token, with
//!   `ρ = exp(logp - logp_old)` and Schulman's `k3 = exp(ref - logp) - (ref - logp) - 1`,
//!   reduced by a [`LossAggregation`]: per-sequence mean (GRPO), token mean (DAPO, Yu et
//!   al. 2025) or a constant normaliser (Dr. GRPO). [`PolicyLossConfig`] has a preset for
//!   each paper.
//! * [`token_log_probs`]: `log_softmax(logits)` gathered at the sampled ids, the input of
//!   [`policy_loss`].
//! * [`distillation_loss`]: `τ² · KL(softmax(z^T/τ) ‖ softmax(z^S/τ))` averaged over
//!   masked positions (Hinton et al. 2015).
//! * [`clip_grad_norm`]: global gradient-norm clipping for the optimiser step.
//!
//! Everything is built from candle ops, so `loss.backward()` gives the gradients with
//! respect to any [`candle_core::Var`] upstream (the policy's parameters, or `logp`
//! itself). Bad shapes, dtypes and hyper-parameters are [`GrpoError`]s naming the
//! argument; degenerate groups give zero advantage, and padding may hold any value.
//!
//! The equations, the variants and their papers are in each module's documentation and
//! the crate README; the formulas are checked against a straightforward PyTorch
//! implementation on committed fixtures (`tests/fixtures/grpo/`), losses and gradients.
//!
//! # Example: one GRPO step
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use grpo::{group_advantages, policy_loss, token_log_probs, AdvantageScaling, PolicyLossConfig};
//!
//! let dev = Device::Cpu;
//! // 2 prompts x 2 completions of 3 tokens over a vocabulary of 5.
//! let logits = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, 5), &dev)?)?;
//! let ids = Tensor::new(&[[1u32, 2, 0], [3, 3, 4], [0, 1, 2], [4, 4, 4]], &dev)?;
//! let mask = Tensor::new(&[[1u8, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], &dev)?;
//! let rewards = [1.0, 0.0, 1.0, 1.0]; // the second group is degenerate
//! let adv = group_advantages(&rewards, 2, AdvantageScaling::GRPO)?;
//! let adv = Tensor::new(adv.as_slice(), &dev)?;
//!
//! let logp = token_log_probs(logits.as_tensor(), &ids)?;
//! let reference = logp.detach();
//! let out = policy_loss(&PolicyLossConfig::grpo(), &logp, None, Some(&reference), &adv, &mask)?;
//! let grads = out.loss.backward()?;
//! assert_eq!(grads.get(&logits).unwrap().dims(), &[4, 3, 5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip
#![deny(missing_docs)]

pub mod advantage;
pub mod clip;
pub mod distill;
pub mod error;
pub mod logprob;
pub mod loss;

pub use advantage::{group_advantages, group_advantages_tensor, AdvantageScaling};
pub use clip::clip_grad_norm;
pub use distill::distillation_loss;
pub use error::{GrpoError, Result};
pub use logprob::token_log_probs;
pub use loss::{policy_loss, LossAggregation, PolicyLoss, PolicyLossConfig};

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
