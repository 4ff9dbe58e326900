//! `config.json` of DeepSeek-V2 / V2-Lite / V2.5 / V3 / R1 checkpoints: the serde mirror of
//! the HF fields with their defaults in one place, resolved and validated into [`ModelConfig`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// Which family's semantics the checkpoint follows (from `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `deepseek_v2` (V2, V2-Lite, V2.5): softmax gate, greedy or group-limited routing.
    V2,
    /// `deepseek_v3` (V3, R1): sigmoid gate with `noaux_tc` routing and MTP modules.
    V3,
}

/// The FP8 block quantisation of a checkpoint (`quantization_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QuantizationConfig {
    /// `fp8` for DeepSeek's releases.
    pub quant_method: String,
    /// `e4m3`.
    #[serde(default)]
    pub fmt: Option<String>,
    /// Block shape of `weight_scale_inv`, `[128, 128]`.
    #[serde(default)]
    pub weight_block_size: Option<Vec<usize>>,
}

/// The HF `config.json` fields this crate reads, with HF's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `deepseek_v2` or `deepseek_v3`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Dense FFN width.
    pub intermediate_size: usize,
    /// Routed/shared expert width.
    pub moe_intermediate_size: Option<usize>,
    /// Decoder layers (MTP modules come after them).
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Query compression rank (`null`: plain `q_proj`).
    pub q_lora_rank: Option<usize>,
    /// KV latent rank.
    pub kv_lora_rank: usize,
    /// Non-rotary query/key dims per head.
    pub qk_nope_head_dim: usize,
    /// Rotary query/key dims per head.
    pub qk_rope_head_dim: usize,
    /// Value dims per head.
    pub v_head_dim: usize,
    /// Routed experts (`null`: dense model).
    pub n_routed_experts: Option<usize>,
    /// Shared experts.
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    /// Routed experts per token.
    pub num_experts_per_tok: Option<usize>,
    /// Expert groups.
    #[serde(default)]
    pub n_group: Option<usize>,
    /// Groups kept per token.
    #[serde(default)]
    pub topk_group: Option<usize>,
    /// `greedy`, `group_limited_greedy` or `noaux_tc`.
    #[serde(default)]
    pub topk_method: Option<String>,
    /// `softmax` or `sigmoid`.
    #[serde(default)]
    pub scoring_func: Option<String>,
    /// Normalise the top-k weights (V3 semantics).
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// Multiplier of the routed output.
    #[serde(default = "one")]
    pub routed_scaling_factor: f64,
    /// Layers `0..first_k_dense_replace` use the dense FFN.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Every `moe_layer_freq`-th layer after that is MoE (1 in every release).
    #[serde(default = "one_usize")]
    pub moe_layer_freq: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// MTP modules stored after the decoder layers.
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
    /// Maximum context.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Share embedding and head (false for every DeepSeek release).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    /// `silu` in every release.
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// FP8 block quantisation.
    #[serde(default)]
    pub quantization_config: Option<QuantizationConfig>,
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-6
}

/// A validated model configuration.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// V2 or V3 semantics.
    pub arch: Arch,
    /// The raw fields.
    pub hf: HfConfig,
    /// The raw JSON (rotary settings are read from it by rope-yarn, in either spelling).
    pub json: Value,
    /// Attention dimensions and rotary settings (rope-yarn reads either spelling).
    pub mla: mla::MlaConfig,
    /// Routing and expert widths, for MoE models (HF 5.23 semantics, see the moe crate).
    pub moe: Option<moe::MoeConfig>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| e.in_file(path))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config("config.json", format!("invalid JSON: {e}")))?;
        let hf: HfConfig = serde_json::from_value(json.clone())
            .map_err(|e| ModelError::config("config.json", e.to_string()))?;
        let arch = match hf.model_type.as_str() {
            "deepseek_v2" => Arch::V2,
            "deepseek_v3" => Arch::V3,
            other => {
                return Err(ModelError::config(
                    "model_type",
                    format!("expected deepseek_v2 or deepseek_v3, found {other:?}"),
                ))
            }
        };
        for (field, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("num_attention_heads", hf.num_attention_heads),
            ("kv_lora_rank", hf.kv_lora_rank),
            ("qk_rope_head_dim", hf.qk_rope_head_dim),
            ("v_head_dim", hf.v_head_dim),
            ("intermediate_size", hf.intermediate_size),
            ("moe_layer_freq", hf.moe_layer_freq),
        ] {
            if v == 0 {
                return Err(ModelError::config(field, "must be > 0"));
            }
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::config(
                "hidden_act",
                format!("only silu is supported, found {act:?}"),
            ));
        }
        if hf.tie_word_embeddings {
            return Err(ModelError::config(
                "tie_word_embeddings",
                "DeepSeek models never tie; true is unsupported",
            ));
        }
        if let Some(q) = &hf.quantization_config {
            if q.quant_method != "fp8" {
                return Err(ModelError::config(
                    "quantization_config.quant_method",
                    format!("only fp8 is supported, found {:?}", q.quant_method),
                ));
            }
            if let Some(b) = q
                .weight_block_size
                .as_ref()
                .filter(|b| b.as_slice() != [128, 128])
            {
                return Err(ModelError::config(
                    "quantization_config.weight_block_size",
                    format!("only [128, 128] is supported, found {b:?}"),
                ));
            }
        }
        let moe = match hf.n_routed_experts {
            Some(_) => {
                check_routing_fields(&hf, arch)?;
                Some(moe::MoeConfig::from_hf_json(&json)?)
            }
            None => None,
        };
        let rope = rope_yarn::RopeConfig::from_hf_config(hf.qk_rope_head_dim, &json)?;
        let mla = mla::MlaConfig::builder()
            .hidden_size(hf.hidden_size)
            .num_attention_heads(hf.num_attention_heads)
            .q_lora_rank(hf.q_lora_rank)
            .kv_lora_rank(hf.kv_lora_rank)
            .qk_nope_head_dim(hf.qk_nope_head_dim)
            .qk_rope_head_dim(hf.qk_rope_head_dim)
            .v_head_dim(hf.v_head_dim)
            // HF 5.23 and DeepSeek's reference code build q_a_layernorm / kv_a_layernorm with
            // their default eps whatever `rms_norm_eps` says (equal in every release).
            .rms_norm_eps(1e-6)
            .rope(rope)
            .build()?;
        let eos_token_ids = match &hf.eos_token_id {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => vec![n.as_u64().unwrap_or(0) as u32],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(other) => {
                return Err(ModelError::config(
                    "eos_token_id",
                    format!("expected an id or a list, found {other}"),
                ))
            }
        };
        Ok(Self {
            arch,
            hf,
            json,
            mla,
            moe,
            eos_token_ids,
        })
    }

    /// True when layer `i` (of the main model) uses the MoE FFN: `i >= first_k_dense_replace`
    /// and `i % moe_layer_freq == 0`. HF ignores `moe_layer_freq`; every release has 1, where
    /// both rules agree.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.moe.is_some() && i >= self.hf.first_k_dense_replace && i % self.hf.moe_layer_freq == 0
    }

    /// Query/key head size (`qk_nope_head_dim + qk_rope_head_dim`).
    pub fn qk_head_dim(&self) -> usize {
        self.hf.qk_nope_head_dim + self.hf.qk_rope_head_dim
    }

    /// Whether weights are FP8 block-quantised.
    pub fn is_fp8(&self) -> bool {
        self.hf.quantization_config.is_some()
    }
}

/// HF 5.23 keys the gate on the class (V2: softmax, V3: sigmoid + noaux_tc) and silently
/// ignores contradicting fields; we refuse them instead.
fn check_routing_fields(hf: &HfConfig, arch: Arch) -> Result<()> {
    let (allowed, scoring): (&[&str], &str) = match arch {
        Arch::V2 => (&["greedy", "group_limited_greedy"], "softmax"),
        Arch::V3 => (&["noaux_tc"], "sigmoid"),
    };
    if let Some(m) = hf.topk_method.as_deref().filter(|m| !allowed.contains(m)) {
        return Err(ModelError::config(
            "topk_method",
            format!(
                "{m:?} is not valid for {} (expected one of {allowed:?})",
                hf.model_type
            ),
        ));
    }
    if let Some(s) = hf.scoring_func.as_deref().filter(|s| *s != scoring) {
        return Err(ModelError::config(
            "scoring_func",
            format!("{} uses {scoring}, found {s:?}", hf.model_type),
        ));
    }
    Ok(())
}
