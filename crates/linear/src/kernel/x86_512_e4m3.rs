//! The AVX512-VBMI e4m3 matrix-vector kernel: four rows of FP8 weights (64 bytes per row per
//! iteration) against one activation row, with block scales; or one row, which a single
//! activation row runs so that each core reads one sequential stream (see
//! [`super::WeightElem::streams_rows`]).
//!
//! Every e4m3 value is exactly a bf16 value (3 mantissa bits fit in 7, exponents `2⁻⁹..2⁸` in
//! 8 bits), so its f32 pattern is two bytes followed by two zero bytes. Two `vpermi2b` look the
//! two bytes up in 128-entry tables indexed by the 7 magnitude bits (the instruction ignores
//! the eighth), one `vpternlogd` ORs the sign into the high byte, and two byte unpacks make
//! bf16 words that `<< 16` and `& 0xffff0000` widen exactly, as the bf16 kernels do: about
//! nine instructions per 64 weights, against the twenty-odd of the F16C route
//! (`vcvtph2ps`, which bounds the AVX2 kernel: `benchmarks/README.md`). Subnormals, ±0, ±448
//! and the NaN codes are entries of the tables, so the kernel needs no NaN scan of the
//! weights and no patching.
//!
//! The byte unpacks work within 128-bit lanes, so the activations are laid out per 64-value
//! block in the order the widened vectors come out ([`split`]), once per activation row.
//!
//! Each block of `cols` values (a multiple of 64) is summed in registers and multiplied by its
//! scale with one FMA per row: per product the same arithmetic as the AVX2 kernel (the exact
//! weight times the f32 activation, summed in f32), so products match HF's f32
//! dequantisation as closely.
//!
//! As everywhere in [`super`], the `#[target_feature]` function is private and reached only
//! through the safe entry point taking the [`Avx512Vbmi`] proof token.

use std::arch::x86_64::*;

use super::x86_512::Avx512Vbmi;

/// Values per row per iteration, and the width of the activation layout's blocks.
pub(crate) const STEP: usize = 64;

/// Byte `shift / 8` of the f32 pattern of every 7-bit e4m3 magnitude (the NaN code's entry is
/// the quiet NaN's).
const fn table(shift: u32) -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut m = 0;
    while m < 128 {
        t[m] = (super::e4m3_to_f32(m as u8).to_bits() >> shift) as u8;
        m += 1;
    }
    t
}

/// The high bytes (sign bit clear) and the next bytes of the f32 patterns.
static HIGH: [u8; 128] = table(24);
static LOW: [u8; 128] = table(16);

/// Where value `p` of a 64-value block of the laid-out activations comes from in the natural
/// order. The kernel's widened vectors are, in order: the even words of the low-half unpack,
/// its odd words, the even and odd words of the high-half unpack; unpack word `w` of half `h`
/// is byte `8h + w % 8` of 128-bit lane `w / 8`.
const fn source(p: usize) -> usize {
    let (quarter, d) = (p / 16, p % 16);
    let (half, parity) = (quarter / 2, quarter % 2);
    let word = 2 * d + parity;
    16 * (word / 8) + 8 * half + word % 8
}

/// `x` laid out for [`dot4_scaled`]: per block of [`STEP`] values in the kernel's order, the
/// last block padded with zeros (so every activation load is whole).
pub(crate) fn split(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len().next_multiple_of(STEP)];
    for (b, block) in out.chunks_exact_mut(STEP).enumerate() {
        for (p, o) in block.iter_mut().enumerate() {
            if let Some(&v) = x.get(b * STEP + source(p)) {
                *o = v;
            }
        }
    }
    out
}

/// The first `len` values of a [`split`] row in natural order again (for the blocks the kernel
/// does not take: scale blocks that are not a multiple of [`STEP`] wide).
pub(crate) fn unsplit(xs: &[f32], len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for (b, block) in xs.chunks_exact(STEP).enumerate() {
        for (p, &v) in block.iter().enumerate() {
            if let Some(o) = out.get_mut(b * STEP + source(p)) {
                *o = v;
            }
        }
    }
    out
}

/// An e4m3 weight element: one byte (`F8E4M3`, or the same byte checked for NaN codes).
pub(crate) trait E4m3Byte: Copy {}
impl E4m3Byte for float8::F8E4M3 {}
impl E4m3Byte for super::E4m3NoNan {}

/// Four e4m3 rows against `x` laid out by [`split`], with block scales (`scales[q][kb]` for
/// row `q`, block `kb` of `cols` values, `cols` a positive multiple of [`STEP`]); each row bit
/// for bit its [`dot_scaled`].
#[inline]
pub(crate) fn dot4_scaled<W: E4m3Byte>(
    t: Avx512Vbmi,
    w: [&[W]; 4],
    x: &[f32],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    dot_rows_scaled(t, w, x, scales, cols)
}

/// One row of [`dot4_scaled`], reading it once front to back: bit for bit the row's result
/// among four.
#[inline]
pub(crate) fn dot_scaled<W: E4m3Byte>(
    t: Avx512Vbmi,
    w: &[W],
    x: &[f32],
    scales: &[f32],
    cols: usize,
) -> f32 {
    dot_rows_scaled(t, [w], x, [scales], cols)[0]
}

/// `R` rows of [`dot4_scaled`]; each row's operations do not depend on `R`.
#[inline(always)]
fn dot_rows_scaled<W: E4m3Byte, const R: usize>(
    _: Avx512Vbmi,
    w: [&[W]; R],
    x: &[f32],
    scales: [&[f32]; R],
    cols: usize,
) -> [f32; R] {
    const { assert!(std::mem::size_of::<W>() == 1) };
    let len = w[0].len();
    assert!(w.iter().all(|r| r.len() == len), "rows of one length");
    assert!(
        x.len() >= len.next_multiple_of(STEP),
        "x laid out by `split`"
    );
    assert!(
        cols > 0 && cols.is_multiple_of(STEP),
        "blocks of whole steps"
    );
    let blocks = len.div_ceil(cols);
    assert!(
        scales.iter().all(|s| s.len() >= blocks),
        "one scale per block"
    );
    let bytes = w.map(|r| r.as_ptr() as *const u8);
    // SAFETY: the token proves AVX-512 F/BW and VBMI; the asserts bound every access: weight
    // loads stop at `len` (the last one masked), activation loads at `x.len()`.
    unsafe { dot_scaled_vbmi(bytes, len, x, scales, cols) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn dot_scaled_vbmi<const R: usize>(
    w: [*const u8; R],
    len: usize,
    x: &[f32],
    scales: [&[f32]; R],
    cols: usize,
) -> [f32; R] {
    let table = |t: &[u8; 128], half: usize| _mm512_loadu_si512(t.as_ptr().add(64 * half).cast());
    let (high0, high1) = (table(&HIGH, 0), table(&HIGH, 1));
    let (low0, low1) = (table(&LOW, 0), table(&LOW, 1));
    let sign = _mm512_set1_epi8(0x80u8 as i8);
    let upper = _mm512_set1_epi32(0xffff_0000u32 as i32);
    let px = x.as_ptr();
    let mut total = [_mm512_setzero_ps(); R];
    let (mut lo, mut kb) = (0, 0);
    while lo < len {
        let hi = (lo + cols).min(len);
        // Two accumulators per row, so consecutive FMAs of a row do not wait on each other.
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut i = lo;
        while i < hi {
            let xv: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(px.add(i + 16 * j)));
            let whole = i + STEP <= hi;
            let mask = if whole { !0 } else { (1u64 << (hi - i)) - 1 };
            for q in 0..R {
                super::x86::prefetch_ahead(w[q].add(i), STEP);
                let b = if whole {
                    _mm512_loadu_si512(w[q].add(i).cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask, w[q].add(i).cast())
                };
                let high = _mm512_permutex2var_epi8(high0, b, high1);
                // high | (b & 0x80): the sign into bit 7 of the high byte.
                let high = _mm512_ternarylogic_epi32::<0xf8>(high, b, sign);
                let low = _mm512_permutex2var_epi8(low0, b, low1);
                let words = [
                    _mm512_unpacklo_epi8(low, high),
                    _mm512_unpackhi_epi8(low, high),
                ];
                for (h, v) in words.into_iter().enumerate() {
                    let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                    let odd = _mm512_castsi512_ps(_mm512_and_si512(v, upper));
                    acc[q][0] = _mm512_fmadd_ps(even, xv[2 * h], acc[q][0]);
                    acc[q][1] = _mm512_fmadd_ps(odd, xv[2 * h + 1], acc[q][1]);
                }
            }
            i += STEP;
        }
        for q in 0..R {
            let block = _mm512_add_ps(acc[q][0], acc[q][1]);
            total[q] = _mm512_fmadd_ps(block, _mm512_set1_ps(scales[q][kb]), total[q]);
        }
        (lo, kb) = (hi, kb + 1);
    }
    total.map(|t| _mm512_reduce_add_ps(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_a_permutation_and_unsplit_inverts_it() {
        let mut seen = [false; STEP];
        for p in 0..STEP {
            assert!(!seen[source(p)], "{p}");
            seen[source(p)] = true;
        }
        for len in [0usize, 1, 63, 64, 65, 200] {
            let x: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            let s = split(&x);
            assert_eq!(s.len(), len.next_multiple_of(STEP));
            assert_eq!(s.iter().filter(|&&v| v != 0.0).count(), len);
            assert_eq!(unsplit(&s, len), x);
        }
    }

    #[test]
    fn tables_hold_the_exact_values() {
        for m in 0..128u8 {
            let bits = (HIGH[m as usize] as u32) << 24 | (LOW[m as usize] as u32) << 16;
            let want = super::super::e4m3_to_f32(m);
            assert!(
                bits == want.to_bits() || want.is_nan() && f32::from_bits(bits).is_nan(),
                "{m:#04x}"
            );
        }
    }
}
