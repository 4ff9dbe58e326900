//! Per-token log-probabilities of chosen tokens: `log_softmax(logits)[..., id]`.

use candle_core::{DType, Tensor, D};

use crate::error::{arg, shape, GrpoError, Result};

/// Log-probabilities of the tokens `ids` under `logits`:
///
/// ```text
/// logp[b, t] = z[b, t, ids[b, t]] - log Σ_v exp z[b, t, v]
/// ```
///
/// `logits` is `[..., V]` in a float dtype and `ids` has `logits`' shape without the last
/// dimension (typically `[B, T, V]` and `[B, T]`), in an integer dtype (`u8`, `u32`,
/// `i64`). The result has `ids`' shape and `logits`' dtype, and is differentiable with
/// respect to `logits` (log-softmax is computed max-shifted, then gathered). Divide the
/// logits by the sampling temperature first if completions were sampled at one.
///
/// Ids are checked (this reads them to the host): an id outside `0..V` is an error naming
/// its position, not a panic.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[[0.0f32, 0.0], [1.0, 0.0]]], &Device::Cpu)?;
/// let ids = Tensor::new(&[[1u32, 0]], &Device::Cpu)?;
/// let lp = grpo::token_log_probs(&logits, &ids)?.to_vec2::<f32>()?;
/// assert!((lp[0][0] - 0.5f32.ln()).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn token_log_probs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if !logits.dtype().is_float() {
        return Err(GrpoError::DType {
            name: "logits",
            expected: "a float dtype",
            got: logits.dtype(),
        });
    }
    if !matches!(ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
        return Err(GrpoError::DType {
            name: "ids",
            expected: "u8, u32 or i64",
            got: ids.dtype(),
        });
    }
    let ld = logits.dims();
    let Some((&vocab, lead)) = ld.split_last() else {
        return Err(shape("logits", "[..., V] (at least one dimension)", ld));
    };
    if lead != ids.dims() {
        return Err(shape(
            "ids",
            format!("{lead:?} (logits' shape without the vocabulary dimension)"),
            ids.dims(),
        ));
    }
    if vocab == 0 {
        return Err(shape("logits", "[..., V] with V >= 1", ld));
    }
    let flat = ids.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some(i) = flat
        .iter()
        .position(|&id| id < 0 || id as u64 >= vocab as u64)
    {
        return Err(arg(
            "ids",
            format!(
                "id {} at flat position {i} is outside the vocabulary 0..{vocab}",
                flat[i]
            ),
        ));
    }
    let idx = ids
        .to_dtype(DType::U32)?
        .unsqueeze(D::Minus1)?
        .contiguous()?;
    let logsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logsm.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn errors_name_the_argument() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
        let ids = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
        assert!(token_log_probs(&logits, &ids).is_ok());
        let e = |l: &Tensor, i: &Tensor| token_log_probs(l, i).unwrap_err().to_string();
        let bad = Tensor::zeros((2, 4), DType::U32, &dev).unwrap();
        assert!(e(&logits, &bad).contains("`ids`"));
        let big = Tensor::new(&[[0u32, 1, 4], [0, 0, 0]], &dev).unwrap();
        assert!(e(&logits, &big).contains("id 4 at flat position 2"));
        let fids = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        assert!(e(&logits, &fids).contains("dtype"));
        assert!(e(&ids, &ids).contains("logits"));
    }
}
