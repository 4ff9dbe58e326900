//! [`MlaWeights`]: the projection matrices of one layer, loaded under the HF names or handed
//! in as tensors, and the absorbed views of `kv_b_proj` precomputed from them.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use linear::{MapMatrix, Matrix, QuantFormat, QuantMatrix, WeightSpec};

use crate::config::MlaConfig;
use crate::error::{MlaError, Result};

/// How the query is projected.
#[derive(Debug, Clone)]
pub enum QueryWeights {
    /// `q_proj.weight` `[H · (nope + rope), C]` (V2-Lite, `q_lora_rank: null`).
    Direct {
        /// `q_proj.weight`.
        q_proj: Matrix,
    },
    /// Low-rank query: `q_b_proj(q_a_layernorm(q_a_proj(x)))` (V2, V3).
    LowRank {
        /// `q_a_proj.weight` `[q_lora_rank, C]`.
        q_a_proj: Matrix,
        /// `q_a_layernorm.weight` `[q_lora_rank]`.
        q_a_layernorm: Tensor,
        /// `q_b_proj.weight` `[H · (nope + rope), q_lora_rank]`.
        q_b_proj: Matrix,
    },
}

/// The weights of one MLA layer, in the checkpoint's `[out, in]` layout.
///
/// Build it with [`MlaWeights::load`] from a `VarBuilder` prefixed at the layer's `self_attn`,
/// or fill the fields directly with matrices you already hold (`Tensor::into()` for dense
/// ones); [`Mla::new`](crate::Mla::new) checks every shape against the config.
///
/// Mixed precision: the projection matrices may be stored in bf16, f16, FP8 blocks or 8/4-bit
/// groups ([`linear::Matrix`]) while the two norm weights, and so the activations and the
/// cache, are f32 ([`MlaWeights::dtype`]).
#[derive(Debug, Clone)]
pub struct MlaWeights {
    /// Query projection(s).
    pub query: QueryWeights,
    /// `kv_a_proj_with_mqa.weight` `[R + rope, C]`: the latent and the shared RoPE key.
    pub kv_a_proj_with_mqa: Matrix,
    /// `kv_a_layernorm.weight` `[R]`.
    pub kv_a_layernorm: Tensor,
    /// `kv_b_proj.weight` `[H · (nope + v), R]`: per head, key rows first, then value rows.
    /// Kept in the format it was loaded in (FP8 blocks as shipped, bf16, ...), never
    /// requantised: the absorbed path's per-head blocks are taken from it exactly, and both
    /// paths must multiply by the same values (8/4-bit and GGML blocks are dequantised by
    /// [`crate::Mla::new`] for that reason).
    pub kv_b_proj: Matrix,
    /// `o_proj.weight` `[C, H · v]`.
    pub o_proj: Matrix,
}

impl MlaWeights {
    /// The weights a layer of `config` expects, under their HF names relative to the layer's
    /// `self_attn` prefix, with their shapes: what [`MlaWeights::load`] reads.
    pub fn expected(config: &MlaConfig) -> Vec<WeightSpec> {
        let (c, h) = (config.hidden_size, config.num_heads);
        let r = config.kv_lora_rank;
        let q_out = h * config.qk_head_dim();
        let mut out = match config.q_lora_rank {
            None => vec![WeightSpec::projection("q_proj.weight", q_out, c)],
            Some(q) => vec![
                WeightSpec::projection("q_a_proj.weight", q, c),
                WeightSpec::plain("q_a_layernorm.weight", vec![q]),
                WeightSpec::projection("q_b_proj.weight", q_out, q),
            ],
        };
        out.extend([
            WeightSpec::projection("kv_a_proj_with_mqa.weight", r + config.qk_rope_head_dim, c),
            WeightSpec::plain("kv_a_layernorm.weight", vec![r]),
            WeightSpec::projection(
                "kv_b_proj.weight",
                h * (config.qk_nope_head_dim + config.v_head_dim),
                r,
            ),
            WeightSpec::projection("o_proj.weight", c, h * config.v_head_dim),
        ]);
        out
    }

    /// Loads the weights under their HF names from `vb` (already prefixed, e.g.
    /// `vb.pp("model.layers.0.self_attn")`): `q_proj` or `q_a_proj` + `q_a_layernorm` +
    /// `q_b_proj` (chosen by `config.q_lora_rank`), `kv_a_proj_with_mqa`, `kv_a_layernorm`,
    /// `kv_b_proj`, `o_proj`. Shapes are checked; a wrong one is reported with both shapes.
    pub fn load(vb: &VarBuilder, config: &MlaConfig) -> Result<Self> {
        Self::load_with(vb, config, &linear::ThroughVarBuilder)
    }

    /// [`MlaWeights::load`] with the projections obtained from `matrices` (e.g. a checkpoint
    /// loader that uses memory-mapped FP8 bytes in place).
    pub fn load_with(
        vb: &VarBuilder,
        config: &MlaConfig,
        matrices: &dyn linear::MatrixLoader,
    ) -> Result<Self> {
        let named = |name: &str| {
            let tensor = format!("{name}.weight");
            move |source| MlaError::MissingWeight { tensor, source }
        };
        let get = |name: &str| -> Result<Tensor> {
            vb.get_unchecked_dtype(&format!("{name}.weight"), vb.dtype())
                .map_err(named(name))
        };
        let matrix = |name: &str| -> Result<Matrix> {
            matrices
                .load(vb, &format!("{name}.weight"))
                .map_err(named(name))
        };
        let query = match config.q_lora_rank {
            None => QueryWeights::Direct {
                q_proj: matrix("q_proj")?,
            },
            Some(_) => QueryWeights::LowRank {
                q_a_proj: matrix("q_a_proj")?,
                q_a_layernorm: get("q_a_layernorm")?,
                q_b_proj: matrix("q_b_proj")?,
            },
        };
        let weights = Self {
            query,
            kv_a_proj_with_mqa: matrix("kv_a_proj_with_mqa")?,
            kv_a_layernorm: get("kv_a_layernorm")?,
            kv_b_proj: matrix("kv_b_proj")?,
            o_proj: matrix("o_proj")?,
        };
        weights.validate(config)?;
        Ok(weights)
    }

    /// Checks every shape against `config`, naming the first tensor that does not fit.
    pub fn validate(&self, config: &MlaConfig) -> Result<()> {
        let c = config;
        let h = c.num_heads;
        let q_out = h * c.qk_head_dim();
        let check = |name: &str, dims: &[usize], expected: &[usize]| -> Result<()> {
            if dims == expected {
                Ok(())
            } else {
                Err(MlaError::WeightShape {
                    tensor: name.to_string(),
                    expected: expected.to_vec(),
                    found: dims.to_vec(),
                })
            }
        };
        match (&self.query, c.q_lora_rank) {
            (QueryWeights::Direct { q_proj }, None) => {
                check("q_proj", q_proj.dims(), &[q_out, c.hidden_size])?
            }
            (
                QueryWeights::LowRank {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                },
                Some(r),
            ) => {
                check("q_a_proj", q_a_proj.dims(), &[r, c.hidden_size])?;
                check("q_a_layernorm", q_a_layernorm.dims(), &[r])?;
                check("q_b_proj", q_b_proj.dims(), &[q_out, r])?;
            }
            (QueryWeights::Direct { .. }, Some(_)) => {
                return Err(MlaError::config(
                    "q_lora_rank",
                    "is set but the weights hold a plain q_proj",
                ))
            }
            (QueryWeights::LowRank { .. }, None) => {
                return Err(MlaError::config(
                    "q_lora_rank",
                    "is null but the weights hold q_a_proj/q_b_proj",
                ))
            }
        }
        check(
            "kv_a_proj_with_mqa",
            self.kv_a_proj_with_mqa.dims(),
            &[c.latent_dim(), c.hidden_size],
        )?;
        check(
            "kv_a_layernorm",
            self.kv_a_layernorm.dims(),
            &[c.kv_lora_rank],
        )?;
        check(
            "kv_b_proj",
            self.kv_b_proj.dims(),
            &[h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank],
        )?;
        check(
            "o_proj",
            self.o_proj.dims(),
            &[c.hidden_size, h * c.v_head_dim],
        )?;
        Ok(())
    }

    /// The same weights converted to `dtype` (dense matrices and norms; FP8 and quantised
    /// matrices keep their format).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let cv = |t: &Tensor| t.to_dtype(dtype);
        let cm = |m: &Matrix| -> Result<Matrix> {
            Ok(match m.as_dense() {
                Some(t) => t.to_dtype(dtype)?.into(),
                None => m.clone(),
            })
        };
        Ok(Self {
            query: match &self.query {
                QueryWeights::Direct { q_proj } => QueryWeights::Direct {
                    q_proj: cm(q_proj)?,
                },
                QueryWeights::LowRank {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                } => QueryWeights::LowRank {
                    q_a_proj: cm(q_a_proj)?,
                    q_a_layernorm: cv(q_a_layernorm)?,
                    q_b_proj: cm(q_b_proj)?,
                },
            },
            kv_a_proj_with_mqa: cm(&self.kv_a_proj_with_mqa)?,
            kv_a_layernorm: cv(&self.kv_a_layernorm)?,
            kv_b_proj: cm(&self.kv_b_proj)?,
            o_proj: cm(&self.o_proj)?,
        })
    }

    /// The projections that [`MlaWeights::quantize`] converts: the query projection(s),
    /// `kv_a_proj_with_mqa` and `o_proj` (not `kv_b_proj`, see its field). These are the
    /// products over all of a pass's rows; `kv_b_proj` is applied per sequence.
    pub fn projections(&self) -> Vec<&Matrix> {
        let mut out = match &self.query {
            QueryWeights::Direct { q_proj } => vec![q_proj],
            QueryWeights::LowRank {
                q_a_proj, q_b_proj, ..
            } => vec![q_a_proj, q_b_proj],
        };
        out.extend([&self.kv_a_proj_with_mqa, &self.o_proj]);
        out
    }

    /// [`MlaWeights::projections`], mutable.
    pub fn projections_mut(&mut self) -> Vec<&mut Matrix> {
        let mut out = match &mut self.query {
            QueryWeights::Direct { q_proj } => vec![q_proj],
            QueryWeights::LowRank {
                q_a_proj, q_b_proj, ..
            } => vec![q_a_proj, q_b_proj],
        };
        out.extend([&mut self.kv_a_proj_with_mqa, &mut self.o_proj]);
        out
    }

    /// Bytes of all the weights (each matrix in its format, norms included): what one decode
    /// step reads.
    pub fn bytes(&self) -> usize {
        let tensor = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let query = match &self.query {
            QueryWeights::Direct { q_proj } => q_proj.bytes(),
            QueryWeights::LowRank {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => q_a_proj.bytes() + tensor(q_a_layernorm) + q_b_proj.bytes(),
        };
        query
            + self.kv_a_proj_with_mqa.bytes()
            + tensor(&self.kv_a_layernorm)
            + self.kv_b_proj.bytes()
            + self.o_proj.bytes()
    }

    /// Converts [`MlaWeights::projections_mut`] to `format`.
    pub fn quantize(&mut self, format: QuantFormat) -> Result<()> {
        self.map_projections(&|m| m.quantize(format))
    }

    /// Replaces each of [`MlaWeights::projections_mut`] by `f` of it (a format conversion,
    /// e.g. [`Matrix::quantize`] or [`Matrix::with_bf16_activations`]).
    pub fn map_projections(&mut self, f: &MapMatrix<'_>) -> Result<()> {
        for m in self.projections_mut() {
            *m = f(m)?;
        }
        Ok(())
    }

    /// The compute dtype: that of the norm weights (`kv_a_layernorm`). The projection
    /// matrices may be stored narrower (for example bf16 matrices with f32 norms and
    /// activations on the CPU, where decode reads half the bytes); they are widened on the fly
    /// by `linear`.
    pub fn dtype(&self) -> DType {
        self.kv_a_layernorm.dtype()
    }
}

/// `kv_b_proj` split per head into `W_UKᵀ` `[R, nope]` and `W_UV` `[v, R]`, each a weight
/// `[out, in]` as `linear` takes it, in `kv_b_proj`'s own format where that is exact: FP8 stays
/// FP8 (the value rows are a view of the same bytes, the key rows a transposed copy with the
/// scale grid transposed), dense matrices keep their dtype on the CPU. Other formats are
/// dequantised to the compute dtype ([`crate::Mla::new`] dequantises block formats before);
/// blocks a checkpoint stores apart replace them afterwards
/// ([`crate::Mla::use_absorbed_blocks`]).
#[derive(Debug, Clone)]
pub(crate) struct AbsorbedWeights {
    /// `W_UKᵀ` per head: `q_lat = q_nope · W_UK`.
    pub w_uk_t: HeadMatrices,
    /// `W_UV` per head: `out = out_lat · W_UVᵀ`.
    pub w_uv: HeadMatrices,
}

/// One weight `[out, in]` per head.
#[derive(Debug, Clone)]
pub(crate) enum HeadMatrices {
    /// Dense `[H, out, in]`, one tensor (candle's batched matmul takes it whole).
    Stacked(Tensor),
    /// A [`Matrix`] per head (FP8 blocks).
    PerHead(Vec<Matrix>),
    /// Block-quantised groups per head as a checkpoint stores them apart (llama.cpp's GGUF
    /// `attn_k_b` / `attn_v_b`: groups along each block's input), multiplied with f32
    /// activations ([`linear::linear_quant_f32_activations`]), so the products are those with
    /// the dequantised values: [`crate::Mla::use_absorbed_blocks`].
    QuantPerHead(Vec<Arc<QuantMatrix>>),
}

impl HeadMatrices {
    /// Bytes a product over every head reads.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            HeadMatrices::Stacked(t) => t.elem_count() * t.dtype().size_in_bytes(),
            HeadMatrices::PerHead(m) => m.iter().map(Matrix::bytes).sum(),
            HeadMatrices::QuantPerHead(m) => m.iter().map(|m| m.bytes()).sum(),
        }
    }
}

impl AbsorbedWeights {
    /// Split from `kv_b_proj`; `dtype` is the compute dtype, which the dense blocks take off
    /// the CPU (where no kernel widens them per product) and the inexact formats everywhere.
    pub(crate) fn new(kv_b_proj: &Matrix, c: &MlaConfig, dtype: DType) -> Result<Self> {
        let (h, n, v) = (c.num_heads, c.qk_nope_head_dim, c.v_head_dim);
        if let Matrix::Fp8(w) = kv_b_proj {
            // Each head's key and value rows must begin block rows to keep their scales.
            let bn = w.block().0;
            if w.device().is_cpu() && n.is_multiple_of(bn) && v.is_multiple_of(bn) {
                let (mut uk, mut uv) = (Vec::with_capacity(h), Vec::with_capacity(h));
                for head in 0..h {
                    let key = head * (n + v);
                    uk.push(w.rows(key, n)?.transpose()?.into());
                    uv.push(w.rows(key + n, v)?.into());
                }
                return Ok(Self {
                    w_uk_t: HeadMatrices::PerHead(uk),
                    w_uv: HeadMatrices::PerHead(uv),
                });
            }
        }
        let dense = match kv_b_proj.as_dense() {
            Some(t) if t.device().is_cpu() => t.clone(),
            Some(t) => t.to_dtype(dtype)?,
            None => kv_b_proj.dequantize()?.to_dtype(dtype)?,
        };
        // [H·(nope+v), R] -> [H, nope+v, R]
        let per_head = dense.reshape((h, n + v, c.kv_lora_rank))?;
        let w_uk_t = per_head
            .narrow(1, 0, n)? // [H, nope, R]
            .transpose(1, 2)? // [H, R, nope]
            .contiguous()?;
        let w_uv = per_head.narrow(1, n, v)?.contiguous()?; // [H, v, R]
        Ok(Self {
            w_uk_t: HeadMatrices::Stacked(w_uk_t),
            w_uv: HeadMatrices::Stacked(w_uv),
        })
    }
}
