//! 8-, 6-, 5-, 4-, 3- and 2-bit block-quantised weights, for checkpoints shipped in bf16, f16
//! or f32 and for llama.cpp's GGUF files.
//!
//! Each weight row is cut into groups of [`QUANT_GROUP`] (32) values along `K`; each group
//! keeps its own f16 parameters, so the values are GGUF's:
//! - [`QuantFormat::Q8`]: `W[r, c] = s[r, g] · q[r, c]`, `q` an i8 in `-127..=127`,
//!   `s = max |w| / 127` over the group (symmetric: GGUF's Q8_0). 8.5 bits per weight.
//! - [`QuantFormat::Q4`]: `W[r, c] = s[r, g] · q[r, c] + m[r, g]`, `q` in `0..=15`, two per
//!   byte (asymmetric: GGUF's Q4_1). `s` and `m` are fitted per group by least squares
//!   (alternating the rounding of `q` and the 2x2 normal equations for `(s, m)`, from several
//!   starting ranges, every candidate rounded to f16 before it is scored; the smallest sum of
//!   squared errors wins), where llama.cpp's Q4_1 takes the group's min and max. 5 bits per
//!   weight; `quant_error` in `benchmarks/` compares the error with llama.cpp's types.
//! - [`QuantFormat::Q4K`]: GGUF's Q4_K, llama.cpp's main 4-bit type: the same
//!   `W[r, c] = s[r, g] · q[r, c] + m[r, g]` per group of 32, but the group parameters are
//!   6-bit integers under a superblock's f16 pair (256 values): `s = d · sc`, `m = −dmin · mn`.
//!   4.625 bits per weight as held here (GGUF's 12-byte packing of the 6-bit parameters
//!   is unpacked to a byte each; a file holds 4.5). Read from llama.cpp's files as stored, and
//!   quantised with GGML's reference quantiser (candle's), so `model quantize` output matches
//!   `llama-quantize`'s Q4_K without an importance matrix. Rows that are not whole
//!   superblocks take Q4 (llama.cpp's Q4_K_M falls back to Q5_0 there, which is read as Q5).
//! - [`QuantFormat::Q6K`]: GGUF's Q6_K (what llama.cpp's Q4_K_M keeps its output head and
//!   some projections in): `W[r, c] = d · sc · (q − 32)`, `q` in `0..=63`, an i8 `sc` per 16
//!   values under a superblock's f16 `d`. 6.5625 bits per weight, as in a file. Rows that are
//!   not whole superblocks take Q8.
//! - [`QuantFormat::Q5`] and [`QuantFormat::Q5K`]: GGUF's Q5_1 and Q5_K (llama.cpp's Q5_K_M
//!   mix), Q4 and Q4K with `q` in `0..=31`: the low four bits held as Q4's nibble pairs and the
//!   fifth bits as one u32 per group (`kernel::Nibbles`), 6 and 5.625 bits per weight (a Q5_K
//!   file holds 5.5). The 4-bit kernels take them, ORing the fifth bits in as they unpack (one
//!   masked add per 64 values on AVX-512, a shuffle and compare per 32 on AVX2). Read from
//!   llama.cpp's files as stored (before, candle's kernels multiplied them: ~3x slower decode
//!   and ~10x slower prefill on the Zen 4), quantised with GGML's reference quantiser. Off
//!   AVX512-VNNI, products of more than [`Isa::quant_row_kernel_rows`] rows take the f32 path
//!   below over one byte per value formed for the call.
//! - [`QuantFormat::Q3K`] and [`QuantFormat::Q2K`]: GGUF's Q3_K (`d · sc · (q − 4)`, `q` in
//!   `0..=7`, an i8 `sc` per 16 values: Q6_K's parameters) and Q2_K (`d · sc · q − dmin · mn`,
//!   `q` in `0..=3`, a 4-bit `sc` and `mn` per 16 values in one byte), the formats of
//!   llama.cpp's Q3_K_M and Q2_K files. 3.5625 and 2.625 bits per weight as held (a file holds
//!   3.4375 and 2.625). The 6-bit kernels take them (`kernel::act8::chunk_bytes`: 64 values in
//!   24 / 16 bytes), as Q6_K. Rows that are not whole superblocks take Q4.
//!
//! Row `r` of `x · Wᵀ` is `Σ_g s[r,g] · Σ_{c in g} q[r,c] · x[c] + Σ_g m[r,g] · Σ_{c in g} x[c]`.
//! On the f32 path the second sum (Q4's offsets) is a small f32 product of the `[N, K / 32]`
//! offsets with the activations' exact group sums; where the activations are rounded to 8 bits
//! it takes their rounded sums (`kernel::act8::Q8Row::sums`). The first:
//! - more than [`GEMV_MAX_ROWS`] rows (prefill) on AVX512-VNNI CPUs: the 8-bit activations
//!   below, in an integer GEMM (`kernel::x86_512_act8_gemm`: panels of 32 weight rows unpacked
//!   once to bytes, `vpdpbusd` adding four products into 16 rows per instruction, one f32
//!   scaling per group, or per 16 values for the formats with a scale per 16). 1.6-2.5x the
//!   f32 path's whole prefill on a Zen 4 (`benchmarks/README.md`); llama.cpp rounds its
//!   prefill activations the same way;
//! - up to [`Isa::quant_row_kernel_rows`] rows (decode steps; 64 rows on AVX2 CPUs without
//!   AVX512-VNNI, e.g. the experts of a prompt): the activations rounded to 8 bits per group,
//!   as llama.cpp does for its block formats, and the integer products summed exactly by the
//!   row kernels (`kernel::act8`): 2-3x fewer operations per weight, at an activation rounding
//!   error below the weights' own (8-bit) and far below it (4-bit). Many rows go through them
//!   in tiles that stay in the core's cache with a task's weight rows; each row's result has
//!   the same bits whatever the number of rows;
//! - more rows elsewhere: f32 activations against the stored integers widened in registers
//!   (never dequantised to memory; the 5-bit formats and those with a scale per 16 widened to
//!   a byte per value for the call), one scale per group (or per 16): the product with the
//!   dequantised matrix up to f32 summation order. There a quantised decode step and a
//!   prefill over the same tokens agree to the activations' rounding, not to summation order;
//!   on the VNNI GEMM they round alike.
//!
//! **Panels** ([`QuantMatrix::for_isa`], applied by `Matrix::load` and `Matrix::quantize` on
//! AVX512-VNNI CPUs): the 8, 6 (Q6_K), 5 and 4-bit matrices are relaid once, at load, into
//! panels of 32 interleaved rows (`kernel::panels`: the same bits per weight, nibbles still
//! packed), as llama.cpp's CPU repack buffers do. One kernel (`kernel::x86_512_panels`) then
//! multiplies them for any number of activation rows with the 8-bit activations above: one
//! weight row per lane, so no per-row factor formation or horizontal sums, and each row's
//! result is the same bits whatever the batch. Decode of a Q4_0 file gained 12-17% and 16
//! concurrent streams 27-46% on the Zen 4 (`benchmarks/README.md`, "Panels"). Q3_K and Q2_K
//! keep the row layout; on other CPUs, or a product asked for on another path, the row layout
//! is what runs (a panel matrix is copied back to rows for that call).
//!
//! The tests check each path against an f64 oracle of its own arithmetic on every
//! instruction-set path.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use crate::kernel::act8::{
    self as act8, Params, RowParams as _, SixBit, SUPER, U2_CHUNK_BYTES, U3_CHUNK_BYTES, U6_CHUNK,
    U6_CHUNK_BYTES,
};
use crate::kernel::{self, u5_row_bytes, BlockScales, Scales, U4x2};
use crate::{Isa, GEMV_MAX_ROWS};
use half::f16;

/// Values per quantisation group along `K` (GGUF's Q8_0/Q4_1 block; a multiple of 16, as the
/// 4-bit kernel needs).
pub const QUANT_GROUP: usize = kernel::act8::GROUP;

/// A block-quantised format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 8-bit symmetric (i8 and one f16 scale per group).
    Q8,
    /// 4-bit asymmetric (two values per byte, an f16 scale and offset per group).
    Q4,
    /// 4-bit asymmetric with 6-bit group parameters under f16 superblock scales (GGUF's Q4_K).
    /// Rows that are not whole 256-value superblocks are quantised as [`QuantFormat::Q4`]
    /// (a GGUF file cannot hold a partial superblock).
    Q4K,
    /// 6-bit symmetric with i8 scales per 16 values under f16 superblock scales (GGUF's Q6_K).
    /// Rows that are not whole superblocks are quantised as [`QuantFormat::Q8`].
    Q6K,
    /// 5-bit asymmetric (an f16 scale and offset per group: GGUF's Q5_1). Rows that are not
    /// whole groups are quantised as [`QuantFormat::Q8`].
    Q5,
    /// 5-bit asymmetric with 6-bit group parameters under f16 superblock scales (GGUF's Q5_K).
    /// Rows that are not whole superblocks are quantised as [`QuantFormat::Q5`].
    Q5K,
    /// 3-bit symmetric with 6-bit scales per 16 values under f16 superblock scales (GGUF's
    /// Q3_K): `d · sc · (q − 4)`, `q` in `0..=7`. Rows that are not whole superblocks are
    /// quantised as [`QuantFormat::Q4`].
    Q3K,
    /// 2-bit asymmetric with 4-bit scales and offsets per 16 values (one byte) under f16
    /// superblock scales (GGUF's Q2_K): `d · sc · q − dmin · mn`, `q` in `0..=3`. Rows that are
    /// not whole superblocks are quantised as [`QuantFormat::Q4`].
    Q2K,
}

impl QuantFormat {
    /// Stored bits per weight, parameters included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            QuantFormat::Q8 => 8.0 + 16.0 / QUANT_GROUP as f64,
            QuantFormat::Q4 => 4.0 + 32.0 / QUANT_GROUP as f64,
            QuantFormat::Q4K => {
                4.0 + 16.0 / QUANT_GROUP as f64 + 32.0 / (SUPER * QUANT_GROUP) as f64
            }
            QuantFormat::Q6K => 6.0 + 8.0 / 16.0 + 16.0 / (SUPER * QUANT_GROUP) as f64,
            QuantFormat::Q5 => 5.0 + 32.0 / QUANT_GROUP as f64,
            QuantFormat::Q5K => {
                5.0 + 16.0 / QUANT_GROUP as f64 + 32.0 / (SUPER * QUANT_GROUP) as f64
            }
            QuantFormat::Q3K => 3.0 + 8.0 / 16.0 + 16.0 / (SUPER * QUANT_GROUP) as f64,
            // A byte of scale and offset nibbles per 16 values, two f16 per 256.
            QuantFormat::Q2K => 2.0 + 8.0 / 16.0 + 32.0 / (SUPER * QUANT_GROUP) as f64,
        }
    }

    /// Whether [`QuantMatrix::matmul_f32_activations`] takes matrices of this format: those
    /// with a group per 32 values (not Q6K, Q3K, Q2K, whose scales are per 16).
    pub fn takes_f32_activations(self) -> bool {
        !matches!(self, QuantFormat::Q6K | QuantFormat::Q3K | QuantFormat::Q2K)
    }

    /// `q8`, `q4`, `q4k`, `q6k`, `q5`, `q5k`, `q3k` or `q2k`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
            QuantFormat::Q4K => "q4k",
            QuantFormat::Q6K => "q6k",
            QuantFormat::Q5 => "q5",
            QuantFormat::Q5K => "q5k",
            QuantFormat::Q3K => "q3k",
            QuantFormat::Q2K => "q2k",
        }
    }

    /// Every format.
    pub const ALL: [QuantFormat; 8] = [
        QuantFormat::Q8,
        QuantFormat::Q4,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
        QuantFormat::Q5,
        QuantFormat::Q5K,
        QuantFormat::Q3K,
        QuantFormat::Q2K,
    ];

    /// The GGML block type of the format's whole rows.
    fn ggml_type(self) -> GgmlDType {
        match self {
            QuantFormat::Q8 => GgmlDType::Q8_0,
            QuantFormat::Q4 => GgmlDType::Q4_1,
            QuantFormat::Q4K => GgmlDType::Q4K,
            QuantFormat::Q6K => GgmlDType::Q6K,
            QuantFormat::Q5 => GgmlDType::Q5_1,
            QuantFormat::Q5K => GgmlDType::Q5K,
            QuantFormat::Q3K => GgmlDType::Q3K,
            QuantFormat::Q2K => GgmlDType::Q2K,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantFormat {
    type Err = String;

    /// Parses [`QuantFormat::name`]: `q8`, `q4`, `q4k`, `q6k`, `q5` or `q5k`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        QuantFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("'{s}' is not one of q8, q4, q4k, q6k, q5, q5k, q3k, q2k"))
    }
}

#[derive(Clone)]
enum Values {
    I8(Vec<i8>),
    U4(Vec<U4x2>),
    /// Chunks of 64 values in [`U6_CHUNK_BYTES`] (`kernel::act8`'s layout).
    U6(Vec<u8>),
    /// Chunks of 64 values in [`U3_CHUNK_BYTES`] (`kernel::act8::u3_chunk`).
    U3(Vec<u8>),
    /// Chunks of 64 values in [`U2_CHUNK_BYTES`] (`kernel::act8::u2_value`).
    U2(Vec<u8>),
    /// Per row `K / 2` bytes of low-nibble pairs, then the fifth bits, four bytes per group
    /// (`kernel::Nibbles::five`).
    U5(Vec<u8>),
    /// `bits`-bit values (8, 6, 5 or 4) in panels of interleaved rows (`kernel::panels`), the
    /// AVX512-VNNI panel kernel's storage ([`QuantMatrix::for_isa`]); the parameters are then
    /// in panel order too (every per-row field `[panels, per, 32]`).
    Panels {
        bits: usize,
        v: Vec<u8>,
    },
}

impl Values {
    /// The values' storage, as bytes.
    fn as_bytes(&self) -> &[u8] {
        match self {
            // SAFETY: `i8` and `U4x2` (`repr(transparent)` over `u8`) have `u8`'s layout.
            Values::I8(v) => unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) },
            Values::U4(v) => unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) },
            Values::U6(v) | Values::U5(v) | Values::U3(v) | Values::U2(v) => v,
            Values::Panels { v, .. } => v,
        }
    }

    /// The bits per value of the formats with a scale per 16 (6 otherwise: only called on
    /// those).
    fn sixteenths_bits(&self) -> usize {
        match self {
            Values::U2(_) => 2,
            Values::U3(_) => 3,
            _ => 6,
        }
    }
}

/// The parameters of a format with a scale per 16 as its blocks are read
/// ([`QuantMatrix::from_sixteenths_blocks`]): [`GroupParams::Sixteenths`]'s fields.
struct SixteenthsParams {
    sc: Vec<i8>,
    d: Vec<f16>,
    /// 2 bits only.
    dmin: Vec<f16>,
}

/// The group parameters, owned ([`Params`] is their view).
#[derive(Clone)]
enum GroupParams {
    /// `[N, groups]` f16 scales, and offsets (Q4_1 / Q5_1; empty for Q8 and for a zero
    /// point): [`Params::Group`].
    Group {
        scales: Vec<f16>,
        mins: Vec<f16>,
        zero: u8,
    },
    /// `[N, groups]` 6-bit scales and offsets, `[N, ceil(groups / SUPER)]` f16 `d`, `dmin`.
    Super {
        sc: Vec<u8>,
        mn: Vec<u8>,
        d: Vec<f16>,
        dmin: Vec<f16>,
    },
    /// `[N, K / 16]` scale bytes, `[N, K / 256]` f16 `d` (6-bit, 3-bit and 2-bit values); for
    /// 2 bits the bytes are Q2_K's (scale and offset nibbles) and `[N, K / 256]` `dmin` is
    /// there too (empty otherwise): [`SixBit`].
    Sixteenths {
        sc: Vec<i8>,
        d: Vec<f16>,
        dmin: Vec<f16>,
    },
}

impl GroupParams {
    /// The per-group view (`None` for 6-bit and 3-bit values, whose scales are per 16).
    fn view(&self) -> Option<Params<'_>> {
        match self {
            GroupParams::Group { scales, mins, zero } => Some(Params::Group {
                scales,
                mins,
                zero: *zero,
            }),
            GroupParams::Super { sc, mn, d, dmin } => Some(Params::Super { sc, mn, d, dmin }),
            GroupParams::Sixteenths { .. } => None,
        }
    }

    /// Every per-row field (`[n, per]` for rows of `k` values) laid out in panels
    /// ([`kernel::panels::to_panels`]) or, with `into` false, back.
    fn relaid(&self, n: usize, k: usize, into: bool) -> GroupParams {
        fn relay<T: Copy + Default + Send + Sync>(
            x: &[T],
            n: usize,
            per: usize,
            into: bool,
        ) -> Vec<T> {
            if into {
                kernel::panels::to_panels(x, n, per)
            } else {
                kernel::panels::from_panels(x, n, per)
            }
        }
        let groups = k.div_ceil(QUANT_GROUP);
        let supers = groups.div_ceil(SUPER);
        match self {
            GroupParams::Group { scales, mins, zero } => GroupParams::Group {
                scales: relay(scales, n, groups, into),
                mins: relay(mins, n, groups, into),
                zero: *zero,
            },
            GroupParams::Super { sc, mn, d, dmin } => GroupParams::Super {
                sc: relay(sc, n, groups, into),
                mn: relay(mn, n, groups, into),
                d: relay(d, n, supers, into),
                dmin: relay(dmin, n, supers, into),
            },
            GroupParams::Sixteenths { sc, d, dmin } => GroupParams::Sixteenths {
                sc: relay(sc, n, 2 * groups, into),
                d: relay(d, n, supers, into),
                dmin: relay(dmin, n, supers, into),
            },
        }
    }

    fn bytes(&self) -> usize {
        match self {
            GroupParams::Group { scales, mins, .. } => 2 * (scales.len() + mins.len()),
            GroupParams::Super { sc, mn, d, dmin } => {
                sc.len() + mn.len() + 2 * (d.len() + dmin.len())
            }
            GroupParams::Sixteenths { sc, d, dmin } => sc.len() + 2 * (d.len() + dmin.len()),
        }
    }
}

/// A host-memory matrix `[N, K]` in a [`QuantFormat`].
#[derive(Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    dims: [usize; 2],
    values: Values,
    params: GroupParams,
}

impl fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

impl QuantMatrix {
    /// Quantises `w` `[N, K]` (any float dtype, any device: read as f32). Errors on a
    /// non-finite weight (naming its row and column) and, for Q4, on an odd `K`.
    pub fn quantize(w: &Tensor, format: QuantFormat) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let rows: Vec<f32> = crate::host::vec1(&w.to_dtype(DType::F32)?.flatten_all()?)?;
        Self::from_rows(&rows, n, k, format)
    }

    /// [`QuantMatrix::quantize`] of a row-major `[n, k]` slice.
    pub fn from_rows(w: &[f32], n: usize, k: usize, format: QuantFormat) -> Result<Self> {
        if w.len() != n * k {
            candle_core::bail!("quantize: {} values for a [{n}, {k}] matrix", w.len());
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            candle_core::bail!(
                "quantize: weight [{}, {}] is {} (only finite weights quantise)",
                i / k,
                i % k,
                w[i]
            );
        }
        // GGML's 5-bit blocks are whole; other rows take the next format that holds them.
        match format {
            QuantFormat::Q5K if k.is_multiple_of(SUPER * QUANT_GROUP) => {
                return Self::ggml_from_rows(w, n, k, format);
            }
            QuantFormat::Q5 | QuantFormat::Q5K if k.is_multiple_of(QUANT_GROUP) => {
                return Self::ggml_from_rows(w, n, k, QuantFormat::Q5);
            }
            QuantFormat::Q5 | QuantFormat::Q5K => {
                return Self::from_rows(w, n, k, QuantFormat::Q8);
            }
            _ => {}
        }
        if format != QuantFormat::Q8 && !k.is_multiple_of(2) {
            candle_core::bail!(
                "quantize {format}: in-features {k} must be even (two values per byte)"
            );
        }
        match format {
            QuantFormat::Q4K | QuantFormat::Q6K | QuantFormat::Q3K | QuantFormat::Q2K
                if k.is_multiple_of(SUPER * QUANT_GROUP) =>
            {
                return Self::ggml_from_rows(w, n, k, format);
            }
            // GGUF cannot hold a partial superblock (llama.cpp falls back to another type
            // too): such rows take the 32-value groups of Q4 / Q8.
            QuantFormat::Q4K | QuantFormat::Q3K | QuantFormat::Q2K => {
                return Self::from_rows(w, n, k, QuantFormat::Q4)
            }
            QuantFormat::Q6K => return Self::from_rows(w, n, k, QuantFormat::Q8),
            _ => {}
        }
        let groups = k.div_ceil(QUANT_GROUP);
        let mut scales = vec![f16::ZERO; n * groups];
        // Offsets: Q4 only (Q8's stay zero and are dropped).
        let mut mins = vec![f16::ZERO; n * groups];
        let mut q = vec![0u8; n * k];
        // One row per task: rows are independent.
        w.par_chunks(k.max(1))
            .zip(q.par_chunks_mut(k.max(1)))
            .zip(scales.par_chunks_mut(groups.max(1)))
            .zip(mins.par_chunks_mut(groups.max(1)))
            .for_each(|(((row, q), s), m)| {
                let groups = row.chunks(QUANT_GROUP).zip(q.chunks_mut(QUANT_GROUP));
                for (g, (v, q)) in groups.enumerate() {
                    match format {
                        QuantFormat::Q8 => s[g] = quantize_q8(v, q),
                        _ => (s[g], m[g]) = quantize_q4(v, q),
                    }
                }
            });
        if format == QuantFormat::Q8 {
            mins = Vec::new();
        }
        let values = match format {
            QuantFormat::Q8 => Values::I8(q.into_iter().map(|b| b as i8).collect()),
            _ => Values::U4(pairs(&q)),
        };
        Ok(Self {
            format,
            dims: [n, k],
            values,
            params: GroupParams::Group {
                scales,
                mins,
                zero: 0,
            },
        })
    }

    /// `format`'s GGML blocks ([`QuantFormat::Q4K`], [`QuantFormat::Q6K`], the 5-bit ones) of
    /// `[n, k]` rows (`k` whole blocks) by GGML's reference quantiser (candle's).
    fn ggml_from_rows(w: &[f32], n: usize, k: usize, format: QuantFormat) -> Result<Self> {
        use candle_core::quantized::QTensor;
        let ty = format.ggml_type();
        let row_bytes = k / ty.block_size() * ty.type_size();
        let mut blocks = vec![0u8; n * row_bytes];
        // Rows in parallel, a few hundred KiB of weights per task (GGML's quantiser is
        // single-threaded).
        let rows_per_task = (65536 / k.max(1)).max(1);
        blocks
            .par_chunks_mut(rows_per_task * row_bytes.max(1))
            .zip(w.par_chunks(rows_per_task * k.max(1)))
            .try_for_each(|(out, w)| -> Result<()> {
                let t = Tensor::from_slice(w, (w.len() / k, k), &candle_core::Device::Cpu)?;
                out.copy_from_slice(&QTensor::quantize(&t, ty)?.data()?);
                Ok(())
            })?;
        Self::from_ggml(ty, &blocks, n, k)?
            .ok_or_else(|| candle_core::Error::Msg(format!("{ty:?} is read natively")))
    }

    /// Q6_K blocks of `[n, k]` rows (checked by the callers): per block 128 bytes of low
    /// nibbles, 64 of high bit pairs, 16 i8 scales, the f16 `d`. Value `128h + l + 32t`
    /// (`h` < 2, `l` < 32, `t` < 4) takes the low (t < 2) or high nibble of byte
    /// `64h + l + 32 (t % 2)` and bits `2t..2t + 2` of high byte `32h + l`.
    fn from_q6k_blocks(blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        Self::from_sixteenths_blocks(QuantFormat::Q6K, blocks, n, k, |b, q, p| {
            let (ql, qh) = (&b[..128], &b[128..192]);
            for h in 0..2 {
                for l in 0..32 {
                    for t in 0..4 {
                        let lo = (ql[64 * h + l + 32 * (t % 2)] >> (4 * (t / 2))) & 0xF;
                        let hi = (qh[32 * h + l] >> (2 * t)) & 3;
                        q[128 * h + l + 32 * t] = lo | (hi << 4);
                    }
                }
            }
            p.sc.extend(b[192..208].iter().map(|&s| s as i8));
            p.d.push(f16::from_le_bytes([b[208], b[209]]));
        })
    }

    /// Q3_K blocks of `[n, k]` rows (checked by the callers): per block 32 bytes `hmask`, 64
    /// `qs`, 12 of packed 6-bit scales, the f16 `d` (GGML's `dequantize_row_q3_K`). Value
    /// `128h + 32j + l` (`h` < 2, `j` < 4, `l` < 32) takes bits `2j..2j + 2` of `qs[32h + l]`
    /// and, as its third bit, bit `4h + j` of `hmask[l]`; its scale is `sc[v / 16] − 32`.
    fn from_q3k_blocks(blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        Self::from_sixteenths_blocks(QuantFormat::Q3K, blocks, n, k, |b, q, p| {
            let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
            for (i, q) in q.iter_mut().enumerate() {
                let (h, j, l) = (i / 128, i % 128 / 32, i % 32);
                let low = (qs[32 * h + l] >> (2 * j)) & 3;
                *q = low | (((hmask[l] >> (4 * h + j)) & 1) << 2);
            }
            p.sc.extend((0..16).map(|i| q3k_scale(scales, i) as i8 - 32));
            p.d.push(f16::from_le_bytes([b[108], b[109]]));
        })
    }

    /// Q2_K blocks of `[n, k]` rows (checked by the callers): per block 16 bytes of 4-bit
    /// scales (low half) and offsets (high half) per 16 values, 64 bytes `qs`, the f16 `d` and
    /// `dmin` (GGML's `dequantize_row_q2_K`). Value `128h + 32j + l` takes bits `2j..2j + 2`
    /// of `qs[32h + l]`; it is `d · sc · q − dmin · mn` with its 16's `sc` and `mn`.
    fn from_q2k_blocks(blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        Self::from_sixteenths_blocks(QuantFormat::Q2K, blocks, n, k, |b, q, p| {
            let (scales, qs) = (&b[..16], &b[16..80]);
            for (i, q) in q.iter_mut().enumerate() {
                let (h, j, l) = (i / 128, i % 128 / 32, i % 32);
                *q = (qs[32 * h + l] >> (2 * j)) & 3;
            }
            // The scale and offset nibbles as stored (`SixBit` reads them).
            p.sc.extend(scales.iter().map(|&s| s as i8));
            p.d.push(f16::from_le_bytes([b[80], b[81]]));
            p.dmin.push(f16::from_le_bytes([b[82], b[83]]));
        })
    }

    /// The blocks of a format with a scale per 16 (Q6_K, Q3_K or Q2_K) of `[n, k]` rows:
    /// `read` puts a block's 256 values in natural order into `q` and pushes its parameters;
    /// the values are packed per 64 into the format's chunks (`act8::chunk_bytes`).
    fn from_sixteenths_blocks(
        format: QuantFormat,
        blocks: &[u8],
        n: usize,
        k: usize,
        mut read: impl FnMut(&[u8], &mut [u8; SUPER * QUANT_GROUP], &mut SixteenthsParams),
    ) -> Result<Self> {
        let (ty, name, bits) = match format {
            QuantFormat::Q6K => (GgmlDType::Q6K, "Q6_K", 6),
            QuantFormat::Q3K => (GgmlDType::Q3K, "Q3_K", 3),
            QuantFormat::Q2K => (GgmlDType::Q2K, "Q2_K", 2),
            _ => unreachable!("{format} has no scale per 16"),
        };
        let supers = n * k / (SUPER * QUANT_GROUP);
        let mut p = SixteenthsParams {
            sc: Vec::with_capacity(n * k / 16),
            d: Vec::with_capacity(supers),
            dmin: Vec::with_capacity(if bits == 2 { supers } else { 0 }),
        };
        let chunk = act8::chunk_bytes(bits);
        let mut v = Vec::with_capacity(n * k / U6_CHUNK * chunk);
        let mut q = [0u8; SUPER * QUANT_GROUP];
        for b in blocks.chunks_exact(ty.type_size()) {
            read(b, &mut q, &mut p);
            for values in q.chunks_exact(U6_CHUNK) {
                match bits {
                    6 => v.extend(act8::u6_chunk(values)),
                    // A 2-bit chunk is a 3-bit one's leading bit pairs.
                    _ => v.extend(&act8::u3_chunk(values)[..chunk]),
                }
            }
        }
        if p.sc.len() != n * k / 16 {
            candle_core::bail!("{name} [{n}, {k}]: {} bytes of blocks", blocks.len());
        }
        let values = match bits {
            6 => Values::U6(v),
            3 => Values::U3(v),
            _ => Values::U2(v),
        };
        let SixteenthsParams { sc, d, dmin } = p;
        Ok(Self {
            format,
            dims: [n, k],
            values,
            params: GroupParams::Sixteenths { sc, d, dmin },
        })
    }

    /// Q4_K blocks of `[n, k]` rows (checked by the callers).
    fn from_q4k_blocks(blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        const VALUES: usize = SUPER * QUANT_GROUP;
        let (groups, supers) = (n * k / QUANT_GROUP, n * k / VALUES);
        let mut sc = Vec::with_capacity(groups);
        let mut mn = Vec::with_capacity(groups);
        let mut d = Vec::with_capacity(supers);
        let mut dmin = Vec::with_capacity(supers);
        let mut q = Vec::with_capacity(n * k / 2);
        let mut vals = [0u8; VALUES];
        for b in blocks.chunks_exact(GgmlDType::Q4K.type_size()) {
            push_k_params(b, (&mut sc, &mut mn), (&mut d, &mut dmin));
            // Each 32 bytes hold two groups: the low nibbles the first, the high the second.
            for (c, qs) in b[16..].chunks_exact(QUANT_GROUP).enumerate() {
                for (l, &byte) in qs.iter().enumerate() {
                    vals[64 * c + l] = byte & 0xF;
                    vals[64 * c + 32 + l] = byte >> 4;
                }
            }
            q.extend(pairs(&vals));
        }
        if q.len() != n * k / 2 {
            candle_core::bail!("Q4_K [{n}, {k}]: {} bytes of blocks", blocks.len());
        }
        Ok(Self {
            format: QuantFormat::Q4K,
            dims: [n, k],
            values: Values::U4(q),
            params: GroupParams::Super { sc, mn, d, dmin },
        })
    }

    /// `Q5_0`, `Q5_1` or `Q5_K` blocks of `[n, k]` rows (checked by the callers), as
    /// [`QuantFormat::Q5`] / [`QuantFormat::Q5K`].
    /// - `Q5_1` (24 bytes): f16 `d` and `m`, the fifth bits as a u32 (bit `j`: value `j`),
    ///   16 bytes of nibbles as in `Q4_1`; value `d · q + m`.
    /// - `Q5_0` (22 bytes): `Q5_1` without `m`, value `d · (q − 16)`: held with the zero point
    ///   16 ([`Params::Group`]).
    /// - `Q5_K` (176 bytes): f16 `d`, `dmin`, `Q4_K`'s 12 bytes of 6-bit scales and mins, 32
    ///   bytes `qh`, 128 bytes `qs`; in chunk `c` of 64 values, value `l` (< 32) is the low
    ///   nibble of `qs[32c + l]` and bit `2c` of `qh[l]`, value `32 + l` the high nibble and
    ///   bit `2c + 1` (GGML's `dequantize_row_q5_K`).
    fn from_q5_blocks(ty: GgmlDType, blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        let (block, block_bytes) = (ty.block_size(), ty.type_size());
        let mut rows = Vec::with_capacity(n * u5_row_bytes(k));
        let (mut scales, mut mins) = (Vec::new(), Vec::new());
        let (mut sc, mut mn, mut d, mut dmin) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut vals = vec![0u8; k];
        for row in blocks.chunks_exact(k / block * block_bytes) {
            for (b, vals) in row
                .chunks_exact(block_bytes)
                .zip(vals.chunks_exact_mut(block))
            {
                if ty != GgmlDType::Q5K {
                    let d = f16::from_le_bytes([b[0], b[1]]);
                    scales.push(d);
                    // Q5_1: d, m, fifth bits, nibbles; Q5_0: d, fifth bits, nibbles (a zero
                    // point of 16).
                    let at = if ty == GgmlDType::Q5_1 {
                        mins.push(f16::from_le_bytes([b[2], b[3]]));
                        4
                    } else {
                        2
                    };
                    let high = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    for (j, v) in vals.iter_mut().enumerate() {
                        let nib = (b[at + 4 + j % 16] >> (4 * (j / 16))) & 0xF;
                        *v = nib | ((((high >> j) & 1) as u8) << 4);
                    }
                } else {
                    push_k_params(b, (&mut sc, &mut mn), (&mut d, &mut dmin));
                    let (qh, qs) = (&b[16..48], &b[48..]);
                    for (c, vals) in vals.chunks_exact_mut(64).enumerate() {
                        for l in 0..32 {
                            let byte = qs[32 * c + l];
                            vals[l] = (byte & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4);
                            vals[32 + l] = (byte >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
                        }
                    }
                }
            }
            push_u5_row(&vals, &mut rows);
        }
        let (format, params) = if ty != GgmlDType::Q5K {
            let zero = if ty == GgmlDType::Q5_0 { 16 } else { 0 };
            (QuantFormat::Q5, GroupParams::Group { scales, mins, zero })
        } else {
            (QuantFormat::Q5K, GroupParams::Super { sc, mn, d, dmin })
        };
        Ok(Self {
            format,
            dims: [n, k],
            values: Values::U5(rows),
            params,
        })
    }

    /// The format [`QuantMatrix::from_ggml`] holds GGML type `ty` in, `None` for the types it
    /// does not read (other block types run on candle's kernels: [`crate::GgmlMatrix`]).
    pub fn format_of_ggml(ty: GgmlDType) -> Option<QuantFormat> {
        Some(match ty {
            GgmlDType::Q8_0 => QuantFormat::Q8,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => QuantFormat::Q4,
            GgmlDType::Q4K => QuantFormat::Q4K,
            GgmlDType::Q6K => QuantFormat::Q6K,
            GgmlDType::Q5_0 | GgmlDType::Q5_1 => QuantFormat::Q5,
            GgmlDType::Q3K => QuantFormat::Q3K,
            GgmlDType::Q2K => QuantFormat::Q2K,
            GgmlDType::Q5K => QuantFormat::Q5K,
            _ => return None,
        })
    }

    /// From GGML blocks of an `[n, k]` matrix (`k` a multiple of the block): the same values,
    /// re-laid for this crate's kernels, nothing requantised. `None` for other types.
    /// - `Q8_0` (an f16 scale, 32 i8) is [`QuantFormat::Q8`];
    /// - `Q4_1` (f16 scale and min, 32 nibbles: value `j` in the low half of byte `j`, value
    ///   `j + 16` in its high half) is [`QuantFormat::Q4`];
    /// - `Q4_K` is [`QuantFormat::Q4K`], `Q6_K` [`QuantFormat::Q6K`], `Q5_1` [`QuantFormat::Q5`]
    ///   and `Q5_K` [`QuantFormat::Q5K`] (their layouts: `from_q5_blocks`);
    /// - `Q4_0` (`d · (q − 8)`) and `Q5_0` (`d · (q − 16)`, the fifth bits in a u32 per
    ///   block) are held in [`QuantFormat::Q4`] / [`QuantFormat::Q5`] with their zero point
    ///   and no stored offsets, 4.5 / 5.5 bits per weight as in the file: the kernels form
    ///   the offset `−8 · d` / `−16 · d` from the scale in f32 (exact: a power of two times
    ///   an f16) and multiply it by the sums of the rounded activations
    ///   (`kernel::act8::Q8Row::sums`), as for `Q4_1` / `Q5_1`. (llama.cpp's Q4_K_M stores
    ///   the rows that are not whole Q4_K superblocks in `Q5_0`.)
    pub fn from_ggml(ty: GgmlDType, blocks: &[u8], n: usize, k: usize) -> Result<Option<Self>> {
        let Some(format) = Self::format_of_ggml(ty) else {
            return Ok(None);
        };
        let (block, block_bytes) = (ty.block_size(), ty.type_size());
        if !k.is_multiple_of(block) || blocks.len() != n * k / block * block_bytes {
            candle_core::bail!(
                "{ty:?} [{n}, {k}]: {} bytes of blocks, expected {} (rows of whole {block}-value blocks)",
                blocks.len(),
                n * (k / block) * block_bytes
            );
        }
        match format {
            QuantFormat::Q4K => return Self::from_q4k_blocks(blocks, n, k).map(Some),
            QuantFormat::Q6K => return Self::from_q6k_blocks(blocks, n, k).map(Some),
            QuantFormat::Q3K => return Self::from_q3k_blocks(blocks, n, k).map(Some),
            QuantFormat::Q2K => return Self::from_q2k_blocks(blocks, n, k).map(Some),
            QuantFormat::Q5 | QuantFormat::Q5K => {
                return Self::from_q5_blocks(ty, blocks, n, k).map(Some)
            }
            _ => {}
        }
        let groups = n * k / QUANT_GROUP;
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        let mut scales = Vec::with_capacity(groups);
        let mut mins = Vec::new();
        let values = match format {
            QuantFormat::Q8 => {
                let mut q = Vec::with_capacity(n * k);
                for b in blocks.chunks_exact(block_bytes) {
                    scales.push(f16_at(b, 0));
                    q.extend(b[2..].iter().map(|&v| v as i8));
                }
                Values::I8(q)
            }
            _ => {
                let mut q = Vec::with_capacity(n * k / 2);
                // Q4_1: d, m, nibbles; Q4_0: d, nibbles (a zero point of 8).
                let at = if ty == GgmlDType::Q4_0 { 2 } else { 4 };
                for b in blocks.chunks_exact(block_bytes) {
                    scales.push(f16_at(b, 0));
                    if ty == GgmlDType::Q4_1 {
                        mins.push(f16_at(b, 2));
                    }
                    let nib = |j: usize| (b[at + j % 16] >> (4 * (j / 16))) & 0xF;
                    q.extend(
                        (0..QUANT_GROUP / 2).map(|p| U4x2(nib(2 * p) | (nib(2 * p + 1) << 4))),
                    );
                }
                Values::U4(q)
            }
        };
        let zero = if ty == GgmlDType::Q4_0 { 8 } else { 0 };
        Ok(Some(Self {
            format,
            dims: [n, k],
            values,
            params: GroupParams::Group { scales, mins, zero },
        }))
    }

    /// The matrix as GGML blocks (its format's type, see [`QuantMatrix::from_ggml`]; `Q4_0` /
    /// `Q5_0` for matrices read from them), for GGUF files. Errors when `K` is not a multiple of the block (32 values; 256 for
    /// `Q4_K`: GGML blocks are whole).
    pub fn to_ggml(&self) -> Result<(GgmlDType, Vec<u8>)> {
        if let Cow::Owned(rows) = self.row_major() {
            return rows.to_ggml();
        }
        let [n, k] = self.dims;
        let ty = match (self.format, &self.params) {
            (QuantFormat::Q4, GroupParams::Group { zero: 8, .. }) => GgmlDType::Q4_0,
            (QuantFormat::Q5, GroupParams::Group { zero: 16, .. }) => GgmlDType::Q5_0,
            (format, _) => format.ggml_type(),
        };
        if !k.is_multiple_of(ty.block_size()) {
            candle_core::bail!(
                "{ty:?} blocks need rows of whole {}-value blocks, K is {k}",
                ty.block_size()
            );
        }
        let mut out = Vec::with_capacity(n * k / ty.block_size() * ty.type_size());
        let nib = |v: &[U4x2], j: usize| (v[j / 2].0 >> (4 * (j % 2))) & 0xF;
        match (&self.values, &self.params) {
            (Values::I8(v), GroupParams::Group { scales, .. }) => {
                for (s, q) in scales.iter().zip(v.chunks_exact(QUANT_GROUP)) {
                    out.extend(s.to_le_bytes());
                    out.extend(q.iter().map(|&q| q as u8));
                }
            }
            (Values::U4(v), GroupParams::Group { scales, mins, .. }) => {
                let blocks = v.chunks_exact(QUANT_GROUP / 2);
                for (g, (s, pairs)) in scales.iter().zip(blocks).enumerate() {
                    out.extend(s.to_le_bytes());
                    if let Some(m) = mins.get(g) {
                        // (None for Q4_0.)
                        out.extend(m.to_le_bytes());
                    }
                    out.extend(
                        (0..QUANT_GROUP / 2).map(|j| nib(pairs, j) | (nib(pairs, j + 16) << 4)),
                    );
                }
            }
            (Values::U4(v), GroupParams::Super { sc, mn, d, dmin }) => {
                const VALUES: usize = SUPER * QUANT_GROUP;
                for (b, pairs) in v.chunks_exact(VALUES / 2).enumerate() {
                    out.extend(d[b].to_le_bytes());
                    out.extend(dmin[b].to_le_bytes());
                    let at = b * SUPER..(b + 1) * SUPER;
                    out.extend(q4k_pack(&sc[at.clone()], &mn[at]));
                    for c in 0..VALUES / 64 {
                        out.extend(
                            (0..32).map(|l| {
                                nib(pairs, 64 * c + l) | (nib(pairs, 64 * c + 32 + l) << 4)
                            }),
                        );
                    }
                }
            }
            (Values::U6(v), GroupParams::Sixteenths { sc, d, .. }) => {
                const VALUES: usize = SUPER * QUANT_GROUP;
                let chunks = v.chunks_exact(VALUES / U6_CHUNK * U6_CHUNK_BYTES);
                for (b, (chunks, sc)) in chunks.zip(sc.chunks_exact(16)).enumerate() {
                    let q: Vec<u8> = chunks
                        .chunks_exact(U6_CHUNK_BYTES)
                        .flat_map(|c| (0..U6_CHUNK).map(|i| act8::u6_value(c, i)))
                        .collect();
                    let at = |h: usize, l: usize, t: usize| q[128 * h + l + 32 * t];
                    for h in 0..2 {
                        for half in 0..2 {
                            out.extend((0..32).map(|l| {
                                (at(h, l, half) & 0xF) | ((at(h, l, half + 2) & 0xF) << 4)
                            }));
                        }
                    }
                    for h in 0..2 {
                        out.extend((0..32).map(|l| {
                            (0..4).fold(0u8, |byte, t| byte | ((at(h, l, t) >> 4) << (2 * t)))
                        }));
                    }
                    out.extend(sc.iter().map(|&s| s as u8));
                    out.extend(d[b].to_le_bytes());
                }
            }
            (Values::U3(v), GroupParams::Sixteenths { sc, d, .. }) => {
                const VALUES: usize = SUPER * QUANT_GROUP;
                let chunks = v.chunks_exact(VALUES / U6_CHUNK * U3_CHUNK_BYTES);
                for (b, (chunks, sc)) in chunks.zip(sc.chunks_exact(16)).enumerate() {
                    let (mut hmask, mut qs) = ([0u8; 32], [0u8; 64]);
                    for (i, chunk) in chunks.chunks_exact(U3_CHUNK_BYTES).enumerate() {
                        for c in 0..U6_CHUNK {
                            let q = act8::u3_value(chunk, c);
                            let v = i * U6_CHUNK + c;
                            let (h, j, l) = (v / 128, v % 128 / 32, v % 32);
                            qs[32 * h + l] |= (q & 3) << (2 * j);
                            hmask[l] |= (q >> 2) << (4 * h + j);
                        }
                    }
                    out.extend(hmask);
                    out.extend(qs);
                    out.extend(q3k_pack(sc));
                    out.extend(d[b].to_le_bytes());
                }
            }
            (Values::U2(v), GroupParams::Sixteenths { sc, d, dmin }) => {
                const VALUES: usize = SUPER * QUANT_GROUP;
                let chunks = v.chunks_exact(VALUES / U6_CHUNK * U2_CHUNK_BYTES);
                for (b, (chunks, sc)) in chunks.zip(sc.chunks_exact(16)).enumerate() {
                    out.extend(sc.iter().map(|&s| s as u8));
                    let mut qs = [0u8; 64];
                    for (i, chunk) in chunks.chunks_exact(U2_CHUNK_BYTES).enumerate() {
                        for c in 0..U6_CHUNK {
                            let v = i * U6_CHUNK + c;
                            let (h, j, l) = (v / 128, v % 128 / 32, v % 32);
                            qs[32 * h + l] |= act8::u2_value(chunk, c) << (2 * j);
                        }
                    }
                    out.extend(qs);
                    out.extend(d[b].to_le_bytes());
                    out.extend(dmin[b].to_le_bytes());
                }
            }
            (Values::U5(v), params) => {
                for (r, row) in v.chunks_exact(u5_row_bytes(k)).enumerate() {
                    push_u5_blocks(&u5_values(row, k), params, r, &mut out);
                }
            }
            _ => unreachable!("each value type has its own parameters"),
        }
        Ok((ty, out))
    }

    /// The matrix laid out for the kernels of `isa`: on AVX512-VNNI CPUs the 8, 6 (Q6_K), 5
    /// and 4-bit matrices go to panels of 32 interleaved rows, the same bytes in another order
    /// (one kernel then reads them for any number of activation rows: decode is bound by the
    /// bytes it reads, and every row's result is the same whatever the batch); Q3_K, Q2_K and
    /// other CPUs keep the row layout. A product on another path still works, through a
    /// row-major copy per call (for tests and forced fallbacks, not for speed).
    pub fn for_isa(self, isa: Isa) -> Self {
        if !isa.quant_panels() {
            return self;
        }
        let [n, k] = self.dims;
        let bits = match &self.values {
            Values::I8(_) => 8,
            Values::U6(_) => 6,
            Values::U5(_) => 5,
            Values::U4(_) => 4,
            Values::U3(_) | Values::U2(_) | Values::Panels { .. } => return self,
        };
        let v = kernel::panels::pack(bits, n, k, |r, out| self.row_values(r, out));
        let params = self.params.relaid(n, k, true);
        Self {
            values: Values::Panels { bits, v },
            params,
            ..self
        }
    }

    /// Row `r`'s values as unsigned integers (8-bit weights plus 128), natural order.
    fn row_values(&self, r: usize, out: &mut [u8]) {
        let k = self.dims[1];
        match &self.values {
            Values::I8(v) => {
                for (o, &w) in out.iter_mut().zip(&v[r * k..(r + 1) * k]) {
                    *o = (w as u8) ^ 0x80;
                }
            }
            Values::U4(v) => {
                for (o, j) in out.chunks_exact_mut(2).zip(r * k / 2..(r + 1) * k / 2) {
                    (o[0], o[1]) = (v[j].0 & 0xF, v[j].0 >> 4);
                }
            }
            Values::U5(v) => {
                let bytes = u5_row_bytes(k);
                out[..k].copy_from_slice(&u5_values(&v[r * bytes..][..bytes], k));
            }
            Values::U6(v) | Values::U3(v) | Values::U2(v) => {
                let bits = self.values.sixteenths_bits();
                let (chunk, bytes) = (
                    act8::chunk_bytes(bits),
                    k / U6_CHUNK * act8::chunk_bytes(bits),
                );
                let chunks = v[r * bytes..(r + 1) * bytes].chunks_exact(chunk);
                for (w, o) in chunks.zip(out.chunks_exact_mut(U6_CHUNK)) {
                    for (i, o) in o.iter_mut().enumerate() {
                        *o = act8::sixteenths_value(bits, w, i);
                    }
                }
            }
            Values::Panels { bits, v } => kernel::panels::unpack_row(*bits, v, k, r, out),
        }
    }

    /// Up to how many activation rows each row's product on the kernel path `isa` has the same
    /// bits whatever the other rows: any number for a panel matrix on an AVX512-VNNI path (one
    /// kernel at every size), [`Isa::quant_row_kernel_rows`] otherwise (the row kernels'
    /// regime).
    pub fn batch_invariant_rows(&self, isa: Isa) -> usize {
        if self.in_panels() && isa.quant_panels() {
            usize::MAX
        } else {
            isa.quant_row_kernel_rows()
        }
    }

    /// Whether the matrix is in panels ([`QuantMatrix::for_isa`]), not in rows.
    pub fn in_panels(&self) -> bool {
        matches!(self.values, Values::Panels { .. })
    }

    /// The matrix in the row layout: itself, or a copy of a panel-layout one.
    fn row_major(&self) -> Cow<'_, QuantMatrix> {
        let Values::Panels { bits, .. } = self.values else {
            return Cow::Borrowed(self);
        };
        let [n, k] = self.dims;
        let mut q = vec![0u8; k];
        let mut bytes = Vec::new();
        for r in 0..n {
            self.row_values(r, &mut q);
            match bits {
                8 => bytes.extend(q.iter().map(|&v| v ^ 0x80)),
                6 => q
                    .chunks_exact(U6_CHUNK)
                    .for_each(|c| bytes.extend(act8::u6_chunk(c))),
                5 => push_u5_row(&q, &mut bytes),
                _ => bytes.extend(pairs(&q).into_iter().map(|p| p.0)),
            }
        }
        let values = match bits {
            8 => Values::I8(bytes.into_iter().map(|b| b as i8).collect()),
            6 => Values::U6(bytes),
            5 => Values::U5(bytes),
            _ => Values::U4(bytes.into_iter().map(U4x2).collect()),
        };
        Cow::Owned(Self {
            format: self.format,
            dims: self.dims,
            values,
            params: self.params.relaid(n, k, false),
        })
    }

    /// The format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// `[N, K]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Bytes of the matrix a product reads: the packed values and the group parameters (in
    /// panels, the matrix's own: not the zeros that pad a partial last panel or group).
    pub fn bytes(&self) -> usize {
        let [n, k] = self.dims;
        match &self.values {
            Values::Panels { bits, .. } => {
                // Parameters in panels are `[panels, .., 32]`: `n` rows of them are the matrix's.
                let rows = kernel::panels::panels(n) * kernel::panels::NR;
                n * (k * bits).div_ceil(8) + self.params.bytes() * n / rows.max(1)
            }
            v => v.as_bytes().len() + self.params.bytes(),
        }
    }

    /// Backs the matrix's values and parameters with transparent huge pages where the kernel
    /// allows ([`crate::advise_matrices_huge_pages`] of this matrix alone), so that a decode
    /// step streaming them takes no TLB miss per 4 KiB. Returns whether it applied; values
    /// never change.
    pub fn advise_huge_pages(&self) -> bool {
        crate::huge_pages::advise_spans(self.host_spans()) > 0
    }

    /// The address ranges of the matrix's storage: its values and each parameter array.
    pub(crate) fn host_spans(&self) -> Vec<Range<usize>> {
        use crate::huge_pages::slice_span;
        let mut spans = vec![crate::huge_pages::bytes_span(self.values.as_bytes())];
        match &self.params {
            GroupParams::Group { scales, mins, .. } => {
                spans.extend([slice_span(scales), slice_span(mins)])
            }
            GroupParams::Super { sc, mn, d, dmin } => spans.extend([
                slice_span(sc),
                slice_span(mn),
                slice_span(d),
                slice_span(dmin),
            ]),
            GroupParams::Sixteenths { sc, d, dmin } => {
                spans.extend([slice_span(sc), slice_span(d), slice_span(dmin)])
            }
        }
        spans
    }

    /// `fill(row's parameters, its groups, out)` for every row, in parallel over rows:
    /// `[N, groups]` row-major.
    fn per_group(&self, fill: impl Fn(&Params, Range<usize>, &mut [f32]) + Sync) -> Vec<f32> {
        let [n, k] = self.dims;
        let groups = k.div_ceil(QUANT_GROUP);
        let Some(all) = self.params.view() else {
            return Vec::new();
        };
        let mut out = vec![0f32; n * groups];
        out.par_chunks_mut(groups.max(1))
            .enumerate()
            .for_each(|(r, out)| fill(&all.row(r, groups), 0..groups, out));
        out
    }

    /// `bits`-bit values `v` with a scale per 16 (`p`) times more than [`GEMV_MAX_ROWS`] rows
    /// where the integer GEMM does not run: the f32 GEMM over the values widened to one signed
    /// byte each (`q − zero`), a block of rows at a time ([`in_row_blocks`]), a scale per 16
    /// applied as it widens, and 2-bit rows' offsets against the activations' exact sums per
    /// 16. The row kernels would take 3-12x longer here (`benchmarks/README.md`).
    fn sixteenths_f32_gemm(
        &self,
        isa: Isa,
        bits: usize,
        v: &[u8],
        p: SixBit,
        xs: &[f32],
        m: usize,
    ) -> Vec<f32> {
        let [n, k] = self.dims;
        let (groups, subs) = (k / QUANT_GROUP, k / 16);
        let row_bytes = k / U6_CHUNK * act8::chunk_bytes(bits);
        let sums: Vec<f32> = xs.chunks(16).map(|c| c.iter().sum()).collect();
        in_row_blocks(n, k, m, |rows| {
            let n = rows.len();
            let mut bytes = vec![0i8; n * k];
            let mut scales = vec![0f32; n * subs];
            let mut mins = vec![0f32; if p.has_offsets() { n * subs } else { 0 }];
            let widen = match bits {
                2 => widen_sixteenths::<2>,
                3 => widen_sixteenths::<3>,
                _ => widen_sixteenths::<6>,
            };
            bytes
                .par_chunks_mut(k)
                .zip(v[rows.start * row_bytes..rows.end * row_bytes].par_chunks(row_bytes))
                .zip(scales.par_chunks_mut(subs))
                .enumerate()
                .for_each(|(i, ((out, row), scales))| {
                    widen(row, out);
                    p.row(rows.start + i, groups).scales_into(scales);
                });
            mins.par_chunks_mut(subs)
                .enumerate()
                .for_each(|(i, mins)| p.row(rows.start + i, groups).offsets_into(mins));
            let scales = BlockScales {
                scale: Scales::F32(&scales),
                rows: 1,
                cols: 16,
            };
            let mut out = kernel::product(isa, &bytes, k, xs, m, Some(&scales));
            if !mins.is_empty() {
                let offsets = kernel::product(isa, &mins, subs, &sums, m, None);
                for (o, v) in out.iter_mut().zip(offsets) {
                    *o += v;
                }
            }
            out
        })
    }

    /// The dequantised row-major `[N, K]` values (the oracle of the kernels).
    pub fn dequantize_rows(&self) -> Vec<f32> {
        self.dequantize_rows_at(&(0..self.dims[0]).collect::<Vec<_>>())
    }

    /// Rows `rows` dequantised, row-major `[rows.len(), K]`: the reads of a lookup table kept
    /// in its stored format (a token embedding), with the values [`QuantMatrix::dequantize_rows`]
    /// gives. A matrix in panels is read through a row-layout copy made per call, so a table
    /// is kept in the row layout ([`QuantMatrix::to_row_layout`]).
    ///
    /// # Panics
    /// If a row is out of range (`N` rows).
    pub fn dequantize_rows_at(&self, rows: &[usize]) -> Vec<f32> {
        let table = self.row_major();
        let [n, k] = self.dims;
        assert!(rows.iter().all(|&r| r < n), "rows of a {n}-row matrix");
        let mut out = vec![0f32; rows.len() * k];
        for (&r, row) in rows.iter().zip(out.chunks_exact_mut(k.max(1))) {
            table.dequantize_row(r, row);
        }
        out
    }

    /// The matrix in the row layout (a copy of a panel-layout one): what
    /// [`QuantMatrix::dequantize_rows_at`] reads without a copy.
    pub fn to_row_layout(&self) -> QuantMatrix {
        self.row_major().into_owned()
    }

    /// Row `r` dequantised into `row` (`K` values); `self` in the row layout.
    fn dequantize_row(&self, r: usize, row: &mut [f32]) {
        let k = self.dims[1];
        let groups = k.div_ceil(QUANT_GROUP);
        let p = match (&self.values, &self.params) {
            (
                Values::U6(v) | Values::U3(v) | Values::U2(v),
                GroupParams::Sixteenths { sc, d, dmin },
            ) => {
                // (q − zero) · (d · sc) (− dmin · mn), as GGML dequantises.
                let bits = self.values.sixteenths_bits();
                let p = SixBit { sc, d, dmin }.row(r, groups);
                let chunk = act8::chunk_bytes(bits);
                let bytes = k / U6_CHUNK * chunk;
                let chunks = v[r * bytes..(r + 1) * bytes].chunks_exact(chunk);
                for (ch, (w, vals)) in chunks.zip(row.chunks_exact_mut(U6_CHUNK)).enumerate() {
                    for (i, v) in vals.iter_mut().enumerate() {
                        let s = p.scale((ch * U6_CHUNK + i) / 16);
                        let q = act8::sixteenths_value(bits, w, i) as i32;
                        let s16 = (ch * U6_CHUNK + i) / 16;
                        *v = (q - act8::zero_point(bits)) as f32 * s + p.offset(s16);
                    }
                }
                return;
            }
            (Values::I8(v), params) => {
                i8::widen_row(&v[r * k..(r + 1) * k], row);
                params.view()
            }
            (Values::U4(v), params) => {
                U4x2::widen_row(&v[r * k / 2..(r + 1) * k / 2], row);
                params.view()
            }
            (Values::U5(v), params) => {
                let bytes = u5_row_bytes(k);
                for (v, q) in row.iter_mut().zip(u5_values(&v[r * bytes..][..bytes], k)) {
                    *v = q as f32;
                }
                params.view()
            }
            (Values::U6(_) | Values::U3(_) | Values::U2(_), _) => None,
            (Values::Panels { .. }, _) => unreachable!("read through the row layout"),
        };
        let p = p.expect("group parameters").row(r, groups);
        for (g, vals) in row.chunks_mut(QUANT_GROUP).enumerate() {
            let (s, m) = (p.scale(g), p.offset(g));
            for v in vals {
                *v = *v * s + m;
            }
        }
    }

    /// [`QuantMatrix::dequantize_rows`] as an f32 tensor on the CPU.
    pub fn dequantize(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.dequantize_rows(),
            (self.dims[0], self.dims[1]),
            &candle_core::Device::Cpu,
        )
    }

    /// The same values as 8-bit groups ([`QuantFormat::Q8`]: `s · (q − z)` is `s` times an
    /// i8) for a matrix with a zero point and no stored offsets (GGUF's Q4_0 / Q5_0 as
    /// [`QuantMatrix::from_ggml`] holds them); `None` for the other formats, whose values an
    /// 8-bit group cannot always hold. 8.5 bits per weight instead of 4.5 / 5.5, but products
    /// with f32 activations ([`QuantMatrix::matmul_f32_activations`]) then widen no nibbles
    /// per call: for small blocks read often, such as MLA's absorbed per-head blocks.
    pub fn zero_point_as_q8(&self) -> Option<QuantMatrix> {
        let rows = self.row_major();
        let GroupParams::Group { scales, mins, zero } = &rows.params else {
            return None;
        };
        if !mins.is_empty() || *zero == 0 {
            return None;
        }
        let ([n, k], z) = (self.dims, i16::from(*zero));
        let mut q = vec![0i8; n * k];
        let of = |v: u8| (i16::from(v) - z) as i8;
        match &rows.values {
            Values::U4(v) => {
                for (out, row) in q.chunks_exact_mut(k).zip(v.chunks_exact(k / 2)) {
                    kernel::Nibbles::four(row).values_into(out, of);
                }
            }
            Values::U5(v) => {
                for (out, row) in q.chunks_exact_mut(k).zip(v.chunks_exact(u5_row_bytes(k))) {
                    kernel::Nibbles::five(row, k).values_into(out, of);
                }
            }
            _ => return None,
        }
        Some(QuantMatrix {
            format: QuantFormat::Q8,
            dims: self.dims,
            values: Values::I8(q),
            params: GroupParams::Group {
                scales: scales.clone(),
                mins: Vec::new(),
                zero: 0,
            },
        })
    }

    /// `xs` (`m` row-major f32 rows of `K`) times the matrix with the activations kept in
    /// f32: each weight widened to its exact value (`s_g · q + m_g`; each group's products
    /// summed unscaled, then multiplied by its scale in f32, as the FP8 kernels do), so the
    /// result equals the product with [`QuantMatrix::dequantize_rows`] up to the summation
    /// order, where [`QuantMatrix::matmul`] rounds the activations to 8 bits. With
    /// `row_invariant` every row goes through the matrix-vector kernel, so each row's result
    /// has the same bits whatever the other rows; otherwise more than [`GEMV_MAX_ROWS`] rows
    /// take the f32 GEMM over the widened values. The formats with a group per 32 values
    /// (Q8, Q4, Q4K, Q5, Q5K); an error for those with a scale per 16 (Q6K, Q3K, Q2K).
    ///
    /// # Panics
    /// If `xs.len() != m · K`.
    pub fn matmul_f32_activations(
        &self,
        isa: Isa,
        xs: &[f32],
        m: usize,
        row_invariant: bool,
    ) -> Result<Vec<f32>> {
        let [_, k] = self.dims;
        assert_eq!(
            xs.len(),
            m * k,
            "matmul_f32_activations: xs must hold m rows of K"
        );
        if !self.format.takes_f32_activations() {
            candle_core::bail!(
                "products with f32 activations take formats with a group per 32 values, not {}",
                self.format.name()
            );
        }
        let rows = self.row_major();
        let params = rows
            .params
            .view()
            .expect("a group per 32 values: checked above");
        Ok(rows.matmul_widened(isa, params, xs, m, row_invariant))
    }

    /// `xs` (`m` row-major f32 rows of `K`) times the matrix: `[m, N]` row-major, on the
    /// kernel path `isa` (the row kernels up to [`Isa::quant_row_kernel_rows`] rows, the
    /// integer GEMM above that on VNNI, the f32 GEMM elsewhere: see the module docs).
    ///
    /// # Panics
    /// If `xs.len() != m · K`.
    pub fn matmul(&self, isa: Isa, xs: &[f32], m: usize) -> Vec<f32> {
        let [n, k] = self.dims;
        assert_eq!(
            xs.len(),
            m * k,
            "QuantMatrix::matmul: xs must hold m rows of K"
        );
        if let Values::Panels { bits, v } = &self.values {
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = isa.avx512_vnni() {
                use kernel::x86_512_act8_gemm::Factors;
                let params = match &self.params {
                    GroupParams::Sixteenths { sc, d, dmin } => {
                        Factors::PerSixteen(SixBit { sc, d, dmin })
                    }
                    params => Factors::PerGroup(params.view().expect("group parameters")),
                };
                return kernel::x86_512_panels::matmul(t, *bits, v, params, n, k, xs, m);
            }
            return self.row_major().matmul(isa, xs, m);
        }
        let rows_kernels = m <= isa.quant_row_kernel_rows();
        let params = match (&self.values, &self.params) {
            // A scale per 16: the 8-bit activation kernels (the rows as in decode, or the GEMM
            // on VNNI CPUs past GEMV_MAX_ROWS), the f32 GEMM past the row kernels elsewhere.
            (
                Values::U6(v) | Values::U3(v) | Values::U2(v),
                GroupParams::Sixteenths { sc, d, dmin },
            ) => {
                let (bits, p) = (self.values.sixteenths_bits(), SixBit { sc, d, dmin });
                #[cfg(target_arch = "x86_64")]
                if m > GEMV_MAX_ROWS && isa.quant_panels() {
                    use kernel::x86_512_act8_gemm::{self as gemm, Factors, Weights};
                    let t = isa.avx512_vnni().expect("VNNI: checked above");
                    let w = Weights::Sixteenths { bits, w: v };
                    return gemm::matmul(t, w, Factors::PerSixteen(p), n, k, xs, m);
                }
                if !rows_kernels {
                    return self.sixteenths_f32_gemm(isa, bits, v, p, xs, m);
                }
                return act8::matmul_sixteenths_q8(isa, bits, v, k, xs, m, p);
            }
            (_, params) => params.view().expect("group parameters"),
        };
        match &self.values {
            // The row kernels' products round the activations to 8 bits (see `kernel::act8`),
            // the 4-bit offsets summed in the same pass.
            Values::I8(v) if rows_kernels => {
                let Params::Group { scales, .. } = params else {
                    unreachable!("8-bit values have f16 group scales")
                };
                kernel::act8::matmul_i8_q8(isa, v, k, xs, m, scales)
            }
            Values::U4(v) if rows_kernels => kernel::act8::matmul_u4_q8(isa, v, k, xs, m, params),
            Values::U5(v) if rows_kernels => kernel::act8::matmul_u5_q8(isa, v, k, xs, m, params),
            #[cfg(target_arch = "x86_64")]
            values if isa.quant_panels() => {
                use kernel::x86_512_act8_gemm::{self as gemm, Factors, Weights};
                let t = isa.avx512_vnni().expect("VNNI: checked above");
                let w = match values {
                    Values::I8(v) => Weights::I8(v),
                    Values::U4(v) => Weights::U4(v),
                    Values::U5(v) => Weights::U5(v),
                    Values::U6(_) | Values::U3(_) | Values::U2(_) | Values::Panels { .. } => {
                        unreachable!("taken above")
                    }
                };
                gemm::matmul(t, w, Factors::PerGroup(params), n, k, xs, m)
            }
            _ => self.matmul_widened(isa, params, xs, m, false),
        }
    }

    /// The product with f32 activations over the values widened to f32 (8, 4 and 5-bit
    /// groups): each group's products summed unscaled, then scaled in f32, and the offsets
    /// against the activations' exact group sums. Every row through the matrix-vector kernel
    /// with `row_invariant`, the f32 GEMM past [`GEMV_MAX_ROWS`] rows otherwise.
    fn matmul_widened(
        &self,
        isa: Isa,
        params: Params,
        xs: &[f32],
        m: usize,
        row_invariant: bool,
    ) -> Vec<f32> {
        let [n, k] = self.dims;
        // K-quant scales are formed once per call in f32 (a 64th of the weights).
        let formed;
        let scale = match params {
            Params::Group { scales, .. } => Scales::F16(scales),
            Params::Super { .. } => {
                formed = self.per_group(|p, g, out| p.scales_into(g, out));
                Scales::F32(&formed)
            }
        };
        let scales = BlockScales {
            scale,
            rows: 1,
            cols: QUANT_GROUP,
        };
        let mut out = match &self.values {
            Values::I8(v) => kernel::product_rows(isa, v, k, xs, m, Some(&scales), row_invariant),
            Values::U4(v) => kernel::product_rows(isa, v, k, xs, m, Some(&scales), row_invariant),
            // One byte per value for this call (the f32 GEMM widens bytes or nibble
            // pairs, not split bit planes), a block of rows at a time.
            Values::U5(v) => in_row_blocks(n, k, m, |rows| {
                let (bytes, per) = (u5_row_bytes(k), k.div_ceil(QUANT_GROUP));
                let v = &v[rows.start * bytes..rows.end * bytes];
                let at = rows.start * per..rows.end * per;
                let scales = BlockScales {
                    scale: match scales.scale {
                        Scales::F16(s) => Scales::F16(&s[at]),
                        Scales::F32(s) => Scales::F32(&s[at]),
                    },
                    ..scales
                };
                let widened = u5_bytes(v, rows.len(), k);
                kernel::product_rows(isa, &widened, k, xs, m, Some(&scales), row_invariant)
            }),
            Values::U6(_) | Values::U3(_) | Values::U2(_) | Values::Panels { .. } => {
                unreachable!("per-group parameters: taken by the caller")
            }
        };
        if params.has_offsets() && n > 0 {
            // Σ_g m[r, g] · (sum of x over group g): the offsets against the group sums.
            let groups = k.div_ceil(QUANT_GROUP);
            let sums: Vec<f32> = xs
                .chunks_exact(k.max(1))
                .flat_map(|x| x.chunks(QUANT_GROUP).map(|g| g.iter().sum::<f32>()))
                .collect();
            let offsets = match params {
                Params::Group { mins, .. } if !mins.is_empty() => {
                    kernel::product_rows(isa, mins, groups, &sums, m, None, row_invariant)
                }
                _ => {
                    let mins = self.per_group(|p, g, out| p.offsets_into(g, out));
                    kernel::product_rows(isa, &mins, groups, &sums, m, None, row_invariant)
                }
            };
            for (o, v) in out.iter_mut().zip(offsets) {
                *o += v;
            }
        }
        out
    }
}

/// Scale `i` (`0..16`, `0..=63`: the signed scale plus 32) of Q3_K's 12 packed bytes: the
/// low four bits in byte `i` (`i` < 8) or the high half of byte `i − 8`, the top two in bits
/// `2 · (i / 4)..` of byte `8 + i % 4` (GGML's `kmask` unpacking).
fn q3k_scale(packed: &[u8], i: usize) -> u8 {
    let low = if i < 8 {
        packed[i] & 0xF
    } else {
        packed[i - 8] >> 4
    };
    low | (((packed[8 + i % 4] >> (2 * (i / 4))) & 3) << 4)
}

/// The 12 packed bytes of 16 Q3_K scales (each in `−32..=31`), the inverse of [`q3k_scale`].
fn q3k_pack(sc: &[i8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (i, &s) in sc.iter().enumerate() {
        let u = (s as i32 + 32) as u8;
        out[i % 8] |= (u & 0xF) << (4 * (i / 8));
        out[8 + i % 4] |= (u >> 4) << (2 * (i / 4));
    }
    out
}

/// Q4_K's and Q5_K's block parameters (bytes `0..16` of block `b`): `d`, `dmin`, and the
/// eight groups' 6-bit scales and mins.
fn push_k_params(
    b: &[u8],
    (sc, mn): (&mut Vec<u8>, &mut Vec<u8>),
    (d, dmin): (&mut Vec<f16>, &mut Vec<f16>),
) {
    d.push(f16::from_le_bytes([b[0], b[1]]));
    dmin.push(f16::from_le_bytes([b[2], b[3]]));
    let packed: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
    for j in 0..SUPER {
        let (s, m) = q4k_scale_min(packed, j);
        sc.push(s);
        mn.push(m);
    }
}

/// Appends the stored row ([`u5_row_bytes`]) of the 5-bit values `q` (each `0..=31`, whole
/// groups): their low nibbles in pairs, then the fifth bits as `kernel::Nibbles` lays them out.
fn push_u5_row(q: &[u8], out: &mut Vec<u8>) {
    out.extend(
        q.chunks_exact(2)
            .map(|p| (p[0] & 0xF) | ((p[1] & 0xF) << 4)),
    );
    let bits: Vec<u32> = q
        .chunks_exact(QUANT_GROUP)
        .map(|g| {
            (0..QUANT_GROUP / 2).fold(0u32, |bits, t| {
                let (even, odd) = ((g[2 * t] >> 4) as u32, (g[2 * t + 1] >> 4) as u32);
                bits | (even << t) | (odd << (16 + t))
            })
        })
        .collect();
    out.extend(kernel::u5_high_bytes(&bits));
}

/// A row of `BITS`-bit values (chunks of 64) as signed bytes `q − zero`: the value functions
/// with `BITS` known, so the loop has no branches.
fn widen_sixteenths<const BITS: usize>(row: &[u8], out: &mut [i8]) {
    let zero = act8::zero_point(BITS);
    let chunks = row.chunks_exact(act8::chunk_bytes(BITS));
    for (out, w) in out.chunks_exact_mut(U6_CHUNK).zip(chunks) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = (act8::sixteenths_value(BITS, w, j) as i32 - zero) as i8;
        }
    }
}

/// Bytes of values the f32 paths widen for one call at most ([`in_row_blocks`]).
#[cfg(not(test))]
const WIDEN_BYTES: usize = 32 << 20;
/// (Small in tests, so test matrices span several blocks.)
#[cfg(test)]
const WIDEN_BYTES: usize = 64 << 10;

/// The `[m, N]` product assembled from `product(rows)`, each `[m, rows.len()]` for a block of
/// weight rows of at most [`WIDEN_BYTES`] bytes at a byte per value (`K` values per row; at
/// least 64 rows), so what a block widens stays bounded whatever `N` (a 129,280-row head would
/// take 0.9 GB at once). The blocks are of equal size, as the GEMM's threads share each.
fn in_row_blocks(
    n: usize,
    k: usize,
    m: usize,
    mut product: impl FnMut(Range<usize>) -> Vec<f32>,
) -> Vec<f32> {
    let most = (WIDEN_BYTES / k.max(1)).max(64);
    if n <= most {
        return product(0..n);
    }
    let per_block = n.div_ceil(n.div_ceil(most));
    let mut out = vec![0f32; m * n];
    for start in (0..n).step_by(per_block) {
        let rows = start..(start + per_block).min(n);
        let block = product(rows.clone());
        for (out, block) in out.chunks_exact_mut(n).zip(block.chunks_exact(rows.len())) {
            out[rows.clone()].copy_from_slice(block);
        }
    }
    out
}

/// The `[n, k]` stored 5-bit rows `v` as one byte per value (`0..=31`), in parallel over rows.
fn u5_bytes(v: &[u8], n: usize, k: usize) -> Vec<i8> {
    let mut out = vec![0i8; n * k];
    out.par_chunks_mut(k.max(1))
        .zip(v.par_chunks(u5_row_bytes(k).max(1)))
        .for_each(|(out, row)| kernel::Nibbles::five(row, k).values_into(out, |v| v as i8));
    out
}

/// The values (`0..=31`) of a stored 5-bit row of `k` values, the inverse of [`push_u5_row`].
fn u5_values(row: &[u8], k: usize) -> Vec<u8> {
    let mut values = vec![0u8; k];
    kernel::Nibbles::five(row, k).values_into(&mut values, |v| v);
    values
}

/// Row `r`'s 5-bit values `q` (natural order, whole blocks) as GGML blocks: `Q5_1` with group
/// parameters, `Q5_K` with superblock ones (the layouts of [`QuantMatrix::from_ggml`]).
fn push_u5_blocks(q: &[u8], params: &GroupParams, r: usize, out: &mut Vec<u8>) {
    let groups = q.len() / QUANT_GROUP;
    match params {
        GroupParams::Group { scales, mins, .. } => {
            for (g, vals) in q.chunks_exact(QUANT_GROUP).enumerate() {
                out.extend(scales[r * groups + g].to_le_bytes());
                if let Some(m) = mins.get(r * groups + g) {
                    // (None for Q5_0.)
                    out.extend(m.to_le_bytes());
                }
                let high = vals
                    .iter()
                    .enumerate()
                    .fold(0u32, |h, (j, &v)| h | (((v >> 4) as u32) << j));
                out.extend(high.to_le_bytes());
                out.extend((0..16).map(|j| (vals[j] & 0xF) | ((vals[j + 16] & 0xF) << 4)));
            }
        }
        GroupParams::Super { sc, mn, d, dmin } => {
            const VALUES: usize = SUPER * QUANT_GROUP;
            let supers = groups / SUPER;
            for (b, vals) in q.chunks_exact(VALUES).enumerate() {
                out.extend(d[r * supers + b].to_le_bytes());
                out.extend(dmin[r * supers + b].to_le_bytes());
                let at = r * groups + b * SUPER..r * groups + (b + 1) * SUPER;
                out.extend(q4k_pack(&sc[at.clone()], &mn[at]));
                out.extend(
                    (0..32).map(|l| (0..8).fold(0u8, |h, t| h | ((vals[32 * t + l] >> 4) << t))),
                );
                for c in 0..VALUES / 64 {
                    out.extend(
                        (0..32).map(|l| {
                            (vals[64 * c + l] & 0xF) | ((vals[64 * c + 32 + l] & 0xF) << 4)
                        }),
                    );
                }
            }
        }
        GroupParams::Sixteenths { .. } => unreachable!("5-bit values have group parameters"),
    }
}

/// Values `0..=15`, two per byte: value `2i` in the low nibble of byte `i`, `2i + 1` in the
/// high one (`k` even).
fn pairs(q: &[u8]) -> Vec<U4x2> {
    q.chunks_exact(2)
        .map(|p| U4x2(p[0] | (p[1] << 4)))
        .collect()
}

/// Group `j`'s 6-bit scale and offset from Q4_K's 12 packed bytes (GGML's
/// `get_scale_min_k4`): groups 0-3 in the low 6 bits of bytes `j` and `j + 4`; groups 4-7
/// in the nibbles of byte `j + 4` with their top two bits in the top bits of bytes `j − 4`
/// and `j`.
fn q4k_scale_min(q: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`q4k_scale_min`] over a superblock's eight groups (values below 64).
fn q4k_pack(sc: &[u8], mn: &[u8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    q
}

use kernel::WeightElem as _;

/// Q8 of one group: the scale (`max |w| / 127`, rounded to f16 first so that `q` is rounded
/// against the stored scale); `q` gets the i8 values as bytes.
fn quantize_q8(v: &[f32], q: &mut [u8]) -> f16 {
    let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
    let s = f16::from_f32(amax / 127.0);
    if s.to_f32() == 0.0 {
        q.fill(0);
        return f16::ZERO;
    }
    let inv = 1.0 / s.to_f32();
    for (q, x) in q.iter_mut().zip(v) {
        // Round half away from zero by truncation (`f32::round` is a libm call without
        // SSE4.1, and this loop runs over every weight at load).
        let t = x * inv;
        *q = ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127) as i8 as u8;
    }
    s
}

/// `t` (in `0..2^22`) rounded to the nearest integer, ties to even, in f32 arithmetic: adding
/// and subtracting 1.5 · 2^23 leaves no fraction bits. Unlike `f32::round` (a libm call without
/// SSE4.1) or an integer conversion (saturating, so scalar), it vectorises.
fn round_small(t: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (t + MAGIC) - MAGIC
}

/// Q4 of one group: `(scale, offset)` in f16 minimising `Σ (v - scale · q - offset)²`; `q`
/// gets the values `0..=15`. From starting ranges around the group's (the full range and
/// ranges a little wider and narrower, which trade error at the extremes for error in the
/// bulk), alternate rounding `q` with the least-squares `(scale, offset)` for that rounding;
/// every candidate is rounded to f16 before it is scored, and the best is kept.
fn quantize_q4(v: &[f32], q: &mut [u8]) -> (f16, f16) {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let flat = (f16::ZERO, f16::from_f32(lo));
    if hi <= lo || !(hi - lo).is_finite() {
        q.fill(0);
        return flat;
    }
    let sv: f32 = v.iter().sum();
    let mut best = (f32::INFINITY, flat.0, flat.1);
    let mut trial = [0f32; QUANT_GROUP];
    let trial = &mut trial[..v.len()];
    // One pass at `(s, m)` rounded to f16: round, score (keeping the best rounding in `q`),
    // and return the score with the least-squares `(s, m)` for that rounding, if any.
    let mut pass = |s: f32, m: f32| -> Option<(f32, f32, f32)> {
        let (sh, mh) = (f16::from_f32(s), f16::from_f32(m));
        let (s16, m16) = (sh.to_f32(), mh.to_f32());
        if s16 <= 0.0 || !s16.is_finite() || !m16.is_finite() {
            return None;
        }
        // 8 independent lanes, all in f32, so both loops vectorise (this runs over every
        // weight at load).
        let inv = 1.0 / s16;
        for (t, &x) in trial.iter_mut().zip(v) {
            *t = round_small(((x - m16) * inv).clamp(0.0, 15.0));
        }
        let mut acc = [[0f32; 8]; 4]; // Σq, Σq², Σqx, Σe²
        for (t, x) in trial.chunks(8).zip(v.chunks(8)) {
            for (i, (&qi, &x)) in t.iter().zip(x).enumerate() {
                let e = x - (s16 * qi + m16);
                acc[0][i] += qi;
                acc[1][i] += qi * qi;
                acc[2][i] += qi * x;
                acc[3][i] += e * e;
            }
        }
        let [sq, sqq, sqv, sse] = acc.map(|a| a.iter().sum::<f32>());
        if sse < best.0 {
            best = (sse, sh, mh);
            for (q, &t) in q.iter_mut().zip(trial.iter()) {
                *q = t as u8;
            }
        }
        let n = v.len() as f32;
        let det = n * sqq - sq * sq;
        let ns = (n * sqv - sq * sv) / det;
        (det > 0.0 && ns > 0.0 && ns.is_finite()).then(|| (sse, ns, (sv - ns * sq) / n))
    };
    // From each starting range, two least-squares steps. (Refining only the two best-scoring
    // starts cut the passes from 18 to 10 but raised the error from 5.426% to 5.458% on the
    // benchmark checkpoint, llama.cpp's Q4_K level: every start is refined.)
    for steps in [15.0f32, 14.0, 14.5, 15.5, 13.5, 16.0] {
        let mut next = pass((hi - lo) / steps, lo + (hi - lo) * (15.0 - steps) / 30.0);
        for _ in 0..2 {
            match next {
                Some((_, s, m)) => next = pass(s, m),
                None => break,
            }
        }
    }
    if best.0.is_infinite() {
        q.fill(0);
        return flat;
    }
    (best.1, best.2)
}

/// `x · Wᵀ` for `x` `[..., K]` and a quantised `w`; the result has `x`'s dtype, computed in
/// f32 on the host ([`Isa::detect`]'s path).
pub fn linear_quant(x: &Tensor, w: &QuantMatrix) -> Result<Tensor> {
    linear_quant_with(Isa::detect(), x, w)
}

/// [`linear_quant`] on the kernel path `isa`.
pub fn linear_quant_with(isa: Isa, x: &Tensor, w: &QuantMatrix) -> Result<Tensor> {
    on_host_rows(x, w, |xs, m| Ok(w.matmul(isa, xs, m)))
}

/// `x · Wᵀ` for `x` `[..., K]` and `w` `[N, K]` (a format with a group per 32 values) with
/// the activations kept in f32 ([`QuantMatrix::matmul_f32_activations`]): `[..., N]` in
/// `x`'s dtype. For small blocks whose products must equal those with the dequantised
/// values (MLA's absorbed per-head blocks), where [`linear_quant_with`] would round the
/// activations to 8 bits.
pub fn linear_quant_f32_activations(
    isa: Isa,
    x: &Tensor,
    w: &QuantMatrix,
    row_invariant: bool,
) -> Result<Tensor> {
    on_host_rows(x, w, |xs, m| {
        w.matmul_f32_activations(isa, xs, m, row_invariant)
    })
}

/// `product(rows, m)` of `x` `[..., K]`'s `m` rows as f32 on the host, as `[..., N]` in
/// `x`'s dtype and device (the 8/4-bit kernels are CPU kernels: on another device this is a
/// counted host read); an error naming both shapes when `x` does not end in `K`.
fn on_host_rows(
    x: &Tensor,
    w: &QuantMatrix,
    product: impl Fn(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let [n, k] = w.dims;
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "linear ({}): input {dims:?} does not end in the weight's in-features {k} (weight [{n}, {k}])",
            w.format
        );
    }
    let m = x.elem_count() / k.max(1);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = n;
    let y = match crate::elementwise::with_host_rows(x, |xs| product(xs, m))? {
        Some(y) => y?,
        None => product(
            &crate::host::vec1(&x.to_dtype(DType::F32)?.flatten_all()?)?,
            m,
        )?,
    };
    Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::assert_matches_oracle;
    use proptest::prelude::*;

    /// f64 oracle over the dequantised matrix, with the activations a decode-sized product
    /// uses: rounded to 8 bits per group (`kernel::act8`), offsets included, where the path
    /// rounds them; exact otherwise.
    fn oracle(w: &QuantMatrix, isa: Isa, xs: &[f32], m: usize) -> Vec<f64> {
        let [n, k] = w.dims;
        let d = w.dequantize_rows();
        let rounded = m <= isa.quant_row_kernel_rows() || isa.rounds_quant_gemm_activations();
        let mut out = vec![0f64; m * n];
        for j in 0..m {
            let x = &xs[j * k..(j + 1) * k];
            let q8 = kernel::act8::q8_row_natural(x);
            let xq = &q8.q;
            for r in 0..n {
                out[j * n + r] = (0..k)
                    .map(|c| {
                        let xv = if rounded {
                            xq[c] as f64 * q8.scale[c / QUANT_GROUP] as f64
                        } else {
                            x[c] as f64
                        };
                        d[r * k + c] as f64 * xv
                    })
                    .sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32, s: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Both formats, both regimes (up to and past GEMV_MAX_ROWS), partial last groups, on
        /// every path this CPU runs, against the f64 product with the dequantised matrix (and
        /// the rounded activations where the 4-bit kernel rounds them).
        #[test]
        fn kernels_match_the_dequantised_oracle(
            // Past two Q4_K superblocks (512 values).
            half_k in 1usize..330,
            n in 1usize..70,
            m in prop::sample::select(vec![1usize, 2, 5, 32, 38]),
            seed in 0u32..1000,
        ) {
            let k = 2 * half_k;
            let w = values(n * k, seed, 0.3);
            let xs = values(m * k, seed, 1.9);
            for format in QuantFormat::ALL {
                let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
                // Also as laid out for this CPU (panels on AVX512-VNNI).
                for q in [q.clone(), q.for_isa(Isa::detect())] {
                    for isa in Isa::supported() {
                        let want = oracle(&q, isa, &xs, m);
                        let got = q.matmul(isa, &xs, m);
                        assert_matches_oracle(&got, &want, k, &format!("{format} {isa} m {m}"));
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The superblock formats on whole superblocks (elsewhere they fall back to Q4 / Q8),
        /// as above.
        #[test]
        fn superblock_kernels_match_the_dequantised_oracle(
            supers in 1usize..4,
            // Past one GEMM panel (32 rows).
            n in 1usize..40,
            m in prop::sample::select(vec![1usize, 3, 9, 40]),
            seed in 0u32..1000,
        ) {
            let k = supers * SUPER * QUANT_GROUP;
            let w = values(n * k, seed, 0.3);
            let xs = values(m * k, seed, 1.9);
            for format in [
                QuantFormat::Q4K,
                QuantFormat::Q6K,
                QuantFormat::Q5K,
                QuantFormat::Q3K,
                QuantFormat::Q2K,
            ] {
                let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
                prop_assert_eq!(q.format(), format);
                for q in [q.clone(), q.for_isa(Isa::detect())] {
                    for isa in Isa::supported() {
                        let want = oracle(&q, isa, &xs, m);
                        let got = q.matmul(isa, &xs, m);
                        assert_matches_oracle(&got, &want, k, &format!("{format} {isa} m {m}"));
                    }
                }
            }
        }
    }

    /// Matrices the f32 paths widen a block of rows at a time (`in_row_blocks`: 256 rows of
    /// `K = 256` per block in tests) match the oracle on every path, prefill-sized.
    #[test]
    fn products_widened_in_row_blocks_match_the_oracle() {
        let (n, k, m) = (600, 256, 40);
        let w = values(n * k, 11, 0.3);
        let xs = values(m * k, 13, 1.9);
        for format in [
            QuantFormat::Q6K,
            QuantFormat::Q2K,
            QuantFormat::Q5,
            QuantFormat::Q5K,
        ] {
            let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            for isa in Isa::supported() {
                let want = oracle(&q, isa, &xs, m);
                let got = q.matmul(isa, &xs, m);
                assert_matches_oracle(&got, &want, k, &format!("{format} {isa} in blocks"));
            }
        }
    }

    /// Products with f32 activations, for every format with a group per 32 values, on every
    /// path, one row and past `GEMV_MAX_ROWS`: the f64 product with the dequantised matrix
    /// and the unrounded activations; row-invariant products keep each row's bits among
    /// many; the formats with a scale per 16 are refused.
    #[test]
    fn products_with_f32_activations_match_the_dequantised_matrix_and_keep_each_row_s_bits() {
        let (n, k) = (40, 512);
        let w = values(n * k, 5, 0.7);
        let xs = values(40 * k, 9, 1.3);
        let exact = |q: &QuantMatrix, m: usize| -> Vec<f64> {
            let d = q.dequantize_rows();
            (0..m * n)
                .map(|i| {
                    let (j, r) = (i / n, i % n);
                    (0..k)
                        .map(|c| d[r * k + c] as f64 * xs[j * k + c] as f64)
                        .sum()
                })
                .collect()
        };
        for format in QuantFormat::ALL {
            let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            if matches!(
                format,
                QuantFormat::Q6K | QuantFormat::Q3K | QuantFormat::Q2K
            ) {
                assert!(q
                    .matmul_f32_activations(Isa::detect(), &xs[..k], 1, true)
                    .is_err());
                continue;
            }
            for isa in Isa::supported() {
                for (m, invariant) in [(1, true), (1, false), (40, true), (40, false)] {
                    let got = q
                        .matmul_f32_activations(isa, &xs[..m * k], m, invariant)
                        .unwrap();
                    let what = format!("{format} {isa} m {m} invariant {invariant}");
                    assert_matches_oracle(&got, &exact(&q, m), k, &what);
                }
                let many = q.matmul_f32_activations(isa, &xs, 40, true).unwrap();
                for j in [0, 17, 39] {
                    let alone = q
                        .matmul_f32_activations(isa, &xs[j * k..(j + 1) * k], 1, true)
                        .unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&many[j * n..(j + 1) * n]),
                        bits(&alone),
                        "{format} {isa}"
                    );
                }
            }
        }
    }

    /// A product of 64 rows of `K = 2048` (on AVX2 the row kernels take them in tiles of 48
    /// and 16, `kernel::act8::matmul_act8`) matches the oracle on every path, and where the
    /// path keeps each row's bits at that size, every row has the bits it has alone.
    #[test]
    fn products_in_tiles_match_the_oracle_and_keep_each_row_s_bits() {
        let (n, k, m) = (24, 2048, 64);
        let w = values(n * k, 17, 0.3);
        let xs = values(m * k, 19, 1.9);
        for format in QuantFormat::ALL {
            let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            for isa in Isa::supported() {
                let all = q.matmul(isa, &xs, m);
                let want = oracle(&q, isa, &xs, m);
                assert_matches_oracle(&all, &want, k, &format!("{format} {isa} in tiles"));
                if q.batch_invariant_rows(isa) < m {
                    continue;
                }
                for j in [0, 47, 48, 63] {
                    let one = q.matmul(isa, &xs[j * k..(j + 1) * k], 1);
                    for r in 0..n {
                        assert_eq!(
                            one[r].to_bits(),
                            all[j * n + r].to_bits(),
                            "{format} {isa} activation row {j}, weight row {r}"
                        );
                    }
                }
            }
        }
    }

    /// A matrix cut into several tasks (the decode kernels' runs of rows,
    /// `kernel::x86_512_act8::Run`, most starting past row 0) matches the oracle, and one
    /// activation row has, row for row, the bits it has among others.
    #[test]
    fn products_over_several_tasks_match_the_oracle_and_keep_each_row_s_bits() {
        let (n, k) = (2100, 256);
        let w = values(n * k, 3, 0.3);
        let xs = values(2 * k, 5, 1.9);
        for format in QuantFormat::ALL {
            let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            for isa in Isa::supported() {
                let both = q.matmul(isa, &xs, 2);
                let want = oracle(&q, isa, &xs, 2);
                assert_matches_oracle(&both, &want, k, &format!("{format} {isa} over tasks"));
                let one = q.matmul(isa, &xs[..k], 1);
                for r in 0..n {
                    assert_eq!(
                        one[r].to_bits(),
                        both[r].to_bits(),
                        "{format} {isa} row {r}"
                    );
                }
            }
        }
    }

    /// 8, 6, 5 and 4-bit matrices laid out for an AVX512-VNNI CPU (`QuantMatrix::for_isa`:
    /// panels) hold the same values, GGML blocks and bytes as in the row layout, and each
    /// activation row's result has the same bits whatever the number of rows with it: decode,
    /// batched decode and prefill are one kernel. (On other CPUs the layout does not change,
    /// and the bits hold up to [`GEMV_MAX_ROWS`] rows.)
    #[test]
    fn panels_hold_the_same_matrix_and_keep_each_row_s_bits_at_every_size() {
        let isa = Isa::detect();
        let cases = [
            (QuantFormat::Q4, 70, 290),
            (QuantFormat::Q4, 33, 320),
            (QuantFormat::Q4K, 45, 512),
            (QuantFormat::Q8, 70, 290),
            (QuantFormat::Q5, 40, 320),
            (QuantFormat::Q5K, 33, 512),
            (QuantFormat::Q6K, 45, 768),
        ];
        for (format, n, k) in cases {
            let w = values(n * k, 7, 0.3);
            let rows = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            let q = rows.clone().for_isa(isa);
            assert_eq!(q.in_panels(), isa.quant_panels());
            assert!(
                q.dequantize_rows() == rows.dequantize_rows(),
                "{format} values"
            );
            // (Rows of partial blocks have none: an error either way.)
            assert!(q.to_ggml().ok() == rows.to_ggml().ok(), "{format} blocks");
            assert_eq!(q.bytes(), rows.bytes(), "{format}: the matrix's own bytes");
            // Every tile height (1 to 4 rows) alone and after whole tiles, as many rows as
            // the matrix keeps each row's bits for (every size in panels; on CPUs without
            // them, the row kernels' sizes: larger products take the f32 GEMM).
            let sizes = [1, 2, 3, 4, 5, 6, 7, 16, 32, 33, 40];
            for m in sizes
                .into_iter()
                .filter(|&m| m <= q.batch_invariant_rows(isa))
            {
                let xs = values(m * k, 9 + m as u32, 1.9);
                let all = q.matmul(isa, &xs, m);
                for j in 0..m {
                    let one = q.matmul(isa, &xs[j * k..(j + 1) * k], 1);
                    for r in 0..n {
                        assert_eq!(
                            all[j * n + r].to_bits(),
                            one[r].to_bits(),
                            "{format} m {m} row {j} weight row {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn huge_page_advice_leaves_the_values() {
        // 4.7 MB of 8-bit values: more than the advice's 4 MiB floor.
        let (n, k) = (2048, 2304);
        let w = values(n * k, 3, 0.5);
        let q = QuantMatrix::from_rows(&w, n, k, QuantFormat::Q8)
            .unwrap()
            .for_isa(Isa::detect());
        let before = q.dequantize_rows();
        // (Whether it applies depends on the kernel: `MADV_COLLAPSE` is Linux 6.1.)
        println!("huge pages applied: {}", q.advise_huge_pages());
        assert!(q.dequantize_rows() == before);
        let small = QuantMatrix::from_rows(&w[..64 * k], 64, k, QuantFormat::Q8).unwrap();
        assert!(!small.advise_huge_pages(), "under 4 MiB: left alone");
    }

    #[test]
    fn quantisation_error_is_within_the_format() {
        let (n, k) = (8, 256);
        let w = values(n * k, 7, 0.1);
        for (format, bound) in [
            (QuantFormat::Q8, 0.5 / 127.0),
            (QuantFormat::Q4, 0.5 / 15.0),
            // Q4_K's group parameters are themselves rounded to 6 bits.
            (QuantFormat::Q4K, 0.6 / 15.0),
            (QuantFormat::Q6K, 1.0 / 63.0),
            (QuantFormat::Q5, 0.5 / 31.0),
            (QuantFormat::Q5K, 0.6 / 31.0),
            // 3 bits, symmetric: q − 4 in −4..=3.
            (QuantFormat::Q3K, 1.0 / 7.0),
            // 2 bits, the scale and offset themselves 4-bit.
            (QuantFormat::Q2K, 1.0 / 3.0),
        ] {
            let q = QuantMatrix::from_rows(&w, n, k, format).unwrap();
            let d = q.dequantize_rows();
            for (g, (a, b)) in w.chunks(QUANT_GROUP).zip(d.chunks(QUANT_GROUP)).enumerate() {
                let range = a.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
                let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                // Q8: half a step of amax/127; Q4: half a step of the range / 15 (least
                // squares may widen the step a little: allow 40%).
                assert!(
                    err <= 1.4 * bound * range + 1e-6,
                    "{format} group {g}: {err}"
                );
            }
        }
    }

    /// Q4_K is GGML's quantisation of the rows where they are whole superblocks, Q4
    /// elsewhere; its byte count is its bits per weight.
    #[test]
    fn q4k_is_ggml_s_quantisation_of_whole_superblocks() {
        use candle_core::quantized::QTensor;
        let (n, k) = (3, 512);
        let w = values(n * k, 3, 0.4);
        let q = QuantMatrix::from_rows(&w, n, k, QuantFormat::Q4K).unwrap();
        let t = Tensor::from_vec(w, (n, k), &candle_core::Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let theirs = theirs.dequantize(&candle_core::Device::Cpu).unwrap();
        let theirs: Vec<f32> = crate::host::vec1(&theirs.flatten_all().unwrap()).unwrap();
        assert_eq!(q.dequantize_rows(), theirs);
        assert_eq!(
            q.bytes() as f64 * 8.0,
            QuantFormat::Q4K.bits_per_weight() * (n * k) as f64
        );
        let partial = QuantMatrix::from_rows(&values(2 * 330, 1, 0.0), 2, 330, QuantFormat::Q4K);
        assert_eq!(partial.unwrap().format(), QuantFormat::Q4);
    }

    #[test]
    fn q4_least_squares_beats_min_max() {
        // A group with one outlier: min/max rounding wastes most levels on it.
        let mut v: Vec<f32> = (0..QUANT_GROUP)
            .map(|i| (i as f32 * 0.37).sin() * 0.1)
            .collect();
        v[5] = 1.0;
        let q = QuantMatrix::from_rows(&v, 1, QUANT_GROUP, QuantFormat::Q4).unwrap();
        let d = q.dequantize_rows();
        let fitted: f32 = v.iter().zip(&d).map(|(a, b)| (a - b).powi(2)).sum();
        let (lo, hi) = (v.iter().cloned().fold(f32::MAX, f32::min), 1.0f32);
        let s = (hi - lo) / 15.0;
        let naive: f32 = v
            .iter()
            .map(|x| (x - (((x - lo) / s).round() * s + lo)).powi(2))
            .sum();
        assert!(fitted <= naive, "{fitted} > {naive}");
    }

    #[test]
    fn zero_groups_are_exact_and_constant_ones_nearly() {
        let w: Vec<f32> = [vec![0.0; QUANT_GROUP], vec![0.25; QUANT_GROUP]].concat();
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let d = QuantMatrix::from_rows(&w, 2, QUANT_GROUP, format)
                .unwrap()
                .dequantize_rows();
            assert!(d[..QUANT_GROUP].iter().all(|&v| v == 0.0), "{format}");
            // Q4 holds a constant in its offset exactly; Q8 as 127 steps of an f16 scale.
            let tol = if format == QuantFormat::Q4 {
                0.0
            } else {
                0.25 / 2048.0
            };
            assert!(
                d[QUANT_GROUP..].iter().all(|&v| (v - 0.25).abs() <= tol),
                "{format}: {d:?}"
            );
        }
    }

    #[test]
    fn round_small_rounds_to_nearest_ties_to_even() {
        for (t, want) in [
            (0.0, 0.0),
            (0.49, 0.0),
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (14.51, 15.0),
            (15.0, 15.0),
            (-3.6, -4.0),
        ] {
            assert_eq!(round_small(t), want, "{t}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut w = vec![1f32; 8];
        w[5] = f32::NAN;
        let e = QuantMatrix::from_rows(&w, 2, 4, QuantFormat::Q8).unwrap_err();
        assert!(e.to_string().contains("[1, 1]"), "{e}");
        let e = QuantMatrix::from_rows(&[1.0; 3], 1, 3, QuantFormat::Q4).unwrap_err();
        assert!(e.to_string().contains("even"), "{e}");
        assert!(QuantMatrix::from_rows(&[1.0; 3], 1, 3, QuantFormat::Q8).is_ok());
    }

    #[test]
    fn linear_quant_keeps_shape_and_dtype() {
        let dev = candle_core::Device::Cpu;
        let w = Tensor::new(values(6 * 64, 1, 0.0), &dev)
            .unwrap()
            .reshape((6, 64))
            .unwrap();
        let q = QuantMatrix::quantize(&w, QuantFormat::Q4).unwrap();
        let x = Tensor::new(values(2 * 3 * 64, 2, 0.0), &dev)
            .unwrap()
            .reshape((2, 3, 64))
            .unwrap();
        let y = linear_quant(&x, &q).unwrap();
        assert_eq!(y.dims(), &[2, 3, 6]);
        assert!(linear_quant(&w, &q).is_ok());
        assert!(linear_quant(&x.narrow(2, 0, 32).unwrap(), &q).is_err());
    }
}
