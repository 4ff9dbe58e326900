//! Portable kernels: plain Rust for every CPU, and the path [`crate::Isa::portable`] forces.

use super::WeightElem;

/// `Σ_i w[i] · x[i]` (`w.len() == x.len()`), with 16 independent accumulators so the
/// compiler vectorises it without reassociating (no fast-math in Rust).
pub(super) fn dot<W: WeightElem>(w: &[W], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (cw, cx) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, b)| a.widen() * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for ((s, &a), b) in acc.iter_mut().zip(a).zip(b) {
            *s += a.widen() * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Four rows against `x`, one after another (no prefetch: the hardware prefetcher follows
/// each sequential row).
pub(super) fn dot4<W: WeightElem>(w: [&[W]; 4], x: &[f32]) -> [f32; 4] {
    w.map(|row| dot(row, x))
}
