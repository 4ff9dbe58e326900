//! The flash path ([`AttentionPath::Flash`](super::AttentionPath::Flash)): attention with an
//! online softmax over key blocks, so no `[T, S]` score matrix is ever materialised.
//!
//! Queries are cut into tiles of at most [`FLASH_QUERY_BLOCK`] tokens and keys into blocks of
//! [`FLASH_KEY_BLOCK`]. Key blocks are visited in order, each prepared once (a view of the
//! latent cache, or its expansion through `kv_b_proj`) and offered to every query tile that
//! sees part of it; a block entirely in a tile's future is skipped, a block straddling the
//! diagonal is masked with -inf. Each tile keeps, per query row, the running max, sum and
//! weighted sum of the blocks seen so far ([`OnlineSoftmax`]).
//!
//! Inside the blocks either regrouping of the products can run ([`FlashFormulation`]); each
//! call takes the cheaper by a FLOP count calibrated on the CPU ([`Mla::flash_formulation`]).

use candle_core::{DType, Device, Tensor, D};
use linear::elementwise;
use rayon::prelude::*;

use super::{causal_mask, linear, HeadProducts, Mla, Projected};
use crate::cache::LatentKeys;
use crate::config::MlaConfig;
use crate::error::Result;

/// Keys per block of the flash path: a divisor of the latent cache's page
/// ([`crate::CACHE_PAGE`]), so a block is a view of a page where it lies. The f32 score scratch of one (tile, block) piece is
/// `B·H·min(T, FLASH_QUERY_BLOCK)·FLASH_KEY_BLOCK` values: 16 MiB for V2-Lite's 16 heads,
/// 128 MiB for V3's 128. On the V2-Lite-shaped `mla_prefill` benchmark (2,048-token prompt,
/// quiet 2-core machine) blocks of 256, 512 and 1,024 keys ran within 8% of each other in both
/// formulations (1,024 marginally ahead, 256 behind); 512 takes most of that for half the
/// scratch of 1,024.
pub const FLASH_KEY_BLOCK: usize = 512;

const _: () = assert!(crate::cache::CACHE_PAGE.is_multiple_of(FLASH_KEY_BLOCK));

/// Query tokens per tile of the flash path. Tiling the queries lets a long cache-free prefill
/// skip the key blocks entirely in a tile's future (half the score work of a single causal
/// pass) and bounds the score scratch when `T` is large; a 512-token prefill chunk is one
/// tile.
pub const FLASH_QUERY_BLOCK: usize = 512;

/// Which regrouping of the products [`AttentionPath::Flash`](super::AttentionPath::Flash) runs
/// inside its key blocks (the same two as the oracle paths, blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashFormulation {
    /// Scores `q_lat · c_kvᵀ + q_pe · k_peᵀ` and the weighted sum over the latent `c_kv`
    /// itself (width `R`), `W_UV` applied once after: reads the cache as it is stored.
    /// `2·(2R + r)` FLOPs per (query, key, head), plus `2·R·(n + v)` per (query, head) for
    /// `W_UK` and `W_UV`.
    Absorbed,
    /// Each key block expanded through `kv_b_proj` into per-head keys `[k_nope | k_pe]` and
    /// values: `2·(n + r + v)` FLOPs per (query, key, head), plus `2·R·(n + v)` per
    /// (key, head) for the expansion, which every call pays again for the cached keys.
    Expanded,
}

/// The expanded blocks' FLOPs count 15/8 times the absorbed ones' in
/// [`Mla::flash_formulation`]: on the CPU they run at ~1/1.9 of the absorbed blocks' FLOP rate
/// (per-head products only `n + r` deep instead of one product over all heads and `R`, plus
/// the expansion's copies), so the pure FLOP break-even (~171 new tokens over a long cache for
/// V2/V3) sat far from the measured one (between 256 and 512, the two even at 512): 15/8 puts
/// it at ~504.
const EXPANDED_COST: (usize, usize) = (15, 8);

impl Mla {
    /// The formulation [`AttentionPath::Flash`](super::AttentionPath::Flash) runs for `t` new
    /// tokens attending to `s` keys (cached + new): the cheaper by FLOP count over the
    /// causally visible (query, key) pairs, with the expanded blocks' FLOPs weighted by their
    /// measured lower rate (15/8: they run at ~1/1.9 of the absorbed blocks' FLOP rate on the
    /// CPU, per-head products being only `n + r` deep).
    ///
    /// Per (query, key) pair the expanded blocks cost less (`n + r + v` against `2R + r`), but
    /// they re-expand every key once per call, which pays off only when many queries share it:
    /// for V2/V3 shapes over a long cache the break-even is `T ≈ 504` new tokens, and a
    /// cache-free prompt goes expanded above ~470 tokens. Decode steps, verification blocks
    /// and short chunks therefore run absorbed, 512-token prefill chunks and long single-pass
    /// prompts expanded. Measured (`mla_prefill`, V2-Lite-shaped, f32, quiet 2-core machine),
    /// tokens/s of the layer with absorbed blocks / expanded blocks over a 2,048-token prompt:
    /// 2.74x in 64-token chunks, 1.42x at 128, 1.11x at 256, 0.94x at 512 (0.99x over 8,192
    /// tokens); 0.85x in 1,024-token chunks over 4,096; 0.64x for one 8,192-token pass.
    pub fn flash_formulation(&self, t: usize, s: usize) -> FlashFormulation {
        let (absorbed, expanded) = flash_flops(&self.config, t, s);
        let (num, den) = EXPANDED_COST;
        if expanded * num < absorbed * den {
            FlashFormulation::Expanded
        } else {
            FlashFormulation::Absorbed
        }
    }
}

/// FLOPs per head of the two formulations for `t` queries at the end of `s` keys, counting
/// only the causally visible pairs (the blocked kernels skip most of the rest).
fn flash_flops(c: &MlaConfig, t: usize, s: usize) -> (usize, usize) {
    let (rk, n, r, v) = (
        c.kv_lora_rank,
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
    );
    let pairs = t * (s - t) + t * (t + 1) / 2;
    let projection = 2 * rk * (n + v); // W_UK + W_UV per query, or kv_b_proj per key
    let absorbed = pairs * 2 * (2 * rk + r) + t * projection;
    let expanded = pairs * 2 * (n + r + v) + s * projection;
    (absorbed, expanded)
}

/// Running state of the online softmax of a set of query rows over the key blocks seen so
/// far. With `s_j` the scaled, masked f32 scores of block `j` and `V_j` its values:
///
/// ```text
/// m_j   = max(m_{j-1}, rowmax(s_j))
/// p_j   = exp(s_j - m_j)
/// l_j   = l_{j-1} · exp(m_{j-1} - m_j) + rowsum(p_j)
/// acc_j = acc_{j-1} · exp(m_{j-1} - m_j) + p_j · V_j
/// out   = acc_last / l_last
/// ```
///
/// The state starts at the first block (not at `m = -inf`), so `exp(m_{j-1} - m_j)` is never
/// `exp(-inf + inf)`: key 0 is visible to every query, so `m` is finite from block 0 on, and a
/// row that sees nothing of a later block gets `p = exp(-inf) = 0` and `alpha = 1`.
struct OnlineSoftmax {
    /// `m`, `[.., rows, 1]` f32.
    max: Tensor,
    /// `l`, `[.., rows, 1]` f32.
    sum: Tensor,
    /// `acc`, `[.., rows, dv]` f32.
    acc: Tensor,
}

impl OnlineSoftmax {
    /// The state after the first block; `weighted(p)` returns `p · V` in f32.
    fn first(scores: &Tensor, weighted: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let max = scores.max_keepdim(D::Minus1)?;
        let p = scores.broadcast_sub(&max)?.exp()?;
        Ok(Self {
            sum: p.sum_keepdim(D::Minus1)?,
            acc: weighted(&p)?,
            max,
        })
    }

    /// Folds in one more block, rescaling what was summed so far to the new max.
    fn update(
        self,
        scores: &Tensor,
        weighted: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let max = self.max.maximum(&scores.max_keepdim(D::Minus1)?)?;
        let alpha = (&self.max - &max)?.exp()?;
        let p = scores.broadcast_sub(&max)?.exp()?;
        let sum = ((&self.sum * &alpha)? + p.sum_keepdim(D::Minus1)?)?;
        let acc = (self.acc.broadcast_mul(&alpha)? + weighted(&p)?)?;
        Ok(Self { max, sum, acc })
    }

    /// `acc / l`, f32.
    fn finish(self) -> Result<Tensor> {
        Ok(self.acc.broadcast_div(&self.sum)?)
    }
}

/// [`OnlineSoftmax`] on the host, for f32 scores in CPU memory: per block, the scaling, the
/// causal mask and the update of `m`, `l` and `p` run as two passes over each query row
/// (`linear::elementwise::scaled_max`, then `exp_sum`, vectorised on AVX-512), in parallel
/// over rows (the tensor version makes about ten passes over the block's scores, each
/// a separate candle op). The state starts at `m = -inf`, `l = 0`, `acc = 0`: block 0 is
/// visible to every row, so `m` is finite after it and `exp(m_old - m_new)` is 0 there.
struct HostSoftmax {
    /// `[B, H, tile]`: the rows.
    dims: (usize, usize, usize),
    /// `m` per row (`[B, H, tile]` flattened).
    max: Vec<f32>,
    /// `l` per row.
    sum: Vec<f32>,
    /// `acc`, `[rows, dv]` row-major (empty until the first block gives `dv`).
    acc: Vec<f32>,
}

impl HostSoftmax {
    fn new((b, h, tile): (usize, usize, usize)) -> Self {
        let rows = b * h * tile;
        Self {
            dims: (b, h, tile),
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: Vec::new(),
        }
    }

    /// Folds in one block of raw f32 scores `[rows, len]` (row `r` is query `r % tile` of the
    /// tile, at position `first_pos + r % tile`; key `j` of the block at `k0 + j`), `scale`d,
    /// with `weighted(p)` returning `p · V` `[rows, dv]` in f32.
    fn fold(
        &mut self,
        scores: &[f32],
        (scale, first_pos, k0): (f32, usize, usize),
        weighted: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let (b, h, tile) = self.dims;
        let rows = b * h * tile;
        let len = scores.len() / rows;
        let isa = linear::Isa::detect();
        let mut p: Vec<f32> = vec![0.0; rows * len];
        let mut alpha = vec![0f32; rows];
        p.par_chunks_mut(len)
            .zip(scores.par_chunks(len))
            .zip(self.max.par_iter_mut())
            .zip(self.sum.par_iter_mut())
            .zip(alpha.par_iter_mut())
            .enumerate()
            .for_each(|(r, ((((p, s), m), l), a))| {
                // Keys k0..k0 + visible are at or before this query's position.
                let visible = (first_pos + r % tile + 1).saturating_sub(k0).min(len);
                let m_new = m.max(elementwise::scaled_max(isa, &s[..visible], scale));
                if m_new == f32::NEG_INFINITY {
                    *a = 1.0; // nothing visible yet: p stays 0, the state unchanged
                    return;
                }
                let row_sum =
                    elementwise::exp_sum(isa, &s[..visible], scale, m_new, &mut p[..visible]);
                *a = (*m - m_new).exp();
                *l = *l * *a + row_sum;
                *m = m_new;
            });
        let pv = weighted(&Tensor::from_vec(p, (b, h, tile, len), &Device::Cpu)?)?;
        let pv = pv.flatten_all()?;
        let (storage, layout) = pv.storage_and_layout();
        let Some(pv) = elementwise::host_f32(&storage, layout) else {
            return Err(
                candle_core::Error::Msg("flash: p · V is not an f32 CPU tensor".into()).into(),
            );
        };
        if self.acc.is_empty() {
            self.acc = vec![0.0; pv.len()];
        }
        let dv = pv.len() / rows;
        self.acc
            .par_chunks_mut(dv)
            .zip(pv.par_chunks(dv))
            .zip(alpha.par_iter())
            .for_each(|((acc, pv), &a)| {
                for (acc, &x) in acc.iter_mut().zip(pv) {
                    *acc = *acc * a + x;
                }
            });
        Ok(())
    }

    /// `acc / l` as an f32 `[B, H, tile, dv]` CPU tensor.
    fn finish(mut self) -> Result<Tensor> {
        let (b, h, tile) = self.dims;
        let dv = self.acc.len() / self.sum.len();
        self.acc
            .par_chunks_mut(dv)
            .zip(self.sum.par_iter())
            .for_each(|(acc, &l)| acc.iter_mut().for_each(|x| *x /= l));
        Ok(Tensor::from_vec(self.acc, (b, h, tile, dv), &Device::Cpu)?)
    }
}

/// One tile's softmax state: f32 scores on the CPU fold on the host ([`HostSoftmax`]),
/// others (another device, bf16 or f16 compute) through tensor ops ([`OnlineSoftmax`]).
enum TileSoftmax {
    /// No block folded yet.
    Empty,
    Host(HostSoftmax),
    Ops(OnlineSoftmax),
}

/// A run of consecutive query tokens: indices `first..first + len` of the `T` new tokens.
#[derive(Debug, Clone, Copy)]
struct Tile {
    first: usize,
    len: usize,
}

/// What the driver needs from a formulation. Scores and weights are laid out
/// `[B, H, tile, keys]`; the accumulator `[B, H, tile, dv]`.
trait Blocked {
    /// One key block, prepared once for every tile.
    type Block;
    /// Keys `k0..k0 + len`.
    fn block(&self, k0: usize, len: usize) -> Result<Self::Block>;
    /// Raw scores (compute dtype) of tile `i`'s queries against `block`: `[B, H, tile, len]`.
    fn scores(&self, i: usize, block: &Self::Block) -> Result<Tensor>;
    /// `p · V` in f32 for f32 weights `p` `[B, H, tile, len]`: `[B, H, tile, dv]`.
    fn weighted(&self, p: &Tensor, block: &Self::Block) -> Result<Tensor>;
    /// The normalised f32 `[B, H, tile, dv]` to the attention output `[B, tile, H·v]`.
    fn output(&self, out: &Tensor) -> Result<Tensor>;
}

/// Scores and values over the latent: `q_lat · c_kvᵀ + q_pe · k_peᵀ`, `acc` over `c_kv`.
struct AbsorbedBlocks<'a> {
    mla: &'a Mla,
    keys: &'a LatentKeys,
    /// Per tile: `q_lat` `[B, H·tile, R]` and `q_pe` `[B, H·tile, r]`, contiguous.
    queries: Vec<(Tensor, Tensor)>,
    dtype: DType,
}

impl<'a> AbsorbedBlocks<'a> {
    fn new(mla: &'a Mla, p: &Projected, keys: &'a LatentKeys, tiles: &[Tile]) -> Result<Self> {
        let q_lat = mla.absorb_query(&p.q_nope, HeadProducts::Matmul)?; // [B, H, T, R]
        let (b, h, _, rk) = q_lat.dims4()?;
        let r = p.q_pe.dim(D::Minus1)?;
        let queries = tiles
            .iter()
            .map(|tile| {
                let rows = |q: &Tensor, d: usize| -> Result<Tensor> {
                    Ok(q.narrow(2, tile.first, tile.len)?.contiguous()?.reshape((
                        b,
                        h * tile.len,
                        d,
                    ))?)
                };
                Ok((rows(&q_lat, rk)?, rows(&p.q_pe, r)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            mla,
            keys,
            queries,
            dtype: q_lat.dtype(),
        })
    }
}

impl Blocked for AbsorbedBlocks<'_> {
    /// Views of the latent cache: `c_kv` `[B, len, R]`, `k_pe` `[B, len, r]`.
    type Block = (Tensor, Tensor);

    fn block(&self, k0: usize, len: usize) -> Result<Self::Block> {
        self.keys.narrow(k0, len)
    }

    fn scores(&self, i: usize, (c_kv, k_pe): &Self::Block) -> Result<Tensor> {
        let (q_lat, q_pe) = &self.queries[i];
        let (b, rows, _) = q_lat.dims3()?;
        let h = self.mla.config.num_heads;
        // [B, H·tile, R] x [B, R, len] + [B, H·tile, r] x [B, r, len] -> [B, H, tile, len]
        let scores = (q_lat.matmul(&c_kv.t()?)? + q_pe.matmul(&k_pe.t()?)?)?;
        Ok(scores.reshape((b, h, rows / h, c_kv.dim(1)?))?)
    }

    fn weighted(&self, p: &Tensor, (c_kv, _): &Self::Block) -> Result<Tensor> {
        let (b, h, tile, len) = p.dims4()?;
        // [B, H·tile, len] x [B, len, R] -> [B, H, tile, R]
        let out = p
            .reshape((b, h * tile, len))?
            .to_dtype(self.dtype)?
            .matmul(c_kv)?;
        Ok(out.reshape((b, h, tile, ()))?.to_dtype(DType::F32)?)
    }

    fn output(&self, out: &Tensor) -> Result<Tensor> {
        self.mla
            .apply_w_uv(&out.to_dtype(self.dtype)?, HeadProducts::Matmul)
    }
}

/// Per-head keys and values of each block from `kv_b_proj`, as the expanded path does for
/// the whole cache.
struct ExpandedBlocks<'a> {
    mla: &'a Mla,
    keys: &'a LatentKeys,
    /// Per tile: `[q_nope | q_pe]` `[B, H, tile, n + r]`, contiguous.
    queries: Vec<Tensor>,
    dtype: DType,
}

impl<'a> ExpandedBlocks<'a> {
    fn new(mla: &'a Mla, p: &Projected, keys: &'a LatentKeys, tiles: &[Tile]) -> Result<Self> {
        let q = Tensor::cat(&[&p.q_nope, &p.q_pe], D::Minus1)?; // [B, H, T, n+r]
        let queries = tiles
            .iter()
            .map(|tile| Ok(q.narrow(2, tile.first, tile.len)?.contiguous()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            mla,
            keys,
            queries,
            dtype: q.dtype(),
        })
    }
}

impl Blocked for ExpandedBlocks<'_> {
    /// Keys `[B, H, len, n + r]` and values `[B, H, len, v]`, contiguous.
    type Block = (Tensor, Tensor);

    fn block(&self, k0: usize, len: usize) -> Result<Self::Block> {
        let c = &self.mla.config;
        let (n, r, v, h) = (
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
            c.num_heads,
        );
        let (c_kv, k_pe) = self.keys.narrow(k0, len)?;
        let b = c_kv.dim(0)?;
        // [B, len, R] -> [B, len, H·(n+v)] -> [B, H, len, n+v]
        let kv = linear(&c_kv, &self.mla.weights.kv_b_proj)?
            .reshape((b, len, h, n + v))?
            .transpose(1, 2)?;
        let k_rot = k_pe.unsqueeze(1)?.broadcast_as((b, h, len, r))?;
        let keys = Tensor::cat(&[&kv.narrow(D::Minus1, 0, n)?, &k_rot], D::Minus1)?;
        let values = kv.narrow(D::Minus1, n, v)?.contiguous()?;
        Ok((keys.contiguous()?, values))
    }

    fn scores(&self, i: usize, (keys, _): &Self::Block) -> Result<Tensor> {
        Ok(self.queries[i].matmul(&keys.t()?)?)
    }

    fn weighted(&self, p: &Tensor, (_, values): &Self::Block) -> Result<Tensor> {
        Ok(p.to_dtype(self.dtype)?
            .matmul(values)?
            .to_dtype(DType::F32)?)
    }

    fn output(&self, out: &Tensor) -> Result<Tensor> {
        // [B, H, tile, v] -> [B, tile, H, v] -> [B, tile, H·v]
        let (b, h, t, v) = out.dims4()?;
        Ok(out
            .to_dtype(self.dtype)?
            .transpose(1, 2)?
            .reshape((b, t, h * v))?)
    }
}

impl Mla {
    /// The flash path: attention of the projected queries over all `keys` (the last `T`
    /// being the queries' own tokens) with an online softmax over key blocks; returns
    /// `[B, T, H·v]`.
    pub(super) fn attend_flash(&self, p: &Projected, keys: &LatentKeys) -> Result<Tensor> {
        let (t, s) = (p.q_nope.dim(2)?, keys.len());
        let tiles = tiles(t);
        let device = p.q_nope.device();
        match self.flash_formulation(t, s) {
            FlashFormulation::Absorbed => {
                let blocks = AbsorbedBlocks::new(self, p, keys, &tiles)?;
                self.online_attention(&blocks, &tiles, s, device)
            }
            FlashFormulation::Expanded => {
                let blocks = ExpandedBlocks::new(self, p, keys, &tiles)?;
                self.online_attention(&blocks, &tiles, s, device)
            }
        }
    }

    /// The driver: key blocks in order, each offered to every tile that sees part of it.
    fn online_attention<F: Blocked>(
        &self,
        f: &F,
        tiles: &[Tile],
        s: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let t: usize = tiles.iter().map(|tile| tile.len).sum();
        // Query `i` sits at absolute position `past + i` and sees keys `0..=past + i`.
        let past = s - t;
        let mut states: Vec<TileSoftmax> = tiles.iter().map(|_| TileSoftmax::Empty).collect();
        for k0 in (0..s).step_by(FLASH_KEY_BLOCK) {
            let len = FLASH_KEY_BLOCK.min(s - k0);
            // The last tile's last query sees every key, so every block is used at least once.
            let block = f.block(k0, len)?;
            for (i, tile) in tiles.iter().enumerate() {
                let first_pos = past + tile.first;
                if k0 > first_pos + tile.len - 1 {
                    continue; // entirely in this tile's future
                }
                let scores = f.scores(i, &block)?;
                let weighted = |p: &Tensor| f.weighted(p, &block);
                states[i] = match std::mem::replace(&mut states[i], TileSoftmax::Empty) {
                    TileSoftmax::Empty
                        if scores.device().is_cpu() && scores.dtype() == DType::F32 =>
                    {
                        let (b, h, rows, _) = scores.dims4()?;
                        let mut state = HostSoftmax::new((b, h, rows));
                        self.fold_on_host(&mut state, &scores, first_pos, k0, weighted)?;
                        TileSoftmax::Host(state)
                    }
                    TileSoftmax::Host(mut state) => {
                        self.fold_on_host(&mut state, &scores, first_pos, k0, weighted)?;
                        TileSoftmax::Host(state)
                    }
                    TileSoftmax::Empty => {
                        let scores = self.scale_and_mask(&scores, first_pos, k0, device)?;
                        TileSoftmax::Ops(OnlineSoftmax::first(&scores, weighted)?)
                    }
                    TileSoftmax::Ops(state) => {
                        let scores = self.scale_and_mask(&scores, first_pos, k0, device)?;
                        TileSoftmax::Ops(state.update(&scores, weighted)?)
                    }
                };
            }
        }
        let outs = states
            .into_iter()
            .map(|state| {
                let out = match state {
                    TileSoftmax::Empty => unreachable!("block 0 is visible to every tile"),
                    TileSoftmax::Host(state) => state.finish()?,
                    TileSoftmax::Ops(state) => state.finish()?,
                };
                f.output(&out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 1)?)
    }

    /// [`HostSoftmax::fold`] of raw f32 CPU scores `[B, H, tile, len]`.
    fn fold_on_host(
        &self,
        state: &mut HostSoftmax,
        scores: &Tensor,
        first_pos: usize,
        k0: usize,
        weighted: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let scores = scores.contiguous()?;
        let (storage, layout) = scores.storage_and_layout();
        let Some(values) = elementwise::host_f32(&storage, layout) else {
            return Err(
                candle_core::Error::Msg("flash: scores are not an f32 CPU tensor".into()).into(),
            );
        };
        let scale = self.softmax_scale as f32;
        state.fold(values, (scale, first_pos, k0), weighted)
    }

    /// Raw scores `[B, H, tile, len]` of queries at positions `first_pos..` against keys
    /// `k0..k0 + len`, scaled in f32 and masked with -inf where a key is in a query's future.
    fn scale_and_mask(
        &self,
        scores: &Tensor,
        first_pos: usize,
        k0: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let (_, _, tile, len) = scores.dims4()?;
        let scores = (scores.to_dtype(DType::F32)? * self.softmax_scale)?;
        if k0 + len - 1 <= first_pos {
            return Ok(scores); // every key visible to every query of the tile
        }
        Ok(scores.broadcast_add(&causal_mask(tile, len, first_pos, k0, device)?)?)
    }
}

/// The query tiles of `t` new tokens.
fn tiles(t: usize) -> Vec<Tile> {
    (0..t)
        .step_by(FLASH_QUERY_BLOCK)
        .map(|first| Tile {
            first,
            len: FLASH_QUERY_BLOCK.min(t - first),
        })
        .collect()
}
