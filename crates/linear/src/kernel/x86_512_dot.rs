//! AVX-512F matrix-vector kernels: four weight rows (or one) against one activation row, 32
//! values per row per iteration in two 16-lane accumulators, for f32, f16 and bf16 weights.
//!
//! The driver reads a task's rows one at a time (one sequential stream per core, at ~1.2-1.8x
//! the rate of four adjacent 4 KiB row streams with software prefetches of the next four on a
//! Zen 4), or, when the activations outgrow L1, four at a time from the four quarters of the
//! task (`super::stream_rows`, `benchmarks/README.md`, "Weight streams per core"). Both give
//! a row the same operations in the same order, so its result does not depend on which ran.
//! Every weight line is asked for (into L2) `x86::PREFETCH_AHEAD` bytes before it is read
//! (`super::x86::prefetch_ahead`): on a Sapphire Rapids the hardware prefetchers alone
//! streamed `lm_head` at 0.6x the rate with it.
//!
//! The same arithmetic as the AVX2 kernels in [`super::x86`] (exact widening to f32, f32
//! FMAs), with half the instructions per weight byte. On the 2-core dev machine the AVX2 bf16
//! kernel is bound by instructions, not by the memory (`benchmarks/README.md`), so the wider
//! vectors keep more cache lines in flight per core.
//!
//! bf16 reads activations laid out per 32-value block as its 16 even values then its 16 odd
//! ones (`x86::split_even_odd(x, STEP)`): one 64-byte load is 16 (even, odd) weight pairs, and `<< 16`
//! and `& 0xffff0000` widen the evens and the odds exactly.
//!
//! As everywhere in [`super`], the `#[target_feature]` functions are private and reached only
//! through the safe entry points taking the [`Avx512F`] proof token.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::x86::prefetch_ahead;
use super::x86_512::Avx512F;
use super::Scalar;

/// Values per row per iteration.
pub(crate) const STEP: usize = 32;

/// Four f32 rows against `x`, each bit for bit its [`dot_f32`].
#[inline]
pub(crate) fn dot4_f32(_: Avx512F, w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: the `Avx512F` token exists, so detection found AVX-512 F and BW.
    unsafe { dot4_f32_avx512(w, x) }
}

/// Four f16 rows against `x`, each bit for bit its [`dot_f16`].
#[inline]
pub(crate) fn dot4_f16(_: Avx512F, w: [&[f16]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: as in `dot4_f32`; `Avx512F` also proves F16C.
    unsafe { dot4_f16_avx512(w, x) }
}

/// Four bf16 rows against `x` laid out by `x86::split_even_odd(x, STEP)`, each bit for bit its
/// [`dot_bf16`] (any layout is memory-safe: every load stays within the common length).
#[inline]
pub(crate) fn dot4_bf16(_: Avx512F, w: [&[bf16]; 4], x: &[f32]) -> [f32; 4] {
    // SAFETY: as in `dot4_f32`.
    unsafe { dot4_bf16_avx512(w, x) }
}

/// Four f32 rows against two activation rows of one length: `out[j]` is bit for bit
/// [`dot4_f32`] of `x[j]` (each weight load serves both rows).
#[inline]
pub(crate) fn dot4x2_f32(_: Avx512F, w: [&[f32]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    // SAFETY: as in `dot4_f32`.
    assert_eq!(x[0].len(), x[1].len(), "activation rows of one length");
    unsafe { dot4x2_f32_avx512(w, x) }
}

/// [`dot4x2_f32`] for f16 rows.
#[inline]
pub(crate) fn dot4x2_f16(_: Avx512F, w: [&[f16]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    // SAFETY: as in `dot4_f16`.
    assert_eq!(x[0].len(), x[1].len(), "activation rows of one length");
    unsafe { dot4x2_f16_avx512(w, x) }
}

/// [`dot4x2_f32`] for bf16 rows against split activations (as [`dot4_bf16`]).
#[inline]
pub(crate) fn dot4x2_bf16(_: Avx512F, w: [&[bf16]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    // SAFETY: as in `dot4_f32`.
    assert_eq!(x[0].len(), x[1].len(), "activation rows of one length");
    unsafe { dot4x2_bf16_avx512(w, x) }
}

/// One f32 row against `x`: bit for bit the row's [`dot4_f32`] result, reading the row once,
/// front to back (see [`super::WeightElem::streams_rows`]).
#[inline]
pub(crate) fn dot_f32(_: Avx512F, w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: as in `dot4_f32`.
    unsafe { dot_f32_avx512(w, x) }
}

/// One f16 row: bit for bit the row's [`dot4_f16`] result.
#[inline]
pub(crate) fn dot_f16(_: Avx512F, w: &[f16], x: &[f32]) -> f32 {
    // SAFETY: as in `dot4_f16`.
    unsafe { dot_f16_avx512(w, x) }
}

/// One bf16 row against a split `x`: bit for bit the row's [`dot4_bf16`] result.
#[inline]
pub(crate) fn dot_bf16(_: Avx512F, w: &[bf16], x: &[f32]) -> f32 {
    // SAFETY: as in `dot4_f32`.
    unsafe { dot_bf16_avx512(w, x) }
}

/// 16 weights widened to f32 (f32 and f16).
trait Load16 {
    /// # Safety
    /// `p` must point at 16 readable elements, inside a function with the needed features.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// The length every row and every activation row have.
#[inline(always)]
fn common_len<W, const R: usize, const J: usize>(w: &[&[W]; R], x: &[&[f32]; J]) -> usize {
    let rows = w.iter().map(|r| r.len()).min().unwrap_or(0);
    x.iter().map(|x| x.len()).fold(rows, usize::min)
}

/// Sums each (activation row, weight row) pair's two accumulators and adds the scalar tail
/// `from..len` in natural order.
#[inline(always)]
unsafe fn finish<W: Scalar, const R: usize, const J: usize>(
    w: [&[W]; R],
    x: [&[f32]; J],
    lo: [[__m512; R]; J],
    hi: [[__m512; R]; J],
    from: usize,
    len: usize,
) -> [[f32; R]; J] {
    let mut out = [[0f32; R]; J];
    for j in 0..J {
        for r in 0..R {
            out[j][r] = _mm512_reduce_add_ps(_mm512_add_ps(lo[j][r], hi[j][r]));
            for i in from..len {
                out[j][r] += w[r][i].widen() * x[j][i];
            }
        }
    }
    out
}

/// `R` rows against `J` activation rows, 32 values per iteration: per activation row two
/// loads, per weight row two loads serving every activation row, into `2RJ` independent
/// accumulators, then a scalar tail. Each (row, activation row) pair's operations are the
/// same whatever `R` and `J` are, so a pair alone gives the bits it gives among others.
#[inline(always)]
unsafe fn dot_widening<W: Load16 + Scalar, const R: usize, const J: usize>(
    w: [&[W]; R],
    x: [&[f32]; J],
) -> [[f32; R]; J] {
    let len = common_len(&w, &x);
    let p = w.map(|r| r.as_ptr());
    let px = x.map(|x| x.as_ptr());
    let mut lo = [[_mm512_setzero_ps(); R]; J];
    let mut hi = [[_mm512_setzero_ps(); R]; J];
    let mut i = 0;
    while i + STEP <= len {
        let x0 = px.map(|x| _mm512_loadu_ps(x.add(i)));
        let x1 = px.map(|x| _mm512_loadu_ps(x.add(i + 16)));
        for r in 0..R {
            prefetch_ahead(p[r].add(i), STEP * std::mem::size_of::<W>());
            let (w0, w1) = (W::load16(p[r].add(i)), W::load16(p[r].add(i + 16)));
            for j in 0..J {
                lo[j][r] = _mm512_fmadd_ps(w0, x0[j], lo[j][r]);
                hi[j][r] = _mm512_fmadd_ps(w1, x1[j], hi[j][r]);
            }
        }
        i += STEP;
    }
    finish(w, x, lo, hi, i, len)
}

/// `R` bf16 rows against `J` activation rows split into even and odd values per 32-value
/// block; as [`dot_widening`] otherwise (each row widened once for every activation row).
#[inline(always)]
unsafe fn dot_pairs<const R: usize, const J: usize>(
    w: [&[bf16]; R],
    x: [&[f32]; J],
) -> [[f32; R]; J] {
    let len = common_len(&w, &x);
    let p = w.map(|r| r.as_ptr());
    let px = x.map(|x| x.as_ptr());
    let odd_mask = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    let mut lo = [[_mm512_setzero_ps(); R]; J];
    let mut hi = [[_mm512_setzero_ps(); R]; J];
    let mut i = 0;
    while i + STEP <= len {
        let even_x = px.map(|x| _mm512_loadu_ps(x.add(i)));
        let odd_x = px.map(|x| _mm512_loadu_ps(x.add(i + 16)));
        for r in 0..R {
            prefetch_ahead(p[r].add(i), 64);
            let pairs = _mm512_loadu_si512(p[r].add(i) as *const _);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(pairs));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(pairs, odd_mask));
            for j in 0..J {
                lo[j][r] = _mm512_fmadd_ps(even, even_x[j], lo[j][r]);
                hi[j][r] = _mm512_fmadd_ps(odd, odd_x[j], hi[j][r]);
            }
        }
        i += STEP;
    }
    finish(w, x, lo, hi, i, len)
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot4_f32_avx512(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    dot_widening(w, [x])[0]
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot4x2_f32_avx512(w: [&[f32]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    dot_widening(w, x)
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32_avx512(w: &[f32], x: &[f32]) -> f32 {
    dot_widening([w], [x])[0][0]
}

/// # Safety
/// AVX-512 F and F16C must be available.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dot4_f16_avx512(w: [&[f16]; 4], x: &[f32]) -> [f32; 4] {
    dot_widening(w, [x])[0]
}

/// # Safety
/// AVX-512 F and F16C must be available.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dot4x2_f16_avx512(w: [&[f16]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    dot_widening(w, x)
}

/// # Safety
/// AVX-512 F and F16C must be available.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dot_f16_avx512(w: &[f16], x: &[f32]) -> f32 {
    dot_widening([w], [x])[0][0]
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot4_bf16_avx512(w: [&[bf16]; 4], x: &[f32]) -> [f32; 4] {
    dot_pairs(w, [x])[0]
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot4x2_bf16_avx512(w: [&[bf16]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
    dot_pairs(w, x)
}

/// # Safety
/// AVX-512 F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn dot_bf16_avx512(w: &[bf16], x: &[f32]) -> f32 {
    dot_pairs([w], [x])[0][0]
}
