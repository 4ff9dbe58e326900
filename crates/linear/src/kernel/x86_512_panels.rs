//! The AVX512-VNNI product of 4-bit matrices stored in panels ([`super::panels`]) with 8-bit
//! activations, for any number of activation rows: decode steps, batched decode and prefill
//! alike, so a row's result never depends on how many rows came with it.
//!
//! The arithmetic is [`super::act8`]'s: each group of 32 activations rounded to i8 with its own
//! `dx` ([`q8_row_natural`]), the integer sums exact, then per group and weight row
//! `acc += Σ q · xq · (s · dx)` and, for formats with offsets, `off += m · dx · Σ xq` (the
//! offsets over the rounded activations, `Q8Row::sums`), the result `acc + off`.
//!
//! Per group and half panel (16 weight rows): four 64-byte loads, split into low and high
//! nibbles (quads `0..4` and `4..8`), eight `vpdpbusd` per activation row against that row's
//! quads broadcast to every lane, then one conversion, one product and one FMA per activation
//! row with the 16 rows' scales (f16, or K-quant bytes times the superblock's `d`, formed once
//! per group for all activation rows). Rows go in tiles of four activation rows, so each
//! unpacked weight vector serves four `vpdpbusd`, or one at a time; the per-row instruction
//! sequence is the same either way.

use std::arch::x86_64::*;

use half::f16;
use rayon::prelude::*;

use super::act8::{q8_row_natural, Params, GROUP, SUPER};
use super::panels::{panels, GROUP_BYTES, NR};
use super::x86_512::Avx512Vnni;

/// Activation rows per tile.
const MR: usize = 4;

/// `xs` (`m` rows of `K` f32) times the `[n, K]` 4-bit matrix whose panels are `w`, with the
/// parameters `params` in panel order (every field `[panels, per, NR]`): `[m, n]` row-major.
///
/// # Panics
/// If `xs` is not `m` rows of `K` or `w` / `params` do not hold `n` rows of `K` values.
pub(crate) fn matmul(
    _: Avx512Vnni,
    w: &[u8],
    params: Params,
    n: usize,
    k: usize,
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    assert_eq!(xs.len(), m * k, "panel product: m rows of K");
    let groups = k.div_ceil(GROUP);
    let supers = groups.div_ceil(SUPER);
    let count = panels(n);
    assert!(
        w.len() >= count * groups * GROUP_BYTES,
        "panel product: the panels' values"
    );
    let ptrs = Ptrs::of(params, count * groups * NR, count * supers * NR);
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
    let acts = Acts {
        groups,
        q: &q,
        dx: &dx,
        sums: &sums,
    };
    // `[panels, m, NR]`, then scattered to `[m, n]`.
    let mut blocks = vec![0f32; count * m * NR];
    blocks
        .par_chunks_mut(m * NR)
        .enumerate()
        .for_each(|(b, out)| {
            // SAFETY: `Ptrs::of` checked that the parameters hold `count` panels.
            let p = unsafe { ptrs.panel(b, groups, supers) };
            let w = &w[b * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
            let mut j0 = 0;
            while j0 < m {
                let tile = if m - j0 >= MR { MR } else { 1 };
                let out = &mut out[j0 * NR..(j0 + tile) * NR];
                // SAFETY: the token proves AVX-512 F/BW, VNNI and F16C; `w` is one panel of
                // `groups` groups, `p` its parameters, `acts` holds rows `j0..j0 + tile`.
                unsafe {
                    if tile == MR {
                        tile_vnni::<MR>(w, p, &acts, j0, out)
                    } else {
                        tile_vnni::<1>(w, p, &acts, j0, out)
                    }
                }
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

/// The rounded activation rows: `q` `[m, groups · 32]`, `dx` and `sums` (`dx · Σ xq`)
/// `[m, groups]`.
struct Acts<'a> {
    groups: usize,
    q: &'a [i8],
    dx: &'a [f32],
    sums: &'a [f32],
}

/// The parameters' pointers, checked to hold a number of panels.
#[derive(Clone, Copy)]
struct Ptrs<'a>(Params<'a>);

impl<'a> Ptrs<'a> {
    /// `params` checked to hold `per_group` group fields and `per_super` superblock fields.
    fn of(params: Params<'a>, per_group: usize, per_super: usize) -> Ptrs<'a> {
        match params {
            Params::Group { scales, mins, .. } => {
                assert!(
                    scales.len() >= per_group,
                    "panel product: one scale per group"
                );
                assert!(
                    mins.is_empty() || mins.len() >= per_group,
                    "panel product: offsets"
                );
            }
            Params::Super { sc, mn, d, dmin } => {
                assert!(sc.len() >= per_group && mn.len() >= per_group);
                assert!(d.len() >= per_super && dmin.len() >= per_super);
            }
        }
        Ptrs(params)
    }

    /// Panel `b`'s parameters.
    ///
    /// # Safety
    /// `b` must be one of the panels [`Ptrs::of`] checked.
    unsafe fn panel(self, b: usize, groups: usize, supers: usize) -> PanelPtrs {
        let (g, s) = (b * groups * NR, b * supers * NR);
        match self.0 {
            Params::Group { scales, mins, zero } => PanelPtrs::Group {
                scales: scales.as_ptr().add(g),
                mins: (!mins.is_empty()).then(|| mins.as_ptr().add(g)),
                zero: zero as f32,
            },
            Params::Super { sc, mn, d, dmin } => PanelPtrs::Super {
                sc: sc.as_ptr().add(g),
                mn: mn.as_ptr().add(g),
                d: d.as_ptr().add(s),
                dmin: dmin.as_ptr().add(s),
            },
        }
    }
}

/// One panel's parameters: `[groups, NR]` (per group) and `[supers, NR]` (per superblock).
#[derive(Clone, Copy)]
enum PanelPtrs {
    /// f16 scales, f16 offsets or a zero point (`−zero · s`; 0: no offsets).
    Group {
        scales: *const f16,
        mins: Option<*const f16>,
        zero: f32,
    },
    /// K-quant bytes `sc`, `mn` and f16 `d`, `dmin`: `s = d · sc`, offset `−dmin · mn`.
    Super {
        sc: *const u8,
        mn: *const u8,
        d: *const f16,
        dmin: *const f16,
    },
}

impl PanelPtrs {
    fn has_offsets(self) -> bool {
        match self {
            PanelPtrs::Group { mins, zero, .. } => mins.is_some() || zero != 0.0,
            PanelPtrs::Super { .. } => true,
        }
    }

    /// The scales and offsets of half `h` of group `g` (offsets zero without).
    ///
    /// # Safety
    /// AVX-512 F and F16C must be available; the panel must hold group `g`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn factors(self, g: usize, h: usize) -> (__m512, __m512) {
        let at = g * NR + 16 * h;
        let f16s = |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
        let bytes = |p: *const u8| {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)))
        };
        match self {
            PanelPtrs::Group { scales, mins, zero } => {
                let s = f16s(scales.add(at));
                let m = match mins {
                    Some(m) => f16s(m.add(at)),
                    None => _mm512_mul_ps(s, _mm512_set1_ps(-zero)),
                };
                (s, m)
            }
            PanelPtrs::Super { sc, mn, d, dmin } => {
                let sup = g / SUPER * NR + 16 * h;
                let s = _mm512_mul_ps(bytes(sc.add(at)), f16s(d.add(sup)));
                let m = _mm512_mul_ps(bytes(mn.add(at)), f16s(dmin.add(sup)));
                (s, _mm512_sub_ps(_mm512_setzero_ps(), m))
            }
        }
    }
}

/// Rows `j0..j0 + T` of `acts` times the panel `w` (parameters `p`) into `out` (`T` rows of
/// [`NR`]).
///
/// # Safety
/// AVX-512 F/BW, VNNI and F16C must be available; `w` must be one panel of `acts.groups`
/// groups with `p` its parameters, `acts` must hold rows `j0..j0 + T`, `out` `T · NR` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn tile_vnni<const T: usize>(
    w: &[u8],
    p: PanelPtrs,
    acts: &Acts,
    j0: usize,
    out: &mut [f32],
) {
    let groups = acts.groups;
    debug_assert!(w.len() == groups * GROUP_BYTES && out.len() >= T * NR);
    debug_assert!(acts.dx.len() >= (j0 + T) * groups && acts.sums.len() >= (j0 + T) * groups);
    let offsets = p.has_offsets();
    let nibble = _mm512_set1_epi8(0xF);
    let x = acts.q.as_ptr().add(j0 * groups * GROUP);
    let row = groups * GROUP;
    let mut acc = [[_mm512_setzero_ps(); 2]; T];
    let mut off = [[_mm512_setzero_ps(); 2]; T];
    for g in 0..groups {
        // sums[i][h]: activation row i, weight rows 16h..16h + 16.
        let mut sums = [[_mm512_setzero_si512(); 2]; T];
        for quad in 0..4 {
            for (h, at) in [0, 64].into_iter().enumerate() {
                let v = _mm512_loadu_si512(w.as_ptr().add((g * 4 + quad) * 128 + at) as *const _);
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
                for (i, sums) in sums.iter_mut().enumerate() {
                    let xq = x.add(i * row + g * GROUP + 4 * quad) as *const i32;
                    let (xl, xh) = (xq.read_unaligned(), xq.add(4).read_unaligned());
                    sums[h] = _mm512_dpbusd_epi32(sums[h], lo, _mm512_set1_epi32(xl));
                    sums[h] = _mm512_dpbusd_epi32(sums[h], hi, _mm512_set1_epi32(xh));
                }
            }
        }
        for h in 0..2 {
            let (s, m) = p.factors(g, h);
            for (i, sums) in sums.iter().enumerate() {
                let at = (j0 + i) * groups + g;
                let c = _mm512_mul_ps(s, _mm512_set1_ps(*acts.dx.get_unchecked(at)));
                acc[i][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[h]), c, acc[i][h]);
                if offsets {
                    let sum = _mm512_set1_ps(*acts.sums.get_unchecked(at));
                    off[i][h] = _mm512_fmadd_ps(m, sum, off[i][h]);
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
