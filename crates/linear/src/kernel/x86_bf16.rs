//! The AVX512-BF16 matrix-vector kernel: bf16 weights against activations rounded to bf16,
//! two multiply-adds per f32 lane in one `vdpbf16ps` (`acc[l] += a[2l]·b[2l] +
//! a[2l+1]·b[2l+1]`, the products exact in f32), reading the rows as stored (32 bf16 per
//! 512-bit load, the last load masked). Against the AVX2 bf16 kernel it drops the widening
//! instructions per weight byte, which is what bounds a matrix-vector product of several
//! activation rows on few cores (`benchmarks/README.md`).
//!
//! The GEMM regime ([`gemm()`]) runs [`super::x86_512`]'s packed driver over pairs of bf16 (one
//! 32-bit element holds values `2i` and `2i + 1` of a row, as stored) with a micro-kernel of
//! `vdpbf16ps`: 64 flops per instruction against an f32 FMA's 32. Whether that is faster
//! depends on the core: on Zen 4 the two issue at the same rate (2x for the bf16 kernel); on
//! Zen 5 `vdpbf16ps` issues every other cycle against two FMAs per cycle (the f32 GEMM on
//! rounded activations is then the faster; `benchmarks/README.md`).
//!
//! As in [`super::x86`], every `#[target_feature]` function is private and reached only
//! through a safe wrapper taking the [`Avx512Bf16`] proof token, which only
//! [`Avx512Bf16::detect`] makes.

use half::bf16;
use std::arch::x86_64::*;

use super::x86_512::{Avx512F, MR, NR, NV};
use super::WeightElem;
use crate::Isa;

/// Proof that the CPU runs AVX-512 F/BW with the BF16 extension (and AVX2, FMA and F16C).
/// Made only by [`Avx512Bf16::detect`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx512Bf16(Avx512F);

impl Avx512Bf16 {
    /// Run-time detection on top of the proven AVX-512 F/BW.
    pub(crate) fn detect(below: Avx512F) -> Option<Avx512Bf16> {
        is_x86_feature_detected!("avx512bf16").then_some(Avx512Bf16(below))
    }

    /// The AVX-512 F/BW part of the proof.
    pub(crate) fn avx512f(self) -> Avx512F {
        self.0
    }
}

/// `R` bf16 rows (raw bits) against one bf16 activation row `x`, each of length at least
/// `x.len()`: `Σ_i w[q][i] · x[i]` accumulated in f32, each row's result the same whatever
/// `R`. The matrix-vector regime reads a task's rows one at a time, or one from each quarter
/// of the task per call when the activations outgrow L1 (`super::rows_apart`).
#[inline]
pub(crate) fn dot_rows<const R: usize>(_: Avx512Bf16, w: [&[u16]; R], x: &[u16]) -> [f32; R] {
    assert!(w.iter().all(|r| r.len() >= x.len()));
    // SAFETY: the token proves AVX-512 F/BW/BF16; the rows hold at least `x.len()` values.
    unsafe { dot_rows_avx512(w, x) }
}

/// # Safety
/// AVX-512 F/BW/BF16 must be available and every row must hold at least `x.len()` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dot_rows_avx512<const R: usize>(w: [&[u16]; R], x: &[u16]) -> [f32; R] {
    let k = x.len();
    let load = |p: &[u16], i: usize| as_bh(_mm512_loadu_si512(p.as_ptr().add(i).cast()));
    // Two accumulators per row, so consecutive `vdpbf16ps` of a row do not wait on each other.
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    let mut i = 0;
    while i + 64 <= k {
        let (x0, x1) = (load(x, i), load(x, i + 32));
        for q in 0..R {
            a0[q] = _mm512_dpbf16_ps(a0[q], load(w[q], i), x0);
            a1[q] = _mm512_dpbf16_ps(a1[q], load(w[q], i + 32), x1);
        }
        i += 64;
    }
    if i + 32 <= k {
        let x0 = load(x, i);
        for q in 0..R {
            a0[q] = _mm512_dpbf16_ps(a0[q], load(w[q], i), x0);
        }
        i += 32;
    }
    if i < k {
        // The tail: masked loads read only the row's last `k - i` values and zero the rest.
        let mask: __mmask32 = (1u32 << (k - i)) - 1;
        let xv = as_bh(_mm512_maskz_loadu_epi16(mask, x.as_ptr().add(i).cast()));
        for q in 0..R {
            let wv = as_bh(_mm512_maskz_loadu_epi16(mask, w[q].as_ptr().add(i).cast()));
            a1[q] = _mm512_dpbf16_ps(a1[q], wv, xv);
        }
    }
    std::array::from_fn(|q| _mm512_reduce_add_ps(_mm512_add_ps(a0[q], a1[q])))
}

/// The 32 bf16 values of a 512-bit integer vector, typed for `vdpbf16ps`.
#[inline(always)]
unsafe fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `x` rounded to bf16 (nearest even), as raw bits: what the kernels here read.
pub(crate) fn round_to_bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

/// Two bf16 values of a row (`2i` in the low half, `2i + 1` in the high half, the stored
/// layout read as one little-endian 32-bit element), and of an activation row rounded to
/// bf16: the element [`gemm()`] packs, copied bit for bit.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Bf16Pair(u32);

impl Bf16Pair {
    fn halves(self) -> (f32, f32) {
        (
            f32::from_bits(self.0 << 16),
            f32::from_bits(self.0 & 0xffff_0000),
        )
    }
}

impl WeightElem for Bf16Pair {
    /// The pairs' dot product against activations holding bf16 pairs as f32 bit patterns
    /// (what [`gemm()`] packs). Not on a fast path: only the packing below is.
    fn dot4(_: Isa, w: [&[Self]; 4], x: &[f32], _: [&[Self]; 4]) -> [f32; 4] {
        w.map(|row| {
            row.iter()
                .zip(x)
                .map(|(w, x)| {
                    let ((w0, w1), (x0, x1)) = (w.halves(), Bf16Pair(x.to_bits()).halves());
                    w0 * x0 + w1 * x1
                })
                .sum()
        })
    }

    /// The bit patterns, unchanged (the micro-kernel reads them as bf16 pairs).
    fn widen_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(s.0);
        }
    }
}

/// `[N, K]` bf16 weights `w` (raw bits) times `m` activation rows `xs` `[m, K]` rounded to
/// bf16 (raw bits), `K` even: `[m, N]` row-major, on `vdpbf16ps`. `None` when `K` is odd or
/// the weights are not 4-byte aligned (then the pairs are not 32-bit elements).
pub(crate) fn gemm(t: Avx512Bf16, w: &[u16], k: usize, xs: &[u16], m: usize) -> Option<Vec<f32>> {
    if !k.is_multiple_of(2) || m == 0 {
        return None;
    }
    // SAFETY: u16 pairs read as u32 (plain data); `align_to` checks the alignment.
    let (head, pairs, _) = unsafe { w.align_to::<u32>() };
    if !head.is_empty() {
        return None;
    }
    let n = w.len() / k;
    let pairs = &pairs[..n * k / 2];
    // SAFETY: `Bf16Pair` is a transparent `u32`.
    let pairs: &[Bf16Pair] =
        unsafe { std::slice::from_raw_parts(pairs.as_ptr().cast(), pairs.len()) };
    let xp: Vec<f32> = xs
        .chunks_exact(2)
        .map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16))
        .collect();
    let mut out = vec![0f32; m * n];
    if n > 0 {
        // SAFETY: the token proves AVX512-BF16, `micro_kernel`'s feature.
        unsafe {
            super::x86_512::gemm_with(t.avx512f(), pairs, k / 2, &xp, &mut out, micro_kernel)
        };
    }
    Some(out)
}

/// [`super::x86_512`]'s micro-kernel over bf16 pairs: per pair column one 32-bit broadcast of
/// each activation row's pair and one `vdpbf16ps` per 16 weight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel(
    x: *const f32,
    w: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: usize,
    accumulate: bool,
) {
    let (x, w) = (x.cast::<i32>(), w.cast::<i32>());
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..kc {
        let wv: [__m512bh; NV] =
            std::array::from_fn(|v| as_bh(_mm512_loadu_si512(w.add(p * NR + 16 * v).cast())));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = as_bh(_mm512_set1_epi32(*x.add(p * MR + i)));
            for v in 0..NV {
                a[v] = _mm512_dpbf16_ps(a[v], xv, wv[v]);
            }
        }
    }
    super::x86_512::store_tile(&acc, c, ldc, rows, lanes, accumulate);
}
