//! DeepSeek-V3.2's DSA forward ([`Mla::forward_dsa`]): the lightning indexer picks each
//! query's top-k keys, and the sparse MLA attends to those only.

use candle_core::Tensor;
use rope_yarn::RopeCache;

use super::sparse::selections;
use super::{check_start, AttentionPath, Mla};
use crate::cache::{LatentKeys, LayerCache};
use crate::error::{MlaError, Result};
use crate::indexer::{DsaCache, Indexer, IndexerCache};
use crate::sparse::SparsePattern;

impl Mla {
    /// DeepSeek Sparse Attention (HF transformers 5.23 `DeepseekV32Attention`): for `x`
    /// `[B, T, C]` at positions `start_pos..start_pos + T` (cache rules as [`Mla::forward`];
    /// both caches of `cache` must hold `start_pos` tokens), the [`Indexer`] scores every
    /// visible key with the query residual `q_a_layernorm(q_a_proj(x))` and selects each
    /// query's top-`index_topk` keys `K(p)` (all visible keys while there are at most
    /// `index_topk`), appending the new indexer keys to `cache.index`; MLA appends the new
    /// latents and attends to `K(p)` only, gathered from the cache
    /// ([`Mla::forward_sparse`] on `path`):
    ///
    /// ```text
    /// K(p)  = top-k_{s ≤ p} Σ_j w_j(p) · ReLU(q_j(p) · k(s) · D^-1/2)
    /// o_h   = Σ_{s ∈ K(p)} softmax_{s ∈ K(p)}(score_hs) · W_UV_h c_kv_s
    /// ```
    ///
    /// Returns the output `[B, T, C]` and the selection ([`SparsePattern::TopK`], row
    /// `b·T + i`, keys ascending). Needs a low-rank query (`q_lora_rank`).
    pub fn forward_dsa(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<&mut DsaCache>,
        indexer: &Indexer,
        path: AttentionPath,
    ) -> Result<(Tensor, SparsePattern)> {
        let cache = cache.map(|c| (&mut c.latent, &mut c.index));
        self.forward_dsa_split(x, start_pos, rope, cache, indexer, path)
    }

    /// [`Mla::forward_dsa`] over a layer's two caches borrowed apart (the latent cache and
    /// the indexer's key cache, same rules as a [`DsaCache`]): for callers that keep every
    /// layer's latent cache in one [`LatentKvCache`](crate::LatentKvCache) and the indexer
    /// caches beside it.
    pub fn forward_dsa_split(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<(&mut LayerCache, &mut IndexerCache)>,
        indexer: &Indexer,
        path: AttentionPath,
    ) -> Result<(Tensor, SparsePattern)> {
        let (b, t) = self.check_x(x)?;
        if indexer.config().q_lora_rank != self.config.q_lora_rank.unwrap_or(0)
            || indexer.config().hidden_size != self.config.hidden_size
            || indexer.config().rope_dim != self.config.qk_rope_head_dim
        {
            return Err(MlaError::config(
                "q_lora_rank",
                "the indexer was built for another layer shape (q_lora_rank, hidden_size or \
                 qk_rope_head_dim differ)",
            ));
        }
        self.check_rope(rope)?;
        let (cos, sin) = rope.cos_sin(start_pos, t, x.device())?;
        let p = self.project_rotated(x, &cos, &sin)?;
        let q_resid = p.q_resid.as_ref().ok_or_else(|| {
            MlaError::config(
                "q_lora_rank",
                "is null, but the DSA indexer reads the query residual",
            )
        })?;
        let (pattern, keys) = match cache {
            None => {
                let pattern = indexer.select(x, q_resid, &cos, &sin, None)?;
                (pattern, LatentKeys::contiguous(&p.c_kv, &p.k_pe)?)
            }
            Some((latent, index)) => {
                self.check_cache(latent, b)?;
                let len = latent.uniform_len().ok_or_else(|| {
                    MlaError::Cache(format!(
                        "sequences hold different lengths {:?}: DSA needs equal lengths",
                        latent.lens()
                    ))
                })?;
                if index.lens() != latent.lens() {
                    return Err(MlaError::Cache(format!(
                        "the indexer cache holds {:?} tokens, the latent cache {:?}: truncate \
                         them together (DsaCache::truncate)",
                        index.lens(),
                        latent.lens()
                    )));
                }
                check_start(start_pos, len)?;
                let pattern = indexer.select(x, q_resid, &cos, &sin, Some(index))?;
                latent.append(&p.c_kv, &p.k_pe)?;
                (pattern, latent.keys()?)
            }
        };
        let rows = selections(&pattern, b, t, keys.len())?;
        let out = self.attend_sparse(&p, &keys, path, &rows)?;
        Ok((self.output(&out)?, pattern))
    }
}
