//! The router: logits in f32 on the device, selection on the CPU over f32 rows.
//!
//! Selection is a handful of comparisons per expert, so it runs on plain `Vec<f32>` rows:
//! simple to read, exact, and far cheaper than the gate matmul. Ties are broken towards the
//! lower expert index (PyTorch's `topk` leaves tie order unspecified).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::config::{GateConfig, Scoring, TopkMethod};
use crate::device::{route_tensors, DeviceRouting};
use crate::error::{MoeError, Result};
use crate::mlp::load_weight;

/// The routing decision for `n_tokens` tokens: `top_k` experts and weights per token, stored
/// row-major (`[T, k]`). Within a token, experts are in selection order (best first).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Number of tokens T.
    pub n_tokens: usize,
    /// Experts per token k.
    pub top_k: usize,
    /// Chosen expert ids, `[T, k]` row-major.
    pub indices: Vec<u32>,
    /// Their weights (already normalised and scaled), `[T, k]` row-major.
    pub weights: Vec<f32>,
}

impl Routing {
    /// The experts and weights of token `t`.
    pub fn token(&self, t: usize) -> (&[u32], &[f32]) {
        let r = t * self.top_k..(t + 1) * self.top_k;
        (&self.indices[r.clone()], &self.weights[r])
    }

    /// Tokens routed to each expert (length `n_experts`).
    pub fn counts(&self, n_experts: usize) -> Vec<usize> {
        let mut c = vec![0; n_experts];
        for &e in &self.indices {
            c[e as usize] += 1;
        }
        c
    }
}

/// Affinity scores s for one token: softmax (V2) or sigmoid (V3) of the logits, in f32.
pub fn affinity_scores(scoring: Scoring, logits: &[f32], out: &mut Vec<f32>) {
    out.clear();
    match scoring {
        Scoring::Sigmoid => out.extend(logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp()))),
        Scoring::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            out.extend(logits.iter().map(|&l| (l - max).exp()));
            let sum: f32 = out.iter().sum();
            out.iter_mut().for_each(|p| *p /= sum);
        }
    }
}

/// Routes `T = logits.len() / E` tokens from their gate logits (`[T, E]` row-major, f32).
/// `bias` is `e_score_correction_bias`, read only by `noaux_tc` (None = zeros).
pub fn route(cfg: &GateConfig, logits: &[f32], bias: Option<&[f32]>) -> Routing {
    route_with_dropped_fill(cfg, logits, bias, f32::NEG_INFINITY)
}

/// [`route`] with the value written over dropped groups' selection scores. The correct value
/// is `-inf`; `0.0` reproduces a bug found in several public implementations (with negative
/// biases it lets experts of dropped groups win). Kept only for the regression test.
#[doc(hidden)]
pub fn route_with_dropped_fill(
    cfg: &GateConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    dropped_fill: f32,
) -> Routing {
    let (e, k) = (cfg.n_routed_experts, cfg.top_k);
    let n_tokens = logits.len() / e;
    let mut routing = Routing {
        n_tokens,
        top_k: k,
        indices: Vec::with_capacity(n_tokens * k),
        weights: Vec::with_capacity(n_tokens * k),
    };
    let (mut s, mut sel, mut picked) = (Vec::new(), Vec::new(), Vec::new());
    for row in logits.chunks_exact(e) {
        // s = softmax(logits) | sigmoid(logits)
        affinity_scores(cfg.scoring, row, &mut s);
        // selection scores: s + b for noaux_tc (the bias steers SELECTION only)
        sel.clear();
        match (cfg.uses_bias(), bias) {
            (true, Some(b)) => sel.extend(s.iter().zip(b).map(|(s, b)| s + b)),
            _ => sel.extend_from_slice(&s),
        }
        if cfg.is_grouped() {
            let g = cfg.experts_per_group();
            // group score: max (V2 group_limited_greedy) | sum of top-2 (V3 noaux_tc)
            let group_scores: Vec<f32> = sel
                .chunks_exact(g)
                .map(|grp| match cfg.topk_method {
                    TopkMethod::NoauxTc => {
                        top_k_desc(grp, 2, &mut picked);
                        grp[picked[0]] + grp[picked[1]]
                    }
                    _ => grp.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                })
                .collect();
            top_k_desc(&group_scores, cfg.topk_group, &mut picked);
            let mut keep = vec![false; cfg.n_group];
            picked.iter().for_each(|&i| keep[i] = true);
            for (grp, kept) in sel.chunks_exact_mut(g).zip(&keep) {
                if !kept {
                    grp.fill(dropped_fill);
                }
            }
        }
        // top-k on the (masked) selection scores; weights are the UNBIASED s
        top_k_desc(&sel, k, &mut picked);
        let mut w: Vec<f32> = picked.iter().map(|&i| s[i]).collect();
        if cfg.normalize {
            let denom = w.iter().sum::<f32>() + 1e-20;
            w.iter_mut().for_each(|x| *x /= denom);
        }
        w.iter_mut().for_each(|x| *x *= cfg.routed_scaling_factor);
        routing.indices.extend(picked.iter().map(|&i| i as u32));
        routing.weights.extend(w);
    }
    routing
}

/// Indices of the `k` largest values, best first; ties go to the lower index.
fn top_k_desc(vals: &[f32], k: usize, out: &mut Vec<usize>) {
    out.clear();
    let mut taken = vec![false; vals.len()];
    for _ in 0..k.min(vals.len()) {
        let mut best = usize::MAX;
        for (i, &v) in vals.iter().enumerate() {
            if !taken[i] && (best == usize::MAX || v > vals[best]) {
                best = i;
            }
        }
        taken[best] = true;
        out.push(best);
    }
}

/// The router of one MoE layer: `weight` `[E, hidden]` and, for `noaux_tc`,
/// `e_score_correction_bias` `[E]`.
#[derive(Debug, Clone)]
pub struct Gate {
    cfg: GateConfig,
    /// `[E, hidden]`, kept in f32 (logits are computed in f32 as in HF).
    weight: Tensor,
    bias: Option<Vec<f32>>,
    /// `bias` on the weight's device, for [`Gate::route_on_device`].
    bias_tensor: Option<Tensor>,
}

impl Gate {
    /// Builds a gate from tensors. `bias` is required for `noaux_tc` and ignored otherwise.
    pub fn new(cfg: GateConfig, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        cfg.validate()?;
        let expected = [cfg.n_routed_experts, cfg.hidden_size];
        if weight.dims() != expected {
            return Err(MoeError::Shape {
                name: "gate.weight".into(),
                expected: expected.to_vec(),
                found: weight.dims().to_vec(),
            });
        }
        let bias = match (cfg.uses_bias(), bias) {
            (false, _) => None,
            (true, None) => {
                return Err(MoeError::MissingTensor {
                    name: "gate.e_score_correction_bias".into(),
                })
            }
            (true, Some(b)) => {
                if b.dims() != [cfg.n_routed_experts] {
                    return Err(MoeError::Shape {
                        name: "gate.e_score_correction_bias".into(),
                        expected: vec![cfg.n_routed_experts],
                        found: b.dims().to_vec(),
                    });
                }
                Some(linear::host::vec1(&b.to_dtype(DType::F32)?)?)
            }
        };
        let weight = weight.to_dtype(DType::F32)?;
        let mut gate = Self {
            cfg,
            weight,
            bias: None,
            bias_tensor: None,
        };
        if let Some(b) = bias {
            gate.set_bias(b)?;
        }
        Ok(gate)
    }

    /// Loads `weight` (and `e_score_correction_bias` for `noaux_tc`) from `vb` (the `gate`
    /// prefix, e.g. `model.layers.3.mlp.gate`).
    pub fn load(vb: VarBuilder, cfg: &GateConfig) -> Result<Self> {
        let weight = load_weight(&vb, "weight", (cfg.n_routed_experts, cfg.hidden_size))?;
        let bias = if cfg.uses_bias() {
            Some(load_weight(
                &vb,
                "e_score_correction_bias",
                cfg.n_routed_experts,
            )?)
        } else {
            None
        };
        Self::new(cfg.clone(), weight, bias)
    }

    /// The configuration.
    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// `e_score_correction_bias`, if this gate uses one.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Replaces the correction bias (training-side balancing; see [`crate::balance`]).
    pub fn set_bias(&mut self, bias: Vec<f32>) -> Result<()> {
        if bias.len() != self.cfg.n_routed_experts {
            return Err(MoeError::Shape {
                name: "gate.e_score_correction_bias".into(),
                expected: vec![self.cfg.n_routed_experts],
                found: vec![bias.len()],
            });
        }
        self.bias_tensor = Some(Tensor::from_slice(&bias, bias.len(), self.weight.device())?);
        self.bias = Some(bias);
        Ok(())
    }

    /// Router logits `[T, E]` in f32 for `x` `[T, hidden]`. Every token's row goes through the
    /// matrix-vector kernel however many tokens there are (`linear::linear_row_invariant`; the
    /// router is a few hundred KB), so a token's routing does not depend on what it was
    /// batched with: a serving engine's batch invariance holds past `linear::GEMV_MAX_ROWS`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        Ok(linear::linear_row_invariant(&x, &self.weight)?)
    }

    /// Routes `x` `[T, hidden]`.
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        Ok(self.route_with_logits(x)?.1)
    }

    /// Routes `x` `[T, hidden]` with tensor ops on its device: no copy to the host
    /// ([`crate::device`]).
    pub fn route_on_device(&self, x: &Tensor) -> Result<DeviceRouting> {
        route_tensors(&self.cfg, &self.logits(x)?, self.bias_tensor.as_ref())
    }

    /// Routes `x` and also returns the logits `[T, E]`.
    pub fn route_with_logits(&self, x: &Tensor) -> Result<(Tensor, Routing)> {
        let logits = self.logits(x)?;
        // The host path's one round trip per layer (the device path avoids it).
        let flat: Vec<f32> = linear::host::vec1(&logits.flatten_all()?)?;
        Ok((logits, route(&self.cfg, &flat, self.bias())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noaux_tc_by_hand() {
        // 4 experts in 2 groups, keep 1 group, top-2. Group 1 has higher top-2 sum.
        let cfg = GateConfig::builder(1, 4, 2)
            .scoring(Scoring::Sigmoid)
            .topk_method(TopkMethod::NoauxTc)
            .groups(2, 1)
            .normalize(true)
            .routed_scaling_factor(2.0)
            .build()
            .unwrap();
        let logits = [0.0, 0.1, 1.0, 2.0];
        let r = route(&cfg, &logits, Some(&[0.0; 4]));
        assert_eq!(r.indices, vec![3, 2]);
        let s = |l: f32| 1.0 / (1.0 + (-l).exp());
        let (a, b) = (s(2.0), s(1.0));
        assert!((r.weights[0] - 2.0 * a / (a + b)).abs() < 1e-6);
        // A bias moves selection but not the weights' source.
        let r2 = route(&cfg, &logits, Some(&[5.0, 5.0, 0.0, 0.0]));
        assert_eq!(r2.indices, vec![1, 0]);
        assert!((r2.weights[1] - 2.0 * s(0.0) / (s(0.0) + s(0.1))).abs() < 1e-6);
    }
}
