//! DeepSeek Sparse Attention (DSA, DeepSeek-V3.2): the lightning [`Indexer`] that picks, for
//! each query, the `index_topk` cached tokens MLA attends to; its one-vector-per-token key
//! cache ([`IndexerCache`]); and [`DsaCache`], the latent and indexer caches moved together.
//!
//! For a token with input `x` (the attention input) and query residual
//! `q_r = q_a_layernorm(q_a_proj(x))` (MLA's, [`Mla::query_residual`](crate::Mla::query_residual)),
//! with `I` indexer heads of `D = index_head_dim` dims whose first `r = qk_rope_head_dim` dims
//! are rotary (half-split pairs `(i, i + r/2)`, unlike MLA's interleaved ones, same cos/sin):
//!
//! ```text
//! q_j      = RoPE_half(wq_b(q_r))_j                      j = 1..I, [D] each
//! k        = RoPE_half(LayerNorm(wk(x)))                 [D], cached: one vector per token
//! w_j      = weights_proj(x)_j · I^-1/2                  f32
//! I(p, s)  = Σ_j w_j(p) · ReLU(q_j(p) · k(s) · D^-1/2)   for keys s ≤ p
//! K(p)     = top-index_topk of I(p, ·) over s ≤ p         (every visible key when p + 1 ≤ topk)
//! ```
//!
//! (HF transformers 5.23 `DeepseekV32Indexer`; DeepSeek's reference additionally applies a
//! Hadamard rotation to `q` and `k`, which preserves the dot products, and scores in FP8.)
//! MLA then attends to `K(p)` only ([`Mla::forward_dsa`](crate::Mla::forward_dsa)).
//!
//! Ties and causality, against HF: HF adds its causal mask (`finfo.min` on future keys) to the
//! scores and takes `torch.topk(min(index_topk, S))`; when fewer than `index_topk` keys are
//! visible it returns future keys too, which the causal mask drops again, so the keys attended
//! are exactly the visible ones, as here. Among exactly equal scores at the top-k boundary
//! (ReLU makes exact zeros common) `torch.topk` keeps an implementation-defined subset; here
//! the lower key index wins (a stable order: score descending, then index ascending). NaN
//! scores rank above everything, as in `torch.topk`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use linear::WeightSpec;
use rope_yarn::{apply_rotary, RopeLayout};

use crate::cache::{LayerCache, CACHE_PAGE};
use crate::config::MlaConfig;
use crate::error::{MlaError, Result};
use crate::sparse::SparsePattern;

/// Queries scored at once by [`Indexer::select`]: bounds its f32 scratch to
/// `INDEXER_QUERY_TILE · I · S` values for a long prefill.
pub const INDEXER_QUERY_TILE: usize = 256;

/// The indexer's dimensions (HF `config.json` names).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexerConfig {
    /// Model width `C` (`hidden_size`).
    pub hidden_size: usize,
    /// Rank of MLA's query compression, the indexer's query input (`q_lora_rank`).
    pub q_lora_rank: usize,
    /// Indexer heads `I` (`index_n_heads`).
    pub n_heads: usize,
    /// Indexer head size `D` (`index_head_dim`), rotary part first.
    pub head_dim: usize,
    /// Rotary dims at the start of each head (`qk_rope_head_dim`, MLA's).
    pub rope_dim: usize,
    /// Keys kept per query (`index_topk`).
    pub topk: usize,
    /// `k_norm` LayerNorm epsilon (HF: 1e-6, not read from the config).
    pub layer_norm_eps: f64,
}

impl IndexerConfig {
    /// The indexer of an MLA layer of `mla` (which must have a low-rank query): validates
    /// every field, naming the HF one at fault.
    pub fn for_mla(
        mla: &MlaConfig,
        index_n_heads: usize,
        index_head_dim: usize,
        index_topk: usize,
    ) -> Result<Self> {
        let q_lora_rank = mla.q_lora_rank.ok_or_else(|| {
            MlaError::config(
                "q_lora_rank",
                "is null, but the DSA indexer reads the query residual",
            )
        })?;
        for (field, v) in [
            ("index_n_heads", index_n_heads),
            ("index_head_dim", index_head_dim),
            ("index_topk", index_topk),
        ] {
            if v == 0 {
                return Err(MlaError::config(field, "must be > 0"));
            }
        }
        if index_head_dim < mla.qk_rope_head_dim {
            return Err(MlaError::config(
                "index_head_dim",
                format!(
                    "is {index_head_dim}, smaller than its rotary part qk_rope_head_dim {}",
                    mla.qk_rope_head_dim
                ),
            ));
        }
        Ok(Self {
            hidden_size: mla.hidden_size,
            q_lora_rank,
            n_heads: index_n_heads,
            head_dim: index_head_dim,
            rope_dim: mla.qk_rope_head_dim,
            topk: index_topk,
            layer_norm_eps: 1e-6,
        })
    }

    /// The score scale `D^-1/2` (HF's `softmax_scale`, although no softmax follows).
    pub fn softmax_scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }
}

/// The indexer's weights in the checkpoint's `[out, in]` layout, under the HF names relative to
/// the layer's `self_attn.indexer` prefix.
#[derive(Debug, Clone)]
pub struct IndexerWeights {
    /// `wq_b.weight` `[I · D, q_lora_rank]` (FP8 in DeepSeek's release).
    pub wq_b: Tensor,
    /// `wk.weight` `[D, C]` (FP8 in DeepSeek's release).
    pub wk: Tensor,
    /// `k_norm.weight` `[D]` (LayerNorm scale).
    pub k_norm_weight: Tensor,
    /// `k_norm.bias` `[D]` (LayerNorm shift).
    pub k_norm_bias: Tensor,
    /// `weights_proj.weight` `[I, C]` (HF keeps it in f32).
    pub weights_proj: Tensor,
}

impl IndexerWeights {
    /// The tensors [`IndexerWeights::load`] reads, with their shapes.
    pub fn expected(c: &IndexerConfig) -> Vec<WeightSpec> {
        vec![
            WeightSpec::projection("wq_b.weight", c.n_heads * c.head_dim, c.q_lora_rank),
            WeightSpec::projection("wk.weight", c.head_dim, c.hidden_size),
            WeightSpec::plain("k_norm.weight", vec![c.head_dim]),
            WeightSpec::plain("k_norm.bias", vec![c.head_dim]),
            // DeepSeek's V3.2 release stores `weights_proj` in bf16, not FP8 (its reference
            // `inference/model.py`; HF keeps it in f32).
            WeightSpec::plain("weights_proj.weight", vec![c.n_heads, c.hidden_size]),
        ]
    }

    /// Loads the weights from `vb` prefixed at the indexer (`...self_attn.indexer`), checking
    /// every shape.
    pub fn load(vb: &VarBuilder, config: &IndexerConfig) -> Result<Self> {
        let get = |key: &str| -> Result<Tensor> {
            vb.get_unchecked_dtype(key, vb.dtype())
                .map_err(|source| MlaError::MissingWeight {
                    tensor: key.to_string(),
                    source,
                })
        };
        let w = Self {
            wq_b: get("wq_b.weight")?,
            wk: get("wk.weight")?,
            k_norm_weight: get("k_norm.weight")?,
            k_norm_bias: get("k_norm.bias")?,
            weights_proj: get("weights_proj.weight")?,
        };
        w.validate(config)?;
        Ok(w)
    }

    /// Checks every shape against `config`, naming the first tensor that does not fit.
    pub fn validate(&self, c: &IndexerConfig) -> Result<()> {
        let checks: [(&str, &Tensor, Vec<usize>); 5] = [
            (
                "wq_b",
                &self.wq_b,
                vec![c.n_heads * c.head_dim, c.q_lora_rank],
            ),
            ("wk", &self.wk, vec![c.head_dim, c.hidden_size]),
            ("k_norm.weight", &self.k_norm_weight, vec![c.head_dim]),
            ("k_norm.bias", &self.k_norm_bias, vec![c.head_dim]),
            (
                "weights_proj",
                &self.weights_proj,
                vec![c.n_heads, c.hidden_size],
            ),
        ];
        for (name, t, want) in checks {
            if t.dims() != want.as_slice() {
                return Err(MlaError::WeightShape {
                    tensor: format!("indexer.{name}"),
                    expected: want,
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// The DSA lightning indexer of one layer (see the [module docs](self) for the equations).
#[derive(Debug, Clone)]
pub struct Indexer {
    config: IndexerConfig,
    weights: IndexerWeights,
}

/// The indexer's projections of `T` new tokens.
struct IndexerProjected {
    /// Roped queries `[B, I, T, D]`, f32.
    q: Tensor,
    /// Roped keys `[B, T, D]`, in the compute dtype (what is cached).
    k: Tensor,
    /// Head weights `w_j · I^-1/2` `[B, T, I]`, f32.
    w: Tensor,
}

impl Indexer {
    /// Builds the indexer from weights in memory, checking their shapes.
    pub fn new(config: IndexerConfig, weights: IndexerWeights) -> Result<Self> {
        weights.validate(&config)?;
        Ok(Self { config, weights })
    }

    /// Loads the weights from `vb` prefixed at the layer's `self_attn.indexer`.
    pub fn load(vb: &VarBuilder, config: IndexerConfig) -> Result<Self> {
        let weights = IndexerWeights::load(vb, &config)?;
        Self::new(config, weights)
    }

    /// The configuration.
    pub fn config(&self) -> &IndexerConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &IndexerWeights {
        &self.weights
    }

    /// An empty key cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize, dtype: DType, device: &Device) -> Result<IndexerCache> {
        IndexerCache::new(batch, self.config.head_dim, dtype, device)
    }

    /// Projections of `x` `[B, T, C]` (query residual `q_resid` `[B, T, q_lora_rank]`) with
    /// token `i`'s rotation `cos[i]` / `sin[i]` (`[T, r/2]`, MLA's table).
    fn project(
        &self,
        x: &Tensor,
        q_resid: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<IndexerProjected> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        if q_resid.dims() != [b, t, c.q_lora_rank] {
            return Err(MlaError::InputShape {
                what: "q_resid",
                expected: format!("[{b}, {t}, {}]", c.q_lora_rank),
                found: q_resid.dims().to_vec(),
            });
        }
        let (i, d, r) = (c.n_heads, c.head_dim, c.rope_dim);
        let rope_first = |x: &Tensor| -> Result<Tensor> {
            // [B, h, T, D]: rotate the first r dims (half-split pairs), keep the rest.
            let rot = apply_rotary(&x.narrow(D::Minus1, 0, r)?, cos, sin, RopeLayout::HalfSplit)?;
            Ok(Tensor::cat(
                &[&rot, &x.narrow(D::Minus1, r, d - r)?],
                D::Minus1,
            )?)
        };
        let q = proj(q_resid, &self.weights.wq_b)?
            .reshape((b, t, i, d))?
            .transpose(1, 2)?;
        let q = rope_first(&q)?.to_dtype(DType::F32)?.contiguous()?;
        let k = layer_norm(
            &proj(x, &self.weights.wk)?,
            &self.weights.k_norm_weight,
            &self.weights.k_norm_bias,
            c.layer_norm_eps,
        )?
        .reshape((b, 1, t, d))?;
        let k = rope_first(&k)?.reshape((b, t, d))?.contiguous()?;
        let w = (proj(
            &x.to_dtype(self.weights.weights_proj.dtype())?,
            &self.weights.weights_proj,
        )?
        .to_dtype(DType::F32)?
            * (i as f64).powf(-0.5))?;
        Ok(IndexerProjected { q, k, w })
    }

    /// The scores `I(p, s)` `[len, S]` (f32, no mask) of queries `first..first + len` of
    /// sequence `bi` against all its keys (`segments`: `[S_k, D]` pieces in order).
    fn score_rows(
        &self,
        p: &IndexerProjected,
        bi: usize,
        first: usize,
        len: usize,
        segments: &[Tensor],
    ) -> Result<Tensor> {
        let q =
            p.q.narrow(0, bi, 1)?
                .squeeze(0)?
                .narrow(1, first, len)?
                .contiguous()?; // [I, len, D]
        let (heads, _, d) = q.dims3()?;
        // One GEMM per key page over all heads and queries, [I·len, D] x [D, S_k]: a matmul
        // batched over the heads ran I matrix-vector products per page at decode (the
        // indexer then cost ~100x its FLOPs, `benchmarks --bin dsa`).
        let q = q.reshape((heads * len, d))?;
        let parts = segments
            .iter()
            .map(|k| Ok(q.matmul(&k.to_dtype(DType::F32)?.t()?)?))
            .collect::<Result<Vec<_>>>()?;
        let scores = if parts.len() == 1 {
            parts.into_iter().next().expect("one")
        } else {
            Tensor::cat(&parts, D::Minus1)?
        }; // [I·len, S]
        let s = scores.dim(1)?;
        let scores = (scores * self.config.softmax_scale())?
            .relu()?
            .reshape((heads, len, s))?;
        // Σ_j w_j · relu(...): [len, 1, I] x [len, I, S] -> [len, 1, S]
        let w =
            p.w.narrow(0, bi, 1)?
                .squeeze(0)?
                .narrow(0, first, len)?
                .unsqueeze(1)?;
        Ok(w.contiguous()?
            .matmul(&scores.transpose(0, 1)?.contiguous()?)?
            .squeeze(1)?)
    }

    /// Appends the new keys to `cache` (when given) and returns the projections and each
    /// sequence's keys (`[S, D]` segments; without a cache the new tokens' own keys).
    fn prepare(
        &self,
        x: &Tensor,
        q_resid: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut IndexerCache>,
    ) -> Result<(IndexerProjected, Vec<Vec<Tensor>>)> {
        let (b, _, c) = x.dims3()?;
        if c != self.config.hidden_size {
            return Err(MlaError::InputShape {
                what: "x",
                expected: format!("[batch, tokens, {}]", self.config.hidden_size),
                found: x.dims().to_vec(),
            });
        }
        let p = self.project(x, q_resid, cos, sin)?;
        let keys = match cache {
            None => (0..b)
                .map(|bi| Ok(vec![p.k.narrow(0, bi, 1)?.squeeze(0)?]))
                .collect::<Result<Vec<_>>>()?,
            Some(cache) => {
                cache.append(&p.k)?;
                (0..b)
                    .map(|bi| cache.seq_segments(bi))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok((p, keys))
    }

    /// The index scores `[B, T, S]` (f32) of `x`'s tokens against every key, `-inf` on keys in
    /// a query's future (query `i`'s own key is `S - T + i`), appending the new keys to
    /// `cache` when given. `cos` / `sin` (`[T, r/2]`) are the MLA rotary table's rows for the
    /// tokens' positions. `O(T · S)`: for inspection and tests; [`Indexer::select`] keeps only
    /// the top-k.
    pub fn scores(
        &self,
        x: &Tensor,
        q_resid: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut IndexerCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (p, keys) = self.prepare(x, q_resid, cos, sin, cache)?;
        let mut out = Vec::with_capacity(b);
        for (bi, segs) in keys.iter().enumerate() {
            let rows = self.score_rows(&p, bi, 0, t, segs)?;
            let s = rows.dim(1)?;
            let mask = crate::attention::causal_mask(t, s, s - t, 0, x.device())?;
            out.push(rows.broadcast_add(&mask)?);
        }
        Ok(Tensor::stack(&out, 0)?)
    }

    /// The top-`index_topk` keys of each of `x`'s tokens, as a [`SparsePattern::TopK`] (row
    /// `b·T + i`, keys ascending), appending the new keys to `cache` when given. Scores
    /// [`INDEXER_QUERY_TILE`] queries at a time; the selection is [`top_k`] per query.
    pub fn select(
        &self,
        x: &Tensor,
        q_resid: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut IndexerCache>,
    ) -> Result<SparsePattern> {
        let (_, t, _) = x.dims3()?;
        let (p, keys) = self.prepare(x, q_resid, cos, sin, cache)?;
        let mut rows = Vec::with_capacity(keys.len() * t);
        for (bi, segs) in keys.iter().enumerate() {
            let s: usize = segs
                .iter()
                .map(|k| k.dim(0))
                .sum::<candle_core::Result<usize>>()?;
            for first in (0..t).step_by(INDEXER_QUERY_TILE) {
                let len = INDEXER_QUERY_TILE.min(t - first);
                let scores: Vec<Vec<f32>> =
                    linear::host::vec2(&self.score_rows(&p, bi, first, len, segs)?)?;
                for (j, row) in scores.iter().enumerate() {
                    let visible = s - t + first + j + 1;
                    rows.push(top_k(&row[..visible], self.config.topk));
                }
            }
        }
        Ok(SparsePattern::TopK(rows))
    }
}

/// The indices (ascending) of the `k` largest of `scores` (all of them when there are at most
/// `k`), ranking by score descending, then index ascending among equal scores; NaN ranks
/// highest (as in `torch.topk`). `O(len)` on average.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    if scores.len() <= k {
        return (0..scores.len()).collect();
    }
    let rank = |&a: &usize, &b: &usize| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => y
                .partial_cmp(&x)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b)),
        }
    };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, rank);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// `x · wᵀ` for `x` `[B, T, in]` and `w` `[out, in]`.
fn proj(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(linear::linear(&x.contiguous()?, w)?)
}

/// LayerNorm over the last dim, in f32, cast back: `(x - mean) / sqrt(var + eps) · w + b`.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let out = normed
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?;
    Ok(out.to_dtype(dtype)?)
}

/// The indexer's key cache: one `D`-vector per token per sequence, in pages of
/// [`CACHE_PAGE`] tokens that never move once written, copy-on-write across forks (like
/// [`LayerCache`]). It grows and rolls back with the layer's latent cache ([`DsaCache`]).
#[derive(Debug, Clone)]
pub struct IndexerCache {
    pages: Vec<Arc<Tensor>>,
    lens: Vec<usize>,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl IndexerCache {
    /// An empty cache of `batch` sequences of `head_dim`-value keys.
    pub fn new(batch: usize, head_dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        if batch == 0 || head_dim == 0 {
            return Err(MlaError::Cache(format!(
                "indexer cache needs batch > 0 and index_head_dim > 0, got {batch} / {head_dim}"
            )));
        }
        Ok(Self {
            pages: vec![],
            lens: vec![0; batch],
            head_dim,
            dtype,
            device: device.clone(),
        })
    }

    /// Tokens held by each sequence.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Bytes one token occupies: `D · sizeof(dtype)`.
    pub fn bytes_per_token(&self) -> usize {
        self.head_dim * self.dtype.size_in_bytes()
    }

    /// Appends `k` `[B, t, D]` to every sequence (all must hold the same number of tokens).
    pub fn append(&mut self, k: &Tensor) -> Result<()> {
        let b = self.batch();
        let (kb, t, d) = k.dims3()?;
        if kb != b || d != self.head_dim {
            return Err(MlaError::InputShape {
                what: "indexer keys",
                expected: format!("[{b}, tokens, {}]", self.head_dim),
                found: k.dims().to_vec(),
            });
        }
        if k.dtype() != self.dtype {
            return Err(MlaError::DTypeMismatch {
                what: "indexer keys",
                expected: self.dtype,
                found: k.dtype(),
            });
        }
        let len = self.lens[0];
        if self.lens.iter().any(|&l| l != len) {
            return Err(MlaError::Cache(format!(
                "indexer append needs equal sequence lengths, found {:?}",
                self.lens
            )));
        }
        while self.pages.len() * CACHE_PAGE < len + t {
            self.pages.push(Arc::new(Tensor::zeros(
                (b, CACHE_PAGE, self.head_dim),
                self.dtype,
                &self.device,
            )?));
        }
        let mut done = 0;
        while done < t {
            let at = len + done;
            let (page, offset) = (at / CACHE_PAGE, at % CACHE_PAGE);
            let n = (CACHE_PAGE - offset).min(t - done);
            if Arc::strong_count(&self.pages[page]) > 1 {
                self.pages[page] = Arc::new(self.pages[page].copy()?);
            }
            self.pages[page].slice_set(&k.narrow(1, done, n)?.contiguous()?, 1, offset)?;
            done += n;
        }
        self.lens.iter_mut().for_each(|l| *l += t);
        Ok(())
    }

    /// Sequence `i`'s keys as `[n, D]` page views, in order.
    pub fn seq_segments(&self, i: usize) -> Result<Vec<Tensor>> {
        let len = *self.lens.get(i).ok_or_else(|| {
            MlaError::Cache(format!(
                "sequence {i} out of range (batch {})",
                self.batch()
            ))
        })?;
        let mut out = Vec::new();
        for (p, page) in self.pages.iter().enumerate() {
            let start = p * CACHE_PAGE;
            if start >= len {
                break;
            }
            out.push(page.narrow(0, i, 1)?.squeeze(0)?.narrow(
                0,
                0,
                CACHE_PAGE.min(len - start),
            )?);
        }
        if out.is_empty() {
            out.push(Tensor::zeros((0, self.head_dim), self.dtype, &self.device)?);
        }
        Ok(out)
    }

    /// Rolls every sequence back to at most `pos` tokens.
    pub fn truncate(&mut self, pos: usize) {
        self.lens.iter_mut().for_each(|l| *l = (*l).min(pos));
    }

    /// Rolls sequence `i` back to at most `pos` tokens.
    pub fn truncate_seq(&mut self, i: usize, pos: usize) -> Result<()> {
        let b = self.batch();
        let l = self
            .lens
            .get_mut(i)
            .ok_or_else(|| MlaError::Cache(format!("sequence {i} out of range (batch {b})")))?;
        *l = (*l).min(pos);
        Ok(())
    }

    /// A second cache holding the same keys, pages shared copy-on-write.
    pub fn fork(&self) -> Self {
        self.clone()
    }
}

/// One DSA layer's caches: MLA's latent cache and the indexer's key cache, which always hold
/// the same tokens ([`Mla::forward_dsa`](crate::Mla::forward_dsa) checks it and appends to
/// both; truncation, e.g. to roll back rejected speculative tokens, rolls back both).
#[derive(Debug, Clone)]
pub struct DsaCache {
    /// The latent cache (`c_kv`, `k_pe`).
    pub latent: LayerCache,
    /// The indexer's key cache.
    pub index: IndexerCache,
}

impl DsaCache {
    /// Empty caches for `batch` sequences of `mla`'s and `indexer`'s shapes, in `mla`'s dtype.
    pub fn new(mla: &crate::Mla, indexer: &Indexer, batch: usize) -> Result<Self> {
        Ok(Self {
            latent: mla.new_cache(batch)?,
            index: indexer.new_cache(batch, mla.dtype(), mla.device())?,
        })
    }

    /// Tokens held by each sequence (those of the latent cache; the indexer's are equal).
    pub fn lens(&self) -> &[usize] {
        self.latent.lens()
    }

    /// Rolls both caches of every sequence back to at most `pos` tokens.
    pub fn truncate(&mut self, pos: usize) {
        self.latent.truncate(pos);
        self.index.truncate(pos);
    }

    /// Rolls both caches of sequence `i` back to at most `pos` tokens.
    pub fn truncate_seq(&mut self, i: usize, pos: usize) -> Result<()> {
        self.latent.truncate_seq(i, pos)?;
        self.index.truncate_seq(i, pos)
    }

    /// Both caches forked (pages shared copy-on-write).
    pub fn fork(&self) -> Self {
        self.clone()
    }

    /// Bytes one token occupies in this layer: the latent plus the indexer key.
    pub fn bytes_per_token(&self) -> usize {
        self.latent.bytes_per_token() + self.index.bytes_per_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_lower_index_and_keeps_everything_when_short() {
        assert_eq!(top_k(&[0.5, 0.1], 8), vec![0, 1]);
        assert_eq!(top_k(&[0.0, 1.0, 0.0, 0.0, 2.0], 3), vec![0, 1, 4]);
        assert_eq!(top_k(&[0.0, 0.0, 0.0, 0.0], 2), vec![0, 1]);
        assert_eq!(top_k(&[1.0, f32::NAN, 3.0], 1), vec![1]);
        assert_eq!(top_k(&[-1.0, -3.0, -2.0], 2), vec![0, 2]);
    }
}
