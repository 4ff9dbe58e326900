//! [`Mla`]: the attention layer, with the expanded (textbook), the absorbed and the flash
//! (online softmax over key blocks, in `flash.rs`) paths side by side. The expanded and
//! absorbed paths are the test oracles; the absorbed one is the default.
//!
//! Dimension legend: `B` batch, `T` new tokens, `S` keys (cached + new), `C` hidden size,
//! `H` heads, `R` kv_lora_rank, `n` qk_nope_head_dim, `r` qk_rope_head_dim, `v` v_head_dim.

use candle_core::{DType, Device, Tensor, D};
use rope_yarn::{apply_rotary, RopeCache};

use crate::cache::{LatentKeys, LayerCache};
use crate::config::MlaConfig;
use crate::error::{MlaError, Result};
use crate::weights::{AbsorbedWeights, HeadMatrices, MlaWeights, QueryWeights};
use linear::{MapMatrix, Matrix, QuantFormat};

mod dsa;
mod flash;
mod latent;
mod sparse;
pub use flash::{FlashFormulation, FLASH_KEY_BLOCK, FLASH_QUERY_BLOCK};

/// Which formulation of the attention to run. All give the same result up to rounding;
/// `Expanded` and `Absorbed` materialise the `[B, H, T, S]` f32 scores and are the oracles of
/// `Flash`, which never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// `kv_b_proj` expands every cached latent into per-head keys `[S, H, n]` and values
    /// `[S, H, v]`, then standard attention (what HF transformers does). Costs
    /// `2·S·R·H·(n + v)` FLOPs and `S·H·(n + r + v)` values of scratch per step.
    Expanded,
    /// `W_UK` is folded into the query and `W_UV` applied after attention, so the scores and the
    /// weighted sum run directly over the cached latent `[S, R]` shared by all heads (an
    /// MQA-shaped attention with `R + r`-dim keys and `R`-dim values). The default. On the
    /// CPU in f32 it runs a fused kernel that reads each cached latent once per step, in
    /// 256-key chunks with an online softmax ([`Mla::with_fused_cpu`]; candle ops otherwise).
    #[default]
    Absorbed,
    /// Flash-style attention: an online softmax over key blocks of [`FLASH_KEY_BLOCK`] keys
    /// (and query tiles of [`FLASH_QUERY_BLOCK`] tokens), so the scores never exist beyond one
    /// `[B, H, tile, block]` f32 piece: peak scratch `O(B·H·min(T, FLASH_QUERY_BLOCK)·
    /// FLASH_KEY_BLOCK)` plus the `[B, H, T, ·]` f32 accumulator, instead of `B·H·T·S`. For
    /// the scaled, masked f32 scores `s_j` of key block `j` (in order) and its values `V_j`,
    /// per query row:
    ///
    /// ```text
    /// m_j   = max(m_{j-1}, rowmax(s_j))                      running max
    /// p_j   = exp(s_j - m_j)
    /// l_j   = l_{j-1} · exp(m_{j-1} - m_j) + rowsum(p_j)      running sum
    /// acc_j = acc_{j-1} · exp(m_{j-1} - m_j) + p_j · V_j      running weighted sum
    /// out   = acc_last / l_last                               = softmax(s) · V
    /// ```
    ///
    /// starting from block 0 (which holds key 0, visible to every query, so `m` is finite from
    /// the start and no row ever computes `exp(-inf - -inf)`). Blocks entirely in the future
    /// of a query tile are skipped, blocks straddling its diagonal masked with -inf. Softmax
    /// and accumulation run in f32 whatever the compute dtype; `p · V` multiplies in the
    /// compute dtype as the oracles do.
    ///
    /// Inside the blocks each call runs the cheaper regrouping by a FLOP count calibrated on
    /// the CPU ([`Mla::flash_formulation`]): absorbed (`V_j` = the cached latent `c_kv`,
    /// `W_UV` once after) for decode steps, verification blocks and chunks up to ~500 tokens
    /// on V2/V3 shapes; expanded (`V_j` = the block's per-head values from `kv_b_proj`) for
    /// longer chunks and long single-pass prompts. The two measured even on 512-token chunks
    /// and 1.56x apart (expanded ahead) on one 8,192-token pass (`benchmarks/README.md`).
    Flash,
}

/// The query and key/value parts of `T` new tokens, after the projections, norms and RoPE.
struct Projected {
    /// `[B, H, T, n]`
    q_nope: Tensor,
    /// `[B, H, T, r]`, roped
    q_pe: Tensor,
    /// `[B, T, R]`, normed
    c_kv: Tensor,
    /// `[B, T, r]`, roped
    k_pe: Tensor,
    /// `q_a_layernorm(q_a_proj(x))` `[B, T, q_lora_rank]` for a low-rank query (what the DSA
    /// indexer reads), else `None`.
    q_resid: Option<Tensor>,
}

/// One sequence's share of a [`Mla::forward_packed`] call.
#[derive(Debug)]
pub struct PackedPart<'a> {
    /// New tokens of this sequence (consecutive rows of the packed input).
    pub tokens: usize,
    /// The sequence's own batch-1 cache: the tokens continue from its length and are appended.
    pub cache: &'a mut LayerCache,
    /// The attention path for this sequence's tokens.
    pub path: AttentionPath,
}

/// One Multi-head Latent Attention layer.
#[derive(Debug, Clone)]
pub struct Mla {
    config: MlaConfig,
    weights: MlaWeights,
    absorbed: AbsorbedWeights,
    softmax_scale: f64,
    /// Whether the absorbed path runs the fused CPU kernel where it can ([`Mla::with_fused_cpu`]).
    fused_cpu: bool,
}

impl Mla {
    /// Builds the layer from weights already in memory (e.g. dequantised by the caller),
    /// checking every shape and splitting the absorbed `W_UK` / `W_UVᵀ` per head out of
    /// `kv_b_proj`: FP8 blocks as shipped stay FP8 (the key rows transposed with their scale
    /// grid, exactly), dense matrices keep their dtype on the CPU.
    ///
    /// A `kv_b_proj` in 8/4-bit or GGML blocks (an older GGUF's whole `attn_kv_b`) is
    /// dequantised to the compute dtype, for both paths: its groups run along `R` and do not
    /// survive the transpose, and its products would round the activations to 8 bits, so the
    /// expanded and absorbed paths would no longer multiply by the same values.
    pub fn new(config: MlaConfig, mut weights: MlaWeights) -> Result<Self> {
        weights.validate(&config)?;
        if matches!(weights.kv_b_proj, Matrix::Quant(_) | Matrix::Ggml(_)) {
            weights.kv_b_proj = weights
                .kv_b_proj
                .dequantize()?
                .to_dtype(weights.dtype())?
                .into();
        }
        let absorbed = AbsorbedWeights::new(&weights.kv_b_proj, &config, weights.dtype())?;
        Ok(Self {
            softmax_scale: config.softmax_scale(),
            fused_cpu: true,
            config,
            weights,
            absorbed,
        })
    }

    /// Multiplies the absorbed per-head blocks (`W_UKᵀ` `[R, nope]` and `W_UV` `[v, R]` of
    /// each head) in the block-quantised form a checkpoint stores them in apart from
    /// `kv_b_proj` (llama.cpp's GGUF `attn_k_b` / `attn_v_b`, whose groups run along each
    /// block's input), with f32 activations: the products are those with the dequantised
    /// values up to summation order, as with the dense blocks, but decode reads the blocks'
    /// bytes (Q8_0: 8.5 bits per weight) instead of f32 copies (32). `kv_b_proj` itself is
    /// kept for the expanded path.
    ///
    /// Either set may be `None` (its blocks stay as split from `kv_b_proj`). Every block must
    /// be one of `H`, of the right shape, in a format with a group per 32 values
    /// (Q8, Q4, Q4K, Q5, Q5K), on the CPU, and hold `kv_b_proj`'s values (to within 1e-6 of
    /// the block's largest value: the same numbers dequantised in another order); anything
    /// else is an error and nothing changes.
    pub fn use_absorbed_blocks(
        &mut self,
        w_uk_t: Option<Vec<linear::QuantMatrix>>,
        w_uv: Option<Vec<linear::QuantMatrix>>,
    ) -> Result<()> {
        let c = &self.config;
        let (h, n, v, r) = (
            c.num_heads,
            c.qk_nope_head_dim,
            c.v_head_dim,
            c.kv_lora_rank,
        );
        if !self.weights.kv_b_proj.device().is_cpu() {
            return Err(MlaError::InvalidConfig {
                field: "kv_b_proj",
                reason: "absorbed blocks in groups are CPU matrices: kv_b_proj is on a device"
                    .into(),
            });
        }
        let takes = |b: &Option<Vec<linear::QuantMatrix>>| {
            b.iter()
                .flatten()
                .all(|q| q.format().takes_f32_activations())
        };
        if !takes(&w_uk_t) || !takes(&w_uv) {
            return Err(MlaError::InvalidConfig {
                field: "kv_b_proj",
                reason: "absorbed blocks with f32 activations take formats with a group per 32 \
                         values (Q8, Q4, Q4K, Q5, Q5K)"
                    .into(),
            });
        }
        // [H·(nope+v), R] -> per head: the key rows transposed, the value rows.
        let dense = self
            .weights
            .kv_b_proj
            .dequantize()?
            .to_dtype(DType::F32)?
            .reshape((h, n + v, r))?;
        let check = |name: &str, blocks: &[linear::QuantMatrix], expected: Tensor| {
            let (rows, cols) = expected.dims3().map(|(_, a, b)| (a, b))?;
            if blocks.len() != h {
                return Err(MlaError::WeightShape {
                    tensor: format!("{name} (absorbed blocks)"),
                    expected: vec![h, rows, cols],
                    found: vec![blocks.len()],
                });
            }
            for (head, block) in blocks.iter().enumerate() {
                if block.dims() != [rows, cols] {
                    return Err(MlaError::WeightShape {
                        tensor: format!("{name} (absorbed block of head {head})"),
                        expected: vec![rows, cols],
                        found: block.dims().to_vec(),
                    });
                }
                let want: Vec<f32> = linear::host::vec1(&expected.get(head)?.flatten_all()?)?;
                let got = block.dequantize_rows();
                let largest = want.iter().fold(0f32, |a, x| a.max(x.abs()));
                let far = got
                    .iter()
                    .zip(&want)
                    .position(|(g, w)| (g - w).abs() > 1e-6 * largest);
                if let Some(i) = far {
                    return Err(MlaError::InvalidConfig {
                        field: "kv_b_proj",
                        reason: format!(
                            "{name}'s block of head {head} does not hold kv_b_proj's values \
                             (element {i}: {} against {})",
                            got[i], want[i]
                        ),
                    });
                }
            }
            Ok(())
        };
        if let Some(w) = &w_uk_t {
            check(
                "W_UK",
                w,
                dense.narrow(1, 0, n)?.transpose(1, 2)?.contiguous()?,
            )?;
        }
        if let Some(w) = &w_uv {
            check("W_UV", w, dense.narrow(1, n, v)?.contiguous()?)?;
        }
        let per_head = |b: Vec<linear::QuantMatrix>| {
            HeadMatrices::QuantPerHead(b.into_iter().map(std::sync::Arc::new).collect())
        };
        if let Some(w) = w_uk_t {
            self.absorbed.w_uk_t = per_head(w);
        }
        if let Some(w) = w_uv {
            self.absorbed.w_uv = per_head(w);
        }
        Ok(())
    }

    /// Loads the weights from `vb` (prefixed at the layer's `self_attn`) under the HF names.
    pub fn load(vb: &candle_nn::VarBuilder, config: MlaConfig) -> Result<Self> {
        Self::load_with(vb, config, &linear::ThroughVarBuilder)
    }

    /// [`Mla::load`] with the projections obtained from `matrices` ([`MlaWeights::load_with`]).
    pub fn load_with(
        vb: &candle_nn::VarBuilder,
        config: MlaConfig,
        matrices: &dyn linear::MatrixLoader,
    ) -> Result<Self> {
        let weights = MlaWeights::load_with(vb, &config, matrices)?;
        Self::new(config, weights)
    }

    /// The configuration.
    pub fn config(&self) -> &MlaConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &MlaWeights {
        &self.weights
    }

    /// The compute dtype (that of the norm weights, see [`MlaWeights::dtype`]); inputs and
    /// caches must match it.
    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        self.weights.kv_a_layernorm.device()
    }

    /// The same layer with its weights converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(
            Self::new(self.config.clone(), self.weights.to_dtype(dtype)?)?
                .with_fused_cpu(self.fused_cpu),
        )
    }

    /// Whether [`AttentionPath::Absorbed`] runs the fused CPU kernel (the default: f32 on the
    /// CPU, the cache read once per step, `linear`'s kernels) or candle ops everywhere (its
    /// oracle, and what other devices and dtypes always run). Both give the same result up to
    /// summation order.
    pub fn with_fused_cpu(mut self, on: bool) -> Self {
        self.fused_cpu = on;
        self
    }

    /// Converts the projections to `format` ([`MlaWeights::quantize`]); `kv_b_proj` and so
    /// the absorbed blocks stay as they are.
    pub fn quantize(&mut self, format: QuantFormat) -> Result<()> {
        self.weights.quantize(format)
    }

    /// Replaces each projection by `f` of it ([`MlaWeights::map_projections`]); `kv_b_proj`
    /// and so the absorbed blocks stay as they are.
    pub fn map_projections(&mut self, f: &MapMatrix<'_>) -> Result<()> {
        self.weights.map_projections(f)
    }

    /// Bytes of weights one absorbed decode step reads: the projections as kept
    /// ([`MlaWeights::bytes`] less `kv_b_proj`), and `W_UK` / `W_UV` as the per-head products
    /// read them (in `kv_b_proj`'s format where that is exact, see [`Mla::new`]).
    pub fn decode_weight_bytes(&self) -> usize {
        let absorbed = self.absorbed.w_uk_t.bytes() + self.absorbed.w_uv.bytes();
        self.weights.bytes() - self.weights.kv_b_proj.bytes() + absorbed
    }

    /// An empty cache for this layer: `batch` sequences in the layer's dtype and device.
    pub fn new_cache(&self, batch: usize) -> Result<LayerCache> {
        LayerCache::for_config(&self.config, batch, self.dtype(), self.device())
    }

    /// Attention over `x` `[B, T, C]` whose tokens sit at positions `start_pos..start_pos + T`
    /// in every sequence; returns `[B, T, C]`.
    ///
    /// - Without a cache the keys are the `T` tokens themselves (causal prefill; `start_pos`
    ///   only shifts the rotary positions).
    /// - With a cache, every sequence must hold exactly `start_pos` tokens (a larger
    ///   `start_pos` is an error, a smaller one asks to [`LayerCache::truncate`] first); the new
    ///   latents are appended and query `i` attends to keys `0..=start_pos + i`. `T = 1` is a
    ///   decode step, `T > 1` a chunked prefill or a speculative verification block.
    ///
    /// `rope` must rotate `qk_rope_head_dim` dimensions; it grows on demand and can be shared
    /// by every layer. Use [`Mla::forward_ragged`] when sequences hold different lengths.
    pub fn forward(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
        path: AttentionPath,
    ) -> Result<Tensor> {
        let (p, keys) = self.project_and_append(x, start_pos, rope, cache)?;
        let out = self.attend(&p, &keys, path)?;
        self.output(&out)
    }

    /// Like [`Mla::forward`] with a cache, but each sequence `i` continues from its own cached
    /// length `cache.lens()[i]` (batches of sequences at different positions, e.g. after
    /// per-sequence speculative rollbacks). Runs the sequences one after another; the result
    /// for each equals a batch-1 [`Mla::forward`].
    pub fn forward_ragged(
        &self,
        x: &Tensor,
        rope: &mut RopeCache,
        cache: &mut LayerCache,
        path: AttentionPath,
    ) -> Result<Tensor> {
        let (b, _t) = self.check_x(x)?;
        self.check_cache(cache, b)?;
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            let start = cache.seq_len(i)?;
            let p = self.project(&x.narrow(0, i, 1)?, start, rope)?;
            cache.append_seq(i, &p.c_kv, &p.k_pe)?;
            outs.push(self.attend(&p, &cache.seq_keys(i)?, path)?);
        }
        self.output(&Tensor::cat(&outs, 0)?)
    }

    /// Several sequences in one call, each with its own cache: `x` `[1, N, C]` holds their new
    /// tokens back to back (`parts[i].tokens` rows each, continuing from that cache's length),
    /// e.g. one decode token for each of many sequences plus a prefill chunk of another. The
    /// projections and `o_proj` run once over all `N` rows (one read of the weights for the
    /// whole batch); RoPE, the cache append and attention (on each part's own path) run per
    /// sequence. Each part's rows equal a batch-1 [`Mla::forward`] of its tokens over its cache
    /// (bit for bit when the projections take the same kernel for `N` rows as for the part's).
    pub fn forward_packed(
        &self,
        x: &Tensor,
        parts: &mut [PackedPart<'_>],
        rope: &mut RopeCache,
    ) -> Result<Tensor> {
        let (b, n) = self.check_x(x)?;
        let rows: usize = parts.iter().map(|p| p.tokens).sum();
        if b != 1 || rows != n || parts.iter().any(|p| p.tokens == 0) {
            return Err(MlaError::InputShape {
                what: "x",
                expected: format!(
                    "[1, {rows}, {}]: the parts' token counts (each > 0) back to back",
                    self.config.hidden_size
                ),
                found: x.dims().to_vec(),
            });
        }
        self.check_rope(rope)?;
        let mut positions = Vec::with_capacity(n);
        for part in parts.iter() {
            self.check_cache(part.cache, 1)?;
            let start = part.cache.seq_len(0)?;
            positions.extend(start..start + part.tokens);
        }
        let (cos, sin) = rope.cos_sin_at(&positions, x.device())?;
        let p = self.project_rotated(x, &cos, &sin)?;
        // The absorbed parts (decode steps) through `W_UK` and `W_UV` together: one pass over
        // the per-head weights for all of them instead of one per sequence.
        let batched = |part: &PackedPart<'_>| {
            part.path == AttentionPath::Absorbed
                && self.head_products(&p.q_nope, true) == HeadProducts::Rows
        };
        let mut absorbed_rows = Vec::new();
        let mut row = 0u32;
        for part in parts.iter() {
            let t = part.tokens as u32;
            if batched(part) {
                absorbed_rows.extend(row..row + t);
            }
            row += t;
        }
        let q_lat = if absorbed_rows.is_empty() {
            None
        } else {
            let idx = Tensor::new(absorbed_rows.as_slice(), x.device())?;
            let q = p.q_nope.index_select(&idx, 2)?;
            Some(self.absorb_query(&q, HeadProducts::Rows)?) // [1, H, absorbed rows, R]
        };
        // Per part: its output `[1, t, H·v]`, or (absorbed) its latent output `[1, H, t, R]`.
        let mut outs = Vec::with_capacity(parts.len());
        let mut latents = Vec::new();
        let (mut row, mut absorbed_row) = (0, 0);
        for part in parts.iter_mut() {
            let t = part.tokens;
            let own = Projected {
                q_nope: p.q_nope.narrow(2, row, t)?.contiguous()?,
                q_pe: p.q_pe.narrow(2, row, t)?.contiguous()?,
                c_kv: p.c_kv.narrow(1, row, t)?.contiguous()?,
                k_pe: p.k_pe.narrow(1, row, t)?.contiguous()?,
                q_resid: None,
            };
            part.cache.append_seq(0, &own.c_kv, &own.k_pe)?;
            let keys = part.cache.seq_keys(0)?;
            match &q_lat {
                Some(q_lat) if batched(part) => {
                    let q = q_lat.narrow(2, absorbed_row, t)?;
                    latents.push(self.attend_latent(&q, &own.q_pe, &keys, None)?);
                    outs.push(None);
                    absorbed_row += t;
                }
                _ => outs.push(Some(self.attend(&own, &keys, part.path)?)),
            }
            row += t;
        }
        // [1, H, absorbed rows, R] -> [1, absorbed rows, H·v], then each part's rows in turn.
        let absorbed = if latents.is_empty() {
            None
        } else {
            Some(self.apply_w_uv(&Tensor::cat(&latents, 2)?, HeadProducts::Rows)?)
        };
        let mut at = 0;
        let mut own_rows = |part: &PackedPart<'_>| -> Result<Tensor> {
            let all = absorbed
                .as_ref()
                .expect("an absorbed part has a latent output");
            let out = all.narrow(1, at, part.tokens)?;
            at += part.tokens;
            Ok(out)
        };
        let outs = outs
            .into_iter()
            .zip(parts.iter())
            .map(|(out, part)| out.map_or_else(|| own_rows(part), Ok))
            .collect::<Result<Vec<_>>>()?;
        let out = match <[Tensor; 1]>::try_from(outs) {
            Ok([one]) => one,
            Err(outs) => Tensor::cat(&outs, 1)?,
        };
        self.output(&out)
    }

    fn check_x(&self, x: &Tensor) -> Result<(usize, usize)> {
        let c = self.config.hidden_size;
        let (b, t) = match *x.dims() {
            [b, t, h] if h == c && b > 0 && t > 0 => (b, t),
            _ => {
                return Err(MlaError::InputShape {
                    what: "x",
                    expected: format!("[batch > 0, tokens > 0, {c}]"),
                    found: x.dims().to_vec(),
                })
            }
        };
        if x.dtype() != self.dtype() {
            return Err(MlaError::DTypeMismatch {
                what: "x",
                expected: self.dtype(),
                found: x.dtype(),
            });
        }
        Ok((b, t))
    }

    fn check_cache(&self, cache: &LayerCache, batch: usize) -> Result<()> {
        let c = &self.config;
        if cache.kv_lora_rank() != c.kv_lora_rank || cache.rope_dim() != c.qk_rope_head_dim {
            return Err(MlaError::Cache(format!(
                "built for kv_lora_rank {} / qk_rope_head_dim {}, the layer has {} / {}",
                cache.kv_lora_rank(),
                cache.rope_dim(),
                c.kv_lora_rank,
                c.qk_rope_head_dim
            )));
        }
        if cache.batch() != batch {
            return Err(MlaError::Cache(format!(
                "holds {} sequences, x has batch {batch}",
                cache.batch()
            )));
        }
        if cache.dtype() != self.dtype() {
            return Err(MlaError::DTypeMismatch {
                what: "cache",
                expected: self.dtype(),
                found: cache.dtype(),
            });
        }
        if !cache.device().same_device(self.device()) {
            return Err(MlaError::Cache(
                "lives on another device than the weights".into(),
            ));
        }
        Ok(())
    }

    /// Projections, norms and RoPE of `x` `[B, T, C]` at positions `start..start + T`.
    fn project(&self, x: &Tensor, start: usize, rope: &mut RopeCache) -> Result<Projected> {
        self.check_rope(rope)?;
        let (cos, sin) = rope.cos_sin(start, x.dim(1)?, x.device())?;
        self.project_rotated(x, &cos, &sin)
    }

    fn check_rope(&self, rope: &RopeCache) -> Result<()> {
        let r = self.config.qk_rope_head_dim;
        if rope.config().dim != r {
            return Err(MlaError::config(
                "qk_rope_head_dim",
                format!(
                    "is {r} but the rope cache rotates {} dims",
                    rope.config().dim
                ),
            ));
        }
        Ok(())
    }

    /// Projections, norms and RoPE of `x` `[B, T, C]` with token `i`'s rotation `cos[i]` /
    /// `sin[i]` (`[T, r/2]` each).
    fn project_rotated(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Projected> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (h, n, r) = (c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim);
        let (q, q_resid) = match &self.weights.query {
            QueryWeights::Direct { q_proj } => (linear(x, q_proj)?, None),
            QueryWeights::LowRank {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => {
                let q_a = rms_norm(&linear(x, q_a_proj)?, q_a_layernorm, c.rms_norm_eps)?;
                (linear(&q_a, q_b_proj)?, Some(q_a))
            }
        };
        // [B, T, H·(n+r)] -> [B, T, H, n+r] -> [B, H, T, n+r]
        let q = q.reshape((b, t, h, n + r))?.transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, n)?.contiguous()?;
        let q_pe = q.narrow(D::Minus1, n, r)?;

        // [B, T, R + r] -> c_kv [B, T, R] (normed), k_pe [B, T, r] (roped below)
        let kv = linear(x, &self.weights.kv_a_proj_with_mqa)?;
        let c_kv = rms_norm(
            &kv.narrow(D::Minus1, 0, c.kv_lora_rank)?,
            &self.weights.kv_a_layernorm,
            c.rms_norm_eps,
        )?;
        let k_pe = kv
            .narrow(D::Minus1, c.kv_lora_rank, r)?
            .contiguous()?
            .reshape((b, 1, t, r))?; // one shared rotary key "head"

        let q_pe = apply_rotary(&q_pe, cos, sin, c.rope_layout)?;
        let k_pe = apply_rotary(&k_pe, cos, sin, c.rope_layout)?.reshape((b, t, r))?;
        Ok(Projected {
            q_nope,
            q_pe,
            c_kv,
            k_pe,
            q_resid,
        })
    }

    /// Attention of the projected queries over all `keys` (whose last `T` are the queries'
    /// own tokens); returns `[B, T, H·v]`. The flash and absorbed paths read the keys'
    /// segments (cache pages) in place; the expanded oracle takes them as one tensor.
    fn attend(&self, p: &Projected, keys: &LatentKeys, path: AttentionPath) -> Result<Tensor> {
        match path {
            AttentionPath::Expanded => {
                let (c_all, k_all) = keys.to_contiguous()?;
                self.attend_expanded(p, &c_all, &k_all, None)
            }
            AttentionPath::Absorbed => self.attend_absorbed(p, keys, None),
            AttentionPath::Flash => self.attend_flash(p, keys),
        }
    }

    /// `extra`: an additive f32 mask `[B or 1, 1, T, S]` on top of the causal one (the sparse
    /// patterns' dense oracle, [`Mla::forward_masked`]).
    fn attend_expanded(
        &self,
        p: &Projected,
        c_all: &Tensor,
        k_all: &Tensor,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, h, t, _) = p.q_nope.dims4()?;
        let (n, r, v) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
        let s = c_all.dim(1)?;
        // [B, S, R] -> [B, S, H·(n+v)] -> [B, S, H, n+v] -> [B, H, S, n+v]
        let kv = linear(c_all, &self.weights.kv_b_proj)?
            .reshape((b, s, h, n + v))?
            .transpose(1, 2)?;
        let k_nope = kv.narrow(D::Minus1, 0, n)?;
        let values = kv.narrow(D::Minus1, n, v)?.contiguous()?; // [B, H, S, v]
                                                                // The shared rotary key, broadcast to every head: [B, S, r] -> [B, H, S, r]
        let k_rot = k_all.unsqueeze(1)?.broadcast_as((b, h, s, r))?;
        let keys = Tensor::cat(&[&k_nope, &k_rot], D::Minus1)?.contiguous()?; // [B, H, S, n+r]
        let queries = Tensor::cat(&[&p.q_nope, &p.q_pe], D::Minus1)?.contiguous()?; // [B, H, T, n+r]
        let scores = queries.matmul(&keys.t()?)?; // [B, H, T, S]
        let probs = self.softmax(&scores, t, s, extra)?;
        let out = probs.matmul(&values)?; // [B, H, T, v]
                                          // [B, H, T, v] -> [B, T, H, v] -> [B, T, H·v]
        Ok(out.transpose(1, 2)?.reshape((b, t, h * v))?)
    }

    /// The absorbed path over the keys' segments in place (cache pages): `W_UK` folded into
    /// the queries, attention over the latents, `W_UV` applied to the result.
    fn attend_absorbed(
        &self,
        p: &Projected,
        keys: &LatentKeys,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let heads = self.head_products(&p.q_nope, extra.is_none());
        let q_lat = self.absorb_query(&p.q_nope, heads)?;
        let out_lat = self.attend_latent(&q_lat, &p.q_pe, keys, extra)?;
        self.apply_w_uv(&out_lat, heads)
    }

    /// How the absorbed path's per-head products run for queries `q`: `linear`'s
    /// matrix-vector kernel where the fused CPU kernel runs (f32 on the CPU, no extra mask),
    /// candle's batched matmul otherwise.
    fn head_products(&self, q: &Tensor, no_mask: bool) -> HeadProducts {
        if self.fused_cpu && no_mask && q.device().is_cpu() && q.dtype() == DType::F32 {
            HeadProducts::Rows
        } else {
            HeadProducts::Matmul
        }
    }

    /// The attention of absorbed queries `q_lat` `[B, H, T, R]` (and `q_pe` `[B, H, T, r]`)
    /// over the latents: `[B, H, T, R]`, before `W_UV`. f32 on the CPU with no extra mask:
    /// the fused kernel (`latent.rs`), which reads each cached latent once. Otherwise candle
    /// ops ([`Mla::attend_latent_ops`]).
    fn attend_latent(
        &self,
        q_lat: &Tensor,
        q_pe: &Tensor,
        keys: &LatentKeys,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, h, t, rk) = q_lat.dims4()?;
        let r = q_pe.dim(D::Minus1)?;
        // The keys are shared by all heads, so heads x tokens are the rows of one product:
        // [B, H·T, R] x [B, R, S] + [B, H·T, r] x [B, r, S] -> [B, H·T, S]
        let q_lat = q_lat.reshape((b, h * t, rk))?;
        let q_pe = q_pe.reshape((b, h * t, r))?;
        if extra.is_none() && self.fused_cpu {
            let scale = self.softmax_scale as f32;
            if let Some(out) = latent::attend_tensors(&q_lat, &q_pe, t, scale, keys)? {
                return Ok(out.reshape((b, h, t, rk))?);
            }
        }
        self.attend_latent_ops(&q_lat, &q_pe, (b, h, t), keys, extra)
    }

    /// [`Mla::attend_latent`] in candle ops (any device and dtype; the fused CPU path's
    /// oracle): `q_lat` `[B, H·T, R]`, `q_pe` `[B, H·T, r]`. Scores per segment, joined along
    /// the keys (`[B, H·T, S]`, small next to the cache), one softmax, then the weighted sum
    /// accumulated segment by segment: the same products as one matmul over a contiguous
    /// cache, without copying the cache.
    fn attend_latent_ops(
        &self,
        q_lat: &Tensor,
        q_pe: &Tensor,
        (b, h, t): (usize, usize, usize),
        keys: &LatentKeys,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let rk = self.config.kv_lora_rank;
        let s = keys.len();
        let scores = keys
            .segments()
            .iter()
            .map(|(c_kv, k_pe)| Ok((q_lat.matmul(&c_kv.t()?)? + q_pe.matmul(&k_pe.t()?)?)?))
            .collect::<Result<Vec<_>>>()?;
        let scores = if scores.len() == 1 {
            scores.into_iter().next().expect("one segment")
        } else {
            Tensor::cat(&scores, 2)?
        };
        let probs = self
            .softmax(&scores.reshape((b, h, t, s))?, t, s, extra)?
            .reshape((b, h * t, s))?;
        // [B, H·T, S] x [B, S, R] -> [B, H·T, R], one segment at a time.
        let mut out_lat: Option<Tensor> = None;
        let mut k0 = 0;
        for (c_kv, _) in keys.segments() {
            let len = c_kv.dim(1)?;
            let part = probs.narrow(2, k0, len)?.matmul(c_kv)?;
            out_lat = Some(match out_lat {
                None => part,
                Some(acc) => (acc + part)?,
            });
            k0 += len;
        }
        Ok(out_lat
            .expect("at least one segment")
            .reshape((b, h, t, rk))?)
    }

    /// `q_lat = q_nope · W_UK` per head: `[B, H, T, n]` -> `[B, H, T, R]` (contiguous).
    fn absorb_query(&self, q_nope: &Tensor, how: HeadProducts) -> Result<Tensor> {
        let (b, h, t, n) = q_nope.dims4()?;
        let rk = self.config.kv_lora_rank;
        // [B, H, T, n] -> [H, B·T, n] x [H, n, R] -> [H, B·T, R] -> [B, H, T, R]
        let q = q_nope
            .transpose(0, 1)?
            .contiguous()?
            .reshape((h, b * t, n))?;
        Ok(how
            .run(&q, &self.absorbed.w_uk_t)?
            .reshape((h, b, t, rk))?
            .transpose(0, 1)?
            .contiguous()?)
    }

    /// `out = out_lat · W_UVᵀ` per head: `[B, H, T, R]` -> `[B, T, H·v]`.
    fn apply_w_uv(&self, out_lat: &Tensor, how: HeadProducts) -> Result<Tensor> {
        let (b, h, t, rk) = out_lat.dims4()?;
        let v = self.config.v_head_dim;
        // [B, H, T, R] -> [H, B·T, R] x [H, R, v] -> [H, B·T, v] -> [B, T, H, v] -> [B, T, H·v]
        let o = out_lat
            .transpose(0, 1)?
            .contiguous()?
            .reshape((h, b * t, rk))?;
        Ok(how
            .run(&o, &self.absorbed.w_uv)?
            .reshape((h, b, t, v))?
            .permute((1, 2, 0, 3))?
            .reshape((b, t, h * v))?)
    }

    /// Scaled, causally masked softmax of `scores` `[B, H, T, S]` computed in f32 whatever
    /// the input dtype, returned in the input dtype. Query `i` sees keys `0..=S - T + i`;
    /// `extra` (f32, broadcastable to the scores) is added on top.
    fn softmax(
        &self,
        scores: &Tensor,
        t: usize,
        s: usize,
        extra: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dtype = scores.dtype();
        let mut scores = (scores.to_dtype(DType::F32)? * self.softmax_scale)?;
        if t > 1 {
            scores = scores.broadcast_add(&causal_mask(t, s, s - t, 0, scores.device())?)?;
        }
        if let Some(extra) = extra {
            scores = scores.broadcast_add(extra)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?;
        Ok(probs.to_dtype(dtype)?)
    }

    fn output(&self, attn: &Tensor) -> Result<Tensor> {
        linear(attn, &self.weights.o_proj)
    }
}

/// How the absorbed path multiplies per head by `W_UK` and `W_UV` (each head's block a weight
/// `[out, in]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadProducts {
    /// candle's batched matmul against the transposed blocks (dense blocks: any device and
    /// dtype), [`Matrix::forward`] per head (FP8 blocks), or the f32 GEMM over the widened
    /// groups per head (blocks as stored): the many rows of a prefill tile.
    Matmul,
    /// `linear`'s matrix-vector kernels per head, every row through them: dense blocks all
    /// heads in one pass ([`linear::linear_row_invariant_blocks`]), the other formats head by
    /// head in parallel ([`Matrix::forward_row_invariant`]). A row's bits do not depend on the
    /// other rows, so the decode rows of many sequences share one pass over the weights
    /// ([`Mla::forward_packed`]) and each still equals its step alone.
    Rows,
}

impl HeadProducts {
    /// `x` `[H, M, K]` times each head's `w[h]ᵀ` (`w[h]` `[N, K]`): `[H, M, N]`.
    fn run(self, x: &Tensor, w: &HeadMatrices) -> Result<Tensor> {
        use rayon::prelude::*;
        let rows = self == HeadProducts::Rows;
        let per_head: &(dyn Fn(usize) -> Result<Tensor> + Sync) = match w {
            HeadMatrices::Stacked(w) if rows => {
                // One pass over every head's block: as 16 calls, tensor bookkeeping cost
                // more than reading the 128 KB blocks.
                return Ok(linear::linear_row_invariant_blocks(x, w)?);
            }
            HeadMatrices::Stacked(w) => {
                // Dense blocks kept narrower than the activations (bf16 on the CPU) are
                // widened for the product: a prefill tile's rows amortise it.
                let w = if w.dtype() == x.dtype() {
                    w.clone()
                } else {
                    w.to_dtype(x.dtype())?
                };
                return Ok(x.matmul(&w.transpose(1, 2)?)?);
            }
            HeadMatrices::PerHead(w) if rows => &|h| Ok(w[h].forward_row_invariant(&x.get(h)?)?),
            HeadMatrices::PerHead(w) => &|h| Ok(w[h].forward(&x.get(h)?)?),
            HeadMatrices::QuantPerHead(w) => &|h| {
                let isa = linear::Isa::detect();
                Ok(linear::linear_quant_f32_activations(
                    isa,
                    &x.get(h)?,
                    &w[h],
                    rows,
                )?)
            },
        };
        let outs = (0..x.dim(0)?)
            .into_par_iter()
            .map(per_head)
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&outs, 0)?)
    }
}

fn check_start(start_pos: usize, len: usize) -> Result<()> {
    if start_pos > len {
        Err(MlaError::Cache(format!(
            "position {start_pos} is beyond what the cache holds ({len} tokens)"
        )))
    } else if start_pos < len {
        Err(MlaError::Cache(format!(
            "holds {len} tokens but start_pos is {start_pos}: truncate the cache to {start_pos} first"
        )))
    } else {
        Ok(())
    }
}

/// `[t, len]` additive causal mask of queries at absolute positions `first_pos..first_pos + t`
/// against keys `k0..k0 + len`: 0 where key `k0 + j <= first_pos + i`, -inf elsewhere (the
/// whole `[T, S]` score matrix is `first_pos = S - T`, `k0 = 0`; a flash block any offsets).
pub(crate) fn causal_mask(
    t: usize,
    len: usize,
    first_pos: usize,
    k0: usize,
    device: &Device,
) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if k0 + j <= first_pos + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, len), device)?)
}

/// `x · wᵀ` for `x` `[B, T, in]` and `w` `[out, in]` in any [`Matrix`] format.
fn linear(x: &Tensor, w: &Matrix) -> Result<Tensor> {
    Ok(w.forward(&x.contiguous()?)?)
}

/// HF's RMSNorm: normalise in f32, cast back, then multiply by the weight.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let inv_rms = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let normed = xf.broadcast_mul(&inv_rms)?.to_dtype(dtype)?;
    Ok(normed.broadcast_mul(weight)?)
}
