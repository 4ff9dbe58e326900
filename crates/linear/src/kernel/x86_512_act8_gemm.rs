//! The prefill-sized product (more than [`crate::GEMV_MAX_ROWS`] activation rows) of the
//! quantised weights (8, 6, 5, 4, 3 and 2 bits) with 8-bit activations on AVX512-VNNI: the
//! arithmetic of [`super::act8`] (each group of 32 activations rounded to i8 with its own `dx`,
//! integer sums exact, one f32 factor per group, or per 16 values), blocked so that `vpdpbusd`
//! does the work.
//!
//! The row-by-row kernel spends as many instructions unpacking and scaling as multiplying; a
//! GEMM amortises both:
//! - **panels**: a task repacks 32 weight rows once into bytes laid out for `vpdpbusd`: the
//!   vector for (group `g`, quad `j`, half `v`) holds, in lane `l`, the four values
//!   `32g + 4j .. 32g + 4j + 4` of weight row `16v + l`. Nibbles are unpacked there, once, and
//!   8-bit weights are stored as `w + 128` (a valid u8), corrected below. Sixteen rows' whole
//!   groups are repacked with vector shuffles (a 4 x 4 transpose of 32-bit quads per 128-bit
//!   lane, then one permute), the rest a quad at a time; the rows' scales and offsets are
//!   formed there too, so a task touches only its own rows' parameters.
//! - **tiles**: four activation rows at a time, each quad of each row broadcast to all lanes
//!   (`{1to16}`), so one instruction adds four products into 16 output rows, and a group's
//!   eight quads accumulate in one i32 register per (activation row, half) before a single
//!   conversion and FMA with the weight rows' group scales times `dx`.
//!
//! Per group and activation row that is 16 `vpdpbusd` plus 2 conversions, 2 products and 2
//! FMAs for 1024 multiply-adds (2 more FMAs for 4-bit offsets: `m[r, g] · dx[j, g] · Σ_{c in g}
//! xq[j, c]`, over the rounded activations as the row kernels take them: `act8::Q8Row::sums`); the f32 GEMM over widened
//! weights needs 64 FMAs.
//!
//! With `w + 128` stored, `Σ (w + 128) · xq = Σ w · xq + 128 · Σ xq`; the last term is the same
//! for every weight row, so it is subtracted once per (activation row, group) in integers:
//! the sums stay exact.
//!
//! The formats with a scale per 16 values (GGUF's Q6_K, Q3_K, Q2_K: [`Weights::Sixteenths`])
//! take the same panels with two sub-blocks per group: a group's quads `0..4` and `4..8`
//! accumulate in separate registers, each scaled by its own sub-block's scale (and, for 2 bits,
//! given its offset times the activations' sub-block sums). Their values are stored unsigned
//! with a zero point `z` (`q − z`, [`super::act8::zero_point`]): `z · Σ xq` over the 16 values
//! is the integer correction, as `128 · Σ xq` is for 8-bit weights.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::act8::{chunk_bytes, q8_row_natural, zero_point, Params, RowParams, SixBit, GROUP};
use super::x86_512::Avx512Vnni;
use super::x86_512_act8::{u2_chunk, u3_chunk, u6_chunk};
use super::{u5_row_bytes, Nibbles, U4x2};

/// Weight rows per panel (two 16-lane halves).
const NR: usize = 32;
/// Activation rows per tile.
const MR: usize = 4;
/// Quads (four values) per group.
const QUADS: usize = GROUP / 4;

/// The stored weights a panel is cut from: `[N, K]` row-major.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// Signed 8-bit values.
    I8(&'a [i8]),
    /// 4-bit values `0..=15`, `K / 2` pairs per row.
    U4(&'a [U4x2]),
    /// 5-bit values `0..=31`, rows as [`Nibbles::five`] stores them.
    U5(&'a [u8]),
    /// Values of `bits` bits (6, 3 or 2) in chunks of 64 ([`chunk_bytes`]), `K` a multiple
    /// of 64, with a scale per 16 values ([`Factors::PerSixteen`]).
    Sixteenths { bits: usize, w: &'a [u8] },
}

impl Weights<'_> {
    /// Sub-blocks per group of 32: parameters of their own.
    fn subs(&self) -> usize {
        match self {
            Weights::Sixteenths { .. } => 2,
            _ => 1,
        }
    }

    /// What the stored value exceeds the weight's integer by (`128` for 8-bit values, the
    /// zero point for a scale per 16, none for 4/5 bits, whose offsets are parameters).
    fn bias(&self) -> i32 {
        match *self {
            Weights::I8(_) => 128,
            Weights::U4(_) | Weights::U5(_) => 0,
            Weights::Sixteenths { bits, .. } => zero_point(bits),
        }
    }
}

/// The factors that turn a panel's integer sums into values.
#[derive(Clone, Copy)]
pub(crate) enum Factors<'a> {
    /// A scale (and offset) per group of 32: 8, 5 and 4 bits.
    PerGroup(Params<'a>),
    /// A scale per 16 values (and an offset for 2 bits): [`Weights::Sixteenths`].
    PerSixteen(SixBit<'a>),
}

impl Factors<'_> {
    /// Whether the format has offsets.
    pub(crate) fn has_offsets(&self) -> bool {
        match self {
            Factors::PerGroup(p) => p.has_offsets(),
            Factors::PerSixteen(p) => p.has_offsets(),
        }
    }
}

/// `xs` (`m` rows of `K` f32) times the `[N, K]` weights `w` with the parameters
/// `params`: `Σ_b dx[j, g(b)] · (s[r, b] · Σ_{c in b} w[r, c] · xq[j, c] + m[r, b] · Σ_{c in b}
/// xq[j, c])` over the blocks `b` that have parameters (groups of 32, or of 16 for
/// [`Weights::Sixteenths`]), `[m, N]` row-major.
///
/// # Panics
/// If `xs` is not `m` rows of `K`, or `params` does not fit `w` (a scale per 16 for
/// [`Weights::Sixteenths`] only; those rows whole chunks of 64).
pub(crate) fn matmul(
    t: Avx512Vnni,
    w: Weights,
    params: Factors,
    n: usize,
    k: usize,
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    assert_eq!(xs.len(), m * k, "act8 GEMM: m rows of K");
    assert_eq!(
        matches!(w, Weights::Sixteenths { .. }),
        matches!(params, Factors::PerSixteen(_)),
        "act8 GEMM: a scale per 16 goes with the values that have one"
    );
    if let Weights::Sixteenths { bits, w } = w {
        assert!(
            k.is_multiple_of(64) && w.len() >= n * k / 64 * chunk_bytes(bits),
            "act8 GEMM: {bits}-bit rows of whole 64-value chunks"
        );
    }
    if n == 0 || m == 0 {
        return vec![0.0; m * n];
    }
    let acts = Activations::round(xs, m, k, &w);
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(NR))
        .into_par_iter()
        .map(|b| {
            let panel = Panel::pack(t, w, params, b * NR..((b + 1) * NR).min(n), k);
            let mut out = vec![0f32; m * NR];
            let mut j0 = 0;
            while j0 < m {
                let tile = if m - j0 >= MR { MR } else { 1 };
                let out = &mut out[j0 * NR..(j0 + tile) * NR];
                // SAFETY: the token proves AVX-512 F/BW and VNNI; the panel and `acts` hold
                // the same groups, `acts` rows `j0..j0 + tile`, `out` `tile` rows of `NR`.
                unsafe {
                    match (tile, acts.subs, panel.offsets.is_empty()) {
                        (MR, 1, true) => tile_vnni::<MR, 1, false>(&panel, &acts, j0, out),
                        (MR, 1, false) => tile_vnni::<MR, 1, true>(&panel, &acts, j0, out),
                        (MR, _, true) => tile_vnni::<MR, 2, false>(&panel, &acts, j0, out),
                        (MR, _, false) => tile_vnni::<MR, 2, true>(&panel, &acts, j0, out),
                        (_, 1, true) => tile_vnni::<1, 1, false>(&panel, &acts, j0, out),
                        (_, 1, false) => tile_vnni::<1, 1, true>(&panel, &acts, j0, out),
                        (_, _, true) => tile_vnni::<1, 2, false>(&panel, &acts, j0, out),
                        (_, _, false) => tile_vnni::<1, 2, true>(&panel, &acts, j0, out),
                    }
                }
                j0 += tile;
            }
            out
        })
        .collect();
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
        for (b, block) in blocks.iter().enumerate() {
            let cols = &mut row[b * NR..((b + 1) * NR).min(n)];
            let len = cols.len();
            cols.copy_from_slice(&block[j * NR..j * NR + len]);
        }
    });
    out
}

/// The activation rows rounded per group ([`q8_row_natural`]), each padded with zeros to whole
/// groups, with their sums per block of the weights' parameters (`subs` per group).
struct Activations {
    groups: usize,
    /// Blocks per group: 1, or 2 for a scale per 16 values.
    subs: usize,
    /// `[m, groups · 32]`.
    q: Vec<i8>,
    /// `[m, groups]`: `dx`.
    dx: Vec<f32>,
    /// `[m, groups · subs]`: `bias · Σ xq` over the block ([`Weights::bias`]: the stored values'
    /// excess, zeros without one).
    correction: Vec<i32>,
    /// `[m, groups · subs]`: the sums of the rounded activations over the block, `dx · Σ xq`
    /// (what offsets multiply).
    sums: Vec<f32>,
}

impl Activations {
    fn round(xs: &[f32], m: usize, k: usize, w: &Weights) -> Activations {
        let (groups, subs, bias) = (k.div_ceil(GROUP), w.subs(), w.bias());
        let rows: Vec<_> = xs.par_chunks_exact(k).map(q8_row_natural).collect();
        let mut q = vec![0i8; m * groups * GROUP];
        let mut dx = Vec::with_capacity(m * groups);
        let mut sums = Vec::with_capacity(m * groups * subs);
        let mut correction = vec![0i32; m * groups * subs];
        for (j, row) in rows.iter().enumerate() {
            q[j * groups * GROUP..][..k].copy_from_slice(&row.q);
            dx.extend_from_slice(&row.scale);
            let blocks = row.q.chunks(GROUP / subs);
            if subs == 1 {
                sums.extend_from_slice(&row.sums);
            } else {
                // (Whole groups: the rows with a scale per 16 are whole chunks of 64.)
                sums.extend(blocks.clone().enumerate().map(|(b, block)| {
                    row.scale[b / subs] * block.iter().map(|&v| v as i32).sum::<i32>() as f32
                }));
            }
            if bias != 0 {
                for (c, block) in correction[j * groups * subs..][..groups * subs]
                    .iter_mut()
                    .zip(blocks)
                {
                    *c = bias * block.iter().map(|&v| v as i32).sum::<i32>();
                }
            }
        }
        Activations {
            groups,
            subs,
            q,
            dx,
            correction,
            sums,
        }
    }
}

/// 32 weight rows repacked for `vpdpbusd` (see the module documentation), rows past the
/// matrix zero.
struct Panel {
    /// `[groups, QUADS, 2, 16]` quads of bytes (little-endian).
    values: Vec<u32>,
    /// `[groups · subs, 32]`: the rows' block scales.
    scales: Vec<f32>,
    /// `[groups · subs, 32]`: the rows' block offsets (empty for formats without).
    offsets: Vec<f32>,
}

impl Panel {
    fn pack(
        t: Avx512Vnni,
        w: Weights,
        params: Factors,
        rows: std::ops::Range<usize>,
        k: usize,
    ) -> Panel {
        let groups = k.div_ceil(GROUP);
        let full = k / GROUP;
        let blocks = groups * w.subs();
        let mut values = vec![0u32; groups * QUADS * NR];
        let mut scales = vec![0f32; blocks * NR];
        let mut offsets = vec![0f32; if params.has_offsets() { blocks * NR } else { 0 }];
        let first = rows.start;
        // Each row's parameters formed in one pass (a superblock's f16 converted once), then
        // laid out block-major.
        let mut row = vec![0f32; blocks];
        for (i, r) in rows.clone().enumerate() {
            match params {
                Factors::PerGroup(params) => {
                    let p = params.row(r, groups);
                    p.scales_into(0..groups, &mut row);
                    for (g, &s) in row.iter().enumerate() {
                        scales[g * NR + i] = s;
                    }
                    if !offsets.is_empty() {
                        p.offsets_into(0..groups, &mut row);
                        for (g, &m) in row.iter().enumerate() {
                            offsets[g * NR + i] = m;
                        }
                    }
                }
                Factors::PerSixteen(params) => {
                    let p = params.row(r, groups);
                    p.scales_into(&mut row);
                    for (b, &s) in row.iter().enumerate() {
                        scales[b * NR + i] = s;
                    }
                    if !offsets.is_empty() {
                        p.offsets_into(&mut row);
                        for (b, &m) in row.iter().enumerate() {
                            offsets[b * NR + i] = m;
                        }
                    }
                }
            }
        }
        if let Weights::Sixteenths { bits, w } = w {
            for half in 0..2 {
                let lanes = (first + 16 * half)..(first + 16 * (half + 1)).min(rows.end);
                // SAFETY: the token proves AVX-512 F/BW; `matmul` checked that `w` holds
                // whole chunks of every row.
                unsafe { pack_sixteenths(t, bits, w, lanes, k, half, &mut values) };
            }
            return Panel {
                values,
                scales,
                offsets,
            };
        }
        for half in 0..2 {
            let lanes = (first + 16 * half)..(first + 16 * (half + 1)).min(rows.end);
            // Sixteen rows of whole groups in vectors; the rest a quad at a time.
            let vector_groups = if lanes.len() == 16 { full } else { 0 };
            if vector_groups > 0 {
                // SAFETY: the token proves AVX-512 F/BW; `pack16` reads groups
                // `0..vector_groups` of rows `lanes` (inside `w`) and writes their slots.
                unsafe { pack16(t, w, lanes.start, k, vector_groups, half, &mut values) };
            }
            if vector_groups == groups {
                continue;
            }
            for (lane, r) in lanes.enumerate() {
                let at = (vector_groups * QUADS * 2 + half) * 16 + lane;
                let slots = values[at..].iter_mut().step_by(2 * 16);
                pack_row(w, r, k, vector_groups * GROUP, slots);
            }
        }
        Panel {
            values,
            scales,
            offsets,
        }
    }
}

/// Row `r`'s quads from value `from` on as `vpdpbusd`'s unsigned bytes (8-bit values offset
/// by 128), one `u32` (little-endian) per slot, zeros past `k`.
fn pack_row<'a>(
    w: Weights,
    r: usize,
    k: usize,
    from: usize,
    slots: impl Iterator<Item = &'a mut u32>,
) {
    match w {
        Weights::I8(w) => {
            for (slot, quad) in slots.zip(w[r * k + from..(r + 1) * k].chunks(4)) {
                // (Padding past `k` meets zero activations.)
                let mut b = [0u8; 4];
                for (b, &v) in b.iter_mut().zip(quad) {
                    *b = (v as u8) ^ 0x80;
                }
                *slot = u32::from_le_bytes(b);
            }
        }
        Weights::U5(w) => {
            let bytes = u5_row_bytes(k);
            let row = Nibbles::five(&w[r * bytes..(r + 1) * bytes], k);
            for (slot, i) in slots.zip((from..k).step_by(4)) {
                // (5-bit rows are whole groups: no padding.)
                *slot = (0..4).fold(0, |s, t| s | (row.value(i + t) as u32) << (8 * t));
            }
        }
        Weights::U4(w) => {
            let row = &w[(r * k + from) / 2..(r + 1) * k / 2];
            for (slot, pair) in slots.zip(row.chunks(2)) {
                // Two bytes of nibble pairs -> four bytes of values.
                let x = pair[0].0 as u32 | (pair.get(1).map_or(0, |p| p.0) as u32) << 8;
                *slot = (x & 0xF) | (x & 0xF0) << 4 | (x & 0xF00) << 8 | (x & 0xF000) << 12;
            }
        }
        Weights::Sixteenths { .. } => unreachable!("packed whole by `pack_sixteenths`"),
    }
}

/// Rows `lanes` (at most 16) of `bits`-bit values into their slots of half `half` of
/// `values`: per 64-value chunk, each row unpacked to bytes in a vector (as the row kernels
/// do; rows past `lanes` zero), then a 16 x 16 transpose of 32-bit quads puts quad `q` of
/// every row in one vector, row `l` at element `l`.
///
/// # Safety
/// AVX-512 F/BW must be available; `w` must hold whole chunks of `K` values for rows `lanes`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_sixteenths(
    _t: Avx512Vnni,
    bits: usize,
    w: &[u8],
    lanes: std::ops::Range<usize>,
    k: usize,
    half: usize,
    values: &mut [u32],
) {
    debug_assert!(lanes.len() <= 16);
    let chunks = k / 64;
    debug_assert!(values.len() >= chunks * 2 * QUADS * NR);
    let stride = chunks * chunk_bytes(bits);
    for ch in 0..chunks {
        let mut rows = [_mm512_setzero_si512(); 16];
        for (l, r) in lanes.clone().enumerate() {
            let row = w.as_ptr().add(r * stride);
            rows[l] = match bits {
                2 => u2_chunk(row, ch),
                3 => u3_chunk(row, ch),
                _ => u6_chunk(row, ch),
            };
        }
        for (q, v) in transpose16(rows).into_iter().enumerate() {
            // Quad q of chunk ch: quad q % 8 of group 2 · ch + q / 8.
            let at = (((2 * ch + q / QUADS) * QUADS + q % QUADS) * 2 + half) * 16;
            _mm512_storeu_si512(values.as_mut_ptr().add(at) as *mut _, v);
        }
    }
}

/// The 16 x 16 transpose of 32-bit elements: element `i` of vector `j` out is element `j` of
/// vector `i` in (pairs of rows interleaved, then fours, within 128-bit lanes; then the
/// 128-bit lanes of each four vectors transposed).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // a[2i], a[2i + 1]: rows 2i and 2i + 1 interleaved, elements 4k, 4k + 1 / 4k + 2, 4k + 3.
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + c], 128-bit lane k: element 4k + c of rows 4i..4i + 4.
    let mut b = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    // Out 4k + c: lane k of b[c], b[4 + c], b[8 + c], b[12 + c].
    let mut o = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let s0 = _mm512_shuffle_i32x4::<0x44>(b[c], b[4 + c]);
        let s1 = _mm512_shuffle_i32x4::<0xEE>(b[c], b[4 + c]);
        let s2 = _mm512_shuffle_i32x4::<0x44>(b[8 + c], b[12 + c]);
        let s3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + c], b[12 + c]);
        o[c] = _mm512_shuffle_i32x4::<0x88>(s0, s2);
        o[4 + c] = _mm512_shuffle_i32x4::<0xDD>(s0, s2);
        o[8 + c] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
        o[12 + c] = _mm512_shuffle_i32x4::<0xDD>(s1, s3);
    }
    o
}

/// Groups `0..groups` (whole) of the 16 rows from `r0` into their slots of half `half` of
/// `values`: per group, four vectors hold four rows each (one per 128-bit lane) as quads
/// `0..4` and four as quads `4..8`; a 4 x 4 transpose of 32-bit elements per lane across each
/// four leaves quad `q` of rows `4p + i` at element `4i + p`, and one permute puts row `l` at
/// element `l`.
///
/// # Safety
/// AVX-512 F/BW must be available; rows `r0..r0 + 16` must hold `groups` whole groups.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack16(
    _t: Avx512Vnni,
    w: Weights,
    r0: usize,
    k: usize,
    groups: usize,
    half: usize,
    values: &mut [u32],
) {
    debug_assert!(values.len() >= groups * QUADS * NR);
    let rows = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let nibble = _mm512_set1_epi8(0xF);
    let sixteen = _mm512_set1_epi8(16);
    let bias = _mm512_set1_epi8(-128);
    for g in 0..groups {
        // lo[p] / hi[p]: rows 4p..4p + 4, quads 0..4 / 4..8 of group g.
        let mut lo = [_mm512_setzero_si512(); 4];
        let mut hi = [_mm512_setzero_si512(); 4];
        for p in 0..4 {
            match w {
                Weights::I8(w) => {
                    let base = w.as_ptr() as *const u8;
                    lo[p] = _mm512_xor_si512(four_rows(base.add(r0 * k), k, p, g * GROUP), bias);
                    hi[p] =
                        _mm512_xor_si512(four_rows(base.add(r0 * k), k, p, g * GROUP + 16), bias);
                }
                Weights::Sixteenths { .. } => unreachable!("packed by `pack_sixteenths`"),
                Weights::U4(_) | Weights::U5(_) => {
                    let (base, stride) = match w {
                        Weights::U5(w) => (w.as_ptr(), u5_row_bytes(k)),
                        Weights::U4(w) => (w.as_ptr() as *const u8, k / 2),
                        _ => unreachable!("the arms above"),
                    };
                    let base = base.add(r0 * stride);
                    let v = four_rows(base, stride, p, g * GROUP / 2);
                    let mut even = _mm512_and_si512(v, nibble);
                    let mut odd = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                    if let Weights::U5(_) = w {
                        // Row 4p + i's fifth bits (lane i): its evens' half of the group's
                        // u32 into bits 16i.., its odds' into the other mask.
                        let (mut evens, mut odds) = (0u64, 0u64);
                        for i in 0..4 {
                            let row = base.add((4 * p + i) * stride);
                            let row = std::slice::from_raw_parts(row, stride);
                            let bits = Nibbles::five(row, k).high_bits(g) as u64;
                            evens |= (bits & 0xFFFF) << (16 * i);
                            odds |= (bits >> 16) << (16 * i);
                        }
                        even = _mm512_mask_add_epi8(even, evens, even, sixteen);
                        odd = _mm512_mask_add_epi8(odd, odds, odd, sixteen);
                    }
                    lo[p] = _mm512_unpacklo_epi8(even, odd);
                    hi[p] = _mm512_unpackhi_epi8(even, odd);
                }
            }
        }
        for (quads, x) in [lo, hi].iter().enumerate() {
            let t0 = _mm512_unpacklo_epi32(x[0], x[1]);
            let t1 = _mm512_unpackhi_epi32(x[0], x[1]);
            let t2 = _mm512_unpacklo_epi32(x[2], x[3]);
            let t3 = _mm512_unpackhi_epi32(x[2], x[3]);
            let q = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
            for (i, q) in q.into_iter().enumerate() {
                let j = 4 * quads + i;
                let at = ((g * QUADS + j) * 2 + half) * 16;
                let v = _mm512_permutexvar_epi32(rows, q);
                _mm512_storeu_si512(values.as_mut_ptr().add(at) as *mut _, v);
            }
        }
    }
}

/// Rows `4p..4p + 4` (of rows `stride` bytes apart from `base`), 16 bytes each from byte `at`,
/// one row per 128-bit lane.
///
/// # Safety
/// AVX-512 F must be available; the 16 bytes of each of the four rows must be readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn four_rows(base: *const u8, stride: usize, p: usize, at: usize) -> __m512i {
    let row = |i: usize| base.add((4 * p + i) * stride + at) as *const __m128i;
    let v = _mm512_castsi128_si512(_mm_loadu_si128(row(0)));
    let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(row(1)));
    let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(row(2)));
    _mm512_inserti32x4::<3>(v, _mm_loadu_si128(row(3)))
}

/// Rows `j0..j0 + T` of `acts` times the panel, into `out` (`T` rows of [`NR`]), `SUB`
/// blocks of parameters per group (1, or 2 for a scale per 16); with `OFFSETS`, plus the rows'
/// offsets times the activations' block sums.
///
/// # Safety
/// AVX-512 F/BW and VNNI must be available; the panel and `acts` must hold the same number
/// of groups and `SUB` blocks per group, `acts` rows `j0..j0 + T`, `out` `T · NR` values; with
/// `OFFSETS` the panel must have offsets.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const T: usize, const SUB: usize, const OFFSETS: bool>(
    panel: &Panel,
    acts: &Activations,
    j0: usize,
    out: &mut [f32],
) {
    let groups = acts.groups;
    let blocks = groups * SUB;
    debug_assert!(panel.values.len() == groups * QUADS * NR && out.len() >= T * NR);
    debug_assert!(acts.subs == SUB && panel.scales.len() == blocks * NR);
    debug_assert!(acts.dx.len() >= (j0 + T) * groups && acts.sums.len() >= (j0 + T) * blocks);
    debug_assert!(!OFFSETS || panel.offsets.len() == blocks * NR);
    let w = panel.values.as_ptr() as *const u8;
    let x = acts.q.as_ptr().add(j0 * groups * GROUP);
    let row = groups * GROUP;
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    for g in 0..groups {
        // sums[i][b]: activation row i, the group's block b, the two halves of 16 rows.
        let mut sums = [[[_mm512_setzero_si512(); 2]; SUB]; T];
        for j in 0..QUADS {
            let b = j / (QUADS / SUB);
            let at = (g * QUADS + j) * 2 * 64;
            let w0 = _mm512_loadu_si512(w.add(at) as *const _);
            let w1 = _mm512_loadu_si512(w.add(at + 64) as *const _);
            for (i, sums) in sums.iter_mut().enumerate() {
                let quad = (x.add(i * row + g * GROUP + 4 * j) as *const i32).read_unaligned();
                let xb = _mm512_set1_epi32(quad);
                sums[b][0] = _mm512_dpbusd_epi32(sums[b][0], w0, xb);
                sums[b][1] = _mm512_dpbusd_epi32(sums[b][1], w1, xb);
            }
        }
        for b in 0..SUB {
            let block = g * SUB + b;
            let s = [
                _mm512_loadu_ps(panel.scales.as_ptr().add(block * NR)),
                _mm512_loadu_ps(panel.scales.as_ptr().add(block * NR + 16)),
            ];
            let o = if OFFSETS {
                [
                    _mm512_loadu_ps(panel.offsets.as_ptr().add(block * NR)),
                    _mm512_loadu_ps(panel.offsets.as_ptr().add(block * NR + 16)),
                ]
            } else {
                [_mm512_setzero_ps(); 2]
            };
            for (i, (acc, sums)) in acc.iter_mut().zip(&sums).enumerate() {
                let at = (j0 + i) * blocks + block;
                let dx = _mm512_set1_ps(*acts.dx.get_unchecked((j0 + i) * groups + g));
                let correction = _mm512_set1_epi32(*acts.correction.get_unchecked(at));
                let sum = _mm512_set1_ps(*acts.sums.get_unchecked(at));
                for h in 0..2 {
                    let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[b][h], correction));
                    acc[h] = _mm512_fmadd_ps(_mm512_mul_ps(exact, s[h]), dx, acc[h]);
                    if OFFSETS {
                        acc[h] = _mm512_fmadd_ps(o[h], sum, acc[h]);
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(i * NR), acc[0]);
        _mm512_storeu_ps(out.as_mut_ptr().add(i * NR + 16), acc[1]);
    }
}
