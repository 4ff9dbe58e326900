//! The matrix-vector kernel: `out[j, r] = Σ_c W[r, c] · x[j, c]` for a few activation rows `j`,
//! reading every weight row once. Portable code everywhere, AVX2 + FMA (+ F16C for f16) on
//! x86-64 when the CPU has them (checked at run time).
//!
//! Rows are processed four at a time so each activation load serves four weight rows. For
//! bf16 the activations are first laid out per 16-element block as its 8 even elements then
//! its 8 odd ones ([`WeightElem::prepare`]): one 256-bit load then holds 8 (even, odd) weight
//! pairs, and `w << 16` / `w & 0xffff0000` widen the evens and the odds exactly with one
//! integer op each, no shuffles. The fewer instructions per byte, the more cache lines a core
//! keeps in flight: on the 2-core dev machine that, not the arithmetic, decides how close bf16
//! gets to the memory's pace (`benchmarks/README.md`).

use std::borrow::Cow;

use half::{bf16, f16};
use rayon::prelude::*;

/// A weight element the kernel can widen to f32: f32, bf16 or f16.
pub(crate) trait WeightElem: Copy + Send + Sync + 'static {
    /// Activations laid out for [`WeightElem::dot`] / [`WeightElem::dot4`] (the identity
    /// unless the SIMD kernel wants another order).
    fn prepare(x: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(x)
    }

    /// `Σ_i w[i] · x[i]` in f32, `x` from [`WeightElem::prepare`] (`w.len() == x.len()`).
    fn dot(w: &[Self], x: &[f32]) -> f32;

    /// Four rows against one prepared `x`, prefetching the rows `next` (the following four)
    /// while it runs.
    fn dot4(w: [&[Self]; 4], x: &[f32], next: [&[Self]; 4]) -> [f32; 4] {
        let _ = next;
        w.map(|row| Self::dot(row, x))
    }

    /// The exact f32 value.
    fn widen(self) -> f32;
}

/// Target bytes of weights per rayon task: large enough that scheduling is noise, small enough
/// that both cores stay busy until the end on small matrices.
const TASK_BYTES: usize = 256 << 10;

/// `[N, K]` weights `w` times `m` rows `xs` `[m, K]` → `[m, N]`.
pub(crate) fn matmul_rows<W: WeightElem>(w: &[W], k: usize, xs: &[f32], m: usize) -> Vec<f32> {
    let n = w.len().checked_div(k).unwrap_or(0);
    if n == 0 || m == 0 {
        return vec![0.0; n * m];
    }
    let xs: Vec<Cow<[f32]>> = xs.chunks_exact(k).map(W::prepare).collect();
    let row_bytes = k * std::mem::size_of::<W>();
    // At least 8 tasks per thread for balance, each at least TASK_BYTES unless the matrix is
    // smaller than that.
    let per_task = (n / (8 * rayon::current_num_threads())).max(TASK_BYTES / row_bytes.max(1));
    let rows_per_task = per_task.clamp(1, n);
    let mut out_t = vec![0f32; n * m]; // [N, m]
    out_t
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * k))
        .for_each(|(out, rows)| {
            let n_quads = rows.len() / (4 * k);
            let mut quads = rows.chunks_exact(4 * k);
            let mut outs = out.chunks_exact_mut(4 * m);
            for (qi, (o, quad)) in (&mut outs).zip(&mut quads).enumerate() {
                let r = split4(quad, k);
                // The next quad's rows are prefetched while these four are summed (the last
                // quad of a task prefetches its own rows, which are in cache already).
                let next = if qi + 1 < n_quads {
                    split4(&rows[(qi + 1) * 4 * k..], k)
                } else {
                    r
                };
                for (j, x) in xs.iter().enumerate() {
                    let next = if j == 0 { next } else { r };
                    for (q, v) in W::dot4(r, x, next).into_iter().enumerate() {
                        o[q * m + j] = v;
                    }
                }
            }
            let rest = outs.into_remainder().chunks_exact_mut(m);
            for (o, row) in rest.zip(quads.remainder().chunks_exact(k)) {
                for (o, x) in o.iter_mut().zip(&xs) {
                    *o = W::dot(row, x);
                }
            }
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; n * m];
    for (r, row) in out_t.chunks_exact(m).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * n + r] = v;
        }
    }
    out
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

/// Portable dot product: 16 independent accumulators so the compiler vectorises it without
/// reassociating (no fast-math in Rust).
fn dot_portable<W: WeightElem>(w: &[W], x: &[f32]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

impl WeightElem for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2::dot_f32(w, x) };
        }
        dot_portable(w, x)
    }

    fn dot4(w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: as above.
            return unsafe { avx2::dot4_f32(w, x, next) };
        }
        let _ = next;
        w.map(|row| dot_portable(row, x))
    }

    fn widen(self) -> f32 {
        self
    }
}

impl WeightElem for bf16 {
    fn prepare(x: &[f32]) -> Cow<'_, [f32]> {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            return Cow::Owned(avx2::split_even_odd(x));
        }
        Cow::Borrowed(x)
    }

    fn dot(w: &[bf16], x: &[f32]) -> f32 {
        Self::dot4([w, w, w, w], x, [w, w, w, w])[0]
    }

    fn dot4(w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 and FMA are present, and `prepare` split `x` (same check).
            return unsafe { avx2::dot4_bf16(w, x, next) };
        }
        let _ = next;
        w.map(|row| dot_portable(row, x))
    }

    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl WeightElem for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        Self::dot4([w, w, w, w], x, [w, w, w, w])[0]
    }

    fn dot4(w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: AVX2, FMA and F16C are present (checked just above).
            return unsafe { avx2::dot4_f16(w, x, next) };
        }
        let _ = next;
        w.map(|row| dot_portable(row, x))
    }

    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// AVX2 + FMA kernels. Generic bodies are `inline(always)` so that they, and the intrinsics in
/// them, are compiled inside each `#[target_feature]` entry point (the pattern `memchr` uses).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    use super::WeightElem;

    /// Per 16-element block: the 8 even elements, then the 8 odd ones; a shorter tail is kept
    /// as is (the kernels finish it in scalar code in natural order).
    pub(super) fn split_even_odd(x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        let blocks = x.chunks_exact(16);
        let tail = blocks.remainder();
        for b in blocks {
            out.extend(b.iter().step_by(2));
            out.extend(b.iter().skip(1).step_by(2));
        }
        out.extend_from_slice(tail);
        out
    }

    /// Horizontal sum of 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    /// Sums the accumulators of each row and adds the scalar tail `from..` in natural order.
    #[inline(always)]
    unsafe fn finish<W: WeightElem>(
        w: [&[W]; 4],
        x: &[f32],
        lo: [__m256; 4],
        hi: [__m256; 4],
        from: usize,
        len: usize,
    ) -> [f32; 4] {
        let mut out = [0f32; 4];
        for r in 0..4 {
            out[r] = hsum(_mm256_add_ps(lo[r], hi[r]));
            for j in from..len {
                out[r] += w[r][j].widen() * x[j];
            }
        }
        out
    }

    /// Prefetches, once per 64-byte line, the line of each `next` row at element `i`
    /// (`step` elements are consumed per call).
    #[inline(always)]
    unsafe fn prefetch_line<W>(next: [&[W]; 4], i: usize, step: usize) {
        let per_line = 64 / std::mem::size_of::<W>();
        if i % per_line < step {
            for row in next {
                if i < row.len() {
                    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(i) as *const i8);
                }
            }
        }
    }

    /// Length every row and `x` share.
    fn common_len<W>(w: &[&[W]; 4], x: &[f32]) -> usize {
        w.iter().map(|r| r.len()).min().unwrap_or(0).min(x.len())
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let len = w.len().min(x.len());
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= len {
            for (u, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(o)), _mm256_loadu_ps(px.add(o)), *a);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(sum);
        for j in i..len {
            total += w[j] * x[j];
        }
        total
    }

    /// 8 weights widened to f32 (f32 and f16).
    trait Load8 {
        /// # Safety
        /// `p` must point at 8 readable elements, inside a function with the needed features.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// Four rows, 16 elements per iteration: two activation loads shared by eight weight loads
    /// into eight independent accumulators, then a scalar tail.
    #[inline(always)]
    unsafe fn dot4_widening<W: Load8 + WeightElem>(
        w: [&[W]; 4],
        x: &[f32],
        next: [&[W]; 4],
    ) -> [f32; 4] {
        let len = common_len(&w, x);
        let p = w.map(|r| r.as_ptr());
        let px = x.as_ptr();
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= len {
            prefetch_line(next, i, 16);
            let (x0, x1) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for r in 0..4 {
                lo[r] = _mm256_fmadd_ps(W::load8(p[r].add(i)), x0, lo[r]);
                hi[r] = _mm256_fmadd_ps(W::load8(p[r].add(i + 8)), x1, hi[r]);
            }
            i += 16;
        }
        finish(w, x, lo, hi, i, len)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_f32(w: [&[f32]; 4], x: &[f32], next: [&[f32]; 4]) -> [f32; 4] {
        dot4_widening(w, x, next)
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_f16(w: [&[f16]; 4], x: &[f32], next: [&[f16]; 4]) -> [f32; 4] {
        dot4_widening(w, x, next)
    }

    /// Four bf16 rows against `x` laid out by [`split_even_odd`]: per 16-element block one
    /// 256-bit load per row holds 8 (even, odd) pairs; `<< 16` widens the evens and
    /// `& 0xffff0000` the odds (bf16 is the top half of an f32, so both are exact).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `x` must come from [`split_even_odd`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4_bf16(w: [&[bf16]; 4], x: &[f32], next: [&[bf16]; 4]) -> [f32; 4] {
        let len = common_len(&w, x);
        let p = w.map(|r| r.as_ptr());
        let px = x.as_ptr();
        let odd_mask = _mm256_set1_epi32(0xffff_0000_u32 as i32);
        let mut lo = [_mm256_setzero_ps(); 4];
        let mut hi = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= len {
            prefetch_line(next, i, 16);
            let (even_x, odd_x) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
            for r in 0..4 {
                let pairs = _mm256_loadu_si256(p[r].add(i) as *const __m256i);
                let even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, odd_mask));
                lo[r] = _mm256_fmadd_ps(even, even_x, lo[r]);
                hi[r] = _mm256_fmadd_ps(odd, odd_x, hi[r]);
            }
            i += 16;
        }
        finish(w, x, lo, hi, i, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// f64 reference of `[m, N]` with the weights widened exactly.
    fn reference(w: &[f32], k: usize, xs: &[f32], m: usize) -> Vec<f64> {
        let n = w.len() / k;
        let mut out = vec![0f64; m * n];
        for j in 0..m {
            for r in 0..n {
                out[j * n + r] = (0..k)
                    .map(|c| w[r * k + c] as f64 * xs[j * k + c] as f64)
                    .sum();
            }
        }
        out
    }

    fn check<W: WeightElem>(
        w32: &[f32],
        narrow: impl Fn(f32) -> W,
        k: usize,
        xs: &[f32],
        m: usize,
    ) {
        let w: Vec<W> = w32.iter().map(|&v| narrow(v)).collect();
        // The reference sees the rounded weights, so only the summation order differs.
        let widened: Vec<f32> = w.iter().map(|&v| v.widen()).collect();
        let want = reference(&widened, k, xs, m);
        let got = matmul_rows(&w, k, xs, m);
        assert_eq!(got.len(), want.len());
        let scale: f64 = (k as f64).sqrt();
        for (g, e) in got.iter().zip(&want) {
            assert!(
                (*g as f64 - e).abs() <= 1e-5 * scale * (1.0 + e.abs()),
                "{g} vs {e} (k {k}, m {m})"
            );
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

    #[test]
    fn simd_and_portable_agree() {
        let k = 1000; // 31 blocks of 32, one of 8, a tail of 0; plus odd lengths below
        for len in [k, 999, 37, 7, 0] {
            let w: Vec<bf16> = (0..len).map(|i| bf16::from_f32((i as f32).cos())).collect();
            let x: Vec<f32> = (0..len).map(|i| (i as f32 * 0.5).sin()).collect();
            let slow = dot_portable(&w, &x);
            let xp = bf16::prepare(&x);
            let fast = bf16::dot(&w, &xp);
            assert!((fast - slow).abs() < 1e-3, "len {len}: {fast} vs {slow}");
            let four = bf16::dot4([&w, &w, &w, &w], &xp, [&w, &w, &w, &w]);
            assert!(
                four.iter().all(|v| (v - slow).abs() < 1e-3),
                "len {len}: {four:?}"
            );
        }
    }

    #[test]
    fn many_tasks_cover_every_row() {
        // Enough rows that the work is split into several rayon tasks of unequal last size.
        let (n, k) = (5000, 70);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32).collect();
        let xs = vec![1f32; k];
        let out = matmul_rows(&w, k, &xs, 1);
        for (r, v) in out.iter().enumerate() {
            let want: f32 = (0..k).map(|c| ((r * k + c) % 13) as f32).sum();
            assert_eq!(*v, want, "row {r}");
        }
    }
}
