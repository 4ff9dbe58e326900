//! [`Matrix`]: a weight matrix in whichever format it is kept, and the one product every
//! layer calls.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ggml::{ggml_type_from_id, ggml_type_name, GgmlMatrix};
use crate::quant::{linear_quant_with, QuantFormat, QuantMatrix};
use crate::{
    linear_bf16_activations_with, linear_fp8_with, linear_with, Fp8Matrix, Isa, FP8_BLOCK,
};

/// A conversion of one matrix into another format ([`Matrix::quantize`],
/// [`Matrix::with_bf16_activations`], ...), as the layer crates' `map_*` walkers take it.
pub type MapMatrix<'a> = dyn Fn(&Matrix) -> Result<Matrix> + Sync + 'a;

/// A weight matrix `[N, K]` (`[out, in]`, the checkpoint's layout) in one of the formats the
/// kernels read as stored: a dense tensor (f32, bf16, f16), FP8 e4m3 with block scales as
/// DeepSeek ships it, or 8/4-bit block-quantised ([`QuantMatrix`]). Cloning is cheap (tensors
/// and the quantised data are shared).
///
/// Layers hold their projections as `Matrix` and call [`Matrix::forward`]; the format is
/// chosen where the model is loaded ([`Matrix::quantize`]).
#[derive(Debug, Clone)]
pub enum Matrix {
    /// f32, bf16 or f16 values (widened in registers on the CPU).
    Dense(Tensor),
    /// bf16 values multiplied with activations rounded to bf16, as HF's bf16 models and
    /// llama.cpp compute (`vdpbf16ps` on AVX512-BF16 CPUs: [`crate::linear_bf16_activations_with`]).
    /// Made by [`Matrix::with_bf16_activations`].
    Bf16Activations(Tensor),
    /// e4m3 values with f32 block scales.
    Fp8(Arc<Fp8Matrix>),
    /// 8-bit or 4-bit groups with f32 parameters (host memory).
    Quant(Arc<QuantMatrix>),
    /// GGML blocks as a GGUF file stores them (host memory, candle's kernels).
    Ggml(Arc<GgmlMatrix>),
}

impl From<Tensor> for Matrix {
    fn from(t: Tensor) -> Self {
        Matrix::Dense(t)
    }
}

impl From<Fp8Matrix> for Matrix {
    fn from(m: Fp8Matrix) -> Self {
        Matrix::Fp8(Arc::new(m))
    }
}

impl From<QuantMatrix> for Matrix {
    fn from(m: QuantMatrix) -> Self {
        Matrix::Quant(Arc::new(m))
    }
}

impl From<GgmlMatrix> for Matrix {
    fn from(m: GgmlMatrix) -> Self {
        Matrix::Ggml(Arc::new(m))
    }
}

/// How a layer obtains its weight matrices by name. [`ThroughVarBuilder`] reads them through
/// the `VarBuilder` ([`Matrix::load`]); a checkpoint loader that knows where the bytes lie can
/// do better, e.g. use a memory-mapped shard's FP8 bytes in place
/// ([`crate::Fp8Matrix::from_shared`]). The layer crates' `load_with` functions take one.
pub trait MatrixLoader: Sync {
    /// The matrix `name` (e.g. `weight`) under `vb`'s prefix.
    fn load(&self, vb: &VarBuilder, name: &str) -> Result<Matrix>;
}

/// The [`MatrixLoader`] that reads every matrix through the `VarBuilder` ([`Matrix::load`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThroughVarBuilder;

impl MatrixLoader for ThroughVarBuilder {
    fn load(&self, vb: &VarBuilder, name: &str) -> Result<Matrix> {
        Matrix::load(vb, name)
    }
}

/// Suffix of the sibling that marks a weight stored in GGML blocks: a one-element u32 tensor
/// holding the GGML type id ([`crate::ggml_type_id`]); the weight itself is then served as its raw
/// block bytes, `[N, bytes per row]` u8.
pub const GGML_TYPE_SUFFIX: &str = "_ggml_type";

impl Matrix {
    /// Reads `name` (e.g. `q_proj.weight`) from `vb`. A weight stored with a
    /// `{name}_scale_inv` sibling is DeepSeek's FP8 format: it is requested as e4m3, and if the
    /// builder returns e4m3 (it keeps FP8 as shipped) the matrix is an [`Fp8Matrix`] over
    /// 128 x 128 blocks; a builder that returns another dtype has dequantised it. Every other
    /// weight is requested in `vb`'s dtype (a builder may keep matrices narrower).
    ///
    /// A weight with a `{name}`[`GGML_TYPE_SUFFIX`] sibling is in GGML blocks (a GGUF file): it
    /// is requested as raw u8 blocks and becomes a [`GgmlMatrix`]; a builder that returns
    /// another dtype has dequantised it.
    pub fn load(vb: &VarBuilder, name: &str) -> Result<Matrix> {
        let ggml = format!("{name}{GGML_TYPE_SUFFIX}");
        if vb.contains_tensor(&ggml) {
            let raw = vb.get_unchecked_dtype(name, DType::U8)?;
            if raw.dtype() != DType::U8 {
                return Ok(raw.into());
            }
            let full = |e: candle_core::Error| e.context(format!("{}.{name}", vb.prefix()));
            let id = crate::host::vec1::<u32>(&vb.get_unchecked_dtype(&ggml, DType::U32)?)?;
            let ty = id
                .first()
                .and_then(|&id| ggml_type_from_id(id))
                .ok_or_else(|| {
                    full(candle_core::Error::Msg(format!(
                        "GGML type {id:?} is not one this build reads"
                    )))
                })?;
            let (n, row_bytes) = raw.dims2()?;
            let k = row_bytes / ty.type_size() * ty.block_size();
            let blocks = crate::host::vec1::<u8>(&raw.flatten_all()?)?;
            drop(raw);
            // The block types `QuantMatrix::from_ggml` reads hold this crate's formats' values
            // exactly: its kernels are the faster
            // (benchmarks/README.md, "Weight formats"); other block formats run on candle's.
            if let Some(q) = QuantMatrix::from_ggml(ty, &blocks, n, k).map_err(full)? {
                // The blocks go before the relayout, so at most two copies of the matrix
                // are alive at once.
                drop(blocks);
                return Ok(q.for_isa(Isa::detect()).into());
            }
            return Ok(GgmlMatrix::from_blocks(ty, &blocks, n, k)
                .map_err(full)?
                .into());
        }
        let scale = format!("{name}_scale_inv");
        if vb.contains_tensor(&scale) {
            let q = vb.get_unchecked_dtype(name, DType::F8E4M3)?;
            if q.dtype() != DType::F8E4M3 {
                return Ok(q.into());
            }
            let s = vb.get_unchecked_dtype(&scale, DType::F32)?;
            let full = |e: candle_core::Error| e.context(format!("{}.{name}", vb.prefix()));
            return Ok(Fp8Matrix::new(q, &s, FP8_BLOCK).map_err(full)?.into());
        }
        Ok(vb.get_unchecked_dtype(name, vb.dtype())?.into())
    }

    /// `x · Wᵀ` for `x` `[..., K]`: `[..., N]` in `x`'s dtype, accumulated in f32 on the CPU
    /// ([`Isa::detect`]'s path).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(Isa::detect(), x)
    }

    /// [`Matrix::forward`] on the kernel path `isa`. A quantised matrix with activations on
    /// another device computes on the host and returns to `x`'s device.
    pub fn forward_with(&self, isa: Isa, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Dense(w) => linear_with(isa, x, w),
            Matrix::Bf16Activations(w) => linear_bf16_activations_with(isa, x, w),
            Matrix::Fp8(w) => linear_fp8_with(isa, x, w),
            Matrix::Quant(w) => linear_quant_with(isa, x, w),
            Matrix::Ggml(w) => w.forward(x),
        }
    }

    /// [`Matrix::forward`] with each row's result the same bits whatever the other rows, however
    /// many rows there are: dense matrices through [`crate::linear_row_invariant`], the others
    /// in passes of at most [`Matrix::batch_invariant_rows`] rows. For small per-sequence
    /// products, such as MLA's absorbed per-head blocks, where a token's output must not depend
    /// on the tokens it was batched with.
    pub fn forward_row_invariant(&self, x: &Tensor) -> Result<Tensor> {
        let isa = Isa::detect();
        let step = match self {
            Matrix::Dense(w) => return crate::linear_row_invariant(x, w),
            _ => self.batch_invariant_rows(isa).max(1),
        };
        let k = *x.dims().last().unwrap_or(&0);
        let m = x.elem_count() / k.max(1);
        if m <= step {
            return self.forward_with(isa, x);
        }
        let rows = x.reshape((m, k))?;
        let parts = (0..m)
            .step_by(step)
            .map(|s| self.forward_with(isa, &rows.narrow(0, s, step.min(m - s))?))
            .collect::<Result<Vec<_>>>()?;
        let mut out_dims = x.dims().to_vec();
        *out_dims.last_mut().expect("x has a last dimension") = self.dims()[0];
        Tensor::cat(&parts, 0)?.reshape(out_dims)
    }

    /// Up to how many activation rows each row's product on the kernel path `isa` is the same
    /// bits whatever the other rows: how many sequences a serving engine may decode in one
    /// pass without changing any one's output. [`crate::GEMV_MAX_ROWS`] (the matrix-vector
    /// regime) but for bf16 weights under bf16 activations on AVX512-BF16 CPUs, whose unpacked
    /// kernel keeps every row's arithmetic up to 64 rows (any number on AMX CPUs when `K` is a
    /// multiple of 32: the tiles sum each row on its own), and for quantised matrices in panels
    /// on AVX512-VNNI CPUs, any number ([`QuantMatrix::batch_invariant_rows`]).
    pub fn batch_invariant_rows(&self, isa: Isa) -> usize {
        match self {
            Matrix::Bf16Activations(w) if w.device().is_cpu() => {
                crate::kernel::bf16_act::invariant_rows(isa, *w.dims().last().unwrap_or(&0))
            }
            Matrix::Quant(w) => w.batch_invariant_rows(isa),
            _ => crate::GEMV_MAX_ROWS,
        }
    }

    /// Backs the matrix's values with transparent huge pages where the kernel allows
    /// ([`crate::advise_huge_pages`], [`QuantMatrix::advise_huge_pages`]); returns whether it
    /// applied. FP8 matrices used in place advise their range of the memory map: whether a
    /// file's cached pages can be collapsed depends on the kernel (Linux needs
    /// `CONFIG_READ_ONLY_THP_FOR_FS`; without it only pages read in after the advice come as
    /// huge pages). GGML blocks on candle's kernels are left as they are. Whether to call
    /// it is the caller's decision (a loader option, say).
    pub fn advise_huge_pages(&self) -> bool {
        crate::huge_pages::advise_spans(self.host_spans()) > 0
    }

    /// The address ranges of the matrix's host memory that [`Matrix::advise_huge_pages`]
    /// would advise ([`crate::advise_matrices_huge_pages`] joins those of many matrices).
    pub(crate) fn host_spans(&self) -> Vec<std::ops::Range<usize>> {
        match self {
            Matrix::Dense(t) | Matrix::Bf16Activations(t) => {
                crate::huge_pages::tensor_span(t).into_iter().collect()
            }
            Matrix::Quant(q) => q.host_spans(),
            Matrix::Fp8(w) => w.host_spans(),
            Matrix::Ggml(_) => Vec::new(),
        }
    }

    /// The shape `[N, K]` (a dense tensor reports its own dims, whatever its rank).
    pub fn dims(&self) -> &[usize] {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => w.dims(),
            Matrix::Fp8(w) => w.shape(),
            Matrix::Quant(w) => w.dims(),
            Matrix::Ggml(w) => w.dims(),
        }
    }

    /// Bytes one product reads (values and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => crate::weight_bytes(w),
            Matrix::Fp8(w) => w.bytes(),
            Matrix::Quant(w) => w.bytes(),
            Matrix::Ggml(w) => w.bytes(),
        }
    }

    /// The storage format's name: `f32`, `bf16`, `f16`, `fp8`, `q8`, `q4`, or a GGML type's
    /// (`q4_k`, `q8_0`, ...). ([`Matrix::Bf16Activations`] stores `bf16`.)
    pub fn format(&self) -> &'static str {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => w.dtype().as_str(),
            Matrix::Fp8(_) => "fp8",
            Matrix::Quant(w) => w.format().name(),
            Matrix::Ggml(w) => ggml_type_name(w.ggml_type()),
        }
    }

    /// Where the values live (quantised matrices: the host).
    pub fn device(&self) -> Device {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => w.device().clone(),
            Matrix::Fp8(w) => w.device(),
            Matrix::Quant(_) | Matrix::Ggml(_) => Device::Cpu,
        }
    }

    /// The dense tensor, if the matrix is one (whatever its products' activations).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => Some(w),
            _ => None,
        }
    }

    /// A bf16 matrix whose products round the activations to bf16
    /// ([`Matrix::Bf16Activations`]); any other matrix is returned as is (its products keep
    /// their own arithmetic).
    pub fn with_bf16_activations(&self) -> Matrix {
        match self {
            Matrix::Dense(w) if w.dtype() == DType::BF16 => Matrix::Bf16Activations(w.clone()),
            _ => self.clone(),
        }
    }

    /// The values as an f32 tensor `[N, K]` (exact for dense and FP8 matrices; the
    /// quantised values for the others).
    pub fn dequantize(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => w.to_dtype(DType::F32),
            Matrix::Fp8(w) => w.dequantize(),
            Matrix::Quant(w) => w.dequantize(),
            Matrix::Ggml(w) => w.dequantize(),
        }
    }

    /// Rows `ids` as f32 `[ids.len(), K]` on the matrix's device: the reads of a lookup table
    /// kept in its stored format, such as a token embedding (dense: the rows widened;
    /// quantised: the rows dequantised, [`QuantMatrix::dequantize_rows_at`]). FP8 and GGML
    /// tables are refused: [`Matrix::lookup_table`] makes them dense.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Matrix::Dense(w) | Matrix::Bf16Activations(w) => {
                let ids = Tensor::new(ids, w.device())?;
                w.index_select(&ids, 0)?.to_dtype(DType::F32)
            }
            Matrix::Quant(w) => {
                let [n, k] = [w.dims()[0], w.dims()[1]];
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= n) {
                    candle_core::bail!("row {bad} of a {n}-row matrix");
                }
                let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
                let values = w.dequantize_rows_at(&rows);
                Tensor::from_vec(values, (ids.len(), k), &Device::Cpu)
            }
            Matrix::Fp8(_) | Matrix::Ggml(_) => candle_core::bail!(
                "rows of a {} matrix: make it a lookup table first",
                self.format()
            ),
        }
    }

    /// The matrix as a lookup table that [`Matrix::rows`] reads without a copy: dense and
    /// quantised matrices as they are (panels re-laid in rows), FP8 and GGML blocks
    /// dequantised to f32.
    pub fn lookup_table(self) -> Result<Matrix> {
        Ok(match self {
            Matrix::Quant(w) if w.in_panels() => Matrix::Quant(Arc::new(w.to_row_layout())),
            Matrix::Fp8(_) | Matrix::Ggml(_) => Matrix::Dense(self.dequantize()?),
            m => m,
        })
    }

    /// The matrix in `format`, from its exact values (FP8 is dequantised in f32 first). A
    /// matrix already in `format` is returned as is.
    pub fn quantize(&self, format: QuantFormat) -> Result<Matrix> {
        if let Matrix::Quant(w) = self {
            if w.format() == format {
                return Ok(self.clone());
            }
        }
        let q = QuantMatrix::quantize(&self.dequantize()?, format)?;
        Ok(q.for_isa(Isa::detect()).into())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn fp8_in_place_spans_are_its_mapped_bytes_and_its_scales() {
        // What the loader's huge-page advice joins across a layer: the bytes where they lie
        // (a checkpoint's memory map in the model) and the scales it read.
        let (n, k) = (256, 384);
        let owner: std::sync::Arc<crate::ByteOwner> = std::sync::Arc::new(vec![0x38u8; n * k]);
        let start = (*owner).as_ref().as_ptr() as usize;
        let bytes = crate::SharedBytes::new(owner.clone(), 0..n * k).unwrap();
        let scale = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let w = crate::Fp8Matrix::from_shared(bytes, (n, k), &scale, (128, 128)).unwrap();
        let spans = Matrix::from(w).host_spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0], start..start + n * k);
        assert_eq!(spans[1].len(), 6 * 4, "the six f32 block scales");
    }

    #[test]
    fn every_format_computes_the_same_product() {
        let dev = Device::Cpu;
        let val = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.731 + s).sin() * 1.7).collect()
        };
        let w = Tensor::from_vec(val(48 * 128, 0.2), (48, 128), &dev).unwrap();
        let x = Tensor::from_vec(val(3 * 128, 1.3), (3, 128), &dev).unwrap();
        let exact = w.clone().into();
        let want = Matrix::forward(&exact, &x).unwrap();
        for (m, tol) in [
            (Matrix::from(w.to_dtype(DType::BF16).unwrap()), 0.2),
            (
                Matrix::from(w.to_dtype(DType::BF16).unwrap()).with_bf16_activations(),
                0.2,
            ),
            (exact.quantize(QuantFormat::Q8).unwrap(), 0.5),
            (exact.quantize(QuantFormat::Q4).unwrap(), 5.0),
        ] {
            assert_eq!(m.dims(), &[48, 128]);
            let got = m.forward(&x).unwrap();
            let err = max_abs(&(&got - &want).unwrap());
            assert!(err < tol, "{}: {err}", m.format());
            // The product is the product with the dequantised values (for 8 and 4 bits, up to
            // the 8-bit rounding of the activations a decode-sized product makes: under 1%).
            let d = x.matmul(&m.dequantize().unwrap().t().unwrap()).unwrap();
            let scale = max_abs(&d);
            let err = max_abs(&(got - d).unwrap());
            let tol = if let Matrix::Bf16Activations(_) = m {
                // The activations' rounding: 2⁻⁹ relative per value.
                1e-2 * scale
            } else if m.format() == "bf16" {
                1e-3
            } else {
                1e-2 * scale
            };
            assert!(err < tol, "{}: {err}", m.format());
        }
        assert!(exact.bytes() > exact.quantize(QuantFormat::Q8).unwrap().bytes());
    }

    /// A `[40, 256]` matrix of `sin(0.377 i + phase)` and an FP8 matrix of about its values
    /// (two 128-column blocks).
    fn forty_rows_and_their_fp8(phase: f32) -> (Tensor, Fp8Matrix) {
        let dev = Device::Cpu;
        let w: Vec<f32> = (0..40 * 256)
            .map(|i| (i as f32 * 0.377 + phase).sin())
            .collect();
        let w = Tensor::from_vec(w, (40, 256), &dev).unwrap();
        let fp8 = Fp8Matrix::new(
            (&w * 200.0).unwrap().to_dtype(DType::F8E4M3).unwrap(),
            &Tensor::new(&[[0.005f32, 0.004]], &dev).unwrap(),
            (128, 128),
        )
        .unwrap();
        (w, fp8)
    }

    /// A lookup table's rows are those of its dequantised values, in every format.
    #[test]
    fn rows_of_a_lookup_table_are_its_dequantised_rows() {
        let dev = Device::Cpu;
        let (w, fp8) = forty_rows_and_their_fp8(0.0);
        let exact = Matrix::from(w.clone());
        let ids = [39u32, 0, 7, 7, 31];
        let mut tables = vec![
            exact.clone(),
            Matrix::from(w.to_dtype(DType::BF16).unwrap()),
            Matrix::from(fp8),
        ];
        for format in [
            QuantFormat::Q8,
            QuantFormat::Q4,
            QuantFormat::Q4K,
            QuantFormat::Q6K,
            QuantFormat::Q5,
            QuantFormat::Q3K,
        ] {
            tables.push(exact.quantize(format).unwrap());
        }
        for table in tables {
            let all = table.dequantize().unwrap();
            let want = all
                .index_select(&Tensor::new(&ids, &dev).unwrap(), 0)
                .unwrap();
            let lookup = table.clone().lookup_table().unwrap();
            let got = lookup.rows(&ids).unwrap();
            assert_eq!(got.dims(), &[ids.len(), 256]);
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "{}",
                table.format()
            );
            assert!(lookup.rows(&[40]).is_err(), "{}", table.format());
        }
    }

    #[test]
    fn row_invariant_products_keep_each_row_s_bits_among_many() {
        let dev = Device::Cpu;
        let val = |n: usize, s: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.377 + s).sin()).collect()
        };
        let (w, fp8) = forty_rows_and_their_fp8(0.1);
        let exact = Matrix::from(w.clone());
        // More rows than any format's invariant pass, so several passes run.
        let m = 150;
        let x = Tensor::from_vec(val(m * 256, 2.3), (m, 256), &dev).unwrap();
        for w in [
            exact.clone(),
            Matrix::from(w.to_dtype(DType::BF16).unwrap()),
            Matrix::from(fp8),
            exact.quantize(QuantFormat::Q8).unwrap(),
            exact.quantize(QuantFormat::Q4).unwrap(),
            exact.quantize(QuantFormat::Q4K).unwrap(),
        ] {
            let all = w.forward_row_invariant(&x).unwrap();
            assert_eq!(all.dims(), &[m, 40]);
            let close = max_abs(&(&all - w.forward(&x).unwrap()).unwrap());
            assert!(close < 0.5, "{}: {close}", w.format());
            for j in [0, 1, 31, 32, 63, 64, 65, 149] {
                let alone = w
                    .forward_row_invariant(&x.narrow(0, j, 1).unwrap())
                    .unwrap();
                assert_eq!(
                    all.get(j).unwrap().to_vec1::<f32>().unwrap(),
                    alone.get(0).unwrap().to_vec1::<f32>().unwrap(),
                    "{}: row {j}",
                    w.format()
                );
            }
        }
    }
}
