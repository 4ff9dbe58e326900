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

use super::act8::GROUP;
use super::act8::{Q8Row, SixBit};
use super::{u5_high_at, E4m3NoNan, Nibbles, Scalar, U4x2, U5_HIGH_BYTES};

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

/// Four f32 rows against `R` activation rows, prefetching `next` ([`dot4_rows`]).
#[inline]
pub(crate) fn dot4_rows_f32<const R: usize>(
    _: Avx2Fma,
    w: [&[f32]; 4],
    xs: [&[f32]; R],
    next: [&[f32]; 4],
) -> [[f32; 4]; R] {
    // SAFETY: the `Avx2Fma` token exists, so `Avx2Fma::detect` found AVX2 and FMA.
    unsafe { dot4_rows_f32_avx2(w, xs, next) }
}

/// Four f16 rows against `R` activation rows, prefetching `next` ([`dot4_rows`]).
#[inline]
pub(crate) fn dot4_rows_f16<const R: usize>(
    _: Avx2FmaF16c,
    w: [&[f16]; 4],
    xs: [&[f32]; R],
    next: [&[f16]; 4],
) -> [[f32; 4]; R] {
    // SAFETY: the `Avx2FmaF16c` token exists, so `Avx2Fma::detect` found AVX2 and FMA and
    // `Avx2Fma::with_f16c` found F16C.
    unsafe { dot4_rows_f16_avx2(w, xs, next) }
}

/// Four bf16 rows against `R` activation rows, prefetching `next` ([`dot4_rows`]). Each row
/// of `xs` must be laid out by [`split_even_odd`] (blocks of 16) for the result to be right
/// (any layout is memory-safe: every load stays within the common length).
#[inline]
pub(crate) fn dot4_rows_bf16<const R: usize>(
    _: Avx2Fma,
    w: [&[bf16]; 4],
    xs: [&[f32]; R],
    next: [&[bf16]; 4],
) -> [[f32; 4]; R] {
    // SAFETY: the `Avx2Fma` token exists, so `Avx2Fma::detect` found AVX2 and FMA.
    unsafe { dot4_rows_bf16_avx2(w, xs, next) }
}

/// Four rows of block-scaled one-value elements (e4m3, i8) against `x` (`scales[q][kb]` for
/// row `q`, block `kb` of `cols` elements), prefetching `next`: each block's products are
/// summed in registers, then the block sum is multiplied by its scale (times the
/// [`Load8Scaled::FACTOR`] the widening leaves out) with one FMA per row, so no horizontal sum
/// runs per block. For the elements whose widening needs F16C (e4m3).
#[inline]
pub(crate) fn dot4_scaled_f16c<W: Load8Scaled>(
    _: Avx2FmaF16c,
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    // SAFETY: the `Avx2FmaF16c` token exists, so detection found AVX2, FMA and F16C.
    unsafe { dot4_scaled_f16c_inner(w, x, next, scales, cols) }
}

/// [`dot4_scaled_f16c`] for the elements that widen with AVX2 alone (i8).
#[inline]
pub(crate) fn dot4_scaled<W: Load8Scaled>(
    _: Avx2Fma,
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA.
    unsafe { dot4_scaled_inner(w, x, next, scales, cols) }
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_scaled_f16c_inner<W: Load8Scaled>(
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    dot4_block_scaled(w, x, next, scales, cols)
}

/// # Safety
/// AVX2 and FMA must be available (and whatever `W::load8_scaled` uses: see its impls).
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_scaled_inner<W: Load8Scaled>(
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    dot4_block_scaled(w, x, next, scales, cols)
}

/// A one-value element that widens 8 at a time to `value / FACTOR`, exactly.
pub(crate) trait Load8Scaled: Scalar {
    /// What the widened lanes are divided by (folded into the block scale).
    const FACTOR: f32;

    /// # Safety
    /// `p` must point at 8 readable elements, inside a function with the needed features.
    unsafe fn load8_scaled(p: *const Self) -> __m256;
}

impl Load8Scaled for F8E4M3 {
    const FACTOR: f32 = 256.0;

    #[inline(always)]
    unsafe fn load8_scaled(p: *const F8E4M3) -> __m256 {
        e4m3_over_256(p)
    }
}

impl Load8Scaled for i8 {
    const FACTOR: f32 = 1.0;

    #[inline(always)]
    unsafe fn load8_scaled(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }
}

/// The body of the block-scaled kernels of one-value elements. Two accumulators per row, so
/// that consecutive FMAs of a row do not wait on each other (with one, the four rows' chains
/// allow one FMA per cycle at most on a 4-cycle FMA).
#[inline(always)]
unsafe fn dot4_block_scaled<W: Load8Scaled>(
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    let len = common_len(&w, x);
    let (p, px) = (w.map(|r| r.as_ptr()), x.as_ptr());
    let load_x = |i: usize| _mm256_loadu_ps(px.add(i));
    let mut total = [_mm256_setzero_ps(); 4];
    let mut tail = [[0f32; 4]];
    let (mut lo, mut kb) = (0, 0);
    while lo < len {
        let hi = (lo + cols.max(1)).min(len);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut i = lo;
        while i + 16 <= hi {
            prefetch_line(next, i, 16);
            let xv = [load_x(i), load_x(i + 8)];
            for (acc, p) in acc.iter_mut().zip(p) {
                for h in 0..2 {
                    let wv = W::load8_scaled(p.add(i + 8 * h));
                    acc[h] = _mm256_fmadd_ps(wv, xv[h], acc[h]);
                }
            }
            i += 16;
        }
        if i + 8 <= hi {
            let xv = load_x(i);
            for (acc, p) in acc.iter_mut().zip(p) {
                acc[0] = _mm256_fmadd_ps(W::load8_scaled(p.add(i)), xv, acc[0]);
            }
            i += 8;
        }
        let s = std::array::from_fn::<f32, 4, _>(|q| scales[q][kb]);
        for q in 0..4 {
            let sum = _mm256_add_ps(acc[q][0], acc[q][1]);
            let factor = _mm256_set1_ps(s[q] * W::FACTOR);
            total[q] = _mm256_fmadd_ps(sum, factor, total[q]);
        }
        if i < hi {
            tail_sums(&mut tail, w, [x], i..hi, s);
        }
        (lo, kb) = (hi, kb + 1);
    }
    std::array::from_fn(|q| hsum(total[q]) + tail[0][q])
}

/// What the activations are multiplied by in [`dot4_e4m3_rows`] (a power of two, exact while
/// `|x| · 2⁹⁰` stays finite, that is for `|x|` under 2³⁸): the weights widen to their values
/// over 2¹²⁰ ([`e4m3_over_2_120`]), so the products are the exact ones over 2³⁰, normal down
/// to `|w · x|` of 2⁻⁹⁶ (below it an f32 subnormal's rounding, under 2⁻¹²⁰ of the product).
const E4M3_X_SCALE: f32 = (1u128 << 90) as f32;

/// What the block sums of [`dot4_e4m3_rows`] are multiplied by, with their scale: 2¹²⁰ / 2⁹⁰.
const E4M3_SUM_FACTOR: f32 = (1u64 << 30) as f32;

/// Eight NaN-free e4m3 bytes widened to their values over 2¹²⁰, exactly: each byte
/// sign-extended to 32 bits, shifted left by 20 and masked to `0x87f0_0000`, which puts the
/// sign on bit 31 and the magnitude `eeee.mmm` on bits 26..20, so the f32 exponent field holds
/// `eeee` and the mantissa's top bits `mmm` (a subnormal code, exponent 0, is the f32 subnormal
/// of the same value over 2¹²⁰). Three integer ops and no `vcvtph2ps`, which bounds the F16C
/// widening at one per cycle (`benchmarks/README.md`, "FP8 on AVX2 without `vcvtph2ps`, two
/// activation rows per widening"). A NaN code would read as ±480.
///
/// # Safety
/// `p` must point at 8 readable bytes, inside a function with AVX2.
#[inline(always)]
unsafe fn e4m3_over_2_120(p: *const E4m3NoNan) -> __m256 {
    let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
    let bits = _mm256_and_si256(
        _mm256_slli_epi32::<20>(b),
        _mm256_set1_epi32(0x87f0_0000_u32 as i32),
    );
    _mm256_castsi256_ps(bits)
}

/// Four rows of NaN-free e4m3 bytes against `J` activation rows `xs` with block scales
/// (`scales[q][kb]` for row `q`, block `kb` of `cols` values), prefetching `next`: each weight
/// vector is widened once for the `J` rows. One accumulator per (weight row, activation row),
/// whose operations do not depend on `J`, so every row's result has the bits it gets alone
/// (`J = 1`, the decode step). At the end of a block the four rows' sums are gathered into one
/// vector by horizontal adds and multiplied by their scales with one FMA.
///
/// An activation `· 2⁹⁰` or a scale `· 2³⁰` past f32's range gives a non-finite result, which
/// callers check ([`E4M3_X_SCALE`]).
#[inline]
pub(crate) fn dot4_e4m3_rows<const J: usize>(
    _: Avx2Fma,
    w: [&[E4m3NoNan]; 4],
    xs: [&[f32]; J],
    next: [&[E4m3NoNan]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [[f32; 4]; J] {
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA.
    unsafe { dot4_e4m3_rows_avx2(w, xs, next, scales, cols) }
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_e4m3_rows_avx2<const J: usize>(
    w: [&[E4m3NoNan]; 4],
    xs: [&[f32]; J],
    next: [&[E4m3NoNan]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [[f32; 4]; J] {
    let len = xs.iter().fold(usize::MAX, |l, x| l.min(common_len(&w, x)));
    let (p, px) = (w.map(|r| r.as_ptr()), xs.map(|x| x.as_ptr()));
    let x_scale = _mm256_set1_ps(E4M3_X_SCALE);
    let mut total = [_mm_setzero_ps(); J];
    let mut tail = [[0f32; 4]; J];
    let (mut lo, mut kb) = (0, 0);
    while lo < len {
        let hi = (lo + cols.max(1)).min(len);
        let mut acc = [[_mm256_setzero_ps(); 4]; J];
        let mut i = lo;
        while i + 8 <= hi {
            prefetch_line(next, i, 8);
            let xv: [__m256; J] =
                std::array::from_fn(|j| _mm256_mul_ps(_mm256_loadu_ps(px[j].add(i)), x_scale));
            for (q, p) in p.iter().enumerate() {
                let wv = e4m3_over_2_120(p.add(i));
                for (acc, xv) in acc.iter_mut().zip(&xv) {
                    acc[q] = _mm256_fmadd_ps(wv, *xv, acc[q]);
                }
            }
            i += 8;
        }
        let s = std::array::from_fn::<f32, 4, _>(|q| scales[q][kb]);
        let factor = _mm_mul_ps(_mm_loadu_ps(s.as_ptr()), _mm_set1_ps(E4M3_SUM_FACTOR));
        for j in 0..J {
            total[j] = _mm_fmadd_ps(sum4(acc[j]), factor, total[j]);
        }
        if i < hi {
            tail_sums(&mut tail, w, xs, i..hi, s);
        }
        (lo, kb) = (hi, kb + 1);
    }
    std::array::from_fn(|j| {
        let mut t = [0f32; 4];
        _mm_storeu_ps(t.as_mut_ptr(), total[j]);
        std::array::from_fn(|q| t[q] + tail[j][q])
    })
}

/// NaN-free e4m3 bytes `src` widened and multiplied by the scale of each `cols`-wide block
/// (`scales[kb]` for block `kb`) into `dst`: [`e4m3_over_2_120`] times 2¹²⁰ (exact: the value
/// itself) times the scale, one rounding, the bits of the table's value times the scale. The
/// GEMM's weight blocks for FP8 (a prompt chunk's expert gets a few dozen rows, so the widening
/// is not amortised much).
pub(crate) fn widen_e4m3_scaled(
    _: Avx2Fma,
    src: &[E4m3NoNan],
    dst: &mut [f32],
    scales: &[f32],
    cols: usize,
) {
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA.
    unsafe { widen_e4m3_scaled_avx2(src, dst, scales, cols) }
}

/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn widen_e4m3_scaled_avx2(src: &[E4m3NoNan], dst: &mut [f32], scales: &[f32], cols: usize) {
    let up = _mm256_set1_ps((1u128 << 120) as f32);
    let blocks = dst.chunks_mut(cols.max(1)).zip(src.chunks(cols.max(1)));
    for ((d, s), &f) in blocks.zip(scales) {
        let len = d.len().min(s.len());
        let scale = _mm256_set1_ps(f);
        let mut i = 0;
        while i + 8 <= len {
            let v = _mm256_mul_ps(e4m3_over_2_120(s.as_ptr().add(i)), up);
            _mm256_storeu_ps(d.as_mut_ptr().add(i), _mm256_mul_ps(v, scale));
            i += 8;
        }
        for (d, s) in d[i..len].iter_mut().zip(&s[i..len]) {
            *d = s.widen() * f;
        }
    }
}

/// The products past a block's last whole vector (`span`, under 8 values: a block width or a
/// length that is not a multiple of 8), in scalar code, times the block's scales, into `tail`.
/// Out of line and cold, so the kernel's loop keeps its accumulators in registers.
#[cold]
#[inline(never)]
fn tail_sums<W: Scalar, const J: usize>(
    tail: &mut [[f32; 4]; J],
    w: [&[W]; 4],
    xs: [&[f32]; J],
    span: std::ops::Range<usize>,
    s: [f32; 4],
) {
    for (tail, x) in tail.iter_mut().zip(xs) {
        for q in 0..4 {
            let t: f32 = span.clone().map(|c| w[q][c].widen() * x[c]).sum();
            tail[q] += t * s[q];
        }
    }
}

/// The lane sums of four accumulators as the four lanes of one vector.
#[inline(always)]
unsafe fn sum4(acc: [__m256; 4]) -> __m128 {
    let ab = _mm256_hadd_ps(acc[0], acc[1]);
    let cd = _mm256_hadd_ps(acc[2], acc[3]);
    let abcd = _mm256_hadd_ps(ab, cd);
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

/// Four rows of 4-bit pairs against `x` laid out by [`split_even_odd`], with block scales
/// over blocks of `cols` values (`cols` a multiple of 16, so no 16-value group straddles two
/// blocks), prefetching `next`. Per 16 values one 8-byte load per row, zero-extended to 8
/// lanes: `& 15` gives the even values and `>> 4` the odd ones, as the bf16 kernel splits
/// its pairs.
#[inline]
pub(crate) fn dot4_u4_scaled(
    _: Avx2Fma,
    w: [&[U4x2]; 4],
    x: &[f32],
    next: [&[U4x2]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    assert!(
        cols > 0 && cols.is_multiple_of(16),
        "4-bit blocks must be a multiple of 16 values, not {cols}"
    );
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA.
    unsafe { dot4_u4_scaled_avx2(w, x, next, scales, cols) }
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_u4_scaled_avx2(
    w: [&[U4x2]; 4],
    x: &[f32],
    next: [&[U4x2]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    let len = x
        .len()
        .min(2 * w.iter().map(|r| r.len()).min().unwrap_or(0));
    let (p, px) = (w.map(|r| r.as_ptr()), x.as_ptr());
    let low = _mm256_set1_epi32(15);
    let mut total = [_mm256_setzero_ps(); 4];
    let mut tail = [0f32; 4];
    let (mut lo, mut kb) = (0, 0);
    while lo < len {
        let hi = (lo + cols).min(len);
        let mut even = [_mm256_setzero_ps(); 4];
        let mut odd = [_mm256_setzero_ps(); 4];
        let mut i = lo;
        while i + 16 <= hi {
            prefetch_line(next, i / 2, 8);
            let (even_x, odd_x) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for r in 0..4 {
                let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p[r].add(i / 2) as *const __m128i));
                let e = _mm256_cvtepi32_ps(_mm256_and_si256(b, low));
                let o = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(b));
                even[r] = _mm256_fmadd_ps(e, even_x, even[r]);
                odd[r] = _mm256_fmadd_ps(o, odd_x, odd[r]);
            }
            i += 16;
        }
        for q in 0..4 {
            let s = scales[q][kb];
            let sum = _mm256_add_ps(even[q], odd[q]);
            total[q] = _mm256_fmadd_ps(sum, _mm256_set1_ps(s), total[q]);
            // The tail (< 16 values, last block only) is in natural order.
            let t: f32 = (i..hi)
                .map(|j| {
                    let (a, b) = w[q][j / 2].pair();
                    (if j % 2 == 0 { a } else { b }) * x[j]
                })
                .sum();
            tail[q] += t * s;
        }
        (lo, kb) = (hi, kb + 1);
    }
    std::array::from_fn(|q| hsum(total[q]) + tail[q])
}

/// Per `block`-element block: its even elements, then its odd ones; a shorter tail is kept as
/// is (the kernels finish it in scalar code in natural order). The activation layout the
/// pair-reading kernels want (blocks of 16 for [`dot4_rows_bf16`] and the 4-bit kernel, 32 for the
/// AVX-512 bf16 kernel), so that one weight load widens with one integer op per half.
pub(crate) fn split_even_odd(x: &[f32], block: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let blocks = x.chunks_exact(block);
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
    hsum4(_mm_add_ps(
        _mm256_castps256_ps128(v),
        _mm256_extractf128_ps(v, 1),
    ))
}

/// Horizontal sum of 4 lanes: `(v0 + v2) + (v1 + v3)`.
#[inline(always)]
pub(super) unsafe fn hsum4(v: __m128) -> f32 {
    let pair = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// `h` as an f32, exactly as `half`'s conversion gives it (NaNs quieted), without branches:
/// a superblock's `d` inside a loop of a kernel that cannot assume F16C. `half`'s `to_f32`
/// calls an F16C function that cannot be inlined here, and its `to_f32_const` branches. (The
/// K-quant row kernels take their `d` widened beforehand: even this is about twenty
/// instructions per superblock.)
#[inline(always)]
fn f16_to_f32(h: f16) -> f32 {
    let h = h.to_bits() as u32;
    let magnitude = h & 0x7fff;
    // Normal: the exponent rebiased by 127 − 15. Subnormal (and zero): the integer times 2⁻²⁴,
    // exact. No f32 arithmetic here touches a subnormal: a microcode assist each made the
    // Q6_K head product 2x slower (measured), and Q6_K's `d` is often an f16 subnormal.
    let normal = (magnitude << 13) + ((127 - 15) << 23);
    let subnormal = (magnitude as f32 * f32::from_bits((127 - 24) << 23)).to_bits();
    let nan = if magnitude > 0x7c00 { 0x40_0000 } else { 0 };
    let special = 0x7f80_0000 | (magnitude << 13) | nan;
    let bits = if magnitude >= 0x7c00 {
        special
    } else if magnitude < 0x400 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(((h & 0x8000) << 16) | bits)
}

/// The i32 lane `i` (`0..4`) of each 128-bit half of `v`, four times over in its half: one
/// `pshufd`.
///
/// # Safety
/// AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn splat_in_lanes(v: __m256i, i: usize) -> __m256i {
    match i {
        0 => _mm256_shuffle_epi32::<0x00>(v),
        1 => _mm256_shuffle_epi32::<0x55>(v),
        2 => _mm256_shuffle_epi32::<0xAA>(v),
        _ => _mm256_shuffle_epi32::<0xFF>(v),
    }
}

/// `v`, through an empty `asm!` that LLVM cannot see into: the shuffles after it stay the
/// ones written instead of being merged with those before it into a longer sequence per use
/// (LLVM turned one shared `unpack` and a `pshufd` per use into two shuffles per use).
///
/// # Safety
/// AVX must be available.
#[inline]
#[target_feature(enable = "avx")]
unsafe fn opaque(mut v: __m256i) -> __m256i {
    // SAFETY: the template is empty: no instruction runs, `v` stays in its register.
    std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack, preserves_flags));
    v
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
pub(crate) fn common_len<W>(w: &[&[W]; 4], x: &[f32]) -> usize {
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

/// 16 weights widened exactly to f32 as the two 8-lane vectors that meet the activations at
/// `x[i..i + 8]` and `x[i + 8..i + 16]` of the layout [`super::WeightElem::prepare`] gave
/// (`super::WeightElem`): natural order for f32 and f16, [`split_even_odd`] blocks of 16 for
/// bf16 (one 256-bit load holds 8 (even, odd) pairs; `<< 16` widens the evens and
/// `& 0xffff0000` the odds, exact because bf16 is the top half of an f32).
trait Load16: Scalar {
    /// # Safety
    /// `p` must point at 16 readable elements, inside a function with the needed features.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
}

impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
}

impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> (__m256, __m256) {
        let p = p as *const __m128i;
        (
            _mm256_cvtph_ps(_mm_loadu_si128(p)),
            _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
        )
    }
}

impl Load16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> (__m256, __m256) {
        let pairs = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
        let odd_mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        let odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, odd_mask));
        (even, odd)
    }
}

/// Four weight rows against `R` activation rows, 16 values per iteration: each weight load is
/// widened once and multiplied into all `R` rows, so a batch of rows costs one widening per
/// weight, not one per row. Each (weight row, activation row) pair has its own accumulator
/// that takes the two halves' FMAs in the same order whatever `R` is, then the same
/// horizontal sum and scalar tail: a pair's result is bit for bit the same in a group of
/// one or two rows (what batch-invariant serving relies on).
#[inline(always)]
unsafe fn dot4_rows<W: Load16, const R: usize>(
    w: [&[W]; 4],
    xs: [&[f32]; R],
    next: [&[W]; 4],
) -> [[f32; 4]; R] {
    let len = xs.iter().fold(usize::MAX, |l, x| l.min(common_len(&w, x)));
    let p = w.map(|r| r.as_ptr());
    let px = xs.map(|x| x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let mut i = 0;
    while i + 16 <= len {
        prefetch_line(next, i, 16);
        for r in 0..4 {
            let (a, b) = W::load16(p[r].add(i));
            for j in 0..R {
                acc[j][r] = _mm256_fmadd_ps(a, _mm256_loadu_ps(px[j].add(i)), acc[j][r]);
                acc[j][r] = _mm256_fmadd_ps(b, _mm256_loadu_ps(px[j].add(i + 8)), acc[j][r]);
            }
        }
        i += 16;
    }
    let mut out = [[0f32; 4]; R];
    for j in 0..R {
        for r in 0..4 {
            out[j][r] = hsum(acc[j][r]);
            for c in i..len {
                out[j][r] += w[r][c].widen() * xs[j][c];
            }
        }
    }
    out
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_rows_f32_avx2<const R: usize>(
    w: [&[f32]; 4],
    xs: [&[f32]; R],
    next: [&[f32]; 4],
) -> [[f32; 4]; R] {
    dot4_rows(w, xs, next)
}

/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_rows_f16_avx2<const R: usize>(
    w: [&[f16]; 4],
    xs: [&[f32]; R],
    next: [&[f16]; 4],
) -> [[f32; 4]; R] {
    dot4_rows(w, xs, next)
}

/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_rows_bf16_avx2<const R: usize>(
    w: [&[bf16]; 4],
    xs: [&[f32]; R],
    next: [&[bf16]; 4],
) -> [[f32; 4]; R] {
    dot4_rows(w, xs, next)
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

/// One row of the 8-bit product with 8-bit activations (`act8::q8_row_natural`):
/// `Σ_g c_g · Σ_{i in g} w_i · xq_i`, each group's 32 products summed exactly in integers
/// (`maddubs` on `|w|` and `xq · sign(w)`, as llama.cpp's Q8_0 dot does; `|w| ≤ 128` and
/// `|xq| ≤ 127` keep each pair sum inside i16).
pub(crate) fn dot_i8_q8(t: Avx2Fma, w: &[i8], xq: &[i8], c: &[f32]) -> f32 {
    dot_i8_q8_rows(t, w, [xq], [c])[0]
}

/// [`dot_i8_q8`] of one weight row against `J` activation rows `xq` (their factors `c`): each
/// group's weights are loaded (and their magnitudes taken) once for all `J`, and each row's
/// operations are those it gets alone, so its result has the same bits.
pub(crate) fn dot_i8_q8_rows<const J: usize>(
    _: Avx2Fma,
    w: &[i8],
    xq: [&[i8]; J],
    c: [&[f32]; J],
) -> [f32; J] {
    let k = xq.iter().map(|x| x.len()).min().unwrap_or(0).min(w.len());
    assert!(
        c.iter().all(|c| c.len() >= k.div_ceil(GROUP)),
        "one factor per group"
    );
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA; `w` and every row
    // hold `k` values and a factor per group (checked).
    unsafe { dot_i8_q8_avx2(w, k, xq, c) }
}

/// # Safety
/// AVX2 and FMA must be available; `w` and every `xq` must hold `k` values, every `c` a
/// factor per group.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_q8_avx2<const J: usize>(
    w: &[i8],
    k: usize,
    xq: [&[i8]; J],
    c: [&[f32]; J],
) -> [f32; J] {
    let full = k / GROUP;
    let pw = w.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); J];
    for g in 0..full {
        if g % 2 == 0 {
            prefetch_ahead(pw.wrapping_add(g * GROUP) as *const u8, 2 * GROUP);
        }
        let wv = _mm256_loadu_si256(pw.add(g * GROUP) as *const __m256i);
        let magnitude = _mm256_sign_epi8(wv, wv);
        for j in 0..J {
            let xv = _mm256_loadu_si256(xq[j].as_ptr().add(g * GROUP) as *const __m256i);
            let s16 = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xv, wv));
            let s32 = _mm256_madd_epi16(s16, ones);
            let cg = _mm256_set1_ps(*c[j].get_unchecked(g));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), cg, acc[j]);
        }
    }
    std::array::from_fn(|j| {
        let mut total = hsum(acc[j]);
        if full * GROUP < k {
            let tail: i32 = w[full * GROUP..k]
                .iter()
                .zip(&xq[j][full * GROUP..k])
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            total += c[j][full] * tail as f32;
        }
        total
    })
}

/// How far ahead of a row kernel's reads [`prefetch_ahead`] asks for weights: about two DRAM
/// latencies of a core's stream (4 KiB at ~15 GB/s is ~270 ns). Without it a decode step's
/// kernels, which do some ten cycles of arithmetic per 64 bytes, read a matrix at about half
/// of what one core streams (the hardware prefetchers run too short a distance ahead), and
/// on a Sapphire Rapids the AVX-512 f32/bf16/e4m3 row kernels, with two to six cycles per 64
/// bytes, at 0.6-0.7x; `benchmarks/README.md` has the measurements.
const PREFETCH_AHEAD: usize = 4096;

/// Asks for the cache lines of `bytes` bytes at `p` plus [`PREFETCH_AHEAD`] (the next weight
/// row's, past a row's end: a matrix's rows lie one after another), into L2 (`prefetcht1`).
/// Called once per `bytes` the kernel reads, so every line of the stream is asked for. A
/// prefetch never faults, so the address may lie past the matrix (hence the wrapping
/// arithmetic).
///
/// Into L2, not L1: on the Sapphire Rapids VM, 2 KiB ahead into L1 (`prefetcht0`, what the
/// kernels did first) kept bf16 decode at 24.4-25.9 tok/s; 4 KiB ahead into L2 gives
/// 26.5-27.4, and FP8, 8-bit and 4-bit decode gain 3-5% (`benchmarks/README.md`, "Weights
/// prefetched into L2"). L1 has a few fill buffers, which far prefetches occupy ahead of the
/// loads; L2 has many more, and the loads then find their lines there.
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(p: *const T, bytes: usize) {
    let ahead = (p as *const i8).wrapping_add(PREFETCH_AHEAD);
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is a hint: it neither faults nor changes memory.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line)) };
    }
}

/// `Σ_g offsets_g · sums_g` with the bits of `act8::offsets_dot` (its eight lanes are one
/// vector here: the same products and sums in each lane).
pub(crate) fn offsets_dot(_: Avx2Fma, offsets: &[f32], sums: &[f32]) -> f32 {
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA.
    unsafe { offsets_dot_avx2(offsets, sums) }
}

/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn offsets_dot_avx2(offsets: &[f32], sums: &[f32]) -> f32 {
    let (m8, m_rest) = offsets.as_chunks::<8>();
    let (s8, s_rest) = sums.as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (m, s) in m8.iter().zip(s8) {
        let product = _mm256_mul_ps(_mm256_loadu_ps(m.as_ptr()), _mm256_loadu_ps(s.as_ptr()));
        acc = _mm256_add_ps(acc, product);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    super::act8::offsets_total(lanes, m_rest, s_rest)
}

/// `dst[i] = src[i]` widened, over the common length, with `half`'s bits: `vcvtph2ps` eight
/// values at a time in one call (`half`'s slice conversion calls a function per eight values,
/// which was a tenth of a decode step's 8-bit products in the per-row scales).
pub(crate) fn widen_f16(_: Avx2FmaF16c, src: &[f16], dst: &mut [f32]) {
    // SAFETY: the `Avx2FmaF16c` token exists, so detection found AVX2 and F16C.
    unsafe { widen_f16_f16c(src, dst) }
}

/// # Safety
/// AVX2 and F16C must be available.
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16_f16c(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let (eights, rest) = src.as_chunks::<8>();
    let (out, out_rest) = dst.as_chunks_mut::<8>();
    for (h, o) in eights.iter().zip(out) {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
        _mm256_storeu_ps(o.as_mut_ptr(), v);
    }
    for (h, o) in rest.iter().zip(out_rest) {
        *o = f16_to_f32(*h);
    }
}

/// `out[i] = a[i] · b[i]` over the common length (eight lanes per instruction: the per-row
/// factors `s_g · dx_g` of the AVX2 row kernels).
pub(crate) fn products(_: Avx2Fma, a: &[f32], b: &[f32], out: &mut [f32]) {
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2.
    unsafe { products_avx2(a, b, out) }
}

/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
unsafe fn products_avx2(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a * b;
    }
}

/// `out[g] = per[g / 8] · q[g]` (f16 `per` widened) for every `g` of `out`: a K-quant row's
/// scales or offsets from its 6-bit values and superblock factors, with the bits of
/// `act8::Params::scales_into` (eight groups, one superblock, per instruction).
///
/// # Panics
/// If `q` or `per` is shorter than `out` needs.
pub(crate) fn super_values(_: Avx2Fma, q: &[u8], per: &[f16], out: &mut [f32]) {
    use super::act8::SUPER;
    assert!(
        q.len() >= out.len() && per.len() >= out.len().div_ceil(SUPER),
        "a value per group and a factor per superblock"
    );
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2; the lengths are checked.
    unsafe { super_values_avx2(q, per, out) }
}

/// # Safety
/// AVX2 must be available; `q` must cover `out`, `per` its superblocks.
#[target_feature(enable = "avx2")]
unsafe fn super_values_avx2(q: &[u8], per: &[f16], out: &mut [f32]) {
    use super::act8::SUPER;
    let (blocks, rest) = out.as_chunks_mut::<SUPER>();
    let full = blocks.len();
    for (b, out) in blocks.iter_mut().enumerate() {
        let d = _mm256_set1_ps(f16_to_f32(per[b]));
        let bytes = _mm_loadl_epi64(q.as_ptr().add(b * SUPER) as *const __m128i);
        let values = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(d, values));
    }
    if !rest.is_empty() {
        let d = per[full].to_f32();
        for (out, &q) in rest.iter_mut().zip(&q[full * SUPER..]) {
            *out = d * q as f32;
        }
    }
}

/// One row of the 4-bit or 5-bit product with 8-bit activations (`act8`): per pair of groups
/// one 32-byte load of the weights, `& 15` and `>> 4 & 15` for the even and odd values (5-bit
/// rows OR in `16` where the pair's fifth bits are set: [`fifth_bits`]), two `maddubs` (u8 x
/// i8 pairs into i16: at most 2 · 31 · 127, no saturation) and one `madd` into 8 i32 lanes (4
/// per group), converted and multiplied by each group's `c` (the pair's two factors one
/// 64-bit load and a permute), two pairs per step into two accumulators.
#[inline]
pub(crate) fn dot_u4_q8(t: Avx2Fma, w: Nibbles, xq: &[i8], c: &[f32]) -> f32 {
    dot_u4_q8_rows(t, w, [xq], [c])[0]
}

/// [`dot_u4_q8`] of one weight row against `J` activation rows `xq` (their factors `c`): each
/// pair of groups is unpacked once for all `J`, and each row's operations are those it gets
/// alone, so its result has the same bits.
#[inline]
pub(crate) fn dot_u4_q8_rows<const J: usize>(
    _: Avx2Fma,
    w: Nibbles,
    xq: [&[i8]; J],
    c: [&[f32]; J],
) -> [f32; J] {
    let k = xq
        .iter()
        .map(|x| x.len())
        .min()
        .unwrap_or(0)
        .min(2 * w.low.len());
    assert!(
        c.iter().all(|c| c.len() >= k.div_ceil(GROUP)),
        "one factor per group"
    );
    match w.high {
        // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA; every row
        // holds `k` activations and a factor per group (checked).
        None => unsafe { dot_u4_q8_avx2::<false, J>(w, k, xq, c) },
        Some(high) => {
            assert!(
                k.is_multiple_of(GROUP) && high.len() >= k / GROUP * U5_HIGH_BYTES,
                "5-bit rows: whole groups, four bytes of fifth bits each"
            );
            // SAFETY: as above; the fifth bits cover the row's groups (checked).
            unsafe { dot_u4_q8_avx2::<true, J>(w, k, xq, c) }
        }
    }
}

/// 32 bytes, byte `i` `16` where bit `i` of `bits` is set and `0` elsewhere (the fifth bits of
/// 32 values, as `OR` into their low four bits).
///
/// # Safety
/// AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    // Byte i takes byte i / 8 of `bits` and tests its bit i % 8.
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let b = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// The fifth bits of group `g` of a 5-bit row of `full` groups whose bits start at `ph`
/// ([`Nibbles`]' layout): the 16 evens' bits and the 16 odds'.
///
/// # Safety
/// `ph` must hold the fifth bits of `full` groups, `g < full`.
#[inline(always)]
unsafe fn u5_group_bits(ph: *const u8, full: usize, g: usize) -> (u32, u32) {
    let (at, gap) = u5_high_at(full, g);
    let half = |at: usize| std::ptr::read_unaligned(ph.add(at) as *const u16) as u32;
    (half(at), half(at + gap))
}

/// The even and odd values of the pair of groups from `g` of a 4-bit (`FIVE` false) or 5-bit
/// row of `full` groups: one 32-byte load, `& 15` and `>> 4 & 15` (5-bit rows OR in `16`
/// where the pair's fifth bits are set: [`fifth_bits`]). Lanes 0..16 hold group `g`, 16..32
/// group `g + 1`.
///
/// # Safety
/// AVX2 must be available; `pw` must hold the row's `full · 16` bytes of pairs, `ph` (5-bit
/// rows) its fifth bits; `g + 1 < full`.
#[inline(always)]
unsafe fn nibble_pair<const FIVE: bool>(
    pw: *const u8,
    ph: *const u8,
    full: usize,
    g: usize,
) -> (__m256i, __m256i) {
    let nib = _mm256_set1_epi8(15);
    let b = _mm256_loadu_si256(pw.add(g * GROUP / 2) as *const __m256i);
    let mut lo = _mm256_and_si256(b, nib);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), nib);
    if FIVE {
        // A pair inside a quad is one u32 of each.
        let (evens, odds) = if g + 1 < full / 4 * 4 {
            let (at, gap) = u5_high_at(full, g);
            let word = |at: usize| std::ptr::read_unaligned(ph.add(at) as *const u32);
            (word(at), word(at + gap))
        } else {
            let ((ea, oa), (eb, ob)) = (u5_group_bits(ph, full, g), u5_group_bits(ph, full, g + 1));
            (ea | (eb << 16), oa | (ob << 16))
        };
        lo = _mm256_or_si256(lo, fifth_bits(evens));
        hi = _mm256_or_si256(hi, fifth_bits(odds));
    }
    (lo, hi)
}

/// # Safety
/// AVX2 and FMA must be available; every `xq` must hold `k` values, every `c` a factor per
/// group, and `w` `k` values (with `FIVE`, `w.high` covering the row's groups).
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u4_q8_avx2<const FIVE: bool, const J: usize>(
    w: Nibbles,
    k: usize,
    xq: [&[i8]; J],
    c: [&[f32]; J],
) -> [f32; J] {
    let full = k / GROUP;
    let pw = w.low.as_ptr() as *const u8;
    let px = xq.map(|x| x.as_ptr());
    let ph = w.high.map_or(std::ptr::null(), |h| h.as_ptr());
    let high = |g: usize| u5_group_bits(ph, full, g);
    let ones = _mm256_set1_epi16(1);
    // Lanes 0..4 take the pair's first factor, 4..8 its second.
    let spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let unpack = |g: usize| nibble_pair::<FIVE>(pw, ph, full, g);
    // Row `j`'s eight i32 sums (four per group) of the pair from `g` as f32, times their
    // factors, into `acc`.
    let pair = |(lo, hi): (__m256i, __m256i), j: usize, g: usize, acc: __m256| {
        let at = g * GROUP;
        let xe = _mm256_loadu_si256(px[j].add(at) as *const __m256i);
        let xo = _mm256_loadu_si256(px[j].add(at + GROUP) as *const __m256i);
        let s16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
        let s32 = _mm256_madd_epi16(s16, ones);
        // The two factors in one 64-bit load, spread by one permute.
        let two = _mm_castpd_ps(_mm_load_sd(c[j].as_ptr().add(g) as *const f64));
        let cv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), spread);
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), cv, acc)
    };
    // Two accumulators per row: consecutive pairs' FMAs do not wait on each other.
    let mut acc = [[_mm256_setzero_ps(); 2]; J];
    let mut g = 0;
    while g + 3 < full {
        prefetch_ahead(pw.wrapping_add(g * GROUP / 2), 2 * GROUP);
        if FIVE && g % 16 == 0 {
            prefetch_ahead(ph.wrapping_add(g * U5_HIGH_BYTES), 16 * U5_HIGH_BYTES);
        }
        for (half, g) in [g, g + 2].into_iter().enumerate() {
            let w = unpack(g);
            for (j, acc) in acc.iter_mut().enumerate() {
                acc[half] = pair(w, j, g, acc[half]);
            }
        }
        g += 4;
    }
    if g + 1 < full {
        let w = unpack(g);
        for (j, acc) in acc.iter_mut().enumerate() {
            acc[0] = pair(w, j, g, acc[0]);
        }
        g += 2;
    }
    let mut total = acc.map(|[a, b]| hsum(_mm256_add_ps(a, b)));
    if g < full {
        let b = _mm_loadu_si128(pw.add(g * GROUP / 2) as *const __m128i);
        let nib = _mm_set1_epi8(15);
        let mut lo = _mm_and_si128(b, nib);
        let mut hi = _mm_and_si128(_mm_srli_epi16::<4>(b), nib);
        if FIVE {
            // The evens' 16 bits in bytes 0..16, the odds' in 16..32.
            let (evens, odds) = high(g);
            let bits = fifth_bits(evens | (odds << 16));
            lo = _mm_or_si128(lo, _mm256_castsi256_si128(bits));
            hi = _mm_or_si128(hi, _mm256_extracti128_si256::<1>(bits));
        }
        for (j, total) in total.iter_mut().enumerate() {
            let at = g * GROUP;
            let xe = _mm_loadu_si128(px[j].add(at) as *const __m128i);
            let xo = _mm_loadu_si128(px[j].add(at + GROUP / 2) as *const __m128i);
            let s16 = _mm_add_epi16(_mm_maddubs_epi16(lo, xe), _mm_maddubs_epi16(hi, xo));
            let s32 = _mm_madd_epi16(s16, _mm_set1_epi16(1));
            *total += hsum4(_mm_mul_ps(_mm_cvtepi32_ps(s32), _mm_set1_ps(c[j][g])));
        }
    }
    if full * GROUP < k {
        // (4-bit rows only: 5-bit rows are whole groups.)
        for (j, total) in total.iter_mut().enumerate() {
            let tail: i32 = w.low[full * GROUP / 2..k / 2]
                .iter()
                .zip(xq[j][full * GROUP..k].chunks_exact(2))
                .map(|(b, x)| (b.0 & 15) as i32 * x[0] as i32 + (b.0 >> 4) as i32 * x[1] as i32)
                .sum();
            *total += c[j][full] * tail as f32;
        }
    }
    total
}

/// One weight row of GGUF's Q4_K (`FIVE` false) or Q5_K, whole superblocks, against `J`
/// activation rows `x` (rounded per group of 32, [`super::act8::Layout::Pairs`]): per pair of
/// groups the values unpacked as [`dot_u4_q8`] does, then per row two `maddubs` and one `madd`
/// with the groups' integer 6-bit scales (eight i16 lanes each) into 8 i32 lanes of
/// `sc_g · Σ q · xq` over four values, exact, converted and multiplied by the groups' `dx`
/// ([`Q8Row::scale4`], an FMA's memory operand). Each superblock's sum is scaled by its `d`
/// once, and its offsets `−dmin · mn_g` (formed per superblock for all rows) meet the
/// activations' sums in one FMA: per 64 values and row five integer operations, one
/// conversion and one FMA, and nothing formed per (weight row, activation row).
///
/// Each pair of groups is unpacked and its scales spread once for all `J` rows, and each
/// row's operations are those it gets alone, so its result has the same bits.
pub(crate) fn dot_k4_q8_rows<const J: usize>(
    _: Avx2Fma,
    w: Nibbles,
    x: [&Q8Row; J],
    (sc, d): (&[u8], &[f32]),
    (mn, dmin): (&[u8], &[f32]),
) -> [f32; J] {
    use super::act8::SUPER;
    let k = x
        .iter()
        .map(|x| x.q.len())
        .min()
        .unwrap_or(0)
        .min(2 * w.low.len());
    let groups = k / GROUP;
    assert!(
        k.is_multiple_of(SUPER * GROUP)
            && sc.len() >= groups
            && d.len() >= groups / SUPER
            && mn.len() >= groups
            && dmin.len() >= groups / SUPER
            && x.iter()
                .all(|x| x.scale4.len() >= 4 * groups && x.sums.len() >= groups),
        "whole superblocks, their parameters and the activations' scales and sums"
    );
    let (sc, d) = (sc.as_ptr(), d.as_ptr());
    let (mn, dmin) = (mn.as_ptr(), dmin.as_ptr());
    match w.high {
        // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA; the kernel
        // reads `groups` groups of `w` and of every row, their parameters and scales (checked).
        None => unsafe { dot_k4_q8_avx2::<false, J>(w, groups, x, (sc, d), (mn, dmin)) },
        Some(high) => {
            assert!(
                high.len() >= groups * U5_HIGH_BYTES,
                "5-bit rows: four bytes of fifth bits per group"
            );
            // SAFETY: as above; the fifth bits cover the row's groups (checked).
            unsafe { dot_k4_q8_avx2::<true, J>(w, groups, x, (sc, d), (mn, dmin)) }
        }
    }
}

/// # Safety
/// AVX2 and FMA must be available; `groups` must be a multiple of 8, `w` and every `x.q` hold
/// `groups · 32` values (5-bit: `w.high` their fifth bits), `sc` and `mn` `groups` values,
/// `d` and `dmin` `groups / 8`, every `x.scale4` `4 · groups` and `x.sums` `groups`.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_k4_q8_avx2<const FIVE: bool, const J: usize>(
    w: Nibbles,
    groups: usize,
    x: [&Q8Row; J],
    (sc, d): (*const u8, *const f32),
    (mn, dmin): (*const u8, *const f32),
) -> [f32; J] {
    use super::act8::SUPER;
    let pw = w.low.as_ptr() as *const u8;
    let ph = w.high.map_or(std::ptr::null(), |h| h.as_ptr());
    // The i16 scales of groups `2p` (eight low lanes) and `2p + 1` (eight high lanes) from the
    // superblock's eight scale bytes (unsigned), as `dot_u6_q8_avx2` spreads its sub-blocks':
    // evens to the low lane and odds to the high one, each doubled into an i32, then one
    // in-lane `pshufd` per pair.
    let evens_odds = _mm_setr_epi8(0, 2, 4, 6, -1, -1, -1, -1, 1, 3, 5, 7, -1, -1, -1, -1);
    let mut total = [_mm256_setzero_ps(); J];
    for sb in 0..groups / SUPER {
        prefetch_ahead(pw.wrapping_add(sb * SUPER * GROUP / 2), SUPER * GROUP / 2);
        if FIVE && sb % 2 == 0 {
            prefetch_ahead(
                ph.wrapping_add(sb * SUPER * U5_HIGH_BYTES),
                2 * SUPER * U5_HIGH_BYTES,
            );
        }
        let bytes = _mm_loadl_epi64(sc.add(SUPER * sb) as *const __m128i);
        let s16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(bytes, evens_odds));
        let twice = opaque(_mm256_unpacklo_epi16(s16, s16));
        let spread = |p: usize| splat_in_lanes(twice, p);
        // One accumulator per row: with several rows their FMAs interleave, and one row
        // alone is bound by memory, not by the chain.
        let mut acc = [_mm256_setzero_ps(); J];
        for p in 0..SUPER / 2 {
            let g = SUPER * sb + 2 * p;
            let (lo, hi) = nibble_pair::<FIVE>(pw, ph, groups, g);
            let scales = spread(p);
            for (j, x) in x.iter().enumerate() {
                let xq = x.q.as_ptr().add(g * GROUP);
                let xe = _mm256_loadu_si256(xq as *const __m256i);
                let xo = _mm256_loadu_si256(xq.add(GROUP) as *const __m256i);
                let s16 =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, scales));
                let dx = _mm256_loadu_ps(x.scale4.as_ptr().add(4 * g));
                acc[j] = _mm256_fmadd_ps(s, dx, acc[j]);
            }
        }
        let dsb = _mm256_set1_ps(*d.add(sb));
        // The offsets `−dmin · mn_g` of the superblock's eight groups.
        let mn8 = _mm_loadl_epi64(mn.add(SUPER * sb) as *const __m128i);
        let mins = _mm256_mul_ps(
            _mm256_set1_ps(-*dmin.add(sb)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)),
        );
        for (j, x) in x.iter().enumerate() {
            let sums = _mm256_loadu_ps(x.sums.as_ptr().add(SUPER * sb));
            total[j] = _mm256_fmadd_ps(mins, sums, _mm256_fmadd_ps(acc[j], dsb, total[j]));
        }
    }
    total.map(|t| hsum(t))
}

/// One weight row of the 6-bit product with 8-bit activations against `J` activation rows `x`
/// (`act8`'s chunk layout, activations in natural order: [`super::act8::q8_row_six`]): per
/// chunk of 64 values, the low nibbles of 32 bytes and the high bit pairs of 16 bytes (one
/// 32-bit variable shift per 128-bit lane) make two vectors of 32 values in `0..=63`, one
/// group of 32 activations each. `maddubs` gives i16 sums of two products; `madd` with the
/// sub-blocks' integer scales `sc_s` (eight lanes each) gives 8 i32 lanes of `sc_s · Σ q · xq`
/// over four values, exact, converted and multiplied by the group's `dx` (a broadcast). The
/// zero point, `−32 · Σ_s sc_s · sums16_s` per group, is one `madd` of the activations' i16
/// sums per 16 with `−32 · sc` per superblock, and each superblock's sum is scaled by its `d`
/// once: per 64 values and row four integer multiplies, two conversions and two FMAs, no
/// float factor formed per (weight row, activation row).
///
/// With `BITS` 3, 3-bit rows (GGUF's Q3_K, `act8::u3_chunk`): the 16 bytes of bit pairs
/// broadcast to both 128-bit lanes and shifted per lane, the 64 third bits as bytes by a
/// shuffle and compare, and `−4` for `−32`. With `BITS` 2 (Q2_K), the bit pairs alone, no
/// zero point, and the offsets ([`SixBit::offsets`]) subtracted after the row.
///
/// Each chunk is unpacked and its scales spread once for all `J` rows, and each row's
/// operations are those it gets alone, so its result has the same bits.
pub(crate) fn dot_u6_q8_rows<const BITS: usize, const J: usize>(
    _: Avx2Fma,
    w: &[u8],
    x: [&Q8Row; J],
    p: SixBit,
    d: &[f32],
) -> [f32; J] {
    use super::act8::{chunk_bytes, U6_CHUNK};
    let len = x.iter().map(|x| x.q.len()).min().unwrap_or(0);
    let chunks = (len / U6_CHUNK).min(w.len() / chunk_bytes(BITS));
    // Q6_K / Q3_K / Q2_K rows are whole superblocks (`QuantMatrix` keeps other widths in
    // another format).
    assert!(chunks.is_multiple_of(4), "rows of whole superblocks");
    assert!(
        p.sc.len() >= 4 * chunks
            && d.len() >= chunks / 4
            && x.iter().all(|x| x.scale.len() >= 2 * chunks
                && x.sums16.len() >= 4 * chunks
                && x.sums16_i16.len() >= 4 * chunks)
            && (BITS != 2 || p.dmin.len() >= chunks / 4),
        "parameters and activation sums for every chunk"
    );
    // SAFETY: the `Avx2Fma` token exists, so detection found AVX2 and FMA; the kernel reads
    // `chunks` whole chunks of `w` and of each `x`, their scales, `d`s and sums, inside the
    // slices (checked above).
    let rows =
        unsafe { dot_u6_q8_avx2::<BITS, J>(w.as_ptr(), x, (p.sc.as_ptr(), d.as_ptr()), chunks) };
    std::array::from_fn(|j| rows[j] - p.offsets(&x[j].scale, &x[j].sums16))
}

/// # Safety
/// AVX2 and FMA must be available; `w` must hold `chunks` chunks of `BITS` bits
/// (`act8::chunk_bytes`), `chunks` a multiple of 4, every `x.q` `chunks · 64` values,
/// `x.scale` `chunks · 2`, `x.sums16_i16` and `sc` `chunks · 4`, `d` `chunks / 4`.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u6_q8_avx2<const BITS: usize, const J: usize>(
    w: *const u8,
    x: [&Q8Row; J],
    (sc, d): (*const i8, *const f32),
    chunks: usize,
) -> [f32; J] {
    use super::act8::{chunk_bytes, zero_point};
    let (nib, pair) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3));
    // The two 32-value vectors of chunk `ch`.
    let unpack = |ch: usize| {
        if BITS <= 3 {
            // Values 0..32 / 32..64: bit pairs t = 0, 1 / 2, 3 (shifts 0, 2 / 4, 6 per lane),
            // 3 bits: third bits from the u32 of each half.
            let p = w.add(ch * chunk_bytes(BITS));
            let l = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
            let pairs = |shift: __m256i| _mm256_and_si256(_mm256_srlv_epi32(l, shift), pair);
            let third = |half: usize| {
                if BITS == 2 {
                    return _mm256_setzero_si256();
                }
                let bits = (p.add(16 + 4 * half) as *const u32).read_unaligned();
                _mm256_srli_epi16::<2>(fifth_bits(bits))
            };
            (
                _mm256_or_si256(pairs(_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), third(0)),
                _mm256_or_si256(pairs(_mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), third(1)),
            )
        } else {
            // Values 0..32 take the bit pairs t = 0 (low lane) and 1 (high lane) of the 16
            // bytes of high bits, moved to bits 4..5 by left shifts of 4 and 2; values 32..64
            // take t = 2 and 3, by right shifts of 0 and 2. What a 32-bit shift carries in
            // from a neighbouring byte lands outside bits 4..5, which the mask keeps.
            let p = w.add(ch * chunk_bytes(BITS));
            let l = _mm256_loadu_si256(p as *const __m256i);
            let h = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(32) as *const __m128i));
            let high = _mm256_set1_epi8(0x30);
            let h0 = _mm256_sllv_epi32(h, _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2));
            let h1 = _mm256_srlv_epi32(h, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
            (
                _mm256_or_si256(_mm256_and_si256(l, nib), _mm256_and_si256(h0, high)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l), nib),
                    _mm256_and_si256(h1, high),
                ),
            )
        }
    };
    let zero = zero_point(BITS);
    let dot = |q: __m256i, x: *const i8, sc: __m256i| {
        let x = _mm256_loadu_si256(x as *const __m256i);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q, x), sc))
    };
    // One accumulator per row for a superblock and one for the row, whatever `J` (a row's
    // bits must not depend on it): with several rows their FMAs interleave, and one row alone
    // was no faster with the chain split (measured), so the shuffles and shifts bound it.
    let mut total = [_mm256_setzero_ps(); J];
    // The sub-block scales spread for `madd`: `[s_a x8 | s_b x8]` as i16 for the sub-blocks
    // `a = 2i` (values 0..16 of a group, the low lane) and `b = 2i + 1`. The bytes are put in
    // the order evens, odds, so that after widening each lane holds the scales it needs, and
    // each i16 is doubled into an i32 (`madd` adds two products of one sub-block): a pair is
    // then one in-lane `pshufd`. (A byte shuffle and widening per pair took two vector
    // operations, which LLVM made four, two of them lane-crossing.)
    let evens_odds = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for sb in 0..chunks / 4 {
        prefetch_ahead(
            w.wrapping_add(4 * sb * chunk_bytes(BITS)),
            4 * chunk_bytes(BITS),
        );
        let mut bytes = _mm_loadu_si128(sc.add(16 * sb) as *const __m128i);
        if BITS == 2 {
            // Q2_K's bytes: the scale is the low nibble (the offsets come after the row).
            bytes = _mm_and_si128(bytes, _mm_set1_epi8(0xF));
        }
        let s16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(bytes, evens_odds));
        // Pairs 0..4 (sub-blocks 0..8) and 4..8.
        let twice = [
            opaque(_mm256_unpacklo_epi16(s16, s16)),
            opaque(_mm256_unpackhi_epi16(s16, s16)),
        ];
        let spread = |i: usize| splat_in_lanes(twice[i / 4], i % 4);
        let mut acc = [_mm256_setzero_ps(); J];
        for c in 0..4 {
            let ch = 4 * sb + c;
            let (q0, q1) = unpack(ch);
            let (s0, s1) = (spread(2 * c), spread(2 * c + 1));
            for (j, x) in x.iter().enumerate() {
                let xq = x.q.as_ptr().add(ch * 64);
                let dx = x.scale.as_ptr().add(2 * ch);
                acc[j] = _mm256_fmadd_ps(dot(q0, xq, s0), _mm256_broadcast_ss(&*dx), acc[j]);
                acc[j] = _mm256_fmadd_ps(
                    dot(q1, xq.add(32), s1),
                    _mm256_broadcast_ss(&*dx.add(1)),
                    acc[j],
                );
            }
        }
        if zero != 0 {
            // −zero · sc (zero a power of two; at most 32 · 128 in magnitude).
            let zeros = _mm256_mullo_epi16(
                _mm256_cvtepi8_epi16(bytes),
                _mm256_set1_epi16(-(zero as i16)),
            );
            for (j, x) in x.iter().enumerate() {
                // Per group (lane) `Σ_s −zero · sc_s · sums16_s` over its two sub-blocks:
                // at most 2 · 2032 · 4096 in magnitude, exact in f32.
                let sums = x.sums16_i16.as_ptr().add(16 * sb) as *const __m256i;
                let z = _mm256_madd_epi16(_mm256_loadu_si256(sums), zeros);
                let dx = _mm256_loadu_ps(x.scale.as_ptr().add(8 * sb));
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(z), dx, acc[j]);
            }
        }
        let dsb = _mm256_set1_ps(*d.add(sb));
        for j in 0..J {
            total[j] = _mm256_fmadd_ps(acc[j], dsb, total[j]);
        }
    }
    total.map(|t| hsum(t))
}

#[cfg(test)]
mod tests {
    use half::f16;

    #[test]
    fn f16_to_f32_is_half_s_conversion_for_every_value() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (ours, theirs) = (super::f16_to_f32(h), h.to_f32_const());
            assert_eq!(ours.to_bits(), theirs.to_bits(), "{bits:#06x}");
        }
    }
}
