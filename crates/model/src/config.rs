//! `config.json` of DeepSeek-V2 / V2-Lite / V2.5 / V3 / R1 / V3.2 checkpoints, read once: the typed
//! mirror [`HfConfig`] (the model-level fields here; the rotary and routing fields in
//! `rope_yarn::hf` and `moe::hf`, beside the code that gives them meaning), every default set
//! once, resolved and validated into [`ModelConfig`] through the component crates' builders.

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
    /// `deepseek_v32` (V3.2): V3 plus DeepSeek Sparse Attention, a lightning indexer per layer
    /// that picks each query's top-`index_topk` keys ([`ModelConfig::indexer`]).
    V32,
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

/// `model_type`: which family's semantics the checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ModelType {
    /// V2, V2-Lite, V2.5.
    #[serde(rename = "deepseek_v2")]
    DeepseekV2,
    /// V3, R1.
    #[serde(rename = "deepseek_v3")]
    DeepseekV3,
    /// V3.2 (V3 with DeepSeek Sparse Attention).
    #[serde(rename = "deepseek_v32")]
    DeepseekV32,
}

/// `eos_token_id`: one id or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

/// The model-level fields of `config.json`, typed, with HF's defaults (the one place they are
/// set). The rotary fields are [`rope_yarn::hf::HfRope`] and the routing fields
/// [`moe::hf::HfRouting`], each beside the code that gives them meaning; [`HfConfig`] holds
/// all three and [`ModelConfig::from_json_str`] resolves them.
#[derive(Debug, Clone, Deserialize)]
pub struct HfModelFields {
    /// `deepseek_v2`, `deepseek_v3` or `deepseek_v32`.
    pub model_type: ModelType,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Dense FFN width.
    pub intermediate_size: usize,
    /// Decoder layers (MTP modules come after them).
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Query compression rank (`null`: plain `q_proj`).
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    /// KV latent rank.
    pub kv_lora_rank: usize,
    /// Non-rotary query/key dims per head.
    pub qk_nope_head_dim: usize,
    /// Rotary query/key dims per head.
    pub qk_rope_head_dim: usize,
    /// Value dims per head.
    pub v_head_dim: usize,
    /// Layers `0..first_k_dense_replace` use the dense FFN.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// Every `moe_layer_freq`-th layer after that is MoE (1 in every release).
    #[serde(default = "one")]
    pub moe_layer_freq: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// MTP modules stored after the decoder layers.
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
    /// Share embedding and head (false for every DeepSeek release).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// V3: rotary pairs interleaved (`true`, HF's default and every release) or half-split
    /// (`false`: HF's `rotate_half`, for weights permuted to that layout). HF's V2 and V3.2
    /// have no such field and always interleave.
    #[serde(default)]
    pub rope_interleave: Option<bool>,
    /// Biases on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` (false for every DeepSeek
    /// release).
    #[serde(default)]
    pub attention_bias: bool,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// `silu` in every release.
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// FP8 block quantisation.
    #[serde(default)]
    pub quantization_config: Option<QuantizationConfig>,
    /// V3.2: keys each query attends to (HF default 2048).
    #[serde(default)]
    pub index_topk: Option<usize>,
    /// V3.2: lightning-indexer heads (HF default 64).
    #[serde(default)]
    pub index_n_heads: Option<usize>,
    /// V3.2: lightning-indexer head size, rotary part first (HF default 128).
    #[serde(default)]
    pub index_head_dim: Option<usize>,
}

/// HF 5.23's `DeepseekV32Config` defaults of the indexer fields: `index_topk`,
/// `index_n_heads`, `index_head_dim`.
const V32_INDEX_DEFAULTS: (usize, usize, usize) = (2048, 64, 128);

fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-6
}

/// The typed mirror of a whole `config.json`: model, rotary and routing fields.
#[derive(Debug, Clone)]
pub struct HfConfig {
    /// Model-level fields.
    pub model: HfModelFields,
    /// `rope_theta`, `rope_scaling` / `rope_parameters`, `max_position_embeddings`.
    pub rope: rope_yarn::hf::HfRope,
    /// `n_routed_experts`, `topk_method`, `scoring_func`, ...
    pub routing: moe::hf::HfRouting,
}

impl HfConfig {
    /// Reads the three parts from a parsed `config.json`; a wrongly typed field is an error
    /// naming it (`hidden_size: invalid type ...`).
    pub fn from_value(json: &Value) -> Result<Self> {
        let model = serde_path_to_error::deserialize(json).map_err(|e| {
            let field = e.path().to_string();
            ModelError::config(field, e.into_inner().to_string())
        })?;
        Ok(Self {
            model,
            rope: rope_yarn::hf::HfRope::from_value(json)?,
            routing: moe::hf::HfRouting::from_value(json)?,
        })
    }
}

/// The FFN of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// Dense SwiGLU of `intermediate_size`.
    Dense,
    /// Routed + shared experts.
    Moe,
}

/// A validated model configuration: every field resolved, the component crates' configs built.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// V2 or V3 semantics.
    pub arch: Arch,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Dense FFN width.
    pub intermediate_size: usize,
    /// Decoder layers of the main model.
    pub num_hidden_layers: usize,
    /// MTP modules, stored as layers `num_hidden_layers..`.
    pub num_nextn_predict_layers: usize,
    /// Layers `0..first_k_dense_replace` are dense.
    pub first_k_dense_replace: usize,
    /// MoE every `moe_layer_freq`-th layer after them.
    pub moe_layer_freq: usize,
    /// RMSNorm epsilon of the layer and final norms.
    pub rms_norm_eps: f64,
    /// Maximum context, when the config gives one.
    pub max_position_embeddings: Option<usize>,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
    /// FP8 block quantisation of the stored weights.
    pub quantization: Option<QuantizationConfig>,
    /// Attention dimensions and rotary settings.
    pub mla: mla::MlaConfig,
    /// V3.2: the lightning indexer of every layer (MTP modules included), whose top-k keys
    /// each query's MLA attends to; `None` for dense-attention models.
    pub indexer: Option<mla::IndexerConfig>,
    /// Routing and expert widths, for MoE models (HF 5.23 semantics, see the moe crate).
    pub moe: Option<moe::MoeConfig>,
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
        if !json.is_object() {
            return Err(ModelError::config("config.json", "expected a JSON object"));
        }
        Self::resolve(&HfConfig::from_value(&json)?)
    }

    /// Validates the typed mirror and builds the component configurations through their
    /// builders.
    pub fn resolve(hf: &HfConfig) -> Result<Self> {
        let m = &hf.model;
        let arch = match m.model_type {
            ModelType::DeepseekV2 => Arch::V2,
            ModelType::DeepseekV3 => Arch::V3,
            ModelType::DeepseekV32 => Arch::V32,
        };
        for (field, v) in [
            ("vocab_size", m.vocab_size),
            ("hidden_size", m.hidden_size),
            ("num_hidden_layers", m.num_hidden_layers),
            ("num_attention_heads", m.num_attention_heads),
            ("kv_lora_rank", m.kv_lora_rank),
            ("qk_rope_head_dim", m.qk_rope_head_dim),
            ("v_head_dim", m.v_head_dim),
            ("intermediate_size", m.intermediate_size),
            ("moe_layer_freq", m.moe_layer_freq),
        ] {
            if v == 0 {
                return Err(ModelError::config(field, "must be > 0"));
            }
        }
        if let Some(act) = m.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::config(
                "hidden_act",
                format!("only silu is supported, found {act:?}"),
            ));
        }
        if m.tie_word_embeddings {
            return Err(ModelError::config(
                "tie_word_embeddings",
                "DeepSeek models never tie; true is unsupported",
            ));
        }
        if m.attention_bias {
            return Err(ModelError::config(
                "attention_bias",
                "DeepSeek models have no attention biases; true is unsupported",
            ));
        }
        if let Some(q) = &m.quantization_config {
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
        if !(m.rms_norm_eps >= 0.0 && m.rms_norm_eps.is_finite()) {
            return Err(ModelError::config(
                "rms_norm_eps",
                format!("expected a finite value >= 0, found {}", m.rms_norm_eps),
            ));
        }
        // The engine's context limit: a fraction, 0 or a negative number would refuse every
        // request rather than say what is wrong.
        let max_position_embeddings = match hf.rope.max_position_embeddings {
            None => None,
            Some(v) if v >= 1.0 && v.fract() == 0.0 => Some(v as usize),
            Some(v) => {
                return Err(ModelError::config(
                    "max_position_embeddings",
                    format!("expected a positive integer, found {v}"),
                ))
            }
        };
        let family = match arch {
            Arch::V2 => moe::hf::RouterFamily::V2,
            // V3.2's router is V3's (HF 5.23 `DeepseekV32TopkRouter`).
            Arch::V3 | Arch::V32 => moe::hf::RouterFamily::V3,
        };
        let moe = hf.routing.resolve(m.hidden_size, family)?;
        let mla = mla::MlaConfig::builder()
            .hidden_size(m.hidden_size)
            .num_attention_heads(m.num_attention_heads)
            .q_lora_rank(m.q_lora_rank)
            .kv_lora_rank(m.kv_lora_rank)
            .qk_nope_head_dim(m.qk_nope_head_dim)
            .qk_rope_head_dim(m.qk_rope_head_dim)
            .v_head_dim(m.v_head_dim)
            // HF 5.23 and DeepSeek's reference code build q_a_layernorm / kv_a_layernorm with
            // their default eps whatever `rms_norm_eps` says (equal in every release).
            .rms_norm_eps(1e-6)
            .rope(hf.rope.resolve(m.qk_rope_head_dim)?)
            .rope_layout(match (arch, m.rope_interleave) {
                (Arch::V3, Some(false)) => rope_yarn::RopeLayout::HalfSplit,
                _ => rope_yarn::RopeLayout::Interleaved,
            })
            .build()?;
        let indexer = resolve_indexer(m, arch, &mla)?;
        let eos_token_ids = match &m.eos_token_id {
            None => vec![],
            Some(TokenIds::One(id)) => vec![*id],
            Some(TokenIds::Many(ids)) => ids.clone(),
        };
        Ok(Self {
            arch,
            vocab_size: m.vocab_size,
            hidden_size: m.hidden_size,
            intermediate_size: m.intermediate_size,
            num_hidden_layers: m.num_hidden_layers,
            num_nextn_predict_layers: m.num_nextn_predict_layers,
            first_k_dense_replace: m.first_k_dense_replace,
            moe_layer_freq: m.moe_layer_freq,
            rms_norm_eps: m.rms_norm_eps,
            max_position_embeddings,
            bos_token_id: m.bos_token_id,
            eos_token_ids,
            quantization: m.quantization_config.clone(),
            mla,
            indexer,
            moe,
        })
    }

    /// The FFN of layer `layer`, counting MTP modules (stored after the main layers, always MoE
    /// in a MoE model) as layers: the one rule for which layers are MoE. A main layer is MoE
    /// when `layer >= first_k_dense_replace` and `layer % moe_layer_freq == 0`; HF ignores
    /// `moe_layer_freq`, and every release has 1, where both rules agree.
    pub fn ffn_kind(&self, layer: usize) -> FfnKind {
        let is_mtp = layer >= self.num_hidden_layers;
        let moe_layer =
            layer >= self.first_k_dense_replace && layer.is_multiple_of(self.moe_layer_freq);
        if self.moe.is_some() && (is_mtp || moe_layer) {
            FfnKind::Moe
        } else {
            FfnKind::Dense
        }
    }

    /// True when main layer `i` uses the MoE FFN (see [`ModelConfig::ffn_kind`]).
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.ffn_kind(i) == FfnKind::Moe
    }

    /// Whether attention is DeepSeek Sparse Attention (V3.2: [`ModelConfig::indexer`] is set).
    pub fn is_dsa(&self) -> bool {
        self.indexer.is_some()
    }

    /// Whether weights are FP8 block-quantised.
    pub fn is_fp8(&self) -> bool {
        self.quantization.is_some()
    }
}

/// The indexer of a V3.2 model (HF's defaults for absent fields, validated by
/// [`mla::IndexerConfig::for_mla`]: it needs `q_lora_rank`); other families must not set the
/// indexer fields, which HF would silently ignore there.
fn resolve_indexer(
    m: &HfModelFields,
    arch: Arch,
    mla: &mla::MlaConfig,
) -> Result<Option<mla::IndexerConfig>> {
    let fields = [
        ("index_topk", m.index_topk),
        ("index_n_heads", m.index_n_heads),
        ("index_head_dim", m.index_head_dim),
    ];
    if arch != Arch::V32 {
        return match fields.iter().find(|(_, v)| v.is_some()) {
            Some((field, _)) => Err(ModelError::config(
                *field,
                "is set, but sparse attention needs model_type deepseek_v32",
            )),
            None => Ok(None),
        };
    }
    let (topk, heads, dim) = V32_INDEX_DEFAULTS;
    Ok(Some(mla::IndexerConfig::for_mla(
        mla,
        m.index_n_heads.unwrap_or(heads),
        m.index_head_dim.unwrap_or(dim),
        m.index_topk.unwrap_or(topk),
    )?))
}
