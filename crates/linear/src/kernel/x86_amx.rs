//! AMX bf16 tiles for the GEMM regime of bf16 weights against activations rounded to bf16
//! (Intel Sapphire Rapids and later).
//!
//! A tile register holds 16 rows of 64 bytes. `tdpbf16ps C, A, B` reads every 32-bit element
//! of `A` and `B` as a pair of bf16 values and accumulates, for each row `i` of `A` and each
//! 32-bit column `j` of `B`,
//!
//! `C[i][j] += Σ_p A[i].pair(p) · B[p].pair(j)`, with `x.pair(p) · y.pair(q) = x[2p]·y[2q] +
//! x[2p+1]·y[2q+1]`,
//!
//! in f32 (products exact, each accumulation rounded to nearest even, bf16 subnormals read as
//! zero and f32 subnormal results flushed). One instruction is a `16 × 16 × 32` product:
//! 16,384 flops against `vdpbf16ps`'s 64.
//!
//! The product here is `out[j, r] = Σ_c x[j, c] · W[r, c]`. The weights are `A` read as
//! stored: 16 weight rows, 32 values of `K` each, one load with the row stride, no packing.
//! The activations are `B`, packed once per call into the pair-interleaved ("VNNI") layout:
//! per block of 16 activation rows, line `p` holds pair `p` of each of the 16 rows. So `C` is
//! the transposed output tile (weight rows by activation rows) and is transposed into `out`
//! once per tile, after the whole of `K`.
//!
//! Register plan: four accumulators `C0..C3` (tiles 0-3) for two 16-row weight tiles `A0, A1`
//! (tiles 4, 5) by two 16-row activation blocks `B0, B1` (tiles 6, 7): per 32 values of `K`
//! four loads and four `tdpbf16ps`.
//!
//! The driver ([`gemm_on`]) is generic over [`Tiles`], so that the packing, the register plan,
//! the edges and the transposition run against `tests::TileModel` (the instructions'
//! documented semantics in plain Rust) on every machine; only [`Amx`], a few lines of inline
//! assembly per instruction, needs the hardware.
//!
//! Linux hands out the tile data state (8 KiB of registers per thread) only on request:
//! [`AmxBf16::detect`] makes it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once
//! per process, every thread) and checks that it was granted; without it the first tile
//! instruction would raise `SIGILL`.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};

use half::bf16;
use rayon::prelude::*;

use super::x86_bf16::Avx512Bf16;
use super::OutPtr;

/// Proof that the CPU has AMX-TILE and AMX-BF16 (on top of AVX512-BF16) and that the OS
/// granted this process the tile data state. Made only by [`AmxBf16::detect`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AmxBf16(Avx512Bf16);

impl AmxBf16 {
    /// Run-time detection on top of the proven AVX512-BF16: the CPU's feature bits, then the
    /// OS's permission (requested here).
    pub(crate) fn detect(below: Avx512Bf16) -> Option<AmxBf16> {
        (cpu_has_amx_bf16() && os_grants_tile_data()).then_some(AmxBf16(below))
    }

    /// The AVX512-BF16 part of the proof.
    pub(crate) fn avx512_bf16(self) -> Avx512Bf16 {
        self.0
    }
}

/// CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE. (std's
/// `is_x86_feature_detected!` knows them only on nightly.)
pub(crate) fn cpu_has_amx_bf16() -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (XSAVE feature 18) and reads back whether this
/// process holds it. The kernel refuses when it did not enable the feature itself.
#[cfg(target_os = "linux")]
pub(crate) fn os_grants_tile_data() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut granted: u64 = 0;
    // SAFETY: `arch_prctl` with these codes takes a feature number, or writes one `u64`
    // through the pointer passed; it touches no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
            && libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut granted as *mut u64,
            ) == 0
            && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// Elsewhere the tiles stay unused (no permission protocol is implemented for other OSes).
#[cfg(not(target_os = "linux"))]
pub(crate) fn os_grants_tile_data() -> bool {
    false
}

/// Bytes of one tile row, and rows per tile.
const ROW_BYTES: usize = 64;
const TILE_ROWS: usize = 16;
/// bf16 values of `K` per tile step (one tile row).
const K_STEP: usize = ROW_BYTES / 2;

/// The tile operations the driver issues under the register plan (module docs): accumulator
/// `c` in `0..4` is `A(c / 2) · B(c % 2)`. Implemented by [`Amx`] and, in the tests, by a model
/// of the registers in memory.
pub(crate) trait Tiles {
    /// `C(c) = 0`.
    fn zero(&mut self, c: usize);
    /// Loads weight tile `A(i)`: 16 rows of 64 bytes, row `r` at `base + r · stride`.
    ///
    /// # Safety
    /// Those bytes must be readable.
    unsafe fn load_a(&mut self, i: usize, base: *const u8, stride: usize);
    /// Loads activation tile `B(i)`, as [`Tiles::load_a`].
    ///
    /// # Safety
    /// As [`Tiles::load_a`].
    unsafe fn load_b(&mut self, i: usize, base: *const u8, stride: usize);
    /// `C(c) += A(c / 2) · B(c % 2)` (`tdpbf16ps`).
    fn dot(&mut self, c: usize);
    /// Stores `C(c)`: 16 rows of 16 f32, row `r` at `base + r · stride`.
    ///
    /// # Safety
    /// Those bytes must be writable.
    unsafe fn store(&mut self, c: usize, base: *mut u8, stride: usize);
}

/// The 64-byte operand of `ldtilecfg` (palette 1): every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> TileConfig {
        let mut b = [0u8; 64];
        b[0] = 1; // palette 1; byte 1, the restart row, stays 0
        for t in 0..8 {
            b[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW_BYTES as u16).to_le_bytes());
            b[48 + t] = TILE_ROWS as u8;
        }
        TileConfig(b)
    }
}

/// This thread's tile registers, configured: made by [`Amx::configure`], released on drop.
pub(crate) struct Amx(
    /// Not `Send`: the configuration belongs to the thread that loaded it.
    std::marker::PhantomData<*const ()>,
);

impl Amx {
    /// Loads the tile configuration in this thread.
    pub(crate) fn configure(_: AmxBf16) -> Amx {
        let config = TileConfig::full();
        // SAFETY: the token proves AMX and the OS's permission; the operand is 64 readable
        // bytes that form a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Amx(std::marker::PhantomData)
    }
}

impl Drop for Amx {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure`; releasing returns them to init state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

// The tile register is part of each instruction, so the methods below select among fixed
// instructions with a `match` on the register's index (folded away where it is a constant).

/// `tilezero tmm$n`.
macro_rules! tilezero {
    ($n:literal) => {
        asm!(concat!("tilezero tmm", $n), options(nostack, nomem))
    };
}

/// `tilestored [base + stride*1], tmm$n`: 16 rows of 64 bytes, `stride` apart.
macro_rules! tilestored {
    ($n:literal, $base:expr, $stride:expr) => {
        asm!(concat!("tilestored [{0} + {1}*1], tmm", $n),
            in(reg) $base, in(reg) $stride, options(nostack))
    };
}

/// `tileloadd tmm$n, [base + stride*1]`: 16 rows of 64 bytes, `stride` apart.
macro_rules! tileloadd {
    ($n:literal, $base:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $n, ", [{0} + {1}*1]"),
            in(reg) $base, in(reg) $stride, options(nostack, readonly))
    };
}

impl Tiles for Amx {
    #[inline(always)]
    fn zero(&mut self, c: usize) {
        // SAFETY: tiles are configured (`Amx` exists only after `ldtilecfg`).
        unsafe {
            match c {
                0 => tilezero!(0),
                1 => tilezero!(1),
                2 => tilezero!(2),
                3 => tilezero!(3),
                _ => unreachable!("tile register out of the plan"),
            }
        }
    }

    #[inline(always)]
    unsafe fn load_a(&mut self, i: usize, base: *const u8, stride: usize) {
        // SAFETY: the caller guarantees the 16 rows are readable.
        unsafe {
            match i {
                0 => tileloadd!(4, base, stride),
                1 => tileloadd!(5, base, stride),
                _ => unreachable!("tile register out of the plan"),
            }
        }
    }

    #[inline(always)]
    unsafe fn load_b(&mut self, i: usize, base: *const u8, stride: usize) {
        // SAFETY: as `load_a`.
        unsafe {
            match i {
                0 => tileloadd!(6, base, stride),
                1 => tileloadd!(7, base, stride),
                _ => unreachable!("tile register out of the plan"),
            }
        }
    }

    #[inline(always)]
    fn dot(&mut self, c: usize) {
        // Intel operand order: destination, rows (`A`), columns (`B`).
        // SAFETY: tiles are configured; registers per the plan.
        unsafe {
            match c {
                0 => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                1 => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                2 => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                3 => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
                _ => unreachable!("tile register out of the plan"),
            }
        }
    }

    #[inline(always)]
    unsafe fn store(&mut self, c: usize, base: *mut u8, stride: usize) {
        // SAFETY: the caller guarantees the 16 rows are writable.
        unsafe {
            match c {
                0 => tilestored!(0, base, stride),
                1 => tilestored!(1, base, stride),
                2 => tilestored!(2, base, stride),
                3 => tilestored!(3, base, stride),
                _ => unreachable!("tile register out of the plan"),
            }
        }
    }
}

/// `[N, K]` bf16 weights `w` (raw bits) times `m` activation rows `xs` `[m, K]` rounded to
/// bf16: `[m, N]` row-major, on AMX. `None` unless `K` is a positive multiple of 32 (a tile
/// row): the weights are loaded as stored, so a partial last step would read past a row.
pub(crate) fn gemm(t: AmxBf16, w: &[u16], k: usize, xs: &[f32], m: usize) -> Option<Vec<f32>> {
    takes(k).then(|| gemm_on(|| Amx::configure(t), w, k, xs, m))
}

/// Whether [`gemm`] takes rows of `k` values: a positive multiple of 32.
pub(crate) fn takes(k: usize) -> bool {
    k > 0 && k.is_multiple_of(K_STEP)
}

/// One 64-byte line of packed activations: pair `p` of 16 activation rows.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// The driver over any [`Tiles`] (`tiles` makes one per rayon task, in the task's thread).
/// `K` must be a positive multiple of 32.
pub(crate) fn gemm_on<T: Tiles>(
    tiles: impl Fn() -> T + Sync,
    w: &[u16],
    k: usize,
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    assert!(
        k > 0 && k.is_multiple_of(K_STEP),
        "gemm_on: K must be a multiple of 32"
    );
    assert_eq!(xs.len(), m * k, "gemm_on: xs must hold m rows of K");
    let n = w.len() / k;
    let mut out = vec![0f32; m * n];
    if n == 0 || m == 0 {
        return out;
    }
    let pairs = k / 2;
    // Activations in the pair-interleaved layout, rounded to bf16 (nearest even); rows past
    // `m` in the last block are zeros.
    let blocks = m.div_ceil(TILE_ROWS);
    let mut packed = vec![Line([0; 16]); blocks * pairs];
    packed
        .par_chunks_mut(pairs)
        .enumerate()
        .for_each(|(b, lines)| {
            for jj in 0..TILE_ROWS.min(m - b * TILE_ROWS) {
                let row = &xs[(b * TILE_ROWS + jj) * k..][..k];
                for (line, pair) in lines.iter_mut().zip(row.chunks_exact(2)) {
                    let bits = |v: f32| bf16::from_f32(v).to_bits() as u32;
                    line.0[jj] = bits(pair[0]) | bits(pair[1]) << 16;
                }
            }
        });
    // Weight rows per task: a multiple of two tiles.
    let group = 2 * TILE_ROWS;
    let rows_per_task = super::rows_per_task(n, 2 * k).next_multiple_of(group);
    let dst = OutPtr(out.as_mut_ptr());
    w.par_chunks(rows_per_task * k)
        .enumerate()
        .for_each(|(task, rows)| {
            let mut tiles = tiles();
            let mut padded = Vec::new();
            let mut acc = [[0f32; TILE_ROWS * TILE_ROWS]; 4];
            for (g, weights) in rows.chunks(group * k).enumerate() {
                let valid = weights.len() / k;
                // A short last group is copied into zeros, so both tiles load 16 whole rows.
                let weights = if valid < group {
                    padded.clear();
                    padded.extend_from_slice(weights);
                    padded.resize(group * k, 0);
                    &padded[..]
                } else {
                    weights
                };
                for b in (0..blocks).step_by(2) {
                    let two = b + 1 < blocks;
                    let lines = |i: usize| &packed[(b + i) * pairs..(b + i + 1) * pairs];
                    let cs: &[usize] = if two { &[0, 1, 2, 3] } else { &[0, 2] };
                    for &c in cs {
                        tiles.zero(c);
                    }
                    for s in 0..k / K_STEP {
                        // SAFETY: each `A` tile is 16 whole rows of `weights` (`group` rows
                        // of `k`) from value `s · 32`, 64 bytes each; each `B` tile is lines
                        // `16 s .. 16 s + 16` of a block of `k / 2` lines.
                        unsafe {
                            for i in 0..2 {
                                let a = weights[i * TILE_ROWS * k + s * K_STEP..].as_ptr();
                                tiles.load_a(i, a.cast(), 2 * k);
                            }
                            for i in 0..1 + two as usize {
                                let bl = lines(i)[s * TILE_ROWS..].as_ptr();
                                tiles.load_b(i, bl.cast(), ROW_BYTES);
                            }
                        }
                        for &c in cs {
                            tiles.dot(c);
                        }
                    }
                    for &c in cs {
                        // SAFETY: `acc[c]` is 16 rows of 16 f32, 64 bytes apart.
                        unsafe { tiles.store(c, acc[c].as_mut_ptr().cast(), ROW_BYTES) };
                        // `C(c)[r][jj]` is weight row `r` of tile `c / 2` against activation
                        // row `jj` of block `b + c % 2`.
                        let r0 = task * rows_per_task + g * group + (c / 2) * TILE_ROWS;
                        let j0 = (b + c % 2) * TILE_ROWS;
                        let rs = TILE_ROWS.min(valid.saturating_sub((c / 2) * TILE_ROWS));
                        for jj in 0..TILE_ROWS.min(m - j0) {
                            for r in 0..rs {
                                // SAFETY: `j0 + jj < m` and `r0 + r < N`; only this task
                                // writes the columns of its weight rows.
                                unsafe {
                                    *dst.get().add((j0 + jj) * n + r0 + r) =
                                        acc[c][r * TILE_ROWS + jj];
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{assert_matches_oracle, oracle};
    use super::*;
    use proptest::prelude::*;

    /// The eight tile registers in memory, with `tdpbf16ps`'s semantics as Intel documents
    /// them (SDM, "TDPBF16PS"): per row of `A` and 32-bit column of `B`, per pair `p`, two
    /// f32 accumulations rounded to nearest even; bf16 subnormals read as zero, subnormal
    /// results flushed to zero.
    pub(crate) struct TileModel([[u8; ROW_BYTES * TILE_ROWS]; 8]);

    impl TileModel {
        pub(crate) fn new() -> TileModel {
            TileModel([[0; ROW_BYTES * TILE_ROWS]; 8])
        }

        fn dword(&self, t: usize, row: usize, col: usize) -> u32 {
            let at = row * ROW_BYTES + 4 * col;
            u32::from_le_bytes(self.0[t][at..at + 4].try_into().unwrap())
        }

        unsafe fn load(&mut self, t: usize, base: *const u8, stride: usize) {
            for r in 0..TILE_ROWS {
                // SAFETY: the caller guarantees the rows are readable.
                let row = unsafe { std::slice::from_raw_parts(base.add(r * stride), ROW_BYTES) };
                self.0[t][r * ROW_BYTES..(r + 1) * ROW_BYTES].copy_from_slice(row);
            }
        }
    }

    /// A bf16 half of a dword as f32, subnormals as (signed) zero.
    fn daz(bits: u32) -> f32 {
        let v = f32::from_bits(bits << 16);
        if v.is_subnormal() {
            0.0f32.copysign(v)
        } else {
            v
        }
    }

    impl Tiles for TileModel {
        fn zero(&mut self, c: usize) {
            self.0[c] = [0; ROW_BYTES * TILE_ROWS];
        }

        unsafe fn load_a(&mut self, i: usize, base: *const u8, stride: usize) {
            unsafe { self.load(4 + i, base, stride) }
        }

        unsafe fn load_b(&mut self, i: usize, base: *const u8, stride: usize) {
            unsafe { self.load(6 + i, base, stride) }
        }

        fn dot(&mut self, c: usize) {
            let (a, b) = (4 + c / 2, 6 + c % 2);
            for row in 0..TILE_ROWS {
                for col in 0..ROW_BYTES / 4 {
                    let mut acc = f32::from_bits(self.dword(c, row, col));
                    for p in 0..ROW_BYTES / 4 {
                        let (x, y) = (self.dword(a, row, p), self.dword(b, p, col));
                        acc += daz(x & 0xffff) * daz(y & 0xffff);
                        acc += daz(x >> 16) * daz(y >> 16);
                    }
                    if acc.is_subnormal() {
                        acc = 0.0f32.copysign(acc);
                    }
                    let at = row * ROW_BYTES + 4 * col;
                    self.0[c][at..at + 4].copy_from_slice(&acc.to_bits().to_le_bytes());
                }
            }
        }

        unsafe fn store(&mut self, c: usize, base: *mut u8, stride: usize) {
            for r in 0..TILE_ROWS {
                let row = &self.0[c][r * ROW_BYTES..(r + 1) * ROW_BYTES];
                // SAFETY: the caller guarantees the rows are writable.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(r * stride), 64) };
            }
        }
    }

    /// The driver on `tiles` against the f64 oracle over the rounded activations.
    fn check<T: Tiles>(tiles: impl Fn() -> T + Sync, n: usize, k: usize, m: usize, seed: u32) {
        let val = |i: usize, s: f32| ((i as f32 * 0.7318 + s + seed as f32).sin()) * 2.0;
        let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(val(i, 0.3))).collect();
        let xs: Vec<f32> = (0..m * k).map(|i| val(i, 1.9)).collect();
        let rounded: Vec<f32> = xs.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let want = oracle(&w, k, &rounded, m);
        let bits: Vec<u16> = w.iter().map(|v| v.to_bits()).collect();
        let got = gemm_on(tiles, &bits, k, &xs, m);
        assert_matches_oracle(&got, &want, k, &format!("n {n}, k {k}, m {m}"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The packing, the register plan, the edges (a lone last activation block, short
        /// weight groups and tiles) and the transposition, on the tile model.
        #[test]
        fn driver_on_the_tile_model_matches_the_f64_oracle(
            steps in 1usize..6,
            n in 1usize..80,
            m in 1usize..60,
            seed in 0u32..1000,
        ) {
            check(TileModel::new, n, steps * K_STEP, m, seed);
        }
    }

    #[test]
    fn several_tasks_on_the_tile_model() {
        // Enough rows for several tasks, the last one short, and a short last group.
        check(TileModel::new, 1000, 64, 17, 3);
        check(TileModel::new, 45, 2048, 33, 1);
    }

    /// One dot by hand: `A` row 0 holds `1, 2` in its first pair, `B` column 3 holds `3, 4` in
    /// its first pair and `5, 6` in its second, `A` row 0's second pair `-1, 0.5`:
    /// `C[0][3] = 1·3 + 2·4 + (-1)·5 + 0.5·6 = 9`, and nothing else is touched.
    #[test]
    fn tile_model_pairs_rows_of_a_with_columns_of_b() {
        let pair = |lo: f32, hi: f32| {
            bf16::from_f32(lo).to_bits() as u32 | (bf16::from_f32(hi).to_bits() as u32) << 16
        };
        let mut a = [0u32; 256];
        let mut b = [0u32; 256];
        a[0] = pair(1.0, 2.0);
        a[1] = pair(-1.0, 0.5);
        b[3] = pair(3.0, 4.0);
        b[16 + 3] = pair(5.0, 6.0);
        let mut t = TileModel::new();
        let mut c = [0f32; 256];
        // SAFETY: each buffer is 16 rows of 64 bytes.
        unsafe {
            t.load_a(0, a.as_ptr().cast(), 64);
            t.load_b(0, b.as_ptr().cast(), 64);
            t.zero(0);
            t.dot(0);
            t.store(0, c.as_mut_ptr().cast(), 64);
        }
        let mut want = [0f32; 256];
        want[3] = 9.0;
        assert_eq!(c, want);
    }

    /// Where the CPU has AMX (and Linux granted the tiles), the hardware against the same
    /// oracle; the products through `bf16_act` run it too, via [`crate::Isa::supported`].
    #[test]
    fn hardware_tiles_match_the_f64_oracle_where_present() {
        let Some(t) = crate::Isa::detect().amx_bf16() else {
            println!("no AMX-BF16 here (or no tile permission): the hardware path is not run");
            return;
        };
        check(|| Amx::configure(t), 45, 2048, 33, 1);
        check(|| Amx::configure(t), 300, 96, 130, 2);
    }
}
