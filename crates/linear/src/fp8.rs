//! FP8 weights as DeepSeek-V3/R1 ship them: e4m3 values with one f32 scale per block.
//!
//! `W[r, c] = e4m3(q[r, c]) · scale_inv[r / bn, c / bk]` (the checkpoint's `weight` and
//! `weight_scale_inv`, blocks of `bn x bk` = 128 x 128; edge blocks may be partial). The
//! kernels keep the byte per weight: each e4m3 value is widened exactly to f32 in registers
//! (through its f16 bit pattern: the value over 2⁸, then `x 2⁸`), the products over one block of
//! `K` are summed in f32, and the sum is multiplied by the block's scale. That equals HF's
//! f32 dequantisation (`q.to(f32) * scale`, then the matmul) up to f32 summation order:
//! `Σ_c x·(q·s) = s·Σ_c x·q` exactly in real arithmetic.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};
use float8::F8E4M3;

use crate::kernel::{self, BlockScales, Scales};
use crate::{Isa, SharedBytes};

/// DeepSeek's FP8 block size: 128 x 128.
pub const FP8_BLOCK: (usize, usize) = (128, 128);

/// A matrix `[N, K]` of e4m3 values with per-block f32 scales, kept as shipped: in a tensor
/// ([`Fp8Matrix::new`]) or, on the host, in bytes someone else holds, such as the memory map of
/// the checkpoint shard ([`Fp8Matrix::from_shared`]: no copy at load).
#[derive(Debug, Clone)]
pub struct Fp8Matrix {
    values: Values,
    shape: [usize; 2],
    scale_inv: Tensor,
    scales: Vec<f32>,
    block: (usize, usize),
    /// Whether some byte is a NaN code (`S.1111.111`); without one (every trained checkpoint)
    /// the kernels take the faster widening.
    has_nan: bool,
}

/// Where the e4m3 bytes are.
#[derive(Debug, Clone)]
enum Values {
    /// A contiguous `[N, K]` tensor of dtype F8E4M3, on any device.
    Tensor(Tensor),
    /// `N · K` bytes in host memory, row-major.
    Shared(SharedBytes),
}

/// `bytes` as e4m3 values.
fn as_e4m3(bytes: &[u8]) -> &[F8E4M3] {
    // SAFETY: `F8E4M3` is `repr(transparent)` over `u8` (float8 0.7), so the slices have the
    // same layout, length and alignment, and every byte is a valid `F8E4M3`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const F8E4M3, bytes.len()) }
}

impl Fp8Matrix {
    /// `q` `[N, K]` in [`DType::F8E4M3`] and `scale_inv` `[ceil(N / bn), ceil(K / bk)]` (any
    /// float dtype; read as f32) for blocks `block = (bn, bk)`. Errors name what does not fit.
    pub fn new(q: Tensor, scale_inv: &Tensor, block: (usize, usize)) -> Result<Self> {
        let (n, k) = q.dims2()?;
        if q.dtype() != DType::F8E4M3 {
            candle_core::bail!("fp8 weight: expected dtype F8E4M3, found {:?}", q.dtype());
        }
        Ok(Self::checked(Values::Tensor(q.contiguous()?), [n, k], scale_inv, block)?.scanned(true))
    }

    /// The `[N, K]` e4m3 values `bytes` (row-major, one byte per value), used where they are;
    /// `scale_inv` and `block` as in [`Fp8Matrix::new`]. Errors name what does not fit.
    pub fn from_shared(
        bytes: SharedBytes,
        (n, k): (usize, usize),
        scale_inv: &Tensor,
        block: (usize, usize),
    ) -> Result<Self> {
        if Some(bytes.len()) != n.checked_mul(k) {
            candle_core::bail!(
                "fp8 weight: {} bytes for a [{n}, {k}] matrix of one byte per value",
                bytes.len()
            );
        }
        Ok(Self::checked(Values::Shared(bytes), [n, k], scale_inv, block)?.scanned(true))
    }

    /// `values` of `shape` with `scale_inv` checked against `block`, taken as holding NaN
    /// codes until scanned ([`Fp8Matrix::scanned`]).
    fn checked(
        values: Values,
        shape: [usize; 2],
        scale_inv: &Tensor,
        block: (usize, usize),
    ) -> Result<Self> {
        let [n, k] = shape;
        let (bn, bk) = block;
        if bn == 0 || bk == 0 {
            candle_core::bail!("fp8 weight: block sizes must be > 0, found {bn} x {bk}");
        }
        let want = (n.div_ceil(bn), k.div_ceil(bk));
        if scale_inv.dims2()? != want {
            candle_core::bail!(
                "weight_scale_inv: expected {:?} for a [{n}, {k}] weight in {bn} x {bk} blocks, found {:?}",
                [want.0, want.1],
                scale_inv.dims()
            );
        }
        let scale_inv = scale_inv.to_dtype(DType::F32)?;
        let scales = crate::host::vec1(&scale_inv.flatten_all()?)?;
        Ok(Self {
            values,
            shape,
            scale_inv,
            scales,
            block,
            has_nan: true,
        })
    }

    /// The matrix with its NaN flag settled: a pass over the values for NaN codes if it
    /// `may_hold_nan` (false for a part or transpose of values without any), true off the host.
    fn scanned(mut self, may_hold_nan: bool) -> Self {
        self.has_nan = may_hold_nan
            && self
                .with_host_values(|v| kernel::E4m3NoNan::view(v).is_none())
                .unwrap_or(true);
        self
    }

    /// `f` of the values, if they are in host memory (as a slice of the stored bytes).
    fn with_host_values<R>(&self, f: impl FnOnce(&[F8E4M3]) -> R) -> Option<R> {
        match &self.values {
            Values::Shared(bytes) => Some(f(as_e4m3(bytes.as_slice()))),
            Values::Tensor(q) => {
                let (storage, layout) = q.storage_and_layout();
                match (&*storage, layout.contiguous_offsets()) {
                    (Storage::Cpu(CpuStorage::F8E4M3(v)), Some((start, end))) => {
                        Some(f(&v[start..end]))
                    }
                    _ => None,
                }
            }
        }
    }

    /// `[N, K]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.shape[0], self.shape[1])
    }

    /// `[N, K]` as a slice.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The block size `(bn, bk)`.
    pub fn block(&self) -> (usize, usize) {
        self.block
    }

    /// The e4m3 values `[N, K]` as a tensor: the matrix's own, or a host copy of the bytes of
    /// a matrix made by [`Fp8Matrix::from_shared`].
    pub fn weight(&self) -> Result<Tensor> {
        match &self.values {
            Values::Tensor(q) => Ok(q.clone()),
            Values::Shared(bytes) => {
                Tensor::from_slice(as_e4m3(bytes.as_slice()), self.dims(), &Device::Cpu)
            }
        }
    }

    /// Backs the matrix's values and scales with transparent huge pages where the kernel
    /// allows, as [`crate::QuantMatrix::advise_huge_pages`] does. Returns whether it applied;
    /// values never change.
    pub fn advise_huge_pages(&self) -> bool {
        crate::huge_pages::advise_spans(self.host_spans()) > 0
    }

    /// The address ranges of the matrix's host storage: its values (in a memory map when used
    /// in place, [`Fp8Matrix::from_shared`]) and its scales. A device tensor has none.
    pub(crate) fn host_spans(&self) -> Vec<std::ops::Range<usize>> {
        let values = match &self.values {
            Values::Tensor(q) => crate::huge_pages::tensor_span(q),
            Values::Shared(bytes) => Some(crate::huge_pages::bytes_span(bytes.as_slice())),
        };
        values
            .into_iter()
            .chain([crate::huge_pages::slice_span(&self.scales)])
            .collect()
    }

    /// Whether the values are bytes someone else holds, used in place
    /// ([`Fp8Matrix::from_shared`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.values, Values::Shared(_))
    }

    /// Where the values are.
    pub fn device(&self) -> Device {
        match &self.values {
            Values::Tensor(q) => q.device().clone(),
            Values::Shared(_) => Device::Cpu,
        }
    }

    /// The f32 scales `[ceil(N / bn), ceil(K / bk)]`.
    pub fn scale_inv(&self) -> &Tensor {
        &self.scale_inv
    }

    /// Bytes a product reads: one per weight plus the scales.
    pub fn bytes(&self) -> usize {
        self.shape[0] * self.shape[1] + 4 * self.scales.len()
    }

    /// Rows `start..start + len` as a matrix of their own, over the same bytes (no copy) and
    /// the scales of their block rows: exact, the same values. `start` must begin a block row
    /// (a multiple of `bn`), since the rows of the part share their block's scale. Errors name
    /// what does not fit.
    pub fn rows(&self, start: usize, len: usize) -> Result<Self> {
        let (n, k) = self.dims();
        let (bn, _) = self.block;
        let inside = start.checked_add(len).is_some_and(|end| end <= n);
        if !start.is_multiple_of(bn) || !inside || len == 0 {
            candle_core::bail!(
                "fp8 weight: rows {start}.. ({len} rows) of a [{n}, {k}] matrix in {bn}-row \
                 blocks must be non-empty, lie inside it and start on a block row"
            );
        }
        let values = match &self.values {
            Values::Tensor(q) => Values::Tensor(q.narrow(0, start, len)?),
            Values::Shared(bytes) => Values::Shared(bytes.slice(start * k..(start + len) * k)?),
        };
        let scale_inv = self.scale_inv.narrow(0, start / bn, len.div_ceil(bn))?;
        Ok(Self::checked(values, [len, k], &scale_inv, self.block)?.scanned(self.has_nan))
    }

    /// `Wᵀ` `[K, N]`, exact: the e4m3 bytes transposed (a copy), the scale grid transposed,
    /// blocks `(bk, bn)`. Block `(i, j)` of `W` is block `(j, i)` of `Wᵀ` with the same scale,
    /// partial edge blocks included, so the values are the same numbers.
    pub fn transpose(&self) -> Result<Self> {
        let (n, k) = self.dims();
        let (bn, bk) = self.block;
        let transposed = self.with_host_values(|v| {
            let mut t = vec![F8E4M3::from_bits(0); n * k];
            for (r, row) in v.chunks_exact(k.max(1)).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    t[c * n + r] = x;
                }
            }
            t
        });
        let q = match transposed {
            Some(t) => Tensor::from_vec(t, (k, n), &Device::Cpu)?,
            None => self.weight()?.t()?.contiguous()?,
        };
        let scale_inv = self.scale_inv.t()?.contiguous()?;
        Ok(Self::checked(Values::Tensor(q), [k, n], &scale_inv, (bk, bn))?.scanned(self.has_nan))
    }

    /// The dequantised f32 matrix `W[r, c] = q[r, c] · scale_inv[r / bn, c / bk]` (what HF
    /// computes at load; the oracle of the kernels).
    pub fn dequantize(&self) -> Result<Tensor> {
        let (n, k) = self.dims();
        let (bn, bk) = self.block;
        let q = self.weight()?;
        let dev = q.device();
        let rows: Vec<u32> = (0..n).map(|r| (r / bn) as u32).collect();
        let cols: Vec<u32> = (0..k).map(|c| (c / bk) as u32).collect();
        let scale = self
            .scale_inv
            .to_device(dev)?
            .index_select(&Tensor::new(rows, dev)?, 0)?
            .index_select(&Tensor::new(cols, dev)?, 1)?;
        q.to_dtype(DType::F32)? * scale
    }
}

/// `x · Wᵀ` for `x` `[..., K]` and an FP8 `w`; the result has `x`'s dtype, computed in f32.
/// On the CPU the kernels read the bytes as stored ([`Isa::detect`]'s path); elsewhere `w` is
/// dequantised first.
pub fn linear_fp8(x: &Tensor, w: &Fp8Matrix) -> Result<Tensor> {
    linear_fp8_with(Isa::detect(), x, w)
}

/// [`linear_fp8`] on the kernel path `isa`.
pub fn linear_fp8_with(isa: Isa, x: &Tensor, w: &Fp8Matrix) -> Result<Tensor> {
    let (n, k) = w.dims();
    let dims = x.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!(
            "linear_fp8: input {dims:?} does not end in the weight's in-features {k} (weight [{n}, {k}])"
        );
    }
    let m = x.elem_count() / k;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = n;
    let y = crate::elementwise::with_host_rows(x, |xs| {
        w.with_host_values(|v: &[F8E4M3]| {
            if w.has_nan {
                matmul_fp8(isa, v, k, &w.scales, w.block, xs, m)
            } else {
                let v = kernel::E4m3NoNan::checked_before(v);
                matmul_fp8(isa, v, k, &w.scales, w.block, xs, m)
            }
        })
    })?;
    if let Some(y) = y.flatten() {
        return Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype());
    }
    let wf = w.dequantize()?.to_device(x.device())?.to_dtype(x.dtype())?;
    x.reshape((m, k))?.matmul(&wf.t()?)?.reshape(out_dims)
}

/// The kernels on host memory: `[m, N]` row-major.
fn matmul_fp8<W: kernel::WeightElem>(
    isa: Isa,
    q: &[W],
    k: usize,
    scales: &[f32],
    (rows, cols): (usize, usize),
    xs: &[f32],
    m: usize,
) -> Vec<f32> {
    let scales = BlockScales {
        scale: Scales::F32(scales),
        rows,
        cols,
    };
    kernel::product(isa, q, k, xs, m, Some(&scales))
}
