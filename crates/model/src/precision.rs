//! [`Precision`]: the dtype a model computes in, the dtype it keeps its matrices in, and whether
//! the matrices are placed in huge pages.

use candle_core::{DType, Device};

use crate::checkpoint::Checkpoint;

/// The dtypes a model computes in and stores its matrices in.
///
/// Activations, the KV cache and every non-matrix weight (norms, biases) use `compute`; the
/// rank-2 weights (projections, experts, router, embedding, head) use `matrices`. On the CPU,
/// `Precision::mixed(DType::F32, DType::BF16)` keeps a bf16 checkpoint's bytes in memory (a
/// decode step reads half of what f32 weights would) while all arithmetic stays f32: the
/// `linear` crate widens each weight row in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Activations, cache, norms, biases.
    pub compute: DType,
    /// Rank-2 weights.
    pub matrices: DType,
    /// Back CPU matrices with transparent huge pages (`linear::advise_huge_pages`; on by
    /// default). Values never change; off only to measure what the pages are worth.
    pub huge_pages: bool,
}

impl Precision {
    /// Matrices stored in `matrices`, everything else in `compute`.
    pub fn mixed(compute: DType, matrices: DType) -> Self {
        Self {
            compute,
            matrices,
            huge_pages: true,
        }
    }

    /// The same dtypes, with huge pages on or off.
    pub fn with_huge_pages(self, huge_pages: bool) -> Self {
        Self { huge_pages, ..self }
    }

    /// The setting for `compute` on `device` given how `checkpoint` stores its matrices: on the
    /// CPU with f32 compute, bf16/f16 matrices stay narrow, since decode is bound by the bytes
    /// it reads; FP8 ones are dequantised to f32, which is HF's f32 dequantisation exactly
    /// (e4m3 times an f32 block scale is not, in general, a bf16 value: rounding it to bf16
    /// moved logits by up to 2.8 on a V3 FP8 checkpoint). Otherwise everything is in `compute`
    /// (GPU kernels want one dtype). The FP8 matrices' native kernels (`linear::Fp8Matrix`,
    /// one byte per weight, exact) are not wired into the model yet.
    pub fn auto(checkpoint: &Checkpoint, compute: DType, device: &Device) -> Self {
        let matrices = match checkpoint.matrix_dtype() {
            _ if !device.is_cpu() || compute != DType::F32 => compute,
            Some(d @ (DType::BF16 | DType::F16)) => d,
            Some(DType::F8E4M3) => DType::F32,
            _ => compute,
        };
        Self::mixed(compute, matrices)
    }
}

impl From<DType> for Precision {
    /// Everything in one dtype.
    fn from(dtype: DType) -> Self {
        Self::mixed(dtype, dtype)
    }
}

/// Parses `f32`, `bf16` or `f16` (for command-line options).
pub fn parse_float_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(format!("'{s}' is not one of f32, bf16, f16")),
    }
}
