//! Products of bf16 weights with activations rounded to bf16 (nearest even): the arithmetic of
//! HF's bf16 models and of llama.cpp's bf16 type, `Σ_c bf16(x[c]) · W[r, c]`, every product
//! exact in f32 and accumulated in f32. What is lost against [`super::product`] is only the
//! rounding of the activations (a relative 2⁻⁹ per value).
//!
//! On AVX512-BF16 CPUs both regimes run `vdpbf16ps`, two of those multiply-adds per lane in
//! one instruction ([`super::x86_bf16`]): up to `DOT_FORM_MAX_ROWS` activation rows the
//! weights are read as stored, in tiles of up to four weight rows by three activation rows
//! ([`dot_form`]); above it, the packed GEMM over bf16 pairs when `K` is even. Otherwise the
//! activations are rounded and the f32 kernels run on the rounded values, which is the same
//! product up to summation order (and the oracle the tests hold the fast path to).
//!
//! On AMX CPUs every product with `K` a multiple of 32 (every V2/V3 projection) goes to bf16
//! tiles ([`super::x86_amx`]), whatever the number of rows: 16,384 flops per instruction, and
//! each output the sequential sum of its own row's pairs, so a row's bits do not depend on the
//! other rows at any batch size. On a Sapphire Rapids VM (`gemm --rows R`) the tiles ran at
//! 1.1-1.5x the unpacked `vdpbf16ps` kernel at 4 rows, 3-3.5x at 16 and 4-6x at 48; at one
//! row 0.75-0.95x on the projections but 1.4x on the output head, and whole-model decode
//! under bf16 activations went from 18 to 22 tok/s (the head is 39% of its bytes).

use half::bf16;

use crate::Isa;

/// Up to this many activation rows the AVX512-BF16 path reads the weights as stored
/// ([`dot_form`]); above it, the packed GEMM, whose packing of the weights then pays for
/// itself. On a Zen 4 (`gemm --rows R`) the unpacked tiles ran at 1.2-1.8x the GEMM at 16
/// and 48 rows (an expert's share of a 512-token chunk), level at 64, 0.7-0.9x at 96. At
/// least [`crate::GEMV_MAX_ROWS`], so a decode step is batch-invariant.
#[cfg(target_arch = "x86_64")]
const DOT_FORM_MAX_ROWS: usize = 64;

/// Up to how many rows [`product`] computes each row the same way whatever the other rows,
/// for rows of `k` values: any number on AMX tiles, the unpacked `vdpbf16ps` regime where the
/// CPU has AVX512-BF16, else the f32 kernels' matrix-vector regime.
pub(crate) fn invariant_rows(isa: Isa, k: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512_bf16().is_some() {
        if isa.amx_bf16().is_some() && super::x86_amx::takes(k) {
            return usize::MAX;
        }
        return DOT_FORM_MAX_ROWS;
    }
    let _ = (isa, k);
    crate::GEMV_MAX_ROWS
}

/// `[N, K]` bf16 weights `w` times `m` rows `xs` `[m, K]` rounded to bf16 → `[m, N]`
/// row-major, in the regime `m` calls for.
pub(crate) fn product(isa: Isa, w: &[bf16], k: usize, xs: &[f32], m: usize) -> Vec<f32> {
    assert_eq!(xs.len(), m * k, "product: xs must hold m rows of K");
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_bf16() {
        use half::slice::HalfFloatSliceExt;
        if let Some(amx) = isa.amx_bf16() {
            if let Some(out) = super::x86_amx::gemm(amx, w.reinterpret_cast(), k, xs, m) {
                return out;
            }
        }
        if m <= DOT_FORM_MAX_ROWS {
            return dot_form(t, w.reinterpret_cast(), k, xs, m);
        }
        let xb = super::x86_bf16::round_to_bf16_bits(xs);
        if let Some(out) = super::x86_bf16::gemm(t, w.reinterpret_cast(), k, &xb, m) {
            return out;
        }
    }
    let rounded: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    super::product(isa, w, k, &rounded, m, None)
}

/// Activation bytes per block of [`dot_form`]: a task re-reads a block's rows for each of its
/// weight rows, so a block stays in L2 (half of a Zen 4's 1 MiB) however many rows the call has.
#[cfg(target_arch = "x86_64")]
const X_BLOCK_BYTES: usize = 512 << 10;

/// The unpacked regime on AVX512-BF16 ([`super::x86_bf16::dot_tile`]): each task takes a
/// contiguous block of weight rows and, per block of activation rows that fits L2, dots its
/// rows with them in tiles of three activation rows, the weight rows one at a time or, once
/// the activations outgrow L1, one from each quarter of the task ([`super::rows_apart`]).
#[cfg(target_arch = "x86_64")]
fn dot_form(t: super::x86_bf16::Avx512Bf16, w: &[u16], k: usize, xs: &[f32], m: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let n = w.len().checked_div(k).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let xs = Lines::rounded(xs, k, m);
    let rows_per_task = super::rows_per_task(n, k * 2);
    let x_block = (X_BLOCK_BYTES / (2 * k).max(1)).max(3) / 3 * 3;
    let apart = m.min(x_block) * k * 2 > super::ONE_ROW_MAX_X_BYTES;
    let mut out = vec![0f32; m * n];
    let dst = super::OutPtr(out.as_mut_ptr());
    w.par_chunks(rows_per_task * k)
        .enumerate()
        .for_each(|(task, rows)| {
            let row = |r: usize| &rows[r * k..(r + 1) * k];
            // Column `r` of the task's block of the `[m, N]` output, row `j`.
            let r0 = task * rows_per_task;
            // SAFETY: `j < m` and `r0 + r < N` (the task's rows), so the element is inside
            // `out`, and only this task writes the columns of its rows.
            let put = |r: usize, j: usize, v: f32| unsafe { *dst.get().add(j * n + r0 + r) = v };
            for j0 in (0..m).step_by(x_block) {
                let js = j0..m.min(j0 + x_block);
                let (quads, rest) = super::rows_apart(rows.len() / k, apart);
                for at in quads {
                    in_tiles(t, at.map(row), &xs, js.clone(), |q, j, v| put(at[q], j, v));
                }
                for r in rest {
                    in_tiles(t, [row(r)], &xs, js.clone(), |_, j, v| put(r, j, v));
                }
            }
        });
    out
}

/// Activation rows rounded to bf16 (raw bits), each starting on a 64-byte cache line: the
/// kernel loads 64 bytes at a time from three of them per weight load, and a load split over
/// two lines costs two.
#[cfg(target_arch = "x86_64")]
struct Lines {
    lines: Vec<Line>,
    /// Values per row.
    k: usize,
    /// Lines per row.
    stride: usize,
}

/// One cache line of bf16 values.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

#[cfg(target_arch = "x86_64")]
impl Lines {
    /// `m` rows of `k` f32 values, rounded to bf16 (nearest even) as they are copied.
    fn rounded(xs: &[f32], k: usize, m: usize) -> Lines {
        let stride = k.div_ceil(32);
        let mut lines = vec![Line([0; 32]); m * stride];
        for (x, row) in xs.chunks_exact(k).zip(lines.chunks_exact_mut(stride)) {
            for (src, line) in x.chunks(32).zip(row) {
                for (d, &v) in line.0.iter_mut().zip(src) {
                    *d = bf16::from_f32(v).to_bits();
                }
            }
        }
        Lines { lines, k, stride }
    }

    fn row(&self, j: usize) -> &[u16] {
        let row = &self.lines[j * self.stride..(j + 1) * self.stride];
        // SAFETY: `Line` is 32 plain `u16`s with no padding (`repr(C)`, 64 bytes), so the
        // row's lines are `32 · stride ≥ k` contiguous values.
        let values: &[u16] =
            unsafe { std::slice::from_raw_parts(row.as_ptr().cast(), 32 * row.len()) };
        &values[..self.k]
    }
}

/// `R` weight rows against the activation rows `js` of `xs`, three at a time, each sum
/// `(q, j, value)` into `put`.
#[cfg(target_arch = "x86_64")]
fn in_tiles<const R: usize>(
    t: super::x86_bf16::Avx512Bf16,
    w: [&[u16]; R],
    xs: &Lines,
    js: std::ops::Range<usize>,
    mut put: impl FnMut(usize, usize, f32),
) {
    use super::x86_bf16::dot_tile;
    let x = |j: usize| xs.row(j);
    let mut j = js.start;
    while j + 3 <= js.end {
        let sums = dot_tile(t, w, [x(j), x(j + 1), x(j + 2)]);
        for (q, s) in sums.iter().enumerate() {
            for (i, &v) in s.iter().enumerate() {
                put(q, j + i, v);
            }
        }
        j += 3;
    }
    for j in j..js.end {
        for (q, s) in dot_tile(t, w, [x(j)]).iter().enumerate() {
            put(q, j, s[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_matches_oracle, oracle};
    use super::*;
    use proptest::prelude::*;

    /// Every path this machine runs against the f64 oracle over the rounded activations.
    fn check(n: usize, k: usize, m: usize, seed: u32) {
        let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(val(i, 0.3))).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
        let rounded: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let want = oracle(&w, k, &rounded, m);
        for isa in Isa::supported() {
            let got = product(isa, &w, k, &xs, m);
            assert_matches_oracle(&got, &want, k, &format!("{isa}: n {n}, k {k}, m {m}"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_f64_oracle_on_odd_shapes(
            k in 1usize..300,
            n in 1usize..70,
            m in 1usize..60,
            seed in 0u32..1000,
        ) {
            check(n, k, m, seed);
        }
    }

    #[test]
    fn many_tasks_blocks_and_ragged_edges() {
        // Both regimes: several tasks and ragged last ones, K beyond one 32-value load and
        // beyond the GEMM's K blocks, partial last tiles.
        check(1027, 1100, 37, 7);
        check(300, 513, 33, 3);
        check(65, 2049, 5, 5);
        check(2, 64, 1, 1);
        // The packed GEMM above the unpacked regime's rows; several activation blocks in it.
        check(70, 300, 150, 4);
        check(40, 9000, 50, 1);
        // `K` a multiple of 32 above the unpacked regime: AMX tiles where the CPU has them
        // (a lone last block of 16 activation rows, a short last pair of weight tiles).
        check(70, 320, 150, 4);
        check(33, 2048, 97, 2);
    }

    /// Up to the unpacked regime's `DOT_FORM_MAX_ROWS` on AVX512-BF16 (elsewhere up to
    /// [`crate::GEMV_MAX_ROWS`], the f32 kernels' matrix-vector regime; on AMX at any number
    /// when `K` is a multiple of 32), each row's result is bit for bit its 1-row result,
    /// whatever the other rows: tiles of three and one, rows one at a time or four apart
    /// (`K = 1100` from 8 rows on), several activation blocks (`K = 9000`), AMX tiles with a
    /// ragged last activation block (`K = 320`, `2048`).
    #[test]
    fn rows_are_batch_invariant_up_to_the_packed_gemm() {
        let rows_to_test = [1usize, 2, 3, 4, 7, 8, 31, 50, 64, 100, 161];
        for (n, k) in [(45, 1100), (9, 9000), (13, 62), (37, 320), (5, 2048)] {
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32((i as f32 * 0.173).sin()))
                .collect();
            let max = *rows_to_test.iter().max().unwrap();
            let xs: Vec<f32> = (0..max * k).map(|i| (i as f32 * 0.0917).cos()).collect();
            for isa in Isa::supported() {
                let alone: Vec<Vec<f32>> = (0..max)
                    .map(|j| product(isa, &w, k, &xs[j * k..(j + 1) * k], 1))
                    .collect();
                let limit = invariant_rows(isa, k);
                for &m in rows_to_test.iter().filter(|&&m| m <= limit) {
                    let all = product(isa, &w, k, &xs[..m * k], m);
                    for (j, one) in alone.iter().enumerate().take(m) {
                        let got = &all[j * n..(j + 1) * n];
                        assert!(
                            got.iter().zip(one).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{isa}: K {k}, {m} rows, row {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn special_values() {
        // Infinities and NaN propagate as in the f32 product of the rounded values, in every
        // regime (`K = 64` above the unpacked one: AMX tiles where present).
        for (k, rows) in [(40, [1, 40, 100]), (64, [1, 40, 100])] {
            let mut w = vec![bf16::from_f32(1.0); 3 * k];
            w[k + 5] = bf16::INFINITY;
            w[2 * k + 7] = bf16::NAN;
            for m in rows {
                let xs = vec![0.5f32; m * k];
                for isa in Isa::supported() {
                    let got = product(isa, &w, k, &xs, m);
                    for j in 0..m {
                        assert_eq!(got[j * 3], k as f32 / 2.0, "{isa}");
                        assert_eq!(got[j * 3 + 1], f32::INFINITY, "{isa}");
                        assert!(got[j * 3 + 2].is_nan(), "{isa}");
                    }
                }
            }
        }
    }
}
