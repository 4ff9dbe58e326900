//! The GEMM for more than [`crate::GEMV_MAX_ROWS`] activation rows (prefill chunks, experts
//! that received many tokens): `out[j, r] = Σ_c x[j, c] · W[r, c]`.
//!
//! On AVX-512 CPUs it is our own packed kernel ([`super::x86_512`], twice the arithmetic per
//! instruction of the `gemm` crate's AVX2 micro-kernels). Elsewhere the arithmetic is the
//! `gemm` crate's f32 kernel (the one candle's CPU matmul runs: packed,
//! cache-blocked, runtime-dispatched microkernels, at the machine's FMA peak on the shapes
//! measured in `benchmarks/README.md`). What this module adds is the weight format: rayon
//! tasks each take a block of weight rows, widen it to f32 (exactly: bf16/f16/e4m3, times the
//! block scale for FP8) into a buffer that stays in L2, and run the product of all activation
//! rows with that block into their columns of the output. No call converts or copies the
//! whole matrix; the widening costs one pass over the block while it is in cache.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{BlockScales, OutPtr, WeightElem};
use crate::Isa;

/// Target bytes of one task's widened block (f32): small enough for L2 together with the
/// `gemm` crate's packing, large enough that each call amortises its packing of the
/// activations over many output columns.
const BLOCK_BYTES: usize = 1 << 20;

thread_local! {
    /// Each thread's widened block, reused across calls.
    static BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `[N, K]` weights `w` (`K / W::VALUES` elements per row) times `m` rows `xs` `[m, K]` →
/// `[m, N]` row-major. With `scales`,
/// row `r` is widened as `W[r, c] = w[r, c] · scale(r, c / cols)` (HF's f32 dequantisation).
pub(crate) fn gemm<W: WeightElem>(
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: Option<&BlockScales>,
) -> Vec<f32> {
    let kw = k / W::VALUES; // elements per row
    let n = w.len().checked_div(kw).unwrap_or(0);
    let mut out = vec![0f32; m * n];
    if n == 0 || m == 0 || k == 0 {
        return out;
    }
    assert_eq!(xs.len(), m * k, "gemm: xs must hold m rows of K");
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512f() {
        super::x86_512::gemm(t, w, k, xs, scales, &mut out);
        return out;
    }
    let _ = isa;
    // Rows per task: the buffer budget, at least 2 tasks per thread, multiples of 16.
    let by_bytes = (BLOCK_BYTES / (4 * k)).max(16);
    let by_balance = n.div_ceil(2 * rayon::current_num_threads()).max(16);
    let rows = by_bytes.min(by_balance).next_multiple_of(16);
    let dst = OutPtr(out.as_mut_ptr());
    w.par_chunks(rows * kw)
        .enumerate()
        .for_each(|(task, block)| {
            let r0 = task * rows;
            let nb = block.len() / kw;
            let mut row_scales = Vec::new();
            BLOCK.with_borrow_mut(|buf| {
                buf.resize(nb * k, 0.0);
                for (i, (src, row)) in block
                    .chunks_exact(kw)
                    .zip(buf.chunks_exact_mut(k))
                    .enumerate()
                {
                    match scales {
                        None => W::widen_row(src, row),
                        Some(s) => {
                            let scale = s.row(r0 + i, k, &mut row_scales);
                            W::widen_row_scaled(isa, src, row, scale, s.cols)
                        }
                    }
                }
                // SAFETY: `xs` is `[m, k]` row-major, `buf` is `[nb, k]` row-major (read as the
                // `[k, nb]` right-hand side with column stride `k`), and the destination is
                // columns `r0..r0 + nb` of the `[m, n]` row-major output: in bounds, and no other
                // task writes them.
                unsafe {
                    gemm::gemm(
                        m,
                        nb,
                        k,
                        dst.get().add(r0),
                        1,
                        n as isize,
                        false,
                        xs.as_ptr(),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_matches_oracle, oracle};
    use super::*;
    use half::{bf16, f16};
    use proptest::prelude::*;

    fn check<W: WeightElem>(narrow: impl Fn(f32) -> W, n: usize, k: usize, m: usize, seed: u32) {
        let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
        let w: Vec<W> = (0..n * k).map(|i| narrow(val(i, 0.3))).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
        let want = oracle(&w, k, &xs, m);
        for isa in Isa::supported() {
            let got = gemm(isa, &w, k, &xs, m, None);
            assert_matches_oracle(&got, &want, k, &format!("{isa}: n {n}, k {k}, m {m}"));
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

    /// Block-scaled formats (FP8's 128 x 128 f32 scales, the 8/4-bit groups' per-row f16
    /// scales) against an f64 oracle over the dequantised rows, on every path: the packed
    /// kernel widens `K` in blocks, so each block must take its own scales.
    #[test]
    fn block_scaled_formats_match_the_dequantised_oracle() {
        use super::super::{Scales, U4x2};
        use float8::F8E4M3;
        fn run<W: WeightElem>(w: &[W], k: usize, scales: &BlockScales, m: usize, what: &str) {
            let n = w.len() / (k / W::VALUES);
            let xs: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.377).cos()).collect();
            let mut want = vec![0f64; m * n];
            let (mut row, mut buf) = (vec![0f32; k], Vec::new());
            for r in 0..n {
                let src = &w[r * k / W::VALUES..(r + 1) * k / W::VALUES];
                W::widen_row_scaled(
                    Isa::portable(),
                    src,
                    &mut row,
                    scales.row(r, k, &mut buf),
                    scales.cols,
                );
                for j in 0..m {
                    want[j * n + r] = (0..k).map(|c| row[c] as f64 * xs[j * k + c] as f64).sum();
                }
            }
            for isa in Isa::supported() {
                let got = gemm(isa, w, k, &xs, m, Some(scales));
                assert_matches_oracle(&got, &want, k, &format!("{what} {isa}"));
            }
        }
        // FP8: 300 x 700 (partial edge blocks both ways), 2 x 6 scale blocks.
        let (n, k) = (300, 700);
        let q: Vec<F8E4M3> = (0..n * k)
            .map(|i| F8E4M3::from_f32(((i as f32 * 0.61).sin()) * 400.0))
            .collect();
        let s: Vec<f32> = (0..3 * 6).map(|i| 0.001 * (i + 1) as f32).collect();
        let scales = BlockScales {
            scale: Scales::F32(&s),
            rows: 128,
            cols: 128,
        };
        run(&q, k, &scales, 37, "fp8");
        // 4-bit pairs with per-row f16 scales over groups of 32.
        let (n, k) = (70, 320);
        let q: Vec<U4x2> = (0..n * k / 2).map(|i| U4x2((i * 37 % 256) as u8)).collect();
        let s: Vec<half::f16> = (0..n * k / 32)
            .map(|i| half::f16::from_f32(0.01 + i as f32 * 1e-4))
            .collect();
        let scales = BlockScales {
            scale: Scales::F16(&s),
            rows: 1,
            cols: 32,
        };
        run(&q, k, &scales, 45, "q4");
    }

    #[test]
    fn many_tasks_and_ragged_blocks() {
        // Several tasks, the last one short.
        check(bf16::from_f32, 1027, 83, 13, 7);
        check(|v| v, 259, 517, 9, 3);
        check(f16::from_f32, 37, 2100, 11, 5);
        // More activation rows than one block of the AVX-512 kernel holds (768).
        check(bf16::from_f32, 45, 70, 1601, 2);
    }
}
