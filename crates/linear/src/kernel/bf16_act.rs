//! Products of bf16 weights with activations rounded to bf16 (nearest even): the arithmetic of
//! HF's bf16 models and of llama.cpp's bf16 type, `Σ_c bf16(x[c]) · W[r, c]`, every product
//! exact in f32 and accumulated in f32. What is lost against [`super::product`] is only the
//! rounding of the activations (a relative 2⁻⁹ per value).
//!
//! On AVX512-BF16 CPUs both regimes run `vdpbf16ps`, two of those multiply-adds per lane in
//! one instruction ([`super::x86_bf16`]: the matrix-vector kernel, and the packed GEMM over
//! bf16 pairs when `K` is even); otherwise the activations are rounded and the f32 kernels
//! run on the rounded values, which is the same product up to summation order (and the oracle
//! the tests hold the fast path to).

use half::bf16;

use crate::Isa;

/// `[N, K]` bf16 weights `w` times `m` rows `xs` `[m, K]` rounded to bf16 → `[m, N]`
/// row-major, in the regime `m` calls for.
pub(crate) fn product(isa: Isa, w: &[bf16], k: usize, xs: &[f32], m: usize) -> Vec<f32> {
    assert_eq!(xs.len(), m * k, "product: xs must hold m rows of K");
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_bf16() {
        use half::slice::HalfFloatSliceExt;
        let xb = super::x86_bf16::round_to_bf16_bits(xs);
        if m <= crate::GEMV_MAX_ROWS {
            return matvec(t, w.reinterpret_cast(), k, &xb, m);
        }
        if let Some(out) = super::x86_bf16::gemm(t, w.reinterpret_cast(), k, &xb, m) {
            return out;
        }
    }
    let rounded: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    super::product(isa, w, k, &rounded, m, None)
}

/// The matrix-vector regime on AVX512-BF16: each task takes a contiguous block of weight rows
/// and dots them four at a time with every activation row while they sit in L1.
#[cfg(target_arch = "x86_64")]
fn matvec(t: super::x86_bf16::Avx512Bf16, w: &[u16], k: usize, xs: &[u16], m: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let n = w.len().checked_div(k).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let rows_per_task = super::rows_per_task(n, k * 2);
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * k))
        .for_each(|(out, rows)| {
            let row = |r: usize| &rows[r * k..(r + 1) * k];
            let apart = m * k * 2 > super::ONE_ROW_MAX_X_BYTES;
            let (quads, rest) = super::rows_apart(rows.len() / k, apart);
            for at in quads {
                for (j, x) in xs.chunks_exact(k).enumerate() {
                    let sums = super::x86_bf16::dot_rows(t, at.map(row), x);
                    for (r, v) in at.into_iter().zip(sums) {
                        out[r * m + j] = v;
                    }
                }
            }
            for r in rest {
                for (j, x) in xs.chunks_exact(k).enumerate() {
                    out[r * m + j] = super::x86_bf16::dot_rows(t, [row(r)], x)[0];
                }
            }
        });
    super::transpose(out_t, n, m)
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
    }

    #[test]
    fn special_values() {
        // Infinities and NaN propagate as in the f32 product of the rounded values.
        let k = 40;
        let mut w = vec![bf16::from_f32(1.0); 3 * k];
        w[k + 5] = bf16::INFINITY;
        w[2 * k + 7] = bf16::NAN;
        for m in [1, 40] {
            let xs = vec![0.5f32; m * k];
            for isa in Isa::supported() {
                let got = product(isa, &w, k, &xs, m);
                for j in 0..m {
                    assert_eq!(got[j * 3], 20.0, "{isa}");
                    assert_eq!(got[j * 3 + 1], f32::INFINITY, "{isa}");
                    assert!(got[j * 3 + 2].is_nan(), "{isa}");
                }
            }
        }
    }
}
