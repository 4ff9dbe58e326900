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
//! products; the four groups' factors `c_g = s_g · dx_g` are formed in registers from the
//! row's f16 scales (`vcvtph2ps`) and the activations' `dx`, one `vpermps` spreads them over
//! those lanes, and one FMA per iteration scales and accumulates (no per-row pass over the
//! scales outside the kernel). What does not fill four groups goes to the AVX2
//! kernel, which reads natural order (8-bit) or the pair layout that follows the quads (4-bit)
//! from there.
//!
//! As everywhere in [`super`], the `#[target_feature]` functions are private and reached only
//! through safe entry points taking the [`Avx512Vnni`] proof token.

use std::arch::x86_64::*;

use half::f16;

use super::act8::{Params, GROUP, SUPER};
use super::x86;
use super::x86_512::Avx512Vnni;
use super::U4x2;

/// Groups per iteration.
const GROUPS: usize = 4;

/// How far ahead of its reads (bytes) the 4-bit and 6-bit rows prefetch their weights: about
/// one row at `K = 2048`, so a row's lines are requested while the previous row is summed.
/// Measured on the Zen 4 VM (`benchmarks/README.md`, "K-quants on our kernels"): the q4k /
/// q6k head product gained in most alternated rounds, whole decode steps within the VM's
/// noise; the 8-bit rows (twice the bytes per instruction) gained nothing and do not
/// prefetch.
const PREFETCH: usize = 1024;

/// `Σ_g c_g · Σ_{i in g} w_i · xq_i` over 8-bit weights with the row's f16 group scales `s`
/// and the activations' `dx` (`c_g = s_g · dx_g`, formed in registers four at a time); `c`
/// is room for the factors of the groups the AVX2 kernel takes.
pub(crate) fn dot_i8_q8(
    t: Avx512Vnni,
    w: &[i8],
    xq: &[i8],
    s: &[f16],
    dx: &[f32],
    c: &mut [f32],
) -> f32 {
    let k = xq.len().min(w.len());
    let groups = k.div_ceil(GROUP);
    assert!(
        s.len() >= groups && dx.len() >= groups,
        "one scale per group"
    );
    let quads = k / (GROUPS * GROUP);
    // SAFETY: the `Avx512Vnni` token exists, so detection found AVX-512 F/BW, VNNI and F16C;
    // the kernel reads `quads` whole iterations of `w`, `xq`, `s` and `dx`, all inside the
    // slices.
    let head = unsafe { dot_i8_q8_vnni(w.as_ptr(), xq.as_ptr(), s.as_ptr(), dx.as_ptr(), quads) };
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    if at == k {
        return head;
    }
    let params = Params::Group {
        scales: s,
        mins: &[],
    };
    params.factors(g..groups, dx, c);
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    head + x86::dot_i8_q8(avx2, &w[at..k], &xq[at..k], c)
}

/// The four groups' factors `s_g · dx_g` from group `g` on, spread by `spread` over the lanes
/// of a 16-lane vector.
///
/// # Safety
/// AVX-512 F and F16C must be available; `s` and `dx` must hold four values from `g` on.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn spread_factors(s: *const f16, dx: *const f32, g: usize, spread: __m512i) -> __m512 {
    let sw = _mm_cvtph_ps(_mm_loadl_epi64(s.add(g) as *const __m128i));
    let c = _mm_mul_ps(sw, _mm_loadu_ps(dx.add(g)));
    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(c))
}

/// # Safety
/// AVX-512 F/BW, VNNI and F16C must be available; `w` and `xq` must hold `quads · 128` bytes,
/// `s` and `dx` `quads · 4` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn dot_i8_q8_vnni(
    w: *const i8,
    xq: *const i8,
    s: *const f16,
    dx: *const f32,
    quads: usize,
) -> f32 {
    // Lanes 0..8 group 0, lanes 8..16 group 1 (of the low half of the four).
    let spread_lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let spread_hi = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let mut acc = [_mm512_setzero_ps(); 2];
    for q in 0..quads {
        let g = q * GROUPS;
        let scales = [
            spread_factors(s, dx, g, spread_lo),
            spread_factors(s, dx, g, spread_hi),
        ];
        for (half, acc) in acc.iter_mut().enumerate() {
            let at = (g + 2 * half) * GROUP;
            let wv = _mm512_loadu_si512(w.add(at) as *const _);
            let xv = _mm512_loadu_si512(xq.add(at) as *const _);
            let negative = _mm512_movepi8_mask(wv);
            let xs = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), xs);
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales[half], *acc);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// `Σ_g c_g · Σ_{i in g} q_i · xq_i + offset_g · sums_g` over 4-bit values `q`, activations
/// `x` laid out in [`Layout::Quads`](super::act8::Layout::Quads), the row's parameters `p`;
/// factors as in [`dot_i8_q8`] (for K-quants `s_g = d · sc_g`, the bytes widened in
/// registers and multiplied by the superblock's `d`).
pub(crate) fn dot_u4_q8(
    t: Avx512Vnni,
    w: &[U4x2],
    x: &super::act8::Q8Row,
    p: Params,
    c: &mut [f32],
) -> f32 {
    let (xq, dx, sums) = (&x.q[..], &x.scale[..], &x.sums[..]);
    let k = xq.len().min(2 * w.len());
    let groups = k.div_ceil(GROUP);
    let quads = k / (GROUPS * GROUP);
    assert!(dx.len() >= groups && sums.len() >= groups);
    let quad = match p {
        Params::Group { scales, mins } => {
            assert!(scales.len() >= groups, "one scale per group");
            assert!(mins.is_empty() || mins.len() >= groups);
            QuadParams::Group {
                scales: scales.as_ptr(),
                mins: (!mins.is_empty()).then_some(mins.as_ptr()),
            }
        }
        Params::Super { sc, mn, d, dmin } => {
            let supers = groups.div_ceil(SUPER);
            assert!(
                sc.len() >= groups && mn.len() >= groups,
                "one scale per group"
            );
            assert!(
                d.len() >= supers && dmin.len() >= supers,
                "one d per superblock"
            );
            QuadParams::Super {
                sc: sc.as_ptr(),
                mn: mn.as_ptr(),
                d: d.as_ptr(),
                dmin: dmin.as_ptr(),
            }
        }
    };
    // SAFETY: as in `dot_i8_q8`; `w` holds `quads · 64` bytes in those iterations, and the
    // parameters (checked above) and `sums` cover their `quads · 4` groups.
    let head = unsafe {
        let w = w.as_ptr() as *const u8;
        dot_u4_q8_vnni(w, xq.as_ptr(), quad, dx.as_ptr(), sums.as_ptr(), quads)
    };
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    if at == k {
        return head;
    }
    // After the quads the layout goes on in pairs, as the AVX2 kernel reads it.
    p.factors(g..groups, dx, c);
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    let rest = x86::dot_u4_q8(avx2, &w[at / 2..], &xq[at..k], c);
    head + rest + p.offsets(g..groups, sums, c)
}

/// [`Params`] as the VNNI loop reads them, four groups at a time.
#[derive(Clone, Copy)]
enum QuadParams {
    Group {
        scales: *const f16,
        mins: Option<*const f16>,
    },
    Super {
        sc: *const u8,
        mn: *const u8,
        d: *const f16,
        dmin: *const f16,
    },
}

/// Four bytes from `p` widened to f32 and multiplied by the f16 at `d`.
///
/// # Safety
/// AVX2, F16C must be available; `p` must hold 4 bytes, `d` one value.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bytes_times(p: *const u8, d: *const f16) -> __m128 {
    let b = _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32));
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128((*d).to_bits() as i32));
    let d = _mm_broadcastss_ps(d);
    _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepu8_epi32(b)), d)
}

impl QuadParams {
    /// The scales of groups `g..g + 4` (`g` a multiple of 4, so one superblock).
    ///
    /// # Safety
    /// AVX2, F16C must be available; the parameters must cover those groups.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales(self, g: usize) -> __m128 {
        match self {
            QuadParams::Group { scales, .. } => {
                _mm_cvtph_ps(_mm_loadl_epi64(scales.add(g) as *const __m128i))
            }
            QuadParams::Super { sc, d, .. } => bytes_times(sc.add(g), d.add(g / SUPER)),
        }
    }

    /// The offsets of groups `g..g + 4` (as [`QuadParams::scales`]), if the format has any.
    ///
    /// # Safety
    /// As [`QuadParams::scales`].
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn offsets(self, g: usize) -> Option<__m128> {
        match self {
            QuadParams::Group { mins, .. } => {
                mins.map(|m| _mm_cvtph_ps(_mm_loadl_epi64(m.add(g) as *const __m128i)))
            }
            QuadParams::Super { mn, dmin, .. } => {
                let m = bytes_times(mn.add(g), dmin.add(g / SUPER));
                Some(_mm_sub_ps(_mm_setzero_ps(), m))
            }
        }
    }
}

/// The scaled products of quad `q` (16 lanes, four per group).
///
/// # Safety
/// As [`dot_u4_q8_vnni`], for quad `q`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2")]
unsafe fn u4_quad(w: *const u8, xq: *const i8, p: QuadParams, dx: *const f32, q: usize) -> __m512 {
    // Lanes 4g..4g + 4 hold group g.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let nib = _mm512_set1_epi8(15);
    let b = _mm512_loadu_si512(w.add(q * GROUPS * GROUP / 2) as *const _);
    let lo = _mm512_and_si512(b, nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(b), nib);
    // The quad layout: the even values of the four groups, then their odd values.
    let x = xq.add(q * GROUPS * GROUP);
    let xe = _mm512_loadu_si512(x as *const _);
    let xo = _mm512_loadu_si512(x.add(GROUPS * GROUP / 2) as *const _);
    let sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe), hi, xo);
    let g = q * GROUPS;
    let c = _mm_mul_ps(p.scales(g), _mm_loadu_ps(dx.add(g)));
    _mm512_mul_ps(
        _mm512_cvtepi32_ps(sums),
        _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(c)),
    )
}

/// # Safety
/// AVX-512 F/BW, VNNI, F16C, AVX2 and FMA must be available; `w` must hold `quads · 64`
/// bytes, `xq` `quads · 128`, and `p`, `dx` and `sums` must cover `quads · 4` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn dot_u4_q8_vnni(
    w: *const u8,
    xq: *const i8,
    p: QuadParams,
    dx: *const f32,
    sums: *const f32,
    quads: usize,
) -> f32 {
    // Two accumulators in named registers (an array indexed by `q % 2` went through the
    // stack): consecutive adds do not wait on each other.
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut q = 0;
    while q + 1 < quads {
        // Two lines per two quads, `PREFETCH` ahead (a hint: never faults, even past the row).
        let ahead = w.wrapping_add(q * 64 + PREFETCH) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(ahead);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
        acc0 = _mm512_add_ps(acc0, u4_quad(w, xq, p, dx, q));
        acc1 = _mm512_add_ps(acc1, u4_quad(w, xq, p, dx, q + 1));
        q += 2;
    }
    if q < quads {
        acc0 = _mm512_add_ps(acc0, u4_quad(w, xq, p, dx, q));
    }
    let mut total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    let mut offset_acc = _mm_setzero_ps();
    for q in 0..quads {
        let g = q * GROUPS;
        match p.offsets(g) {
            Some(m) => offset_acc = _mm_fmadd_ps(m, _mm_loadu_ps(sums.add(g)), offset_acc),
            None => break,
        }
    }
    let pair = _mm_add_ps(offset_acc, _mm_movehl_ps(offset_acc, offset_acc));
    total += _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)));
    total
}

/// `Σ_s c_s · Σ_{i in s} (q_i − 32) · xq_i` over a 6-bit row (`act8`'s chunk layout,
/// activations in natural order), `c_s = d · sc_s · dx_g` formed in registers: per chunk of
/// 64 values one 256-bit load of low nibbles (spread to 64 bytes), one 128-bit load of high
/// bit pairs (broadcast to the four 128-bit lanes, each shifted by its own count), one
/// `vpdpbusd` for `Σ q · xq` and one for `Σ 32 · xq`; lanes `4s..4s + 4` hold sub-block `s`.
pub(crate) fn dot_u6_q8(
    _: Avx512Vnni,
    w: &[u8],
    xq: &[i8],
    p: super::act8::SixBit,
    dx: &[f32],
) -> f32 {
    use super::act8::{U6_CHUNK, U6_CHUNK_BYTES};
    let chunks = (xq.len() / U6_CHUNK).min(w.len() / U6_CHUNK_BYTES);
    assert!(
        p.sc.len() >= 4 * chunks && p.d.len() >= chunks.div_ceil(4) && dx.len() >= 2 * chunks,
        "parameters for every chunk"
    );
    // SAFETY: the `Avx512Vnni` token exists, so detection found AVX-512 F/BW, VNNI and F16C;
    // the kernel reads `chunks` whole chunks of `w` and `xq` and their parameters, inside
    // the slices (checked above).
    unsafe {
        dot_u6_q8_vnni(
            w.as_ptr(),
            xq.as_ptr(),
            (p.sc.as_ptr(), p.d.as_ptr()),
            dx.as_ptr(),
            chunks,
        )
    }
}

/// # Safety
/// AVX-512 F/BW, VNNI, F16C, AVX2 and FMA must be available; `w` must hold `chunks · 48`
/// bytes, `xq` `chunks · 64`, the scales `chunks · 4`, the `d`s `ceil(chunks / 4)` and `dx`
/// `chunks · 2` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn dot_u6_q8_vnni(
    w: *const u8,
    xq: *const i8,
    (sc, d): (*const i8, *const f16),
    dx: *const f32,
    chunks: usize,
) -> f32 {
    let (nib, pair, k32) = (
        _mm512_set1_epi8(0xF),
        _mm512_set1_epi8(3),
        _mm512_set1_epi8(32),
    );
    let shifts = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let chunk = |ch: usize| -> __m512 {
        let p = w.add(ch * 48);
        let l = _mm256_loadu_si256(p as *const __m256i);
        let lo = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l), _mm256_srli_epi16::<4>(l));
        let h = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(32) as *const __m128i));
        let h = _mm512_and_si512(_mm512_srlv_epi32(h, shifts), pair);
        let q = _mm512_or_si512(_mm512_and_si512(lo, nib), _mm512_slli_epi16::<4>(h));
        let x = _mm512_loadu_si512(xq.add(ch * 64) as *const _);
        let zero = _mm512_setzero_si512();
        let sums = _mm512_sub_epi32(
            _mm512_dpbusd_epi32(zero, q, x),
            _mm512_dpbusd_epi32(zero, k32, x),
        );
        // The four sub-blocks' factors: d · sc · dx (two sub-blocks per group of 32).
        let s = _mm_cvtsi32_si128(std::ptr::read_unaligned(sc.add(4 * ch) as *const i32));
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128((*d.add(ch / 4)).to_bits() as i32));
        let (a, b) = (*dx.add(2 * ch), *dx.add(2 * ch + 1));
        let c = _mm_mul_ps(
            _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepi8_epi32(s)), _mm_broadcastss_ps(d)),
            _mm_setr_ps(a, a, b, b),
        );
        _mm512_mul_ps(
            _mm512_cvtepi32_ps(sums),
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(c)),
        )
    };
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut ch = 0;
    while ch + 1 < chunks {
        let ahead = w.wrapping_add(ch * 48 + PREFETCH) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(ahead);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
        acc0 = _mm512_add_ps(acc0, chunk(ch));
        acc1 = _mm512_add_ps(acc1, chunk(ch + 1));
        ch += 2;
    }
    if ch < chunks {
        acc0 = _mm512_add_ps(acc0, chunk(ch));
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}
