//! Sparse attention over the latent cache ([`Mla::forward_sparse`]): per query, only the keys a
//! [`SparsePattern`] selects are gathered from the cache pages and attended to; and the dense
//! oracle with an additive mask ([`Mla::forward_masked`]) the patterns are tested against.

use candle_core::{DType, Tensor, D};
use rope_yarn::RopeCache;

use super::{check_start, linear, AttentionPath, HeadProducts, Mla, Projected};
use crate::cache::{LatentKeys, LayerCache};
use crate::error::{MlaError, Result};
use crate::sparse::SparsePattern;

impl Mla {
    /// Sparse attention: like [`Mla::forward`] (same inputs, cache rules and result shape
    /// `[B, T, C]`), but query `i` of sequence `b`, whose own key is `p = S - T + i` (`S` keys
    /// after the append: its absolute position with a cache), attends only to the keys
    /// `K(p) = pattern(p) ∩ {0..=p}` ([`SparsePattern::select`] of row `b·T + i`):
    ///
    /// ```text
    /// score_hs = (q_nope_h · W_UK_h c_kv_s + q_pe_h · k_pe_s) · softmax_scale     s ∈ K(p)
    /// o_h      = Σ_{s ∈ K(p)} softmax(score_h)_s · W_UV_h c_kv_s
    /// ```
    ///
    /// which equals dense attention under the additive mask `0` on `K(p)`, `-inf` elsewhere
    /// ([`Mla::forward_masked`], the oracle). The selected latent rows (`c_kv`, `k_pe`) are
    /// gathered from the cache pages, each distinct key once per call, and nothing of size
    /// `T × S` is built, so a decode step costs `O(|K(p)|)`, not `O(S)`:
    ///
    /// - [`AttentionPath::Absorbed`] (and [`AttentionPath::Flash`], which has nothing to block
    ///   over here and runs the same gather): scores over the `R + r` dims of the gathered
    ///   latents against `q_lat = W_UKᵀ q_nope`, the weighted sum over the gathered `c_kv`,
    ///   `W_UV` once after; `2·(2R + r)` FLOPs per (query, selected key, head).
    /// - [`AttentionPath::Expanded`]: only the distinct gathered rows go through `kv_b_proj`
    ///   (`2·U·R·H·(n + v)` FLOPs for `U` distinct selected keys), then standard attention over
    ///   the selected per-head keys and values.
    ///
    /// Queries with fewer selected keys than the call's largest selection are padded with a
    /// selected key under a `-inf` score (so exactly zero weight). A query that selects no key
    /// is an error ([`MlaError::InvalidPattern`]).
    pub fn forward_sparse(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
        path: AttentionPath,
        pattern: &SparsePattern,
    ) -> Result<Tensor> {
        let (b, t) = self.check_x(x)?;
        pattern.validate(b * t)?;
        let (p, keys) = self.project_and_append(x, start_pos, rope, cache)?;
        let rows = selections(pattern, b, t, keys.len())?;
        let out = self.attend_sparse(&p, &keys, path, &rows)?;
        self.output(&out)
    }

    /// The dense oracle of the sparse patterns: [`Mla::forward`] on the
    /// [`Expanded`](AttentionPath::Expanded) or [`Absorbed`](AttentionPath::Absorbed) path
    /// ([`Flash`](AttentionPath::Flash) runs the absorbed one) with the additive f32 `mask`
    /// `[T, S]` or `[B, T, S]` (0 to keep a key, `-inf` to drop it; `S` keys after the append)
    /// added to the scaled scores on top of the causal mask, before the softmax:
    ///
    /// ```text
    /// o_h = softmax(score_h · softmax_scale + causal + mask) · V_h
    /// ```
    ///
    /// It materialises the `[B, H, T, S]` scores: a test oracle, not a decode path.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
        path: AttentionPath,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, t) = self.check_x(x)?;
        let (p, keys) = self.project_and_append(x, start_pos, rope, cache)?;
        let s = keys.len();
        let mask = match *mask.dims() {
            [mt, ms] if mt == t && ms == s => mask.reshape((1, 1, t, s))?,
            [mb, mt, ms] if mb == b && mt == t && ms == s => mask.reshape((b, 1, t, s))?,
            _ => {
                return Err(MlaError::InputShape {
                    what: "mask",
                    expected: format!("[{t}, {s}] or [{b}, {t}, {s}]"),
                    found: mask.dims().to_vec(),
                })
            }
        };
        let mask = mask.to_dtype(DType::F32)?;
        let out = match path {
            AttentionPath::Expanded => {
                let (c_all, k_all) = keys.to_contiguous()?;
                self.attend_expanded(&p, &c_all, &k_all, Some(&mask))?
            }
            AttentionPath::Absorbed | AttentionPath::Flash => {
                self.attend_absorbed(&p, &keys, Some(&mask))?
            }
        };
        self.output(&out)
    }

    /// The query residual `q_a_layernorm(q_a_proj(x))` `[B, T, q_lora_rank]` of a layer with a
    /// low-rank query (what DeepSeek-V3.2's indexer reads, [`crate::Indexer`]); `None` for a
    /// plain `q_proj`.
    pub fn query_residual(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_x(x)?;
        match &self.weights.query {
            crate::QueryWeights::Direct { .. } => Ok(None),
            crate::QueryWeights::LowRank {
                q_a_proj,
                q_a_layernorm,
                ..
            } => Ok(Some(super::rms_norm(
                &linear(x, q_a_proj)?,
                q_a_layernorm,
                self.config.rms_norm_eps,
            )?)),
        }
    }

    /// [`Mla::forward`]'s preamble: projections at `start_pos..`, then the keys attended to
    /// (the new tokens alone without a cache; the cache after appending them with one).
    pub(super) fn project_and_append(
        &self,
        x: &Tensor,
        start_pos: usize,
        rope: &mut RopeCache,
        cache: Option<&mut LayerCache>,
    ) -> Result<(Projected, LatentKeys)> {
        let (b, _) = self.check_x(x)?;
        let Some(cache) = cache else {
            let p = self.project(x, start_pos, rope)?;
            let keys = LatentKeys::contiguous(&p.c_kv, &p.k_pe)?;
            return Ok((p, keys));
        };
        self.check_cache(cache, b)?;
        let len = cache.uniform_len().ok_or_else(|| {
            MlaError::Cache(format!(
                "sequences hold different lengths {:?}: use forward_ragged (dense attention)",
                cache.lens()
            ))
        })?;
        check_start(start_pos, len)?;
        let p = self.project(x, start_pos, rope)?;
        cache.append(&p.c_kv, &p.k_pe)?;
        let keys = cache.keys()?;
        Ok((p, keys))
    }

    /// Attention of the projected queries over the selected keys only: `rows[b·T + i]` holds
    /// query `i` of sequence `b`'s keys (ascending, non-empty). Returns `[B, T, H·v]`.
    pub(super) fn attend_sparse(
        &self,
        p: &Projected,
        keys: &LatentKeys,
        path: AttentionPath,
        rows: &[Vec<usize>],
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, h, t, _) = p.q_nope.dims4()?;
        let (rk, n, r, v) = (
            c.kv_lora_rank,
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
        );
        let device = p.q_nope.device();
        let dtype = p.q_nope.dtype();
        let q_lat = match path {
            AttentionPath::Expanded => None,
            _ => Some(self.absorb_query(&p.q_nope, HeadProducts::Matmul)?), // [B, H, T, R]
        };
        let mut outs = Vec::with_capacity(b);
        for bi in 0..b {
            let sel = &rows[bi * t..(bi + 1) * t];
            let kmax = sel.iter().map(Vec::len).max().unwrap_or(0);
            // Pad every query to `kmax` keys with its first key, masked with -inf.
            let mut flat = Vec::with_capacity(t * kmax);
            let mut pad = Vec::with_capacity(t * kmax);
            for keys_i in sel {
                flat.extend_from_slice(keys_i);
                flat.extend(std::iter::repeat_n(keys_i[0], kmax - keys_i.len()));
                pad.extend(std::iter::repeat_n(0f32, keys_i.len()));
                pad.extend(std::iter::repeat_n(f32::NEG_INFINITY, kmax - keys_i.len()));
            }
            let pad = Tensor::from_vec(pad, (t, 1, kmax), device)?;
            let (c_u, k_u, idx) = keys.gather_unique(bi, &flat)?;
            // The gathered rotary keys `[T, kmax, r]`.
            let k_pe = k_u.index_select(&idx, 0)?.reshape((t, kmax, r))?;
            // This sequence's queries as `[T, H, ·]`.
            let per_query = |q: &Tensor| -> Result<Tensor> {
                Ok(q.narrow(0, bi, 1)?
                    .squeeze(0)?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let q_pe = per_query(&p.q_pe)?; // [T, H, r]
            let out = match &q_lat {
                Some(q_lat) => {
                    let c_kv = c_u.index_select(&idx, 0)?.reshape((t, kmax, rk))?;
                    let q_lat = per_query(q_lat)?; // [T, H, R]
                                                   // [T, H, R] x [T, R, kmax] + [T, H, r] x [T, r, kmax] -> [T, H, kmax]
                    let scores = (q_lat.matmul(&c_kv.t()?)? + q_pe.matmul(&k_pe.t()?)?)?;
                    let probs = self.sparse_softmax(&scores, &pad)?;
                    // [T, H, kmax] x [T, kmax, R] -> [T, H, R] -> [H, T, R]
                    probs.matmul(&c_kv)?.transpose(0, 1)?.contiguous()?
                }
                None => {
                    // Only the distinct gathered latents are expanded: [U, R] -> [U, H·(n+v)].
                    let u = c_u.dim(0)?;
                    let kv = linear(&c_u.unsqueeze(0)?, &self.weights.kv_b_proj)?
                        .reshape((u, h * (n + v)))?
                        .index_select(&idx, 0)?
                        .reshape((t, kmax, h, n + v))?
                        .transpose(1, 2)?; // [T, H, kmax, n+v]
                    let k_nope = kv.narrow(D::Minus1, 0, n)?;
                    let values = kv.narrow(D::Minus1, n, v)?.contiguous()?;
                    let k_rot = k_pe.unsqueeze(1)?.broadcast_as((t, h, kmax, r))?;
                    let k_all = Tensor::cat(&[&k_nope, &k_rot], D::Minus1)?.contiguous()?;
                    let q_nope = per_query(&p.q_nope)?; // [T, H, n]
                    let q = Tensor::cat(&[&q_nope, &q_pe], D::Minus1)?.unsqueeze(2)?; // [T, H, 1, n+r]
                    let scores = q.matmul(&k_all.t()?)?.squeeze(2)?; // [T, H, kmax]
                    let probs = self.sparse_softmax(&scores, &pad)?;
                    // [T, H, 1, kmax] x [T, H, kmax, v] -> [T, H, v] -> [H, T, v]
                    probs
                        .unsqueeze(2)?
                        .matmul(&values)?
                        .squeeze(2)?
                        .transpose(0, 1)?
                        .contiguous()?
                }
            };
            outs.push(out.to_dtype(dtype)?);
        }
        let out = Tensor::stack(&outs, 0)?; // [B, H, T, R or v]
        match path {
            AttentionPath::Expanded => Ok(out.transpose(1, 2)?.reshape((b, t, h * v))?),
            _ => self.apply_w_uv(&out, HeadProducts::Matmul),
        }
    }

    /// Scaled softmax over the selected keys in f32, with the padding mask `[T, 1, kmax]`;
    /// returned in the scores' dtype.
    fn sparse_softmax(&self, scores: &Tensor, pad: &Tensor) -> Result<Tensor> {
        let dtype = scores.dtype();
        let s = (scores.to_dtype(DType::F32)? * self.softmax_scale)?.broadcast_add(pad)?;
        Ok(candle_nn::ops::softmax_last_dim(&s.contiguous()?)?.to_dtype(dtype)?)
    }
}

/// Every query row's keys for a call of `b` sequences × `t` tokens over `s` keys, checked
/// non-empty.
pub(super) fn selections(
    pattern: &SparsePattern,
    b: usize,
    t: usize,
    s: usize,
) -> Result<Vec<Vec<usize>>> {
    let mut rows = Vec::with_capacity(b * t);
    for bi in 0..b {
        for i in 0..t {
            let query = s - t + i;
            let keys = pattern.select(bi * t + i, query);
            if keys.is_empty() {
                return Err(MlaError::InvalidPattern {
                    field: "selection",
                    reason: format!("query {i} (key {query}) of sequence {bi} selects no key"),
                });
            }
            rows.push(keys);
        }
    }
    Ok(rows)
}
