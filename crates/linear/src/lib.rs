//! Mixed-precision linear layers for candle, built for LLM decoding on the CPU.
//!
//! [`linear`] computes `y = x · Wᵀ`, i.e. `y[m, n] = Σ_k x[m, k] · W[n, k]`, for activations
//! `x` `[..., K]` and a weight `W` `[N, K]` in the checkpoint's `[out, in]` layout. The weight
//! may be stored in a narrower dtype than the activations (bf16 or f16 weights with f32
//! activations), which halves the bytes a decode step reads without giving up f32 arithmetic.
//!
//! # Weight formats
//!
//! A layer holds each projection as a [`Matrix`] and calls [`Matrix::forward`]; the kernels
//! read every format as it is stored and widen it in registers, accumulating in f32:
//! - dense f32 / bf16 / f16 tensors ([`linear`]);
//! - FP8 e4m3 with f32 scales per 128 x 128 block, as DeepSeek-V3/R1 ship them
//!   ([`Fp8Matrix`], [`linear_fp8`]): `Σ_c x·(q·s) = s·Σ_c x·q`, so products equal HF's f32
//!   dequantisation up to summation order, at one byte per weight;
//! - 8-bit and 4-bit groups of 32 with f16 parameters, GGUF's Q8_0 and Q4_1 values
//!   ([`QuantMatrix`], [`linear_quant`]): `W = s·q` (Q8) or `s·q + m` (Q4, with least-squares
//!   `s, m`); `Σ_c x·W = Σ_g s_g Σ_{c∈g} x·q + Σ_g m_g Σ_{c∈g} x`. GGUF's Q4_K is the same
//!   sum with `s_g = d·sc_g`, `m_g = −dmin·mn_g` (6-bit `sc`, `mn` under a 256-value
//!   superblock's f16 `d`, `dmin`). Decode-sized products round the activations to 8 bits
//!   per group, as llama.cpp does; [`linear_quant_f32_activations`] keeps them in f32 (the
//!   products with the dequantised values, for small blocks that must match them).
//!
//! [`Matrix::load`] reads a projection from a candle `VarBuilder` (a weight with a
//! `weight_scale_inv` sibling is FP8) and [`Matrix::quantize`] converts one. A loader that
//! knows where the bytes lie implements [`MatrixLoader`]: an FP8 matrix can then use bytes
//! someone else holds in place ([`Fp8Matrix::from_shared`] over [`SharedBytes`], e.g. the
//! memory map of a checkpoint shard), with no copy at load.
//!
//! Two regimes:
//! - **few rows** (`M ≤` [`GEMV_MAX_ROWS`]: decode steps of up to 32 sequences, a speculative
//!   verification block, an expert that received a handful of tokens) on the CPU: [`matmul_rows`] streams each
//!   weight row from memory once, widens it to f32 in registers (bf16 → f32 is a 16-bit shift,
//!   f16 → f32 uses F16C) and dots it with the `M` activation rows while it sits in L1, with
//!   f32 accumulation. Rows are split over rayon threads in contiguous blocks, so the kernel is
//!   bound by the machine's read bandwidth: its time is about `N·K·sizeof(W) / bandwidth`
//!   (23-31 GB/s on large matrices on a 2-core AVX2 machine whose read probe gives 22-28 GB/s;
//!   candle's CPU matmul reaches 12-14 GB/s in f32 and 0.6 GB/s in bf16 there).
//! - **many rows** (prefill chunks, experts that received many tokens) on the CPU: a packed,
//!   cache-blocked f32 GEMM. Each rayon task widens its block of weight rows exactly to f32
//!   (FP8: times its block scale; 8/4-bit: times the group's) as it packs them, one block of
//!   `K` at a time, so no call converts or copies the whole matrix (which candle's matmul
//!   needs for bf16 weights: a full f32 copy per call). On AVX-512 CPUs the micro-kernel is
//!   ours (a 12 x 32 tile in registers, 512-bit FMAs); elsewhere it is the `gemm` crate's
//!   (the kernel behind candle's CPU matmul), fed blocks of widened rows. Measured against
//!   candle's matmul on a weight already held in f32 in `benchmarks/README.md`. 8-bit and
//!   4-bit weights on AVX512-VNNI CPUs instead take 8-bit activations, as their decode does,
//!   in an integer GEMM (`vpdpbusd`, four products per lane per instruction): see
//!   [`QuantMatrix`]. There, 8, 6 (Q6_K), 5 and 4-bit matrices loaded through
//!   [`Matrix::load`] / [`Matrix::quantize`] are stored in panels of interleaved rows
//!   ([`QuantMatrix::for_isa`]) and one kernel takes every number of rows, both regimes.
//! - another device: candle's matmul, after converting the weight to the activations' dtype
//!   when they differ.
//!
//! # Instruction sets
//!
//! The matrix-vector kernel has an AVX2 + FMA path (+ F16C for f16 weights and e4m3 bytes
//! that hold NaN codes; NaN-free e4m3 widens with integer ops to its value over 2¹²⁰ and
//! multiplies activations scaled by 2⁹⁰, two activation rows per widening) on x86-64
//! for every format (bf16, f16, f32, e4m3, i8, 4-bit pairs), an AVX-512F path for f32, f16 and
//! bf16 weights (32 values per row per iteration), e4m3 weights widened by byte-table lookups
//! where the CPU also has AVX512-VBMI (64 per row per iteration), the 8-bit and 4-bit formats'
//! integer dot products with `vpdpbusd` where it has AVX512-VNNI (four groups of 32 per
//! iteration), an AVX512-BF16 path for bf16 weights with bf16-rounded activations
//! ([`linear_bf16_activations_with`]), AMX bf16 tiles for that product's GEMM regime where
//! the CPU has AMX-TILE and AMX-BF16 and Linux grants the tile registers, and a portable path
//! for every CPU. VBMI and VNNI are not paths of their own: every AVX-512 path uses them where
//! detection found them. The GEMM regime has an AVX-512F micro-kernel and otherwise runs the
//! `gemm` crate's (which picks its own at run time). Which one runs is an [`Isa`] value: [`Isa::detect`] asks the CPU once per
//! process and caches the answer, and only detection can make a SIMD `Isa`, so the `unsafe`
//! kernels rely on that one check instead of re-checking per call. [`linear`] and
//! [`matmul_rows`] use [`Isa::detect`]; [`linear_with`] and [`matmul_rows_with`] take the
//! `Isa` explicitly, e.g. [`Isa::portable`] to force the fallback, and [`Isa::supported`]
//! lists every path this CPU runs (tests compare each against a reference).
//!
//! [`elementwise`] fuses the forward pass's elementwise steps (SwiGLU, residual adds) on
//! rayon's pool, bit for bit what candle's ops compute.
//!
//! [`slices`] offers the kernels on plain `f32` slices (`x · wᵀ`, and `out += x · w` for
//! weighted sums of rows) for callers holding their own storage, such as attention over a
//! paged cache.
//!
//! The crate reads no environment variables: whether to back weights with huge pages
//! ([`advise_huge_pages`], [`advise_matrices_huge_pages`] for a set made one after another)
//! or to force a path is the caller's decision, passed as a value.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let w = Tensor::randn(0f32, 1.0, (64, 32), &Device::Cpu)?.to_dtype(DType::BF16)?;
//! let x = Tensor::randn(0f32, 1.0, (1, 32), &Device::Cpu)?;
//! let y = linear::linear(&x, &w)?; // f32 [1, 64], from bf16 weights
//! assert_eq!((y.dims(), y.dtype()), (&[1usize, 64][..], DType::F32));
//! // The same product on the portable path: equal up to summation order.
//! let p = linear::linear_with(linear::Isa::portable(), &x, &w)?;
//! let diff: f32 = (y - p)?.abs()?.max_all()?.to_scalar()?;
//! assert!(diff < 1e-4);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod elementwise;
mod fp8;
mod ggml;
pub mod host;
mod huge_pages;
mod isa;
mod kernel;
mod matrix;
mod quant;
mod shared_bytes;
pub mod slices;
mod spec;

/// GGML's block formats (re-exported from candle).
pub use candle_core::quantized::GgmlDType;
pub use fp8::{linear_fp8, linear_fp8_with, Fp8Matrix, FP8_BLOCK};
pub use ggml::{ggml_type_from_id, ggml_type_id, ggml_type_name, GgmlMatrix};
pub use huge_pages::{
    advise_huge_pages, advise_huge_pages_ahead, advise_huge_pages_bytes, advise_matrices_huge_pages,
};
pub use isa::Isa;
pub use matrix::{MapMatrix, Matrix, MatrixLoader, ThroughVarBuilder, GGML_TYPE_SUFFIX};
pub use quant::{
    linear_quant, linear_quant_f32_activations, linear_quant_with, QuantFormat, QuantMatrix,
    QUANT_GROUP,
};
pub use shared_bytes::{ByteOwner, SharedBytes};
pub use spec::WeightSpec;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

/// Up to this many activation rows, CPU weights go through the matrix-vector kernel; above it,
/// through the GEMM. The kernel widens each weight vector once and reuses it for every row, so
/// it keeps pace with the GEMM well past a decode step: on the V2-Lite projection shapes with
/// bf16 weights (`gemm --rows 16|32|64`, 2-core AVX2 path) it ran at 1.1-3x the GEMM's rate at
/// 16 rows, 0.8-4x at 32 and 0.65-2.5x at 64. Each row's result is computed the same way
/// whatever the other rows, which is what lets a serving engine batch up to this many
/// sequences without changing any one's output.
pub const GEMV_MAX_ROWS: usize = 32;

/// `x · wᵀ` for `x` `[..., K]` (any float dtype) and `w` `[N, K]` (f32, bf16 or f16); the
/// result is `[..., N]` in `x`'s dtype. See the crate docs for the two regimes. The
/// matrix-vector kernel runs on [`Isa::detect`]'s path; [`linear_with`] chooses it.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_with(Isa::detect(), x, w)
}

/// [`linear`] with the matrix-vector kernel on `isa` (e.g. [`Isa::portable`] to force the
/// fallback); the GEMM regime's micro-kernel follows `isa` too.
pub fn linear_with(isa: Isa, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    dense_product(isa, x, w, Regime::ByRows)
}

/// `x · wᵀ` for bf16 weights `w` `[N, K]` with the activations rounded to bf16 first (nearest
/// even): `y[m, n] = Σ_k bf16(x[m, k]) · W[n, k]`, each product exact in f32, accumulated in
/// f32. This is how HF's bf16 models and llama.cpp's bf16 type compute; against [`linear`]
/// it gives up the activations' low mantissa bits (a relative 2⁻⁹ per value) for
/// `vdpbf16ps` on AVX512-BF16 CPUs: two multiply-adds per lane in one instruction, with no
/// widening instructions per weight byte, which is what bounds a product of several
/// activation rows (a batched decode step, an expert's tokens) on few cores. Up to 64 rows
/// the weights are read as stored, each row's result the same whatever the other rows; above,
/// a packed GEMM. On AMX CPUs with `K` a multiple of 32 every product runs on bf16 tiles,
/// each row's result again the same whatever the other rows. Elsewhere the f32 kernels run
/// on the rounded activations (the same product up to summation order); on other devices it
/// is candle's bf16 matmul.
/// [`Matrix::Bf16Activations`] is the layer-level form.
pub fn linear_bf16_activations_with(isa: Isa, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if w.dtype() != DType::BF16 {
        candle_core::bail!(
            "linear_bf16_activations: the weight is {:?}, not bf16",
            w.dtype()
        );
    }
    dense_product(isa, x, w, Regime::Bf16Activations)
}

/// `x · wᵀ` for `x` `[..., K]` and `w` `[N, K]` (f32, bf16 or f16) with every row through the
/// matrix-vector kernel, however many rows: a row's result is the same bits whatever the other
/// rows, in a decode step of any batch or in a prefill chunk. For small matrices whose product
/// costs little either way, such as MoE routers (a token's routing then does not depend on
/// what it was batched with). Off the CPU it is [`linear`].
pub fn linear_row_invariant(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    dense_product(Isa::detect(), x, w, Regime::RowInvariant)
}

/// [`linear_row_invariant`] over a stack of independent blocks: `x` `[B, M, K]` times each
/// block's `w[b]ᵀ` (`w` `[B, N, K]`, f32, bf16 or f16) gives `[B, M, N]`, block `b`'s rows the
/// same bits as `linear_row_invariant(x[b], w[b])`. On the CPU the activations and the weights
/// are borrowed once and the blocks run as one parallel pass writing one result. MLA's
/// absorbed per-head products are such a stack (V2-Lite: 16 heads of 128 KB in bf16): as 16
/// separate calls they cost more in tensor bookkeeping than in reading the weights. Off the
/// CPU, or for a weight the kernels do not take, each block goes through
/// [`linear_row_invariant`].
pub fn linear_row_invariant_blocks(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, n, k) = w.dims3()?;
    let (xb, m, xk) = x.dims3()?;
    if (xb, xk) != (b, k) {
        candle_core::bail!(
            "linear_row_invariant_blocks: input {:?} is not [{b}, M, {k}] for the blocks [{b}, {n}, {k}]",
            x.dims()
        );
    }
    let isa = Isa::detect();
    let y = if b * n * k * m == 0 {
        None
    } else {
        elementwise::with_host_rows(x, |xs| host_blocks(isa, w, xs, m))?.flatten()
    };
    match y {
        Some(y) => Tensor::from_vec(y, (b, m, n), x.device())?.to_dtype(x.dtype()),
        None => {
            let blocks = (0..b)
                .map(|i| linear_row_invariant(&x.get(i)?, &w.get(i)?))
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&blocks, 0)
        }
    }
}

/// [`linear_row_invariant_blocks`] on host memory: `xs` holds `B` blocks of `m` rows of `K`,
/// each block through [`host_product`] on a view of its weights, the blocks in parallel;
/// `None` when a block is not a contiguous f32/bf16/f16 CPU tensor.
fn host_blocks(isa: Isa, w: &Tensor, xs: &[f32], m: usize) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    let (b, _, k) = w.dims3().ok()?;
    let blocks = (0..b).map(|i| w.get(i)).collect::<Result<Vec<_>>>().ok()?;
    let parts = blocks
        .par_iter()
        .zip(xs.par_chunks(m * k))
        .map(|(w, x)| host_product(isa, w, x, m, true))
        .collect::<Option<Vec<_>>>()?;
    Some(parts.concat())
}

/// How [`dense_product`] multiplies on the host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Regime {
    /// f32 activations; the matrix-vector kernel up to [`GEMV_MAX_ROWS`] rows, the GEMM above.
    ByRows,
    /// bf16 `w` against activations rounded to bf16 ([`linear_bf16_activations_with`]).
    Bf16Activations,
    /// f32 activations, the matrix-vector kernel for every row ([`linear_row_invariant`]).
    RowInvariant,
}

/// [`linear_with`], [`linear_bf16_activations_with`] and [`linear_row_invariant`].
fn dense_product(isa: Isa, x: &Tensor, w: &Tensor, regime: Regime) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "linear: input {:?} does not end in the weight's in-features {k} (weight [{n}, {k}])",
            dims
        );
    }
    let m = x.elem_count() / k;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = n;
    let bf16_activations = regime == Regime::Bf16Activations;
    let y = elementwise::with_host_rows(x, |xs| match regime {
        Regime::Bf16Activations => {
            let (storage, layout) = w.storage_and_layout();
            match (&*storage, layout.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::BF16(v)), Some((start, end))) => {
                    Some(kernel::bf16_act::product(isa, &v[start..end], k, xs, m))
                }
                _ => None,
            }
        }
        Regime::ByRows => host_product(isa, w, xs, m, false),
        Regime::RowInvariant => host_product(isa, w, xs, m, true),
    })?;
    if let Some(y) = y.flatten() {
        return Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype());
    }
    if bf16_activations {
        let y = x.to_dtype(DType::BF16)?.reshape((m, k))?.matmul(&w.t()?)?;
        return y.to_dtype(x.dtype())?.reshape(out_dims);
    }
    let w = if w.dtype() == x.dtype() {
        w.clone()
    } else {
        w.to_dtype(x.dtype())?
    };
    x.reshape((m, k))?.matmul(&w.t()?)?.reshape(out_dims)
}

/// The CPU kernels on host memory: `xs` holds `m` f32 rows of length `K` (row-major), `w` is
/// a contiguous CPU tensor `[N, K]` in f32, bf16 or f16; returns the `[m, N]` product
/// row-major, accumulated in f32. Up to [`GEMV_MAX_ROWS`] rows take the matrix-vector kernel,
/// more rows the register-blocked GEMM. `None` when `w` is not such a tensor (the caller
/// falls back to a matmul). Runs on [`Isa::detect`]'s path; [`matmul_rows_with`] chooses it.
///
/// # Panics
/// If `xs.len() != m · K`.
pub fn matmul_rows(w: &Tensor, xs: &[f32], m: usize) -> Option<Vec<f32>> {
    matmul_rows_with(Isa::detect(), w, xs, m)
}

/// [`matmul_rows`] on the kernel path `isa`.
///
/// # Panics
/// If `xs.len() != m · K`.
pub fn matmul_rows_with(isa: Isa, w: &Tensor, xs: &[f32], m: usize) -> Option<Vec<f32>> {
    host_product(isa, w, xs, m, false)
}

/// [`matmul_rows_with`], or with `every_row_gemv` the matrix-vector kernel whatever `m`
/// ([`linear_row_invariant`]).
fn host_product(
    isa: Isa,
    w: &Tensor,
    xs: &[f32],
    m: usize,
    every_row_gemv: bool,
) -> Option<Vec<f32>> {
    let (_, k) = w.dims2().ok()?;
    assert_eq!(xs.len(), m * k, "matmul_rows: xs must hold m rows of K");
    let (storage, layout) = w.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    Some(match cpu {
        CpuStorage::F32(v) => {
            kernel::product_rows(isa, &v[start..end], k, xs, m, None, every_row_gemv)
        }
        CpuStorage::BF16(v) => {
            kernel::product_rows(isa, &v[start..end], k, xs, m, None, every_row_gemv)
        }
        CpuStorage::F16(v) => {
            kernel::product_rows(isa, &v[start..end], k, xs, m, None, every_row_gemv)
        }
        _ => return None,
    })
}

/// Bytes of `w` one [`linear`] call reads in the matrix-vector regime.
pub fn weight_bytes(w: &Tensor) -> usize {
    w.elem_count() * w.dtype().size_in_bytes()
}
