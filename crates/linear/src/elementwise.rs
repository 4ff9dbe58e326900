//! The forward pass's elementwise steps on host memory, fused and split over rayon's pool.
//!
//! candle runs a CPU elementwise op on 64 Ki elements or more on a pool of its own whose
//! workers spin after each op; beside rayon's workers (which run this crate's products) that
//! pool's spinning thread took ~12% of the samples of a 512-token prefill on a 2-core machine,
//! and every op is a separate pass over memory. The functions here compute, on contiguous f32
//! CPU tensors, what the candle expressions in their docs compute, in one pass on rayon's
//! pool; any other tensor (another device or dtype, a strided view) takes those candle
//! expressions. On the portable path the results are candle's bits (the same f32 operations
//! in the same order); on AVX-512 `exp` is a vectorised polynomial within 2 ulp
//! (`kernel::x86_512_exp`), so SiLU and softmax terms may differ from candle's in the last
//! bits.
//!
//! [`scaled_max`] and [`exp_sum`] are a softmax row's two passes on plain slices, for callers
//! folding softmax blocks of their own (the flash attention's online softmax).
//!
//! [`host_f32`] exposes the borrowed values themselves, for callers fusing steps of their own.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

use crate::Isa;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task: large enough to amortise a task, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// Below this many elements one thread does the whole op (splitting costs more).
const PARALLEL_MIN: usize = 64 * 1024;

/// The values of a contiguous f32 CPU storage under `layout`, borrowed; `None` for any other
/// storage (another device or dtype) or a non-contiguous layout.
pub fn host_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Some(&v[start..end]),
        _ => None,
    }
}

/// `f` of a CPU tensor's values as f32 rows: borrowed in place when `x` is a contiguous f32
/// tensor, else converted into a fresh vector first (the products' activations: no copy of an
/// f32 input per product). `None` when `x` is not on the CPU.
pub fn with_host_rows<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !x.device().is_cpu() {
        return Ok(None);
    }
    {
        let (storage, layout) = x.storage_and_layout();
        if let Some(xs) = host_f32(&storage, layout) {
            return Ok(Some(f(xs)));
        }
    }
    #[allow(clippy::disallowed_methods)] // a CPU tensor: no device copy
    let xs: Vec<f32> = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(Some(f(&xs)))
}

/// `silu(gate) * up` (SwiGLU's gate, `silu(g) = g / (1 + exp(-g))`) on [`Isa::detect`]'s
/// path: [`swiglu_with`].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    swiglu_with(Isa::detect(), gate, up)
}

/// `silu(gate) * up` on the path `isa`, fused for contiguous f32 CPU tensors: on the
/// portable path candle's `(candle_nn::ops::silu(gate)? * up)?` bit for bit, on AVX-512 with
/// a vectorised `exp` (within 2 ulp), on any other tensor that candle expression.
pub fn swiglu_with(isa: Isa, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let rows = |g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]| {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = isa.avx512f() {
            return crate::kernel::x86_512_exp::silu_mul(t, g, u, out);
        }
        let _ = isa;
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            o.write(silu(g) * u);
        }
    };
    if let Some(out) = zip_host(gate, up, rows)? {
        return Ok(out);
    }
    candle_nn::ops::silu(gate)? * up
}

/// `a + b` for tensors of the same shape: candle's `(a + b)?`, on rayon's pool for contiguous
/// f32 CPU tensors (a residual connection, say).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let rows = |xs: &[f32], ys: &[f32], out: &mut [MaybeUninit<f32>]| {
        for ((o, &x), &y) in out.iter_mut().zip(xs).zip(ys) {
            o.write(x + y);
        }
    };
    if let Some(out) = zip_host(a, b, rows)? {
        return Ok(out);
    }
    a + b
}

/// `max_i xs[i] · scale` (-inf for no values): a softmax row's maximum.
pub fn scaled_max(isa: Isa, xs: &[f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512f() {
        return crate::kernel::x86_512_exp::scaled_max(t, xs, scale);
    }
    let _ = isa;
    xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale))
}

/// `out[i] = exp(xs[i] · scale - shift)`, returning `Σ out[i]`: a softmax row's terms and
/// their sum for the row's maximum `shift`. The portable path sums in order with `f32::exp`;
/// AVX-512 in 16 lanes with a vectorised `exp` (within 2 ulp).
///
/// # Panics
/// If `xs` and `out` differ in length.
pub fn exp_sum(isa: Isa, xs: &[f32], scale: f32, shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(xs.len(), out.len(), "exp_sum: xs and out differ in length");
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = isa.avx512f() {
        return crate::kernel::x86_512_exp::exp_sum(t, xs, scale, shift, out);
    }
    let _ = isa;
    let mut sum = 0.0;
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = (x * scale - shift).exp();
        sum += *o;
    }
    sum
}

/// candle's f32 SiLU, written the same way so the results are the same bits.
#[inline]
fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// `f` over matching runs of two contiguous f32 CPU tensors of one shape (it writes every
/// element of its output run), or `None` (the caller's candle fallback) when either is not
/// such a tensor. Shape mismatches are errors.
fn zip_host(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(&[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        candle_core::bail!(
            "elementwise: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        );
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some(xs), Some(ys)) = (host_f32(&sa, la), host_f32(&sb, lb)) else {
        return Ok(None);
    };
    let out = map2(xs, ys, f);
    Ok(Some(Tensor::from_vec(out, a.dims(), a.device())?))
}

/// `f` over runs of `xs` and `ys` (split over rayon's pool when long), written once into
/// fresh memory (no zero-fill pass).
fn map2(
    xs: &[f32],
    ys: &[f32],
    fill: impl Fn(&[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let n = xs.len();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    if n < PARALLEL_MIN {
        fill(xs, ys, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .zip(ys.par_chunks(CHUNK))
            .for_each(|((d, x), y)| fill(x, y, d));
    }
    // SAFETY: `fill` writes every element of its output run, and the runs cover all `n`.
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn values(n: usize, seed: f32) -> Tensor {
        let v: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.731 + seed).sin()) * 9.0)
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    /// On the portable path both ops equal candle's expressions bit for bit, below and above
    /// the parallel split, on odd lengths (a partial last chunk); on every path SwiGLU is
    /// within 3 ulp-sized relative steps of candle's.
    #[test]
    fn fused_ops_are_candles_ops() {
        for n in [
            1,
            7,
            1000,
            PARALLEL_MIN - 1,
            PARALLEL_MIN + 3,
            5 * CHUNK + 11,
        ] {
            let (a, b) = (values(n, 0.3), values(n, 1.9));
            let want = (candle_nn::ops::silu(&a).unwrap() * &b).unwrap();
            let got = swiglu_with(Isa::portable(), &a, &b).unwrap();
            assert_eq!(bits(&got), bits(&want), "portable swiglu, n = {n}");
            for isa in Isa::supported() {
                let got: Vec<f32> = swiglu_with(isa, &a, &b).unwrap().to_vec1().unwrap();
                let want: Vec<f32> = want.to_vec1().unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 4e-7 * w.abs().max(1e-30),
                        "{isa:?}: {g} vs {w}"
                    );
                }
            }
            let want = (&a + &b).unwrap();
            assert_eq!(bits(&add(&a, &b).unwrap()), bits(&want), "add, n = {n}");
        }
    }

    /// Distance in representable f32 steps between two finite non-negative values.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    /// `exp_sum` against an f64 oracle on every path: each term within 2 ulp of the correctly
    /// rounded `exp` over [-110, 90] (underflow through the subnormals to 0, overflow to +inf),
    /// the sum within the terms' rounding; -inf gives 0 and NaN stays NaN.
    #[test]
    fn exp_sum_matches_the_f64_oracle_on_every_path() {
        let xs: Vec<f32> = (0..4099)
            .map(|i| -110.0 + i as f32 * (200.0 / 4099.0))
            .chain([0.0, -0.0, 1e-8, -1e-8, 88.72, -87.33, -103.9])
            .collect();
        for isa in Isa::supported() {
            // x·1 - 0 sweeps [-110, 90]: zero, subnormals, normals and overflow to +inf;
            // x·0.5 + 1.25 a scaled and shifted row, as the softmax calls it.
            for (scale, shift) in [(1.0f32, 0.0f32), (0.5, -1.25)] {
                let mut out = vec![0f32; xs.len()];
                let sum = exp_sum(isa, &xs, scale, shift, &mut out);
                let mut want_sum = 0f64;
                for (&x, &got) in xs.iter().zip(&out) {
                    let arg = x * scale - shift;
                    let want = (arg as f64).exp();
                    want_sum += want;
                    assert!(
                        ulps(got, want as f32) <= 2,
                        "{isa:?}: exp({arg}) = {got}, want {want}"
                    );
                }
                if (want_sum as f32).is_finite() {
                    let rel = ((sum as f64 - want_sum) / want_sum).abs();
                    assert!(rel < 1e-5, "{isa:?}: sum off by {rel}");
                } else {
                    assert_eq!(sum, f32::INFINITY, "{isa:?}: overflowing sum");
                }
            }
            let odd = [f32::NEG_INFINITY, f32::NAN, 200.0];
            let mut out = [1f32; 3];
            exp_sum(isa, &odd, 1.0, 0.0, &mut out);
            assert_eq!(out[0], 0.0, "{isa:?}: exp(-inf)");
            assert!(out[1].is_nan(), "{isa:?}: exp(NaN)");
            assert_eq!(out[2], f32::INFINITY, "{isa:?}: exp(200)");
            for n in [0, 1, 15, 16, 17, 100] {
                let row = &xs[..n];
                let want = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * 0.3));
                assert_eq!(scaled_max(isa, row, 0.3), want, "{isa:?}: max of {n}");
            }
        }
    }

    /// Strided views and other dtypes take the candle expressions; shapes keep their dims.
    #[test]
    fn other_tensors_fall_back_and_shapes_are_checked() {
        let a = values(6 * 5, 0.1).reshape((6, 5)).unwrap();
        let b = values(6 * 5, 0.2).reshape((5, 6)).unwrap();
        let t = b.t().unwrap(); // non-contiguous [6, 5]
        let got = add(&a, &t).unwrap();
        assert_eq!(got.dims(), &[6, 5]);
        assert_eq!(bits(&got), bits(&(&a + &t).unwrap()));
        let h = a.to_dtype(DType::BF16).unwrap();
        assert_eq!(swiglu(&h, &h).unwrap().dtype(), DType::BF16);
        assert!(add(&a, &b).is_err(), "[6, 5] + [5, 6] must be an error");
    }
}
