//! Routed experts and the three ways to run them: grouped dispatch (prefill), the decode path
//! (one token) and the naive per-token loop (the test oracle and benchmark baseline).
//!
//! Grouped dispatch, for T tokens and k experts each (T·k (token, slot) pairs):
//! 1. one counting sort of the pairs by expert (a single permutation, [`DispatchPlan`]);
//! 2. per active expert e: gather its tokens' rows (`index_select`), run the expert once as a
//!    matmul over `[n_e, H]`;
//! 3. multiply each result row by its routing weight, concatenate them in plan order and
//!    scatter-add them back with one `index_add`.
//!
//! On the CPU step 2 runs in parallel over experts with rayon, and step 3 on f32 results is
//! one pass over the output in parallel over tokens, each token summing its rows in plan
//! order: the same sums as `index_add` in the same order, so the same bits.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::device::{DeviceRouting, StackedExperts};
use crate::error::{MoeError, Result};
use crate::gate::Routing;
use crate::mlp::Mlp;

/// The (token, slot) pairs of a [`Routing`] sorted by expert.
#[derive(Debug, Clone)]
pub struct DispatchPlan {
    /// Pair ids `t * k + slot`, grouped by expert (stable within an expert).
    pub order: Vec<u32>,
    /// `order[offsets[e]..offsets[e + 1]]` are expert e's pairs; length E + 1.
    pub offsets: Vec<usize>,
}

impl DispatchPlan {
    /// Counting sort of the routing's pairs by expert id.
    pub fn new(routing: &Routing, n_experts: usize) -> Self {
        let mut offsets = vec![0usize; n_experts + 1];
        for &e in &routing.indices {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..n_experts {
            offsets[e + 1] += offsets[e];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; routing.indices.len()];
        for (pair, &e) in routing.indices.iter().enumerate() {
            order[next[e as usize]] = pair as u32;
            next[e as usize] += 1;
        }
        Self { order, offsets }
    }

    /// Experts that received at least one token.
    pub fn active_experts(&self) -> Vec<usize> {
        (0..self.offsets.len() - 1)
            .filter(|&e| self.offsets[e + 1] > self.offsets[e])
            .collect()
    }
}

/// The routed experts of one layer.
#[derive(Debug, Clone)]
pub struct Experts {
    experts: Vec<Mlp>,
    /// The same weights stacked for device dispatch ([`Experts::stack`]); the experts are
    /// then views of these stacks.
    stacked: Option<StackedExperts>,
}

impl Experts {
    /// From already-built expert MLPs (e.g. dequantised by the model crate). All must share
    /// one shape.
    pub fn new(experts: Vec<Mlp>) -> Result<Self> {
        let first = experts.first().ok_or(MoeError::MissingTensor {
            name: "experts.0".into(),
        })?;
        let (h, i) = (first.hidden_size(), first.intermediate_size());
        for (e, m) in experts.iter().enumerate() {
            if (m.hidden_size(), m.intermediate_size()) != (h, i) {
                return Err(MoeError::Shape {
                    name: format!("experts.{e}.gate_proj.weight"),
                    expected: vec![i, h],
                    found: vec![m.intermediate_size(), m.hidden_size()],
                });
            }
        }
        Ok(Self {
            experts,
            stacked: None,
        })
    }

    /// Stacks the (dense) experts for device dispatch ([`StackedExperts`]) and re-points each
    /// expert at views of the stacks, so the weights are held once. The device path's setup:
    /// on a GPU it keeps every MoE layer free of host copies.
    pub fn stack(&mut self) -> Result<()> {
        if self.stacked.is_none() {
            let stacked = StackedExperts::new(&self.experts)?;
            self.experts = (0..stacked.len())
                .map(|e| stacked.expert(e))
                .collect::<Result<_>>()?;
            self.stacked = Some(stacked);
        }
        Ok(())
    }

    /// The stacked weights, once [`Experts::stack`] has run.
    pub fn stacked(&self) -> Option<&StackedExperts> {
        self.stacked.as_ref()
    }

    /// Device dispatch ([`StackedExperts::forward`]): `x` `[T, H]`, routing on the device.
    /// Without [`Experts::stack`] the weights are stacked for this one call (a copy of every
    /// expert: for tests, never a decode loop).
    pub fn forward_device(&self, x: &Tensor, routing: &DeviceRouting) -> Result<Tensor> {
        match &self.stacked {
            Some(s) => s.forward(x, routing),
            None => StackedExperts::new(&self.experts)?.forward(x, routing),
        }
    }

    /// Loads `{e}.{gate,up,down}_proj.weight` for e in 0..n under `vb` (the `experts` prefix).
    pub fn load(vb: VarBuilder, n: usize, hidden: usize, intermediate: usize) -> Result<Self> {
        Self::load_with(vb, n, hidden, intermediate, &linear::ThroughVarBuilder)
    }

    /// [`Experts::load`] with the projections obtained from `matrices` ([`Mlp::load_with`]).
    pub fn load_with(
        vb: VarBuilder,
        n: usize,
        hidden: usize,
        intermediate: usize,
        matrices: &dyn linear::MatrixLoader,
    ) -> Result<Self> {
        let experts = (0..n)
            .map(|e| Mlp::load_with(vb.pp(e.to_string()), hidden, intermediate, matrices))
            .collect::<Result<Vec<_>>>()?;
        Self::new(experts)
    }

    /// Converts every expert's matrices to `format` (in parallel: experts are independent).
    pub fn quantize(&mut self, format: linear::QuantFormat) -> Result<()> {
        self.map_matrices(&|m| m.quantize(format))
    }

    /// Replaces every expert's matrices by `f` of them (in parallel: experts are
    /// independent); a stacked copy for device dispatch is dropped.
    pub fn map_matrices(&mut self, f: &linear::MapMatrix<'_>) -> Result<()> {
        self.stacked = None;
        self.experts
            .par_iter_mut()
            .try_for_each(|e| e.map_matrices(f))
    }

    /// Number of experts.
    pub fn len(&self) -> usize {
        self.experts.len()
    }

    /// Never true: construction needs at least one expert.
    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// Expert `e`.
    pub fn expert(&self, e: usize) -> &Mlp {
        &self.experts[e]
    }

    /// Grouped dispatch (see the module docs). `x` is `[T, H]`.
    pub fn forward_grouped(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        if routing.n_tokens == 0 {
            return Ok(x.zeros_like()?);
        }
        let dev = x.device();
        let plan = DispatchPlan::new(routing, self.len());
        // Experts with few tokens (<= linear::GEMV_MAX_ROWS) run on `linear`'s matrix-vector
        // kernel inside `Mlp::forward`; busy experts on the GEMM.
        let run = |e: usize| -> Result<Tensor> {
            let pairs = &plan.order[plan.offsets[e]..plan.offsets[e + 1]];
            let tokens: Vec<u32> = pairs.iter().map(|&p| p / routing.top_k as u32).collect();
            let xs = x.index_select(&Tensor::from_vec(tokens, pairs.len(), dev)?, 0)?; // [n_e, H]
            self.experts[e].forward(&xs) // [n_e, H]
        };
        let active = plan.active_experts();
        let parts: Vec<Tensor> = if matches!(dev, Device::Cpu) {
            active.par_iter().map(|&e| run(e)).collect::<Result<_>>()?
        } else {
            active.iter().map(|&e| run(e)).collect::<Result<_>>()?
        };
        if let Some(y) = combine_on_host(x, routing, &plan, &active, &parts)? {
            return Ok(y);
        }
        combine_with_index_add(x, routing, &plan, &active, &parts)
    }

    /// One token (`x` `[1, H]`): runs only the chosen experts, in parallel on the CPU, each
    /// reading its weights once (`linear`'s matrix-vector kernel), and sums them weighted.
    pub fn forward_decode(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        let (idx, w) = routing.token(0);
        let run = |(&e, &wk): (&u32, &f32)| -> Result<Tensor> {
            Ok((self.experts[e as usize].forward(x)? * wk as f64)?)
        };
        let parts: Vec<Tensor> = if matches!(x.device(), Device::Cpu) {
            idx.par_iter().zip(w).map(run).collect::<Result<_>>()?
        } else {
            idx.iter().zip(w).map(run).collect::<Result<_>>()?
        };
        let mut y = x.zeros_like()?;
        for part in parts {
            y = (y + part)?;
        }
        Ok(y)
    }

    /// The naive oracle: for every token, for every chosen expert, run the expert on that one
    /// row and add `w * expert(x_t)`.
    pub fn forward_naive(&self, x: &Tensor, routing: &Routing) -> Result<Tensor> {
        if routing.n_tokens == 0 {
            return Ok(x.zeros_like()?);
        }
        let mut rows = Vec::with_capacity(routing.n_tokens);
        for t in 0..routing.n_tokens {
            let xt = x.narrow(0, t, 1)?; // [1, H]
            let (idx, w) = routing.token(t);
            let mut acc = xt.zeros_like()?;
            for (&e, &wk) in idx.iter().zip(w) {
                let y = self.experts[e as usize].forward(&xt)?;
                acc = (acc + (y * wk as f64)?)?;
            }
            rows.push(acc);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// Step 3 on the host for f32 CPU results: `out[t] = Σ w_p · y_p` over token t's pairs p in
/// plan order (`index_add`'s order, from zero), in parallel over tokens. `None` when a result
/// is not a contiguous f32 CPU tensor.
fn combine_on_host(
    x: &Tensor,
    routing: &Routing,
    plan: &DispatchPlan,
    active: &[usize],
    parts: &[Tensor],
) -> Result<Option<Tensor>> {
    let guards: Vec<_> = parts.iter().map(Tensor::storage_and_layout).collect();
    let Some(rows) = guards
        .iter()
        .map(|(s, l)| linear::elementwise::host_f32(s, l))
        .collect::<Option<Vec<&[f32]>>>()
    else {
        return Ok(None);
    };
    let (t, h) = x.dims2()?;
    let k = routing.top_k;
    // Where each pair's result row is: (part, row). Parts follow `active` (ascending experts),
    // so ordering pairs by it is plan order.
    let mut at = vec![(0usize, 0usize); t * k];
    for (part, &e) in active.iter().enumerate() {
        for (row, &p) in plan.order[plan.offsets[e]..plan.offsets[e + 1]]
            .iter()
            .enumerate()
        {
            at[p as usize] = (part, row);
        }
    }
    let mut out = vec![0f32; t * h];
    out.par_chunks_mut(h).enumerate().for_each(|(token, out)| {
        let mut pairs: Vec<usize> = (token * k..(token + 1) * k).collect();
        pairs.sort_unstable_by_key(|&p| at[p]);
        for p in pairs {
            let (part, row) = at[p];
            let w = routing.weights[p];
            for (o, &y) in out.iter_mut().zip(&rows[part][row * h..(row + 1) * h]) {
                *o += y * w;
            }
        }
    });
    Ok(Some(Tensor::from_vec(out, (t, h), x.device())?))
}

/// Step 3 with tensor ops (any device and dtype): weight the rows, concatenate them in plan
/// order and scatter-add them with one `index_add`.
fn combine_with_index_add(
    x: &Tensor,
    routing: &Routing,
    plan: &DispatchPlan,
    active: &[usize],
    parts: &[Tensor],
) -> Result<Tensor> {
    let dev = x.device();
    let weighted = active
        .iter()
        .zip(parts)
        .map(|(&e, ys)| {
            let pairs = &plan.order[plan.offsets[e]..plan.offsets[e + 1]];
            let w: Vec<f32> = pairs.iter().map(|&p| routing.weights[p as usize]).collect();
            let w = Tensor::from_vec(w, (pairs.len(), 1), dev)?.to_dtype(ys.dtype())?;
            Ok(ys.broadcast_mul(&w)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let ys = Tensor::cat(&weighted, 0)?; // [T*k, H] in plan order
    let k = routing.top_k as u32;
    let tokens: Vec<u32> = plan.order.iter().map(|&p| p / k).collect();
    let tokens = Tensor::from_vec(tokens, plan.order.len(), dev)?;
    Ok(x.zeros_like()?.index_add(&tokens, &ys, 0)?)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;
    use candle_core::DType;

    /// The host scatter sums what `index_add` sums, in its order: the same bits, with tokens
    /// sharing experts, experts left idle and a token routed to one expert twice over k slots.
    #[test]
    fn host_combine_is_index_add_bit_for_bit() {
        let dev = Device::Cpu;
        let (t, h, k, n_experts) = (9, 13, 3, 5);
        let indices: Vec<u32> = (0..t * k).map(|p| ((p * 7 + p / 5) % 4) as u32).collect();
        let weights: Vec<f32> = (0..t * k).map(|p| (p as f32 * 0.37).sin()).collect();
        let routing = Routing {
            n_tokens: t,
            top_k: k,
            indices,
            weights,
        };
        let plan = DispatchPlan::new(&routing, n_experts);
        let active = plan.active_experts();
        assert!(
            active.len() < n_experts,
            "an idle expert is part of the case"
        );
        let x = Tensor::zeros((t, h), DType::F32, &dev).unwrap();
        let parts: Vec<Tensor> = active
            .iter()
            .map(|&e| {
                let n = plan.offsets[e + 1] - plan.offsets[e];
                let v: Vec<f32> = (0..n * h)
                    .map(|i| (i as f32 * 0.91 + e as f32).cos())
                    .collect();
                Tensor::from_vec(v, (n, h), &dev).unwrap()
            })
            .collect();
        let host = combine_on_host(&x, &routing, &plan, &active, &parts)
            .unwrap()
            .expect("f32 CPU parts take the host path");
        let ops = combine_with_index_add(&x, &routing, &plan, &active, &parts).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        assert_eq!(bits(&host), bits(&ops));
        let bf16: Vec<Tensor> = parts
            .iter()
            .map(|p| p.to_dtype(DType::BF16).unwrap())
            .collect();
        assert!(combine_on_host(&x, &routing, &plan, &active, &bf16)
            .unwrap()
            .is_none());
    }
}
