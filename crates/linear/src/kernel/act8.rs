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
/// pairs `[A even | B even | A odd | B odd]` (16 values each), a last unpaired full group as
/// `[even | odd]`, a last partial group in natural order. (The weights hold values `2i` and
/// `2i + 1` in the low and high nibble of byte `i`, so even values meet the low nibbles.)
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `dx` per group.
    pub scale: Vec<f32>,
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
    let mut q = Vec::with_capacity(x.len());
    for g in x.chunks(GROUP) {
        let amax = g.iter().fold(0f32, |a, v| a.max(v.abs()));
        let dx = amax / 127.0;
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        scale.push(dx);
        q.extend(g.iter().map(|v| {
            let t = v * inv;
            ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127) as i8
        }));
    }
    Q8Row { q, scale }
}

/// [`Q8Row`] of `x` in the 4-bit kernel's layout (see [`Q8Row`]).
pub(crate) fn q8_row(x: &[f32]) -> Q8Row {
    let Q8Row { q: rounded, scale } = q8_row_natural(x);
    let full = x.len() / GROUP;
    let mut q = Vec::with_capacity(x.len());
    let mut g = 0;
    while g < full {
        if g + 1 < full {
            let (a, b) = (
                &rounded[g * GROUP..][..GROUP],
                &rounded[(g + 1) * GROUP..][..GROUP],
            );
            q.extend(evens_odds(a, 0).chain(evens_odds(b, 0)));
            q.extend(evens_odds(a, 1).chain(evens_odds(b, 1)));
            g += 2;
        } else {
            let a = &rounded[g * GROUP..][..GROUP];
            q.extend(evens_odds(a, 0).chain(evens_odds(a, 1)));
            g += 1;
        }
    }
    q.extend_from_slice(&rounded[full * GROUP..]);
    Q8Row { q, scale }
}

/// `[N, K]` 4-bit values `w` (`K / 2` pairs per row) with f16 scales `scales` `[N, groups]`
/// times `m` rows `xs` `[m, K]`, activations rounded per [`q8_row`]: `[m, N]` row-major,
/// without the 4-bit format's offsets (the caller adds `Σ_g m_g · Σ x`).
pub(crate) fn matmul_u4_q8(
    isa: Isa,
    w: &[U4x2],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: &[f16],
) -> Vec<f32> {
    matmul_act8(isa, w, k, k / 2, xs, m, scales, q8_row, dot_u4)
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
    matmul_act8(isa, w, k, k, xs, m, scales, q8_row_natural, dot_i8)
}

/// The shared row loop: `kw` weight elements per row, each activation row rounded by
/// `round`, each (weight row, activation row) pair reduced by `dot` with the per-group
/// factors `s_g · dx_g`.
#[allow(clippy::too_many_arguments)] // the two formats' kernels, passed in
fn matmul_act8<W: Sync>(
    isa: Isa,
    w: &[W],
    k: usize,
    kw: usize,
    xs: &[f32],
    m: usize,
    scales: &[f16],
    round: fn(&[f32]) -> Q8Row,
    dot: fn(Isa, &[W], &Q8Row, &[f32]) -> f32,
) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
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
        .zip(scales.par_chunks(rows_per_task * groups))
        .for_each(|((out, w), s)| {
            let mut sw = vec![0f32; groups];
            let mut c = vec![0f32; groups];
            for ((o, row), s) in out
                .chunks_exact_mut(m)
                .zip(w.chunks_exact(kw))
                .zip(s.chunks_exact(groups))
            {
                s.convert_to_f32_slice(&mut sw);
                for (o, x) in o.iter_mut().zip(&rows) {
                    for ((c, &sw), &dx) in c.iter_mut().zip(&sw).zip(&x.scale) {
                        *c = sw * dx;
                    }
                    *o = dot(isa, row, x, &c);
                }
            }
        });
    super::transpose(out_t, n, m)
}

/// One 4-bit row: `Σ_g c_g · Σ_{i in g} q_i · xq_i` with `c_g = s_g · dx_g`.
fn dot_u4(isa: Isa, w: &[U4x2], x: &Q8Row, c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_vnni() {
        return super::x86_512_act8::dot_u4_q8(t, w, &x.q, c);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx2_fma() {
        return super::x86::dot_u4_q8(t, w, &x.q, c);
    }
    let _ = isa;
    portable::dot_u4_q8(w, &x.q, c)
}

/// One 8-bit row, likewise.
fn dot_i8(isa: Isa, w: &[i8], x: &Q8Row, c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_vnni() {
        return super::x86_512_act8::dot_i8_q8(t, w, &x.q, c);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx2_fma() {
        return super::x86::dot_i8_q8(t, w, &x.q, c);
    }
    let _ = isa;
    portable::dot_i8_q8(w, &x.q, c)
}

/// The rounded activations of a [`Q8Row`] in natural order (the tests' oracle view).
#[cfg(test)]
pub(crate) fn natural(x: &Q8Row, k: usize) -> Vec<i8> {
    let full = k / GROUP;
    let mut out = vec![0i8; k];
    let mut at = 0;
    let mut g = 0;
    while g < full {
        let pair = g + 1 < full;
        let width = if pair { 2 } else { 1 };
        for (slot, gg) in (g..g + width).enumerate() {
            for i in 0..GROUP / 2 {
                out[gg * GROUP + 2 * i] = x.q[at + slot * 16 + i];
                out[gg * GROUP + 2 * i + 1] = x.q[at + width * 16 + slot * 16 + i];
            }
        }
        at += width * GROUP;
        g += width;
    }
    out[full * GROUP..].copy_from_slice(&x.q[full * GROUP..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every path against an f64 oracle of the same integer products and scales.
        #[test]
        fn matches_the_integer_oracle(
            half_k in 1usize..130,
            n in 1usize..20,
            m in 1usize..4,
            seed in 0u32..1000,
        ) {
            let k = 2 * half_k;
            let groups = k.div_ceil(GROUP);
            let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
            let w: Vec<U4x2> = (0..n * k / 2)
                .map(|i| U4x2(((i * 37 + seed as usize) % 256) as u8))
                .collect();
            let scales: Vec<f16> = (0..n * groups).map(|i| f16::from_f32(0.01 + val(i, 0.5).abs())).collect();
            let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
            let mut vals = vec![0f32; k];
            for isa in Isa::supported() {
                let got = matmul_u4_q8(isa, &w, k, &xs, m, &scales);
                for j in 0..m {
                    let x = q8_row(&xs[j * k..(j + 1) * k]);
                    let xq = natural(&x, k);
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
                                scales[r * groups + g].to_f64() * x.scale[g] as f64
                                    * vals[c] as f64 * xq[c] as f64
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
