//! The forward pass's elementwise steps on host memory, fused and split over rayon's pool.
//!
//! candle runs a CPU elementwise op on 64 Ki elements or more on a pool of its own whose
//! workers spin after each op; beside rayon's workers (which run this crate's products) that
//! pool's spinning thread took ~12% of the samples of a 512-token prefill on a 2-core machine,
//! and every op is a separate pass over memory. The functions here compute, on contiguous f32
//! CPU tensors, exactly what the candle expressions in their docs compute (the same f32
//! operations in the same order, so the same bits), in one pass on rayon's pool; any other
//! tensor (another device or dtype, a strided view) takes those candle expressions.
//!
//! [`host_f32`] exposes the borrowed values themselves, for callers fusing steps of their own.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
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

/// `silu(gate) * up` (SwiGLU's gate, `silu(g) = g / (1 + exp(-g))`): candle's
/// `(candle_nn::ops::silu(gate)? * up)?`, fused for contiguous f32 CPU tensors.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if let Some(out) = zip_host(gate, up, |g, u| silu(g) * u)? {
        return Ok(out);
    }
    candle_nn::ops::silu(gate)? * up
}

/// `a + b` for tensors of the same shape: candle's `(a + b)?`, on rayon's pool for contiguous
/// f32 CPU tensors (a residual connection, say).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if let Some(out) = zip_host(a, b, |x, y| x + y)? {
        return Ok(out);
    }
    a + b
}

/// candle's f32 SiLU, written the same way so the results are the same bits.
#[inline]
fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// `f` applied elementwise to two contiguous f32 CPU tensors of one shape, or `None` (the
/// caller's candle fallback) when either is not such a tensor. Shape mismatches are errors.
fn zip_host(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Option<Tensor>> {
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

/// `f(xs[i], ys[i])` for every `i`, written once into fresh memory (no zero-fill pass).
fn map2(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let n = xs.len();
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let fill = |dst: &mut [MaybeUninit<f32>], xs: &[f32], ys: &[f32]| {
        for ((d, &x), &y) in dst.iter_mut().zip(xs).zip(ys) {
            d.write(f(x, y));
        }
    };
    let dst = &mut out.spare_capacity_mut()[..n];
    if n < PARALLEL_MIN {
        fill(dst, xs, ys);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .zip(ys.par_chunks(CHUNK))
            .for_each(|((d, x), y)| fill(d, x, y));
    }
    // SAFETY: every one of the `n` elements was written above.
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

    /// Both ops equal candle's expressions bit for bit, below and above the parallel split,
    /// on odd lengths (a partial last chunk).
    #[test]
    fn fused_ops_are_candles_ops_bit_for_bit() {
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
            assert_eq!(
                bits(&swiglu(&a, &b).unwrap()),
                bits(&want),
                "swiglu, n = {n}"
            );
            let want = (&a + &b).unwrap();
            assert_eq!(bits(&add(&a, &b).unwrap()), bits(&want), "add, n = {n}");
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
