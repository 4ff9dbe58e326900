//! The MTP training loss of the DeepSeek-V3 report:
//! `L_MTP = (lambda / D) * sum_{k=1..D} CE_k`, where `CE_k` is the mean cross-entropy of
//! depth `k`'s predictions against the targets shifted by `k + 1`.

use candle_core::{DType, Tensor};

use crate::error::{MtpError, Result};

/// Mean cross-entropy of f32-convertible logits `[N, V]` against `targets` (`N` ids).
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let n = logits.dim(0)?;
    if n != targets.len() || n == 0 {
        return Err(MtpError::Input(format!(
            "cross_entropy: {n} logit rows vs {} targets (need equal, > 0)",
            targets.len()
        )));
    }
    let t = Tensor::new(targets, logits.device())?;
    Ok(candle_nn::loss::cross_entropy(
        &logits.to_dtype(DType::F32)?,
        &t,
    )?)
}

/// `L_MTP` for `D = depth_logits.len()` modules over the sequence `tokens` (`t_0..t_{T-1}`).
///
/// `depth_logits[k - 1]` is depth `k`'s logits `[n_k, V]`: row `i` combines `h_i^{k-1}` with
/// `emb(t_{i+k})` and predicts `t_{i+k+1}`, so `n_k <= T - k - 1` (extra rows have no target
/// and are an error). Returns the scalar `(lambda / D) * sum_k CE_k` (differentiable through
/// candle's autograd when the logits are `Var`-derived).
pub fn mtp_loss(depth_logits: &[Tensor], tokens: &[u32], lambda: f64) -> Result<Tensor> {
    let d = depth_logits.len();
    if d == 0 {
        return Err(MtpError::Input("mtp_loss: no depth".into()));
    }
    let mut total: Option<Tensor> = None;
    for (k0, logits) in depth_logits.iter().enumerate() {
        let k = k0 + 1;
        let n = logits.dim(0)?;
        let shift = k + 1;
        if n + shift > tokens.len() {
            return Err(MtpError::Input(format!(
                "mtp_loss: depth {k} has {n} rows but {} tokens give at most {}",
                tokens.len(),
                tokens.len().saturating_sub(shift)
            )));
        }
        let ce = cross_entropy(logits, &tokens[shift..shift + n])?;
        total = Some(match total {
            None => ce,
            Some(t) => (t + ce)?,
        });
    }
    Ok((total.expect("d > 0") * (lambda / d as f64))?)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn hand_checked_two_depths() {
        let dev = Device::Cpu;
        // tokens t0..t4 = [0, 1, 1, 0, 1], V = 2.
        let tokens = [0u32, 1, 1, 0, 1];
        // Depth 1: rows predict t2, t3, t4 = [1, 0, 1]. Row 0 uniform (CE ln 2); rows 1-2 give
        // logits [0, ln 3] -> p = [1/4, 3/4]: CE(target 0) = ln 4, CE(target 1) = ln(4/3).
        let l3 = 3f32.ln();
        let d1 = Tensor::new(&[[0f32, 0.0], [0.0, l3], [0.0, l3]], &dev).unwrap();
        // Depth 2: rows predict t3, t4 = [0, 1]; both rows [ln 3, 0] -> p = [3/4, 1/4]:
        // CE = ln(4/3) and ln 4.
        let d2 = Tensor::new(&[[l3, 0.0], [l3, 0.0]], &dev).unwrap();
        let ce1 = (2f64.ln() + 4f64.ln() + (4.0f64 / 3.0).ln()) / 3.0;
        let ce2 = ((4.0f64 / 3.0).ln() + 4f64.ln()) / 2.0;
        let lambda = 0.3;
        let want = lambda / 2.0 * (ce1 + ce2);
        let got = scalar(&mtp_loss(&[d1.clone(), d2], &tokens, lambda).unwrap());
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // One depth: lambda * CE_1.
        let got = scalar(&mtp_loss(&[d1], &tokens, 1.0).unwrap());
        assert!((got - ce1).abs() < 1e-6, "{got} vs {ce1}");
    }

    #[test]
    fn too_many_rows_is_an_error_naming_the_depth() {
        let dev = Device::Cpu;
        let d1 = Tensor::zeros((4, 2), DType::F32, &dev).unwrap();
        let e = mtp_loss(&[d1], &[0, 1, 0, 1], 1.0).unwrap_err().to_string();
        assert!(e.contains("depth 1 has 4 rows"), "{e}");
    }
}
