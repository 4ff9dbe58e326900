//! Applying a rotation to candle tensors, in DeepSeek's interleaved layout or the half-split one.

use candle_core::{DType, Tensor, D};

use crate::error::{Result, RopeError};

/// Which dimensions of a rotary head form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(2i, 2i + 1)` (GPT-J style), results written back in place. DeepSeek's reference
    /// code, HF's V2 (complex multiply) and the DeepSeek checkpoints' weight order use this.
    Interleaved,
    /// Pairs `(i, i + d/2)` (GPT-NeoX style, HF's `rotate_half`).
    HalfSplit,
}

/// Rotates `x` of shape `[batch, heads, seq, dim]` by `cos`/`sin` of shape `[seq, dim/2]` (or
/// `[batch, seq, dim/2]` for per-sequence positions):
///
/// ```text
/// out_a = x_a · cos_i - x_b · sin_i
/// out_b = x_b · cos_i + x_a · sin_i
/// ```
///
/// for each pair `(a, b)` of `layout`. bf16/f16 inputs are rotated in f32 and cast back (the
/// cos/sin tables are f32).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() != 4 || !dims[3].is_multiple_of(2) {
        return Err(RopeError::Shape {
            what: "x",
            expected: "[batch, heads, seq, dim] with an even dim".into(),
            found: dims.to_vec(),
        });
    }
    let (seq, half) = (dims[2], dims[3] / 2);
    for (what, t) in [("cos", cos), ("sin", sin)] {
        let ok = match t.dims() {
            [s, h] => *s == seq && *h == half,
            [b, s, h] => *b == dims[0] && *s == seq && *h == half,
            _ => false,
        };
        if !ok {
            return Err(RopeError::Shape {
                what,
                expected: format!("[{seq}, {half}] or [{}, {seq}, {half}]", dims[0]),
                found: t.dims().to_vec(),
            });
        }
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let (cos, sin) = (
        cos.to_dtype(DType::F32)?.contiguous()?,
        sin.to_dtype(DType::F32)?.contiguous()?,
    );
    let out = match layout {
        RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&xf, &cos, &sin)?,
        RopeLayout::HalfSplit => candle_nn::rotary_emb::rope(&xf, &cos, &sin)?,
    };
    Ok(out.to_dtype(dtype)?)
}

/// Reorders the last dimension from interleaved pairs `[x0, x1, x2, x3, ...]` to
/// `[x0, x2, ..., x1, x3, ...]` (evens then odds).
///
/// HF transformers' DeepSeek-V3 (`rope_interleave=True`) returns rotated q/k in this order;
/// since the same permutation applies to q and k, `q · k` is unchanged. Use this to compare
/// with HF tensors, never to mix one layout's q with another's k.
pub fn deinterleave(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    if d % 2 != 0 {
        return Err(RopeError::Shape {
            what: "x",
            expected: "an even last dimension".into(),
            found: x.dims().to_vec(),
        });
    }
    let mut shape = x.dims().to_vec();
    shape.pop();
    shape.extend([d / 2, 2]);
    let paired = x.reshape(shape)?;
    let rank = paired.rank();
    let swapped = paired.transpose(rank - 2, rank - 1)?;
    Ok(swapped.flatten_from(rank - 2)?.contiguous()?)
}
