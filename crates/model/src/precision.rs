//! [`Precision`]: the dtype a model computes in, the dtype it keeps its matrices in, and whether
//! the matrices are placed in huge pages.

use candle_core::{DType, Device};
use linear::QuantFormat;

use crate::checkpoint::Checkpoint;

/// How a model keeps its rank-2 weights ([`linear::Matrix`] formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixFormat {
    /// Every matrix in this dtype (FP8 weights dequantised in f32 first).
    Float(DType),
    /// FP8 weights as shipped: one e4m3 byte per weight plus the 128 x 128 block scales,
    /// widened exactly in registers (the products equal HF's f32 dequantisation up to
    /// summation order). Matrices stored in another format keep their bf16/f16 bytes, or
    /// take the compute dtype.
    Fp8,
    /// The attention projections and the experts' matrices quantised at load to 8 or 4 bits
    /// (`linear::QuantFormat`: q8, q4, or GGUF's Q4_K / Q6_K), the output head to
    /// [`default_head`]; the embedding, the routers and
    /// `kv_b_proj` (never requantised: the absorbed per-head blocks are split from its exact
    /// values) as [`MatrixFormat::Fp8`] keeps them.
    Quant(QuantFormat),
    /// A GGUF file's matrices as stored: `Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q4_K`,
    /// `Q5_K` and `Q6_K` on this project's kernels (`linear::QuantMatrix::from_ggml`), other
    /// GGML block formats (`Q3_K`, ...) multiplied by candle's quantized kernels
    /// ([`linear::GgmlMatrix`]), float ones in their dtype.
    Ggml,
}

impl MatrixFormat {
    /// `f32`, `bf16`, `f16`, `fp8`, `q8`, `q4` or `gguf`.
    pub fn name(self) -> &'static str {
        match self {
            MatrixFormat::Float(d) => d.as_str(),
            MatrixFormat::Fp8 => "fp8",
            MatrixFormat::Quant(q) => q.name(),
            MatrixFormat::Ggml => "gguf",
        }
    }
}

impl std::fmt::Display for MatrixFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MatrixFormat {
    type Err = String;

    /// Parses `f32`, `bf16`, `f16`, `fp8`, `q8`, `q4`, `q4k`, `q6k`, `q5`, `q5k`, `q3k`, `q2k` or `gguf` (for
    /// command-line options).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(q) = s.parse::<QuantFormat>() {
            return Ok(MatrixFormat::Quant(q));
        }
        Ok(match s {
            "fp8" => MatrixFormat::Fp8,
            "gguf" => MatrixFormat::Ggml,
            _ => MatrixFormat::Float(parse_float_dtype(s).map_err(|_| {
                format!(
                    "'{s}' is not one of f32, bf16, f16, fp8, q8, q4, q4k, q6k, q5, q5k, q3k, q2k, gguf"
                )
            })?),
        })
    }
}

impl From<DType> for MatrixFormat {
    fn from(d: DType) -> Self {
        MatrixFormat::Float(d)
    }
}

/// The dtype a model computes in and the format it keeps its matrices in.
///
/// Activations, the KV cache and every non-matrix weight (norms, biases) use `compute`; the
/// rank-2 weights (projections, experts, router, embedding, head) follow `matrices`. On the
/// CPU, `Precision::mixed(DType::F32, DType::BF16)` keeps a bf16 checkpoint's bytes in memory
/// (a decode step reads half of what f32 weights would) while all arithmetic stays f32: the
/// `linear` crate widens each weight row in registers. FP8, 8-bit and 4-bit matrices work the
/// same way ([`MatrixFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Activations, cache, norms, biases.
    pub compute: DType,
    /// Rank-2 weights.
    pub matrices: MatrixFormat,
    /// Back CPU matrices with transparent huge pages (`linear::advise_huge_pages`; on by
    /// default). Values never change; off only to measure what the pages are worth.
    pub huge_pages: bool,
    /// Use FP8 weights where they lie in the memory-mapped safetensors shards, as shipped,
    /// instead of copying them (on by default, CPU only: `Checkpoint::matrix_loader`). No load
    /// time copy and no anonymous memory for them: the pages are the page cache's, shared with
    /// other processes mapping the same files. With [`Precision::huge_pages`] each shard's
    /// whole map is advised before the first read, so pages read in from disk are 2 MiB folios
    /// where the kernel and file system allow it (pages already cached keep their size).
    /// Off (the CLI's `--no-mmap`) copies them into the process, e.g. for files on a network
    /// file system.
    pub mmap: bool,
    /// bf16 matrices multiply activations rounded to bf16 (`linear::Matrix::Bf16Activations`,
    /// HF's and llama.cpp's bf16 arithmetic), which on AVX512-BF16 CPUs runs batched decode on
    /// `vdpbf16ps`. Off by default: f32 products of the exact bf16 weights. Other formats are
    /// unaffected.
    pub bf16_activations: bool,
    /// The output head quantised at load to this format (llama.cpp's
    /// `--output-tensor-type`). A decode step reads all of it, every step: on the 4-layer
    /// V2-Lite-shaped benchmark checkpoint with FP8 layers and the bf16 head DeepSeek ships,
    /// 0.42 GB of the step's 0.78 GB. A quantised head reads fewer bytes, at its quantisation error on every logit.
    /// `None` (the default) keeps it as [`Precision::matrices`] does, which for
    /// [`MatrixFormat::Quant`] is 8 bits.
    pub head: Option<QuantFormat>,
}

impl Precision {
    /// Matrices kept as `matrices` (a dtype, or any [`MatrixFormat`]), everything else in
    /// `compute`.
    pub fn mixed(compute: DType, matrices: impl Into<MatrixFormat>) -> Self {
        Self {
            compute,
            matrices: matrices.into(),
            huge_pages: true,
            mmap: true,
            bf16_activations: false,
            head: None,
        }
    }

    /// The same dtypes, with huge pages on or off.
    pub fn with_huge_pages(self, huge_pages: bool) -> Self {
        Self { huge_pages, ..self }
    }

    /// The same, with FP8 weights used in place in the memory map or copied
    /// ([`Precision::mmap`]).
    pub fn with_mmap(self, mmap: bool) -> Self {
        Self { mmap, ..self }
    }

    /// The same, with bf16 matrices multiplying bf16-rounded activations or not
    /// ([`Precision::bf16_activations`]).
    pub fn with_bf16_activations(self, bf16_activations: bool) -> Self {
        Self {
            bf16_activations,
            ..self
        }
    }

    /// The setting for `compute` on `device` given how `checkpoint` stores its matrices: on the
    /// CPU with f32 compute, bf16/f16 matrices stay narrow and FP8 ones stay FP8
    /// ([`MatrixFormat::Fp8`]: exact, one byte per weight), since decode is bound by the bytes
    /// it reads. (Rounding e4m3 times an f32 block scale to bf16 is not exact: it moved logits
    /// by up to 2.8 on a V3 FP8 checkpoint.) A GGUF file's matrices stay as stored on the CPU
    /// ([`MatrixFormat::Ggml`], whatever `compute`). Otherwise everything is in `compute` (GPU
    /// kernels want one dtype).
    pub fn auto(checkpoint: &Checkpoint, compute: DType, device: &Device) -> Self {
        let matrices = match checkpoint.matrix_dtype() {
            _ if !device.is_cpu() => compute.into(),
            _ if checkpoint.is_gguf() => MatrixFormat::Ggml,
            _ if compute != DType::F32 => compute.into(),
            Some(d @ (DType::BF16 | DType::F16)) => d.into(),
            Some(DType::F8E4M3) => MatrixFormat::Fp8,
            _ => compute.into(),
        };
        Self::mixed(compute, matrices)
    }

    /// The same, with the output head quantised to `head` or kept as the matrices are
    /// ([`Precision::head`]).
    pub fn with_head(self, head: Option<QuantFormat>) -> Self {
        Self { head, ..self }
    }

    /// The format the output head is quantised to at load, if any: [`Precision::head`], or
    /// [`default_head`] of the layers' format when they are quantised.
    pub fn head_format(&self) -> Option<QuantFormat> {
        match (self.head, self.matrices) {
            (Some(f), _) => Some(f),
            (None, MatrixFormat::Quant(layers)) => Some(default_head(layers)),
            (None, _) => None,
        }
    }

    /// The dtype a matrix stored as `stored` is read into, except FP8 weights kept as shipped
    /// (those stay e4m3, see [`MatrixFormat::Fp8`]).
    pub fn matrix_dtype(&self, stored: DType) -> DType {
        match self.matrices {
            MatrixFormat::Float(d) => d,
            MatrixFormat::Fp8 | MatrixFormat::Quant(_) | MatrixFormat::Ggml => match stored {
                DType::BF16 | DType::F16 | DType::F32 => stored,
                _ => self.compute,
            },
        }
    }
}

/// The output head's format under layers quantised to `layers`: wider than the layers (its
/// errors reach every logit directly), as llama.cpp's mixes keep it: 8 bits (Q8_0) under q8
/// and q4 (and q5), 6 bits (Q6_K, as in llama.cpp's K-quant mixes) under q4k, q5k, q3k and
/// q2k.
pub fn default_head(layers: QuantFormat) -> QuantFormat {
    match layers {
        QuantFormat::Q4K | QuantFormat::Q5K | QuantFormat::Q3K | QuantFormat::Q2K => {
            QuantFormat::Q6K
        }
        _ => QuantFormat::Q8,
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
