//! The matrix-vector kernel: `out[j, r] = Σ_c W[r, c] · x[j, c]` for a few activation rows `j`,
//! reading every weight row once.
//!
//! - this file: the driver (rows split over rayon tasks, four rows at a time) and the one
//!   place that picks a kernel from the [`Isa`] the caller passed down ([`WeightElem`]'s impls);
//! - [`portable`]: plain Rust, every CPU;
//! - [`x86`]: AVX2 + FMA (+ F16C for f16) intrinsics, callable only with the proof tokens that
//!   [`Isa::detect`] obtained.
//!
//! Rows are processed four at a time so each activation load serves four weight rows. For
//! bf16 on AVX2 the activations are first laid out per 16-element block as its 8 even elements
//! then its 8 odd ones ([`WeightElem::prepare`]): one 256-bit load then holds 8 (even, odd)
//! weight pairs, and `w << 16` / `w & 0xffff0000` widen the evens and the odds exactly with one
//! integer op each, no shuffles. The fewer instructions per byte, the more cache lines a core
//! keeps in flight: on the 2-core dev machine that, not the arithmetic, decides how close bf16
//! gets to the memory's pace (`benchmarks/README.md`).

use std::borrow::Cow;

use float8::F8E4M3;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::Isa;

pub(crate) use gemm::gemm;

mod gemm;
mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// A weight element the kernel can widen to f32: f32, bf16 or f16. Every method takes the
/// [`Isa`] chosen once per [`matmul_rows`] call; the impls below are the only dispatch.
pub(crate) trait WeightElem: Copy + Send + Sync + 'static {
    /// Activations laid out for [`WeightElem::dot4`] on `isa` (the identity unless the SIMD
    /// kernel wants another order). Callers pass the same `isa` to both.
    fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
        let _ = isa;
        Cow::Borrowed(x)
    }

    /// Four rows against one prepared `x` (`Σ_i w[r][i] · x[i]` in f32 for each row `r`),
    /// prefetching the rows `next` (the following four) while it runs.
    fn dot4(isa: Isa, w: [&[Self]; 4], x: &[f32], next: [&[Self]; 4]) -> [f32; 4];

    /// One row against a prepared `x` (the rows left after the groups of four).
    fn dot(isa: Isa, w: &[Self], x: &[f32]) -> f32 {
        Self::dot4(isa, [w; 4], x, [w; 4])[0]
    }

    /// Four rows against `x` with block scales: `Σ_kb scales[q][kb] · Σ_{i in block kb}
    /// w[q][i] · x[i]` over blocks of `cols` elements. By default one [`WeightElem::dot4`]
    /// per block; block-quantised formats override it to scale in registers.
    fn dot4_scaled(
        isa: Isa,
        w: [&[Self]; 4],
        x: &[f32],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> [f32; 4] {
        dot4_per_block(isa, w, x, next, scales, cols)
    }

    /// `src` widened exactly into `dst` (same length): the GEMM's weight blocks.
    fn widen_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.widen();
        }
    }

    /// `src` widened and multiplied by the scale of each `cols`-wide block of it
    /// (`scales[kb]` for block `kb`), in f32: FP8's dequantisation.
    fn widen_row_scaled(src: &[Self], dst: &mut [f32], scales: &[f32], cols: usize) {
        for ((d, s), &f) in dst.chunks_mut(cols).zip(src.chunks(cols)).zip(scales) {
            for (d, s) in d.iter_mut().zip(s) {
                *d = s.widen() * f;
            }
        }
    }

    /// The exact f32 value.
    fn widen(self) -> f32;
}

/// [`WeightElem::dot4_scaled`] as one [`WeightElem::dot4`] per `cols`-wide block, each block
/// sum multiplied by its scale.
fn dot4_per_block<W: WeightElem>(
    isa: Isa,
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    let k = x.len();
    let mut out = [0f32; 4];
    for (kb, lo) in (0..k).step_by(cols).enumerate() {
        let span = lo..(lo + cols).min(k);
        let next = next.map(|r| &r[span.clone()]);
        let sums = W::dot4(isa, w.map(|r| &r[span.clone()]), &x[span], next);
        for (q, (o, v)) in out.iter_mut().zip(sums).enumerate() {
            *o += v * scales[q][kb];
        }
    }
    out
}

/// Target bytes of weights per rayon task: large enough that scheduling is noise, small enough
/// that both cores stay busy until the end on small matrices.
const TASK_BYTES: usize = 256 << 10;

/// `[N, K]` weights `w` times `m` rows `xs` `[m, K]` → `[m, N]`, with the kernels of `isa`.
/// With `scales`, row `r`'s products over each block of `K` are multiplied by that block's
/// scale ([`BlockScales`]).
pub(crate) fn matmul_rows<W: WeightElem>(
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: Option<&BlockScales>,
) -> Vec<f32> {
    let n = w.len().checked_div(k).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let xs: Vec<Cow<[f32]>> = xs.chunks_exact(k).map(|x| W::prepare(isa, x)).collect();
    let row_bytes = k * std::mem::size_of::<W>();
    // At least 8 tasks per thread for balance, each at least TASK_BYTES unless the matrix is
    // smaller than that.
    let per_task = (n / (8 * rayon::current_num_threads())).max(TASK_BYTES / row_bytes.max(1));
    let rows_per_task = per_task.clamp(1, n);
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * k))
        .enumerate()
        .for_each(|(task, (out, rows))| {
            let first_row = task * rows_per_task;
            let n_quads = rows.len() / (4 * k);
            let mut quads = rows.chunks_exact(4 * k);
            let mut outs = out.chunks_exact_mut(4 * m);
            for (qi, (o, quad)) in (&mut outs).zip(&mut quads).enumerate() {
                let r = split4(quad, k);
                // The next quad's rows are prefetched while these four are summed (the last
                // quad of a task prefetches its own rows, which are in cache already).
                let next = if qi + 1 < n_quads {
                    split4(&rows[(qi + 1) * 4 * k..], k)
                } else {
                    r
                };
                for (j, x) in xs.iter().enumerate() {
                    let next = if j == 0 { next } else { r };
                    let sums = match scales {
                        None => W::dot4(isa, r, x, next),
                        Some(s) => {
                            let rows = std::array::from_fn(|q| s.row(first_row + 4 * qi + q, k));
                            W::dot4_scaled(isa, r, x, next, rows, s.cols)
                        }
                    };
                    for (q, v) in sums.into_iter().enumerate() {
                        o[q * m + j] = v;
                    }
                }
            }
            let rest = outs.into_remainder().chunks_exact_mut(m);
            let first_rest = first_row + 4 * n_quads;
            for (i, (o, row)) in rest.zip(quads.remainder().chunks_exact(k)).enumerate() {
                for (o, x) in o.iter_mut().zip(&xs) {
                    *o = match scales {
                        None => W::dot(isa, row, x),
                        Some(s) => {
                            let scale = s.row(first_rest + i, k);
                            W::dot4_scaled(isa, [row; 4], x, [row; 4], [scale; 4], s.cols)[0]
                        }
                    };
                }
            }
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; n * m];
    for (r, row) in out_t.chunks_exact(m).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * n + r] = v;
        }
    }
    out
}

/// Per-block scales of a block-quantised weight (for weight types whose
/// [`WeightElem::prepare`] is the identity, so a span of `x` lines up with the same span of a
/// row): `W[r, c] = q[r, c] · scale[r / rows, c / cols]`
/// with `scale` row-major `[ceil(N / rows), ceil(K / cols)]`. The kernels sum the products of
/// each `cols`-wide block of `K` unscaled, then multiply the block's sum by its scale in f32.
pub(crate) struct BlockScales<'a> {
    pub scale: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl BlockScales<'_> {
    /// The scales of weight row `r` over every block of `K` (`k` elements long).
    pub(crate) fn row(&self, r: usize, k: usize) -> &[f32] {
        let per_row = k.div_ceil(self.cols);
        &self.scale[(r / self.rows) * per_row..][..per_row]
    }
}

/// The first four rows of length `k` in `rows`.
fn split4<W>(rows: &[W], k: usize) -> [&[W]; 4] {
    [
        &rows[..k],
        &rows[k..2 * k],
        &rows[2 * k..3 * k],
        &rows[3 * k..4 * k],
    ]
}

// The dispatch. Each x86 kernel is reached only through the proof token an `Isa` carries, so
// no branch here re-checks the CPU; without a token the portable loop runs.

impl WeightElem for f32 {
    fn dot4(isa: Isa, w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot4_f32(t, w, x, next);
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    fn dot(isa: Isa, w: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot_f32(t, w, x);
        }
        let _ = isa;
        portable::dot(w, x)
    }

    fn widen(self) -> f32 {
        self
    }
}

impl WeightElem for bf16 {
    fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
        #[cfg(target_arch = "x86_64")]
        if isa.avx2_fma().is_some() {
            return Cow::Owned(x86::split_even_odd(x));
        }
        let _ = isa;
        Cow::Borrowed(x)
    }

    fn dot4(isa: Isa, w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
        // The same test as `prepare`'s, on the same `isa`: `x` is split exactly when the
        // AVX2 kernel reads it.
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot4_bf16(t, w, x, next);
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl WeightElem for f16 {
    fn dot4(isa: Isa, w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma_f16c() {
            return x86::dot4_f16(t, w, x, next);
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// e4m3fn (OCP FP8, DeepSeek's format) decoded exactly: 1 sign, 4 exponent (bias 7) and 3
/// mantissa bits; exponent 0 is subnormal (`m · 2⁻⁹`); `S.1111.111` is NaN; no infinities
/// (`S.1111.110` is ±448).
pub(crate) const fn e4m3_to_f32(bits: u8) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((bits >> 3) & 0xf, bits & 7);
    if e == 0xf && m == 7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m as f32 / 512.0
    } else {
        // (8 + m) · 2^(e - 10), built from its bits: exponent e - 7 + 127, mantissa m << 20.
        f32::from_bits(((e as u32 + 120) << 23) | ((m as u32) << 20))
    };
    sign * mag
}

/// [`e4m3_to_f32`] of every byte, for the scalar loops.
static E4M3: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_to_f32(i as u8);
        i += 1;
    }
    t
};

impl WeightElem for F8E4M3 {
    fn dot4(isa: Isa, w: [&[F8E4M3]; 4], x: &[f32], next: [&[F8E4M3]; 4]) -> [f32; 4] {
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    fn dot4_scaled(
        isa: Isa,
        w: [&[F8E4M3]; 4],
        x: &[f32],
        next: [&[F8E4M3]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma_f16c() {
            return x86::dot4_e4m3_scaled(t, w, x, next, scales, cols);
        }
        dot4_per_block(isa, w, x, next, scales, cols)
    }

    fn widen(self) -> f32 {
        E4M3[self.to_bits() as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// f64 oracle of `[m, N]` over the exactly widened weights (shared with the GEMM's tests).
    pub(super) fn oracle<W: WeightElem>(w: &[W], k: usize, xs: &[f32], m: usize) -> Vec<f64> {
        let n = w.len() / k;
        let mut out = vec![0f64; m * n];
        for j in 0..m {
            for r in 0..n {
                out[j * n + r] = (0..k)
                    .map(|c| w[r * k + c].widen() as f64 * xs[j * k + c] as f64)
                    .sum();
            }
        }
        out
    }

    /// `got` against the oracle's `want`: only the f32 summation order may differ.
    pub(super) fn assert_matches_oracle(got: &[f32], want: &[f64], k: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = (k as f64).sqrt();
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - e).abs() <= 1e-5 * scale * (1.0 + e.abs()),
                "{what}: element {i}: {g} vs {e} (k {k})"
            );
        }
    }

    /// The kernel on every path this machine runs (the detected one, each narrower one and
    /// the portable one) against the f64 oracle.
    fn check<W: WeightElem>(
        w32: &[f32],
        narrow: impl Fn(f32) -> W,
        k: usize,
        xs: &[f32],
        m: usize,
    ) {
        let w: Vec<W> = w32.iter().map(|&v| narrow(v)).collect();
        // The oracle sees the rounded weights, so only the summation order differs.
        let want = oracle(&w, k, xs, m);
        for isa in Isa::supported() {
            let got = matmul_rows(isa, &w, k, xs, m, None);
            assert_matches_oracle(&got, &want, k, &format!("{isa}, m {m}"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn kernel_matches_f64_reference(
            k in 1usize..300,
            n in 1usize..40,
            m in 1usize..10,
            seed in 0u32..1000,
        ) {
            let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
            let w32: Vec<f32> = (0..n * k).map(|i| val(i, 0.3)).collect();
            let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
            check(&w32, |v| v, k, &xs, m);
            check(&w32, bf16::from_f32, k, &xs, m);
            check(&w32, f16::from_f32, k, &xs, m);
        }
    }

    /// `dot` and `dot4` of every path against the portable loop, on lengths around the
    /// SIMD block sizes.
    fn paths_agree<W: WeightElem>(narrow: impl Fn(f32) -> W) {
        for len in [1000, 999, 37, 16, 15, 7, 0] {
            let w: Vec<W> = (0..len).map(|i| narrow((i as f32).cos())).collect();
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.5).sin()).collect();
            let slow = portable::dot(&w, &x);
            for isa in Isa::supported() {
                let xp = W::prepare(isa, &x);
                let one = W::dot(isa, &w, &xp);
                assert!(
                    (one - slow).abs() < 1e-3,
                    "{isa} len {len}: {one} vs {slow}"
                );
                let four = W::dot4(isa, [&w, &w, &w, &w], &xp, [&w, &w, &w, &w]);
                assert!(
                    four.iter().all(|v| (v - slow).abs() < 1e-3),
                    "{isa} len {len}: {four:?} vs {slow}"
                );
            }
        }
    }

    #[test]
    fn every_path_agrees_with_portable() {
        paths_agree(|v| v);
        paths_agree(bf16::from_f32);
        paths_agree(f16::from_f32);
    }

    #[test]
    fn e4m3_table_is_the_definition() {
        for b in 0..=255u8 {
            let (ours, theirs) = (E4M3[b as usize], F8E4M3::from_bits(b).to_f32());
            assert!(
                ours.to_bits() == theirs.to_bits() || (ours.is_nan() && theirs.is_nan()),
                "{b:#04x}: {ours} vs {theirs}"
            );
        }
    }

    #[test]
    fn many_tasks_cover_every_row() {
        // Enough rows that the work is split into several rayon tasks of unequal last size.
        let (n, k) = (5000, 70);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32).collect();
        let xs = vec![1f32; k];
        for isa in Isa::supported() {
            let out = matmul_rows(isa, &w, k, &xs, 1, None);
            for (r, v) in out.iter().enumerate() {
                let want: f32 = (0..k).map(|c| ((r * k + c) % 13) as f32).sum();
                assert_eq!(*v, want, "{isa} row {r}");
            }
        }
    }
}
