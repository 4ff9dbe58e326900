//! AVX-512F `exp` for the elementwise steps ([`crate::elementwise`]): SwiGLU's SiLU and the
//! online softmax's `exp(s·scale - m)` with its row sum, 16 lanes at a time.
//!
//! Cephes' `expf` scheme: `n = round(x·log2 e)`, `r = x - n·ln 2` (ln 2 split in a high part
//! exact in 9 bits and a low correction, so `n·ln2_hi` is exact), `e^r ≈ 1 + r + r²·P(r)` with
//! Cephes' degree-5 `P` on `|r| ≤ ln 2 / 2`, then `· 2^n` by `vscalefps`, which also gives
//! the gradual underflow to 0 and the overflow to +inf. Within 2 ulp of `exp` over the
//! normal range (tested against an f64 oracle). Inputs are clamped to `[-104, 128]` first
//! (below: 0, above: +inf, as `exp` gives); `vmaxps`/`vminps` with the input as second
//! operand pass NaN through.
//!
//! As everywhere in [`super`], the `#[target_feature]` functions are private and reached only
//! through the safe entry points taking the [`Avx512F`] proof token.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::x86_512::Avx512F;

/// Below this `exp` is 0 in f32 (`e^-104 < 2^-149`), above it +inf.
const LOW: f32 = -104.0;
const HIGH: f32 = 128.0;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial, highest degree first.
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes writes 5.0000001201e-1, which is 0.5 in f32
];

/// `exp` of 16 lanes.
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_set1_ps(HIGH), _mm512_max_ps(_mm512_set1_ps(LOW), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(P[0]);
    for &c in &P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    _mm512_scalef_ps(_mm512_add_ps(y, _mm512_set1_ps(1.0)), n)
}

/// The lanes of a 16-value block at `i` of a slice of `len` values that exist.
fn mask(i: usize, len: usize) -> __mmask16 {
    let left = len - i;
    if left >= 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

/// `out[i] = silu(gate[i]) · up[i]`, `silu(g) = g / (1 + exp(-g))`, every element of `out`
/// written.
pub(crate) fn silu_mul(_: Avx512F, gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    // SAFETY: the token proves AVX-512F; every access is masked to the slices' lengths.
    unsafe { silu_mul_avx512(gate, up, out) }
}

#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    let one = _mm512_set1_ps(1.0);
    for i in (0..gate.len()).step_by(16) {
        let m = mask(i, gate.len());
        let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
        let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        let dst = out.as_mut_ptr().add(i).cast::<f32>();
        _mm512_mask_storeu_ps(dst, m, _mm512_mul_ps(silu, u));
    }
}

/// `max_i xs[i] · scale` (-inf for an empty slice).
pub(crate) fn scaled_max(_: Avx512F, xs: &[f32], scale: f32) -> f32 {
    // SAFETY: the token proves AVX-512F; every access is masked to the slice's length.
    unsafe { scaled_max_avx512(xs, scale) }
}

#[target_feature(enable = "avx512f")]
unsafe fn scaled_max_avx512(xs: &[f32], scale: f32) -> f32 {
    let (s, neg_inf) = (_mm512_set1_ps(scale), _mm512_set1_ps(f32::NEG_INFINITY));
    let mut acc = neg_inf;
    for i in (0..xs.len()).step_by(16) {
        let m = mask(i, xs.len());
        let x = _mm512_mask_loadu_ps(neg_inf, m, xs.as_ptr().add(i));
        acc = _mm512_max_ps(acc, _mm512_mul_ps(x, s));
    }
    _mm512_reduce_max_ps(acc)
}

/// `out[i] = exp(xs[i] · scale - shift)`; returns `Σ out[i]` (summed in 16 lanes, then
/// across them).
pub(crate) fn exp_sum(_: Avx512F, xs: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(xs.len(), out.len());
    // SAFETY: the token proves AVX-512F; every access is masked to the slices' lengths.
    unsafe { exp_sum_avx512(xs, scale, shift, out) }
}

#[target_feature(enable = "avx512f")]
unsafe fn exp_sum_avx512(xs: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
    let (s, b) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
    let mut sum = _mm512_setzero_ps();
    for i in (0..xs.len()).step_by(16) {
        let m = mask(i, xs.len());
        let x = _mm512_maskz_loadu_ps(m, xs.as_ptr().add(i));
        let e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_mul_ps(x, s), b)));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, e);
        sum = _mm512_add_ps(sum, e);
    }
    _mm512_reduce_add_ps(sum)
}
