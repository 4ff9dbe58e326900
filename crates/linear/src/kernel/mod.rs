//! The matrix-vector kernel: `out[j, r] = Σ_c W[r, c] · x[j, c]` for a few activation rows `j`,
//! reading every weight row once.
//!
//! - this file: the driver (rows split over rayon tasks, four rows at a time) and the one
//!   place that picks a kernel from the [`Isa`] the caller passed down ([`WeightElem`]'s impls);
//! - [`portable`]: plain Rust, every CPU;
//! - [`x86`]: AVX2 + FMA (+ F16C for f16) intrinsics, callable only with the proof tokens that
//!   [`Isa::detect`] obtained;
//! - [`x86_512_dot`]: the same for f32, f16 and bf16 weights with 512-bit vectors (32 values
//!   per row per iteration, bf16 activations split per 32-value block);
//! - [`x86_512_e4m3`]: e4m3 weights widened by byte lookups (AVX512-VBMI);
//! - [`x86_512_act8`]: the 8/4-bit formats' integer dot products with `vpdpbusd` (AVX512-VNNI);
//!   [`x86_512_act8_gemm`] the same arithmetic blocked for many activation rows;
//!   [`x86_512_panels`] 4-bit matrices stored in [`panels`] of interleaved rows, for any number
//!   of activation rows.
//!
//! Rows are processed four at a time so each activation load serves four weight rows; on
//! AVX2 several activation rows also go two at a time, so each weight is widened once per
//! pair of rows rather than once per row ([`WeightElem::dot4_rows`]), the arithmetic of each
//! (weight row, activation row) pair staying the same whatever the pairing. For
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

use crate::{Isa, GEMV_MAX_ROWS};

pub(crate) use gemm::gemm;

pub(crate) mod act8;
pub(crate) mod bf16_act;
pub(crate) mod combine;
mod gemm;
pub(crate) mod panels;
mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_act8;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_act8_gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_dot;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_e4m3;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_exp;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512_panels;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_bf16;

/// A stored weight element the kernels read: one value (f32, bf16, f16, e4m3, i8) or a packed
/// pair of 4-bit values ([`U4x2`]). Every method takes the [`Isa`] chosen once per
/// [`matmul_rows`] call; the impls below are the only dispatch. A row of `K` values is
/// `K / VALUES` elements.
pub(crate) trait WeightElem: Copy + Send + Sync + 'static {
    /// Values per stored element.
    const VALUES: usize = 1;

    /// Activations laid out for [`WeightElem::dot4`] on `isa` (the identity unless the SIMD
    /// kernel wants another order). Callers pass the same `isa` to both.
    fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
        let _ = isa;
        Cow::Borrowed(x)
    }

    /// Four rows against one prepared `x` (`Σ_i w[r][i] · x[i]` in f32 for each row `r`),
    /// prefetching the rows `next` (the following four) while it runs.
    fn dot4(isa: Isa, w: [&[Self]; 4], x: &[f32], next: [&[Self]; 4]) -> [f32; 4];

    /// Four rows against two prepared rows of one length: `out[j]` is bit for bit
    /// [`WeightElem::dot4`] of `x[j]` (with the rows as their own `next`). Kernels may load
    /// each weight once for both; by default two [`WeightElem::dot4`].
    fn dot4_x2(isa: Isa, w: [&[Self]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
        x.map(|x| Self::dot4(isa, w, x, w))
    }

    /// One row against a prepared `x` (the rows left after the groups of four, and every row
    /// when [`WeightElem::streams_rows`]): bit for bit the row's [`WeightElem::dot4`] result.
    fn dot(isa: Isa, w: &[Self], x: &[f32]) -> f32 {
        Self::dot4(isa, [w; 4], x, [w; 4])[0]
    }

    /// Whether `isa` has one-row [`WeightElem::dot`] / [`WeightElem::dot_scaled`] kernels that
    /// read the row once, and four-row [`WeightElem::dot4`] / [`WeightElem::dot4_scaled`]
    /// kernels that take any four rows and prefetch only ahead in their own rows, so that the
    /// matrix-vector regime reads rows as [`stream_rows`] does rather than four adjacent rows
    /// at a time. By default no: [`WeightElem::dot`] is then [`WeightElem::dot4`] on four
    /// copies of the row.
    fn streams_rows(isa: Isa) -> bool {
        let _ = isa;
        false
    }

    /// Four rows against every prepared row of `xs`: `out[j]` is [`WeightElem::dot4`] of
    /// `xs[j]`, bit for bit, whatever the other rows are (batch-invariant serving relies on
    /// it). Kernels may widen each weight once for several rows ([`in_groups`]); by default
    /// [`one_by_one`].
    fn dot4_rows(
        isa: Isa,
        w: [&[Self]; 4],
        xs: &[Cow<'_, [f32]>],
        next: [&[Self]; 4],
        out: &mut [[f32; 4]],
    ) {
        one_by_one(isa, w, xs, next, out)
    }

    /// Four rows against `x` with block scales: `Σ_kb scales[q][kb] · Σ_{i in block kb}
    /// w[q][i] · x[i]` over blocks of `cols` values. By default one [`WeightElem::dot4`]
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

    /// [`WeightElem::dot4_scaled`] of every prepared row of `xs` into `out`: `out[j]` is bit
    /// for bit the result of `xs[j]` alone (batch-invariant serving relies on it). Kernels may
    /// widen each weight once for several rows; by default [`scaled_one_by_one`].
    fn dot4_scaled_rows(
        isa: Isa,
        w: [&[Self]; 4],
        xs: &[Cow<'_, [f32]>],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
        out: &mut [[f32; 4]],
    ) {
        scaled_one_by_one(isa, w, xs, next, scales, cols, out)
    }

    /// One row of [`WeightElem::dot4_scaled`] (`scales` the row's): bit for bit the row's
    /// result among four.
    fn dot_scaled(isa: Isa, w: &[Self], x: &[f32], scales: &[f32], cols: usize) -> f32 {
        Self::dot4_scaled(isa, [w; 4], x, [w; 4], [scales; 4], cols)[0]
    }

    /// `src` widened exactly into `dst` (`VALUES` values per element): the GEMM's weight
    /// blocks and the portable loops.
    fn widen_row(src: &[Self], dst: &mut [f32]);

    /// `src` widened and multiplied by the scale of each `cols`-wide block of it
    /// (`scales[kb]` for block `kb`), in f32: the dequantisation of block-scaled formats.
    /// Kernels of `isa` may do it; the products are the same bits either way (one rounding,
    /// of the exact value times the scale).
    fn widen_row_scaled(isa: Isa, src: &[Self], dst: &mut [f32], scales: &[f32], cols: usize) {
        let _ = isa;
        widen_scaled_blocks(src, dst, scales, cols)
    }
}

/// The default [`WeightElem::widen_row_scaled`]: each block widened by
/// [`WeightElem::widen_row`], then multiplied by its scale.
fn widen_scaled_blocks<W: WeightElem>(src: &[W], dst: &mut [f32], scales: &[f32], cols: usize) {
    let per = cols / W::VALUES;
    for ((d, s), &f) in dst.chunks_mut(cols).zip(src.chunks(per)).zip(scales) {
        W::widen_row(s, d);
        for d in d.iter_mut() {
            *d *= f;
        }
    }
}

/// A weight element holding one value, widened exactly to f32.
pub(crate) trait Scalar: Copy {
    /// The exact f32 value.
    fn widen(self) -> f32;
}

/// [`WeightElem::widen_row`] of one-value elements.
fn widen_scalars<W: Scalar>(src: &[W], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.widen();
    }
}

/// Two 4-bit values `0..=15` in one byte: the row's value `2i` in the low nibble, `2i + 1` in
/// the high one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct U4x2(pub u8);

impl U4x2 {
    /// Bytes read as pairs.
    pub(crate) fn from_bytes(bytes: &[u8]) -> &[U4x2] {
        // SAFETY: `U4x2` is a `repr(transparent)` byte.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const U4x2, bytes.len()) }
    }
}

/// Bytes of fifth bits per group of 32 values in a 5-bit row ([`Nibbles::high`]).
pub(crate) const U5_HIGH_BYTES: usize = 4;

/// Bytes of a stored 5-bit row of `k` values (whole groups, [`Nibbles::five`]): `k / 2` of
/// pairs, then the fifth bits.
pub(crate) fn u5_row_bytes(k: usize) -> usize {
    k / 2 + k / 32 * U5_HIGH_BYTES
}

/// A row of 4-bit or 5-bit values as the 8-bit-activation kernels ([`act8`]) read it: the low
/// four bits of every value in [`U4x2`] pairs, and for 5-bit values (GGUF's `Q5_1` / `Q5_K`)
/// the fifth bits, [`U5_HIGH_BYTES`] per group of 32. The pairs split a group into its even
/// values (low nibbles) and odd ones (high nibbles), so the fifth bits are kept as the evens'
/// 16 bits and the odds' 16 bits of each group (bit `t`: value `2t` / `2t + 1`):
/// - the groups of whole quads (four groups, what the AVX-512 kernel takes per step) first,
///   16 bytes per quad: the evens' bits of its four groups as one little-endian u64 (group `i`
///   at bits `16i..`), then the odds' as another, so each is one mask register loaded as is;
/// - the last `groups % 4` groups one little-endian u32 each, evens in the low half, odds in
///   the high one.
///
/// So a pair of groups inside a quad is one u32 of evens and one of odds too (the AVX2
/// kernel's step), and the rest of a row from any whole quad on has the same layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Nibbles<'a> {
    /// The low four bits.
    pub low: &'a [U4x2],
    /// The fifth bits (5-bit rows only), whole groups.
    pub high: Option<&'a [u8]>,
}

impl<'a> Nibbles<'a> {
    /// A row of 4-bit values.
    pub(crate) fn four(low: &'a [U4x2]) -> Self {
        Nibbles { low, high: None }
    }

    /// A 5-bit row of `k` values (a multiple of 32) as stored: `k / 2` bytes of pairs, then
    /// `k / 8` of fifth bits.
    pub(crate) fn five(row: &'a [u8], k: usize) -> Self {
        let (low, high) = row.split_at(k / 2);
        // SAFETY: `U4x2` is a `repr(transparent)` byte.
        let low = unsafe { std::slice::from_raw_parts(low.as_ptr() as *const U4x2, low.len()) };
        Nibbles {
            low,
            high: Some(&high[..k / 32 * U5_HIGH_BYTES]),
        }
    }

    /// The row from value `at` on (`at` a multiple of 128: whole quads).
    pub(crate) fn from(self, at: usize) -> Self {
        debug_assert!(at.is_multiple_of(128), "whole quads");
        Nibbles {
            low: &self.low[at / 2..],
            high: self.high.map(|h| &h[at / 32 * U5_HIGH_BYTES..]),
        }
    }

    /// Every value of the row in order (`0..=15`, or `0..=31` for a 5-bit row) into `out` as
    /// `of(value)`, a group's fifth bits read once.
    pub(crate) fn values_into<T>(&self, out: &mut [T], of: impl Fn(u8) -> T) {
        for (g, (out, pairs)) in out.chunks_mut(32).zip(self.low.chunks(16)).enumerate() {
            let high = self.high_bits(g);
            for (t, (o, p)) in out.chunks_exact_mut(2).zip(pairs).enumerate() {
                o[0] = of((p.0 & 0xF) | ((((high >> t) & 1) as u8) << 4));
                o[1] = of((p.0 >> 4) | ((((high >> (16 + t)) & 1) as u8) << 4));
            }
        }
    }

    /// Value `i` (`0..=15`, or `0..=31` for a 5-bit row).
    pub(crate) fn value(&self, i: usize) -> u8 {
        let nib = (self.low[i / 2].0 >> (4 * (i % 2))) & 0xF;
        let bit = (self.high_bits(i / 32) >> (i % 32 / 2 + 16 * (i % 2))) & 1;
        nib | ((bit as u8) << 4)
    }

    /// Group `g`'s fifth bits, evens in the low half and odds in the high one (zero for 4-bit
    /// rows).
    pub(crate) fn high_bits(&self, g: usize) -> u32 {
        let Some(h) = self.high else { return 0 };
        let (at, gap) = u5_high_at(h.len() / U5_HIGH_BYTES, g);
        let half = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]) as u32;
        half(at) | (half(at + gap) << 16)
    }
}

/// Where group `g`'s fifth bits lie in a row of `groups` groups ([`Nibbles`]): the byte of its
/// evens' 16 bits, and how far past it its odds' are.
pub(crate) fn u5_high_at(groups: usize, g: usize) -> (usize, usize) {
    let quads = groups / 4;
    if g < 4 * quads {
        (16 * (g / 4) + 2 * (g % 4), 8)
    } else {
        (16 * quads + U5_HIGH_BYTES * (g - 4 * quads), 2)
    }
}

/// The stored fifth bits ([`Nibbles`]) of the groups whose bits are `bits` (evens in the low
/// half, odds in the high one, as [`Nibbles::high_bits`] returns them).
pub(crate) fn u5_high_bytes(bits: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len() * U5_HIGH_BYTES];
    for (g, &b) in bits.iter().enumerate() {
        let (at, gap) = u5_high_at(bits.len(), g);
        out[at..at + 2].copy_from_slice(&(b as u16).to_le_bytes());
        out[at + gap..at + gap + 2].copy_from_slice(&((b >> 16) as u16).to_le_bytes());
    }
    out
}

impl U4x2 {
    /// The pair `(value 2i, value 2i + 1)`.
    pub(crate) fn pair(self) -> (f32, f32) {
        ((self.0 & 15) as f32, (self.0 >> 4) as f32)
    }
}

/// [`WeightElem::dot4_scaled`] as one [`WeightElem::dot4`] per `cols`-wide block, each block
/// sum multiplied by its scale. `cols` must be a multiple of `W::VALUES`.
fn dot4_per_block<W: WeightElem>(
    isa: Isa,
    w: [&[W]; 4],
    x: &[f32],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    let k = x.len();
    let v = W::VALUES;
    let mut out = [0f32; 4];
    for (kb, lo) in (0..k).step_by(cols).enumerate() {
        let span = lo..(lo + cols).min(k);
        let elems = span.start / v..span.end.div_ceil(v);
        let next = next.map(|r| &r[elems.clone()]);
        let sums = W::dot4(isa, w.map(|r| &r[elems.clone()]), &x[span], next);
        for (q, (o, v)) in out.iter_mut().zip(sums).enumerate() {
            *o += v * scales[q][kb];
        }
    }
    out
}

/// The default [`WeightElem::dot4_rows`]: one [`WeightElem::dot4`] per row, the first
/// prefetching `next`.
fn one_by_one<W: WeightElem>(
    isa: Isa,
    w: [&[W]; 4],
    xs: &[Cow<'_, [f32]>],
    next: [&[W]; 4],
    out: &mut [[f32; 4]],
) {
    for (j, (x, o)) in xs.iter().zip(out).enumerate() {
        *o = W::dot4(isa, w, x, if j == 0 { next } else { w });
    }
}

/// The default [`WeightElem::dot4_scaled_rows`]: one [`WeightElem::dot4_scaled`] per row, the
/// first prefetching `next`.
fn scaled_one_by_one<W: WeightElem>(
    isa: Isa,
    w: [&[W]; 4],
    xs: &[Cow<'_, [f32]>],
    next: [&[W]; 4],
    scales: [&[f32]; 4],
    cols: usize,
    out: &mut [[f32; 4]],
) {
    for (j, (x, o)) in xs.iter().zip(out).enumerate() {
        *o = W::dot4_scaled(isa, w, x, if j == 0 { next } else { w }, scales, cols);
    }
}

/// Activation rows per call of a kernel that widens each weight once for several rows
/// ([`in_groups`]). Two rows against four weight rows are eight accumulators, which with the
/// two rows' activation vectors and one widened weight row fill AVX2's 16 registers; with
/// three rows the compiler spills the accumulators to the stack every iteration, and it was
/// no faster (`benchmarks/README.md`, "Batched decode on an AVX2-only VM").
const ROWS_PER_GROUP: usize = 2;

/// [`WeightElem::dot4_rows`] through a kernel generic over its row count: `group` over
/// [`ROWS_PER_GROUP`] rows at a time, `one` over each row left. The first call prefetches
/// `next`, later ones the rows themselves (already in cache). The kernels give each row the
/// same operations whatever its group, so the split does not change any result.
fn in_groups<W>(
    xs: &[Cow<'_, [f32]>],
    w: [&[W]; 4],
    next: [&[W]; 4],
    out: &mut [[f32; 4]],
    mut group: impl FnMut([&[f32]; ROWS_PER_GROUP], [&[W]; 4]) -> [[f32; 4]; ROWS_PER_GROUP],
    mut one: impl FnMut(&[f32], [&[W]; 4]) -> [f32; 4],
) {
    let mut prefetch = next;
    let mut groups = xs.chunks_exact(ROWS_PER_GROUP);
    let mut outs = out.chunks_exact_mut(ROWS_PER_GROUP);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let rows: [&[f32]; ROWS_PER_GROUP] = std::array::from_fn(|j| &*g[j]);
        o.copy_from_slice(&group(rows, prefetch));
        prefetch = w;
    }
    for (x, o) in groups.remainder().iter().zip(outs.into_remainder()) {
        *o = one(x, prefetch);
        prefetch = w;
    }
}

/// A raw output pointer shared by the GEMM's tasks, which write disjoint columns.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes only the columns of its own block of weight rows.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Send` wrapper, not its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Target bytes of weights per rayon task: large enough that scheduling is noise, small enough
/// that both cores stay busy until the end on small matrices.
const TASK_BYTES: usize = 256 << 10;

/// Weight rows per rayon task in the matrix-vector regime for `n` rows of `row_bytes`: at
/// least 8 tasks per thread for balance, each at least [`TASK_BYTES`] unless the matrix is
/// smaller than that.
fn rows_per_task(n: usize, row_bytes: usize) -> usize {
    let per_task = (n / (8 * rayon::current_num_threads())).max(TASK_BYTES / row_bytes.max(1));
    per_task.clamp(1, n)
}

/// `[N, K]` weights `w` (`K / W::VALUES` elements per row) times `m` rows `xs` `[m, K]` →
/// `[m, N]`, with the kernels of `isa`.
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
    let kw = k / W::VALUES; // elements per row
    let n = w.len().checked_div(kw).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let xs: Vec<Cow<[f32]>> = xs.chunks_exact(k).map(|x| W::prepare(isa, x)).collect();
    let rows_per_task = rows_per_task(n, kw * std::mem::size_of::<W>());
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * kw))
        .enumerate()
        .for_each(|(task, (out, rows))| {
            let first_row = task * rows_per_task;
            if W::streams_rows(isa) {
                stream_rows(isa, rows, k, &xs, out, scales.map(|s| (s, first_row)));
                return;
            }
            let n_quads = rows.len() / (4 * kw);
            let mut quads = rows.chunks_exact(4 * kw);
            let mut outs = out.chunks_exact_mut(4 * m);
            let mut bufs: [Vec<f32>; 4] = Default::default();
            let mut sums = vec![[0f32; 4]; m];
            for (qi, (o, quad)) in (&mut outs).zip(&mut quads).enumerate() {
                let r = split4(quad, kw);
                // The next quad's rows are prefetched while these four are summed (the last
                // quad of a task prefetches its own rows, which are in cache already).
                let next = if qi + 1 < n_quads {
                    split4(&rows[(qi + 1) * 4 * kw..], kw)
                } else {
                    r
                };
                let row_scales = scales.map(|s| s.rows4(first_row + 4 * qi, k, &mut bufs));
                match (scales, row_scales) {
                    (Some(s), Some(rows)) => {
                        W::dot4_scaled_rows(isa, r, &xs, next, rows, s.cols, &mut sums)
                    }
                    _ => W::dot4_rows(isa, r, &xs, next, &mut sums),
                }
                for (j, s) in sums.iter().enumerate() {
                    for (q, &v) in s.iter().enumerate() {
                        o[q * m + j] = v;
                    }
                }
            }
            let rest = outs.into_remainder().chunks_exact_mut(m);
            let first_rest = first_row + 4 * n_quads;
            for (i, (o, row)) in rest.zip(quads.remainder().chunks_exact(kw)).enumerate() {
                let scale = scales.map(|s| s.row(first_rest + i, k, &mut bufs[0]));
                for (o, x) in o.iter_mut().zip(&xs) {
                    *o = match (scales, scale) {
                        (Some(s), Some(scale)) => W::dot_scaled(isa, row, x, scale, s.cols),
                        _ => W::dot(isa, row, x),
                    };
                }
            }
        });
    transpose(out_t, n, m)
}

/// Activation bytes (all rows of a call) up to which [`stream_rows`] reads one weight row at a
/// time: they then stay in L1 while the weight rows stream past. Past it, four rows at a time
/// load each activation vector once for four weight rows; reloading it from L2 for every row
/// cost a third of the streaming rate on `[2048, 7168]` and `[2048, 10944]` matrices on a
/// Zen 4, while at `K = 2048` one row and four were level (`benchmarks/README.md`, "Weight
/// streams per core").
pub(crate) const ONE_ROW_MAX_X_BYTES: usize = 16 << 10;

/// `n` rows as four streams when `apart`: the quadruples `[i, q + i, 2q + i, 3q + i]` (`q = n /
/// 4`), one row from each quarter, then the rows left after `4q`; otherwise no quadruples and
/// every row left, one stream.
pub(crate) fn rows_apart(
    n: usize,
    apart: bool,
) -> (impl Iterator<Item = [usize; 4]>, std::ops::Range<usize>) {
    let q = if apart { n / 4 } else { 0 };
    (
        (0..q).map(move |i| [i, q + i, 2 * q + i, 3 * q + i]),
        4 * q..n,
    )
}

/// The matrix-vector regime where [`WeightElem::streams_rows`]: `rows` (a task's, `K /
/// W::VALUES` elements each) against every prepared row of `xs` into `out` (`[rows, m]`).
/// While the activations fit [`ONE_ROW_MAX_X_BYTES`] the rows are read one after another, one
/// sequential stream per core, which the kernels prefetch a fixed distance ahead of their
/// reads (`x86::prefetch_ahead`; four adjacent rows at a time, four 4 KiB streams restarting
/// every row with software prefetches of the next four, streamed 1.2-1.4x slower in the model
/// on a Zen 4; without the prefetches ahead, one stream ran at 0.6-0.7x the four on a
/// Sapphire Rapids, `benchmarks/README.md`). Past it, one row from each quarter of the task
/// at a time ([`rows_apart`]): four long streams, each activation load serving four rows. With
/// `scales` (and the task's first row) the rows are block-scaled. Every row's result is its
/// [`WeightElem::dot`] / [`WeightElem::dot_scaled`], whatever `m` and the task split.
fn stream_rows<W: WeightElem>(
    isa: Isa,
    rows: &[W],
    k: usize,
    xs: &[Cow<'_, [f32]>],
    out: &mut [f32],
    scales: Option<(&BlockScales, usize)>,
) {
    let (kw, m) = (k / W::VALUES, xs.len());
    let row = |r: usize| &rows[r * kw..(r + 1) * kw];
    let n = rows.len() / kw;
    let mut bufs: [Vec<f32>; 4] = Default::default();
    let apart = m * k * std::mem::size_of::<f32>() > ONE_ROW_MAX_X_BYTES;
    let (quads, rest) = rows_apart(n, apart);
    for at in quads {
        let row_scales =
            scales.map(|(s, first)| (s.rows_at(at.map(|r| first + r), k, &mut bufs), s.cols));
        // The rows are their own `next`: streaming kernels prefetch only ahead in their rows.
        let w = at.map(row);
        let mut put = |j: usize, sums: [f32; 4]| {
            for (r, v) in at.into_iter().zip(sums) {
                out[r * m + j] = v;
            }
        };
        match row_scales {
            Some((scales, cols)) => {
                for (j, x) in xs.iter().enumerate() {
                    put(j, W::dot4_scaled(isa, w, x, w, scales, cols));
                }
            }
            None => {
                // Activation rows in pairs: each weight load serves two of them.
                let mut pairs = xs.chunks_exact(2);
                for (p, pair) in (&mut pairs).enumerate() {
                    let [a, b] = W::dot4_x2(isa, w, [&pair[0], &pair[1]]);
                    put(2 * p, a);
                    put(2 * p + 1, b);
                }
                if let [x] = pairs.remainder() {
                    put(m - 1, W::dot4(isa, w, x, w));
                }
            }
        }
    }
    for r in rest {
        let scale = scales.map(|(s, first)| (s.row(first + r, k, &mut bufs[0]), s.cols));
        for (j, x) in xs.iter().enumerate() {
            out[r * m + j] = match scale {
                Some((scale, cols)) => W::dot_scaled(isa, row(r), x, scale, cols),
                None => W::dot(isa, row(r), x),
            };
        }
    }
}

/// `[N, m]` row-major (how the kernels fill it: each task owns whole weight rows) to the
/// `[m, N]` the callers return. In parallel over blocks of [`TRANSPOSE_BLOCK`] weight rows:
/// each task reads its block of `out_t` (in L2) once and writes `m` contiguous runs. (One
/// thread scattering `out[j · N + r]` was ~7% of a 16-stream decode step on two cores: the
/// 102400-row head's writes each landed on another page.)
fn transpose(out_t: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; n * m];
    let mut blocks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(TRANSPOSE_BLOCK))
        .map(|_| Vec::with_capacity(m))
        .collect();
    for row in out.chunks_mut(n) {
        for (block, run) in blocks.iter_mut().zip(row.chunks_mut(TRANSPOSE_BLOCK)) {
            block.push(run);
        }
    }
    blocks
        .into_par_iter()
        .zip(out_t.par_chunks(TRANSPOSE_BLOCK * m))
        .for_each(|(mut runs, block)| {
            for (r, values) in block.chunks_exact(m).enumerate() {
                for (run, &v) in runs.iter_mut().zip(values) {
                    run[r] = v;
                }
            }
        });
    out
}

/// Weight rows per task of [`transpose`]: `m · 4` KiB of its input.
const TRANSPOSE_BLOCK: usize = 1024;

/// [`product`], or with `every_row_gemv` [`matmul_rows`] whatever `m`: every row through the
/// matrix-vector kernel, so each row's result has the same bits whatever the other rows.
pub(crate) fn product_rows<W: WeightElem>(
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: Option<&BlockScales>,
    every_row_gemv: bool,
) -> Vec<f32> {
    if every_row_gemv {
        matmul_rows(isa, w, k, xs, m, scales)
    } else {
        product(isa, w, k, xs, m, scales)
    }
}

/// `[N, K]` weights times `m` rows `xs` `[m, K]` → `[m, N]` in the regime `m` calls for: the
/// matrix-vector kernel up to [`GEMV_MAX_ROWS`] rows, the GEMM above (the crate docs).
pub(crate) fn product<W: WeightElem>(
    isa: Isa,
    w: &[W],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: Option<&BlockScales>,
) -> Vec<f32> {
    if m <= GEMV_MAX_ROWS {
        matmul_rows(isa, w, k, xs, m, scales)
    } else {
        gemm(isa, w, k, xs, m, scales)
    }
}

/// Per-block scales of a block-quantised weight (for weight types whose
/// [`WeightElem::prepare`] is the identity, so a span of `x` lines up with the same span of a
/// row): `W[r, c] = q[r, c] · scale[r / rows, c / cols]`
/// with `scale` row-major `[ceil(N / rows), ceil(K / cols)]`. The kernels sum the products of
/// each `cols`-wide block of `K` unscaled, then multiply the block's sum by its scale in f32.
pub(crate) struct BlockScales<'a> {
    pub scale: Scales<'a>,
    pub rows: usize,
    pub cols: usize,
}

/// The stored scales: f32 (FP8's), or f16 (the 8/4-bit formats', as GGUF stores them).
#[derive(Clone, Copy)]
pub(crate) enum Scales<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl BlockScales<'_> {
    /// The scales of weight row `r` over every block of `K` (`k` values long), in f32:
    /// borrowed when stored in f32, widened into `buf` when stored in f16.
    pub(crate) fn row<'s>(&'s self, r: usize, k: usize, buf: &'s mut Vec<f32>) -> &'s [f32] {
        let per_row = k.div_ceil(self.cols);
        let at = (r / self.rows) * per_row;
        match self.scale {
            Scales::F32(v) => &v[at..at + per_row],
            Scales::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                buf.resize(per_row, 0.0);
                v[at..at + per_row].convert_to_f32_slice(buf);
                buf
            }
        }
    }

    /// [`BlockScales::row`] of rows `first..first + 4`.
    fn rows4<'s>(&'s self, first: usize, k: usize, bufs: &'s mut [Vec<f32>; 4]) -> [&'s [f32]; 4] {
        self.rows_at([first, first + 1, first + 2, first + 3], k, bufs)
    }

    /// [`BlockScales::row`] of four rows.
    fn rows_at<'s>(
        &'s self,
        r: [usize; 4],
        k: usize,
        bufs: &'s mut [Vec<f32>; 4],
    ) -> [&'s [f32]; 4] {
        let [a, b, c, d] = bufs.each_mut();
        [
            self.row(r[0], k, a),
            self.row(r[1], k, b),
            self.row(r[2], k, c),
            self.row(r[3], k, d),
        ]
    }
}

/// `x` laid out by `x86::split_even_odd` when `isa` runs the AVX2 kernels that read pairs
/// (bf16, 4-bit), as is otherwise: their [`WeightElem::prepare`].
fn split_for_avx2(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx2_fma().is_some() {
        return Cow::Owned(x86::split_even_odd(x, 16));
    }
    let _ = isa;
    Cow::Borrowed(x)
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

/// [`WeightElem::dot4_rows`] through the AVX2 pair kernel `x86::$kernel` (rows two at a time,
/// [`in_groups`]) when `isa` gives its `$token` and no AVX-512 kernel is chosen first (the
/// same tests, in the same order, as the type's `dot4`, so each row takes the kernel it would
/// take alone); one row at a time otherwise.
macro_rules! dot4_rows_in_pairs {
    ($kernel:ident, $token:ident) => {
        fn dot4_rows(
            isa: Isa,
            w: [&[Self]; 4],
            xs: &[Cow<'_, [f32]>],
            next: [&[Self]; 4],
            out: &mut [[f32; 4]],
        ) {
            #[cfg(target_arch = "x86_64")]
            if let (None, Some(t)) = (isa.avx512f(), isa.$token()) {
                return in_groups(
                    xs,
                    w,
                    next,
                    out,
                    |xs, next| x86::$kernel(t, w, xs, next),
                    |x, next| x86::$kernel(t, w, [x], next)[0],
                );
            }
            one_by_one(isa, w, xs, next, out)
        }
    };
}

/// The streaming methods of a one-value float element on the AVX-512F kernels of
/// [`x86_512_dot`] (`$one`, one row; `$two`, four rows against two activation rows):
/// [`WeightElem::dot`] (`otherwise` on other paths), [`WeightElem::dot4_x2`] and
/// [`WeightElem::streams_rows`].
macro_rules! avx512_rows {
    ($t:ty, $one:ident, $two:ident, |$isa:ident, $w:ident, $x:ident| $otherwise:expr) => {
        fn dot4_x2(isa: Isa, w: [&[$t]; 4], x: [&[f32]; 2]) -> [[f32; 4]; 2] {
            #[cfg(target_arch = "x86_64")]
            if let (Some(t), true) = (isa.avx512f(), x[0].len() == x[1].len()) {
                return x86_512_dot::$two(t, w, x);
            }
            x.map(|x| Self::dot4(isa, w, x, w))
        }

        fn dot($isa: Isa, $w: &[$t], $x: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = $isa.avx512f() {
                return x86_512_dot::$one(t, $w, $x);
            }
            $otherwise
        }

        fn streams_rows(isa: Isa) -> bool {
            #[cfg(target_arch = "x86_64")]
            return isa.avx512f().is_some();
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = isa;
                false
            }
        }
    };
}

// The dispatch. Each x86 kernel is reached only through the proof token an `Isa` carries, so
// no branch here re-checks the CPU; without a token the portable loop runs.

impl WeightElem for f32 {
    fn dot4(isa: Isa, w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx512f() {
            return x86_512_dot::dot4_f32(t, w, x);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot4_rows_f32(t, w, [x], next)[0];
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    dot4_rows_in_pairs!(dot4_rows_f32, avx2_fma);

    avx512_rows!(f32, dot_f32, dot4x2_f32, |isa, w, x| {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot_f32(t, w, x);
        }
        let _ = isa;
        portable::dot(w, x)
    });

    fn widen_row(src: &[f32], dst: &mut [f32]) {
        widen_scalars(src, dst)
    }
}

impl Scalar for f32 {
    fn widen(self) -> f32 {
        self
    }
}

impl WeightElem for bf16 {
    fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512f().is_some() {
            return Cow::Owned(x86::split_even_odd(x, x86_512_dot::STEP));
        }
        split_for_avx2(isa, x)
    }

    fn dot4(isa: Isa, w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
        // The same tests as `prepare`'s, in the same order, on the same `isa`: `x` is split
        // the way the kernel that runs reads it.
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx512f() {
            return x86_512_dot::dot4_bf16(t, w, x);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot4_rows_bf16(t, w, [x], next)[0];
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    dot4_rows_in_pairs!(dot4_rows_bf16, avx2_fma);

    avx512_rows!(bf16, dot_bf16, dot4x2_bf16, |isa, w, x| Self::dot4(
        isa, [w; 4], x, [w; 4]
    )[0]);

    fn widen_row(src: &[bf16], dst: &mut [f32]) {
        // The exact widening as a plain shift, which the compiler vectorises (`bf16::to_f32`
        // also quiets signalling NaNs, a branch per value; a NaN stays a NaN either way).
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

impl Scalar for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl WeightElem for f16 {
    fn dot4(isa: Isa, w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx512f() {
            return x86_512_dot::dot4_f16(t, w, x);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma_f16c() {
            return x86::dot4_rows_f16(t, w, [x], next)[0];
        }
        let _ = (isa, next);
        portable::dot4(w, x)
    }

    dot4_rows_in_pairs!(dot4_rows_f16, avx2_fma_f16c);

    avx512_rows!(f16, dot_f16, dot4x2_f16, |isa, w, x| Self::dot4(
        isa, [w; 4], x, [w; 4]
    )[0]);

    fn widen_row(src: &[f16], dst: &mut [f32]) {
        widen_scalars(src, dst)
    }
}

impl Scalar for f16 {
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

impl Scalar for F8E4M3 {
    fn widen(self) -> f32 {
        E4M3[self.to_bits() as usize]
    }
}

/// e4m3 bytes of a matrix checked once to hold no NaN code (`S.1111.111`, which no trained
/// weight is): the SIMD kernel widens them with three integer ops per 8 values instead of
/// also patching NaN codes (which it would read as ±480). [`E4m3NoNan::view`] is the only
/// way to check a slice; [`crate::Fp8Matrix`] calls it once, when it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct E4m3NoNan(u8);

impl E4m3NoNan {
    /// `v` viewed as NaN-free, if it is (one pass over the bytes).
    pub(crate) fn view(v: &[F8E4M3]) -> Option<&[E4m3NoNan]> {
        // Slices of 1 MiB in parallel (a checkpoint's matrix is read here for the first time,
        // so this is where its pages fault in), each in runs of 64 bytes folded without a
        // branch, which the compiler vectorises; a NaN code ends the scan within its run.
        let nan_in = |run: &[F8E4M3]| {
            run.iter()
                .fold(false, |n, b| n | (b.to_bits() & 0x7f == 0x7f))
        };
        let nan = v
            .par_chunks(1 << 20)
            .any(|part| part.chunks(64).any(nan_in));
        (!nan).then(|| Self::checked_before(v))
    }

    /// `v` viewed as NaN-free without a scan: for bytes that [`E4m3NoNan::view`] accepted
    /// before (a matrix scans once when it is built, not per product). A NaN code that slipped
    /// through would read as ±480, never as memory unsafety.
    pub(crate) fn checked_before(v: &[F8E4M3]) -> &[E4m3NoNan] {
        // SAFETY: `E4m3NoNan` and `F8E4M3` are both `repr(transparent)` over `u8`, so the
        // slices have the same layout, length and alignment.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const E4m3NoNan, v.len()) }
    }
}

impl Scalar for E4m3NoNan {
    fn widen(self) -> f32 {
        E4M3[self.0 as usize]
    }
}

impl Scalar for i8 {
    fn widen(self) -> f32 {
        self as f32
    }
}

/// [`WeightElem`] for a one-value element that only ever comes with block scales (FP8, Q8):
/// the SIMD kernel `x86::$kernel` when `isa.$token()` gives the proof token it needs, the
/// portable loops otherwise.
macro_rules! block_scaled_elem {
    ($t:ty, $token:ident, $kernel:ident) => {
        impl WeightElem for $t {
            fn dot4(isa: Isa, w: [&[$t]; 4], x: &[f32], next: [&[$t]; 4]) -> [f32; 4] {
                let _ = (isa, next);
                portable::dot4(w, x)
            }

            fn dot4_scaled(
                isa: Isa,
                w: [&[$t]; 4],
                x: &[f32],
                next: [&[$t]; 4],
                scales: [&[f32]; 4],
                cols: usize,
            ) -> [f32; 4] {
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = isa.$token() {
                    return x86::$kernel(t, w, x, next, scales, cols);
                }
                dot4_per_block(isa, w, x, next, scales, cols)
            }

            fn widen_row(src: &[$t], dst: &mut [f32]) {
                widen_scalars(src, dst)
            }
        }
    };
}

block_scaled_elem!(i8, avx2_fma, dot4_scaled);

/// [`WeightElem`] for e4m3 bytes: the VBMI kernel where the CPU has it (activations laid out
/// by `x86_512_e4m3::split`), the AVX2 ones otherwise ([`E4m3Avx2`]), the portable loops
/// without either.
macro_rules! e4m3_elem {
    ($t:ty) => {
        impl WeightElem for $t {
            fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
                #[cfg(target_arch = "x86_64")]
                if isa.avx512_vbmi().is_some() {
                    return Cow::Owned(x86_512_e4m3::split(x));
                }
                let _ = isa;
                Cow::Borrowed(x)
            }

            fn dot4(isa: Isa, w: [&[$t]; 4], x: &[f32], next: [&[$t]; 4]) -> [f32; 4] {
                // The same test as `prepare`'s: the VBMI kernel reads the split layout.
                #[cfg(target_arch = "x86_64")]
                if isa.avx512_vbmi().is_some() {
                    return w.map(|r| Self::dot(isa, r, x));
                }
                let _ = (isa, next);
                portable::dot4(w, x)
            }

            fn dot4_scaled(
                isa: Isa,
                w: [&[$t]; 4],
                x: &[f32],
                next: [&[$t]; 4],
                scales: [&[f32]; 4],
                cols: usize,
            ) -> [f32; 4] {
                #[cfg(target_arch = "x86_64")]
                {
                    let natural;
                    let mut x = x;
                    if let Some(t) = isa.avx512_vbmi() {
                        if cols > 0 && cols.is_multiple_of(x86_512_e4m3::STEP) {
                            return x86_512_e4m3::dot4_scaled(t, w, x, scales, cols);
                        }
                        // Blocks the kernel's steps do not tile (no checkpoint ships them):
                        // the AVX2 kernel on `x` back in natural order.
                        natural = x86_512_e4m3::unsplit(x, w[0].len());
                        x = &natural;
                    }
                    if let Some(out) =
                        <$t as E4m3Avx2>::dot4_scaled_avx2(isa, w, x, next, scales, cols)
                    {
                        return out;
                    }
                }
                dot4_per_block(isa, w, x, next, scales, cols)
            }

            fn dot4_scaled_rows(
                isa: Isa,
                w: [&[$t]; 4],
                xs: &[Cow<'_, [f32]>],
                next: [&[$t]; 4],
                scales: [&[f32]; 4],
                cols: usize,
                out: &mut [[f32; 4]],
            ) {
                // (The VBMI kernel reads the split layout, one row at a time.)
                #[cfg(target_arch = "x86_64")]
                if isa.avx512_vbmi().is_none()
                    && <$t as E4m3Avx2>::dot4_scaled_rows_avx2(isa, w, xs, next, scales, cols, out)
                {
                    return;
                }
                scaled_one_by_one(isa, w, xs, next, scales, cols, out)
            }

            fn dot(isa: Isa, w: &[$t], x: &[f32]) -> f32 {
                // The VBMI kernel on one block of scale 1.
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = isa.avx512_vbmi() {
                    let step = x86_512_e4m3::STEP;
                    let cols = w.len().next_multiple_of(step).max(step);
                    return x86_512_e4m3::dot_scaled(t, w, x, &[1.0], cols);
                }
                Self::dot4(isa, [w; 4], x, [w; 4])[0]
            }

            fn dot_scaled(isa: Isa, w: &[$t], x: &[f32], scales: &[f32], cols: usize) -> f32 {
                #[cfg(target_arch = "x86_64")]
                if let Some(t) = isa.avx512_vbmi() {
                    if cols > 0 && cols.is_multiple_of(x86_512_e4m3::STEP) {
                        return x86_512_e4m3::dot_scaled(t, w, x, scales, cols);
                    }
                }
                Self::dot4_scaled(isa, [w; 4], x, [w; 4], [scales; 4], cols)[0]
            }

            fn streams_rows(isa: Isa) -> bool {
                #[cfg(target_arch = "x86_64")]
                return isa.avx512_vbmi().is_some();
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = isa;
                    false
                }
            }

            fn widen_row(src: &[$t], dst: &mut [f32]) {
                widen_scalars(src, dst)
            }

            fn widen_row_scaled(
                isa: Isa,
                src: &[$t],
                dst: &mut [f32],
                scales: &[f32],
                cols: usize,
            ) {
                #[cfg(target_arch = "x86_64")]
                if <$t as E4m3Avx2>::widen_row_scaled_avx2(isa, src, dst, scales, cols) {
                    return;
                }
                let _ = isa;
                widen_scaled_blocks(src, dst, scales, cols)
            }
        }
    };
}

e4m3_elem!(F8E4M3);
e4m3_elem!(E4m3NoNan);

/// The AVX2 block-scaled kernels of each kind of e4m3 bytes (`x` in natural order).
#[cfg(target_arch = "x86_64")]
trait E4m3Avx2: WeightElem {
    /// [`WeightElem::dot4_scaled`], `None` where the CPU lacks what the kernel needs.
    fn dot4_scaled_avx2(
        isa: Isa,
        w: [&[Self]; 4],
        x: &[f32],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> Option<[f32; 4]>;

    /// [`WeightElem::dot4_scaled_rows`] with each weight widened once for several rows, if
    /// there is such a kernel for this CPU (`false`: nothing written, the rows go one by one
    /// through [`E4m3Avx2::dot4_scaled_avx2`]).
    fn dot4_scaled_rows_avx2(
        isa: Isa,
        w: [&[Self]; 4],
        xs: &[Cow<'_, [f32]>],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
        out: &mut [[f32; 4]],
    ) -> bool {
        let _ = (isa, w, xs, next, scales, cols, out);
        false
    }

    /// [`WeightElem::widen_row_scaled`] in SIMD code, if there is such a kernel for this CPU
    /// (`false`: nothing written).
    fn widen_row_scaled_avx2(
        isa: Isa,
        src: &[Self],
        dst: &mut [f32],
        scales: &[f32],
        cols: usize,
    ) -> bool {
        let _ = (isa, src, dst, scales, cols);
        false
    }
}

/// Bytes that may hold NaN codes: the F16C widening, which patches them, one row at a time.
#[cfg(target_arch = "x86_64")]
impl E4m3Avx2 for F8E4M3 {
    fn dot4_scaled_avx2(
        isa: Isa,
        w: [&[Self]; 4],
        x: &[f32],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> Option<[f32; 4]> {
        let t = isa.avx2_fma_f16c()?;
        Some(x86::dot4_scaled_f16c(t, w, x, next, scales, cols))
    }
}

/// NaN-free bytes: the integer widening (`x86::dot4_e4m3_rows`), whose products are the exact
/// ones over 2³⁰, two activation rows per pass. Where an activation times 2⁹⁰ or a scale
/// times 2³⁰ leaves f32's range (or the inputs hold an infinity or a NaN) a row's sums are not
/// finite, and that row is summed again at its own scale by the portable loops.
#[cfg(target_arch = "x86_64")]
impl E4m3Avx2 for E4m3NoNan {
    fn dot4_scaled_avx2(
        isa: Isa,
        w: [&[Self]; 4],
        x: &[f32],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> Option<[f32; 4]> {
        let t = isa.avx2_fma()?;
        let [out] = x86::dot4_e4m3_rows(t, w, [x], next, scales, cols);
        Some(finite_or_portable(out, w, x, scales, cols))
    }

    fn dot4_scaled_rows_avx2(
        isa: Isa,
        w: [&[Self]; 4],
        xs: &[Cow<'_, [f32]>],
        next: [&[Self]; 4],
        scales: [&[f32]; 4],
        cols: usize,
        out: &mut [[f32; 4]],
    ) -> bool {
        let Some(t) = isa.avx2_fma() else {
            return false;
        };
        in_groups(
            xs,
            w,
            next,
            out,
            |x, next| x86::dot4_e4m3_rows(t, w, x, next, scales, cols),
            |x, next| x86::dot4_e4m3_rows(t, w, [x], next, scales, cols)[0],
        );
        for (x, o) in xs.iter().zip(out) {
            *o = finite_or_portable(*o, w, x, scales, cols);
        }
        true
    }

    fn widen_row_scaled_avx2(
        isa: Isa,
        src: &[Self],
        dst: &mut [f32],
        scales: &[f32],
        cols: usize,
    ) -> bool {
        let Some(t) = isa.avx2_fma() else {
            return false;
        };
        x86::widen_e4m3_scaled(t, src, dst, scales, cols);
        true
    }
}

/// `out` if every sum is finite, else the four rows' [`WeightElem::dot4_scaled`] on the
/// portable loops (see [`E4m3Avx2`] for `E4m3NoNan`).
#[cfg(target_arch = "x86_64")]
fn finite_or_portable(
    out: [f32; 4],
    w: [&[E4m3NoNan]; 4],
    x: &[f32],
    scales: [&[f32]; 4],
    cols: usize,
) -> [f32; 4] {
    if out.iter().all(|v| v.is_finite()) {
        out
    } else {
        dot4_per_block(Isa::portable(), w, x, w, scales, cols)
    }
}

impl WeightElem for U4x2 {
    const VALUES: usize = 2;

    fn prepare(isa: Isa, x: &[f32]) -> Cow<'_, [f32]> {
        split_for_avx2(isa, x)
    }

    fn dot4(isa: Isa, w: [&[U4x2]; 4], x: &[f32], next: [&[U4x2]; 4]) -> [f32; 4] {
        // The same test as `prepare`'s: the AVX2 kernel reads the split layout, as one block.
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            let one = [1f32];
            let cols = x.len().next_multiple_of(16).max(16);
            return x86::dot4_u4_scaled(t, w, x, next, [&one; 4], cols);
        }
        let _ = (isa, next);
        w.map(|row| portable::dot_u4(row, x))
    }

    fn dot4_scaled(
        isa: Isa,
        w: [&[U4x2]; 4],
        x: &[f32],
        next: [&[U4x2]; 4],
        scales: [&[f32]; 4],
        cols: usize,
    ) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx2_fma() {
            return x86::dot4_u4_scaled(t, w, x, next, scales, cols);
        }
        dot4_per_block(isa, w, x, next, scales, cols)
    }

    fn widen_row(src: &[U4x2], dst: &mut [f32]) {
        for (d, s) in dst.chunks_exact_mut(2).zip(src) {
            (d[0], d[1]) = s.pair();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The GEMM's FP8 weight rows: every path's widening of NaN-free e4m3 bytes times block
    /// scales has the bits of the table's value times the scale, for every code (subnormals,
    /// ±0, ±448), scales of every magnitude and blocks and rows that end mid-vector.
    #[test]
    fn e4m3_rows_widen_to_the_table_values_times_their_scales() {
        let codes: Vec<u8> = (0..=255u8).filter(|b| b & 0x7f != 0x7f).collect();
        let bytes: Vec<F8E4M3> = (0..1000)
            .map(|i| F8E4M3::from_bits(codes[(i * 37 + i / 7) % codes.len()]))
            .collect();
        let src = E4m3NoNan::view(&bytes).expect("no NaN codes");
        for cols in [128, 13, 8, 1000] {
            let scales: Vec<f32> = (0..src.len().div_ceil(cols))
                .map(|b| [1e-4, 3.7, 1e30, 2.5e-38][b % 4])
                .collect();
            let mut want = vec![0f32; src.len()];
            widen_scaled_blocks(src, &mut want, &scales, cols);
            for (i, (w, b)) in want.iter().zip(&bytes).enumerate() {
                let value = E4M3[b.to_bits() as usize] * scales[i / cols];
                assert_eq!(w.to_bits(), value.to_bits(), "cols {cols}, value {i}");
            }
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; src.len()];
                E4m3NoNan::widen_row_scaled(isa, src, &mut got, &scales, cols);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa} cols {cols}");
            }
        }
    }

    /// The blocked transpose against the element-by-element definition, on sizes around the
    /// block (a short last block, one block, fewer rows than a block) and one activation row.
    #[test]
    fn transpose_is_the_definition() {
        for (n, m) in [
            (2 * TRANSPOSE_BLOCK + 37, 5),
            (TRANSPOSE_BLOCK, 16),
            (7, 3),
            (9, 1),
        ] {
            let out_t: Vec<f32> = (0..n * m).map(|i| i as f32).collect();
            let out = transpose(out_t.clone(), n, m);
            for r in 0..n {
                for j in 0..m {
                    assert_eq!(out[j * n + r], out_t[r * m + j], "n {n} m {m} r {r} j {j}");
                }
            }
        }
    }

    /// f64 oracle of `[m, N]` over the exactly widened weights (shared with the GEMM's tests).
    pub(crate) fn oracle<W: WeightElem>(w: &[W], k: usize, xs: &[f32], m: usize) -> Vec<f64> {
        let kw = k / W::VALUES;
        let n = w.len() / kw;
        let mut out = vec![0f64; m * n];
        let mut row = vec![0f32; k];
        for r in 0..n {
            W::widen_row(&w[r * kw..(r + 1) * kw], &mut row);
            for j in 0..m {
                out[j * n + r] = (0..k).map(|c| row[c] as f64 * xs[j * k + c] as f64).sum();
            }
        }
        out
    }

    /// `got` against the oracle's `want`: only the f32 summation order may differ.
    pub(crate) fn assert_matches_oracle(got: &[f32], want: &[f64], k: usize, what: &str) {
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
    fn paths_agree<W: WeightElem + Scalar>(narrow: impl Fn(f32) -> W) {
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

    /// `dot4_x2` of every path gives each activation row the bits of its own `dot4` (what
    /// the matrix-vector regime's batch invariance rests on), on lengths around the blocks.
    fn pairs_are_two_single_rows<W: WeightElem>(narrow: impl Fn(f32) -> W) {
        for len in [2048, 999, 64, 37, 32, 31, 7, 0] {
            let rows: Vec<Vec<W>> = (0..4)
                .map(|r| {
                    (0..len)
                        .map(|i| narrow((i as f32 + r as f32).cos()))
                        .collect()
                })
                .collect();
            let w = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let x: [Vec<f32>; 2] =
                [0.5, 0.9].map(|f| (0..len).map(|i| (i as f32 * f).sin()).collect());
            for isa in Isa::supported() {
                let xp = x.each_ref().map(|x| W::prepare(isa, x));
                let pair = W::dot4_x2(isa, w, [&xp[0], &xp[1]]);
                for j in 0..2 {
                    let alone = W::dot4(isa, w, &xp[j], w);
                    assert_eq!(
                        pair[j].map(f32::to_bits),
                        alone.map(f32::to_bits),
                        "{isa} len {len} row {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn pairs_of_activation_rows_are_bit_identical_to_single_rows() {
        pairs_are_two_single_rows(|v| v);
        pairs_are_two_single_rows(bf16::from_f32);
        pairs_are_two_single_rows(f16::from_f32);
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
