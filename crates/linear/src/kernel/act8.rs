//! Matrix-vector products of 4-bit and 8-bit weights with 8-bit activations, as llama.cpp
//! computes its block formats: each group of 32 activations is rounded to i8 with its own
//! scale (`dx = max |x| / 127`, `xq = round(x / dx)`), the products of the integer weights
//! with them are summed exactly in integers, and each group's integer sum is scaled once:
//! `Σ_g s_g · dx_g · Σ_{c in g} q_c · xq_c`. That is 2-3x fewer operations per weight than
//! widening each weight to f32, which is what keeps a quantised row's product near the speed
//! of memory; the price is the activations' rounding (a relative error of about
//! `1 / (127 · sqrt(12))` per activation, under the 8-bit weights' own and far under the
//! 4-bit ones').

use half::f16;
use rayon::prelude::*;

use super::{portable, U4x2, TASK_BYTES};
use crate::Isa;

/// Values per group: the 4-bit format's (`crate::QUANT_GROUP`).
pub(crate) const GROUP: usize = 32;

/// One activation row rounded to 8 bits per group, laid out for the kernels: full groups in
/// blocks of [`Layout`]'s widths (four, two or one groups), each block the even values of its
/// groups in order, then their odd values (16 values per group each: `[A even | B even |
/// A odd | B odd]` for a pair), a last partial group in natural order. (The weights hold values
/// `2i` and `2i + 1` in the low and high nibble of byte `i`, so even values meet the low
/// nibbles.)
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `dx` per group.
    pub scale: Vec<f32>,
    /// The sum of the unrounded values per group (what a 4-bit row's offsets multiply).
    pub sums: Vec<f32>,
}

/// How [`q8_row`] blocks the full groups: pairs (the AVX2 kernel's two groups per 32-byte
/// load), or quads first (the VNNI kernel's four groups per 64-byte load), then pairs; an odd
/// group last alone. Every block starts at a group index that is a multiple of its width, so a
/// kernel can hand the rest of a row to a narrower one at any multiple of four groups.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Layout {
    Pairs,
    Quads,
}

impl Layout {
    /// The layout `isa`'s 4-bit kernel reads.
    pub(crate) fn of(isa: Isa) -> Layout {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512_vnni().is_some() {
            return Layout::Quads;
        }
        let _ = isa;
        Layout::Pairs
    }

    /// `(first group, groups)` of each block over `full` full groups.
    fn blocks(self, full: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut g = 0;
        std::iter::from_fn(move || {
            let width = match full - g {
                0 => return None,
                left if left >= 4 && self == Layout::Quads => 4,
                1 => 1,
                _ => 2,
            };
            g += width;
            Some((g - width, width))
        })
    }
}

/// Every other value of `g` from `parity` on.
fn evens_odds(g: &[i8], parity: usize) -> impl Iterator<Item = i8> + '_ {
    g.iter().skip(parity).step_by(2).copied()
}

/// `x` rounded to 8 bits per group of [`GROUP`], in natural order, with each group's `dx`
/// (the layout the 8-bit weights' kernel reads).
pub(crate) fn q8_row_natural(x: &[f32]) -> Q8Row {
    let groups = x.len().div_ceil(GROUP);
    let mut scale = Vec::with_capacity(groups);
    let mut sums = Vec::with_capacity(groups);
    let mut q = Vec::with_capacity(x.len());
    for g in x.chunks(GROUP) {
        let amax = g.iter().fold(0f32, |a, v| a.max(v.abs()));
        let dx = amax / 127.0;
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        scale.push(dx);
        sums.push(g.iter().sum::<f32>());
        q.extend(g.iter().map(|v| {
            let t = v * inv;
            ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127) as i8
        }));
    }
    Q8Row { q, scale, sums }
}

/// [`Q8Row`] of `x` in the 4-bit kernels' `layout` (see [`Q8Row`]).
pub(crate) fn q8_row(x: &[f32], layout: Layout) -> Q8Row {
    let Q8Row {
        q: rounded,
        scale,
        sums,
    } = q8_row_natural(x);
    let full = x.len() / GROUP;
    let mut q = Vec::with_capacity(x.len());
    for (g, width) in layout.blocks(full) {
        let block = &rounded[g * GROUP..(g + width) * GROUP];
        for parity in 0..2 {
            for group in block.chunks_exact(GROUP) {
                q.extend(evens_odds(group, parity));
            }
        }
    }
    q.extend_from_slice(&rounded[full * GROUP..]);
    Q8Row { q, scale, sums }
}

/// `[N, K]` 4-bit values `w` (`K / 2` pairs per row) with f16 scales `scales` `[N, groups]`
/// times `m` rows `xs` `[m, K]`, activations rounded per [`q8_row`], plus the offsets
/// `Σ_g m_g · Σ_{c in g} x_c` of the f16 `mins` `[N, groups]` (empty: none) over the unrounded
/// activations: `[m, N]` row-major.
pub(crate) fn matmul_u4_q8(
    isa: Isa,
    w: &[U4x2],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: &[f16],
    mins: &[f16],
) -> Vec<f32> {
    let layout = Layout::of(isa);
    let round = |x: &[f32]| q8_row(x, layout);
    matmul_act8(isa, w, k, k / 2, xs, m, (scales, mins), round, dot_u4)
}

/// `[N, K]` i8 values `w` with f16 scales `scales` `[N, groups]` (the 8-bit format) times `m`
/// rows `xs` `[m, K]`, activations rounded per [`q8_row_natural`]: `[m, N]` row-major.
pub(crate) fn matmul_i8_q8(
    isa: Isa,
    w: &[i8],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: &[f16],
) -> Vec<f32> {
    matmul_act8(isa, w, k, k, xs, m, (scales, &[]), q8_row_natural, dot_i8)
}

/// One (weight row, activation row) product of a format: the row's values, the rounded
/// activations, the row's f16 group scales `s_g` and offsets `m_g` (empty: none), and room
/// for `groups` factors `c_g = s_g · dx_g` for the kernels that take them ready-made.
type RowDot<W> = fn(Isa, &[W], &Q8Row, [&[f16]; 2], &mut [f32]) -> f32;

/// The shared row loop: `kw` weight elements per row, each activation row rounded by
/// `round`, each (weight row, activation row) pair reduced by `dot` with the row's scales and
/// offsets (`[N, groups]` each, offsets empty for none).
#[allow(clippy::too_many_arguments)] // the two formats' kernels, passed in
fn matmul_act8<W: Sync, R: Fn(&[f32]) -> Q8Row>(
    isa: Isa,
    w: &[W],
    k: usize,
    kw: usize,
    xs: &[f32],
    m: usize,
    (scales, mins): (&[f16], &[f16]),
    round: R,
    dot: RowDot<W>,
) -> Vec<f32> {
    let n = w.len().checked_div(kw).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let groups = k.div_ceil(GROUP);
    let rows: Vec<Q8Row> = xs.chunks_exact(k).map(round).collect();
    let per_task = (n / (8 * rayon::current_num_threads())).max(TASK_BYTES / kw.max(1));
    let rows_per_task = per_task.clamp(1, n);
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * kw))
        .enumerate()
        .for_each(|(task, (out, w))| {
            let mut c = vec![0f32; groups];
            let first = task * rows_per_task;
            for (i, (o, row)) in out.chunks_exact_mut(m).zip(w.chunks_exact(kw)).enumerate() {
                let at = (first + i) * groups..(first + i + 1) * groups;
                let s = &scales[at.clone()];
                let mins = mins.get(at).unwrap_or_default();
                for (o, x) in o.iter_mut().zip(&rows) {
                    *o = dot(isa, row, x, [s, mins], &mut c);
                }
            }
        });
    super::transpose(out_t, n, m)
}

/// The factors `c_g = s_g · dx_g` of the groups in `s` and `dx`, into `c`.
pub(crate) fn factors(s: &[f16], dx: &[f32], c: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let c = &mut c[..s.len()];
    s.convert_to_f32_slice(c);
    for (c, dx) in c.iter_mut().zip(dx) {
        *c *= dx;
    }
}

/// `Σ_g m_g · sums_g` over the groups of `mins` (none when empty), converted through `c`.
pub(crate) fn offsets(mins: &[f16], sums: &[f32], c: &mut [f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    let c = &mut c[..mins.len()];
    mins.convert_to_f32_slice(c);
    c.iter().zip(sums).map(|(m, s)| m * s).sum()
}

/// One 4-bit row: `Σ_g c_g · Σ_{i in g} q_i · xq_i + m_g · Σ_{i in g} x_i` with
/// `c_g = s_g · dx_g`.
fn dot_u4(isa: Isa, w: &[U4x2], x: &Q8Row, [s, mins]: [&[f16]; 2], c: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_vnni() {
        return super::x86_512_act8::dot_u4_q8(t, w, x, [s, mins], c);
    }
    factors(s, &x.scale, c);
    let scaled = {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            super::x86::dot_u4_q8(t, w, &x.q, c)
        } else {
            portable::dot_u4_q8(w, &x.q, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        portable::dot_u4_q8(w, &x.q, c)
    };
    scaled + offsets(mins, &x.sums, c)
}

/// One 8-bit row: `Σ_g c_g · Σ_{i in g} w_i · xq_i` (the format has no offsets).
fn dot_i8(isa: Isa, w: &[i8], x: &Q8Row, [s, _]: [&[f16]; 2], c: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_vnni() {
        return super::x86_512_act8::dot_i8_q8(t, w, &x.q, s, &x.scale, c);
    }
    factors(s, &x.scale, c);
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx2_fma() {
        return super::x86::dot_i8_q8(t, w, &x.q, c);
    }
    let _ = isa;
    portable::dot_i8_q8(w, &x.q, c)
}

/// The rounded activations of a [`Q8Row`] laid out by `layout` in natural order (the tests'
/// oracle view).
#[cfg(test)]
pub(crate) fn natural(x: &Q8Row, k: usize, layout: Layout) -> Vec<i8> {
    let full = k / GROUP;
    let mut out = vec![0i8; k];
    let mut laid = x.q.iter().copied();
    for (g, width) in layout.blocks(full) {
        for parity in 0..2 {
            for gg in g..g + width {
                for i in 0..GROUP / 2 {
                    out[gg * GROUP + 2 * i + parity] = laid.next().unwrap();
                }
            }
        }
    }
    out[full * GROUP..].copy_from_slice(&x.q[full * GROUP..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_layouts_hold_every_value_once() {
        for k in [0, 2, 31, 32, 64, 96, 128, 160, 200, 256, 290, 480] {
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let want = q8_row_natural(&x).q;
            for layout in [Layout::Pairs, Layout::Quads] {
                let laid = q8_row(&x, layout);
                assert_eq!(natural(&laid, k, layout), want, "{layout:?} k {k}");
            }
            // Blocks tile the full groups; quads only where four are left.
            let full = k / GROUP;
            let blocks: Vec<_> = Layout::Quads.blocks(full).collect();
            assert_eq!(blocks.iter().map(|b| b.1).sum::<usize>(), full);
            assert!(blocks.iter().all(|&(g, w)| g % w == 0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every path against an f64 oracle of the same integer products and scales.
        #[test]
        fn matches_the_integer_oracle(
            half_k in 1usize..130,
            n in 1usize..20,
            m in 1usize..4,
            seed in 0u32..1000,
            with_mins: bool,
        ) {
            let k = 2 * half_k;
            let groups = k.div_ceil(GROUP);
            let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
            let w: Vec<U4x2> = (0..n * k / 2)
                .map(|i| U4x2(((i * 37 + seed as usize) % 256) as u8))
                .collect();
            let scales: Vec<f16> = (0..n * groups).map(|i| f16::from_f32(0.01 + val(i, 0.5).abs())).collect();
            let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
            let mins: Vec<f16> = if with_mins {
                (0..n * groups).map(|i| f16::from_f32(val(i, 2.7) * 0.1)).collect()
            } else {
                Vec::new()
            };
            let mut vals = vec![0f32; k];
            for isa in Isa::supported() {
                let got = matmul_u4_q8(isa, &w, k, &xs, m, &scales, &mins);
                for j in 0..m {
                    let layout = Layout::of(isa);
                    let x = q8_row(&xs[j * k..(j + 1) * k], layout);
                    let xq = natural(&x, k, layout);
                    // The rounding itself: within half a step of x.
                    for (c, (&q, &v)) in xq.iter().zip(&xs[j * k..]).enumerate() {
                        let dx = x.scale[c / GROUP];
                        prop_assert!((q as f32 * dx - v).abs() <= 0.5 * dx + 1e-6);
                    }
                    for r in 0..n {
                        <U4x2 as super::super::WeightElem>::widen_row(&w[r * k / 2..(r + 1) * k / 2], &mut vals);
                        let terms: Vec<f64> = (0..k)
                            .map(|c| {
                                let g = c / GROUP;
                                let offset = mins.get(r * groups + g).map_or(0.0, |m| m.to_f64());
                                scales[r * groups + g].to_f64() * x.scale[g] as f64
                                    * vals[c] as f64 * xq[c] as f64
                                    + offset * xs[j * k + c] as f64
                            })
                            .collect();
                        let want: f64 = terms.iter().sum();
                        // f32 rounding of the scales and of the sum over groups: relative to
                        // the terms' magnitude, not the (possibly cancelling) result.
                        let scale: f64 = terms.iter().map(|t| t.abs()).sum();
                        let g = got[j * n + r] as f64;
                        prop_assert!((g - want).abs() <= 1e-6 * (1.0 + scale), "{isa}: {g} vs {want}");
                    }
                }
            }
        }
    }
}
