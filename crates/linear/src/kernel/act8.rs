//! Matrix-vector products of 4-bit and 8-bit weights with 8-bit activations, as llama.cpp
//! computes its block formats: each group of 32 activations is rounded to i8 with its own
//! scale (`dx = max |x| / 127`, `xq = round(x / dx)`), the products of the integer weights
//! with them are summed exactly in integers, and each group's integer sum is scaled once:
//! `Σ_g s_g · dx_g · Σ_{c in g} q_c · xq_c`. That is 2-3x fewer operations per weight than
//! widening each weight to f32, which is what keeps a quantised row's product near the speed
//! of memory; the price is the activations' rounding (a relative error of about
//! `1 / (127 · sqrt(12))` per activation, under the 8-bit weights' own and far under the
//! 4-bit ones').

use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use super::{portable, u5_row_bytes, Nibbles, U4x2, TASK_BYTES};
use crate::Isa;

/// Values per group: the 4-bit format's (`crate::QUANT_GROUP`).
pub(crate) const GROUP: usize = 32;

/// One activation row rounded to 8 bits per group, laid out for the kernels: full groups in
/// blocks of [`Layout`]'s widths (four, two or one groups), each block the even values of its
/// groups in order, then their odd values (16 values per group each: `[A even | B even |
/// A odd | B odd]` for a pair), a last partial group in natural order. (The weights hold values
/// `2i` and `2i + 1` in the low and high nibble of byte `i`, so even values meet the low
/// nibbles.)
pub(crate) struct Q8Row {
    pub q: Vec<i8>,
    /// `dx` per group.
    pub scale: Vec<f32>,
    /// The sum of the rounded values per group, `dx · Σ xq` (what a 4-bit or 5-bit row's
    /// offsets multiply). Over the rounded values, a row `s · q + m` meets the activations'
    /// rounding errors `e` as `Σ (s · q + m) · e`: the dequantised weights' own error, as an
    /// 8-bit row's. Over the unrounded ones it would be `Σ s · q · e`, and `s · q = w − m`
    /// lies mostly further from zero than `w` (`m` sits near the group's minimum): three to
    /// four times the error variance at 5 bits (measured: `benchmarks/README.md`). A
    /// symmetric format held with `m = −8 · d` or `−16 · d` (GGUF's Q4_0 / Q5_0) so gets the
    /// sums its own `d · Σ (q − 8) · xq` would.
    pub sums: Vec<f32>,
    /// The sum of the rounded values per 16 (what the zero point of the rows with a scale per
    /// 16 multiplies, or the 2-bit rows' offsets): filled by [`q8_row_six`] only, empty
    /// otherwise.
    pub sums16: Vec<f32>,
    /// [`Q8Row::sums16`] as integers (at most `16 · 127` in magnitude), for the kernels that
    /// scale them in integers: filled by [`q8_row_six`] only.
    pub sums16_i16: Vec<i16>,
    /// Each group's `dx` four times over (the lanes of the AVX2 K-quant kernel's sums, four
    /// per group): filled by [`q8_row`] in [`Layout::Pairs`] only.
    pub scale4: Vec<f32>,
}

/// How [`q8_row`] blocks the full groups: pairs (the AVX2 kernel's two groups per 32-byte
/// load), or quads first (the VNNI kernel's four groups per 64-byte load), then pairs; an odd
/// group last alone. Every block starts at a group index that is a multiple of its width, so a
/// kernel can hand the rest of a row to a narrower one at any multiple of four groups.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Layout {
    Pairs,
    Quads,
}

impl Layout {
    /// The layout `isa`'s 4-bit kernel reads.
    pub(crate) fn of(isa: Isa) -> Layout {
        #[cfg(target_arch = "x86_64")]
        if isa.avx512_vnni().is_some() {
            return Layout::Quads;
        }
        let _ = isa;
        Layout::Pairs
    }

    /// `(first group, groups)` of each block over `full` full groups.
    fn blocks(self, full: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut g = 0;
        std::iter::from_fn(move || {
            let width = match full - g {
                0 => return None,
                left if left >= 4 && self == Layout::Quads => 4,
                1 => 1,
                _ => 2,
            };
            g += width;
            Some((g - width, width))
        })
    }
}

/// Every other value of `g` from `parity` on.
fn evens_odds(g: &[i8], parity: usize) -> impl Iterator<Item = i8> + '_ {
    g.iter().skip(parity).step_by(2).copied()
}

/// `x` rounded to 8 bits per group of [`GROUP`], in natural order, with each group's `dx`
/// (the layout the 8-bit weights' kernel reads).
pub(crate) fn q8_row_natural(x: &[f32]) -> Q8Row {
    let groups = x.len().div_ceil(GROUP);
    let mut scale = Vec::with_capacity(groups);
    let mut sums = Vec::with_capacity(groups);
    let mut q = Vec::with_capacity(x.len());
    for g in x.chunks(GROUP) {
        let amax = g.iter().fold(0f32, |a, v| a.max(v.abs()));
        let dx = amax / 127.0;
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        scale.push(dx);
        let start = q.len();
        q.extend(g.iter().map(|v| {
            let t = v * inv;
            ((t + 0.5f32.copysign(t)) as i32).clamp(-127, 127) as i8
        }));
        let rounded: i32 = q[start..].iter().map(|&v| v as i32).sum();
        sums.push(dx * rounded as f32);
    }
    Q8Row {
        q,
        scale,
        sums,
        sums16: Vec::new(),
        sums16_i16: Vec::new(),
        scale4: Vec::new(),
    }
}

/// [`q8_row_natural`] with [`Q8Row::sums16`] (the rounding of the rows with a scale per 16).
pub(crate) fn q8_row_six(x: &[f32]) -> Q8Row {
    let mut row = q8_row_natural(x);
    row.sums16_i16 = row
        .q
        .chunks(16)
        .map(|c| c.iter().map(|&v| v as i16).sum())
        .collect();
    row.sums16 = row.sums16_i16.iter().map(|&s| s as f32).collect();
    row
}

/// [`Q8Row`] of `x` in the 4-bit kernels' `layout` (see [`Q8Row`]).
pub(crate) fn q8_row(x: &[f32], layout: Layout) -> Q8Row {
    let Q8Row {
        q: rounded,
        scale,
        sums,
        sums16,
        sums16_i16,
        ..
    } = q8_row_natural(x);
    let full = x.len() / GROUP;
    let mut q = Vec::with_capacity(x.len());
    for (g, width) in layout.blocks(full) {
        let block = &rounded[g * GROUP..(g + width) * GROUP];
        for parity in 0..2 {
            for group in block.chunks_exact(GROUP) {
                q.extend(evens_odds(group, parity));
            }
        }
    }
    q.extend_from_slice(&rounded[full * GROUP..]);
    let scale4 = match layout {
        Layout::Pairs => scale.iter().flat_map(|&dx| [dx; 4]).collect(),
        Layout::Quads => Vec::new(),
    };
    Q8Row {
        q,
        scale,
        sums,
        sums16,
        sums16_i16,
        scale4,
    }
}

/// Groups per K-quant superblock ([`Params::Super`]: 256 values, GGUF's `QK_K`).
pub(crate) const SUPER: usize = 8;

/// The parameters that turn a matrix's integer products into values: of the whole matrix
/// (`[N, groups]` per-group fields, `[N, ceil(groups / SUPER)]` per-superblock ones), or of
/// one row ([`Params::row`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Params<'a> {
    /// An f16 scale `s_g` per group and an f16 offset `m_g` per group (empty: none): GGUF's
    /// Q8_0, Q4_1 and Q5_1; or, with `mins` empty, a zero point `z` (`zero`; 0: none) that
    /// makes the offset `−z · s_g`, formed from the scale where it is used: GGUF's Q4_0
    /// (`d · (q − 8)`) and Q5_0 (`d · (q − 16)`), held at their own 4.5 / 5.5 bits per weight.
    Group {
        scales: &'a [f16],
        mins: &'a [f16],
        zero: u8,
    },
    /// GGUF's K-quants (Q4_K): per group a 6-bit scale `sc_g` and offset `mn_g` (a byte each),
    /// per [`SUPER`] groups an f16 `d` and `dmin`: `s_g = d · sc_g` (exact in f32, as GGML
    /// forms it) and the offset `−dmin · mn_g`.
    Super {
        sc: &'a [u8],
        mn: &'a [u8],
        d: &'a [f16],
        dmin: &'a [f16],
    },
}

impl<'a> Params<'a> {
    /// Row `r`'s parameters, rows holding `groups` groups each.
    pub(crate) fn row(&self, r: usize, groups: usize) -> Params<'a> {
        let at = r * groups..(r + 1) * groups;
        match *self {
            Params::Group { scales, mins, zero } => Params::Group {
                scales: &scales[at.clone()],
                mins: mins.get(at).unwrap_or_default(),
                zero,
            },
            Params::Super { sc, mn, d, dmin } => {
                let supers = groups.div_ceil(SUPER);
                let sup = r * supers..(r + 1) * supers;
                Params::Super {
                    sc: &sc[at.clone()],
                    mn: &mn[at],
                    d: &d[sup.clone()],
                    dmin: &dmin[sup],
                }
            }
        }
    }

    /// Whether the format has offsets.
    pub(crate) fn has_offsets(&self) -> bool {
        match self {
            Params::Group { mins, zero, .. } => !mins.is_empty() || *zero != 0,
            Params::Super { .. } => true,
        }
    }

    /// The scale of group `g` (of a row).
    pub(crate) fn scale(&self, g: usize) -> f32 {
        match self {
            Params::Group { scales, .. } => scales[g].to_f32(),
            Params::Super { sc, d, .. } => d[g / SUPER].to_f32() * sc[g] as f32,
        }
    }

    /// The offset of group `g` (of a row; 0 without offsets).
    pub(crate) fn offset(&self, g: usize) -> f32 {
        match self {
            Params::Group {
                mins: [], zero: 0, ..
            } => 0.0,
            Params::Group { mins: [], zero, .. } => -(*zero as f32) * self.scale(g),
            Params::Group { mins, .. } => mins[g].to_f32(),
            Params::Super { mn, dmin, .. } => -(dmin[g / SUPER].to_f32() * mn[g] as f32),
        }
    }

    /// The scales `s_g` of the row's groups `g` in `groups` into `c` (`c_i` for
    /// `g = start + i`): the bits of [`Params::scale`], each superblock's `d` converted once.
    pub(crate) fn scales_into(&self, groups: Range<usize>, c: &mut [f32]) {
        let c = &mut c[..groups.len()];
        match self {
            Params::Group { scales, .. } => {
                use half::slice::HalfFloatSliceExt;
                scales[groups].convert_to_f32_slice(c);
            }
            Params::Super { sc, d, .. } => per_super(groups, c, d, |g, d, c| {
                for (c, &sc) in c.iter_mut().zip(&sc[g]) {
                    *c = d * sc as f32;
                }
            }),
        }
    }

    /// The offsets of the row's groups `g` in `groups` into `c`, as [`Params::scales_into`]:
    /// the bits of [`Params::offset`] (zeros without offsets).
    pub(crate) fn offsets_into(&self, groups: Range<usize>, c: &mut [f32]) {
        let c = &mut c[..groups.len()];
        match self {
            Params::Group {
                mins: [], zero: 0, ..
            } => c.fill(0.0),
            Params::Group { mins: [], zero, .. } => {
                // (−z · s is exact: z is a power of two.)
                self.scales_into(groups, c);
                c.iter_mut().for_each(|c| *c *= -(*zero as f32));
            }
            Params::Group { mins, .. } => {
                use half::slice::HalfFloatSliceExt;
                mins[groups].convert_to_f32_slice(c);
            }
            Params::Super { mn, dmin, .. } => per_super(groups, c, dmin, |g, dmin, c| {
                for (c, &mn) in c.iter_mut().zip(&mn[g]) {
                    *c = -(dmin * mn as f32);
                }
            }),
        }
    }

    /// The factors `c_i = s_g · dx_g` of the row's groups `g` in `groups` (`i = g − start`),
    /// into `c`; `dx` is indexed by group.
    pub(crate) fn factors(&self, groups: Range<usize>, dx: &[f32], c: &mut [f32]) {
        self.scales_into(groups.clone(), c);
        for (c, dx) in c.iter_mut().zip(&dx[groups]) {
            *c *= dx;
        }
    }

    /// `Σ_g offset_g · sums_g` over the row's groups `g` in `groups` (`sums` indexed by
    /// group), converted through `c`.
    pub(crate) fn offsets(&self, groups: Range<usize>, sums: &[f32], c: &mut [f32]) -> f32 {
        if !self.has_offsets() {
            return 0.0;
        }
        let c = &mut c[..groups.len()];
        self.offsets_into(groups.clone(), c);
        offsets_dot(c, &sums[groups])
    }
}

/// `Σ_g offsets_g · sums_g`, in eight running sums (a serial chain of 64 adds per row cost as
/// much as the row's products on AVX2) added pairwise at the end: [`Params::offsets`]' bits.
fn offsets_dot(offsets: &[f32], sums: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (m8, m_rest) = offsets.as_chunks::<8>();
    let (s8, s_rest) = sums.as_chunks::<8>();
    for (m, s) in m8.iter().zip(s8) {
        for l in 0..8 {
            lanes[l] += m[l] * s[l];
        }
    }
    offsets_total(lanes, m_rest, s_rest)
}

/// The end of [`offsets_dot`]: its eight lanes added pairwise, then the products of the groups
/// after the last eight (shared with the AVX2 version, `x86::offsets_dot`, for its bits).
pub(crate) fn offsets_total(lanes: [f32; 8], m_rest: &[f32], s_rest: &[f32]) -> f32 {
    let tail: f32 = m_rest.iter().zip(s_rest).map(|(m, s)| m * s).sum();
    let [a, b, c, d, e, f, g, h] = lanes;
    ((a + b) + (c + d)) + ((e + f) + (g + h)) + tail
}

/// Runs `fill(groups of one superblock, that superblock's f16 factor as f32, their part of
/// out)` for each superblock `groups` touches: the f16 is converted once per [`SUPER`] groups.
fn per_super(
    groups: Range<usize>,
    out: &mut [f32],
    per: &[f16],
    mut fill: impl FnMut(Range<usize>, f32, &mut [f32]),
) {
    let (mut g, mut out) = (groups.start, out);
    while g < groups.end {
        let end = ((g / SUPER + 1) * SUPER).min(groups.end);
        let (part, rest) = out.split_at_mut(end - g);
        fill(g..end, per[g / SUPER].to_f32(), part);
        (g, out) = (end, rest);
    }
}

/// `[N, K]` 4-bit values `w` (`K / 2` pairs per row) with `params` times `m` rows `xs`
/// `[m, K]`, activations rounded per [`q8_row`], the offsets (if any) times their sums
/// ([`Q8Row::sums`]): `[m, N]` row-major.
pub(crate) fn matmul_u4_q8(
    isa: Isa,
    w: &[U4x2],
    k: usize,
    xs: &[f32],
    m: usize,
    params: Params,
) -> Vec<f32> {
    let layout = Layout::of(isa);
    let round = |x: &[f32]| q8_row(x, layout);
    matmul_act8(isa, w, k, k / 2, xs, m, params, round, (dots_u4, run_u4))
}

/// `[N, K]` 5-bit values `w` (per row `K / 2` bytes of pairs, then `K / 8` of fifth bits:
/// [`Nibbles::five`]; `K` a multiple of [`GROUP`]) with `params` times `m` rows `xs` `[m, K]`,
/// as [`matmul_u4_q8`].
pub(crate) fn matmul_u5_q8(
    isa: Isa,
    w: &[u8],
    k: usize,
    xs: &[f32],
    m: usize,
    params: Params,
) -> Vec<f32> {
    assert!(k.is_multiple_of(GROUP), "5-bit rows are whole groups");
    let layout = Layout::of(isa);
    let round = |x: &[f32]| q8_row(x, layout);
    let kw = u5_row_bytes(k);
    matmul_act8(isa, w, k, kw, xs, m, params, round, (dots_u5, run_u5))
}

/// `[N, K]` i8 values `w` with f16 scales `scales` `[N, groups]` (the 8-bit format) times `m`
/// rows `xs` `[m, K]`, activations rounded per [`q8_row_natural`]: `[m, N]` row-major.
pub(crate) fn matmul_i8_q8(
    isa: Isa,
    w: &[i8],
    k: usize,
    xs: &[f32],
    m: usize,
    scales: &[f16],
) -> Vec<f32> {
    let params = Params::Group {
        scales,
        mins: &[],
        zero: 0,
    };
    matmul_act8(
        isa,
        w,
        k,
        k,
        xs,
        m,
        params,
        q8_row_natural,
        (dots_i8, run_i8),
    )
}

/// A matrix's parameters that can be cut into rows.
pub(crate) trait RowParams: Copy + Sync {
    /// Row `r`'s parameters, rows holding `groups` groups of [`GROUP`] values each.
    fn row(&self, r: usize, groups: usize) -> Self;
}

impl RowParams for Params<'_> {
    fn row(&self, r: usize, groups: usize) -> Self {
        Params::row(self, r, groups)
    }
}

/// One (weight row, activation row) product of a format: the row's values, the rounded
/// activations, the row's parameters, and room for two factors per group for the kernels
/// that take them ready-made.
type RowDot<W, P> = fn(Isa, &[W], &Q8Row, P, &mut [f32]) -> f32;

/// One weight row against every rounded activation row (`out[j]` for `xs[j]`, bit for bit
/// what `xs[j]` alone gives), with the row's parameters and room for the factors.
type RowDots<W, P> = fn(Isa, &[W], &[Q8Row], P, &mut [f32], &mut [f32]);

/// A run of consecutive weight rows (`w`, `kw` elements each, the first at row `first` of
/// the matrix whose parameters are passed) against the activation rows into `out` (`[rows,
/// m]`), each value with the bits [`RowDots`] gives it; `false`, nothing written, where the
/// format or machine has no such kernel (`x86_512_act8::Run`).
type RowsRun<W, P> = fn(Isa, &[W], usize, usize, &[Q8Row], P, &mut [f32]) -> bool;

/// [`RowDots`] through a kernel that takes one activation row at a time.
fn each<W, P: Copy>(
    dot: RowDot<W, P>,
    isa: Isa,
    w: &[W],
    xs: &[Q8Row],
    p: P,
    c: &mut [f32],
    out: &mut [f32],
) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot(isa, w, x, p, c);
    }
}

/// The shared row loop: `kw` weight elements per row, each activation row rounded by
/// `round`, each weight row against all of them by `dots` with the row's parameters, or a
/// task's rows against all of them by `run` where it takes them.
#[allow(clippy::too_many_arguments)] // the formats' kernels, passed in
fn matmul_act8<W: Sync, P: RowParams, R: Fn(&[f32]) -> Q8Row + Sync>(
    isa: Isa,
    w: &[W],
    k: usize,
    kw: usize,
    xs: &[f32],
    m: usize,
    params: P,
    round: R,
    (dots, run): (RowDots<W, P>, RowsRun<W, P>),
) -> Vec<f32> {
    let n = w.len().checked_div(kw).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let groups = k.div_ceil(GROUP);
    let rows: Vec<Q8Row> = if m > PARALLEL_ROUNDING_ROWS {
        xs.par_chunks_exact(k).map(&round).collect()
    } else {
        xs.chunks_exact(k).map(round).collect()
    };
    let per_task = (n / (8 * rayon::current_num_threads())).max(TASK_BYTES / kw.max(1));
    let rows_per_task = per_task.clamp(1, n);
    // Activation rows per pass over a task's weight rows: the rounded rows of a tile and the
    // task's weights stay in the core's cache together, so a prompt's many rows do not stream
    // from memory once per weight row.
    let tile = (ROW_TILE_BYTES / k.max(1)).max(ROW_TILE_MIN) / 8 * 8;
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * kw))
        .enumerate()
        .for_each(|(task, (out, w))| {
            let first = task * rows_per_task;
            if run(isa, w, kw, first, &rows, params, out) {
                return;
            }
            // Room for a row's scales and offsets and four activation rows' factors.
            let mut c = vec![0f32; (2 + 4) * groups];
            for start in (0..m).step_by(tile) {
                let xs = &rows[start..(start + tile).min(m)];
                for (i, (o, row)) in out.chunks_exact_mut(m).zip(w.chunks_exact(kw)).enumerate() {
                    let p = params.row(first + i, groups);
                    dots(isa, row, xs, p, &mut c, &mut o[start..start + xs.len()]);
                }
            }
        });
    super::transpose(out_t, n, m)
}

/// Target bytes of rounded activations per pass over a task's weight rows ([`matmul_act8`]):
/// with the task's [`TASK_BYTES`] of weights, within a core's L2.
const ROW_TILE_BYTES: usize = 96 << 10;

/// Fewest activation rows per such pass (a multiple of eight, the row kernels' widest block).
const ROW_TILE_MIN: usize = 16;

/// Past this many activation rows [`matmul_act8`] rounds them on the thread pool (a prompt's
/// rows); fewer, a decode step's, are rounded in place.
const PARALLEL_ROUNDING_ROWS: usize = 16;

/// Values per chunk of the rows with a scale per 16 ([`matmul_sixteenths_q8`]).
pub(crate) const U6_CHUNK: usize = 64;

/// Bytes per chunk of a 6-bit row: 32 of low nibbles (byte `i`: value `i` low, value
/// `i + 32` high), then 16 of high bit pairs (byte `j`, bits `2t..2t + 2`: value `j + 16t`).
/// Both AVX2 (two 32-value halves) and AVX-512 (the whole chunk) unpack it with one shift
/// per 128-bit lane.
pub(crate) const U6_CHUNK_BYTES: usize = 48;

/// Value `v` (`0..64`, in `0..=63`) of a 6-bit chunk.
pub(crate) fn u6_value(chunk: &[u8], v: usize) -> u8 {
    let lo = (chunk[v % 32] >> (4 * (v / 32))) & 0xF;
    let hi = (chunk[32 + v % 16] >> (2 * (v / 16))) & 3;
    lo | (hi << 4)
}

/// The chunk of 64 values `q` (each in `0..=63`), the inverse of [`u6_value`].
pub(crate) fn u6_chunk(q: &[u8]) -> [u8; U6_CHUNK_BYTES] {
    let mut out = [0u8; U6_CHUNK_BYTES];
    for i in 0..32 {
        out[i] = (q[i] & 0xF) | ((q[i + 32] & 0xF) << 4);
    }
    for j in 0..16 {
        out[32 + j] = (0..4).fold(0, |b, t| b | ((q[j + 16 * t] >> 4) << (2 * t)));
    }
    out
}

/// Bytes per chunk of a 3-bit row ([`matmul_sixteenths_q8`]): 16 of low bit pairs (byte `j`, bits
/// `2t..2t + 2`: value `j + 16t`), then 8 of third bits (a little-endian u64, bit `v`: value
/// `v`). AVX-512 unpacks it with one broadcast, one shift per 128-bit lane, an AND, and one
/// masked add of the u64.
pub(crate) const U3_CHUNK_BYTES: usize = 24;

/// Bytes per chunk of a 2-bit row ([`matmul_sixteenths_q8`]): a 3-bit chunk's 16 bytes of bit pairs.
pub(crate) const U2_CHUNK_BYTES: usize = 16;

/// Value `v` (`0..64`, in `0..=3`) of a 2-bit chunk (or the low two bits of a 3-bit one).
pub(crate) fn u2_value(chunk: &[u8], v: usize) -> u8 {
    (chunk[v % 16] >> (2 * (v / 16))) & 3
}

/// Value `v` (`0..64`, in `0..=7`) of a 3-bit chunk.
pub(crate) fn u3_value(chunk: &[u8], v: usize) -> u8 {
    let hi = (chunk[16 + v / 8] >> (v % 8)) & 1;
    u2_value(chunk, v) | (hi << 2)
}

/// The chunk of 64 values `q` (each in `0..=7`), the inverse of [`u3_value`]; its first
/// [`U2_CHUNK_BYTES`] are the 2-bit chunk of values in `0..=3` ([`u2_value`]).
pub(crate) fn u3_chunk(q: &[u8]) -> [u8; U3_CHUNK_BYTES] {
    let mut out = [0u8; U3_CHUNK_BYTES];
    for j in 0..16 {
        out[j] = (0..4).fold(0, |b, t| b | ((q[j + 16 * t] & 3) << (2 * t)));
    }
    for (v, &q) in q.iter().enumerate().take(U6_CHUNK) {
        out[16 + v / 8] |= (q >> 2) << (v % 8);
    }
    out
}

/// The bytes per chunk of the rows with a scale per 16 values, `bits` bits per value: 2
/// (GGUF's Q2_K), 3 (Q3_K) or 6 (Q6_K); `K / 64` chunks per row, value
/// `d · sc · (q − zero_point) − dmin · mn` (the last term 2-bit only).
pub(crate) const fn chunk_bytes(bits: usize) -> usize {
    match bits {
        2 => U2_CHUNK_BYTES,
        3 => U3_CHUNK_BYTES,
        _ => U6_CHUNK_BYTES,
    }
}

/// The value that multiplies to zero (`q − zero`): 0 for 2 bits (which have offsets), 4 for 3,
/// 32 for 6.
pub(crate) const fn zero_point(bits: usize) -> i32 {
    match bits {
        2 => 0,
        3 => 4,
        _ => 32,
    }
}

/// Value `v` of a chunk of `bits` bits.
pub(crate) fn sixteenths_value(bits: usize, chunk: &[u8], v: usize) -> u8 {
    match bits {
        2 => u2_value(chunk, v),
        3 => u3_value(chunk, v),
        _ => u6_value(chunk, v),
    }
}

/// The parameters of the values with a scale per 16 (GGUF's Q6_K, Q3_K, Q2_K): a scale byte
/// per 16 values, an f16 `d` per [`SUPER`] groups; value `v` is `d · sc · (q_v − 32)` (6
/// bits) or `d · sc · (q_v − 4)` (3 bits), `sc` an i8. 2-bit rows (`dmin` not empty) keep
/// Q2_K's byte as stored: `sc` in its low nibble and `mn` in its high one, `d · sc · q_v −
/// dmin · mn` with an f16 `dmin` per [`SUPER`] groups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SixBit<'a> {
    pub sc: &'a [i8],
    pub d: &'a [f16],
    /// 2 bits only (empty otherwise).
    pub dmin: &'a [f16],
}

impl RowParams for SixBit<'_> {
    fn row(&self, r: usize, groups: usize) -> Self {
        let supers = groups.div_ceil(SUPER);
        let (sub, sup) = (
            2 * r * groups..2 * (r + 1) * groups,
            r * supers..(r + 1) * supers,
        );
        SixBit {
            sc: &self.sc[sub.clone()],
            d: &self.d[sup.clone()],
            dmin: self.dmin.get(sup).unwrap_or_default(),
        }
    }
}

impl SixBit<'_> {
    /// Whether the values are 2-bit, with offsets (Q2_K's packed bytes).
    pub(crate) fn has_offsets(&self) -> bool {
        !self.dmin.is_empty()
    }

    /// The integer scale of the 16 values from `16 · s` on.
    fn sc(&self, s: usize) -> f32 {
        let b = self.sc[s];
        if self.has_offsets() {
            (b as u8 & 0xF) as f32
        } else {
            b as f32
        }
    }

    /// `dmin · mn` of the 16 values from `16 · s` on (2 bits only).
    fn min(&self, s: usize) -> f32 {
        self.dmin[s / (2 * SUPER)].to_f32() * (self.sc[s] as u8 >> 4) as f32
    }

    /// The scale of the 16 values from `16 · s` on.
    pub(crate) fn scale(&self, s: usize) -> f32 {
        self.d[s / (2 * SUPER)].to_f32() * self.sc(s)
    }

    /// The offset of the 16 values from `16 · s` on (`−dmin · mn`; zero without offsets).
    pub(crate) fn offset(&self, s: usize) -> f32 {
        if self.has_offsets() {
            -self.min(s)
        } else {
            0.0
        }
    }

    /// `Σ_s dmin · mn_s · dx_{s / 2} · sums16_s` over the row's sub-blocks (what 2-bit rows
    /// subtract; zero otherwise), in order.
    pub(crate) fn offsets(&self, dx: &[f32], sums16: &[f32]) -> f32 {
        if !self.has_offsets() {
            return 0.0;
        }
        (0..self.sc.len().min(sums16.len()))
            .map(|s| self.min(s) * dx[s / 2] * sums16[s])
            .sum()
    }

    /// The scales of the sub-blocks of 16 values covered by `c` (from the row's first): the
    /// bits of [`SixBit::scale`], each `d` converted once.
    pub(crate) fn scales_into(&self, c: &mut [f32]) {
        for (b, c) in c.chunks_mut(2 * SUPER).enumerate() {
            let d = self.d[b].to_f32();
            for (i, c) in c.iter_mut().enumerate() {
                *c = d * self.sc(2 * SUPER * b + i);
            }
        }
    }

    /// The offsets of the sub-blocks covered by `c`, as [`SixBit::scales_into`]: the bits of
    /// [`SixBit::offset`] (zeros without offsets).
    pub(crate) fn offsets_into(&self, c: &mut [f32]) {
        if !self.has_offsets() {
            return c.fill(0.0);
        }
        for (b, c) in c.chunks_mut(2 * SUPER).enumerate() {
            let dmin = self.dmin[b].to_f32();
            for (i, c) in c.iter_mut().enumerate() {
                *c = -(dmin * (self.sc[2 * SUPER * b + i] as u8 >> 4) as f32);
            }
        }
    }

    /// The factors `c_s = scale(s) · dx_{s / 2}` of the sub-blocks of 16 values `s` covered
    /// by `c` (from the row's first), the same bits.
    pub(crate) fn factors(&self, dx: &[f32], c: &mut [f32]) {
        self.scales_into(c);
        for (s, c) in c.iter_mut().enumerate() {
            *c *= dx[s / 2];
        }
    }
}

/// `[N, K]` values of `bits` bits with a scale per 16 (6: GGUF's Q6_K, 3: Q3_K, 2: Q2_K,
/// with offsets; `K / 64` chunks of [`chunk_bytes`] per row, `K` a multiple of 64) with
/// `params` times `m` rows `xs` `[m, K]`, activations rounded per [`q8_row_natural`]: `[m, N]`
/// row-major.
pub(crate) fn matmul_sixteenths_q8(
    isa: Isa,
    bits: usize,
    w: &[u8],
    k: usize,
    xs: &[f32],
    m: usize,
    params: SixBit,
) -> Vec<f32> {
    match bits {
        2 => {
            assert!(params.has_offsets(), "2-bit rows have offsets");
            matmul_sixteenths::<2>(isa, w, k, xs, m, params)
        }
        3 => matmul_sixteenths::<3>(isa, w, k, xs, m, params),
        6 => matmul_sixteenths::<6>(isa, w, k, xs, m, params),
        _ => panic!("{bits}-bit rows with a scale per 16: 2, 3 or 6 bits"),
    }
}

/// [`matmul_sixteenths_q8`] of `BITS` bits.
fn matmul_sixteenths<const BITS: usize>(
    isa: Isa,
    w: &[u8],
    k: usize,
    xs: &[f32],
    m: usize,
    params: SixBit,
) -> Vec<f32> {
    assert!(k.is_multiple_of(U6_CHUNK), "rows of whole 64-value chunks");
    let kw = k / U6_CHUNK * chunk_bytes(BITS);
    let kernels = (
        dots_u6::<BITS> as RowDots<u8, SixBit>,
        run_u6::<BITS> as RowsRun<u8, SixBit>,
    );
    matmul_act8(isa, w, k, kw, xs, m, params, q8_row_six, kernels)
}

/// [`RowDots`] of a `BITS`-bit (6, 3 or 2) row: on AVX512-VNNI and AVX2 up to four activation
/// rows per pass (each chunk unpacked once for all), [`dot_u6`] elsewhere.
fn dots_u6<const BITS: usize>(
    isa: Isa,
    w: &[u8],
    xs: &[Q8Row],
    p: SixBit,
    c: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(t) = isa.avx512_vnni() {
            return in_blocks(&SixBitRows::<BITS> { t, w, p }, xs, c, out);
        }
        if let Some(t) = isa.avx2_fma() {
            let (d, c) = superblock_factors(isa, p.d, c);
            return in_blocks(&SixBitRowsAvx2::<BITS> { t, w, p, d }, xs, c, out);
        }
    }
    each(dot_u6::<BITS>, isa, w, xs, p, c, out)
}

/// [`RowsRun`] of `BITS`-bit (6, 3 or 2) rows: AVX512-VNNI, and AVX2 for a decode step's
/// rows ([`Avx2Run`]).
fn run_u6<const BITS: usize>(
    isa: Isa,
    w: &[u8],
    kw: usize,
    first: usize,
    xs: &[Q8Row],
    p: SixBit,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512_vnni() {
        let run = super::x86_512_act8::Run {
            w,
            stride: kw,
            first,
        };
        return super::x86_512_act8::dot_u6_q8_run::<BITS>(t, run, xs, p, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(run) = Avx2Run::new(isa, kw, xs, out.len()) {
        return run.sixteenths::<BITS>(w, first, p, xs, out);
    }
    let _ = (isa, w, kw, first, xs, p, out);
    false
}

/// One `BITS`-bit (6, 3 or 2) row, portable code (the x86 kernels go through
/// [`RowsKernel`]s): `Σ_s c_s · Σ_{i in s} (q_i − zero) · xq_i` over sub-blocks `s` of 16
/// values, `c_s = d · sc_s · dx_g` ([`zero_point`]), less [`SixBit::offsets`] for 2 bits.
fn dot_u6<const BITS: usize>(isa: Isa, w: &[u8], x: &Q8Row, p: SixBit, c: &mut [f32]) -> f32 {
    let c = &mut c[..x.q.len() / 16];
    p.factors(&x.scale, c);
    let _ = isa;
    portable::dot_u6_q8::<BITS>(w, &x.q, c) - p.offsets(&x.scale, &x.sums16)
}

/// A row kernel (AVX512-VNNI or AVX2) that takes `J` activation rows per pass over a weight
/// row: each weight byte is unpacked (and each group's scales formed) once for all `J`, and
/// every row's operations are those it gets alone, so its result has the same bits.
#[cfg(target_arch = "x86_64")]
trait RowsKernel {
    /// Whether [`in_blocks`] hands it eight rows at a time before fours.
    const EIGHTS: bool = false;

    /// The weight row against `x`, with room `c` for factors.
    fn rows<const J: usize>(&self, x: [&Q8Row; J], c: &mut [f32]) -> [f32; J];
}

/// [`RowDots`] through a [`RowsKernel`]: activation rows eight at a time where the kernel
/// asks ([`RowsKernel::EIGHTS`]), four at a time, then a pair, then a last one. With four the
/// weight work per row falls to a quarter of a single row's (1.1-1.2x over pairs at
/// `K = 2048`, `benchmarks/README.md`); the VNNI kernels' eight rows' two accumulators and
/// offset vector each would not fit the 32 vector registers beside the unpacked weights. The
/// AVX2 K-quant kernels keep one accumulator per row (4 and 5 bits: and a running total), and
/// eight rows gain 1.1-1.2x over fours (6-bit, 5-bit; level at 4-bit: `benchmarks/README.md`).
#[cfg(target_arch = "x86_64")]
fn in_blocks<K: RowsKernel>(kernel: &K, xs: &[Q8Row], c: &mut [f32], out: &mut [f32]) {
    let (xs, out) = if K::EIGHTS {
        let mut eights = xs.chunks_exact(8);
        let mut outs = out.chunks_exact_mut(8);
        for (o, x) in (&mut outs).zip(&mut eights) {
            o.copy_from_slice(&kernel.rows(std::array::from_fn::<_, 8, _>(|j| &x[j]), c));
        }
        (eights.remainder(), outs.into_remainder())
    } else {
        (xs, out)
    };
    let mut quads = xs.chunks_exact(4);
    let mut outs = out.chunks_exact_mut(4);
    for (o, x) in (&mut outs).zip(&mut quads) {
        o.copy_from_slice(&kernel.rows([&x[0], &x[1], &x[2], &x[3]], c));
    }
    let (out, xs) = (outs.into_remainder(), quads.remainder());
    let mut pairs = xs.chunks_exact(2);
    let mut outs = out.chunks_exact_mut(2);
    for (o, x) in (&mut outs).zip(&mut pairs) {
        o.copy_from_slice(&kernel.rows([&x[0], &x[1]], c));
    }
    if let ([o], [x]) = (outs.into_remainder(), pairs.remainder()) {
        *o = kernel.rows([x], c)[0];
    }
}

/// A 4-bit or 5-bit weight row on AVX2 ([`super::x86::dot_u4_q8_rows`]), its scales and
/// offsets (if the format has them) formed: each activation row's factors are
/// `scales_g · dx_g`, as [`Params::factors`] forms them, and its offsets are summed as
/// [`Params::offsets`] sums them, so its result has the bits of its product alone.
#[cfg(target_arch = "x86_64")]
struct FourBitRowsAvx2<'a> {
    t: super::x86::Avx2Fma,
    w: Nibbles<'a>,
    scales: &'a [f32],
    offsets: Option<&'a [f32]>,
}

#[cfg(target_arch = "x86_64")]
impl RowsKernel for FourBitRowsAvx2<'_> {
    fn rows<const J: usize>(&self, x: [&Q8Row; J], c: &mut [f32]) -> [f32; J] {
        let factors = factors_of(self.t, self.scales, x, c);
        let dots = super::x86::dot_u4_q8_rows(self.t, self.w, x.map(|x| &x.q[..]), factors);
        let offsets = |x: &Q8Row| {
            let dot = |o| super::x86::offsets_dot(self.t, o, &x.sums);
            self.offsets.map_or(0.0, dot)
        };
        std::array::from_fn(|j| dots[j] + offsets(x[j]))
    }
}

/// A K-quant 4-bit or 5-bit weight row of whole superblocks on AVX2
/// ([`super::x86::dot_k4_q8_rows`]): its scales and offsets as stored.
#[cfg(target_arch = "x86_64")]
struct SuperRowsAvx2<'a> {
    t: super::x86::Avx2Fma,
    w: Nibbles<'a>,
    /// The scales and each superblock's `d` ([`superblock_factors`]).
    sc_d: (&'a [u8], &'a [f32]),
    /// The offsets' bytes and each superblock's `dmin`.
    mn_dmin: (&'a [u8], &'a [f32]),
}

/// A row's per-superblock f16 factors (`d`, `dmin`) as f32 at the start of `room`, widened
/// once for all its activation rows: the same values, without the AVX2 kernels converting each
/// f16 (about twenty integer instructions per superblock and factor, as `Avx2Fma` does not
/// prove F16C: that made the one-row Q4_K product a third slower, `benchmarks/README.md`).
/// Returns them and what is left of `room`.
#[cfg(target_arch = "x86_64")]
fn superblock_factors<'r>(isa: Isa, f: &[f16], room: &'r mut [f32]) -> (&'r [f32], &'r mut [f32]) {
    let (out, rest) = room.split_at_mut(f.len());
    widen_f16s(isa, f, out);
    (out, rest)
}

/// `src` widened into `dst` (the common length), `half`'s bits: in one call where the path
/// has F16C ([`super::x86::widen_f16`]), by `half`'s conversion elsewhere.
#[cfg(target_arch = "x86_64")]
fn widen_f16s(isa: Isa, src: &[f16], dst: &mut [f32]) {
    match isa.avx2_fma_f16c() {
        Some(t) => super::x86::widen_f16(t, src, dst),
        None => {
            use half::slice::HalfFloatSliceExt;
            let n = src.len().min(dst.len());
            src[..n].convert_to_f32_slice(&mut dst[..n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl RowsKernel for SuperRowsAvx2<'_> {
    const EIGHTS: bool = true;

    fn rows<const J: usize>(&self, x: [&Q8Row; J], _: &mut [f32]) -> [f32; J] {
        super::x86::dot_k4_q8_rows(self.t, self.w, x, self.sc_d, self.mn_dmin)
    }
}

/// Each activation row's factors `scales_g · dx_g` (the bits of [`Params::factors`]) in `c`,
/// one run of `scales.len()` per row.
#[cfg(target_arch = "x86_64")]
fn factors_of<'c, const J: usize>(
    t: super::x86::Avx2Fma,
    scales: &[f32],
    x: [&Q8Row; J],
    c: &'c mut [f32],
) -> [&'c [f32]; J] {
    let groups = scales.len();
    let (c, _) = c.split_at_mut(J * groups);
    for (j, x) in x.iter().enumerate() {
        super::x86::products(t, scales, &x.scale, &mut c[j * groups..(j + 1) * groups]);
    }
    let c = &*c;
    std::array::from_fn(|j| &c[j * groups..(j + 1) * groups])
}

/// [`Params::scales_into`] of a row's `groups` groups, the same bits: a group format's f16
/// scales by [`widen_f16s`].
#[cfg(target_arch = "x86_64")]
fn row_scales(isa: Isa, p: Params, groups: usize, out: &mut [f32]) {
    match p {
        Params::Group { scales, .. } => widen_f16s(isa, &scales[..groups], out),
        _ => p.scales_into(0..groups, out),
    }
}

/// [`Params::offsets_into`] of a row's `groups` groups, as [`row_scales`].
#[cfg(target_arch = "x86_64")]
fn row_offsets(isa: Isa, p: Params, groups: usize, out: &mut [f32]) {
    match p {
        Params::Group { mins, .. } if !mins.is_empty() => widen_f16s(isa, &mins[..groups], out),
        _ => p.offsets_into(0..groups, out),
    }
}

/// An 8-bit weight row on AVX2 ([`super::x86::dot_i8_q8_rows`]), its scales formed.
#[cfg(target_arch = "x86_64")]
struct EightBitRowsAvx2<'a> {
    t: super::x86::Avx2Fma,
    w: &'a [i8],
    scales: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
impl RowsKernel for EightBitRowsAvx2<'_> {
    fn rows<const J: usize>(&self, x: [&Q8Row; J], c: &mut [f32]) -> [f32; J] {
        let factors = factors_of(self.t, self.scales, x, c);
        super::x86::dot_i8_q8_rows(self.t, self.w, x.map(|x| &x.q[..]), factors)
    }
}

/// A 4-bit or 5-bit weight row on AVX512-VNNI ([`super::x86_512_act8::dot_u4_q8`]).
#[cfg(target_arch = "x86_64")]
struct FourBitRows<'a> {
    t: super::x86_512::Avx512Vnni,
    w: Nibbles<'a>,
    p: Params<'a>,
}

#[cfg(target_arch = "x86_64")]
impl RowsKernel for FourBitRows<'_> {
    fn rows<const J: usize>(&self, x: [&Q8Row; J], c: &mut [f32]) -> [f32; J] {
        super::x86_512_act8::dot_u4_q8(self.t, self.w, x, self.p, c)
    }
}

/// An 8-bit weight row with per-group scales on AVX512-VNNI
/// ([`super::x86_512_act8::dot_i8_q8`]).
#[cfg(target_arch = "x86_64")]
struct EightBitRows<'a> {
    t: super::x86_512::Avx512Vnni,
    w: &'a [i8],
    scales: &'a [f16],
}

#[cfg(target_arch = "x86_64")]
impl RowsKernel for EightBitRows<'_> {
    fn rows<const J: usize>(&self, x: [&Q8Row; J], c: &mut [f32]) -> [f32; J] {
        super::x86_512_act8::dot_i8_q8(self.t, self.w, x, self.scales, c)
    }
}

/// A `BITS`-bit (6, 3 or 2) weight row on AVX2 ([`super::x86::dot_u6_q8_rows`]).
#[cfg(target_arch = "x86_64")]
struct SixBitRowsAvx2<'a, const BITS: usize> {
    t: super::x86::Avx2Fma,
    w: &'a [u8],
    p: SixBit<'a>,
    /// `p.d` as f32 ([`superblock_factors`]).
    d: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
impl<const BITS: usize> RowsKernel for SixBitRowsAvx2<'_, BITS> {
    const EIGHTS: bool = true;

    fn rows<const J: usize>(&self, x: [&Q8Row; J], _: &mut [f32]) -> [f32; J] {
        super::x86::dot_u6_q8_rows::<BITS, J>(self.t, self.w, x, self.p, self.d)
    }
}

/// A `BITS`-bit (6, 3 or 2) weight row on AVX512-VNNI ([`super::x86_512_act8::dot_u6_q8`]).
#[cfg(target_arch = "x86_64")]
struct SixBitRows<'a, const BITS: usize> {
    t: super::x86_512::Avx512Vnni,
    w: &'a [u8],
    p: SixBit<'a>,
}

#[cfg(target_arch = "x86_64")]
impl<const BITS: usize> RowsKernel for SixBitRows<'_, BITS> {
    fn rows<const J: usize>(&self, x: [&Q8Row; J], _: &mut [f32]) -> [f32; J] {
        super::x86_512_act8::dot_u6_q8::<J, BITS>(self.t, self.w, x, self.p)
    }
}

/// [`RowDots`] of a 4-bit row: on AVX512-VNNI and AVX2 up to four activation rows per pass
/// (each weight byte unpacked once for all), [`dot_u4`] elsewhere.
fn dots_u4(isa: Isa, w: &[U4x2], xs: &[Q8Row], p: Params, c: &mut [f32], out: &mut [f32]) {
    dots_nibbles(isa, Nibbles::four(w), xs, p, c, out)
}

/// [`RowDots`] of a 5-bit row ([`Nibbles::five`]): as [`dots_u4`].
fn dots_u5(isa: Isa, w: &[u8], xs: &[Q8Row], p: Params, c: &mut [f32], out: &mut [f32]) {
    let k = xs.first().map_or(0, |x| x.q.len());
    dots_nibbles(isa, Nibbles::five(w, k), xs, p, c, out)
}

/// [`dots_u4`] / [`dots_u5`] of either row.
fn dots_nibbles(isa: Isa, w: Nibbles, xs: &[Q8Row], p: Params, c: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(t) = isa.avx512_vnni() {
            return in_blocks(&FourBitRows { t, w, p }, xs, c, out);
        }
        if let Some(t) = isa.avx2_fma() {
            // The row's scales and offsets once for all activation rows (decoding K-quant
            // scales per activation row was a fifth of a 16-row step).
            let groups = xs.first().map_or(0, |x| x.scale.len());
            let (formed, c) = c.split_at_mut(2 * groups);
            let (scales, offsets) = formed.split_at_mut(groups);
            if let Params::Super { sc, mn, d, dmin } = p {
                let k = xs.first().map_or(0, |x| x.q.len());
                if k.is_multiple_of(SUPER * GROUP) {
                    let (d, c) = superblock_factors(isa, d, c);
                    let (dmin, c) = superblock_factors(isa, dmin, c);
                    let kernel = SuperRowsAvx2 {
                        t,
                        w,
                        sc_d: (sc, d),
                        mn_dmin: (mn, dmin),
                    };
                    return in_blocks(&kernel, xs, c, out);
                }
                // (The bits of `scales_into` / `offsets_into`, eight groups per instruction.)
                super::x86::super_values(t, sc, d, scales);
                super::x86::super_values(t, mn, dmin, offsets);
                offsets.iter_mut().for_each(|o| *o = -*o);
            } else {
                row_scales(isa, p, groups, scales);
                row_offsets(isa, p, groups, offsets);
            }
            let offsets = p.has_offsets().then_some(&*offsets);
            let kernel = FourBitRowsAvx2 {
                t,
                w,
                scales,
                offsets,
            };
            return in_blocks(&kernel, xs, c, out);
        }
    }
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot_u4(w, x, p, c);
    }
}

/// [`RowDots`] of an 8-bit row: on AVX512-VNNI and AVX2 up to four activation rows per pass
/// (each weight load serves all), [`dot_i8`] elsewhere.
fn dots_i8(isa: Isa, w: &[i8], xs: &[Q8Row], p: Params, c: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let (Some(t), Params::Group { scales, .. }) = (isa.avx512_vnni(), p) {
            return in_blocks(&EightBitRows { t, w, scales }, xs, c, out);
        }
        if let Some(t) = isa.avx2_fma() {
            // The row's scales once for all activation rows.
            let groups = xs.first().map_or(0, |x| x.scale.len());
            let (scales, c) = c.split_at_mut(groups);
            row_scales(isa, p, groups, scales);
            return in_blocks(&EightBitRowsAvx2 { t, w, scales }, xs, c, out);
        }
    }
    each(dot_i8, isa, w, xs, p, c, out)
}

/// [`RowsRun`] of 4-bit rows: AVX512-VNNI, and AVX2 for a decode step's rows ([`Avx2Run`]).
fn run_u4(
    isa: Isa,
    w: &[U4x2],
    kw: usize,
    first: usize,
    xs: &[Q8Row],
    p: Params,
    out: &mut [f32],
) -> bool {
    // SAFETY: `U4x2` is a `repr(transparent)` byte.
    let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, w.len()) };
    run_nibbles(isa, w, kw, first, false, xs, p, out)
}

/// [`RowsRun`] of 5-bit rows: as [`run_u4`].
fn run_u5(
    isa: Isa,
    w: &[u8],
    kw: usize,
    first: usize,
    xs: &[Q8Row],
    p: Params,
    out: &mut [f32],
) -> bool {
    run_nibbles(isa, w, kw, first, true, xs, p, out)
}

/// [`run_u4`] / [`run_u5`] over the rows' bytes.
#[allow(clippy::too_many_arguments)] // a RowsRun and the row kind
fn run_nibbles(
    isa: Isa,
    w: &[u8],
    stride: usize,
    first: usize,
    five: bool,
    xs: &[Q8Row],
    p: Params,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(t) = isa.avx512_vnni() {
            let run = super::x86_512_act8::Run { w, stride, first };
            return super::x86_512_act8::dot_u4_q8_run(t, run, five, xs, p, out);
        }
        if let Some(run) = Avx2Run::new(isa, stride, xs, out.len()) {
            return run.nibbles(w, first, five, p, xs, out);
        }
    }
    let _ = (isa, w, stride, first, five, xs, p, out);
    false
}

/// A task's weight rows on AVX2 against a decode step's few activation rows, the work
/// [`dots_nibbles`], [`dots_i8`] and [`dots_u6`] do per row with the path and format resolved
/// once per task, and a group format's scales (and offsets) formed by one [`row_scales`] (and
/// [`row_offsets`]) call per [`FORMED_ROWS`] rows: each row goes through the same
/// [`RowsKernel`] with the same parameters, so every value keeps its bits. (A decode step has about 300,000 weight rows, and per row the dispatch and
/// two conversions cost as much as a 1408-wide 4-bit row's products: `benchmarks/README.md`.)
#[cfg(target_arch = "x86_64")]
struct Avx2Run {
    isa: Isa,
    t: super::x86::Avx2Fma,
    /// Weight elements (bytes) per row.
    stride: usize,
    /// Groups per row.
    groups: usize,
}

#[cfg(target_arch = "x86_64")]
impl Avx2Run {
    /// The run of `xs` (at most [`ROW_TILE_MIN`] rows: one tile, as [`matmul_act8`] would
    /// take them) on a path with AVX2 and FMA; `None` otherwise (the per-row path).
    fn new(isa: Isa, stride: usize, xs: &[Q8Row], out: usize) -> Option<Self> {
        let t = isa.avx2_fma()?;
        let m = xs.len();
        let groups = xs.first()?.q.len().div_ceil(GROUP);
        let fits = m <= ROW_TILE_MIN && stride > 0 && out.is_multiple_of(m);
        fits.then_some(Avx2Run {
            isa,
            t,
            stride,
            groups,
        })
    }

    /// The task's 4-bit (`five`: 5-bit) rows `w` (from row `first`) against `xs`, `p` the
    /// whole matrix's parameters.
    fn nibbles(
        &self,
        w: &[u8],
        first: usize,
        five: bool,
        p: Params,
        xs: &[Q8Row],
        out: &mut [f32],
    ) -> bool {
        let (t, groups, m) = (self.t, self.groups, xs.len());
        let k = xs[0].q.len();
        let row = |w| match five {
            true => Nibbles::five(w, k),
            false => Nibbles::four(U4x2::from_bytes(w)),
        };
        let rows = w.chunks_exact(self.stride).zip(out.chunks_exact_mut(m));
        match p {
            Params::Super { .. } if k.is_multiple_of(SUPER * GROUP) => {
                let mut factors = vec![0f32; 2 * groups.div_ceil(SUPER)];
                for (i, (w, o)) in rows.enumerate() {
                    let Params::Super { sc, mn, d, dmin } = p.row(first + i, groups) else {
                        unreachable!("a row of superblock parameters")
                    };
                    let (d, rest) = superblock_factors(self.isa, d, &mut factors);
                    let (dmin, _) = superblock_factors(self.isa, dmin, rest);
                    let kernel = SuperRowsAvx2 {
                        t,
                        w: row(w),
                        sc_d: (sc, d),
                        mn_dmin: (mn, dmin),
                    };
                    in_blocks(&kernel, xs, &mut [], o);
                }
                true
            }
            Params::Group { scales, mins, zero } => {
                let mut formed = vec![0f32; 2 * FORMED_ROWS * groups + 4 * groups];
                let (so, c) = formed.split_at_mut(2 * FORMED_ROWS * groups);
                let has_offsets = p.has_offsets();
                for (b, (w, out)) in self.blocks(w, m, out) {
                    let n = w.len() / self.stride;
                    let at = (first + b) * groups..(first + b + n) * groups;
                    let block = Params::Group {
                        scales: &scales[at.clone()],
                        mins: mins.get(at).unwrap_or_default(),
                        zero,
                    };
                    let (s, o) = so[..2 * n * groups].split_at_mut(n * groups);
                    row_scales(self.isa, block, n * groups, s);
                    row_offsets(self.isa, block, n * groups, o);
                    let rows = w.chunks_exact(self.stride).zip(out.chunks_exact_mut(m));
                    let per_row = s.chunks_exact(groups).zip(o.chunks_exact(groups));
                    for ((w, out), (scales, offsets)) in rows.zip(per_row) {
                        let kernel = FourBitRowsAvx2 {
                            t,
                            w: row(w),
                            scales,
                            offsets: has_offsets.then_some(offsets),
                        };
                        in_blocks(&kernel, xs, c, out);
                    }
                }
                true
            }
            Params::Super { .. } => false,
        }
    }

    /// The task's `BITS`-bit rows with a scale per 16 `w` (from row `first`) against `xs`, `p`
    /// the whole matrix's parameters.
    fn sixteenths<const BITS: usize>(
        &self,
        w: &[u8],
        first: usize,
        p: SixBit,
        xs: &[Q8Row],
        out: &mut [f32],
    ) -> bool {
        let rows = w
            .chunks_exact(self.stride)
            .zip(out.chunks_exact_mut(xs.len()));
        let mut factors = vec![0f32; self.groups.div_ceil(SUPER)];
        for (i, (w, out)) in rows.enumerate() {
            let p = p.row(first + i, self.groups);
            let (d, _) = superblock_factors(self.isa, p.d, &mut factors);
            in_blocks(
                &SixBitRowsAvx2::<BITS> { t: self.t, w, p, d },
                xs,
                &mut [],
                out,
            );
        }
        true
    }

    /// The task's 8-bit rows `w` (from row `first`) against `xs`, their f16 `scales` those of
    /// the whole matrix.
    fn i8(&self, w: &[i8], first: usize, scales: &[f16], xs: &[Q8Row], out: &mut [f32]) -> bool {
        let (groups, m) = (self.groups, xs.len());
        let mut formed = vec![0f32; FORMED_ROWS * groups + 4 * groups];
        let (s, c) = formed.split_at_mut(FORMED_ROWS * groups);
        for (b, (w, out)) in self.blocks(w, m, out) {
            let n = w.len() / self.stride;
            let block = Params::Group {
                scales: &scales[(first + b) * groups..(first + b + n) * groups],
                mins: &[],
                zero: 0,
            };
            let s = &mut s[..n * groups];
            row_scales(self.isa, block, n * groups, s);
            let rows = w.chunks_exact(self.stride).zip(out.chunks_exact_mut(m));
            for ((w, out), scales) in rows.zip(s.chunks_exact(groups)) {
                let kernel = EightBitRowsAvx2 {
                    t: self.t,
                    w,
                    scales,
                };
                in_blocks(&kernel, xs, c, out);
            }
        }
        true
    }

    /// The task's rows `w` and their outputs `out` (`m` per row) in blocks of at most
    /// [`FORMED_ROWS`] rows, each with the index of its first row in the task.
    fn blocks<'a, W>(
        &self,
        w: &'a [W],
        m: usize,
        out: &'a mut [f32],
    ) -> impl Iterator<Item = (usize, (&'a [W], &'a mut [f32]))> {
        let rows = FORMED_ROWS;
        let blocks = w.chunks(rows * self.stride).zip(out.chunks_mut(rows * m));
        blocks.enumerate().map(move |(i, block)| (i * rows, block))
    }
}

/// Weight rows whose scales (and offsets) [`Avx2Run`] forms at a time: a block's values stay
/// in the core's L1/L2 between being formed and read. (Formed for a whole task, a head task's
/// 6,400 rows, they were 1.6 MB of fresh memory zeroed, written and read back beside the
/// task's 13 MB of weights; the zeroing alone was 3% of an 8-bit decode step's profile.)
#[cfg(target_arch = "x86_64")]
const FORMED_ROWS: usize = 64;

/// [`RowsRun`] of 8-bit rows: as [`run_u4`].
fn run_i8(
    isa: Isa,
    w: &[i8],
    kw: usize,
    first: usize,
    xs: &[Q8Row],
    p: Params,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(t), Params::Group { scales, .. }) = (isa.avx512_vnni(), p) {
        // SAFETY: `i8` and `u8` have one layout.
        let w = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, w.len()) };
        let run = super::x86_512_act8::Run {
            w,
            stride: kw,
            first,
        };
        return super::x86_512_act8::dot_i8_q8_run(t, run, xs, scales, out);
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(run), Params::Group { scales, .. }) = (Avx2Run::new(isa, kw, xs, out.len()), p) {
        return run.i8(w, first, scales, xs, out);
    }
    let _ = (isa, w, kw, first, xs, p, out);
    false
}

/// One 4-bit or 5-bit row, portable code (the x86 kernels go through [`RowsKernel`]s):
/// `Σ_g c_g · Σ_{i in g} q_i · xq_i + offset_g · sums_g` with `c_g = s_g · dx_g` and the
/// rounded activations' sums ([`Q8Row::sums`]).
fn dot_u4(w: Nibbles, x: &Q8Row, p: Params, c: &mut [f32]) -> f32 {
    let groups = x.scale.len();
    p.factors(0..groups, &x.scale, c);
    portable::dot_u4_q8(w, &x.q, c) + p.offsets(0..groups, &x.sums, c)
}

/// One 8-bit row, portable code (the x86 kernels go through [`RowsKernel`]s):
/// `Σ_g c_g · Σ_{i in g} w_i · xq_i` (the format has no offsets).
fn dot_i8(isa: Isa, w: &[i8], x: &Q8Row, p: Params, c: &mut [f32]) -> f32 {
    p.factors(0..x.scale.len(), &x.scale, c);
    let _ = isa;
    portable::dot_i8_q8(w, &x.q, c)
}

/// The rounded activations of a [`Q8Row`] laid out by `layout` in natural order (the tests'
/// oracle view).
#[cfg(test)]
pub(crate) fn natural(x: &Q8Row, k: usize, layout: Layout) -> Vec<i8> {
    let full = k / GROUP;
    let mut out = vec![0i8; k];
    let mut laid = x.q.iter().copied();
    for (g, width) in layout.blocks(full) {
        for parity in 0..2 {
            for gg in g..g + width {
                for i in 0..GROUP / 2 {
                    out[gg * GROUP + 2 * i + parity] = laid.next().unwrap();
                }
            }
        }
    }
    out[full * GROUP..].copy_from_slice(&x.q[full * GROUP..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Each activation row of a many-row 4-bit, 6-bit or 8-bit product has the bits of its
    /// product alone (the row kernels take rows in eights, fours and pairs), for every 4-bit
    /// parameter kind, odd quads and tails.
    #[test]
    fn rows_are_bit_identical_to_single_rows() {
        for k in [64, 160, 256, 512, 1408] {
            // Blocks of eight, four, two and one row.
            let (n, m) = (5, 15);
            let groups = k / GROUP;
            let supers = groups.div_ceil(SUPER);
            let w: Vec<U4x2> = (0..n * k / 2).map(|i| U4x2((i * 37 % 256) as u8)).collect();
            let xs: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.61).sin()).collect();
            let f16s = |len: usize| -> Vec<f16> {
                (0..len)
                    .map(|i| f16::from_f32(0.01 + (i % 7) as f32 * 0.003))
                    .collect()
            };
            let bytes = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 29 % 64) as u8).collect() };
            let (scales, mins, sc, mn, d) = (
                f16s(n * groups),
                f16s(n * groups),
                bytes(n * groups),
                bytes(n * groups),
                f16s(n * supers),
            );
            let group = Params::Group {
                scales: &scales,
                mins: &mins,
                zero: 0,
            };
            // GGUF's Q4_0: the offsets formed from the scales.
            let centred = Params::Group {
                scales: &scales,
                mins: &[],
                zero: 8,
            };
            let sup = Params::Super {
                sc: &sc,
                mn: &mn,
                d: &d,
                dmin: &d,
            };
            let w8: Vec<i8> = (0..n * k).map(|i| (i * 53 % 255) as i8).collect();
            for isa in Isa::supported() {
                let same = |all: &[f32], one: &dyn Fn(&[f32]) -> Vec<f32>, what: &str| {
                    for j in 0..m {
                        let one = one(&xs[j * k..(j + 1) * k]);
                        for r in 0..n {
                            assert_eq!(
                                all[j * n + r].to_bits(),
                                one[r].to_bits(),
                                "{what} {isa} k {k} row {j} weight row {r}"
                            );
                        }
                    }
                };
                for params in [group, centred, sup] {
                    let all = matmul_u4_q8(isa, &w, k, &xs, m, params);
                    same(&all, &|x| matmul_u4_q8(isa, &w, k, x, 1, params), "4-bit");
                }
                let all = matmul_i8_q8(isa, &w8, k, &xs, m, &scales);
                same(&all, &|x| matmul_i8_q8(isa, &w8, k, x, 1, &scales), "8-bit");
                if k % (SUPER * GROUP) == 0 {
                    let sc: Vec<i8> = (0..n * k / 16).map(|i| (i % 61) as i8 - 30).collect();
                    let p = SixBit {
                        sc: &sc,
                        d: &d,
                        dmin: &[],
                    };
                    // Q2_K's bytes: a scale in the low nibble, an offset in the high one.
                    let packed: Vec<i8> = (0..n * k / 16)
                        .map(|i| ((i * 7) % 256) as u8 as i8)
                        .collect();
                    let with_offsets = SixBit {
                        sc: &packed,
                        dmin: &d,
                        ..p
                    };
                    for (bits, p) in [(6, p), (3, p), (2, with_offsets)] {
                        let w = bytes(n * k / U6_CHUNK * chunk_bytes(bits));
                        let all = matmul_sixteenths_q8(isa, bits, &w, k, &xs, m, p);
                        let one = |x: &[f32]| matmul_sixteenths_q8(isa, bits, &w, k, x, 1, p);
                        same(&all, &one, &format!("{bits}-bit"));
                    }
                }
            }
        }
    }

    #[test]
    fn both_layouts_hold_every_value_once() {
        for k in [0, 2, 31, 32, 64, 96, 128, 160, 200, 256, 290, 480] {
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let want = q8_row_natural(&x).q;
            for layout in [Layout::Pairs, Layout::Quads] {
                let laid = q8_row(&x, layout);
                assert_eq!(natural(&laid, k, layout), want, "{layout:?} k {k}");
            }
            // Blocks tile the full groups; quads only where four are left.
            let full = k / GROUP;
            let blocks: Vec<_> = Layout::Quads.blocks(full).collect();
            assert_eq!(blocks.iter().map(|b| b.1).sum::<usize>(), full);
            assert!(blocks.iter().all(|&(g, w)| g % w == 0));
        }
    }

    proptest! {
        /// The AVX2 kernels' vector forms of a K-quant row's scales and offsets and of the
        /// offsets' sum have the bits of the scalar code they replace (the batch-invariance
        /// tests compare a path with itself; this ties the AVX2 path to the others).
        #[test]
        #[cfg(target_arch = "x86_64")]
        fn avx2_parameters_have_the_scalar_bits(
            groups in 0usize..40,
            seed in any::<u32>(),
        ) {
            let Some(t) = Isa::detect().avx2_fma() else {
                return Ok(());
            };
            let wave = |i: usize, f: f32| ((i as f32 + seed as f32 % 97.0) * f).sin();
            let sc: Vec<u8> = (0..groups).map(|i| (wave(i, 1.3).abs() * 63.0) as u8).collect();
            let d: Vec<f16> = (0..groups.div_ceil(SUPER))
                .map(|i| f16::from_f32(wave(i, 0.7) * 1e-2))
                .collect();
            let p = Params::Super { sc: &sc, mn: &sc, d: &d, dmin: &d };
            let (mut scalar, mut vector) = (vec![0f32; groups], vec![0f32; groups]);
            p.scales_into(0..groups, &mut scalar);
            super::super::x86::super_values(t, &sc, &d, &mut vector);
            prop_assert!(scalar.iter().zip(&vector).all(|(a, b)| a.to_bits() == b.to_bits()));
            let sums: Vec<f32> = (0..groups).map(|i| wave(i, 2.1) * 30.0).collect();
            let (a, b) = (
                offsets_dot(&scalar, &sums),
                super::super::x86::offsets_dot(t, &scalar, &sums),
            );
            prop_assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every path against an f64 oracle of the same integer products and scales.
        #[test]
        fn matches_the_integer_oracle(
            // Up to three superblocks, partial last groups and superblocks.
            half_k in 1usize..400,
            n in 1usize..12,
            m in 1usize..4,
            seed in 0u32..1000,
            kind in 0u8..4,
        ) {
            let k = 2 * half_k;
            let groups = k.div_ceil(GROUP);
            let supers = groups.div_ceil(SUPER);
            let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
            let w: Vec<U4x2> = (0..n * k / 2)
                .map(|i| U4x2(((i * 37 + seed as usize) % 256) as u8))
                .collect();
            let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
            let f16s = |len: usize, s: f32, lo: f32| -> Vec<f16> {
                (0..len).map(|i| f16::from_f32(lo + val(i, s) * 0.1)).collect()
            };
            let bytes = |len: usize, s: usize| -> Vec<u8> {
                (0..len).map(|i| ((i * 29 + s + seed as usize) % 64) as u8).collect()
            };
            // Group scales and offsets (kind 0: none; 1: some; 3: a zero point of 8, as GGUF's
            // Q4_0), or K-quant ones (kind 2).
            let scales = f16s(n * groups, 0.5, 0.11);
            let mins = if kind == 1 { f16s(n * groups, 2.7, 0.0) } else { Vec::new() };
            let zero = if kind == 3 { 8u8 } else { 0 };
            let (sc, mn) = (bytes(n * groups, 3), bytes(n * groups, 11));
            let (d, dmin) = (f16s(n * supers, 4.1, 0.15), f16s(n * supers, 5.3, 0.15));
            let params = if kind == 2 {
                Params::Super { sc: &sc, mn: &mn, d: &d, dmin: &dmin }
            } else {
                Params::Group { scales: &scales, mins: &mins, zero }
            };
            // The oracle's scale and offset of row r's group g, in f64.
            let param = |r: usize, g: usize| -> (f64, f64) {
                let (i, b) = (r * groups + g, r * supers + g / SUPER);
                if kind == 2 {
                    (d[b].to_f64() * sc[i] as f64, -dmin[b].to_f64() * mn[i] as f64)
                } else {
                    let s = scales[i].to_f64();
                    (s, mins.get(i).map_or(-(zero as f64) * s, |m| m.to_f64()))
                }
            };
            let mut vals = vec![0f32; k];
            for isa in Isa::supported() {
                let got = matmul_u4_q8(isa, &w, k, &xs, m, params);
                for j in 0..m {
                    let layout = Layout::of(isa);
                    let x = q8_row(&xs[j * k..(j + 1) * k], layout);
                    let xq = natural(&x, k, layout);
                    // The rounding itself: within half a step of x.
                    for (c, (&q, &v)) in xq.iter().zip(&xs[j * k..]).enumerate() {
                        let dx = x.scale[c / GROUP];
                        prop_assert!((q as f32 * dx - v).abs() <= 0.5 * dx + 1e-6);
                    }
                    for r in 0..n {
                        <U4x2 as super::super::WeightElem>::widen_row(&w[r * k / 2..(r + 1) * k / 2], &mut vals);
                        let terms: Vec<f64> = (0..k)
                            .map(|c| {
                                let g = c / GROUP;
                                let (scale, offset) = param(r, g);
                                (scale * vals[c] as f64 + offset)
                                    * x.scale[g] as f64 * xq[c] as f64
                            })
                            .collect();
                        let want: f64 = terms.iter().sum();
                        // f32 rounding of the scales and of the sum over groups: relative to
                        // the terms' magnitude, not the (possibly cancelling) result.
                        let scale: f64 = terms.iter().map(|t| t.abs()).sum();
                        let g = got[j * n + r] as f64;
                        prop_assert!((g - want).abs() <= 1e-6 * (1.0 + scale), "{isa}: {g} vs {want}");
                    }
                }
            }
        }
    }
}
