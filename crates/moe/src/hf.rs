//! The routing fields of an HF `config.json` (feature `hf`): their typed mirror, their defaults
//! and their resolution into a [`MoeConfig`] with **HF transformers 5.23 semantics** (see
//! [`crate::config`]).
//!
//! HF keys the router on the model class, not on the fields: `deepseek_v2` is a softmax gate
//! with greedy or group-limited routing, `deepseek_v3` a sigmoid gate with `noaux_tc`, and
//! contradicting `scoring_func` / `topk_method` values are silently ignored there. Here they
//! are refused, naming the field. This is the only code that reads routing fields: the `model`
//! crate deserialises its `config.json` into an [`HfRouting`] and calls [`HfRouting::resolve`];
//! [`MoeConfig::from_hf_json`] does the same for single-crate users.

use serde::Deserialize;

use crate::config::{GateConfig, MoeConfig, Scoring, TopkMethod};
use crate::error::{config_err, MoeError, Result};

/// Which router class the checkpoint's `model_type` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterFamily {
    /// `deepseek_v2` (V2, V2-Lite, V2.5): softmax; greedy or group-limited greedy.
    V2,
    /// `deepseek_v3` (V3, R1): sigmoid with `noaux_tc`.
    V3,
}

impl RouterFamily {
    fn scoring(self) -> Scoring {
        match self {
            Self::V2 => Scoring::Softmax,
            Self::V3 => Scoring::Sigmoid,
        }
    }

    fn model_type(self) -> &'static str {
        match self {
            Self::V2 => "deepseek_v2",
            Self::V3 => "deepseek_v3",
        }
    }

    fn methods(self) -> &'static [TopkMethod] {
        match self {
            Self::V2 => &[TopkMethod::Greedy, TopkMethod::GroupLimitedGreedy],
            Self::V3 => &[TopkMethod::NoauxTc],
        }
    }
}

/// The routing fields of `config.json`, as written. `n_routed_experts: null` (or absent)
/// means a dense model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HfRouting {
    /// Routed experts E.
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    /// Experts per token k.
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// Width of each routed (and shared) expert.
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    /// Shared experts (default 0).
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    /// Expert groups (default 1).
    #[serde(default)]
    pub n_group: Option<usize>,
    /// Groups kept per token (default 1).
    #[serde(default)]
    pub topk_group: Option<usize>,
    /// Selection rule (default: the family's first).
    #[serde(default)]
    pub topk_method: Option<TopkMethod>,
    /// Score function (default: the family's).
    #[serde(default)]
    pub scoring_func: Option<Scoring>,
    /// Normalise the top-k weights (default false; ignored by softmax routers, as in HF 5.23).
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// Multiplier of the routed output (default 1.0).
    #[serde(default)]
    pub routed_scaling_factor: Option<f64>,
}

impl HfRouting {
    /// Reads the routing fields of a `config.json` object; a wrongly typed field or an unknown
    /// method is an error naming it.
    pub fn from_value(config: &serde_json::Value) -> Result<Self> {
        serde_path_to_error::deserialize(config).map_err(path_error)
    }

    /// Whether the config declares routed experts.
    pub fn is_moe(&self) -> bool {
        self.n_routed_experts.is_some()
    }

    /// The validated MoE configuration of a model of width `hidden_size` whose `model_type`
    /// selects `family`; `None` for a dense model.
    pub fn resolve(&self, hidden_size: usize, family: RouterFamily) -> Result<Option<MoeConfig>> {
        let Some(experts) = self.n_routed_experts else {
            return Ok(None);
        };
        let required = |field: &'static str, v: Option<usize>| {
            v.ok_or_else(|| config_err(field, "missing (required when n_routed_experts is set)"))
        };
        let allowed = family.methods();
        let topk_method = self.topk_method.unwrap_or(allowed[0]);
        if !allowed.contains(&topk_method) {
            return Err(config_err(
                "topk_method",
                format!(
                    "{topk_method} is not valid for {} (expected {})",
                    family.model_type(),
                    allowed
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
        let scoring = self.scoring_func.unwrap_or(family.scoring());
        if scoring != family.scoring() {
            return Err(config_err(
                "scoring_func",
                format!(
                    "{} uses {}, found {scoring}",
                    family.model_type(),
                    family.scoring()
                ),
            ));
        }
        let gate = GateConfig::builder(
            hidden_size,
            experts,
            required("num_experts_per_tok", self.num_experts_per_tok)?,
        )
        .scoring(scoring)
        .topk_method(topk_method)
        .groups(self.n_group.unwrap_or(1), self.topk_group.unwrap_or(1))
        // HF 5.23: the V2 (softmax) router ignores norm_topk_prob; V3 honours it.
        .normalize(self.norm_topk_prob.unwrap_or(false) && scoring == Scoring::Sigmoid)
        .routed_scaling_factor(self.routed_scaling_factor.unwrap_or(1.0) as f32)
        .build()?;
        MoeConfig::new(
            gate,
            required("moe_intermediate_size", self.moe_intermediate_size)?,
            self.n_shared_experts.unwrap_or(0),
        )
        .map(Some)
    }
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> MoeError {
    let field = e.path().to_string();
    config_err(field, e.into_inner().to_string())
}

/// The two model-level fields the routing depends on.
#[derive(Deserialize)]
struct ModelFields {
    model_type: String,
    hidden_size: usize,
}

impl MoeConfig {
    /// Reads a DeepSeek `config.json` (release spelling) with HF 5.23 semantics (feature `hf`):
    /// `model_type` picks the router family and its defaults, `hidden_size` the width. Same
    /// code as the `model` crate's: [`HfRouting`]. A config without `n_routed_experts` is an
    /// error here (the model crate treats it as dense).
    pub fn from_hf_json(config: &serde_json::Value) -> Result<Self> {
        let model: ModelFields = serde_path_to_error::deserialize(config).map_err(path_error)?;
        let family = match model.model_type.as_str() {
            "deepseek_v2" => RouterFamily::V2,
            "deepseek_v3" => RouterFamily::V3,
            other => {
                return Err(config_err(
                    "model_type",
                    format!("expected deepseek_v2 or deepseek_v3, found {other:?}"),
                ))
            }
        };
        HfRouting::from_value(config)?
            .resolve(model.hidden_size, family)?
            .ok_or_else(|| config_err("n_routed_experts", "missing: not a MoE config"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_v2_ignores_norm_topk_prob_v3_honours_it() {
        let v2 = serde_json::json!({"model_type": "deepseek_v2", "hidden_size": 8,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
            "norm_topk_prob": true, "routed_scaling_factor": 2.0});
        let c = MoeConfig::from_hf_json(&v2).unwrap();
        assert!(!c.gate.normalize);
        assert_eq!(c.gate.scoring, Scoring::Softmax);
        let v3 = serde_json::json!({"model_type": "deepseek_v3", "hidden_size": 8,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
            "n_group": 2, "topk_group": 1, "norm_topk_prob": true});
        let c = MoeConfig::from_hf_json(&v3).unwrap();
        assert!(c.gate.normalize);
        assert_eq!(c.gate.topk_method, TopkMethod::NoauxTc);
    }

    #[test]
    fn contradicting_and_mistyped_fields_are_named() {
        let base = serde_json::json!({"model_type": "deepseek_v3", "hidden_size": 8,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 4,
            "n_group": 2, "topk_group": 1});
        for (field, value) in [
            ("topk_method", serde_json::json!("greedy")),
            ("topk_method", serde_json::json!("top_p")),
            ("scoring_func", serde_json::json!("softmax")),
            ("n_group", serde_json::json!("two")),
            ("routed_scaling_factor", serde_json::json!([1])),
        ] {
            let mut c = base.clone();
            c[field] = value;
            let err = MoeConfig::from_hf_json(&c).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{field}: ")), "{err}");
        }
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove("moe_intermediate_size");
        let err = MoeConfig::from_hf_json(&c).unwrap_err().to_string();
        assert!(err.starts_with("moe_intermediate_size: missing"), "{err}");
    }
}
