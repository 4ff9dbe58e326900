//! Gate and layer configuration, validated once in `build()`.
//!
//! [`GateConfig`] holds exactly what routing needs; [`MoeConfig`] adds the expert widths.
//! With the `hf` feature, [`crate::hf`] reads the routing fields of a DeepSeek `config.json`
//! (release spelling) and resolves them with **HF transformers 5.23 semantics**:
//!
//! * softmax scoring (the V2 router, `DeepseekV2TopkRouter`): weights are the chosen scores times
//!   `routed_scaling_factor`; `norm_topk_prob` is **ignored** (the original V2 remote code
//!   normalised instead of scaling when it was set; HF 5.23 does not);
//! * sigmoid scoring (the V3 router, `DeepseekV3TopkRouter`): weights are the chosen unbiased
//!   scores, divided by `sum + 1e-20` when `norm_topk_prob`, **then** times
//!   `routed_scaling_factor`.

use crate::error::{config_err, Result};

/// How router logits become affinity scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "hf",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Scoring {
    /// `softmax` over all routed experts (DeepSeek-V2).
    Softmax,
    /// Element-wise `sigmoid` (DeepSeek-V3 / R1).
    Sigmoid,
}

/// How the top-k experts are chosen from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "hf",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum TopkMethod {
    /// Plain top-k over all experts; groups are ignored.
    Greedy,
    /// V2 device-limited routing: group score = MAX score of the group; keep `topk_group`
    /// groups, top-k inside them.
    GroupLimitedGreedy,
    /// V3 auxiliary-loss-free routing: selection scores = s + e_score_correction_bias; group
    /// score = sum of the group's top-2 selection scores; keep `topk_group` groups (the others
    /// masked with -inf); top-k on the masked selection scores; weights from the unbiased s.
    NoauxTc,
}

impl std::fmt::Display for Scoring {
    /// The `config.json` spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Softmax => "softmax",
            Self::Sigmoid => "sigmoid",
        })
    }
}

impl std::fmt::Display for TopkMethod {
    /// The `config.json` spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Greedy => "greedy",
            Self::GroupLimitedGreedy => "group_limited_greedy",
            Self::NoauxTc => "noaux_tc",
        })
    }
}

/// Everything the router needs. Build with [`GateConfig::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Model width (`hidden_size`).
    pub hidden_size: usize,
    /// Number of routed experts E (`n_routed_experts`).
    pub n_routed_experts: usize,
    /// Experts per token k (`num_experts_per_tok`).
    pub top_k: usize,
    /// Number of expert groups (`n_group`); 1 means no grouping.
    pub n_group: usize,
    /// Groups kept per token (`topk_group`).
    pub topk_group: usize,
    /// Score function.
    pub scoring: Scoring,
    /// Selection rule.
    pub topk_method: TopkMethod,
    /// Divide the chosen weights by their sum (+1e-20) before scaling. This is the
    /// *effective* flag: the HF reader (feature `hf`) clears it for softmax gates (HF 5.23 V2).
    pub normalize: bool,
    /// Multiplier applied to the (possibly normalised) weights.
    pub routed_scaling_factor: f32,
}

impl GateConfig {
    /// Starts a builder. Defaults: softmax, greedy, `n_group = topk_group = 1`,
    /// `normalize = false`, `routed_scaling_factor = 1.0`.
    pub fn builder(hidden_size: usize, n_routed_experts: usize, top_k: usize) -> GateConfigBuilder {
        GateConfigBuilder {
            cfg: GateConfig {
                hidden_size,
                n_routed_experts,
                top_k,
                n_group: 1,
                topk_group: 1,
                scoring: Scoring::Softmax,
                topk_method: TopkMethod::Greedy,
                normalize: false,
                routed_scaling_factor: 1.0,
            },
        }
    }

    /// Experts per group (`n_routed_experts / n_group`).
    pub fn experts_per_group(&self) -> usize {
        self.n_routed_experts / self.n_group
    }

    /// Whether the rule reads `e_score_correction_bias` (only `noaux_tc`).
    pub fn uses_bias(&self) -> bool {
        self.topk_method == TopkMethod::NoauxTc
    }

    /// Whether selection is restricted to `topk_group` groups.
    pub fn is_grouped(&self) -> bool {
        self.topk_method != TopkMethod::Greedy && self.n_group > 1
    }

    /// Checks the invariants; messages name the field and both values.
    pub fn validate(&self) -> Result<()> {
        let e = self.n_routed_experts;
        if self.hidden_size == 0 {
            return Err(config_err("hidden_size", "must be > 0"));
        }
        if e == 0 {
            return Err(config_err("n_routed_experts", "must be > 0"));
        }
        if self.top_k == 0 || self.top_k > e {
            return Err(config_err(
                "num_experts_per_tok",
                format!("num_experts_per_tok ({}) must be in 1..={e}", self.top_k),
            ));
        }
        if self.n_group == 0 {
            return Err(config_err("n_group", "must be > 0"));
        }
        if !e.is_multiple_of(self.n_group) {
            return Err(config_err(
                "n_group",
                format!(
                    "n_routed_experts ({e}) is not divisible by n_group ({})",
                    self.n_group
                ),
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(config_err(
                "topk_group",
                format!(
                    "topk_group ({}) must be in 1..=n_group ({})",
                    self.topk_group, self.n_group
                ),
            ));
        }
        if self.is_grouped() && self.top_k > self.topk_group * self.experts_per_group() {
            return Err(config_err(
                "num_experts_per_tok",
                format!(
                    "num_experts_per_tok ({}) exceeds the experts in the kept groups \
                     (topk_group {} x {} experts per group)",
                    self.top_k,
                    self.topk_group,
                    self.experts_per_group()
                ),
            ));
        }
        if self.topk_method == TopkMethod::NoauxTc && self.experts_per_group() < 2 {
            return Err(config_err(
                "n_group",
                format!(
                    "noaux_tc scores a group by its top-2 experts, but n_group ({}) leaves {} \
                     expert(s) per group",
                    self.n_group,
                    self.experts_per_group()
                ),
            ));
        }
        let rsf = self.routed_scaling_factor;
        if !(rsf.is_finite() && rsf > 0.0) {
            return Err(config_err(
                "routed_scaling_factor",
                format!("must be finite and > 0, found {rsf}"),
            ));
        }
        Ok(())
    }
}

/// Builder for [`GateConfig`]; [`build`](GateConfigBuilder::build) validates.
#[derive(Debug, Clone)]
pub struct GateConfigBuilder {
    cfg: GateConfig,
}

impl GateConfigBuilder {
    /// Score function (default softmax).
    pub fn scoring(mut self, scoring: Scoring) -> Self {
        self.cfg.scoring = scoring;
        self
    }
    /// Selection rule (default greedy).
    pub fn topk_method(mut self, method: TopkMethod) -> Self {
        self.cfg.topk_method = method;
        self
    }
    /// `n_group` and `topk_group` (default 1 and 1).
    pub fn groups(mut self, n_group: usize, topk_group: usize) -> Self {
        self.cfg.n_group = n_group;
        self.cfg.topk_group = topk_group;
        self
    }
    /// Normalise the chosen weights to sum 1 before scaling (default false).
    pub fn normalize(mut self, normalize: bool) -> Self {
        self.cfg.normalize = normalize;
        self
    }
    /// `routed_scaling_factor` (default 1.0).
    pub fn routed_scaling_factor(mut self, factor: f32) -> Self {
        self.cfg.routed_scaling_factor = factor;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<GateConfig> {
        self.cfg.validate()?;
        Ok(self.cfg)
    }
}

/// A MoE layer: the gate plus expert widths.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// The router.
    pub gate: GateConfig,
    /// Width of each routed expert (`moe_intermediate_size`).
    pub moe_intermediate_size: usize,
    /// Number of shared experts; they form ONE SwiGLU MLP of width
    /// `moe_intermediate_size * n_shared_experts` (0: none).
    pub n_shared_experts: usize,
}

impl MoeConfig {
    /// Combines a validated gate with the expert widths.
    pub fn new(
        gate: GateConfig,
        moe_intermediate_size: usize,
        n_shared_experts: usize,
    ) -> Result<Self> {
        gate.validate()?;
        if moe_intermediate_size == 0 {
            return Err(config_err("moe_intermediate_size", "must be > 0"));
        }
        Ok(Self {
            gate,
            moe_intermediate_size,
            n_shared_experts,
        })
    }

    /// Width of the shared-expert MLP.
    pub fn shared_intermediate_size(&self) -> usize {
        self.moe_intermediate_size * self.n_shared_experts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = GateConfig::builder(8, 64, 6)
            .topk_method(TopkMethod::GroupLimitedGreedy)
            .groups(3, 1)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "n_group: n_routed_experts (64) is not divisible by n_group (3)"
        );
        let err = GateConfig::builder(8, 16, 2)
            .groups(4, 5)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "topk_group: topk_group (5) must be in 1..=n_group (4)"
        );
        let err = GateConfig::builder(8, 16, 9)
            .topk_method(TopkMethod::NoauxTc)
            .groups(4, 2)
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("num_experts_per_tok:"), "{err}");
    }
}
