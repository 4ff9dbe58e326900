//! Soft-label knowledge distillation (Hinton, Vinyals and Dean 2015, "Distilling the
//! Knowledge in a Neural Network").
//!
//! With temperature τ, teacher logits `z^T` and student logits `z^S` over a vocabulary:
//!
//! ```text
//! p^T = softmax(z^T / τ),   log p^S = log_softmax(z^S / τ)
//! KL_n = Σ_v p^T_nv (log p^T_nv - log p^S_nv)                       KL(teacher ‖ student)
//! L    = τ² · Σ_n m_n KL_n / max(Σ_n m_n, 1)
//! ```
//!
//! The τ² factor keeps the gradient's magnitude independent of τ (the soft targets'
//! gradients scale as 1/τ²), so the loss can be mixed with a hard-label loss unchanged.
//! This is how R1's reasoning was distilled into smaller dense models, at the token level.

use candle_core::{DType, Tensor, D};

use crate::error::{arg, shape, GrpoError, Result};
use crate::loss::{mask_to, masked_mean};

/// The temperature-scaled distillation loss `τ² · mean_n KL(p^T_n ‖ p^S_n)` over the
/// positions `n` where `mask` is non-zero (equations in the [module](self) docs).
///
/// * `student_logits`: `[..., V]` float (typically `[N, V]` or `[B, T, V]`), carries the
///   gradient.
/// * `teacher_logits`: same shape; treated as a constant (detached) and cast to the
///   student's dtype. Teacher logits of `-inf` (a banned token) are fine: `0 · log 0` is
///   taken as 0.
/// * `mask`: `None` (every position) or the logits' shape without the last dimension,
///   any dtype, non-zero meaning included.
/// * `temperature`: τ > 0, finite.
///
/// Returns a scalar tensor; masked-out positions get exactly zero gradient.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let s = Tensor::new(&[[1.0f32, 2.0, 3.0]], &Device::Cpu)?;
/// let l = grpo::distillation_loss(&s, &s, None, 2.0)?.to_scalar::<f32>()?;
/// assert!(l.abs() < 1e-6); // identical distributions
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn distillation_loss(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    mask: Option<&Tensor>,
    temperature: f64,
) -> Result<Tensor> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(arg(
            "temperature",
            format!("{temperature} must be finite and > 0"),
        ));
    }
    for (name, t) in [
        ("student_logits", student_logits),
        ("teacher_logits", teacher_logits),
    ] {
        if !t.dtype().is_float() {
            return Err(GrpoError::DType {
                name,
                expected: "a float dtype",
                got: t.dtype(),
            });
        }
    }
    let sd = student_logits.dims();
    let Some((&vocab, lead)) = sd.split_last() else {
        return Err(shape("student_logits", "[..., V]", sd));
    };
    if vocab == 0 {
        return Err(shape("student_logits", "[..., V] with V >= 1", sd));
    }
    if teacher_logits.dims() != sd {
        return Err(shape(
            "teacher_logits",
            format!("{sd:?} (same as student_logits)"),
            teacher_logits.dims(),
        ));
    }
    let dtype = student_logits.dtype();
    let n: usize = lead.iter().product();
    let maskf = match mask {
        Some(m) => {
            if m.dims() != lead {
                return Err(shape(
                    "mask",
                    format!("{lead:?} (logits' shape without the vocabulary dimension)"),
                    m.dims(),
                ));
            }
            mask_to(m, dtype)?.reshape(n)?
        }
        None => Tensor::ones(n, dtype, student_logits.device())?,
    };
    // Rows that are masked out may hold anything: they are replaced by zeros (selected,
    // not multiplied) before any arithmetic, so they get exactly zero gradient.
    let keep = mask_to(&maskf, DType::U8)?
        .reshape((n, 1))?
        .broadcast_as((n, vocab))?
        .contiguous()?;
    let zeros = Tensor::zeros((n, vocab), dtype, student_logits.device())?;
    let inv_t = 1.0 / temperature;
    let s = keep
        .where_cond(&student_logits.reshape((n, vocab))?, &zeros)?
        .affine(inv_t, 0.0)?;
    let t = keep
        .where_cond(
            &teacher_logits
                .detach()
                .to_dtype(dtype)?
                .reshape((n, vocab))?,
            &zeros,
        )?
        .affine(inv_t, 0.0)?;
    let log_pt = candle_nn::ops::log_softmax(&t, D::Minus1)?;
    let pt = log_pt.exp()?;
    let log_ps = candle_nn::ops::log_softmax(&s, D::Minus1)?;
    let term = (&pt * (&log_pt - &log_ps)?)?;
    // 0 · log 0 = 0 where the teacher gives a token no mass.
    let term = pt.gt(0.0)?.where_cond(&term, &zeros)?;
    let kl = term.sum(1)?;
    Ok(masked_mean(&kl, &maskf)?.affine(temperature * temperature, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn errors_name_the_argument() {
        let dev = Device::Cpu;
        let s = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        let e = |r: Result<Tensor>| r.unwrap_err().to_string();
        let t = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        assert!(e(distillation_loss(&s, &t, None, 1.0)).contains("teacher_logits"));
        let m = Tensor::zeros(4, DType::U8, &dev).unwrap();
        assert!(e(distillation_loss(&s, &s, Some(&m), 1.0)).contains("`mask`"));
        assert!(e(distillation_loss(&s, &s, None, 0.0)).contains("temperature"));
    }

    #[test]
    fn banned_teacher_tokens_and_masked_rows_are_finite() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[f32::NEG_INFINITY, 1.0, 0.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let s = candle_core::Var::from_tensor(
            &Tensor::new(&[[0.5f32, 0.1, 0.2], [f32::NAN, 0.0, 0.0]], &dev).unwrap(),
        )
        .unwrap();
        let m = Tensor::new(&[1u8, 0], &dev).unwrap();
        let l = distillation_loss(s.as_tensor(), &t, Some(&m), 2.0).unwrap();
        assert!(l.to_scalar::<f32>().unwrap().is_finite());
        let g = l.backward().unwrap();
        let g = g
            .get(&s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(g[..3].iter().all(|x| x.is_finite()));
        assert!(g[3..].iter().all(|&x| x == 0.0), "{g:?}");
    }
}
