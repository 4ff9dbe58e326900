//! Global gradient-norm clipping, as RL fine-tuning applies it on every step (TRL's
//! `max_grad_norm = 1.0`).
//!
//! ```text
//! n = sqrt( Σ_vars Σ_elements g² ),   g ← g · min(1, max_norm / (n + 1e-6))
//! ```
//!
//! It matters more for GRPO than for supervised training: the k3 penalty's gradient
//! `1 - exp(logp_ref - logp)` is unbounded when the policy samples a token it now finds
//! far less likely than the reference does, and one such spike, unclipped, both moves the
//! weights far and fills Adam's second-moment estimate for hundreds of steps.

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

use crate::error::{arg, Result};

/// Scales the gradients of `vars` in `grads` in place so that their global L2 norm is at
/// most `max_norm`, and returns the norm before clipping (a useful metric). Variables
/// without a gradient are skipped. `max_norm` must be finite and > 0. A non-finite norm is
/// returned as is and the gradients are left untouched, so the caller can skip the step.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let w = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &Device::Cpu)?)?;
/// let mut grads = w.as_tensor().sqr()?.sum_all()?.affine(0.5, 0.0)?.backward()?; // g = w
/// let norm = grpo::clip_grad_norm(&mut grads, &[w.clone()], 1.0)?;
/// assert!((norm - 5.0).abs() < 1e-6);
/// let g = grads.get(&w).unwrap().to_vec1::<f32>()?;
/// assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(arg(
            "max_norm",
            format!("{max_norm} must be finite and > 0"),
        ));
    }
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        return Ok(norm);
    }
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for v in vars {
            if let Some(g) = grads.get(v) {
                let scaled = g.affine(scale, 0.0)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}
