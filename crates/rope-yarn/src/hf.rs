//! The rotary fields of an HF `config.json` (feature `hf`): their typed mirror, their defaults,
//! and their resolution into a [`RopeConfig`].
//!
//! Two spellings exist: DeepSeek's releases write a top-level `rope_theta` and a `rope_scaling`
//! object keyed by `type`; transformers 5.x writes `rope_parameters` with `rope_type` and
//! `rope_theta` inside. [`HfRope`] reads both. This is the only code that reads rotary fields:
//! the `model` crate deserialises its `config.json` into an [`HfRope`] and calls
//! [`HfRope::resolve`], and [`RopeConfig::from_hf_config`] does the same for single-crate users.

use serde::Deserialize;
use serde_json::Value;

use crate::config::{RopeConfig, RopeScaling, YarnParams};
use crate::error::{Result, RopeError};

/// The rotary fields of `config.json`, as written (every field optional; defaults are applied
/// by [`HfRope::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HfRope {
    /// Base `b` in the release spelling (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The model's context length: YaRN's fallbacks for a missing pretrained length or factor.
    #[serde(default)]
    pub max_position_embeddings: Option<f64>,
    /// Scaling in the release spelling.
    #[serde(default)]
    pub rope_scaling: Option<HfRopeParams>,
    /// Scaling (and base) in the transformers 5.x spelling; wins over `rope_scaling`.
    #[serde(default)]
    pub rope_parameters: Option<HfRopeParams>,
}

/// A `rope_scaling` / `rope_parameters` object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HfRopeParams {
    /// `default`, `linear` or `yarn` (transformers' key).
    #[serde(default)]
    pub rope_type: Option<String>,
    /// The same, in the releases' key (`rope_type` wins when both are present).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Base `b` (transformers 5.x only).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Extension factor `s`.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Pretrained context length `L`.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
    /// YaRN β_fast (default 32; 0 means the default, as in HF).
    #[serde(default)]
    pub beta_fast: Option<f64>,
    /// YaRN β_slow (default 1; 0 means the default, as in HF).
    #[serde(default)]
    pub beta_slow: Option<f64>,
    /// YaRN numerator magnitude.
    #[serde(default)]
    pub mscale: Option<f64>,
    /// YaRN denominator magnitude and softmax-scale factor.
    #[serde(default)]
    pub mscale_all_dim: Option<f64>,
    /// Explicit cos/sin factor.
    #[serde(default)]
    pub attention_factor: Option<f64>,
    /// Floor/ceil the correction range (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// The rotary schemes this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeType {
    /// Plain RoPE.
    Default,
    /// Position interpolation.
    Linear,
    /// YaRN.
    Yarn,
}

impl std::str::FromStr for RopeType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "linear" => Ok(Self::Linear),
            "yarn" => Ok(Self::Yarn),
            other => Err(format!(
                "unsupported rope type {other:?} (supported: default, linear, yarn)"
            )),
        }
    }
}

impl HfRope {
    /// Reads the rotary fields of a `config.json` object; a wrongly typed field is an error
    /// naming it (`rope_scaling.factor: invalid type ...`).
    pub fn from_value(config: &Value) -> Result<Self> {
        if !config.is_object() {
            return Err(RopeError::config("config", "expected a JSON object"));
        }
        serde_path_to_error::deserialize(config).map_err(|e| {
            let field = e.path().to_string();
            RopeError::config(field, e.into_inner().to_string())
        })
    }

    /// The validated configuration for a rotary head of `dim` dimensions
    /// (`qk_rope_head_dim`). As in HF, a YaRN config without `original_max_position_embeddings`
    /// falls back to `max_position_embeddings`, and one without `factor` uses
    /// `max_position_embeddings / original_max_position_embeddings`.
    pub fn resolve(&self, dim: usize) -> Result<RopeConfig> {
        let (section, params) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => ("rope_parameters", Some(p)),
            (None, p) => ("rope_scaling", p.as_ref()),
        };
        let field = |name: &str| format!("{section}.{name}");
        let theta = params
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let kind = match params.and_then(|p| p.rope_type.as_ref().or(p.kind.as_ref())) {
            None => RopeType::Default,
            Some(s) => s
                .parse()
                .map_err(|reason| RopeError::config(field("rope_type"), reason))?,
        };
        let p = params.cloned().unwrap_or_default();
        let scaling = match kind {
            RopeType::Default => RopeScaling::None,
            RopeType::Linear => RopeScaling::Linear {
                factor: p
                    .factor
                    .ok_or_else(|| RopeError::config(field("factor"), "missing"))?,
            },
            RopeType::Yarn => {
                let original = match (
                    p.original_max_position_embeddings,
                    self.max_position_embeddings,
                ) {
                    (Some(v), _) => v,
                    (None, Some(v)) => v,
                    (None, None) => {
                        return Err(RopeError::config(
                            field("original_max_position_embeddings"),
                            "missing (and no max_position_embeddings to fall back on)",
                        ))
                    }
                };
                if original.fract() != 0.0 || original < 1.0 {
                    return Err(RopeError::config(
                        field("original_max_position_embeddings"),
                        format!("expected a positive integer, found {original}"),
                    ));
                }
                let factor = match (p.factor, self.max_position_embeddings) {
                    (Some(f), _) => f,
                    (None, Some(max)) => max / original,
                    (None, None) => return Err(RopeError::config(field("factor"), "missing")),
                };
                RopeScaling::Yarn(YarnParams {
                    factor,
                    original_max_position_embeddings: original as usize,
                    // HF uses `or`: a 0 or null beta means the default.
                    beta_fast: p.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: p.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0),
                    mscale: p.mscale,
                    mscale_all_dim: p.mscale_all_dim,
                    attention_factor: p.attention_factor,
                    truncate: p.truncate.unwrap_or(true),
                })
            }
        };
        RopeConfig::with_scaling(dim, theta, scaling).map_err(|e| match e {
            // Validation speaks of `rope_scaling`; say where the value really came from.
            RopeError::InvalidConfig { field, reason } => RopeError::InvalidConfig {
                field: field.replacen("rope_scaling", section, 1),
                reason,
            },
            other => other,
        })
    }
}

impl RopeConfig {
    /// Reads the rotary settings of an HF `config.json` object (feature `hf`): both spellings,
    /// HF's defaults and fallbacks, errors naming the field. `dim` is the rotary head size
    /// (`qk_rope_head_dim`). Same code as the `model` crate's: [`HfRope`].
    ///
    /// ```
    /// let cfg: serde_json::Value = serde_json::json!({
    ///     "rope_theta": 10000, "max_position_embeddings": 163840,
    ///     "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
    ///                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    /// });
    /// let rope = rope_yarn::RopeConfig::from_hf_config(64, &cfg).unwrap();
    /// assert!((rope.softmax_scale(192) - 0.135_233_778_86).abs() < 1e-10);
    /// ```
    pub fn from_hf_config(dim: usize, config: &Value) -> Result<Self> {
        HfRope::from_value(config)?.resolve(dim)
    }
}
