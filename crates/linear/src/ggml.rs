//! Matrices in GGML's block formats, as GGUF files (llama.cpp) store them (`Q3_K`, `Q2_K`,
//! ...: the types `QuantMatrix::from_ggml` does not hold), multiplied by candle's quantized kernels (`QMatMul`: the activations
//! are quantised to 8 bits per block and the integer dot products run in SIMD), never
//! dequantised to memory. Float GGML tensors (`F32`, `F16`, `BF16`) are plain tensors and do
//! not come here.

use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

/// A weight matrix `[N, K]` in a GGML block format, on the host.
#[derive(Debug)]
pub struct GgmlMatrix {
    dims: [usize; 2],
    tensor: Arc<QTensor>,
    matmul: QMatMul,
}

impl GgmlMatrix {
    /// From the stored blocks of an `[n, k]` matrix (row-major, `k` a multiple of the block
    /// size). Errors on a float type (those are plain tensors) or a byte count that does not
    /// match the shape.
    pub fn from_blocks(ty: GgmlDType, blocks: &[u8], n: usize, k: usize) -> Result<Self> {
        if matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            candle_core::bail!("{ty:?} is a float type, not a block format: use a tensor");
        }
        let (block, size) = (ty.block_size(), ty.type_size());
        if !k.is_multiple_of(block) {
            candle_core::bail!(
                "{ty:?}: a row of {k} values is not a whole number of {block}-value blocks"
            );
        }
        let want = n * k / block * size;
        if blocks.len() != want {
            candle_core::bail!(
                "{ty:?} [{n}, {k}]: {} bytes of blocks, expected {want}",
                blocks.len()
            );
        }
        let tensor = Arc::new(qtensor_from_ggml(ty, blocks, vec![n, k], &Device::Cpu)?);
        let matmul = QMatMul::from_arc(Arc::clone(&tensor))?;
        Ok(Self {
            dims: [n, k],
            tensor,
            matmul,
        })
    }

    /// Quantises `w` `[N, K]` to `ty` with candle's (GGML's reference) quantisers.
    pub fn quantize(w: &Tensor, ty: GgmlDType) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let q = QTensor::quantize(&w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, ty)?;
        Self::from_blocks(ty, &q.data()?, n, k)
    }

    /// The block format.
    pub fn ggml_type(&self) -> GgmlDType {
        self.tensor.dtype()
    }

    /// `[N, K]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Stored bytes (what one product reads).
    pub fn bytes(&self) -> usize {
        self.tensor.storage_size_in_bytes()
    }

    /// The stored blocks, row-major (what a GGUF file holds).
    pub fn blocks(&self) -> Result<Vec<u8>> {
        Ok(self.tensor.data()?.into_owned())
    }

    /// The values as an f32 tensor `[N, K]` on the host.
    pub fn dequantize(&self) -> Result<Tensor> {
        self.tensor.dequantize(&Device::Cpu)
    }

    /// `x · Wᵀ` for `x` `[..., K]`, in `x`'s dtype and on its device (computed on the host).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let host = x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        self.matmul
            .forward(&host)?
            .to_dtype(x.dtype())?
            .to_device(x.device())
    }
}

/// GGML's numeric id of a type (`ggml_type` in ggml.h; what GGUF files store).
pub fn ggml_type_id(ty: GgmlDType) -> u32 {
    match ty {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// GGML's lower-case name of a type (`q4_k`, `q8_0`, `bf16`, ...).
pub fn ggml_type_name(ty: GgmlDType) -> &'static str {
    match ty {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// The type with GGML id `id`, if candle implements it.
pub fn ggml_type_from_id(id: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    [
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K, BF16,
    ]
    .into_iter()
    .find(|&t| ggml_type_id(t) == id)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;

    /// Each block format's product against an f64 product with its own dequantised values.
    #[test]
    fn products_match_the_dequantised_matrix() {
        let (n, k, m) = (7, 512, 3);
        let w: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.11).cos()).collect();
        let x = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
        for ty in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = GgmlMatrix::quantize(&w, ty).unwrap();
            assert_eq!(q.dims(), &[n, k]);
            let back = GgmlMatrix::from_blocks(ty, &q.blocks().unwrap(), n, k).unwrap();
            let y = back.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let wd = q.dequantize().unwrap().to_vec2::<f32>().unwrap();
            let xs = x.to_vec2::<f32>().unwrap();
            for (r, row) in y.iter().enumerate() {
                let norm: f64 = xs[r].iter().map(|&v| (v as f64).abs()).sum();
                for (c, &got) in row.iter().enumerate() {
                    let want: f64 = (0..k).map(|j| xs[r][j] as f64 * wd[c][j] as f64).sum();
                    // The kernels round the activations to 8 bits per block: ~1/127 of |x|.
                    let bound = norm * 1.5 / 127.0;
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "{ty:?} [{r}, {c}]: {got} vs {want} (bound {bound})"
                    );
                }
            }
        }
        assert!(GgmlMatrix::from_blocks(GgmlDType::Q8_0, &[0u8; 10], 1, 32).is_err());
        assert!(crate::QuantMatrix::from_ggml(GgmlDType::Q8_0, &[0u8; 10], 1, 32).is_err());
        assert!(GgmlMatrix::from_blocks(GgmlDType::F32, &[0u8; 128], 1, 32).is_err());
        assert_eq!(ggml_type_from_id(12), Some(GgmlDType::Q4K));
        assert_eq!(ggml_type_from_id(23), None);
    }

    /// Q8_0, Q4_1, Q4_K, Q6_K, Q5_1 and Q5_K blocks are this crate's Q8 / Q4 / Q4K / Q6K / Q5 /
    /// Q5K: both ways, the values are identical to candle's (GGML's) reading of the same
    /// bytes, and blocks read and written again are the same bytes.
    #[test]
    fn ggml_blocks_read_as_this_crate_s_formats() {
        use crate::{QuantFormat, QuantMatrix};
        let (n, k) = (5, 768);
        // Amplitudes that vary per 16 values, so a superblock's scales span their range.
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32) * 0.71).sin() * 0.3 * (1.0 + (i / 16 % 16) as f32 * 0.4))
            .collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let values = |g: &GgmlMatrix| -> Vec<f32> {
            let t = g.dequantize().unwrap().flatten_all().unwrap();
            t.to_vec1().unwrap()
        };
        for (ty, format) in [
            (GgmlDType::Q8_0, QuantFormat::Q8),
            (GgmlDType::Q4_1, QuantFormat::Q4),
            (GgmlDType::Q4K, QuantFormat::Q4K),
            (GgmlDType::Q6K, QuantFormat::Q6K),
            (GgmlDType::Q5_1, QuantFormat::Q5),
            (GgmlDType::Q5K, QuantFormat::Q5K),
            (GgmlDType::Q3K, QuantFormat::Q3K),
            (GgmlDType::Q2K, QuantFormat::Q2K),
        ] {
            // GGML's blocks read as ours.
            let g = GgmlMatrix::quantize(&w, ty).unwrap();
            let ours = QuantMatrix::from_ggml(ty, &g.blocks().unwrap(), n, k)
                .unwrap()
                .unwrap();
            assert_eq!(ours.format(), format);
            let want = values(&g);
            assert_eq!(ours.dequantize_rows(), want, "{ty:?} read as {format:?}");
            // Offsets or per-16 scales: no zero point to fold into 8-bit values.
            assert!(ours.zero_point_as_q8().is_none(), "{ty:?}");
            // Ours written as GGML's blocks, and back.
            let q = QuantMatrix::quantize(&w, format).unwrap();
            let (t, blocks) = q.to_ggml().unwrap();
            assert_eq!(t, ty);
            let theirs = GgmlMatrix::from_blocks(ty, &blocks, n, k).unwrap();
            assert_eq!(
                values(&theirs),
                q.dequantize_rows(),
                "{format:?} written as {ty:?}"
            );
            let again = QuantMatrix::from_ggml(ty, &blocks, n, k).unwrap().unwrap();
            assert_eq!(again.to_ggml().unwrap().1, blocks);
        }
        // Q4_0 and Q5_0 are held as Q4 / Q5 with their zero point (no stored offsets), the
        // same values, written back as the same blocks; a large d (the offset −16 · 4096 is
        // no f16) changes nothing, since the offsets are formed in f32.
        for (ty, format) in [
            (GgmlDType::Q4_0, QuantFormat::Q4),
            (GgmlDType::Q5_0, QuantFormat::Q5),
        ] {
            let g = GgmlMatrix::quantize(&w, ty).unwrap();
            let mut blocks = g.blocks().unwrap();
            let last = blocks.len() - ty.type_size();
            for d in [None, Some(4096.0)] {
                if let Some(d) = d {
                    blocks[last..last + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                }
                let theirs = GgmlMatrix::from_blocks(ty, &blocks, n, k).unwrap();
                let ours = QuantMatrix::from_ggml(ty, &blocks, n, k).unwrap().unwrap();
                assert_eq!(ours.format(), format, "{ty:?}, d {d:?}");
                assert_eq!(ours.dequantize_rows(), values(&theirs), "{ty:?}, d {d:?}");
                let q8 = ours.zero_point_as_q8().expect("a zero point");
                assert_eq!(q8.format(), QuantFormat::Q8);
                assert_eq!(
                    q8.dequantize_rows(),
                    values(&theirs),
                    "{ty:?} as Q8, d {d:?}"
                );
                let (written, again) = ours.to_ggml().unwrap();
                assert_eq!(written, ty);
                assert!(
                    again == blocks,
                    "{ty:?}, d {d:?}: other blocks written back"
                );
            }
        }
        assert!(QuantMatrix::from_ggml(GgmlDType::Q8K, &[], 0, 256)
            .unwrap()
            .is_none());
    }
}
