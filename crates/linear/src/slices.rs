//! The CPU kernels on plain `f32` slices, for callers that hold their operands in their own
//! storage (e.g. attention over a paged cache) instead of candle tensors. Row-major
//! throughout, accumulation in f32, single calls that never convert or copy `w`.

use crate::{kernel, Isa};

/// `y = x · wᵀ`: `y[j, r] = Σ_c x[j, c] · w[r, c]` for `x` `[m, K]` and `w` `[N, K]`
/// (`N = w.len() / K`), returned `[m, N]`. The regime follows [`crate::linear`]'s: the
/// matrix-vector kernel up to [`crate::GEMV_MAX_ROWS`] rows (each `w` row read once, split
/// over the rayon threads), the GEMM above.
///
/// # Panics
/// If `k` is 0 or does not divide `w.len()`, or `x.len() != m · K`.
pub fn x_wt(isa: Isa, x: &[f32], m: usize, w: &[f32], k: usize) -> Vec<f32> {
    assert!(
        k > 0 && w.len().is_multiple_of(k),
        "x_wt: w must hold whole rows of K"
    );
    assert_eq!(x.len(), m * k, "x_wt: x must hold m rows of K");
    kernel::product(isa, w, k, x, m, None)
}

/// `out += x · w`: `out[j, c] += Σ_i x[j, i] · w[i, c]` for `x` `[m, K]`, `w` `[K, N]` and
/// `out` `[m, N]` (`K = x.len() / m`): weighted sums of `w`'s rows, e.g. attention
/// probabilities times cached values. Each output element is summed over `i` in order, on
/// the calling thread (split the work over threads by ranges of `i` or of rows).
///
/// # Panics
/// If `m` is 0 or does not divide `x.len()`, or `w` or `out` do not match.
pub fn add_x_w(isa: Isa, x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(
        m > 0 && x.len().is_multiple_of(m),
        "add_x_w: x must hold m rows"
    );
    let k = x.len() / m;
    assert_eq!(w.len(), k * n, "add_x_w: w must be [K, N]");
    assert_eq!(out.len(), m * n, "add_x_w: out must be [m, N]");
    kernel::combine::combine(isa, x, m, w, k, n, out)
}
