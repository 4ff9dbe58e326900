//! Routing and routed experts in device-generic tensor ops: a forward pass that never waits
//! for the host.
//!
//! The host path ([`crate::gate::route`], [`crate::dispatch::Experts::forward_grouped`]) copies the gate logits
//! to the CPU, selects there and plans the dispatch there: on a GPU that is a device-to-host
//! copy and a stream synchronisation in every MoE layer of every step. Here the same
//! decisions are candle ops on whatever device the logits are on:
//!
//! - scores `s = softmax(l)` or `sigmoid(l)`; selection scores `s + b` (`noaux_tc`);
//! - grouped gates: group score `max` (V2) or the sum of the group's top two (V3, as the
//!   maximum plus the maximum of the rest), each group's rank by two argsorts (the inverse of
//!   the descending order), experts of groups ranked `>= topk_group` masked to `-inf`;
//! - the top `k` experts by a descending argsort, weights gathered from the UNBIASED `s`,
//!   normalised, scaled.
//!
//! Ties are broken by the sort, which on a GPU is not stable: an exactly tied score may pick
//! a different expert than the host path's lower-index rule (both are valid top-k; HF leaves
//! the order to `torch.topk`).
//!
//! The experts run from stacked weights ([`StackedExperts`]: `gate_up` `[E, 2I, H]`, `down`
//! `[E, H, I]`): on CUDA in bf16/f16 through candle's grouped MoE GEMM (pairs sorted by expert
//! on the device, one launch per projection); elsewhere for few (token, expert) pairs by
//! gathering each pair's expert and one batched matmul, for many by running every expert over
//! every token as one wide matmul and weighting with the (mostly zero) combine matrix.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{GateConfig, Scoring, TopkMethod};
use crate::error::{MoeError, Result};
use crate::gate::Routing;
use crate::mlp::Mlp;

/// A routing decision kept on the device: `indices` `[T, k]` u32 (best first) and `weights`
/// `[T, k]` f32 (normalised and scaled), as [`Routing`] holds them on the host.
#[derive(Debug, Clone)]
pub struct DeviceRouting {
    /// Chosen experts `[T, k]`, u32.
    pub indices: Tensor,
    /// Their weights `[T, k]`, f32.
    pub weights: Tensor,
}

impl DeviceRouting {
    /// Tokens T.
    pub fn n_tokens(&self) -> usize {
        self.indices.dims()[0]
    }

    /// Experts per token k.
    pub fn top_k(&self) -> usize {
        self.indices.dims()[1]
    }

    /// Copies the decision to the host (tests, diagnostics: this is the round trip the device
    /// path exists to avoid).
    pub fn to_host(&self) -> Result<Routing> {
        Ok(Routing {
            n_tokens: self.n_tokens(),
            top_k: self.top_k(),
            indices: linear::host::vec1(&self.indices.flatten_all()?)?,
            weights: linear::host::vec1(&self.weights.flatten_all()?)?,
        })
    }
}

/// Routes `T` tokens from their gate logits `[T, E]` (f32) with tensor ops on the logits'
/// device; `bias` `[E]` is `e_score_correction_bias` (read by `noaux_tc` only).
pub fn route_tensors(
    cfg: &GateConfig,
    logits: &Tensor,
    bias: Option<&Tensor>,
) -> Result<DeviceRouting> {
    let (t, e) = logits.dims2()?;
    let logits = logits.to_dtype(DType::F32)?;
    let s = match cfg.scoring {
        Scoring::Sigmoid => candle_nn::ops::sigmoid(&logits)?,
        Scoring::Softmax => candle_nn::ops::softmax_last_dim(&logits)?,
    };
    let mut sel = match (cfg.uses_bias(), bias) {
        (true, Some(b)) => s.broadcast_add(&b.to_dtype(DType::F32)?)?,
        _ => s.clone(),
    };
    if cfg.is_grouped() {
        let (g, per) = (cfg.n_group, cfg.experts_per_group());
        let groups = sel.reshape((t, g, per))?;
        let group_scores = match cfg.topk_method {
            TopkMethod::NoauxTc => top2_sum(&groups)?,
            _ => groups.max(D::Minus1)?,
        }; // [T, G]
           // Ranks: the inverse permutation of the descending order.
        let rank = group_scores
            .arg_sort_last_dim(false)?
            .arg_sort_last_dim(true)?;
        let keep = rank.lt(&Tensor::full(
            cfg.topk_group as u32,
            (t, g),
            logits.device(),
        )?)?;
        let keep = keep.unsqueeze(2)?.broadcast_as((t, g, per))?;
        let dropped = Tensor::full(f32::NEG_INFINITY, (t, g, per), logits.device())?;
        sel = keep.where_cond(&groups, &dropped)?.reshape((t, e))?;
    }
    let indices = sel
        .arg_sort_last_dim(false)?
        .narrow(1, 0, cfg.top_k)?
        .contiguous()?;
    let mut weights = s.gather(&indices, 1)?;
    if cfg.normalize {
        let denom = (weights.sum_keepdim(1)? + 1e-20)?;
        weights = weights.broadcast_div(&denom)?;
    }
    let weights = (weights * cfg.routed_scaling_factor as f64)?;
    Ok(DeviceRouting { indices, weights })
}

/// Sum of the two largest values along the last dim of `[T, G, n]`: the maximum plus the
/// maximum with the (first) arg-max masked out, so an exact tie still counts twice, as
/// `topk(2).sum()` does.
fn top2_sum(groups: &Tensor) -> Result<Tensor> {
    let n = groups.dim(D::Minus1)?;
    let first = groups.max_keepdim(D::Minus1)?;
    let at = groups.argmax_keepdim(D::Minus1)?; // [T, G, 1]
    let cols = Tensor::arange(0u32, n as u32, groups.device())?.reshape((1, 1, n))?;
    let is_first = cols.broadcast_eq(&at)?;
    let masked = is_first.where_cond(
        &Tensor::full(f32::NEG_INFINITY, groups.shape(), groups.device())?,
        groups,
    )?;
    let second = masked.max_keepdim(D::Minus1)?;
    Ok((first + second)?.squeeze(D::Minus1)?)
}

/// The routed experts' weights stacked for device dispatch: `gate_up` `[E, 2I, H]` (each
/// expert's `gate_proj` rows, then its `up_proj` rows) and `down` `[E, H, I]`.
#[derive(Debug, Clone)]
pub struct StackedExperts {
    gate_up: Tensor,
    down: Tensor,
}

impl StackedExperts {
    /// Stacks dense experts (all of one dtype). Quantised or FP8 matrices are an error: the
    /// device path multiplies plain tensors.
    pub fn new(experts: &[Mlp]) -> Result<Self> {
        let dense = |m: &linear::Matrix, name: &str| {
            m.as_dense().cloned().ok_or_else(|| {
                MoeError::Unsupported(format!(
                    "device dispatch needs dense expert matrices, {name} is {}",
                    m.format()
                ))
            })
        };
        let mut gate_up = Vec::with_capacity(experts.len());
        let mut down = Vec::with_capacity(experts.len());
        for (e, m) in experts.iter().enumerate() {
            let [g, u, d] = m.matrices();
            let g = dense(g, &format!("experts.{e}.gate_proj"))?;
            let u = dense(u, &format!("experts.{e}.up_proj"))?;
            gate_up.push(Tensor::cat(&[g, u], 0)?);
            down.push(dense(d, &format!("experts.{e}.down_proj"))?);
        }
        Ok(Self {
            gate_up: Tensor::stack(&gate_up, 0)?,
            down: Tensor::stack(&down, 0)?,
        })
    }

    /// Number of experts E.
    pub fn len(&self) -> usize {
        self.down.dims()[0]
    }

    /// Never true (stacking needs an expert).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inner width I.
    pub fn intermediate_size(&self) -> usize {
        self.down.dims()[2]
    }

    /// Expert `e` as an [`Mlp`] over views of the stacks (no copy): lets the per-expert paths
    /// share the stacked storage instead of holding a second copy of every weight.
    pub fn expert(&self, e: usize) -> Result<Mlp> {
        let i = self.intermediate_size();
        let gu = self.gate_up.get(e)?;
        Mlp::new(gu.narrow(0, 0, i)?, gu.narrow(0, i, i)?, self.down.get(e)?)
    }

    /// `sum_k w_k · expert_{i_k}(x)` for `x` `[T, H]`, in `x`'s dtype, with no host copy.
    pub fn forward(&self, x: &Tensor, routing: &DeviceRouting) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) = self.forward_fused(x, routing)? {
            return Ok(y);
        }
        if routing.n_tokens() * routing.top_k() <= self.len() {
            self.forward_gathered(x, routing)
        } else {
            self.forward_all(x, routing)
        }
    }

    /// Few pairs: gather each (token, slot) pair's expert weights and run one batched matmul.
    /// Reads only the chosen experts (plus one copy of them).
    pub fn forward_gathered(&self, x: &Tensor, routing: &DeviceRouting) -> Result<Tensor> {
        let (t, h) = x.dims2()?;
        let (k, i) = (routing.top_k(), self.intermediate_size());
        let p = t * k;
        let experts = routing.indices.flatten_all()?;
        let tokens = Tensor::arange(0u32, t as u32, x.device())?
            .unsqueeze(1)?
            .broadcast_as((t, k))?
            .flatten_all()?;
        let xs = x.index_select(&tokens, 0)?.unsqueeze(1)?; // [P, 1, H]
        let gu = self
            .gate_up
            .index_select(&experts, 0)?
            .to_dtype(x.dtype())?; // [P, 2I, H]
        let gu = xs.matmul(&gu.transpose(1, 2)?)?; // [P, 1, 2I]
        let act = swiglu(&gu, i)?; // [P, 1, I]
        let down = self.down.index_select(&experts, 0)?.to_dtype(x.dtype())?; // [P, H, I]
        let ys = act.matmul(&down.transpose(1, 2)?)?.reshape((p, h))?; // [P, H]
        weighted_sum(&ys, routing, t, h)
    }

    /// Many pairs: every expert over every token (`x · [gate_up]^T` as one `[T, E·2I]`
    /// matmul, then a batched down projection) weighted by the combine matrix `C` `[T, E]`
    /// (the routing weight where chosen, 0 elsewhere). `E / k` times the FLOPs of the chosen
    /// experts, no data-dependent shapes.
    pub fn forward_all(&self, x: &Tensor, routing: &DeviceRouting) -> Result<Tensor> {
        let (t, h) = x.dims2()?;
        let (e, i) = (self.len(), self.intermediate_size());
        let gu = self.gate_up.reshape((e * 2 * i, h))?.to_dtype(x.dtype())?;
        let gu = x.matmul(&gu.t()?)?.reshape((t, e, 2 * i))?;
        let act = swiglu(&gu, i)?.transpose(0, 1)?.contiguous()?; // [E, T, I]
        let down = self.down.to_dtype(x.dtype())?;
        let ys = act.matmul(&down.transpose(1, 2)?)?; // [E, T, H]
        let combine = combine_matrix(routing, e)?.to_dtype(x.dtype())?; // [T, E]
        let combine = combine.t()?.unsqueeze(2)?; // [E, T, 1]
        Ok(ys.broadcast_mul(&combine)?.sum(0)?)
    }

    /// candle's grouped MoE GEMM (CUDA, bf16/f16, widths a multiple of 8): the (token, slot)
    /// pairs sorted by expert on the device, one launch per projection. `None` where it does
    /// not apply.
    #[cfg(feature = "cuda")]
    fn forward_fused(&self, x: &Tensor, routing: &DeviceRouting) -> Result<Option<Tensor>> {
        let (t, h) = x.dims2()?;
        let (k, i) = (routing.top_k(), self.intermediate_size());
        let fits = x.device().is_cuda()
            && matches!(x.dtype(), DType::BF16 | DType::F16)
            && self.gate_up.dtype() == x.dtype()
            && h % 8 == 0
            && i % 8 == 0;
        if !fits {
            return Ok(None);
        }
        let prefill = t > 1;
        let (experts, pairs) = routing.indices.flatten_all()?.sort_last_dim(true)?;
        // The kernel reads each tensor's buffer from its start, ignoring a view's offset.
        let own = |t: Tensor| -> Result<Tensor> {
            if t.is_contiguous() && t.layout().start_offset() == 0 {
                Ok(t)
            } else {
                Ok(t.force_contiguous()?)
            }
        };
        let x = own(x.clone())?;
        let gu = candle_nn::moe::moe_gemm(&x, &self.gate_up, &None, &pairs, &experts, k, prefill)?;
        let act = own(swiglu(&gu, i)?)?; // [P, I]
        let w = Some(own(routing.weights.flatten_all()?)?);
        let ys = candle_nn::moe::moe_gemm(&act, &self.down, &w, &pairs, &experts, k, prefill)?;
        Ok(Some(ys.reshape((t, k, h))?.sum(1)?))
    }
}

/// `silu(gate) * up` over the last dim of `[..., 2I]` (gate first).
fn swiglu(gate_up: &Tensor, i: usize) -> Result<Tensor> {
    let last = gate_up.rank() - 1;
    let gate = gate_up.narrow(last, 0, i)?;
    let up = gate_up.narrow(last, i, i)?;
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

/// `[P, H]` pair outputs (pair `t·k + slot`) weighted by the routing and summed per token.
fn weighted_sum(ys: &Tensor, routing: &DeviceRouting, t: usize, h: usize) -> Result<Tensor> {
    let k = routing.top_k();
    let w = routing.weights.to_dtype(ys.dtype())?.reshape((t, k, 1))?;
    Ok(ys.reshape((t, k, h))?.broadcast_mul(&w)?.sum(1)?)
}

/// The dense combine matrix `[T, E]`: routing weight where an expert is chosen, 0 elsewhere.
fn combine_matrix(routing: &DeviceRouting, n_experts: usize) -> Result<Tensor> {
    let (t, k) = routing.indices.dims2()?;
    let dev: &Device = routing.indices.device();
    let ids = Tensor::arange(0u32, n_experts as u32, dev)?.reshape((1, 1, n_experts))?;
    let chosen = routing
        .indices
        .unsqueeze(2)?
        .broadcast_eq(&ids)?
        .to_dtype(DType::F32)?; // [T, k, E]
    let w = routing.weights.reshape((t, k, 1))?;
    Ok(chosen.broadcast_mul(&w)?.sum(1)?)
}
