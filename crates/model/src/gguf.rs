//! GGUF files as checkpoints: llama.cpp's `deepseek2` architecture (DeepSeek-V2, V2-Lite,
//! V2.5, V3, R1 converted by llama.cpp's `convert_hf_to_gguf.py`), read through a memory map.
//!
//! The file's metadata becomes the `config.json` fields the rest of the crate reads (one
//! parser for both), and every GGUF tensor is served under its HF name:
//! - `blk.L.attn_q_a.weight` → `model.layers.L.self_attn.q_a_proj.weight`, and so on;
//! - the stacked experts `blk.L.ffn_{gate,up,down}_exps.weight` `[E, N, K]` → one
//!   `mlp.experts.{e}.*_proj.weight` per expert (expert `e`'s rows of the blocks, no
//!   requantisation);
//! - llama.cpp's split MLA layout, `attn_k_b` `[H, rank, nope]` and `attn_v_b` `[H, v, rank]`,
//!   is joined back into `kv_b_proj` `[H·(nope + v), rank]` (dequantised: the model keeps
//!   `kv_b_proj` dense and precomputes its absorbed views);
//! - the V3 router bias `exp_probs_b.bias` → `mlp.gate.e_score_correction_bias`.
//!
//! Block-quantised tensors (`Q4_K`, `Q8_0`, ...) are served either as their raw blocks (for
//! [`linear::GgmlMatrix`], through the [`linear::GGML_TYPE_SUFFIX`] sibling) or dequantised
//! to f32; float tensors (`F32`, `F16`, `BF16`) as tensors of their own dtype. YaRN's two
//! attention factors are one number in GGUF (`yarn_log_multiplier = 0.1 · mscale_all_dim`),
//! so `mscale = mscale_all_dim` is assumed, as in every released V2/V3 configuration.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::checkpoint::TensorMeta;
use crate::error::{ModelError, Result};

/// The only architecture this reader maps.
const ARCH: &str = "deepseek2";

/// Where one HF-named tensor's values are in the file.
#[derive(Debug, Clone)]
enum Source {
    /// A whole GGUF tensor.
    Whole(String),
    /// Expert `e` of a stacked `[E, N, K]` tensor.
    Expert(String, usize),
    /// `kv_b_proj` joined from `attn_k_b` and `attn_v_b`.
    KvB { k_b: String, v_b: String },
}

/// An open GGUF file mapped to HF tensor names.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    data_offset: usize,
    infos: HashMap<String, TensorInfo>,
    sources: BTreeMap<String, (Source, Vec<usize>)>,
    config_json: String,
}

impl GgufFile {
    /// Opens and maps `path`, checks the architecture, derives the configuration and maps
    /// every tensor; an unknown tensor name, a tensor outside the file or an architecture
    /// other than `deepseek2` is an error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: mapped read-only; like every GGUF/safetensors loader we rely on the file
        // not being modified while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..])).map_err(|e| {
            bad(format!(
                "not a GGUF file this build reads ({e}; tensor types read: F32, F16, BF16, \
                 Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K)"
            ))
        })?;
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != ARCH {
            return Err(bad(format!(
                "general.architecture is '{arch}', not '{ARCH}' (llama.cpp's DeepSeek-V2/V3 \
                 architecture)"
            )));
        }
        let config = hf_config(md).map_err(bad)?;
        let data_offset = content.tensor_data_offset as usize;
        for (name, info) in &content.tensor_infos {
            let end = data_offset + info.offset as usize + stored_bytes(info);
            if end > mmap.len() {
                return Err(bad(format!(
                    "{name}: its data ends at byte {end}, past the end of the file ({} bytes: \
                     truncated?)",
                    mmap.len()
                )));
            }
        }
        let layers = config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        let sources = map_tensors(&content.tensor_infos, layers).map_err(bad)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_offset,
            infos: content.tensor_infos,
            sources,
            config_json: config.to_string(),
        })
    }

    /// The configuration as `config.json` text (HF field names).
    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    /// Every HF-named tensor: its HF shape, the dtype it is served in when dequantised, and
    /// its GGML type when that is a block format.
    pub fn metas(&self) -> BTreeMap<String, TensorMeta> {
        self.sources
            .iter()
            .map(|(name, (source, shape))| {
                let ggml = self.block_type(source);
                let dtype = match (source, ggml) {
                    // Joined from two tensors (of possibly different types) in f32.
                    (Source::KvB { .. }, _) | (_, Some(_)) => DType::F32,
                    (_, None) => float_dtype(self.infos[first(source)].ggml_dtype),
                };
                let ggml = ggml.filter(|_| !matches!(source, Source::KvB { .. }));
                let meta = TensorMeta {
                    file: self.path.clone(),
                    dtype,
                    shape: shape.clone(),
                    ggml,
                };
                (name.clone(), meta)
            })
            .collect()
    }

    /// The raw blocks of a block-quantised matrix, `[N, bytes per row]` u8 (what
    /// [`linear::Matrix::load`] asks for); `None` for float tensors and joined ones.
    pub fn blocks(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((source, shape)) = self.sources.get(name) else {
            return Err(self.missing(name));
        };
        if self.block_type(source).is_none() || matches!(source, Source::KvB { .. }) {
            return Ok(None);
        }
        let bytes = match source {
            Source::Whole(t) => self.bytes(t),
            Source::Expert(t, e) => {
                let all = self.bytes(t);
                let per = all.len() / self.infos[t].shape.dims()[0];
                &all[e * per..(e + 1) * per]
            }
            Source::KvB { .. } => unreachable!("handled above"),
        };
        let rows = shape[0];
        Ok(Some(Tensor::from_slice(
            bytes,
            (rows, bytes.len() / rows),
            &Device::Cpu,
        )?))
    }

    /// `name`'s values on the host: float tensors in their own dtype, block formats
    /// dequantised to f32.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let Some((source, shape)) = self.sources.get(name) else {
            return Err(self.missing(name));
        };
        let t = match source {
            Source::Whole(t) => self.values(t)?,
            Source::Expert(t, e) => {
                let all = self.bytes(t);
                let per = all.len() / self.infos[t].shape.dims()[0];
                let ty = self.infos[t].ggml_dtype;
                self.dequantize(t, ty, &all[e * per..(e + 1) * per], shape)?
            }
            Source::KvB { k_b, v_b } => {
                // k_b [H, rank, nope] -> [H, nope, rank]; v_b [H, v, rank]; rows per head:
                // nope key rows, then v value rows (HF's kv_b_proj layout).
                let k = self.values(k_b)?.to_dtype(DType::F32)?.transpose(1, 2)?;
                let v = self.values(v_b)?.to_dtype(DType::F32)?;
                Tensor::cat(&[k, v], 1)?
            }
        };
        Ok(t.reshape(shape.as_slice())?)
    }

    /// A whole GGUF tensor's values.
    fn values(&self, gguf_name: &str) -> Result<Tensor> {
        let info = &self.infos[gguf_name];
        let dims = info.shape.dims();
        self.dequantize(gguf_name, info.ggml_dtype, self.bytes(gguf_name), dims)
    }

    /// Values of `bytes` in type `ty` and shape `dims` (part of GGUF tensor `gguf_name`):
    /// float types in their dtype, block formats as f32.
    fn dequantize(
        &self,
        gguf_name: &str,
        ty: GgmlDType,
        bytes: &[u8],
        dims: &[usize],
    ) -> Result<Tensor> {
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            ty,
            bytes,
            dims.to_vec(),
            &Device::Cpu,
        )
        .map_err(|e| ModelError::Gguf {
            path: self.path.clone(),
            reason: format!("{gguf_name}: {e}"),
        })?;
        let t = q.dequantize(&Device::Cpu)?;
        Ok(match float_dtype(ty) {
            DType::F32 => t,
            d => t.to_dtype(d)?,
        })
    }

    fn bytes(&self, gguf_name: &str) -> &[u8] {
        let info = &self.infos[gguf_name];
        let start = self.data_offset + info.offset as usize;
        &self.mmap[start..start + stored_bytes(info)]
    }

    fn block_type(&self, source: &Source) -> Option<GgmlDType> {
        let ty = self.infos[first(source)].ggml_dtype;
        (!matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)).then_some(ty)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            reason: format!("{name}: no such tensor"),
        }
    }
}

/// The (first) GGUF tensor behind a source.
fn first(source: &Source) -> &str {
    match source {
        Source::Whole(t) | Source::Expert(t, _) => t,
        Source::KvB { k_b, .. } => k_b,
    }
}

/// The dtype a float GGML tensor holds (block formats dequantise to f32).
fn float_dtype(ty: GgmlDType) -> DType {
    match ty {
        GgmlDType::F16 => DType::F16,
        GgmlDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

fn stored_bytes(info: &TensorInfo) -> usize {
    let ty = info.ggml_dtype;
    info.shape.elem_count() / ty.block_size() * ty.type_size()
}

/// HF names for every GGUF tensor of the first `layers` blocks (later blocks are MTP modules,
/// which this reader skips); an unknown name is an error.
fn map_tensors(
    infos: &HashMap<String, TensorInfo>,
    layers: usize,
) -> std::result::Result<BTreeMap<String, (Source, Vec<usize>)>, String> {
    let mut out = BTreeMap::new();
    let mut names: Vec<&String> = infos.keys().collect();
    names.sort();
    let mut unknown = Vec::new();
    for name in names {
        let dims = infos[name].shape.dims().to_vec();
        let whole = |hf: String| (hf, (Source::Whole(name.clone()), dims.clone()));
        match name.as_str() {
            "token_embd.weight" => {
                let (k, v) = whole("model.embed_tokens.weight".into());
                out.insert(k, v);
                continue;
            }
            "output_norm.weight" => {
                let (k, v) = whole("model.norm.weight".into());
                out.insert(k, v);
                continue;
            }
            "output.weight" => {
                let (k, v) = whole("lm_head.weight".into());
                out.insert(k, v);
                continue;
            }
            _ => {}
        }
        let Some((layer, rest)) = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, rest)| Some((l.parse::<usize>().ok()?, rest)))
        else {
            unknown.push(name.clone());
            continue;
        };
        if layer >= layers {
            continue; // an MTP module (nextn layers): not loaded from GGUF
        }
        let p = format!("model.layers.{layer}");
        let hf = match rest {
            "attn_norm.weight" => "input_layernorm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_q_a.weight" => "self_attn.q_a_proj.weight",
            "attn_q_a_norm.weight" => "self_attn.q_a_layernorm.weight",
            "attn_q_b.weight" => "self_attn.q_b_proj.weight",
            "attn_kv_a_mqa.weight" => "self_attn.kv_a_proj_with_mqa.weight",
            "attn_kv_a_norm.weight" => "self_attn.kv_a_layernorm.weight",
            "attn_kv_b.weight" => "self_attn.kv_b_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            "ffn_gate_inp.weight" => "mlp.gate.weight",
            "exp_probs_b.bias" => "mlp.gate.e_score_correction_bias",
            "ffn_gate_shexp.weight" => "mlp.shared_experts.gate_proj.weight",
            "ffn_up_shexp.weight" => "mlp.shared_experts.up_proj.weight",
            "ffn_down_shexp.weight" => "mlp.shared_experts.down_proj.weight",
            "attn_v_b.weight" => continue, // joined with attn_k_b below
            "attn_k_b.weight" => {
                let v_b = format!("blk.{layer}.attn_v_b.weight");
                let Some(v) = infos.get(&v_b) else {
                    return Err(format!("{name}: present without {v_b}"));
                };
                let (k, v) = (dims.as_slice(), v.shape.dims());
                // k_b [H, rank, nope], v_b [H, v, rank]
                if k.len() != 3 || v.len() != 3 || k[0] != v[0] || k[1] != v[2] {
                    return Err(format!(
                        "{name} {k:?} and {v_b} {v:?} are not [H, rank, nope] and [H, v, rank]"
                    ));
                }
                let source = Source::KvB {
                    k_b: name.clone(),
                    v_b,
                };
                let shape = vec![k[0] * (k[2] + v[1]), k[1]];
                out.insert(format!("{p}.self_attn.kv_b_proj.weight"), (source, shape));
                continue;
            }
            _ => {
                let stacked = ["gate", "up", "down"]
                    .into_iter()
                    .find(|w| rest == format!("ffn_{w}_exps.weight"));
                match (stacked, dims.as_slice()) {
                    (Some(w), &[e, n, k]) => {
                        for x in 0..e {
                            let hf = format!("{p}.mlp.experts.{x}.{w}_proj.weight");
                            out.insert(hf, (Source::Expert(name.clone(), x), vec![n, k]));
                        }
                    }
                    (Some(_), d) => return Err(format!("{name}: expected [E, N, K], found {d:?}")),
                    (None, _) => unknown.push(name.clone()),
                }
                continue;
            }
        };
        out.insert(format!("{p}.{hf}"), (Source::Whole(name.clone()), dims));
    }
    if !unknown.is_empty() {
        return Err(format!(
            "tensors this reader does not map: {}",
            unknown.join(", ")
        ));
    }
    Ok(out)
}

/// A metadata value as f64 (any numeric type).
fn num(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    Some(match md.get(key)? {
        Value::U8(v) => *v as f64,
        Value::I8(v) => *v as f64,
        Value::U16(v) => *v as f64,
        Value::I16(v) => *v as f64,
        Value::U32(v) => *v as f64,
        Value::I32(v) => *v as f64,
        Value::U64(v) => *v as f64,
        Value::I64(v) => *v as f64,
        Value::F32(v) => *v as f64,
        Value::F64(v) => *v,
        Value::Bool(v) => *v as u8 as f64,
        Value::String(_) | Value::Array(_) => return None,
    })
}

/// The `config.json` fields from `deepseek2.*` metadata (llama.cpp's converter writes them
/// from the same config; see the module docs for YaRN's factors).
fn hf_config(md: &HashMap<String, Value>) -> std::result::Result<serde_json::Value, String> {
    let key = |k: &str| format!("{ARCH}.{k}");
    let need = |k: &str| num(md, &key(k)).ok_or_else(|| format!("{}: missing", key(k)));
    let opt = |k: &str, default: f64| num(md, &key(k)).unwrap_or(default);
    let int = |x: f64| x as u64;
    let nextn = opt("nextn_predict_layers", 0.0);
    let blocks = need("block_count")?;
    let heads = need("attention.head_count")?;
    let rope_dim = need("rope.dimension_count")?;
    // Split-MLA files record the per-head widths under *_mla; older ones under key/value_length.
    let key_len = num(md, &key("attention.key_length_mla"))
        .map_or_else(|| need("attention.key_length"), Ok)?;
    let v_len = num(md, &key("attention.value_length_mla"))
        .map_or_else(|| need("attention.value_length"), Ok)?;
    let q_lora = opt("attention.q_lora_rank", 0.0);
    let sigmoid = opt("expert_gating_func", 1.0) == 2.0;
    let groups = opt("expert_group_count", 1.0);
    let topk_method = match (sigmoid, groups > 1.0) {
        (true, _) => "noaux_tc",
        (false, true) => "group_limited_greedy",
        (false, false) => "greedy",
    };
    let vocab = num(md, &key("vocab_size"))
        .or_else(|| match md.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => Some(a.len() as f64),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "{}: missing (and no tokenizer.ggml.tokens)",
                key("vocab_size")
            )
        })?;
    let mut cfg = json!({
        "model_type": if sigmoid { "deepseek_v3" } else { "deepseek_v2" },
        "vocab_size": int(vocab),
        "hidden_size": int(need("embedding_length")?),
        "intermediate_size": int(need("feed_forward_length")?),
        "num_hidden_layers": int(blocks - nextn),
        "num_nextn_predict_layers": 0,
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(heads),
        "max_position_embeddings": int(need("context_length")?),
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon")?,
        "rope_theta": opt("rope.freq_base", 10000.0),
        "kv_lora_rank": int(need("attention.kv_lora_rank")?),
        "q_lora_rank": if q_lora > 0.0 { json!(int(q_lora)) } else { json!(null) },
        "qk_rope_head_dim": int(rope_dim),
        "qk_nope_head_dim": int(key_len - rope_dim),
        "v_head_dim": int(v_len),
        "first_k_dense_replace": int(opt("leading_dense_block_count", 0.0)),
        "moe_layer_freq": 1,
        "n_routed_experts": int(need("expert_count")?),
        "num_experts_per_tok": int(need("expert_used_count")?),
        "n_shared_experts": int(opt("expert_shared_count", 0.0)),
        "moe_intermediate_size": int(need("expert_feed_forward_length")?),
        "routed_scaling_factor": opt("expert_weights_scale", 1.0),
        "norm_topk_prob": opt("expert_weights_norm", 0.0) != 0.0,
        "scoring_func": if sigmoid { "sigmoid" } else { "softmax" },
        "topk_method": topk_method,
        "n_group": int(groups),
        "topk_group": int(opt("expert_group_used_count", groups)),
        "tie_word_embeddings": false,
        "attention_bias": false,
    });
    for (gguf, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(id) = num(md, gguf) {
            cfg[hf] = json!(int(id));
        }
    }
    let scaling = md
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    if scaling == Some("yarn") {
        let mscale = opt("rope.scaling.yarn_log_multiplier", 0.0) / 0.1;
        cfg["rope_scaling"] = json!({
            "type": "yarn",
            "factor": need("rope.scaling.factor")?,
            "original_max_position_embeddings":
                int(need("rope.scaling.original_context_length")?),
            "beta_fast": opt("rope.scaling.yarn_beta_fast", 32.0),
            "beta_slow": opt("rope.scaling.yarn_beta_slow", 1.0),
            "mscale": mscale,
            "mscale_all_dim": mscale,
        });
    } else if let Some(other) = scaling.filter(|s| *s != "none") {
        return Err(format!(
            "{}: '{other}' (DeepSeek models use yarn)",
            key("rope.scaling.type")
        ));
    }
    Ok(cfg)
}
