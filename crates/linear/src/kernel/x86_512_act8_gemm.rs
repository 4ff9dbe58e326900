//! The prefill-sized product (more than [`crate::GEMV_MAX_ROWS`] activation rows) of 8-bit
//! and 4-bit weights with 8-bit activations on AVX512-VNNI: the arithmetic of
//! [`super::act8`] (each group of 32 activations rounded to i8 with its own `dx`, integer sums
//! exact, one f32 factor per group), blocked so that `vpdpbusd` does the work.
//!
//! The row-by-row kernel spends as many instructions unpacking and scaling as multiplying; a
//! GEMM amortises both:
//! - **panels**: a task repacks 32 weight rows once into bytes laid out for `vpdpbusd`: the
//!   vector for (group `g`, quad `j`, half `v`) holds, in lane `l`, the four values
//!   `32g + 4j .. 32g + 4j + 4` of weight row `16v + l`. Nibbles are unpacked there, once, and
//!   8-bit weights are stored as `w + 128` (a valid u8), corrected below.
//! - **tiles**: four activation rows at a time, each quad of each row broadcast to all lanes
//!   (`{1to16}`), so one instruction adds four products into 16 output rows, and a group's
//!   eight quads accumulate in one i32 register per (activation row, half) before a single
//!   conversion and FMA with the weight rows' group scales times `dx`.
//!
//! Per group and activation row that is 16 `vpdpbusd` plus 2 conversions, 2 products and 2
//! FMAs for 1024 multiply-adds; the f32 GEMM over widened weights needs 64 FMAs.
//!
//! With `w + 128` stored, `Σ (w + 128) · xq = Σ w · xq + 128 · Σ xq`; the last term is the same
//! for every weight row, so it is subtracted once per (activation row, group) in integers:
//! the sums stay exact.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::act8::{q8_row_natural, GROUP};
use super::x86_512::Avx512Vnni;
use super::U4x2;

/// Weight rows per panel (two 16-lane halves).
const NR: usize = 32;
/// Activation rows per tile.
const MR: usize = 4;
/// Quads (four values) per group.
const QUADS: usize = GROUP / 4;

/// The stored weights a panel is cut from: `[N, K]` row-major.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// Signed 8-bit values.
    I8(&'a [i8]),
    /// 4-bit values `0..=15`, `K / 2` pairs per row.
    U4(&'a [U4x2]),
}

/// `xs` (`m` rows of `K` f32) times the `[N, K]` weights `w` with the f32 group scales
/// `scales` `[N, ceil(K / 32)]`: `Σ_g s[r, g] · dx[j, g] · Σ_{c in g} w[r, c] · xq[j, c]`,
/// `[m, N]` row-major. (4-bit offsets are not included: the caller adds them.)
pub(crate) fn matmul(
    t: Avx512Vnni,
    w: Weights,
    n: usize,
    k: usize,
    scales: &[f32],
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    let groups = k.div_ceil(GROUP);
    assert_eq!(xs.len(), m * k, "act8 GEMM: m rows of K");
    assert_eq!(scales.len(), n * groups, "act8 GEMM: one scale per group");
    if n == 0 || m == 0 {
        return vec![0.0; m * n];
    }
    let acts = Activations::round(xs, m, k, matches!(w, Weights::I8(_)));
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(NR))
        .into_par_iter()
        .map(|b| {
            let rows = b * NR..((b + 1) * NR).min(n);
            let panel = Panel::pack(t, w, rows, k, scales);
            let mut out = vec![0f32; m * NR];
            for (j0, out) in (0..m).step_by(MR).zip(out.chunks_mut(MR * NR)) {
                let tile = MR.min(m - j0);
                // SAFETY: the token proves AVX-512 F/BW and VNNI; the panel holds `groups`
                // groups of both halves, `acts` holds rows `j0..j0 + tile` of `groups` groups,
                // and `out` holds `tile` rows of `NR`.
                unsafe {
                    match tile {
                        4 => tile_vnni::<4>(&panel, &acts, j0, out),
                        3 => tile_vnni::<3>(&panel, &acts, j0, out),
                        2 => tile_vnni::<2>(&panel, &acts, j0, out),
                        _ => tile_vnni::<1>(&panel, &acts, j0, out),
                    }
                }
            }
            out
        })
        .collect();
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
        for (b, block) in blocks.iter().enumerate() {
            let cols = &mut row[b * NR..((b + 1) * NR).min(n)];
            let len = cols.len();
            cols.copy_from_slice(&block[j * NR..j * NR + len]);
        }
    });
    out
}

/// The activation rows rounded per group ([`q8_row_natural`]), each padded with zeros to whole
/// groups.
struct Activations {
    groups: usize,
    /// `[m, groups · 32]`.
    q: Vec<i8>,
    /// `[m, groups]`: `dx`.
    dx: Vec<f32>,
    /// `[m, groups]`: `128 · Σ xq` over the group (the `w + 128` correction; zeros for 4-bit
    /// weights).
    correction: Vec<i32>,
}

impl Activations {
    fn round(xs: &[f32], m: usize, k: usize, signed_weights: bool) -> Activations {
        let groups = k.div_ceil(GROUP);
        let rows: Vec<_> = xs.par_chunks_exact(k).map(q8_row_natural).collect();
        let mut q = vec![0i8; m * groups * GROUP];
        let mut dx = Vec::with_capacity(m * groups);
        let mut correction = vec![0i32; m * groups];
        for (j, row) in rows.iter().enumerate() {
            q[j * groups * GROUP..][..k].copy_from_slice(&row.q);
            dx.extend_from_slice(&row.scale);
            if signed_weights {
                for (c, g) in correction[j * groups..][..groups]
                    .iter_mut()
                    .zip(row.q.chunks(GROUP))
                {
                    *c = 128 * g.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
        Activations {
            groups,
            q,
            dx,
            correction,
        }
    }
}

/// 32 weight rows repacked for `vpdpbusd` (see the module documentation), rows past the
/// matrix zero.
struct Panel {
    /// `[groups, QUADS, 2, 16]` quads of bytes (little-endian).
    values: Vec<u32>,
    /// `[groups, 32]`: the rows' group scales.
    scales: Vec<f32>,
}

impl Panel {
    fn pack(
        t: Avx512Vnni,
        w: Weights,
        rows: std::ops::Range<usize>,
        k: usize,
        scales: &[f32],
    ) -> Panel {
        let groups = k.div_ceil(GROUP);
        let mut values = vec![0u32; groups * QUADS * NR];
        let mut s = vec![0f32; groups * NR];
        for (i, r) in rows.enumerate() {
            // Quad `q` of the row goes to lane `i % 16` of vector `(q, half i / 16)`.
            let (half, lane) = (i / 16, i % 16);
            let slots = values[half * 16 + lane..].iter_mut().step_by(2 * 16);
            // SAFETY: the token proves AVX-512 F/BW (the attribute only lets the compiler
            // vectorise with them); the slices bound every access.
            unsafe { pack_row(t, w, r, k, slots) };
            for g in 0..groups {
                s[g * NR + i] = scales[r * groups + g];
            }
        }
        Panel { values, scales: s }
    }
}

/// Row `r`'s quads as `vpdpbusd`'s unsigned bytes (8-bit values offset by 128), one `u32`
/// (little-endian) per slot, zeros past `k`.
///
/// # Safety
/// AVX-512 F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_row<'a>(
    _t: Avx512Vnni,
    w: Weights,
    r: usize,
    k: usize,
    slots: impl Iterator<Item = &'a mut u32>,
) {
    match w {
        Weights::I8(w) => {
            let row = &w[r * k..(r + 1) * k];
            for (slot, quad) in slots.zip(row.chunks(4)) {
                // (Padding past `k` meets zero activations.)
                let mut b = [0u8; 4];
                for (b, &v) in b.iter_mut().zip(quad) {
                    *b = (v as u8) ^ 0x80;
                }
                *slot = u32::from_le_bytes(b);
            }
        }
        Weights::U4(w) => {
            let row = &w[r * k / 2..(r + 1) * k / 2];
            for (slot, pair) in slots.zip(row.chunks(2)) {
                // Two bytes of nibble pairs -> four bytes of values.
                let x = pair[0].0 as u32 | (pair.get(1).map_or(0, |p| p.0) as u32) << 8;
                *slot = (x & 0xF) | (x & 0xF0) << 4 | (x & 0xF00) << 8 | (x & 0xF000) << 12;
            }
        }
    }
}

/// Rows `j0..j0 + T` of `acts` times the panel, into `out` (`T` rows of [`NR`]).
///
/// # Safety
/// AVX-512 F/BW and VNNI must be available; the panel and `acts` must hold the same number
/// of groups, `acts` rows `j0..j0 + T`, `out` `T · NR` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const T: usize>(panel: &Panel, acts: &Activations, j0: usize, out: &mut [f32]) {
    let groups = acts.groups;
    debug_assert!(panel.values.len() == groups * QUADS * NR && out.len() >= T * NR);
    debug_assert!(acts.dx.len() >= (j0 + T) * groups);
    let w = panel.values.as_ptr() as *const u8;
    let x = acts.q.as_ptr().add(j0 * groups * GROUP);
    let row = groups * GROUP;
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    for g in 0..groups {
        let mut sums = [[_mm512_setzero_si512(); 2]; T];
        for j in 0..QUADS {
            let at = (g * QUADS + j) * 2 * 64;
            let w0 = _mm512_loadu_si512(w.add(at) as *const _);
            let w1 = _mm512_loadu_si512(w.add(at + 64) as *const _);
            for (i, sums) in sums.iter_mut().enumerate() {
                let quad = (x.add(i * row + g * GROUP + 4 * j) as *const i32).read_unaligned();
                let xb = _mm512_set1_epi32(quad);
                sums[0] = _mm512_dpbusd_epi32(sums[0], w0, xb);
                sums[1] = _mm512_dpbusd_epi32(sums[1], w1, xb);
            }
        }
        let s = [
            _mm512_loadu_ps(panel.scales.as_ptr().add(g * NR)),
            _mm512_loadu_ps(panel.scales.as_ptr().add(g * NR + 16)),
        ];
        for (i, (acc, sums)) in acc.iter_mut().zip(&sums).enumerate() {
            let at = (j0 + i) * groups + g;
            let dx = _mm512_set1_ps(*acts.dx.get_unchecked(at));
            let correction = _mm512_set1_epi32(*acts.correction.get_unchecked(at));
            for h in 0..2 {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[h], correction));
                acc[h] = _mm512_fmadd_ps(_mm512_mul_ps(exact, s[h]), dx, acc[h]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(i * NR), acc[0]);
        _mm512_storeu_ps(out.as_mut_ptr().add(i * NR + 16), acc[1]);
    }
}
