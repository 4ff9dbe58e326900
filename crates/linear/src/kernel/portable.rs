//! Portable kernels: plain Rust for every CPU, and the path [`crate::Isa::portable`] forces.

use super::{Nibbles, Scalar, U4x2};

/// `Σ_i w[i] · x[i]` (`w.len() == x.len()`), with 16 independent accumulators so the
/// compiler vectorises it without reassociating (no fast-math in Rust).
pub(super) fn dot<W: Scalar>(w: &[W], x: &[f32]) -> f32 {
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
pub(super) fn dot4<W: Scalar>(w: [&[W]; 4], x: &[f32]) -> [f32; 4] {
    w.map(|row| dot(row, x))
}

/// `Σ_i v[i] · x[i]` over the values of packed 4-bit pairs, in natural order.
pub(super) fn dot_u4(w: &[U4x2], x: &[f32]) -> f32 {
    let mut acc = [0f32; 2];
    for (p, x) in w.iter().zip(x.chunks_exact(2)) {
        let (a, b) = p.pair();
        acc[0] += a * x[0];
        acc[1] += b * x[1];
    }
    acc[0] + acc[1]
}

/// One row of the 8-bit product with 8-bit activations in natural order
/// (`act8::q8_row_natural`): `Σ_g c_g · Σ_{i in g} w_i · xq_i`, integer sums per group.
pub(super) fn dot_i8_q8(w: &[i8], xq: &[i8], c: &[f32]) -> f32 {
    let group = super::act8::GROUP;
    w.chunks(group)
        .zip(xq.chunks(group))
        .zip(c)
        .map(|((w, x), &c)| {
            let s: i32 = w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum();
            c * s as f32
        })
        .sum()
}

/// One row of the 4-bit or 5-bit product with 8-bit activations laid out by `act8::q8_row`:
/// `Σ_g c[g] · Σ_{i in g} q_i · xq_i`, the integer sums exact (5-bit rows: whole groups).
pub(super) fn dot_u4_q8(w: Nibbles, xq: &[i8], c: &[f32]) -> f32 {
    let group = super::act8::GROUP;
    let k = xq.len();
    let full = k / group;
    // Σ q_e·xe + q_o·xo over one group's 16 pairs, the fifth bits `high` (evens in the low
    // half, odds in the high one).
    let isum = |w: &[U4x2], high: u32, xe: &[i8], xo: &[i8]| -> i32 {
        w.iter()
            .zip(xe.iter().zip(xo))
            .enumerate()
            .map(|(t, (b, (&e, &o)))| {
                let even = (b.0 & 15) as i32 | (((high >> t) & 1) << 4) as i32;
                let odd = (b.0 >> 4) as i32 | (((high >> (16 + t)) & 1) << 4) as i32;
                even * e as i32 + odd * o as i32
            })
            .sum()
    };
    let half = group / 2;
    let at_group = |g: usize| (&w.low[g * half..][..half], w.high_bits(g));
    let mut total = 0f32;
    let (mut g, mut at) = (0, 0);
    while g < full {
        if g + 1 < full {
            let x = &xq[at..at + 2 * group];
            let (wa, ha) = at_group(g);
            let (wb, hb) = at_group(g + 1);
            let a = isum(wa, ha, &x[..half], &x[group..][..half]);
            let b = isum(wb, hb, &x[half..group], &x[group + half..]);
            total += c[g] * a as f32 + c[g + 1] * b as f32;
            (g, at) = (g + 2, at + 2 * group);
        } else {
            let x = &xq[at..at + group];
            let (wa, ha) = at_group(g);
            let a = isum(wa, ha, &x[..half], &x[half..]);
            total += c[g] * a as f32;
            (g, at) = (g + 1, at + group);
        }
    }
    if full * group < k {
        assert!(w.high.is_none(), "5-bit rows are whole groups");
        let tail: i32 = w.low[full * group / 2..]
            .iter()
            .zip(xq[full * group..].chunks_exact(2))
            .map(|(b, x)| (b.0 & 15) as i32 * x[0] as i32 + (b.0 >> 4) as i32 * x[1] as i32)
            .sum();
        total += c[full] * tail as f32;
    }
    total
}

/// One row of the `BITS`-bit (6, 3 or 2) product with 8-bit activations in natural order
/// (`act8`'s chunk layouts): `Σ_s c[s] · Σ_{i in s} (q_i − zero) · xq_i` over sub-blocks of
/// 16, integer sums.
pub(super) fn dot_u6_q8<const BITS: usize>(w: &[u8], xq: &[i8], c: &[f32]) -> f32 {
    use super::act8::{chunk_bytes, sixteenths_value, zero_point, U6_CHUNK};
    let chunks = w
        .chunks_exact(chunk_bytes(BITS))
        .zip(xq.chunks_exact(U6_CHUNK));
    let mut total = 0f32;
    for (ch, (w, x)) in chunks.enumerate() {
        for (s, x) in x.chunks_exact(16).enumerate() {
            let sum: i32 = x
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let q = sixteenths_value(BITS, w, 16 * s + i) as i32;
                    (q - zero_point(BITS)) * x as i32
                })
                .sum();
            total += c[4 * ch + s] * sum as f32;
        }
    }
    total
}
