//! The AVX512-VNNI product of quantised matrices stored in panels ([`super::panels`]: 8, 6, 5
//! and 4-bit values) with 8-bit activations, for any number of activation rows: decode steps,
//! batched decode and prefill alike, so a row's result never depends on how many rows came
//! with it.
//!
//! The arithmetic is [`super::act8`]'s: each group of 32 activations rounded to i8 with its own
//! `dx` ([`q8_row_natural`]), the integer sums exact, then per weight row and block of
//! parameters (a group of 32, or 16 values for Q6_K's scale per 16) `acc += Σ q · xq · (s ·
//! dx)` and, for formats with offsets, `off += m · dx · Σ xq` (the offsets over the rounded
//! activations, `Q8Row::sums`), the result `acc + off`. A K-quant superblock's `d` and
//! `dmin` are loaded and widened once for its eight groups. Values stored unsigned with a zero
//! point (8-bit weights plus 128, Q6_K's `q − 32`) subtract `z · Σ xq` from the integer sums,
//! exactly, as the GEMM of [`super::x86_512_act8_gemm`] does.
//!
//! Per group and half panel (16 weight rows): the group's vectors loaded once (nibbles split
//! in registers, higher bit planes ORed in), eight `vpdpbusd` per activation row against that
//! row's quads broadcast to every lane (quads `0..4` and `4..8` in separate registers: Q6_K's
//! two sub-blocks), then one conversion, one product and one FMA per activation row and block
//! with the 16 rows' scales (f16, or the integer scales), formed once per group for all
//! activation rows. Rows go in tiles of up to four activation rows, so each unpacked
//! weight vector serves up to four `vpdpbusd`; the per-row instruction sequence is the same
//! whatever the tile's height.

use std::arch::x86_64::*;

use half::f16;
use rayon::prelude::*;

use super::act8::{q8_row_natural, GROUP, SUPER};
use super::panels::{group_bytes, panels, NR};
use super::x86_512::Avx512Vnni;
use super::x86_512_act8::QuadParams;
use super::x86_512_act8_gemm::Factors;

/// Activation rows per tile at most: a call's rows go in tiles of four, the last one of one to
/// four (a routed expert's few rows in a batched step are one tile).
const MR: usize = 4;

/// `xs` (`m` rows of `K` f32) times the `[n, K]` matrix of `bits`-bit values (8, 6, 5 or 4)
/// whose panels are `w`, with the parameters `params` in panel order (every field `[panels,
/// per, NR]`; a scale per 16 only for 6 bits): `[m, n]` row-major.
///
/// # Panics
/// If `xs` is not `m` rows of `K`, or `w` / `params` do not hold `n` rows of `K` values.
#[allow(clippy::too_many_arguments)] // the matrix's fields
pub(crate) fn matmul(
    _: Avx512Vnni,
    bits: usize,
    w: &[u8],
    params: Factors,
    n: usize,
    k: usize,
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    assert_eq!(xs.len(), m * k, "panel product: m rows of K");
    assert!(
        matches!(bits, 4 | 5 | 6 | 8),
        "panel product: {bits}-bit values"
    );
    assert_eq!(
        bits == 6,
        matches!(params, Factors::PerSixteen(_)),
        "panel product: a scale per 16 goes with 6-bit values"
    );
    let groups = k.div_ceil(GROUP);
    let (count, size) = (panels(n), group_bytes(bits));
    assert!(
        w.len() >= count * groups * size,
        "panel product: the panels' values"
    );
    let ptrs = Ptrs::of(params, count * NR, groups);
    if n == 0 || m == 0 {
        return vec![0.0; m * n];
    }
    // The rounded activations, each row padded with zeros to whole groups.
    let rows: Vec<_> = if m > 1 {
        xs.par_chunks_exact(k).map(q8_row_natural).collect()
    } else {
        vec![q8_row_natural(xs)]
    };
    let mut q = vec![0i8; m * groups * GROUP];
    for (j, row) in rows.iter().enumerate() {
        q[j * groups * GROUP..][..k].copy_from_slice(&row.q);
    }
    let dx: Vec<f32> = rows.iter().flat_map(|r| r.scale.iter().copied()).collect();
    let sums: Vec<f32> = rows.iter().flat_map(|r| r.sums.iter().copied()).collect();
    // The zero point's integer correction per 16 values: `z · Σ xq`.
    let zero = zero_point(bits);
    let correction: Vec<i32> = if zero == 0 {
        Vec::new()
    } else {
        q.chunks_exact(16)
            .map(|c| zero * c.iter().map(|&v| v as i32).sum::<i32>())
            .collect()
    };
    let acts = Acts {
        groups,
        offsets: params.has_offsets(),
        q: &q,
        dx: &dx,
        sums: &sums,
        correction: &correction,
    };
    // `[panels, m, NR]`, then scattered to `[m, n]`.
    let mut blocks = vec![0f32; count * m * NR];
    blocks
        .par_chunks_mut(m * NR)
        .enumerate()
        .for_each(|(b, out)| {
            // SAFETY: `Ptrs::of` checked that the parameters hold `count` panels.
            let p = unsafe { ptrs.panel(b, groups) };
            let w = &w[b * groups * size..][..groups * size];
            let mut j0 = 0;
            while j0 < m {
                let tile = (m - j0).min(MR);
                let out = &mut out[j0 * NR..(j0 + tile) * NR];
                // One instantiation per tile height and width, so the tile's loops unroll.
                macro_rules! tile {
                    ($($t:literal)*) => {
                        match (tile, bits) {
                            $(
                                ($t, 8) => tile_vnni::<$t, 8>(w, p, &acts, j0, out),
                                ($t, 6) => tile_vnni::<$t, 6>(w, p, &acts, j0, out),
                                ($t, 5) => tile_vnni::<$t, 5>(w, p, &acts, j0, out),
                                ($t, _) => tile_vnni::<$t, 4>(w, p, &acts, j0, out),
                            )*
                            _ => unreachable!("tiles of 1 to {MR} rows"),
                        }
                    };
                }
                // SAFETY: the token proves AVX-512 F/BW, VNNI and F16C; `w` is one panel of
                // `groups` groups of `bits`-bit values, `p` its parameters (a scale per 16
                // exactly for 6 bits, checked above), `acts` holds rows `j0..j0 + tile`.
                unsafe { tile!(1 2 3 4) }
                j0 += tile;
            }
        });
    if m == 1 {
        blocks.truncate(n);
        return blocks;
    }
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(j, row)| {
        for (b, cols) in row.chunks_mut(NR).enumerate() {
            let len = cols.len();
            cols.copy_from_slice(&blocks[(b * m + j) * NR..][..len]);
        }
    });
    out
}

/// What a stored `bits`-bit value exceeds the weight's integer by: 128 for 8-bit weights,
/// Q6_K's 32; none for 4 and 5 bits, whose offsets are parameters.
const fn zero_point(bits: usize) -> i32 {
    match bits {
        8 => 128,
        6 => 32,
        _ => 0,
    }
}

/// The rounded activation rows, as the product reads them: `q` `[m, groups · 32]`, `dx` and
/// `sums` (`dx · Σ xq`, read where the matrix has offsets) `[m, groups]`, `correction`
/// (`z · Σ xq` per 16 values, empty without a zero point) `[m, 2 · groups]`.
struct Acts<'a> {
    groups: usize,
    /// Whether the matrix's format has offsets (what `sums` multiply).
    offsets: bool,
    q: &'a [i8],
    dx: &'a [f32],
    sums: &'a [f32],
    correction: &'a [i32],
}

/// The parameters' pointers, checked to hold a number of panels: the per-group kinds as the
/// row kernels hold them ([`QuadParams`]: panel `b`'s are those of row `b · NR`, since every
/// field is `[panels, per, NR]`), or a scale per 16 values.
#[derive(Clone, Copy)]
enum Ptrs {
    PerGroup(QuadParams),
    /// Q6_K's signed scales per 16 values and f16 `d`: `s = d · sc`.
    Sixteenths {
        sc: *const i8,
        d: *const f16,
    },
}

// SAFETY: read-only pointers into the caller's parameters, which outlive the product.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

impl Ptrs {
    /// `params` checked to hold `rows` rows (whole panels) of `groups` groups.
    fn of(params: Factors, rows: usize, groups: usize) -> Ptrs {
        match params {
            Factors::PerGroup(p) => Ptrs::PerGroup(QuadParams::of(p, rows, groups)),
            Factors::PerSixteen(p) => {
                assert!(
                    p.sc.len() >= rows * 2 * groups,
                    "panel product: a scale per 16"
                );
                assert!(
                    p.d.len() >= rows * groups.div_ceil(SUPER),
                    "panel product: d"
                );
                assert!(!p.has_offsets(), "panel product: no 2-bit values");
                Ptrs::Sixteenths {
                    sc: p.sc.as_ptr(),
                    d: p.d.as_ptr(),
                }
            }
        }
    }

    /// Panel `b`'s parameters.
    ///
    /// # Safety
    /// `b` must be one of the panels [`Ptrs::of`] checked.
    unsafe fn panel(self, b: usize, groups: usize) -> Ptrs {
        let r = b * NR;
        match self {
            Ptrs::PerGroup(p) => Ptrs::PerGroup(p.row(r, groups)),
            Ptrs::Sixteenths { sc, d } => Ptrs::Sixteenths {
                sc: sc.add(r * 2 * groups),
                d: d.add(r * groups.div_ceil(SUPER)),
            },
        }
    }

    /// The factors of half `h` of superblock `sb` (groups `8 sb..8 sb + 8`) that
    /// [`Ptrs::factors`] multiplies into each of its groups' own: K-quants' `d` and `−dmin`,
    /// Q6_K's `d`; ones for per-group formats (unused). Loaded once per superblock, not per
    /// group: at one activation row the product is compute-bound.
    ///
    /// # Safety
    /// AVX-512 F and F16C must be available; the panel must hold superblock `sb`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn superblock(self, sb: usize, h: usize) -> (__m512, __m512) {
        let at = sb * NR + 16 * h;
        let f16s = |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        match self {
            Ptrs::PerGroup(QuadParams::Group { .. }) => (_mm512_set1_ps(1.0), _mm512_set1_ps(1.0)),
            Ptrs::PerGroup(QuadParams::Super { d, dmin, .. }) => {
                let dmin = f16s(dmin.add(at));
                (f16s(d.add(at)), _mm512_sub_ps(_mm512_setzero_ps(), dmin))
            }
            Ptrs::Sixteenths { d, .. } => (f16s(d.add(at)), _mm512_setzero_ps()),
        }
    }

    /// Asks for the lines of group `g`'s parameters [`super::x86::prefetch_ahead`]'s
    /// distance ahead in each of their streams, as the values' own stream is: a panel's
    /// parameters are streams of their own (`[panels, groups, NR]` per field, 4 KiB a panel
    /// for 4-bit f16 scales at `K = 2048`), and the hardware prefetchers restart at every
    /// 4 KiB page, so each panel began with misses on its scales and offsets. Measured: 4-bit
    /// decode +3%, 8-bit within noise (`benchmarks/README.md`, "Weights prefetched into L2").
    #[inline(always)]
    fn prefetch_ahead(self, g: usize) {
        use super::x86::prefetch_ahead;
        let at = g * NR;
        match self {
            Ptrs::PerGroup(QuadParams::Group { scales, mins, .. }) => {
                prefetch_ahead(scales.wrapping_add(at), NR * 2);
                if let Some(mins) = mins {
                    prefetch_ahead(mins.wrapping_add(at), NR * 2);
                }
            }
            Ptrs::PerGroup(QuadParams::Super { sc, mn, .. }) => {
                prefetch_ahead(sc.wrapping_add(at), NR);
                prefetch_ahead(mn.wrapping_add(at), NR);
            }
            Ptrs::Sixteenths { sc, .. } => prefetch_ahead(sc.wrapping_add(2 * at), 2 * NR),
        }
    }

    /// The scales of half `h` of block `b` of group `g` (`b` 0 for the formats with one block
    /// per group) and its offsets (zero without), for one panel, given its superblock's
    /// factors `sup` ([`Ptrs::superblock`]).
    ///
    /// # Safety
    /// AVX-512 F and F16C must be available; the panel must hold group `g`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn factors(
        self,
        g: usize,
        b: usize,
        h: usize,
        sup: (__m512, __m512),
    ) -> (__m512, __m512) {
        let at = g * NR + 16 * h;
        let f16s = |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let bytes = |p: *const u8| {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
        };
        match self {
            Ptrs::PerGroup(QuadParams::Group { scales, mins, zero }) => {
                let s = f16s(scales.add(at));
                let m = match mins {
                    Some(m) => f16s(m.add(at)),
                    None => _mm512_mul_ps(s, _mm512_set1_ps(-zero)),
                };
                (s, m)
            }
            Ptrs::PerGroup(QuadParams::Super { sc, mn, .. }) => (
                _mm512_mul_ps(bytes(sc.add(at)), sup.0),
                _mm512_mul_ps(bytes(mn.add(at)), sup.1),
            ),
            Ptrs::Sixteenths { sc, .. } => {
                let sc = _mm_loadu_si128(sc.add(2 * g * NR + b * NR + 16 * h) as *const __m128i);
                let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc));
                (_mm512_mul_ps(sc, sup.0), _mm512_setzero_ps())
            }
        }
    }
}

/// Quads `P` and `P + 4` (`P` in `0..4`) of half `h` of the group at `w`, as unsigned bytes
/// for `vpdpbusd` (`P` a constant, so the bit shifts and masks below are immediates).
///
/// # Safety
/// AVX-512 F/BW must be available; `w` must hold one group of `BITS`-bit values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quads<const BITS: usize, const P: usize>(w: *const u8, h: usize) -> (__m512i, __m512i) {
    let p = P;
    let load = |at: usize| _mm512_loadu_si512(w.add(at) as *const _);
    if BITS == 8 {
        let at = (p * 2 + h) * 128;
        return (load(at), load(at + 64));
    }
    let nibble = _mm512_set1_epi8(0xF);
    let v = load(p * 128 + 64 * h);
    let mut lo = _mm512_and_si512(v, nibble);
    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
    const NIBBLES: usize = 4 * 2 * 64;
    if BITS == 5 {
        // Bit q of each byte is quad q's fifth bit.
        let fifth = load(NIBBLES + 64 * h);
        let sixteen = _mm512_set1_epi8(16);
        let low = _mm512_test_epi8_mask(fifth, _mm512_set1_epi8(1 << p));
        let high = _mm512_test_epi8_mask(fifth, _mm512_set1_epi8((16 << p) as i8));
        lo = _mm512_mask_add_epi8(lo, low, lo, sixteen);
        hi = _mm512_mask_add_epi8(hi, high, hi, sixteen);
    }
    if BITS == 6 {
        // Bits 2p..2p + 2 of each byte are quad p's (then quad p + 4's) bits 4-5, moved to
        // bits 4-5 (16-bit shifts by at most 4 bits move no bit across bytes into them).
        let top = _mm512_set1_epi8(0x30);
        let lift = |x: __m512i| {
            let x = match P {
                0 => _mm512_slli_epi16::<4>(x),
                1 => _mm512_slli_epi16::<2>(x),
                2 => x,
                _ => _mm512_srli_epi16::<2>(x),
            };
            _mm512_and_si512(x, top)
        };
        lo = _mm512_or_si512(lo, lift(load(NIBBLES + 128 * h)));
        hi = _mm512_or_si512(hi, lift(load(NIBBLES + 128 * h + 64)));
    }
    (lo, hi)
}

/// Rows `j0..j0 + T` of `acts` times the panel `w` of `BITS`-bit values (parameters `p`) into
/// `out` (`T` rows of [`NR`]).
///
/// # Safety
/// AVX-512 F/BW, VNNI and F16C must be available; `w` must be one panel of `acts.groups`
/// groups with `p` its parameters (per 16 values exactly for 6 bits), `acts` must hold rows
/// `j0..j0 + T` (and their corrections for 8 and 6 bits), `out` `T · NR` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn tile_vnni<const T: usize, const BITS: usize>(
    w: &[u8],
    p: Ptrs,
    acts: &Acts,
    j0: usize,
    out: &mut [f32],
) {
    let (groups, size) = (acts.groups, group_bytes(BITS));
    let zero = zero_point(BITS) != 0;
    // (Known at compile time, so the block loops unroll and the sums stay in registers.)
    let sixteenths = BITS == 6;
    debug_assert!(w.len() == groups * size && out.len() >= T * NR);
    debug_assert!(acts.dx.len() >= (j0 + T) * groups && acts.sums.len() >= (j0 + T) * groups);
    debug_assert!(!zero || acts.correction.len() >= (j0 + T) * 2 * groups);
    debug_assert_eq!(sixteenths, matches!(p, Ptrs::Sixteenths { .. }));
    let offsets = acts.offsets;
    let x = acts.q.as_ptr().add(j0 * groups * GROUP);
    let row = groups * GROUP;
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut off = [[_mm512_setzero_ps(); 2]; T];
    for sb in 0..groups.div_ceil(SUPER) {
        let sup = [p.superblock(sb, 0), p.superblock(sb, 1)];
        for g in sb * SUPER..groups.min(sb * SUPER + SUPER) {
            let wg = w.as_ptr().add(g * size);
            super::x86::prefetch_ahead(wg, size);
            p.prefetch_ahead(g);
            // sums[i][h][s]: activation row i, weight rows 16h..16h + 16, quads 4s..4s + 4.
            let mut sums = [[[_mm512_setzero_si512(); 2]; 2]; T];
            // Quads `p` and `p + 4` of both halves, `p` spelled out as a constant.
            macro_rules! quad {
                ($p:literal) => {
                    for h in 0..2 {
                        let (lo, hi) = quads::<BITS, $p>(wg, h);
                        for (i, sums) in sums.iter_mut().enumerate() {
                            let xq = x.add(i * row + g * GROUP + 4 * $p) as *const i32;
                            let (xl, xh) = (xq.read_unaligned(), xq.add(4).read_unaligned());
                            sums[h][0] = _mm512_dpbusd_epi32(sums[h][0], lo, _mm512_set1_epi32(xl));
                            sums[h][1] = _mm512_dpbusd_epi32(sums[h][1], hi, _mm512_set1_epi32(xh));
                        }
                    }
                };
            }
            quad!(0);
            quad!(1);
            quad!(2);
            quad!(3);
            for (i, sums) in sums.iter_mut().enumerate() {
                if zero {
                    let at = (j0 + i) * 2 * groups + 2 * g;
                    for s in 0..2 {
                        let c = _mm512_set1_epi32(*acts.correction.get_unchecked(at + s));
                        for sums in sums.iter_mut() {
                            sums[s] = _mm512_sub_epi32(sums[s], c);
                        }
                    }
                }
                if !sixteenths {
                    // One block per group: the two halves' quads together (exact in i32).
                    for sums in sums.iter_mut() {
                        sums[0] = _mm512_add_epi32(sums[0], sums[1]);
                    }
                }
            }
            for h in 0..2 {
                for b in 0..if sixteenths { 2 } else { 1 } {
                    let (s, m) = p.factors(g, b, h, sup[h]);
                    for (i, sums) in sums.iter().enumerate() {
                        let at = (j0 + i) * groups + g;
                        let c = _mm512_mul_ps(s, _mm512_set1_ps(*acts.dx.get_unchecked(at)));
                        let sums = _mm512_cvtepi32_ps(sums[h][b]);
                        acc[i][h] = _mm512_fmadd_ps(sums, c, acc[i][h]);
                        if offsets {
                            let sum = _mm512_set1_ps(*acts.sums.get_unchecked(at));
                            off[i][h] = _mm512_fmadd_ps(m, sum, off[i][h]);
                        }
                    }
                }
            }
        }
    }
    for i in 0..T {
        for h in 0..2 {
            let v = _mm512_add_ps(acc[i][h], off[i][h]);
            _mm512_storeu_ps(out.as_mut_ptr().add(i * NR + 16 * h), v);
        }
    }
}
