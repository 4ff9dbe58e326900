//! The AVX512-BF16 kernels: bf16 weights against activations rounded to bf16, two
//! multiply-adds per f32 lane in one `vdpbf16ps` (`acc[l] += a[2l]·b[2l] + a[2l+1]·b[2l+1]`,
//! the products exact in f32).
//!
//! Up to a few dozen activation rows, [`dot_tile`] reads the weight rows as stored (32 bf16
//! per 512-bit load, the last load masked), each load serving several activation rows.
//! Against the AVX2 bf16 kernel it drops the widening instructions per weight byte, which is
//! what bounds a product of several activation rows on few cores, and against the packed
//! GEMM the packing (`benchmarks/README.md`).
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

/// `R` bf16 weight rows against `X` activation rows rounded to bf16 (raw bits), the weight
/// rows at least as long as the activation rows: `out[q][j] = Σ_i w[q][i] · x[j][i]`
/// accumulated in f32. Each weight load serves the `X` activation rows and each activation
/// load the `R` weight rows, so with `R = 4, X = 3` the kernel issues 7 loads per 12
/// `vdpbf16ps` and runs at the multiply-add rate, with no packing (the GEMM's packing of the
/// weights cost as much as its arithmetic on an expert's 48 rows). Every pair `(q, j)` gets
/// the same operations in the same order whatever `R`, `X` and the other rows: two
/// accumulators taking alternate 32-value blocks, the masked tail, one reduction. That is what
/// makes the product batch-invariant and lets a task read its rows one at a time or one from
/// each quarter (`super::rows_apart`).
#[inline]
pub(crate) fn dot_tile<const R: usize, const X: usize>(
    _: Avx512Bf16,
    w: [&[u16]; R],
    x: [&[u16]; X],
) -> [[f32; X]; R] {
    let k = x.first().map_or(0, |x| x.len());
    assert!(x.iter().all(|x| x.len() == k) && w.iter().all(|r| r.len() >= k));
    // SAFETY: the token proves AVX-512 F/BW/BF16; every row holds at least `k` values.
    unsafe { dot_tile_avx512(w, x, k) }
}

/// # Safety
/// AVX-512 F/BW/BF16 must be available and every row must hold at least `k` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dot_tile_avx512<const R: usize, const X: usize>(
    w: [&[u16]; R],
    x: [&[u16]; X],
    k: usize,
) -> [[f32; X]; R] {
    let load = |p: &[u16], i: usize| as_bh(_mm512_loadu_si512(p.as_ptr().add(i).cast()));
    // Two accumulators per pair, so consecutive `vdpbf16ps` of a pair do not wait on each
    // other when the tile is small.
    let mut a0 = [[_mm512_setzero_ps(); X]; R];
    let mut a1 = [[_mm512_setzero_ps(); X]; R];
    // One 32-value block at `i` into `acc`: each weight vector loaded once for the `X` rows.
    let block = |acc: &mut [[__m512; X]; R], i: usize| {
        let xv: [__m512bh; X] = std::array::from_fn(|j| load(x[j], i));
        for (a, w) in acc.iter_mut().zip(w) {
            super::x86::prefetch_ahead(w.as_ptr().wrapping_add(i), 64);
            let wv = load(w, i);
            for (a, &xv) in a.iter_mut().zip(&xv) {
                *a = _mm512_dpbf16_ps(*a, wv, xv);
            }
        }
    };
    let mut i = 0;
    while i + 64 <= k {
        block(&mut a0, i);
        block(&mut a1, i + 32);
        i += 64;
    }
    if i + 32 <= k {
        block(&mut a0, i);
        i += 32;
    }
    if i < k {
        // The tail: masked loads read only the rows' last `k - i` values and zero the rest.
        let mask: __mmask32 = (1u32 << (k - i)) - 1;
        let tail = |p: &[u16]| as_bh(_mm512_maskz_loadu_epi16(mask, p.as_ptr().add(i).cast()));
        let xv: [__m512bh; X] = std::array::from_fn(|j| tail(x[j]));
        for (a, w) in a1.iter_mut().zip(w) {
            let wv = tail(w);
            for (a, &xv) in a.iter_mut().zip(&xv) {
                *a = _mm512_dpbf16_ps(*a, wv, xv);
            }
        }
    }
    std::array::from_fn(|q| {
        std::array::from_fn(|j| _mm512_reduce_add_ps(_mm512_add_ps(a0[q][j], a1[q][j])))
    })
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
