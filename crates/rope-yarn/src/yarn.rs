//! The YaRN formulas (Peng et al., 2023, "YaRN: Efficient Context Window Extension of Large
//! Language Models"), written as in HF transformers' `_compute_yarn_parameters`.
//!
//! For a rotary head of `d` dimensions with base `b`, pair `i` rotates at
//! `θ_i = b^(-2i/d)`. YaRN splits the pairs by how many full turns they make over the
//! pretrained context `L` (`original_max_position_embeddings`):
//!
//! ```text
//! corr(r)     = d · ln(L / (2π r)) / (2 ln b)          // pair index that turns r times over L
//! low         = max(floor(corr(β_fast)), 0)
//! high        = min(ceil(corr(β_slow)), d - 1)
//! ramp_i      = clamp((i - low) / (high - low), 0, 1)   // high == low gets +0.001
//! extrap_i    = 1 - ramp_i
//! θ'_i        = θ_i / s · (1 - extrap_i) + θ_i · extrap_i
//! ```
//!
//! Fast pairs (`i < low`) keep their frequency (extrapolation), slow pairs (`i > high`) are
//! divided by the scale `s` (interpolation), and the band between is a linear blend.
//!
//! Magnitudes: `mscale(s, m) = 1` if `s <= 1`, else `0.1 · m · ln(s) + 1`. cos/sin are multiplied
//! by `mscale(s, mscale) / mscale(s, mscale_all_dim)` (DeepSeek) or `mscale(s, 1)` when the two
//! are not both given, and DeepSeek's attention multiplies its softmax scale by
//! `mscale(s, mscale_all_dim)²`.

/// `get_mscale` of the YaRN paper and DeepSeek's code: `1` for `scale <= 1`, else
/// `0.1 · mscale · ln(scale) + 1`.
///
/// ```
/// let m = rope_yarn::get_mscale(40.0, 1.0);
/// assert!((m - 1.368_887_945).abs() < 1e-9);
/// assert_eq!(rope_yarn::get_mscale(0.5, 1.0), 1.0);
/// ```
pub fn get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// The (fractional) pair index whose wavelength makes `num_rotations` turns over
/// `original_max_position_embeddings` positions: `d · ln(L / (2π r)) / (2 ln b)`.
pub fn correction_dim(num_rotations: f64, dim: usize, base: f64, original_max: usize) -> f64 {
    (dim as f64 * (original_max as f64 / (num_rotations * 2.0 * std::f64::consts::PI)).ln())
        / (2.0 * base.ln())
}

/// The `[low, high]` band of pair indices over which YaRN blends interpolation and
/// extrapolation. With `truncate` (the default, and what DeepSeek uses) the bounds are
/// floored/ceiled to integers; both are clamped to `[0, dim - 1]`.
///
/// ```
/// // DeepSeek-V3: rope head 64, base 10000, L = 4096, β_fast 32, β_slow 1.
/// assert_eq!(rope_yarn::yarn::correction_range(32.0, 1.0, 64, 10000.0, 4096, true), (10.0, 23.0));
/// ```
pub fn correction_range(
    beta_fast: f64,
    beta_slow: f64,
    dim: usize,
    base: f64,
    original_max: usize,
    truncate: bool,
) -> (f64, f64) {
    let mut low = correction_dim(beta_fast, dim, base, original_max);
    let mut high = correction_dim(beta_slow, dim, base, original_max);
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

/// The linear ramp `clamp((i - low) / (high - low), 0, 1)` for `i` in `0..n`, in f32 as HF
/// computes it (a degenerate band `high == low` is widened by 0.001 to avoid dividing by 0).
pub fn linear_ramp(low: f64, high: f64, n: usize) -> Vec<f32> {
    let high = if high == low { high + 0.001 } else { high };
    let (low, span) = (low as f32, (high - low) as f32);
    (0..n)
        .map(|i| ((i as f32 - low) / span).clamp(0.0, 1.0))
        .collect()
}
