//! The AVX512-VNNI rows of the 8-bit and 4-bit products with 8-bit activations
//! ([`super::act8`]): the same sums as the AVX2 kernels in [`super::x86`], four groups of 32
//! values per iteration instead of one or two.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds each four products into an i32 lane
//! exactly (no i16 intermediate, no saturation), replacing AVX2's `maddubs` + `madd` pair:
//! - 8-bit weights are signed, so the kernel feeds `|w|` (at most 128, a valid u8) and `xq`
//!   negated where `w < 0` (`|xq| ≤ 127`, so negation is exact): `|w| · (±xq) = w · xq`;
//! - 4-bit values are already unsigned nibbles: the low and high nibbles of 64 bytes meet the
//!   even and odd activations of four groups, which `act8::q8_row` lays out for this kernel
//!   as 64 even values then 64 odd ones (`act8::Layout::Quads`).
//!
//! Lanes `8g..8g + 8` (8-bit) or `4g..4g + 4` (4-bit) of the i32 sum hold group `g`'s
//! products; the groups' factors `c_g = s_g · dx_g` are formed in registers from the row's
//! scales (f16 via `vcvtph2ps`, or K-quant bytes times the superblock's `d`) and the
//! activations' `dx`, one `vpermps` spreads them over those lanes, and one FMA per iteration
//! scales and accumulates (no per-row pass over the scales outside the kernel). The 4-bit rows
//! form the factors and offsets of eight groups (two iterations, one K-quant superblock) in one
//! 256-bit vector, and add the offsets times the group sums with one FMA per eight groups.
//! What does not fill four groups goes to the AVX2 kernel, which reads natural order (8-bit)
//! or the pair layout that follows the quads (4-bit) from there.
//!
//! The rows with a scale per 16 values (GGUF's Q6_K, Q3_K and Q2_K) are in [`dot_u6_q8`].
//! Decode takes a task's rows in one call ([`Run`]).
//!
//! As everywhere in [`super`], the `#[target_feature]` functions are private and reached only
//! through safe entry points taking the [`Avx512Vnni`] proof token.

use std::arch::x86_64::*;

use half::f16;

use super::act8::{Params, GROUP, SUPER};
use super::x86;
use super::x86_512::Avx512Vnni;
use super::{Nibbles, U5_HIGH_BYTES};

/// Groups per iteration.
const GROUPS: usize = 4;

/// How far ahead of its reads (bytes) the 4-bit and 6-bit rows prefetch their weights: about
/// one row at `K = 2048`, so a row's lines are requested while the previous row is summed.
/// Measured on the Zen 4 VM (`benchmarks/README.md`, "K-quants on our kernels"): the q4k /
/// q6k head product gained in most alternated rounds, whole decode steps within the VM's
/// noise; the 8-bit rows (twice the bytes per instruction) gained nothing and do not
/// prefetch.
const PREFETCH: usize = 1024;

/// `Σ_g c_g · Σ_{i in g} w_i · xq_i` over 8-bit weights with the row's f16 group scales `s`
/// and the activations' `dx` (`c_g = s_g · dx_g`, formed in registers four at a time); `c`
/// is room for the factors of the groups the AVX2 kernel takes. With `J` activation rows of
/// one length each weight load serves all of them; `out[j]` is bit for bit the result for
/// `x[j]` alone.
pub(crate) fn dot_i8_q8<const J: usize>(
    t: Avx512Vnni,
    w: &[i8],
    x: [&super::act8::Q8Row; J],
    s: &[f16],
    c: &mut [f32],
) -> [f32; J] {
    let k = x[0].q.len().min(w.len());
    let groups = k.div_ceil(GROUP);
    assert!(
        s.len() >= groups
            && x.iter()
                .all(|r| r.q.len() == x[0].q.len() && r.scale.len() >= groups),
        "one scale per group, activation rows of one length"
    );
    let quads = k / (GROUPS * GROUP);
    // SAFETY: the `Avx512Vnni` token exists, so detection found AVX-512 F/BW, VNNI and F16C;
    // the kernel reads `quads` whole iterations of `w`, each `xq`, `s` and each `dx`, all
    // inside the slices (checked above).
    let head = unsafe {
        let (xq, dx) = (x.map(|x| x.q.as_ptr()), x.map(|x| x.scale.as_ptr()));
        dot_i8_q8_vnni(w.as_ptr(), xq, s.as_ptr(), dx, quads)
    };
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    if at == k {
        return head;
    }
    let params = Params::Group {
        scales: s,
        mins: &[],
        zero: 0,
    };
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    let mut out = head;
    for (out, x) in out.iter_mut().zip(x) {
        params.factors(g..groups, &x.scale, c);
        *out += x86::dot_i8_q8(avx2, &w[at..k], &x.q[at..k], c);
    }
    out
}

/// # Safety
/// AVX-512 F/BW, VNNI and F16C must be available; `w` and each `xq` must hold `quads · 128`
/// bytes, `s` and each `dx` `quads · 4` values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn dot_i8_q8_vnni<const J: usize>(
    w: *const i8,
    xq: [*const i8; J],
    s: *const f16,
    dx: [*const f32; J],
    quads: usize,
) -> [f32; J] {
    // Lanes 0..8 group 0, lanes 8..16 group 1 (of the low half of the four).
    let spread_lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let spread_hi = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let mut acc = [[_mm512_setzero_ps(); 2]; J];
    for q in 0..quads {
        let g = q * GROUPS;
        let sw = _mm_cvtph_ps(_mm_loadl_epi64(s.add(g) as *const __m128i));
        // The weights once: `|w|` and where `w < 0`.
        let halves = [0, 1].map(|half| {
            let wv = _mm512_loadu_si512(w.add((g + 2 * half) * GROUP) as *const _);
            (_mm512_abs_epi8(wv), _mm512_movepi8_mask(wv))
        });
        for j in 0..J {
            let c = _mm512_castps128_ps512(_mm_mul_ps(sw, _mm_loadu_ps(dx[j].add(g))));
            let scales = [
                _mm512_permutexvar_ps(spread_lo, c),
                _mm512_permutexvar_ps(spread_hi, c),
            ];
            for (half, &(abs, negative)) in halves.iter().enumerate() {
                let xv = _mm512_loadu_si512(xq[j].add((g + 2 * half) * GROUP) as *const _);
                let xs = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), abs, xs);
                acc[j][half] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scales[half], acc[j][half]);
            }
        }
    }
    acc.map(|[a, b]| _mm512_reduce_add_ps(_mm512_add_ps(a, b)))
}

/// `Σ_g c_g · Σ_{i in g} q_i · xq_i + offset_g · sums_g` over 4-bit values `q`, activations
/// `x` laid out in [`Layout::Quads`](super::act8::Layout::Quads), the row's parameters `p`;
/// factors as in [`dot_i8_q8`] (for K-quants `s_g = d · sc_g`, the bytes widened in
/// registers and multiplied by the superblock's `d`). With `J` activation rows of one length
/// each weight byte is unpacked once for all of them; `out[j]` is bit for bit the result for
/// `x[j]` alone.
pub(crate) fn dot_u4_q8<const J: usize>(
    t: Avx512Vnni,
    w: Nibbles,
    x: [&super::act8::Q8Row; J],
    p: Params,
    c: &mut [f32],
) -> [f32; J] {
    let k = x[0].q.len().min(2 * w.low.len());
    let groups = k.div_ceil(GROUP);
    let quads = k / (GROUPS * GROUP);
    assert!(
        x.iter().all(|r| r.q.len() == x[0].q.len()
            && r.scale.len() >= groups
            && r.sums.len() >= groups),
        "activation rows of one length, with a scale and a sum per group"
    );
    let quad = QuadParams::of(p, 1, groups);
    // SAFETY: as in `dot_i8_q8`; `w` holds `quads · 64` bytes in those iterations, each `xq`
    // `quads · 128` (all of one length, at least `k`), and the parameters, `dx` and `sums`
    // (checked above) cover their `quads · 4` groups.
    let head = unsafe {
        let rows = Rows::of(x, |x| &x.sums);
        let low = w.low.as_ptr() as *const u8;
        match w.high {
            None => dot_u4_q8_vnni::<J, false>(low, std::ptr::null(), rows, quad, quads),
            Some(high) => {
                assert!(
                    k.is_multiple_of(GROUP) && high.len() >= groups * U5_HIGH_BYTES,
                    "5-bit rows: whole groups, four bytes of fifth bits each"
                );
                dot_u4_q8_vnni::<J, true>(low, high.as_ptr(), rows, quad, quads)
            }
        }
    };
    let (at, g) = (quads * GROUPS * GROUP, quads * GROUPS);
    if at == k {
        return head;
    }
    // After the quads the layout goes on in pairs, as the AVX2 kernel reads it.
    let avx2 = t.avx512f().avx2_fma_f16c().avx2_fma();
    let mut out = head;
    for (out, x) in out.iter_mut().zip(x) {
        p.factors(g..groups, &x.scale, c);
        let rest = x86::dot_u4_q8(avx2, w.from(at), &x.q[at..k], c);
        *out = *out + rest + p.offsets(g..groups, &x.sums, c);
    }
    out
}

/// A run of consecutive weight rows against the activation rows (decode, and batched decode),
/// in one call: rows `first..first + out.len() / m` of a matrix, `w` holding exactly those
/// rows `stride` bytes apart, `out` `[rows, m]`. Each weight row takes the activation rows in
/// fours, then a pair, then one, as `act8::in_blocks` does, through the same VNNI kernels
/// (inlined), so every result has the bits [`dot_u4_q8`] / [`dot_u6_q8`] / [`dot_i8_q8`]
/// give it; what goes is the per-row call chain around them (parameter slices, checks,
/// dispatch: ~14% of a 4-bit decode step's samples, `benchmarks/README.md`). The run
/// functions return `false`, nothing written, where a row does not split into the kernels'
/// whole iterations: the caller takes the row kernels.
pub(crate) struct Run<'a> {
    /// The rows' stored bytes.
    pub w: &'a [u8],
    /// Bytes per row.
    pub stride: usize,
    /// The first row's index in the matrix (for its parameters).
    pub first: usize,
}

impl Run<'_> {
    /// Whether `w` holds the rows of `out` (`m` values per row) of at least `row_bytes`
    /// each, and `xs` are `m ≥ 1` rows of `k` values with a scale per group of 32.
    fn holds(&self, xs: &[super::act8::Q8Row], out: &[f32], row_bytes: usize) -> bool {
        let (m, k) = (xs.len(), xs.first().map_or(0, |x| x.q.len()));
        m > 0
            && out.len().is_multiple_of(m)
            && self.stride >= row_bytes
            && self.w.len() >= out.len() / m * self.stride
            && xs
                .iter()
                .all(|x| x.q.len() == k && x.scale.len() >= k.div_ceil(GROUP))
    }
}

/// One weight row's VNNI kernel over `J` activation rows.
trait RowKernel {
    /// # Safety
    /// As the kernel it calls, for this row and `x`.
    unsafe fn rows<const J: usize>(&self, x: Rows<J>) -> [f32; J];
}

/// The activation rows in fours, then a pair, then one (as `act8::in_blocks`).
struct Blocks {
    fours: Vec<Rows<4>>,
    pair: Option<Rows<2>>,
    one: Option<Rows<1>>,
}

impl Blocks {
    fn of(xs: &[super::act8::Q8Row], sums: fn(&super::act8::Q8Row) -> &[f32]) -> Blocks {
        let mut fours = xs.chunks_exact(4);
        let blocks = (&mut fours)
            .map(|x| Rows::of([&x[0], &x[1], &x[2], &x[3]], sums))
            .collect();
        let mut pairs = fours.remainder().chunks_exact(2);
        let pair = pairs.next().map(|x| Rows::of([&x[0], &x[1]], sums));
        let one = pairs.remainder().first().map(|x| Rows::of([x], sums));
        Blocks {
            fours: blocks,
            pair,
            one,
        }
    }

    /// The number of activation rows.
    fn rows(&self) -> usize {
        4 * self.fours.len()
            + 2 * usize::from(self.pair.is_some())
            + usize::from(self.one.is_some())
    }

    /// `kernel` against every block, into `out` (one value per activation row).
    ///
    /// # Safety
    /// As [`RowKernel::rows`] for every block.
    #[inline(always)]
    unsafe fn each(&self, kernel: &impl RowKernel, out: &mut [f32]) {
        let (fours, rest) = out.split_at_mut(4 * self.fours.len());
        for (o, &x) in fours.chunks_exact_mut(4).zip(&self.fours) {
            o.copy_from_slice(&kernel.rows(x));
        }
        let rest = match self.pair {
            Some(x) => {
                rest[..2].copy_from_slice(&kernel.rows(x));
                &mut rest[2..]
            }
            None => rest,
        };
        if let Some(x) = self.one {
            rest[0] = kernel.rows(x)[0];
        }
    }
}

/// [`Run`] of 4-bit rows (`five`: 5-bit rows, [`Nibbles::five`]) with the matrix's parameters
/// `p`.
pub(crate) fn dot_u4_q8_run(
    _: Avx512Vnni,
    run: Run,
    five: bool,
    xs: &[super::act8::Q8Row],
    p: Params,
    out: &mut [f32],
) -> bool {
    let k = xs.first().map_or(0, |x| x.q.len());
    let row_bytes = if five { super::u5_row_bytes(k) } else { k / 2 };
    if !k.is_multiple_of(GROUPS * GROUP) || !run.holds(xs, out, row_bytes) {
        return false;
    }
    let groups = k / GROUP;
    let end = run.first + out.len() / xs.len();
    assert!(xs.iter().all(|x| x.sums.len() >= groups), "a sum per group");
    let quad = QuadParams::of(p, end, groups);
    let blocks = Blocks::of(xs, |x| &x.sums);
    // SAFETY: the token proves the features; `w` holds the rows of `row_bytes` (checked),
    // each row `quads` whole iterations of nibbles (and with `five` the fifth bits after its
    // `k / 2` bytes), each of `xs` `k` values with their groups' `dx` and sums, and the
    // parameters cover rows `first..end` (checked above).
    unsafe {
        if five {
            u4_run::<true>(run, &blocks, quad, k, out)
        } else {
            u4_run::<false>(run, &blocks, quad, k, out)
        }
    }
    true
}

/// A 4-bit or 5-bit row for [`Blocks::each`].
struct U4Row<const FIVE: bool> {
    w: *const u8,
    high: *const u8,
    p: QuadParams,
    quads: usize,
}

impl<const FIVE: bool> RowKernel for U4Row<FIVE> {
    #[inline(always)]
    unsafe fn rows<const J: usize>(&self, x: Rows<J>) -> [f32; J] {
        dot_u4_q8_vnni::<J, FIVE>(self.w, self.high, x, self.p, self.quads)
    }
}

/// # Safety
/// As [`dot_u4_q8_vnni`] for each row of `run` (see [`dot_u4_q8_run`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn u4_run<const FIVE: bool>(run: Run, x: &Blocks, p: QuadParams, k: usize, out: &mut [f32]) {
    let (m, groups, quads) = (x.rows(), k / GROUP, k / (GROUPS * GROUP));
    for (i, out) in out.chunks_exact_mut(m).enumerate() {
        let row = run.w.as_ptr().add(i * run.stride);
        let p = p.row(run.first + i, groups);
        let high = if FIVE {
            row.add(k / 2)
        } else {
            std::ptr::null()
        };
        x.each(
            &U4Row::<FIVE> {
                w: row,
                high,
                p,
                quads,
            },
            out,
        );
    }
}

/// [`Run`] of `BITS`-bit (6, 3 or 2) rows with the matrix's parameters `p`.
pub(crate) fn dot_u6_q8_run<const BITS: usize>(
    _: Avx512Vnni,
    run: Run,
    xs: &[super::act8::Q8Row],
    p: super::act8::SixBit,
    out: &mut [f32],
) -> bool {
    use super::act8::{chunk_bytes, U6_CHUNK};
    let k = xs.first().map_or(0, |x| x.q.len());
    let chunks = k / U6_CHUNK;
    if !k.is_multiple_of(4 * U6_CHUNK) || !run.holds(xs, out, chunks * chunk_bytes(BITS)) {
        return false;
    }
    let end = run.first + out.len() / xs.len();
    assert!(
        six_covers::<BITS>(&p, end, chunks) && xs.iter().all(|x| x.sums16.len() >= 4 * chunks),
        "parameters and activation sums for every chunk"
    );
    let blocks = Blocks::of(xs, |x| &x.sums16);
    // SAFETY: as `dot_u6_q8` for each row: `w` holds the rows (checked), the parameters cover
    // rows `first..end` and `xs` every chunk (checked above).
    unsafe { u6_run::<BITS>(run, &blocks, p, chunks, out) };
    true
}

/// A `BITS`-bit (6, 3 or 2) row for [`Blocks::each`].
struct U6Row<const BITS: usize> {
    w: *const u8,
    params: SixPtrs,
    chunks: usize,
}

impl<const BITS: usize> RowKernel for U6Row<BITS> {
    #[inline(always)]
    unsafe fn rows<const J: usize>(&self, x: Rows<J>) -> [f32; J] {
        dot_u6_q8_vnni::<J, BITS>(self.w, x, self.params, self.chunks)
    }
}

/// # Safety
/// As [`dot_u6_q8_vnni`] for each row of `run` (see [`dot_u6_q8_run`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn u6_run<const BITS: usize>(
    run: Run,
    x: &Blocks,
    p: super::act8::SixBit,
    chunks: usize,
    out: &mut [f32],
) {
    let m = x.rows();
    for (i, out) in out.chunks_exact_mut(m).enumerate() {
        let r = run.first + i;
        let w = run.w.as_ptr().add(i * run.stride);
        let params = SixPtrs::row(p, r, chunks);
        x.each(&U6Row::<BITS> { w, params, chunks }, out);
    }
}

/// [`Run`] of 8-bit rows with the matrix's f16 group scales `s`.
pub(crate) fn dot_i8_q8_run(
    _: Avx512Vnni,
    run: Run,
    xs: &[super::act8::Q8Row],
    s: &[f16],
    out: &mut [f32],
) -> bool {
    let k = xs.first().map_or(0, |x| x.q.len());
    if !k.is_multiple_of(GROUPS * GROUP) || !run.holds(xs, out, k) {
        return false;
    }
    let groups = k / GROUP;
    let end = run.first + out.len() / xs.len();
    assert!(s.len() >= end * groups, "one scale per group");
    // (8-bit rows have no offsets: their kernel reads no sums.)
    let blocks = Blocks::of(xs, |x| &x.scale);
    // SAFETY: as `dot_i8_q8` for each row: `w` holds the rows (checked), `s` covers rows
    // `first..end` and `xs` every group (checked above).
    unsafe { i8_run(run, &blocks, s.as_ptr(), groups, out) };
    true
}

/// An 8-bit row for [`Blocks::each`].
struct I8Row {
    w: *const i8,
    s: *const f16,
    quads: usize,
}

impl RowKernel for I8Row {
    #[inline(always)]
    unsafe fn rows<const J: usize>(&self, x: Rows<J>) -> [f32; J] {
        dot_i8_q8_vnni::<J>(self.w, x.xq, self.s, x.dx, self.quads)
    }
}

/// # Safety
/// As [`dot_i8_q8_vnni`] for each row of `run` (see [`dot_i8_q8_run`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn i8_run(run: Run, x: &Blocks, s: *const f16, groups: usize, out: &mut [f32]) {
    let m = x.rows();
    for (i, out) in out.chunks_exact_mut(m).enumerate() {
        let r = run.first + i;
        let w = run.w.as_ptr().add(i * run.stride) as *const i8;
        let row = I8Row {
            w,
            s: s.add(r * groups),
            quads: groups / GROUPS,
        };
        x.each(&row, out);
    }
}

/// `J` activation rows as the 4-bit and 6-bit VNNI loops read them: rounded values, `dx` per
/// group, and the sums the format's offsets multiply (per group for 4 and 5 bits, per 16
/// for 6 bits: rounded values, see `act8::Q8Row::sums`).
#[derive(Clone, Copy)]
struct Rows<const J: usize> {
    xq: [*const i8; J],
    dx: [*const f32; J],
    sums: [*const f32; J],
}

impl<const J: usize> Rows<J> {
    /// The rows `x`, with the sums `sums` picks from each.
    fn of(x: [&super::act8::Q8Row; J], sums: fn(&super::act8::Q8Row) -> &[f32]) -> Self {
        Rows {
            xq: x.map(|x| x.q.as_ptr()),
            dx: x.map(|x| x.scale.as_ptr()),
            sums: x.map(|x| sums(x).as_ptr()),
        }
    }
}

/// [`Params`] as the VNNI loop reads them: eight groups (two quads, one K-quant superblock)
/// at a time, or four for a last odd quad.
#[derive(Clone, Copy)]
pub(crate) enum QuadParams {
    /// `mins` or, without, `−zero` times the scales as the offsets (0: none).
    Group {
        scales: *const f16,
        mins: Option<*const f16>,
        zero: f32,
    },
    Super {
        sc: *const u8,
        mn: *const u8,
        d: *const f16,
        dmin: *const f16,
    },
}

/// Eight bytes from `p` widened to f32 and multiplied by the f16 at `d`.
///
/// # Safety
/// AVX2, F16C must be available; `p` must hold 8 bytes, `d` one value.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bytes8_times(p: *const u8, d: *const f16) -> __m256 {
    let b = _mm_loadl_epi64(p as *const __m128i);
    let d = _mm256_cvtph_ps(_mm_set1_epi16((*d).to_bits() as i16));
    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), d)
}

/// Four bytes from `p` widened to f32 and multiplied by the f16 at `d`.
///
/// # Safety
/// AVX2, F16C must be available; `p` must hold 4 bytes, `d` one value.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bytes4_times(p: *const u8, d: *const f16) -> __m128 {
    let b = _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32));
    let d = _mm_cvtph_ps(_mm_set1_epi16((*d).to_bits() as i16));
    _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepu8_epi32(b)), d)
}

impl QuadParams {
    /// `p` (`rows` rows of `groups` groups, checked) as pointers to its first row.
    pub(crate) fn of(p: Params, rows: usize, groups: usize) -> QuadParams {
        let n = rows * groups;
        match p {
            Params::Group { scales, mins, zero } => {
                assert!(scales.len() >= n, "one scale per group");
                assert!(mins.is_empty() || mins.len() >= n);
                QuadParams::Group {
                    scales: scales.as_ptr(),
                    mins: (!mins.is_empty()).then_some(mins.as_ptr()),
                    zero: zero as f32,
                }
            }
            Params::Super { sc, mn, d, dmin } => {
                let supers = rows * groups.div_ceil(SUPER);
                assert!(sc.len() >= n && mn.len() >= n, "one scale per group");
                assert!(
                    d.len() >= supers && dmin.len() >= supers,
                    "one d per superblock"
                );
                QuadParams::Super {
                    sc: sc.as_ptr(),
                    mn: mn.as_ptr(),
                    d: d.as_ptr(),
                    dmin: dmin.as_ptr(),
                }
            }
        }
    }

    /// Row `r`'s parameters, rows of `groups` groups (as [`Params::row`]).
    ///
    /// # Safety
    /// The parameters must hold row `r`.
    pub(crate) unsafe fn row(self, r: usize, groups: usize) -> QuadParams {
        let supers = groups.div_ceil(SUPER);
        match self {
            QuadParams::Group { scales, mins, zero } => QuadParams::Group {
                scales: scales.add(r * groups),
                mins: mins.map(|m| m.add(r * groups)),
                zero,
            },
            QuadParams::Super { sc, mn, d, dmin } => QuadParams::Super {
                sc: sc.add(r * groups),
                mn: mn.add(r * groups),
                d: d.add(r * supers),
                dmin: dmin.add(r * supers),
            },
        }
    }

    /// The scales of groups `g..g + 8` (`g` a multiple of 8, so one superblock).
    ///
    /// # Safety
    /// AVX2, F16C must be available; the parameters must cover those groups.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales8(self, g: usize) -> __m256 {
        match self {
            QuadParams::Group { scales, .. } => {
                _mm256_cvtph_ps(_mm_loadu_si128(scales.add(g) as *const __m128i))
            }
            QuadParams::Super { sc, d, .. } => bytes8_times(sc.add(g), d.add(g / SUPER)),
        }
    }

    /// The offsets of groups `g..g + 8` (as [`QuadParams::scales8`]), if the format has any.
    ///
    /// # Safety
    /// As [`QuadParams::scales8`].
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn offsets8(self, g: usize) -> Option<__m256> {
        match self {
            QuadParams::Group {
                mins: None, zero, ..
            } if zero != 0.0 => Some(_mm256_mul_ps(self.scales8(g), _mm256_set1_ps(-zero))),
            QuadParams::Group { mins, .. } => {
                mins.map(|m| _mm256_cvtph_ps(_mm_loadu_si128(m.add(g) as *const __m128i)))
            }
            QuadParams::Super { mn, dmin, .. } => {
                let m = bytes8_times(mn.add(g), dmin.add(g / SUPER));
                Some(_mm256_sub_ps(_mm256_setzero_ps(), m))
            }
        }
    }

    /// The scales of groups `g..g + 4` (`g` a multiple of 4).
    ///
    /// # Safety
    /// As [`QuadParams::scales8`], for those groups.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales4(self, g: usize) -> __m128 {
        match self {
            QuadParams::Group { scales, .. } => {
                _mm_cvtph_ps(_mm_loadl_epi64(scales.add(g) as *const __m128i))
            }
            QuadParams::Super { sc, d, .. } => bytes4_times(sc.add(g), d.add(g / SUPER)),
        }
    }

    /// The offsets of groups `g..g + 4` (as [`QuadParams::scales4`]), if the format has any.
    ///
    /// # Safety
    /// As [`QuadParams::scales4`].
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn offsets4(self, g: usize) -> Option<__m128> {
        match self {
            QuadParams::Group {
                mins: None, zero, ..
            } if zero != 0.0 => Some(_mm_mul_ps(self.scales4(g), _mm_set1_ps(-zero))),
            QuadParams::Group { mins, .. } => {
                mins.map(|m| _mm_cvtph_ps(_mm_loadl_epi64(m.add(g) as *const __m128i)))
            }
            QuadParams::Super { mn, dmin, .. } => {
                let m = bytes4_times(mn.add(g), dmin.add(g / SUPER));
                Some(_mm_sub_ps(_mm_setzero_ps(), m))
            }
        }
    }
}

/// Quad `q`'s 64 bytes of 4-bit values: the low nibbles (even values) and the high ones; with
/// `FIVE`, `16` ORed in where the quad's fifth bits at `high` are set.
///
/// # Safety
/// As [`dot_u4_q8_vnni`], for quad `q`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn u4_quad<const FIVE: bool>(w: *const u8, high: *const u8, q: usize) -> (__m512i, __m512i) {
    let nib = _mm512_set1_epi8(15);
    let b = _mm512_loadu_si512(w.add(q * GROUPS * GROUP / 2) as *const _);
    let (lo, hi) = (
        _mm512_and_si512(b, nib),
        _mm512_and_si512(_mm512_srli_epi16::<4>(b), nib),
    );
    if !FIVE {
        return (lo, hi);
    }
    // The quad's evens' bits, then its odds' (`Nibbles`' layout): one mask each.
    let bits = high.add(q * GROUPS * U5_HIGH_BYTES);
    let evens = std::ptr::read_unaligned(bits as *const u64);
    let odds = std::ptr::read_unaligned(bits.add(8) as *const u64);
    let sixteen = _mm512_set1_epi8(16);
    // (`lo`, `hi` ≤ 15: adding 16 sets the fifth bit.)
    (
        _mm512_mask_add_epi8(lo, evens, lo, sixteen),
        _mm512_mask_add_epi8(hi, odds, hi, sixteen),
    )
}

/// The integer sums of quad `q`'s values `(lo, hi)` with activations `xq` as f32 (16 lanes,
/// four per group, exact: at most `128 · 15 · 127` in magnitude per lane).
///
/// # Safety
/// As [`dot_u4_q8_vnni`], for quad `q`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn u4_quad_sums((lo, hi): (__m512i, __m512i), xq: *const i8, q: usize) -> __m512 {
    // The quad layout: the even values of the four groups, then their odd values.
    let x = xq.add(q * GROUPS * GROUP);
    let xe = _mm512_loadu_si512(x as *const _);
    let xo = _mm512_loadu_si512(x.add(GROUPS * GROUP / 2) as *const _);
    let sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe), hi, xo);
    _mm512_cvtepi32_ps(sums)
}

/// # Safety
/// AVX-512 F/BW, VNNI, F16C, AVX2 and FMA must be available; `w` must hold `quads · 64`
/// bytes, with `FIVE` `high` `quads · 16` (the fifth bits), each row's `xq` `quads · 128`, and
/// `p` and each row's `dx` and `sums` must cover `quads · 4` groups.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn dot_u4_q8_vnni<const J: usize, const FIVE: bool>(
    w: *const u8,
    high: *const u8,
    x: Rows<J>,
    p: QuadParams,
    quads: usize,
) -> [f32; J] {
    // Lanes 4g..4g + 4 of a quad hold its group g: the first quad of a pair takes factors
    // 0..4 of the eight, the second 4..8.
    let spread_lo = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let spread_hi = _mm512_add_epi32(spread_lo, _mm512_set1_epi32(4));
    // Per row two accumulators (consecutive FMAs do not wait on each other) and the offsets
    // times the group sums in a third, eight groups per FMA.
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); J], [_mm512_setzero_ps(); J]);
    let mut offsets = [_mm256_setzero_ps(); J];
    let mut q = 0;
    while q + 1 < quads {
        // Two lines per two quads, `PREFETCH` ahead (a hint: never faults, even past the row).
        let ahead = w.wrapping_add(q * 64 + PREFETCH) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(ahead);
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
        let g = q * GROUPS;
        let (scales, mins) = (p.scales8(g), p.offsets8(g));
        let (v0, v1) = (u4_quad::<FIVE>(w, high, q), u4_quad::<FIVE>(w, high, q + 1));
        for j in 0..J {
            let c = _mm256_mul_ps(scales, _mm256_loadu_ps(x.dx[j].add(g)));
            if let Some(m) = mins {
                offsets[j] = _mm256_fmadd_ps(m, _mm256_loadu_ps(x.sums[j].add(g)), offsets[j]);
            }
            let c = _mm512_castps256_ps512(c);
            let (c0, c1) = (
                _mm512_permutexvar_ps(spread_lo, c),
                _mm512_permutexvar_ps(spread_hi, c),
            );
            acc0[j] = _mm512_fmadd_ps(u4_quad_sums(v0, x.xq[j], q), c0, acc0[j]);
            acc1[j] = _mm512_fmadd_ps(u4_quad_sums(v1, x.xq[j], q + 1), c1, acc1[j]);
        }
        q += 2;
    }
    let mut last = [_mm_setzero_ps(); J];
    if q < quads {
        let g = q * GROUPS;
        let (scales, mins) = (p.scales4(g), p.offsets4(g));
        let v = u4_quad::<FIVE>(w, high, q);
        for j in 0..J {
            let c = _mm_mul_ps(scales, _mm_loadu_ps(x.dx[j].add(g)));
            let c = _mm512_permutexvar_ps(spread_lo, _mm512_castps128_ps512(c));
            acc0[j] = _mm512_fmadd_ps(u4_quad_sums(v, x.xq[j], q), c, acc0[j]);
            if let Some(m) = mins {
                last[j] = _mm_mul_ps(m, _mm_loadu_ps(x.sums[j].add(g)));
            }
        }
    }
    std::array::from_fn(|j| {
        let offsets = _mm_add_ps(
            _mm_add_ps(
                _mm256_castps256_ps128(offsets[j]),
                _mm256_extractf128_ps::<1>(offsets[j]),
            ),
            last[j],
        );
        _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j])) + x86::hsum4(offsets)
    })
}

/// `Σ_s c_s · Σ_{i in s} (q_i − 32) · xq_i` over a 6-bit row (`act8`'s chunk layout,
/// activations `x` in natural order with their sums per 16 values), `c_s = d · sc_s · dx_g`.
///
/// Per chunk of 64 values: one 256-bit load of low nibbles broadcast to both halves (the upper
/// half shifted by 4), one 128-bit load of high bit pairs broadcast to the four 128-bit lanes
/// (each rotated by its own count so its pairs land on bits 4-5), one bit-select and one AND
/// to join them, and one `vpdpbusd`; lanes `4s..4s + 4` hold sub-block `s`. Per superblock
/// (four chunks) the sixteen factors `c_s` are formed in one vector, and the `−32` of every
/// value is one FMA: `Σ_s c_s · 32 · Σ_{i in s} xq_i` with the activations' sums.
///
/// With `BITS` 3, 3-bit rows (GGUF's Q3_K, `act8::u3_chunk`): per chunk one 128-bit load of
/// bit pairs broadcast to the four lanes and shifted per lane, an AND, and one masked add of
/// the third bits (a u64 loaded as a mask); `−4` for `−32`. With `BITS` 2 (Q2_K), the bit
/// pairs alone, and in place of the zero point the offsets `−dmin · mn` per 16 values times
/// the activations' sums, formed per superblock as the scales are.
pub(crate) fn dot_u6_q8<const J: usize, const BITS: usize>(
    _: Avx512Vnni,
    w: &[u8],
    x: [&super::act8::Q8Row; J],
    p: super::act8::SixBit,
) -> [f32; J] {
    use super::act8::{chunk_bytes, U6_CHUNK};
    let chunks = (x[0].q.len() / U6_CHUNK).min(w.len() / chunk_bytes(BITS));
    // Q6_K / Q3_K / Q2_K rows are whole superblocks (`QuantMatrix` keeps other widths in
    // another format).
    assert!(chunks.is_multiple_of(4), "rows of whole superblocks");
    assert!(
        six_covers::<BITS>(&p, 1, chunks)
            && x.iter().all(|r| r.q.len() == x[0].q.len()
                && r.scale.len() >= 2 * chunks
                && r.sums16.len() >= 4 * chunks),
        "parameters and activation sums for every chunk, activation rows of one length"
    );
    // SAFETY: the `Avx512Vnni` token exists, so detection found AVX-512 F/BW, VNNI and F16C;
    // the kernel reads `chunks` whole chunks of `w` and each `xq` and their parameters and
    // sums, inside the slices (checked above).
    unsafe {
        let rows = Rows::of(x, |x| &x.sums16);
        dot_u6_q8_vnni::<J, BITS>(w.as_ptr(), rows, SixPtrs::row(p, 0, chunks), chunks)
    }
}

/// [`super::act8::SixBit`] of one row as the VNNI loop reads it (`dmin` for 2 bits only).
#[derive(Clone, Copy)]
struct SixPtrs {
    sc: *const i8,
    d: *const f16,
    dmin: *const f16,
}

impl SixPtrs {
    /// Row `r`'s parameters in `p` (the whole matrix's), rows of `chunks` chunks.
    ///
    /// # Safety
    /// `p` must hold row `r`'s parameters (and offsets, if it has any).
    unsafe fn row(p: super::act8::SixBit, r: usize, chunks: usize) -> SixPtrs {
        let (sub, sup) = (r * 4 * chunks, r * chunks / 4);
        let has = p.has_offsets();
        SixPtrs {
            sc: p.sc.as_ptr().add(sub),
            d: p.d.as_ptr().add(sup),
            dmin: if has {
                p.dmin.as_ptr().add(sup)
            } else {
                std::ptr::null()
            },
        }
    }
}

/// Whether `p` covers `rows` rows of `chunks` chunks of `BITS` bits (offsets for 2 bits).
fn six_covers<const BITS: usize>(p: &super::act8::SixBit, rows: usize, chunks: usize) -> bool {
    let (sub, sup) = (rows * 4 * chunks, rows * chunks / 4);
    p.sc.len() >= sub && p.d.len() >= sup && (BITS != 2 || p.dmin.len() >= sup)
}

/// The 64 values of 6-bit chunk `ch`, one per byte.
///
/// # Safety
/// As [`dot_u6_q8_vnni`], for chunk `ch`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn u6_chunk(w: *const u8, ch: usize) -> __m512i {
    // Words of the upper 256 bits shift by 4 (values 32..64: the high nibbles).
    let halves = _mm512_setr_epi64(
        0,
        0,
        0,
        0,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
    );
    // 128-bit lane t holds the pairs of values 16t.. at bits 2t..2t + 2 of each byte: rotate
    // them to bits 4..6 (left by 4 − 2t, mod 32), inside their byte.
    let rotate = _mm512_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0, 30, 30, 30, 30);
    let p = w.add(ch * 48);
    let lo = _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i));
    let lo = _mm512_srlv_epi16(lo, halves);
    let hi = _mm512_broadcast_i32x4(_mm_loadu_si128(p.add(32) as *const __m128i));
    let hi = _mm512_rolv_epi32(hi, rotate);
    // Bits 0..4 from the nibbles, 4..8 from the pairs (0xE4: c ? a : b), then 6..8 cleared.
    let q = _mm512_ternarylogic_epi32::<0xE4>(lo, hi, _mm512_set1_epi8(0x0F));
    _mm512_and_si512(q, _mm512_set1_epi8(0x3F))
}

/// The 64 values of 3-bit chunk `ch` (`act8::u3_chunk`), one per byte.
///
/// # Safety
/// As [`dot_u6_q8_vnni`] with 3 bits, for chunk `ch`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn u3_chunk(w: *const u8, ch: usize) -> __m512i {
    let p = w.add(ch * super::act8::U3_CHUNK_BYTES);
    let q = bit_pairs(p);
    // (`q` ≤ 3: adding 4 sets the third bit.)
    let third = (p.add(16) as *const u64).read_unaligned();
    _mm512_mask_add_epi8(q, third, q, _mm512_set1_epi8(4))
}

/// The 64 values of 2-bit chunk `ch` (`act8::u2_value`), one per byte.
///
/// # Safety
/// As [`dot_u6_q8_vnni`] with 2 bits, for chunk `ch`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn u2_chunk(w: *const u8, ch: usize) -> __m512i {
    bit_pairs(w.add(ch * super::act8::U2_CHUNK_BYTES))
}

/// The 64 bit pairs of the 16 bytes at `p` (byte `j`, bits `2t..2t + 2`: value `j + 16t`).
///
/// # Safety
/// AVX-512 F/BW must be available; `p` must hold 16 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bit_pairs(p: *const u8) -> __m512i {
    // 128-bit lane t holds values 16t.. at bits 2t..2t + 2 of each byte.
    let shifts = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    let pairs = _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i));
    _mm512_and_si512(_mm512_srlv_epi32(pairs, shifts), _mm512_set1_epi8(3))
}

/// The integer sums `Σ q · xq` of chunk `ch`'s values `q` as f32 (16 lanes, four per
/// sub-block of 16 values; exact: at most `4 · 63 · 127` in magnitude).
///
/// # Safety
/// As [`dot_u6_q8_vnni`], for chunk `ch`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn u6_chunk_sums(q: __m512i, xq: *const i8, ch: usize) -> __m512 {
    let x = _mm512_loadu_si512(xq.add(ch * 64) as *const _);
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x))
}

/// # Safety
/// AVX-512 F/BW, VNNI, F16C, AVX2 and FMA must be available; `chunks` must be a multiple of
/// 4 (whole superblocks); `w` must hold `chunks` chunks of `BITS` bits, each row's `xq`
/// `chunks · 64`, `dx` `chunks · 2` and sums `chunks · 4` values, the scales `chunks · 4` and the `d`s
/// (with 2 bits the `dmin`s too) `chunks / 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
unsafe fn dot_u6_q8_vnni<const J: usize, const BITS: usize>(
    w: *const u8,
    Rows { xq, dx, sums }: Rows<J>,
    SixPtrs { sc, d, dmin }: SixPtrs,
    chunks: usize,
) -> [f32; J] {
    // Chunk j of a superblock takes factors 4j..4j + 4, each over four lanes.
    let spread = |j: i32| {
        _mm512_add_epi32(
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_set1_epi32(4 * j),
        )
    };
    let spreads = [spread(0), spread(1), spread(2), spread(3)];
    // Sub-block s of a superblock has the `dx` of its group s / 2.
    let pairs = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    // Per row two accumulators and, in a third, the `−32` terms (6 bits; `−4`: 3 bits) or the
    // offsets (2 bits: `−dmin · mn` per 16 values times the sums).
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); J], [_mm512_setzero_ps(); J]);
    let mut offsets = [_mm512_setzero_ps(); J];
    let block = 4 * super::act8::chunk_bytes(BITS);
    for b in 0..chunks / 4 {
        let ahead = w.wrapping_add(b * block + PREFETCH) as *const i8;
        for line in 0..block.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
        }
        let bytes = _mm_loadu_si128(sc.add(16 * b) as *const __m128i);
        // 2 bits: Q2_K's bytes, the scale in the low nibble and the offset in the high one.
        let s = if BITS == 2 {
            let low = _mm_and_si128(bytes, _mm_set1_epi8(0xF));
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low))
        } else {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))
        };
        let dv = _mm512_cvtph_ps(_mm256_set1_epi16((*d.add(b)).to_bits() as i16));
        let sd = _mm512_mul_ps(s, dv);
        let md = if BITS == 2 {
            let high = _mm_and_si128(_mm_srli_epi16::<4>(bytes), _mm_set1_epi8(0xF));
            let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high));
            _mm512_mul_ps(
                m,
                _mm512_cvtph_ps(_mm256_set1_epi16((*dmin.add(b)).to_bits() as i16)),
            )
        } else {
            _mm512_setzero_ps()
        };
        // The superblock's values once, for every row.
        let ch = 4 * b;
        let q = [0, 1, 2, 3].map(|i| match BITS {
            2 => u2_chunk(w, ch + i),
            3 => u3_chunk(w, ch + i),
            _ => u6_chunk(w, ch + i),
        });
        for j in 0..J {
            let dxs = _mm512_permutexvar_ps(
                pairs,
                _mm512_castps256_ps512(_mm256_loadu_ps(dx[j].add(8 * b))),
            );
            let c = _mm512_mul_ps(sd, dxs);
            let o = if BITS == 2 { _mm512_mul_ps(md, dxs) } else { c };
            offsets[j] = _mm512_fmadd_ps(o, _mm512_loadu_ps(sums[j].add(16 * b)), offsets[j]);
            for (i, &q) in q.iter().enumerate() {
                let acc = if i % 2 == 0 {
                    &mut acc0[j]
                } else {
                    &mut acc1[j]
                };
                let c = _mm512_permutexvar_ps(spreads[i], c);
                *acc = _mm512_fmadd_ps(u6_chunk_sums(q, xq[j], ch + i), c, *acc);
            }
        }
    }
    std::array::from_fn(|j| {
        // (2 bits: the offsets once; otherwise the zero point times the scaled sums.)
        let times = if BITS == 2 {
            1.0
        } else {
            super::act8::zero_point(BITS) as f32
        };
        _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j]))
            - times * _mm512_reduce_add_ps(offsets[j])
    })
}
