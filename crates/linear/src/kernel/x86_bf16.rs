//! The AVX512-BF16 matrix-vector kernel: bf16 weights against activations rounded to bf16,
//! two multiply-adds per f32 lane in one `vdpbf16ps` (`acc[l] += a[2l]·b[2l] +
//! a[2l+1]·b[2l+1]`, the products exact in f32), reading the rows as stored (32 bf16 per
//! 512-bit load, the last load masked). Against the AVX2 bf16 kernel it drops the widening
//! instructions per weight byte, which is what bounds a matrix-vector product of several
//! activation rows on few cores (`benchmarks/README.md`).
//!
//! (A packed GEMM on `vdpbf16ps` was measured too and dropped: on the Zen 5 dev machine the
//! instruction issues every other cycle, so its 64 flops per issue run at half the rate of
//! two 512-bit f32 FMAs per cycle, and [`super::x86_512`]'s f32 GEMM is the faster.)
//!
//! As in [`super::x86`], every `#[target_feature]` function is private and reached only
//! through a safe wrapper taking the [`Avx512Bf16`] proof token, which only
//! [`Avx512Bf16::detect`] makes.

use half::bf16;
use std::arch::x86_64::*;

use super::x86_512::Avx512F;

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

/// Four bf16 rows (raw bits) against one bf16 activation row `x`, all of length `x.len()`:
/// `Σ_i w[q][i] · x[i]` accumulated in f32.
#[inline]
pub(crate) fn dot4(_: Avx512Bf16, w: [&[u16]; 4], x: &[u16]) -> [f32; 4] {
    for r in &w {
        assert!(r.len() >= x.len());
    }
    // SAFETY: the token proves AVX-512 F/BW/BF16; the rows hold at least `x.len()` values.
    unsafe { dot4_avx512(w, x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dot4_avx512(w: [&[u16]; 4], x: &[u16]) -> [f32; 4] {
    let k = x.len();
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= k {
        let xv = as_bh(_mm512_loadu_si512(x.as_ptr().add(i).cast()));
        for q in 0..4 {
            let wv = as_bh(_mm512_loadu_si512(w[q].as_ptr().add(i).cast()));
            acc[q] = _mm512_dpbf16_ps(acc[q], wv, xv);
        }
        i += 32;
    }
    if i < k {
        // The tail: masked loads read only the row's last `k - i` values and zero the rest.
        let mask: __mmask32 = (1u32 << (k - i)) - 1;
        let xv = as_bh(_mm512_maskz_loadu_epi16(mask, x.as_ptr().add(i).cast()));
        for q in 0..4 {
            let wv = as_bh(_mm512_maskz_loadu_epi16(mask, w[q].as_ptr().add(i).cast()));
            acc[q] = _mm512_dpbf16_ps(acc[q], wv, xv);
        }
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
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
