//! The matrix-vector kernel: `out[j, r] = Σ_c W[r, c] · x[j, c]` for a few activation rows `j`,
//! reading every weight row once. Portable code everywhere, AVX2 + FMA (+ F16C for f16) on
//! x86-64 when the CPU has them (checked at run time).

use half::{bf16, f16};
use rayon::prelude::*;

/// A weight element the kernel can widen to f32: f32, bf16 or f16.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// `Σ_i w[i] · x[i]` in f32 (`w.len() == x.len()`).
    fn dot(w: &[Self], x: &[f32]) -> f32;
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
            for (o, row) in out.chunks_exact_mut(m).zip(rows.chunks_exact(k)) {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = W::dot(row, &xs[j * k..(j + 1) * k]);
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

/// Portable dot product: 16 independent accumulators so the compiler vectorises it without
/// reassociating (no fast-math in Rust).
fn dot_portable<W: Copy>(w: &[W], x: &[f32], widen: impl Fn(W) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (cw, cx) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, b)| widen(a) * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for ((s, &a), b) in acc.iter_mut().zip(a).zip(b) {
            *s += widen(a) * b;
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl WeightElem for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2::dot_f32(w, x) };
        }
        dot_portable(w, x, |v| v)
    }
}

impl WeightElem for bf16 {
    fn dot(w: &[bf16], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { avx2::dot_bf16(w, x) };
        }
        dot_portable(w, x, bf16::to_f32)
    }
}

impl WeightElem for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: AVX2, FMA and F16C are present (checked just above).
            return unsafe { avx2::dot_f16(w, x) };
        }
        dot_portable(w, x, f16::to_f32)
    }
}

/// AVX2 + FMA kernels. The generic body is `inline(always)` so that it, and the intrinsics in
/// it, are compiled inside each `#[target_feature]` entry point (the pattern `memchr` uses).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// 8 weights widened to f32, and one weight for the scalar tail.
    trait Load8: Copy {
        /// # Safety
        /// `p` must point at 8 readable elements, inside a function with the needed features.
        unsafe fn load8(p: *const Self) -> __m256;
        fn widen(self) -> f32;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        fn widen(self) -> f32 {
            self
        }
    }

    impl Load8 for bf16 {
        /// Zero-extend to 32 bits and shift into the high half (exact: bf16 is the top half of
        /// an f32).
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let raw = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
        }
        fn widen(self) -> f32 {
            self.to_f32()
        }
    }

    impl Load8 for f16 {
        /// F16C conversion.
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        fn widen(self) -> f32 {
            self.to_f32()
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        dot(w, x)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        dot(w, x)
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        dot(w, x)
    }

    /// 32 elements per iteration into four independent accumulators (hides the FMA latency),
    /// then 8 at a time, then a scalar tail.
    #[inline(always)]
    unsafe fn dot<W: Load8>(w: &[W], x: &[f32]) -> f32 {
        let len = w.len().min(x.len());
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= len {
            for (u, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *a = _mm256_fmadd_ps(W::load8(pw.add(o)), _mm256_loadu_ps(px.add(o)), *a);
            }
            i += 32;
        }
        while i + 8 <= len {
            acc[0] = _mm256_fmadd_ps(W::load8(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // Horizontal sum of the 8 lanes.
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let single = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1));
        let mut total = _mm_cvtss_f32(single);
        for j in i..len {
            total += w[j].widen() * x[j];
        }
        total
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
        let widened: Vec<f32> = w.iter().map(|&v| W::dot(&[v], &[1.0])).collect();
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
            let fast = bf16::dot(&w, &x);
            let slow = dot_portable(&w, &x, bf16::to_f32);
            assert!((fast - slow).abs() < 1e-3, "len {len}: {fast} vs {slow}");
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
