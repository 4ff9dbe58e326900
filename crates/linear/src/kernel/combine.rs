//! `out[j, c] += Σ_i x[j, i] · w[i, c]`: weighted sums of the rows of a row-major `w` `[K, N]`
//! (attention's `p · V` over cached values, where `w`'s rows are keys and `x` the
//! probabilities). Single-threaded: callers split the work (e.g. over key ranges).
//!
//! The SIMD paths keep a tile of `out` in registers (4 rows x 64 columns in 16 zmm on
//! AVX-512F, 4 x 32 in 16 ymm on AVX2) and stream `w`'s rows through it: per row of `w`, one
//! load per 16 (8) columns and one broadcast per row of `x` feed `4 · columns / lanes` FMAs.
//! Each output element is summed over `i` in order, so every path gives the same result up to
//! FMA rounding.

use crate::Isa;

/// The portable loop (also the oracle's order): row by row, `i` ascending.
fn portable(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    for j in 0..m {
        let o = &mut out[j * n..(j + 1) * n];
        for i in 0..k {
            let a = x[j * k + i];
            for (o, &b) in o.iter_mut().zip(&w[i * n..(i + 1) * n]) {
                *o = a.mul_add(b, *o);
            }
        }
    }
}

/// `out` `[m, n]` += `x` `[m, k]` · `w` `[k, n]` on `isa`'s path.
///
/// # Panics
/// If a slice is shorter than its shape says.
pub(crate) fn combine(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &[f32],
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    assert!(
        x.len() >= m * k && w.len() >= k * n && out.len() >= m * n,
        "combine: shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512f() {
        return x86::combine_avx512(t, x, m, w, k, n, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx2_fma() {
        return x86::combine_avx2(t, x, m, w, k, n, out);
    }
    let _ = isa;
    portable(x, m, w, k, n, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::x86::Avx2Fma;
    use super::super::x86_512::Avx512F;

    /// Output rows per register tile.
    const ROWS: usize = 4;

    pub(super) fn combine_avx512(
        _: Avx512F,
        x: &[f32],
        m: usize,
        w: &[f32],
        k: usize,
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the token proves AVX-512F; the caller checked the slice lengths.
        unsafe { tiles_avx512(x, m, w, k, n, out) }
    }

    pub(super) fn combine_avx2(
        _: Avx2Fma,
        x: &[f32],
        m: usize,
        w: &[f32],
        k: usize,
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the token proves AVX2 and FMA; the caller checked the slice lengths.
        unsafe { tiles_avx2(x, m, w, k, n, out) }
    }

    /// One vector width's loads, broadcasts, FMAs and stores.
    trait Vector: Copy {
        const LANES: usize;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        unsafe fn store(p: *mut f32, v: Self);
    }

    #[derive(Clone, Copy)]
    struct Zmm(__m512);
    #[derive(Clone, Copy)]
    struct Ymm(__m256);

    impl Vector for Zmm {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Zmm(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Zmm(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            Zmm(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm512_storeu_ps(p, v.0)
        }
    }

    impl Vector for Ymm {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Ymm(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Ymm(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            Ymm(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self) {
            _mm256_storeu_ps(p, v.0)
        }
    }

    /// The tiled loop: `R` rows x `C` vectors of columns at a time, `i` ascending.
    #[inline(always)]
    unsafe fn tile<V: Vector, const R: usize, const C: usize>(
        x: &[f32],
        k: usize,
        w: &[f32],
        n: usize,
        out: &mut [f32],
        row0: usize,
        col0: usize,
    ) {
        let (px, pw, po) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        let mut acc = [[V::splat(0.0); C]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            for (c, v) in a.iter_mut().enumerate() {
                *v = V::load(po.add((row0 + r) * n + col0 + c * V::LANES));
            }
        }
        for i in 0..k {
            let mut wv = [V::splat(0.0); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = V::load(pw.add(i * n + col0 + c * V::LANES));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = V::splat(*px.add((row0 + r) * k + i));
                for (v, &b) in a.iter_mut().zip(&wv) {
                    *v = V::fmadd(xv, b, *v);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, &v) in a.iter().enumerate() {
                V::store(po.add((row0 + r) * n + col0 + c * V::LANES), v);
            }
        }
    }

    /// Rows `row0..row0 + R` over every column: wide tiles, then one-vector tiles, then the
    /// scalar columns past the last whole vector.
    #[inline(always)]
    unsafe fn rows<V: Vector, const R: usize>(
        x: &[f32],
        k: usize,
        w: &[f32],
        n: usize,
        out: &mut [f32],
        row0: usize,
    ) {
        const WIDE: usize = 4;
        let mut col = 0;
        while col + WIDE * V::LANES <= n {
            tile::<V, R, WIDE>(x, k, w, n, out, row0, col);
            col += WIDE * V::LANES;
        }
        while col + V::LANES <= n {
            tile::<V, R, 1>(x, k, w, n, out, row0, col);
            col += V::LANES;
        }
        for r in row0..row0 + R {
            for c in col..n {
                let mut o = out[r * n + c];
                for i in 0..k {
                    o = x[r * k + i].mul_add(w[i * n + c], o);
                }
                out[r * n + c] = o;
            }
        }
    }

    #[inline(always)]
    unsafe fn all_rows<V: Vector>(
        x: &[f32],
        m: usize,
        w: &[f32],
        k: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let mut row = 0;
        while row + ROWS <= m {
            rows::<V, ROWS>(x, k, w, n, out, row);
            row += ROWS;
        }
        while row < m {
            rows::<V, 1>(x, k, w, n, out, row);
            row += 1;
        }
    }

    /// # Safety
    /// AVX-512F must be available and the slices as long as the shapes say.
    #[target_feature(enable = "avx512f")]
    unsafe fn tiles_avx512(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, out: &mut [f32]) {
        all_rows::<Zmm>(x, m, w, k, n, out)
    }

    /// # Safety
    /// AVX2 and FMA must be available and the slices as long as the shapes say.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiles_avx2(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, out: &mut [f32]) {
        all_rows::<Ymm>(x, m, w, k, n, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every path against an f64 oracle, on shapes around the tile sizes.
        #[test]
        fn combine_matches_f64_reference(
            m in 1usize..11,
            k in 0usize..70,
            n in 1usize..150,
            seed in 0u32..1000,
        ) {
            let val = |i: usize, s: f32| ((i as f32 * 0.613 + s + seed as f32).sin()) * 1.5;
            let x: Vec<f32> = (0..m * k).map(|i| val(i, 0.1)).collect();
            let w: Vec<f32> = (0..k * n).map(|i| val(i, 2.3)).collect();
            let init: Vec<f32> = (0..m * n).map(|i| val(i, 4.7)).collect();
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (j, c) = (e / n, e % n);
                    init[e] as f64 + (0..k).map(|i| x[j * k + i] as f64 * w[i * n + c] as f64).sum::<f64>()
                })
                .collect();
            for isa in Isa::supported() {
                let mut out = init.clone();
                combine(isa, &x, m, &w, k, n, &mut out);
                for (e, (g, r)) in out.iter().zip(&want).enumerate() {
                    prop_assert!(
                        (*g as f64 - r).abs() <= 1e-5 * (k as f64 + 1.0).sqrt() * (1.0 + r.abs()),
                        "{isa}: element {e}: {g} vs {r} (m {m}, k {k}, n {n})"
                    );
                }
            }
        }
    }
}
