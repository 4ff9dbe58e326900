//! AVX2 + FMA (+ F16C) kernels for x86-64.
//!
//! Every `#[target_feature]` function here is private and called only from a safe wrapper
//! that takes a proof token, [`Avx2Fma`] or [`Avx2FmaF16c`]. Tokens have private fields, so
//! the only way to get one is [`Avx2Fma::detect`] / [`Avx2Fma::with_f16c`], which ask the
//! CPU. That is the single place the SAFETY comments below point at.
//!
//! Generic bodies are `inline(always)` so that they, and the intrinsics in them, are compiled
//! inside each `#[target_feature]` entry point (the pattern `memchr` uses).

use float8::F8E4M3;
use half::{bf16, f16};
use std::arch::x86_64::*;

use super::WeightElem;

/// Proof that the CPU runs AVX2 and FMA code. Made only by [`Avx2Fma::detect`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx2Fma(());

/// Proof that the CPU runs AVX2, FMA and F16C code. Made only by [`Avx2Fma::with_f16c`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx2FmaF16c(Avx2Fma);

impl Avx2Fma {
    /// Run-time detection: a token when the CPU has AVX2 and FMA.
    pub(crate) fn detect() -> Option<Avx2Fma> {
        let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        ok.then_some(Avx2Fma(()))
    }

    /// Run-time detection of F16C on top of the proven AVX2 and FMA.
    pub(crate) fn with_f16c(self) -> Option<Avx2FmaF16c> {
        is_x86_feature_detected!("f16c").then_some(Avx2FmaF16c(self))
    }
}

impl Avx2FmaF16c {
    /// The AVX2 + FMA part of the proof.
    pub(crate) fn avx2_fma(self) -> Avx2Fma {
        self.0
    }
}

/// `Σ w[i] · x[i]` over the common length.
#[inline]
pub(crate) fn dot_f32(_: Avx2Fma, w: &[f32], x: &[f32]) -> f32 {
    // SAFETY: the `Avx2Fma` token exists, so `Avx2Fma::detect` found AVX2 and FMA.
    unsafe { dot_f32_avx2(w, x) }
}

/// Four f32 rows against `x`, prefetching `next`.
#[inline]
pub(crate) fn dot4_f32(_: Avx2Fma, w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
    // SAFETY: the `Avx2Fma` token exists, so `Avx2Fma::detect` found AVX2 and FMA.
    unsafe { dot4_f32_avx2(w, x, next) }
}

/// Four f16 rows against `x`, prefetching `next`.
#[inline]
pub(crate) fn dot4_f16(_: Avx2FmaF16c, w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
    // SAFETY: the `Avx2FmaF16c` token exists, so `Avx2Fma::detect` found AVX2 and FMA and
    // `Avx2Fma::with_f16c` found F16C.
    unsafe { dot4_f16_avx2(w, x, next) }
}

/// Four e4m3 rows against `x` with block scales (`scales[q][kb]` for row `q`, block `kb` of
/// `cols` elements), prefetching `next`: each block's products are summed in registers, then
/// the block sum is multiplied by its scale (times the 2⁸ the widening leaves out) with one
/// FMA per row, so no horizontal sum runs per block.
#[inline]
pub(crate) fn dot4_e4m3_scaled(
    _: Avx2FmaF16c,
    w: [&[F8E4M3]; 4],
    x: &[f32],
    next: [&[F8E4M3]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    // SAFETY: the `Avx2FmaF16c` token exists, so detection found AVX2, FMA and F16C.
    unsafe { dot4_e4m3_scaled_avx2(w, x, next, scales, cols) }
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_e4m3_scaled_avx2(
    w: [&[F8E4M3]; 4],
    x: &[f32],
    next: [&[F8E4M3]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    let len = common_len(&w, x);
    let (p, px) = (w.map(|r| r.as_ptr()), x.as_ptr());
    let mut total = [_mm256_setzero_ps(); 4];
    let mut tail = [0f32; 4];
    let (mut lo, mut kb) = (0, 0);
    while lo < len {
        let hi = (lo + cols.max(1)).min(len);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = lo;
        while i + 8 <= hi {
            prefetch_line(next, i, 8);
            let xv = _mm256_loadu_ps(px.add(i));
            for (acc, p) in acc.iter_mut().zip(p) {
                *acc = _mm256_fmadd_ps(e4m3_over_256(p.add(i)), xv, *acc);
            }
            i += 8;
        }
        for q in 0..4 {
            let s = scales[q][kb];
            total[q] = _mm256_fmadd_ps(acc[q], _mm256_set1_ps(s * 256.0), total[q]);
            tail[q] += (i..hi).map(|j| w[q][j].widen() * x[j]).sum::<f32>() * s;
        }
        (lo, kb) = (hi, kb + 1);
    }
    std::array::from_fn(|q| hsum(total[q]) + tail[q])
}

/// Four bf16 rows against `x`, prefetching `next`. `x` must be laid out by
/// [`split_even_odd`] for the result to be right (any layout is memory-safe: every load stays
/// within the common length).
#[inline]
pub(crate) fn dot4_bf16(_: Avx2Fma, w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
    // SAFETY: the `Avx2Fma` token exists, so `Avx2Fma::detect` found AVX2 and FMA.
    unsafe { dot4_bf16_avx2(w, x, next) }
}

/// Per 16-element block: the 8 even elements, then the 8 odd ones; a shorter tail is kept as
/// is (the kernels finish it in scalar code in natural order). The activation layout
/// [`dot4_bf16`] reads, so that one weight load widens with one integer op per half.
pub(crate) fn split_even_odd(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let blocks = x.chunks_exact(16);
    let tail = blocks.remainder();
    for b in blocks {
        out.extend(b.iter().step_by(2));
        out.extend(b.iter().skip(1).step_by(2));
    }
    out.extend_from_slice(tail);
    out
}

/// Horizontal sum of 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
}

/// Sums the accumulators of each row and adds the scalar tail `from..` in natural order.
#[inline(always)]
unsafe fn finish<W: WeightElem>(
    w: [&[W]; 4],
    x: &[f32],
    lo: [__m256; 4],
    hi: [__m256; 4],
    from: usize,
    len: usize,
) -> [f32; 4] {
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = hsum(_mm256_add_ps(lo[r], hi[r]));
        for j in from..len {
            out[r] += w[r][j].widen() * x[j];
        }
    }
    out
}

/// Prefetches, once per 64-byte line, the line of each `next` row at element `i`
/// (`step` elements are consumed per call).
#[inline(always)]
unsafe fn prefetch_line<W>(next: [&[W]; 4], i: usize, step: usize) {
    let per_line = 64 / std::mem::size_of::<W>();
    if i % per_line < step {
        for row in next {
            if i < row.len() {
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(i) as *const i8);
            }
        }
    }
}

/// Length every row and `x` share.
fn common_len<W>(w: &[&[W]; 4], x: &[f32]) -> usize {
    w.iter().map(|r| r.len()).min().unwrap_or(0).min(x.len())
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
    let len = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= len {
        for (u, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * u;
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(o)), _mm256_loadu_ps(px.add(o)), *a);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = hsum(sum);
    for j in i..len {
        total += w[j] * x[j];
    }
    total
}

/// 8 weights widened to f32 (f32 and f16).
trait Load8 {
    /// # Safety
    /// `p` must point at 8 readable elements, inside a function with the needed features.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Load8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Load8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Four rows, 16 elements per iteration: two activation loads shared by eight weight loads
/// into eight independent accumulators, then a scalar tail.
#[inline(always)]
unsafe fn dot4_widening<W: Load8 + WeightElem>(
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
) -> [f32; 4] {
    let len = common_len(&w, x);
    let p = w.map(|r| r.as_ptr());
    let px = x.as_ptr();
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 <= len {
        prefetch_line(next, i, 16);
        let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
        for r in 0..4 {
            lo[r] = _mm256_fmadd_ps(W::load8(p[r].add(i)), x0, lo[r]);
            hi[r] = _mm256_fmadd_ps(W::load8(p[r].add(i + 8)), x1, hi[r]);
        }
        i += 16;
    }
    finish(w, x, lo, hi, i, len)
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_f32_avx2(w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
    dot4_widening(w, x, next)
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_f16_avx2(w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
    dot4_widening(w, x, next)
}

/// Four bf16 rows against `x` laid out by [`split_even_odd`]: per 16-element block one
/// 256-bit load per row holds 8 (even, odd) pairs; `<< 16` widens the evens and
/// `& 0xffff0000` the odds (bf16 is the top half of an f32, so both are exact).
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_bf16_avx2(w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
    let len = common_len(&w, x);
    let p = w.map(|r| r.as_ptr());
    let px = x.as_ptr();
    let odd_mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    let mut lo = [_mm256_setzero_ps(); 4];
    let mut hi = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 16 <= len {
        prefetch_line(next, i, 16);
        let (even_x, odd_x) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
        for r in 0..4 {
            let pairs = _mm256_loadu_si256(p[r].add(i) as *const __m256i);
            let even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
            let odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, odd_mask));
            lo[r] = _mm256_fmadd_ps(even, even_x, lo[r]);
            hi[r] = _mm256_fmadd_ps(odd, odd_x, hi[r]);
        }
        i += 16;
    }
    finish(w, x, lo, hi, i, len)
}

/// 8 e4m3 values widened to f32 and divided by 2⁸, exactly. Each byte, zero-extended to a
/// 16-bit lane, becomes an f16 bit pattern: the 7 magnitude bits shifted into the f16 exponent
/// and mantissa (`<< 7`) are the value over 2⁸, normal and subnormal alike (f16's exponent
/// bias is 8 more than e4m3's, and an e4m3 subnormal lands on an f16 subnormal with the same
/// ratio); the sign moves to bit 15, and `S.1111.111` gets the f16 exponent all ones (NaN).
/// The caller multiplies by 2⁸ (folded into the block scale).
#[inline(always)]
unsafe fn e4m3_over_256(p: *const F8E4M3) -> __m256 {
    let w = _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i));
    let mag = _mm_and_si128(w, _mm_set1_epi16(0x7f));
    let sign = _mm_slli_epi16::<8>(_mm_and_si128(w, _mm_set1_epi16(0x80)));
    let nan = _mm_and_si128(
        _mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f)),
        _mm_set1_epi16(0x7c00),
    );
    _mm256_cvtph_ps(_mm_or_si128(
        _mm_or_si128(_mm_slli_epi16::<7>(mag), sign),
        nan,
    ))
}
