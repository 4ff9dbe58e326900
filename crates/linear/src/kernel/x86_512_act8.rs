//! The AVX512-VNNI rows of the 8-bit and 4-bit products with 8-bit activations
//! ([`super::act8`]): the same sums as the AVX2 kernels in [`super::x86`], four groups of 32
//! values per iteration instead of one or two.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds each four products into an i32 lane
//! exactly (no i16 intermediate, no saturation), replacing AVX2's `maddubs` + `madd` pair:
//! - 8-bit weights are signed, so the kernel feeds `|w|` (at most 128, a valid u8) and `xq`
//!   negated where `w < 0` (`|xq| ≤ 127`, so negation is exact): `|w| · (±xq) = w · xq`;
//! - 4-bit values are already unsigned nibbles: the low and high nibbles of 64 bytes meet the
//!   even and odd activations of four groups, which `act8::q8_row` lays out for this kernel
//!   as 64 even values then 64 odd ones (`act8::Layout::Quads`).
//!
//! Lanes `8g..8g + 8` (8-bit) or `4g..4g + 4` (4-bit) of the i32 sum hold group `g`'s
//! products; one `vpermps` spreads the four groups' factors `c_g` over those lanes, and one
//! FMA per iteration scales and accumulates. What does not fill four groups goes to the AVX2
//! kernel, which reads natural order (8-bit) or the pair layout that follows the quads (4-bit)
//! from there.
//!
//! As everywhere in [`super`], the `#[target_feature]` functions are private and reached only
//! through safe entry points taking the [`Avx512Vnni`] proof token.

use std::arch::x86_64::*;

use super::act8::GROUP;
use super::x86;
use super::x86_512::Avx512Vnni;
use super::U4x2;

/// Groups per iteration.
const GROUPS: usize = 4;

/// [`x86::dot_i8_q8`] with `vpdpbusd`: `Σ_g c_g · Σ_{i in g} w_i · xq_i`.
pub(crate) fn dot_i8_q8(t: Avx512Vnni, w: &[i8], xq: &[i8], c: &[f32]) -> f32 {
    let k = xq.len().min(w.len());
    assert!(c.len() >= k.div_ceil(GROUP), "one scale per group");
    let quads = k / (GROUPS * GROUP);
    // SAFETY: the `Avx512Vnni` token exists, so detection found AVX-512 F/BW and VNNI; the
    // kernel reads `quads` whole iterations of `w`, `xq` and `c`, all inside the slices.
    let head = unsafe { dot_i8_q8_vnni(w.as_ptr(), xq.as_ptr(), c.as_ptr(), quads) };
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    head + x86::dot_i8_q8(avx2, &w[at..k], &xq[at..k], &c[g..])
}

/// # Safety
/// AVX-512 F/BW and VNNI must be available; `w` and `xq` must hold `quads · 128` bytes and `c`
/// `quads · 4` factors.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_i8_q8_vnni(w: *const i8, xq: *const i8, c: *const f32, quads: usize) -> f32 {
    // Lanes 0..8 group 0, lanes 8..16 group 1 (of the low half of the four).
    let spread_lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let spread_hi = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let mut acc = [_mm512_setzero_ps(); 2];
    for q in 0..quads {
        let cv = _mm512_castps128_ps512(_mm_loadu_ps(c.add(q * GROUPS)));
        let spreads = [spread_lo, spread_hi];
        for (half, acc) in acc.iter_mut().enumerate() {
            let at = (q * GROUPS + 2 * half) * GROUP;
            let wv = _mm512_loadu_si512(w.add(at) as *const _);
            let xv = _mm512_loadu_si512(xq.add(at) as *const _);
            let negative = _mm512_movepi8_mask(wv);
            let xs = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), xs);
            let scale = _mm512_permutexvar_ps(spreads[half], cv);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, *acc);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// [`x86::dot_u4_q8`] with `vpdpbusd`: `Σ_g c_g · Σ_{i in g} q_i · xq_i` over 4-bit values
/// `q` and activations in `act8::q8_row`'s [`Layout::Quads`](super::act8::Layout::Quads).
pub(crate) fn dot_u4_q8(t: Avx512Vnni, w: &[U4x2], xq: &[i8], c: &[f32]) -> f32 {
    let k = xq.len().min(2 * w.len());
    assert!(c.len() >= k.div_ceil(GROUP), "one scale per group");
    let quads = k / (GROUPS * GROUP);
    // SAFETY: as in `dot_i8_q8`; `w` holds `quads · 64` bytes in those iterations.
    let head = unsafe { dot_u4_q8_vnni(w.as_ptr() as *const u8, xq.as_ptr(), c.as_ptr(), quads) };
    // After the quads the layout goes on in pairs, as the AVX2 kernel reads it.
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    head + x86::dot_u4_q8(avx2, &w[at / 2..], &xq[at..k], &c[g..])
}

/// # Safety
/// AVX-512 F/BW and VNNI must be available; `w` must hold `quads · 64` bytes, `xq`
/// `quads · 128` and `c` `quads · 4` factors.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_u4_q8_vnni(w: *const u8, xq: *const i8, c: *const f32, quads: usize) -> f32 {
    // Lanes 4g..4g + 4 hold group g.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let nib = _mm512_set1_epi8(15);
    let mut acc = [_mm512_setzero_ps(); 2];
    for q in 0..quads {
        let b = _mm512_loadu_si512(w.add(q * GROUPS * GROUP / 2) as *const _);
        let lo = _mm512_and_si512(b, nib);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(b), nib);
        // The quad layout: the even values of the four groups, then their odd values.
        let x = xq.add(q * GROUPS * GROUP);
        let xe = _mm512_loadu_si512(x as *const _);
        let xo = _mm512_loadu_si512(x.add(GROUPS * GROUP / 2) as *const _);
        let sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe), hi, xo);
        let scale = _mm512_permutexvar_ps(
            spread,
            _mm512_castps128_ps512(_mm_loadu_ps(c.add(q * GROUPS))),
        );
        // Alternate accumulators: consecutive FMAs do not wait on each other.
        let a = &mut acc[q % 2];
        *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, *a);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}
