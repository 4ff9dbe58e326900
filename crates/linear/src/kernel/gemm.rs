//! The GEMM for more than [`crate::GEMV_MAX_ROWS`] activation rows (prefill chunks, experts
//! that received many tokens): `out[j, r] = Σ_c x[j, c] · W[r, c]`.
//!
//! Dot-product form, register-blocked: a tile is four activation rows against four weight
//! rows ([`WeightElem::tile`]); each weight vector is widened to f32 once in registers and
//! feeds four FMAs, one per activation row. Nothing is packed or converted ahead: the weight
//! stays in its stored dtype and layout (`[N, K]`, the checkpoint's), so no call converts a
//! whole matrix and formats with blocks along `K` (FP8 block scales, 8/4-bit blocks) fit the
//! same loop.
//!
//! Blocking: rayon tasks own contiguous blocks of weight rows, and walk `K` in slices of
//! [`K_BLOCK`]: within a slice, the four activation rows of a tile (16 KiB at most) stay in L1
//! while every weight quad of the block passes by, and the block's slice stays in L2 while all
//! activation rows pass over it. Partial sums of each slice are added to the output.

use super::{BlockScales, WeightElem};
use crate::Isa;
use rayon::prelude::*;

/// Elements of `K` per slice: four f32 activation rows of it (16 KiB) and four weight rows
/// fit L1 together.
const K_BLOCK: usize = 1024;

/// Bytes of one task's weight block per `K` slice, held in L2.
const BLOCK_BYTES: usize = 256 << 10;

/// `[N, K]` weights `w` times `m` rows `xs` `[m, K]` → `[m, N]`, with the tiles of `isa`.
/// With `scales`, `K` is sliced along the scale blocks and each tile's sums are scaled per row.
pub(crate) fn gemm<W: WeightElem>(
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
    let rows: Vec<&[f32]> = xs.chunks_exact(k).collect();
    let k_slice = scales.map_or(K_BLOCK, |s| s.cols);
    let slice_bytes = k.min(k_slice) * std::mem::size_of::<W>();
    // Blocks of whole tiles (4 rows): at least 4 tasks per thread when the matrix allows,
    // and a slice of the block that L2 holds.
    let by_bytes = (BLOCK_BYTES / slice_bytes.max(1)).max(4);
    let by_balance = n.div_ceil(4 * rayon::current_num_threads()).max(4);
    let block = by_bytes.min(by_balance).next_multiple_of(4);
    let mut out_t = vec![0f32; n * m]; // [N, m]: each task owns a contiguous range
    out_t
        .par_chunks_mut(block * m)
        .zip(w.par_chunks(block * k))
        .enumerate()
        .for_each(|(task, (out, w))| {
            let first_row = task * block;
            let w_rows: Vec<&[W]> = w.chunks_exact(k).collect();
            for (kb, k0) in (0..k).step_by(k_slice).enumerate() {
                let k1 = (k0 + k_slice).min(k);
                for j0 in (0..m).step_by(4) {
                    let a = quad(&rows, j0).map(|r| &r[k0..k1]);
                    for r0 in (0..w_rows.len()).step_by(4) {
                        let w4 = quad(&w_rows, r0).map(|r| &r[k0..k1]);
                        let tile = W::tile(isa, a, w4);
                        let rows = w_rows.len() - r0;
                        let scale: [f32; 4] = std::array::from_fn(|dr| match scales {
                            Some(s) if dr < rows => s.at(first_row + r0 + dr, kb, k),
                            _ => 1.0,
                        });
                        for (dj, t) in tile.iter().enumerate().take(m - j0) {
                            for (dr, &v) in t.iter().enumerate().take(rows) {
                                out[(r0 + dr) * m + j0 + dj] += v * scale[dr];
                            }
                        }
                    }
                }
            }
        });
    transpose(&out_t, n, m)
}

/// `[rows, cols]` → `[cols, rows]`, in square blocks so that both sides are read and written
/// a cache line at a time (a plain double loop writes every element to a different line: it
/// took ~7% of a 2K-token prefill).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut dst = vec![0f32; rows * cols];
    dst.par_chunks_mut(B * rows)
        .enumerate()
        .for_each(|(cb, dst)| {
            let c0 = cb * B;
            let width = B.min(cols - c0);
            for r0 in (0..rows).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    let line = &src[r * cols + c0..r * cols + c0 + width];
                    for (dc, &v) in line.iter().enumerate() {
                        dst[dc * rows + r] = v;
                    }
                }
            }
        });
    dst
}

/// Rows `from..from + 4`, repeating the last row where fewer remain (their results are
/// computed and dropped, so the tile needs no short variant).
fn quad<'a, T>(rows: &[&'a [T]], from: usize) -> [&'a [T]; 4] {
    let last = rows.len() - 1;
    std::array::from_fn(|i| rows[(from + i).min(last)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use proptest::prelude::*;

    /// f64 oracle of `[m, N]` over the exactly widened weights.
    fn oracle<W: WeightElem>(w: &[W], k: usize, xs: &[f32], m: usize) -> Vec<f64> {
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

    /// Every path this machine runs, plus the forced portable one, against the oracle.
    fn check<W: WeightElem>(narrow: impl Fn(f32) -> W, n: usize, k: usize, m: usize, seed: u32) {
        let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
        let w: Vec<W> = (0..n * k).map(|i| narrow(val(i, 0.3))).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
        let want = oracle(&w, k, &xs, m);
        let scale = (k as f64).sqrt();
        for isa in Isa::supported() {
            let got = gemm(isa, &w, k, &xs, m, None);
            assert_eq!(got.len(), want.len());
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - e).abs() <= 1e-5 * scale * (1.0 + e.abs()),
                    "{isa}: element {i}: {g} vs {e} (n {n}, k {k}, m {m})"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn gemm_matches_f64_oracle_on_odd_shapes(
            k in 1usize..200,
            n in 1usize..45,
            m in 1usize..23,
            seed in 0u32..1000,
        ) {
            check(|v| v, n, k, m, seed);
            check(bf16::from_f32, n, k, m, seed);
            check(f16::from_f32, n, k, m, seed);
        }
    }

    #[test]
    fn blocked_transpose_moves_every_element() {
        for (rows, cols) in [(1, 1), (3, 70), (65, 33), (100, 1)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let dst = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn many_tasks_and_ragged_tiles() {
        // Several tasks (the last one short), a tail of weight rows and of activation rows
        // that do not fill a tile, and a K with a tail after the vector loop.
        check(bf16::from_f32, 1027, 83, 13, 7);
        check(|v| v, 259, 517, 9, 3);
        // K over two slices, the second partial.
        check(f16::from_f32, 37, 2 * K_BLOCK + 19, 11, 5);
    }
}
