//! The AVX-512F GEMM: `out[j, r] = Σ_c x[j, c] · W[r, c]` for more than
//! [`crate::GEMV_MAX_ROWS`] activation rows, in f32, over any weight format.
//!
//! Packed and register-blocked, in the usual three levels:
//! - activations are packed once per call into tiles of [`MR`] rows, `[K][MR]` each;
//! - each rayon task owns a block of weight rows; per block of [`KC`] columns of `K` it widens
//!   its rows exactly to f32 (bf16, f16, e4m3 times its block scale, 8/4-bit groups: each
//!   format's [`WeightElem::widen_row`]), 16 rows at a time, and transposes them in registers
//!   into panels of [`NR`] rows laid out `[KC][NR]`, which stay in L2;
//! - activations go in blocks of [`MC`] rows, so what every task re-reads stays cache-sized;
//! - the micro-kernel keeps an `MR x NR` f32 tile in 24 of the 32 vector registers and per
//!   column broadcasts one activation against two 16-lane weight vectors (two FMAs per row).
//!
//! The `gemm` crate (the fallback on other CPUs) runs its AVX2 micro-kernels on these shapes
//! (256-bit FMAs); two 512-bit FMAs per cycle double the arithmetic per instruction.
//!
//! As in [`super::x86`], every `#[target_feature]` function is private and reached only
//! through a safe entry point taking the [`Avx512F`] proof token, which only
//! [`Avx512F::detect`] makes.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::x86::Avx2FmaF16c;
use super::{BlockScales, OutPtr, WeightElem};
use crate::Isa;

/// Proof that the CPU runs AVX-512 F and BW code (and AVX2, FMA and F16C), with what detection
/// found of the VBMI and VNNI extensions. Made only by [`Avx512F::detect`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx512F {
    below: Avx2FmaF16c,
    vbmi: bool,
    vnni: bool,
}

impl Avx512F {
    /// Run-time detection on top of the proven AVX2, FMA and F16C.
    pub(crate) fn detect(below: Avx2FmaF16c) -> Option<Avx512F> {
        let ok = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
        let vbmi = is_x86_feature_detected!("avx512vbmi");
        let vnni = is_x86_feature_detected!("avx512vnni");
        ok.then_some(Avx512F { below, vbmi, vnni })
    }

    /// The AVX2 + FMA + F16C part of the proof.
    pub(crate) fn avx2_fma_f16c(self) -> Avx2FmaF16c {
        self.below
    }

    /// The AVX512-VBMI proof, when detection found the extension.
    pub(crate) fn vbmi(self) -> Option<Avx512Vbmi> {
        self.vbmi.then_some(Avx512Vbmi(self))
    }

    /// The AVX512-VNNI proof, when detection found the extension.
    pub(crate) fn vnni(self) -> Option<Avx512Vnni> {
        self.vnni.then_some(Avx512Vnni(self))
    }
}

/// Proof that the CPU runs AVX512-VBMI (byte permutes across a whole vector, `vpermi2b`) on
/// top of AVX-512 F/BW. Made only by [`Avx512F::vbmi`], from what detection found.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx512Vbmi(Avx512F);

/// Proof that the CPU runs AVX512-VNNI (`vpdpbusd`: four u8 x i8 products summed into each
/// i32 lane) on top of AVX-512 F/BW. Made only by [`Avx512F::vnni`], from what detection found.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Avx512Vnni(Avx512F);

impl Avx512Vnni {
    /// The AVX-512 F/BW part of the proof.
    pub(crate) fn avx512f(self) -> Avx512F {
        self.0
    }
}

/// Activation rows per micro-kernel tile.
pub(crate) const MR: usize = 12;
/// 16-lane vectors per panel.
pub(crate) const NV: usize = 2;
/// Weight rows per panel.
pub(crate) const NR: usize = 16 * NV;
/// Columns of `K` per cache block: a tile's activations (`KC · MR · 4` bytes, 12 KiB) stay in
/// L1 and a task's panels (`KC · 4` bytes per weight row) in L2. A multiple of every block
/// width the formats scale by (FP8's 128, the 8/4-bit groups' 32), so a block's scales are
/// whole.
const KC: usize = 256;
/// Activation rows per block ([`gemm()`]): 64 tiles.
const MC: usize = 64 * MR;
/// Most weight rows per rayon task.
const MAX_TASK_ROWS: usize = 256;

thread_local! {
    /// Each thread's panels and 16 widened row segments, reused across calls.
    static PANELS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `m` activation rows `xs` `[m, k]` as tiles of [`MR`] rows (the last padded with zero rows),
/// each `[k][MR]`.
fn pack_activations(xs: &[f32], k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.div_ceil(MR) * k * MR];
    out.par_chunks_mut(k * MR)
        .enumerate()
        .for_each(|(t, tile)| {
            for i in 0..MR.min(m - t * MR) {
                for (c, &v) in xs[(t * MR + i) * k..][..k].iter().enumerate() {
                    tile[c * MR + i] = v;
                }
            }
        });
    out
}

/// [`super::gemm::gemm`] on AVX-512F, into its zeroed `[m, N]` output `out` (`N` and `m`
/// non-zero, `xs` `m` rows of `k`).
pub(crate) fn gemm<W: WeightElem>(
    t: Avx512F,
    w: &[W],
    k: usize,
    xs: &[f32],
    scales: Option<&BlockScales>,
    out: &mut [f32],
) {
    if let Some(s) = scales {
        assert_eq!(KC % s.cols, 0, "gemm: scale blocks must divide {KC}");
    }
    in_row_blocks(t, w, k, xs, scales, out, micro_kernel);
}

/// [`gemm_block`] over blocks of [`MC`] activation rows: every task reads all of a block's
/// packed activations, so a block must stay cache-sized however long the input (a 32K-token
/// cache expanded at once is 32K rows).
fn in_row_blocks<W: WeightElem>(
    t: Avx512F,
    w: &[W],
    k: usize,
    xs: &[f32],
    scales: Option<&BlockScales>,
    out: &mut [f32],
    micro: MicroKernel,
) {
    let n = out.len() / (xs.len() / k);
    for (xs, out) in xs.chunks(MC * k).zip(out.chunks_mut(MC * n)) {
        gemm_block(t, w, k, n, xs, xs.len() / k, scales, out, micro);
    }
}

/// A micro-kernel [`gemm_block`] runs on each tile: [`micro_kernel`]'s contract, over the
/// 32-bit values the packing put in the tile and the panel (f32, or pairs of bf16).
pub(crate) type MicroKernel =
    unsafe fn(*const f32, *const f32, usize, *mut f32, usize, usize, usize, bool);

/// [`gemm()`] with another micro-kernel over 32-bit weight elements `w` (no block scales):
/// the packing only moves 32-bit values, so `W::widen_row` may copy bit patterns (bf16 pairs)
/// that `micro` reads as it wants.
///
/// # Safety
/// The CPU must run `micro`'s target features (beyond the AVX-512F the token proves).
pub(crate) unsafe fn gemm_with<W: WeightElem>(
    t: Avx512F,
    w: &[W],
    k: usize,
    xs: &[f32],
    out: &mut [f32],
    micro: MicroKernel,
) {
    in_row_blocks(t, w, k, xs, None, out, micro);
}

/// [`gemm()`] of one block of at most [`MC`] activation rows into its rows `out` `[m, n]`.
#[allow(clippy::too_many_arguments)]
fn gemm_block<W: WeightElem>(
    t: Avx512F,
    w: &[W],
    k: usize,
    n: usize,
    xs: &[f32],
    m: usize,
    scales: Option<&BlockScales>,
    out: &mut [f32],
    micro: MicroKernel,
) {
    let kw = k / W::VALUES;
    let isa = Isa::avx512f_path(t);
    let xp = pack_activations(xs, k, m);
    // Rows per task: multiples of NR, at least two tasks per thread when the matrix allows.
    let balance = n.div_ceil(2 * rayon::current_num_threads());
    let rows = balance.next_multiple_of(NR).min(MAX_TASK_ROWS);
    let dst = OutPtr(out.as_mut_ptr());
    w.par_chunks(rows * kw)
        .enumerate()
        .for_each(|(task, block)| {
            let r0 = task * rows;
            let nb = block.len() / kw;
            let panels = nb.div_ceil(NR);
            let mut row_scales = Vec::new();
            PANELS.with_borrow_mut(|(wp, rows16)| {
                wp.resize(panels * KC * NR, 0.0);
                rows16.resize(16 * KC, 0.0);
                for kb in (0..k).step_by(KC) {
                    let kc = KC.min(k - kb);
                    // Widen this K block of every row, 16 rows at a time, then transpose them into
                    // their panel's lanes: [panel][c][lane]. Lanes past the last row are zero.
                    for r16 in (0..nb).step_by(16) {
                        for (i, row) in rows16.chunks_exact_mut(KC).enumerate() {
                            let r = r16 + i;
                            let row = &mut row[..kc];
                            if r >= nb {
                                row.fill(0.0);
                                continue;
                            }
                            let src = &block[r * kw + kb / W::VALUES..][..kc.div_ceil(W::VALUES)];
                            match scales {
                                None => W::widen_row(src, row),
                                Some(s) => {
                                    let all = s.row(r0 + r, k, &mut row_scales);
                                    W::widen_row_scaled(isa, src, row, &all[kb / s.cols..], s.cols)
                                }
                            }
                        }
                        let panel = &mut wp[(r16 / NR) * KC * NR + r16 % NR..];
                        // SAFETY: the token proves AVX-512F; `rows16` holds 16 rows of `KC` values
                        // and `panel` reaches `(KC - 1) · NR + 16` values past its start.
                        unsafe { transpose_into_panel(rows16, kc, panel) };
                    }
                    for t in 0..m.div_ceil(MR) {
                        let tile = &xp[(t * k + kb) * MR..][..kc * MR];
                        let tile_rows = MR.min(m - t * MR);
                        for (q, panel) in wp.chunks_exact(KC * NR).enumerate() {
                            let lanes = NR.min(nb - q * NR);
                            // SAFETY: the token proves AVX-512F (and `gemm_with`'s caller the
                            // features of any other `micro`); `tile` holds `kc · MR` values and
                            // `panel` `KC · NR ≥ kc · NR`; the destination rows `t·MR..+tile_rows`
                            // and columns `r0 + q·NR..+lanes` lie inside the `[m, n]` output, and
                            // only this task writes those columns.
                            unsafe {
                                micro(
                                    tile.as_ptr(),
                                    panel.as_ptr(),
                                    kc,
                                    dst.get().add(t * MR * n + r0 + q * NR),
                                    n,
                                    tile_rows,
                                    lanes,
                                    kb > 0,
                                );
                            }
                        }
                    }
                }
            });
        });
}

/// Sixteen rows `rows16` (`[16][KC]`) transposed into 16 lanes of a panel: `panel[c · NR +
/// i] = rows16[i][c]` for `c < kc` (rounded up to whole 16-column blocks, which stay inside
/// the rows' `KC` values; columns past `kc` are never read by the micro-kernel).
#[target_feature(enable = "avx512f")]
unsafe fn transpose_into_panel(rows16: &[f32], kc: usize, panel: &mut [f32]) {
    debug_assert!(rows16.len() >= 16 * KC && panel.len() >= (KC - 1) * NR + 16);
    let src = rows16.as_ptr();
    let dst = panel.as_mut_ptr();
    for c0 in (0..kc).step_by(16) {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * KC + c0)));
        for (j, col) in transpose16(r).into_iter().enumerate() {
            _mm512_storeu_ps(dst.add((c0 + j) * NR), col);
        }
    }
}

/// A 16 x 16 f32 transpose in registers: interleave pairs of rows (32-bit, then 64-bit
/// elements), which leaves each 128-bit lane holding one column of four rows, then gather the
/// four lanes of each column with two rounds of 128-bit shuffles.
#[inline(always)]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2p], t[2p + 1]: rows 2p and 2p + 1 interleaved (low and high pairs of each lane).
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + j]: in every 128-bit lane L, column 4L + j of rows 4g..4g + 4.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, j) = (i / 4, i % 4);
        let a = _mm512_castps_pd(t[4 * g + j / 2]);
        let b = _mm512_castps_pd(t[4 * g + 2 + j / 2]);
        _mm512_castpd_ps(if j % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // v[8h + 4o + j]: lanes o and o + 2 of u[8h + j] then of u[8h + 4 + j].
    let v: [__m512; 16] = std::array::from_fn(|i| {
        let (h, o, j) = (i / 8, (i / 4) % 2, i % 4);
        let (a, b) = (u[8 * h + j], u[8 * h + 4 + j]);
        if o == 0 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    });
    // Column c: its four lanes, rows 0-3, 4-7, 8-11, 12-15.
    std::array::from_fn(|c| {
        let (a, b) = (v[c % 8], v[8 + c % 8]);
        if c < 8 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xdd>(a, b)
        }
    })
}

/// One `MR x NR` tile over `kc` columns: `c[i][l] (+)= Σ_p x[p][i] · w[p][l]`, storing rows
/// `..rows` and lanes `..lanes`; with `accumulate` the tile is added to what `c` holds (the
/// previous K blocks).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_kernel(
    x: *const f32,
    w: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for p in 0..kc {
        let wv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(w.add(p * NR + 16 * v)));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(*x.add(p * MR + i));
            for v in 0..NV {
                a[v] = _mm512_fmadd_ps(xv, wv[v], a[v]);
            }
        }
    }
    store_tile(&acc, c, ldc, rows, lanes, accumulate);
}

/// A micro-kernel's finished `MR x NR` tile into `c` (row stride `ldc`): rows `..rows` and
/// lanes `..lanes`, added to what `c` holds when `accumulate`.
///
/// # Safety
/// AVX-512F must be available (the callers are `#[target_feature]` micro-kernels) and `c`
/// must hold those rows and lanes.
#[inline(always)]
pub(crate) unsafe fn store_tile(
    acc: &[[__m512; NV]; MR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: usize,
    accumulate: bool,
) {
    let masks: [__mmask16; NV] = std::array::from_fn(|v| {
        let n = lanes.saturating_sub(16 * v).min(16);
        ((1u32 << n) - 1) as __mmask16
    });
    for (i, a) in acc.iter().enumerate().take(rows) {
        for (h, (&v, &mask)) in a.iter().zip(&masks).enumerate() {
            let at = c.add(i * ldc + 16 * h);
            let v = if accumulate {
                _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at))
            } else {
                v
            };
            _mm512_mask_storeu_ps(at, mask, v);
        }
    }
}
