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
//!   is joined back into `kv_b_proj` `[H·(nope + v), rank]` (float halves of one type in that
//!   type, block formats dequantised to f32: `attn_k_b` is `W_UK` transposed, and its blocks
//!   run along the other dimension); the halves' blocks as stored are also handed to the
//!   absorbed path per head ([`GgufFile::kv_b_heads`], `mla::Mla::use_absorbed_blocks`), which
//!   multiplies them with f32 activations, so decode reads the blocks instead of f32 copies;
//! - the V3 router bias `exp_probs_b.bias` → `mlp.gate.e_score_correction_bias`.
//!
//! A file split by llama.cpp's `gguf-split` (`NAME-00001-of-0000n.gguf`, ...: the metadata in
//! the first part, the tensors spread over all, each part with its own header) is one
//! checkpoint, opened from any of its parts; every part is checked (`split.no`, `split.count`,
//! `split.tensors.count`).
//!
//! Block-quantised tensors (`Q4_K`, `Q8_0`, ...) are served either as their raw blocks (for
//! [`linear::GgmlMatrix`], through the [`linear::GGML_TYPE_SUFFIX`] sibling) or dequantised
//! to f32; float tensors (`F32`, `F16`, `BF16`) as tensors of their own dtype. YaRN's two
//! attention factors are one number in GGUF (`yarn_log_multiplier = 0.1 · mscale_all_dim`):
//! cos and sin are not scaled (as llama.cpp computes it, and as HF does whenever `mscale`
//! equals `mscale_all_dim`, which holds in every released V2/V3 configuration).
//!
//! [`write_quantized`] writes the other way: an HF checkpoint as a GGUF file with 8-bit
//! (`Q8_0`) or 4-bit (`Q4_1`, `Q4_K`) projections, the values `--matrices q8|q4|q4k` computes
//! at load,
//! which this reader loads back without requantising and llama.cpp reads too.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use linear::{QuantFormat, QuantMatrix};

use crate::checkpoint::TensorMeta;
use crate::config::{Arch, ModelConfig};
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

/// An open GGUF file (or llama.cpp split, `NAME-0000k-of-0000n.gguf`) mapped to HF tensor
/// names.
pub struct GgufFile {
    path: PathBuf,
    /// One map per file of a split (one for a whole file).
    parts: Vec<memmap2::Mmap>,
    /// Each tensor's part and bytes in that part's map, checked to lie inside it at open.
    ranges: HashMap<String, (usize, std::ops::Range<usize>)>,
    infos: HashMap<String, TensorInfo>,
    sources: BTreeMap<String, (Source, Vec<usize>)>,
    config_json: String,
}

/// One mapped GGUF file and its parsed header.
struct Part {
    path: PathBuf,
    mmap: memmap2::Mmap,
    content: Content,
}

impl Part {
    /// Maps and parses `path`; the first tensor of a type this build cannot read is named
    /// (candle's parser reports it without its name).
    fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: mapped read-only; like every GGUF/safetensors loader we rely on the file
        // not being modified while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        // IQ2_XXS, IQ4_XS, ...: common in DeepSeek-R1 files.
        if let Ok(tensors) = tensor_types(&mmap) {
            if let Some((name, id, _)) = tensors
                .iter()
                .find(|(_, id, _)| linear::ggml_type_from_id(*id).is_none())
            {
                let read: Vec<&str> = (0..64)
                    .filter(|&t| linear::ggml_type_from_id(t).is_some())
                    .map(type_name)
                    .collect();
                return Err(bad(format!(
                    "{name}: GGML type {} ({id}) is not supported (read: {})",
                    type_name(*id),
                    read.join(", ")
                )));
            }
        }
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..]))
            .map_err(|e| bad(format!("not a GGUF file this build reads: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            content,
        })
    }

    /// A `split.*` count or index from the header (llama.cpp's `gguf-split` writes them).
    fn split_key(&self, key: &str) -> Option<usize> {
        num(&self.content.metadata, key).map(|v| v as usize)
    }
}

/// Whether `path` names a GGUF file (by its `.gguf` extension, as llama.cpp's tools do): what
/// [`crate::checkpoint::Checkpoint::open`] opens as GGUF instead of an HF directory.
pub fn is_gguf_file(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|x| x == "gguf")
}

/// The files of llama.cpp's split `PREFIX-00001-of-0000N.gguf` for `path` (any of them), or
/// `None` when the name does not follow that pattern.
fn split_paths(path: &Path) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(count) || !digits(index) {
        return None;
    }
    let n: usize = count.parse().ok()?;
    Some(
        (1..=n)
            .map(|i| path.with_file_name(format!("{prefix}-{i:05}-of-{n:05}.gguf")))
            .collect(),
    )
}

/// The tokenizer a GGUF file (or a split, read from its first part) carries, as the HF
/// `tokenizer.json` text and `tokenizer_config.json` fields it describes
/// (DeepSeek's byte-level BPE, see [`crate::Tokenizer::from_gguf`]); `None` when it carries
/// none.
pub fn embedded_tokenizer(path: &Path) -> Result<Option<(String, serde_json::Value)>> {
    let first = split_paths(path).map_or_else(|| path.to_path_buf(), |p| p[0].clone());
    let part = Part::open(&first)?;
    crate::gguf_tokenizer::tokenizer_files(&part.content.metadata).map_err(|reason| {
        ModelError::Gguf {
            path: first.clone(),
            reason,
        }
    })
}

impl GgufFile {
    /// Opens and maps `path`, checks the architecture, derives the configuration and maps
    /// every tensor; an unknown tensor name, a tensor outside the file or an architecture
    /// other than `deepseek2` is an error naming it. A file of a llama.cpp split
    /// (`NAME-0000k-of-0000n.gguf`, as `gguf-split` writes them: the metadata in the first,
    /// tensors spread over all) opens the whole split; a missing or mismatched part is an
    /// error naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |path: &Path, reason: String| ModelError::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let names = split_paths(path);
        let first = Part::open(names.as_ref().map_or(path, |n| n[0].as_path()))?;
        let count = first.split_key("split.count").unwrap_or(1);
        let paths = match names {
            Some(names) if names.len() == count => names,
            None if count == 1 => vec![path.to_path_buf()],
            _ => {
                return Err(bad(
                    &first.path,
                    format!(
                        "split.count is {count}, but the file name is not \
                         PREFIX-00001-of-{count:05}.gguf (how llama.cpp names the parts)"
                    ),
                ))
            }
        };
        let mut parts = vec![first];
        for (i, p) in paths.iter().enumerate().skip(1) {
            let part = Part::open(p)?;
            let (no, n) = (part.split_key("split.no"), part.split_key("split.count"));
            if (no, n) != (Some(i), Some(count)) {
                return Err(bad(
                    p,
                    format!(
                        "expected part {} of {count} (split.no {i}), found split.no {no:?} of \
                         split.count {n:?}",
                        i + 1
                    ),
                ));
            }
            parts.push(part);
        }
        let md = &parts[0].content.metadata;
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != ARCH {
            return Err(bad(
                path,
                format!(
                    "general.architecture is '{arch}', not '{ARCH}' (llama.cpp's DeepSeek-V2/V3 \
                     architecture)"
                ),
            ));
        }
        let config = hf_config(md).map_err(|e| bad(path, e))?;
        let mut ranges = HashMap::new();
        let mut infos = HashMap::new();
        for (i, part) in parts.iter_mut().enumerate() {
            let data_offset = part.content.tensor_data_offset as usize;
            let part_path = &part.path;
            for (name, info) in std::mem::take(&mut part.content.tensor_infos) {
                let size =
                    stored_bytes(&info).map_err(|e| bad(part_path, format!("{name}: {e}")))?;
                let start = data_offset.checked_add(info.offset as usize);
                let Some(end) = start.and_then(|s| s.checked_add(size)) else {
                    return Err(bad(
                        part_path,
                        format!("{name}: its data offset {} is past any file", info.offset),
                    ));
                };
                if end > part.mmap.len() {
                    return Err(bad(
                        part_path,
                        format!(
                            "{name}: its data ends at byte {end}, past the end of the file ({} \
                             bytes: truncated?)",
                            part.mmap.len()
                        ),
                    ));
                }
                if infos.contains_key(&name) {
                    return Err(bad(part_path, format!("{name}: also in an earlier part")));
                }
                ranges.insert(name.clone(), (i, end - size..end));
                infos.insert(name, info);
            }
        }
        if let Some(total) = parts[0].split_key("split.tensors.count") {
            if total != infos.len() {
                return Err(bad(
                    path,
                    format!(
                        "split.tensors.count is {total}, but the {count} part(s) hold {}",
                        infos.len()
                    ),
                ));
            }
        }
        let layers = config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        let sources = map_tensors(&infos, layers).map_err(|e| bad(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            parts: parts.into_iter().map(|p| p.mmap).collect(),
            ranges,
            infos,
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
                let (dtype, ggml) = match self.stored(source) {
                    Some((_, ty)) if is_float(ty) => (float_dtype(ty), None),
                    Some((_, ty)) => (DType::F32, Some(ty)),
                    // Joined from two tensors: their float type when they share one (what a
                    // converted bf16 checkpoint held), else f32.
                    None => {
                        let Source::KvB { k_b, v_b } = source else {
                            unreachable!("only joined tensors have no stored bytes")
                        };
                        let (a, b) = (self.infos[k_b].ggml_dtype, self.infos[v_b].ggml_dtype);
                        let same_float = a == b && is_float(a);
                        (
                            if same_float {
                                float_dtype(a)
                            } else {
                                DType::F32
                            },
                            None,
                        )
                    }
                };
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
        match self.stored(source) {
            Some((bytes, ty)) if !is_float(ty) => {
                let rows = shape[0];
                let t = Tensor::from_slice(bytes, (rows, bytes.len() / rows), &Device::Cpu)?;
                self.release(bytes);
                Ok(Some(t))
            }
            _ => Ok(None),
        }
    }

    /// The per-head blocks of a `kv_b_proj` joined from llama.cpp's `attn_k_b` `[H, rank,
    /// nope]` and `attn_v_b` `[H, v, rank]` (`name` its HF name) as they are stored: each
    /// head's `W_UKᵀ` `[rank, nope]` and `W_UV` `[v, rank]`, whose groups run along their
    /// inputs, for `mla::Mla::use_absorbed_blocks`. A half stored as floats, or in a format
    /// those products do not take (a scale per 16), is `None` (its blocks are split from the
    /// joined values); `None` for any other tensor and where neither half is blocks.
    pub fn kv_b_heads(&self, name: &str) -> Result<Option<KvBHeads>> {
        let Some((Source::KvB { k_b, v_b }, _)) = self.sources.get(name) else {
            return Ok(None);
        };
        let heads = |gguf_name: &str| -> Result<Option<Vec<QuantMatrix>>> {
            let info = &self.infos[gguf_name];
            let ty = info.ggml_dtype;
            let takes = QuantMatrix::format_of_ggml(ty).is_some_and(|f| f.takes_f32_activations());
            let &[h, rows, cols] = info.shape.dims() else {
                return Ok(None);
            };
            if is_float(ty) || !takes || h == 0 {
                return Ok(None);
            }
            let bytes = self.bytes(gguf_name);
            let per_head = bytes.len() / h;
            if per_head == 0 || !bytes.len().is_multiple_of(h) {
                return Ok(None);
            }
            let bad = |e: candle_core::Error| ModelError::Gguf {
                path: self.path.clone(),
                reason: format!("{gguf_name}: {e}"),
            };
            // Q4_0 / Q5_0 (llama.cpp's `attn_k_b` in its K-quant mixes) as the same values in
            // 8 bits: these small blocks are read every step, and 8-bit groups take no
            // unpacking per product.
            let head = |bytes| {
                let q = QuantMatrix::from_ggml(ty, bytes, rows, cols).map_err(bad)?;
                Ok(q.map(|q| q.zero_point_as_q8().unwrap_or(q)))
            };
            bytes.chunks_exact(per_head).map(head).collect()
        };
        Ok(match (heads(k_b)?, heads(v_b)?) {
            (None, None) => None,
            (w_uk_t, w_uv) => Some(KvBHeads { w_uk_t, w_uv }),
        })
    }

    /// `name`'s values on the host: float tensors in their own dtype, block formats
    /// dequantised to f32.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let Some((source, shape)) = self.sources.get(name) else {
            return Err(self.missing(name));
        };
        let t = match source {
            Source::Whole(t) => self.values(t)?,
            Source::Expert(t, _) => {
                let (bytes, ty) = self.stored(source).expect("an expert is stored");
                self.dequantize(t, ty, bytes, shape)?
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
        self.release(bytes);
        let t = q.dequantize(&Device::Cpu)?;
        Ok(match float_dtype(ty) {
            DType::F32 => t,
            d => t.to_dtype(d)?,
        })
    }

    fn bytes(&self, gguf_name: &str) -> &[u8] {
        let (part, range) = &self.ranges[gguf_name];
        &self.parts[*part][range.clone()]
    }

    /// Drops `bytes` (values just copied out of one of the maps) from the resident set.
    fn release(&self, bytes: &[u8]) {
        let at = bytes.as_ptr() as usize;
        if let Some(map) = self
            .parts
            .iter()
            .find(|m| (m.as_ptr() as usize..m.as_ptr() as usize + m.len()).contains(&at))
        {
            crate::checkpoint::release_mapped(map, bytes);
        }
    }

    /// The bytes behind a source and their GGML type (expert `e`'s rows of a stacked
    /// tensor); `None` for a joined `kv_b_proj`, which is computed.
    fn stored(&self, source: &Source) -> Option<(&[u8], GgmlDType)> {
        match source {
            Source::Whole(t) => Some((self.bytes(t), self.infos[t].ggml_dtype)),
            Source::Expert(t, e) => {
                let all = self.bytes(t);
                let per = all.len() / self.infos[t].shape.dims()[0];
                Some((&all[e * per..(e + 1) * per], self.infos[t].ggml_dtype))
            }
            Source::KvB { .. } => None,
        }
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            reason: format!("{name}: no such tensor"),
        }
    }
}

/// `kv_b_proj`'s per-head blocks as a GGUF file stores them ([`GgufFile::kv_b_heads`]).
pub struct KvBHeads {
    /// Each head's `W_UKᵀ` `[rank, nope]` (llama.cpp's `attn_k_b`), if stored in blocks.
    pub w_uk_t: Option<Vec<QuantMatrix>>,
    /// Each head's `W_UV` `[v, rank]` (llama.cpp's `attn_v_b`), if stored in blocks.
    pub w_uv: Option<Vec<QuantMatrix>>,
}

/// Whether a GGML type is a plain float type (served as a tensor, not as blocks).
fn is_float(ty: GgmlDType) -> bool {
    matches!(ty, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The dtype a float GGML tensor holds (block formats dequantise to f32).
fn float_dtype(ty: GgmlDType) -> DType {
    match ty {
        GgmlDType::F16 => DType::F16,
        GgmlDType::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// The bytes a tensor's data takes, or why no file can hold it: GGML blocks run along a row
/// (the last dimension), so a row must hold whole blocks.
fn stored_bytes(info: &TensorInfo) -> std::result::Result<usize, String> {
    let (ty, dims) = (info.ggml_dtype, info.shape.dims());
    let row = dims.last().copied().unwrap_or(1);
    if !row.is_multiple_of(ty.block_size()) {
        return Err(format!(
            "rows of {row} values do not split into {ty:?} blocks of {}",
            ty.block_size()
        ));
    }
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| (n / ty.block_size()).checked_mul(ty.type_size()))
        .ok_or_else(|| format!("shape {dims:?} is larger than any file"))
}

/// Whether a tensor is one of the matrices the model keeps in an 8/4-bit format under
/// `--matrices q8|q4|q4k` (its projections), or stays as it is (norms, router, its bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Projection,
    Plain,
}

/// Model-level tensors: (GGUF name, HF name). The head is written at 8 bits in every
/// quantised file, as the model keeps it.
const MODEL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors: (GGUF name after `blk.L.`, HF name after `model.layers.L.`, kind).
/// `kv_b_proj` is llama.cpp's `attn_k_b` + `attn_v_b` and the routed experts are stacked
/// ([`STACKED`]); both are handled beside this table.
const LAYER_NAMES: &[(&str, &str, Kind)] = &[
    ("attn_norm.weight", "input_layernorm.weight", Kind::Plain),
    (
        "ffn_norm.weight",
        "post_attention_layernorm.weight",
        Kind::Plain,
    ),
    ("attn_q.weight", "self_attn.q_proj.weight", Kind::Projection),
    (
        "attn_q_a.weight",
        "self_attn.q_a_proj.weight",
        Kind::Projection,
    ),
    (
        "attn_q_a_norm.weight",
        "self_attn.q_a_layernorm.weight",
        Kind::Plain,
    ),
    (
        "attn_q_b.weight",
        "self_attn.q_b_proj.weight",
        Kind::Projection,
    ),
    (
        "attn_kv_a_mqa.weight",
        "self_attn.kv_a_proj_with_mqa.weight",
        Kind::Projection,
    ),
    (
        "attn_kv_a_norm.weight",
        "self_attn.kv_a_layernorm.weight",
        Kind::Plain,
    ),
    (
        "attn_kv_b.weight",
        "self_attn.kv_b_proj.weight",
        Kind::Plain,
    ),
    (
        "attn_output.weight",
        "self_attn.o_proj.weight",
        Kind::Projection,
    ),
    ("ffn_gate.weight", "mlp.gate_proj.weight", Kind::Projection),
    ("ffn_up.weight", "mlp.up_proj.weight", Kind::Projection),
    ("ffn_down.weight", "mlp.down_proj.weight", Kind::Projection),
    ("ffn_gate_inp.weight", "mlp.gate.weight", Kind::Plain),
    (
        "exp_probs_b.bias",
        "mlp.gate.e_score_correction_bias",
        Kind::Plain,
    ),
    (
        "ffn_gate_shexp.weight",
        "mlp.shared_experts.gate_proj.weight",
        Kind::Projection,
    ),
    (
        "ffn_up_shexp.weight",
        "mlp.shared_experts.up_proj.weight",
        Kind::Projection,
    ),
    (
        "ffn_down_shexp.weight",
        "mlp.shared_experts.down_proj.weight",
        Kind::Projection,
    ),
];

/// Stacked routed experts: (GGUF name after `blk.L.`, HF name after `mlp.experts.E.`).
const STACKED: &[(&str, &str)] = &[
    ("ffn_gate_exps.weight", "gate_proj.weight"),
    ("ffn_up_exps.weight", "up_proj.weight"),
    ("ffn_down_exps.weight", "down_proj.weight"),
];

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
        if let Some(&(_, hf)) = MODEL_NAMES.iter().find(|(g, _)| g == name) {
            out.insert(hf.to_string(), (Source::Whole(name.clone()), dims));
            continue;
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
        if rest == "attn_v_b.weight" {
            continue; // joined with attn_k_b below
        }
        if rest == "attn_k_b.weight" {
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
        if let Some(&(_, hf_proj)) = STACKED.iter().find(|(g, _)| *g == rest) {
            let &[e, n, k] = dims.as_slice() else {
                return Err(format!("{name}: expected [E, N, K], found {dims:?}"));
            };
            for x in 0..e {
                let hf = format!("{p}.mlp.experts.{x}.{hf_proj}");
                out.insert(hf, (Source::Expert(name.clone(), x), vec![n, k]));
            }
            continue;
        }
        let Some(&(_, hf, _)) = LAYER_NAMES.iter().find(|(g, _, _)| *g == rest) else {
            unknown.push(name.clone());
            continue;
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

/// GGML's name of type `id` (`ggml_type` in ggml.h), for messages.
fn type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// Every tensor's (name, GGML type id, byte offset of that id in the file), read from a GGUF
/// v2/v3 header without interpreting the types (so an unsupported one can be named).
fn tensor_types(b: &[u8]) -> std::result::Result<Vec<(String, u32, usize)>, String> {
    let mut r = HeaderReader { b, at: 0 };
    if r.take(4)? != b"GGUF" || !matches!(r.u32()?, 2 | 3) {
        return Err("not a GGUF v2/v3 file".into());
    }
    let (n_tensors, n_kv) = (r.u64()?, r.u64()?);
    for _ in 0..n_kv {
        let key = r.u64()? as usize;
        r.take(key)?;
        let ty = r.u32()?;
        r.skip_value(ty)?;
    }
    let mut out = Vec::new();
    for _ in 0..n_tensors {
        let n = r.u64()? as usize;
        let name = String::from_utf8_lossy(r.take(n)?).into_owned();
        let dims = r.u32()? as usize;
        r.take(8 * dims)?;
        let ty_at = r.at;
        let ty = r.u32()?;
        r.u64()?; // data offset
        out.push((name, ty, ty_at));
    }
    Ok(out)
}

/// A cursor over a GGUF header (little-endian; strings and arrays with u64 lengths).
struct HeaderReader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> HeaderReader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at.saturating_add(n))
            .ok_or("truncated header")?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// Skips one metadata value of GGUF value type `ty`.
    fn skip_value(&mut self, ty: u32) -> std::result::Result<(), String> {
        match ty {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            8 => {
                let n = self.u64()? as usize;
                self.take(n).map(drop)
            }
            9 => {
                let item = self.u32()?;
                let n = self.u64()?;
                (0..n).try_for_each(|_| self.skip_value(item))
            }
            t => Err(format!("unknown metadata value type {t}")),
        }
    }
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
        // llama.cpp leaves cos/sin unscaled and scales the softmax by
        // (1 + yarn_log_multiplier · ln factor)²: HF's attention_factor 1 and mscale_all_dim.
        cfg["rope_scaling"] = json!({
            "type": "yarn",
            "factor": need("rope.scaling.factor")?,
            "original_max_position_embeddings":
                int(need("rope.scaling.original_context_length")?),
            "beta_fast": opt("rope.scaling.yarn_beta_fast", 32.0),
            "beta_slow": opt("rope.scaling.yarn_beta_slow", 1.0),
            "mscale_all_dim": opt("rope.scaling.yarn_log_multiplier", 0.0) / 0.1,
            "attention_factor": 1.0,
        });
    } else if let Some(other) = scaling.filter(|s| *s != "none") {
        return Err(format!(
            "{}: '{other}' (DeepSeek models use yarn)",
            key("rope.scaling.type")
        ));
    }
    Ok(cfg)
}

/// A metadata value the writer emits (GGUF value types 4, 6, 7, 8).
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
}

/// What one written tensor holds.
enum Payload {
    /// An HF tensor in a float type.
    Float(String),
    /// A projection, quantised (or, when its rows are not whole 32-value blocks, the f32
    /// values of its quantisation: same values, no GGML block layout).
    Quantised(String, QuantFormat),
    /// The routed experts' projections, stacked `[E, N, K]`.
    Stacked(Vec<String>, QuantFormat),
    /// `kv_b_proj`'s key rows per head, `[H, rank, nope]` (llama.cpp's `attn_k_b`).
    KeyB(String),
    /// `kv_b_proj`'s value rows per head, `[H, v, rank]` (`attn_v_b`).
    ValueB(String),
}

/// One tensor of the output: GGUF name, row-major dims, type, content.
struct Planned {
    name: String,
    dims: Vec<usize>,
    ty: GgmlDType,
    content: Payload,
}

/// GGUF's data alignment (`general.alignment` default).
const ALIGN: usize = 32;

/// Writes the HF checkpoint `checkpoint` as a GGUF file at `out` (llama.cpp's `deepseek2`
/// layout, `tokenizer.ggml.model = none`): its projections in `format` (`Q8_0` for q8, `Q4_1`
/// for q4, `Q4_K` for q4k: the values [`crate::MatrixFormat::Quant`] computes at load), the
/// head in [`crate::precision::default_head`] (`Q8_0`, `Q6_K` under q4k),
/// the embedding, `kv_b_proj` (as `attn_k_b` / `attn_v_b`) and the routers in their stored
/// float type (FP8 dequantised to f32), norms in f32; a checkpoint's half-split rotary pairs
/// (`rope_interleave: false`) are written as the interleaved pairs llama.cpp rotates (the
/// query and `kv_a_proj_with_mqa` rotary rows reordered: the same model). MTP modules are not
/// written. Tensors are
/// quantised and written one at a time (memory: one tensor, not the model). `progress` is
/// called with (tensors done, total). Returns the bytes written.
pub fn write_quantized(
    checkpoint: &crate::checkpoint::Checkpoint,
    format: QuantFormat,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<u64> {
    let cfg = checkpoint.config()?;
    let input =
        |reason: String| ModelError::Input(format!("{}: {reason}", checkpoint.dir().display()));
    if checkpoint.is_gguf() {
        return Err(input(
            "already a GGUF file (quantize reads HF checkpoints)".into(),
        ));
    }
    if cfg.arch == Arch::V32 {
        return Err(input(
            "DeepSeek-V3.2's indexer has no GGUF layout here".into(),
        ));
    }
    let factor = cfg.mla.rope.attention_factor();
    if (factor - 1.0).abs() > 1e-9 {
        return Err(input(format!(
            "rope_scaling: cos/sin are scaled by {factor} (mscale differs from mscale_all_dim); \
             GGUF keeps one YaRN factor and llama.cpp scales them by 1"
        )));
    }
    let metadata = gguf_metadata(&cfg, format)?;
    let plan = plan_tensors(checkpoint, &cfg, format)?;

    let file = std::fs::File::create(out).map_err(|e| ModelError::io(out, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| ModelError::io(out, e);
    let mut header = Vec::new();
    header.extend(0x4655_4747u32.to_le_bytes()); // "GGUF"
    header.extend(3u32.to_le_bytes());
    header.extend((plan.len() as u64).to_le_bytes());
    header.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in &metadata {
        put_str(&mut header, key);
        match value {
            Meta::U32(v) => {
                header.extend(4u32.to_le_bytes());
                header.extend(v.to_le_bytes());
            }
            Meta::F32(v) => {
                header.extend(6u32.to_le_bytes());
                header.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                header.extend(7u32.to_le_bytes());
                header.push(*v as u8);
            }
            Meta::Str(v) => {
                header.extend(8u32.to_le_bytes());
                put_str(&mut header, v);
            }
        }
    }
    let mut offset = 0usize;
    for t in &plan {
        put_str(&mut header, &t.name);
        header.extend((t.dims.len() as u32).to_le_bytes());
        for &d in t.dims.iter().rev() {
            header.extend((d as u64).to_le_bytes()); // ne0 (innermost) first
        }
        header.extend(linear::ggml_type_id(t.ty).to_le_bytes());
        header.extend((offset as u64).to_le_bytes());
        offset += padded(planned_bytes(t));
    }
    header.resize(padded(header.len()), 0);
    std::io::Write::write_all(&mut w, &header).map_err(io)?;
    let mut written = header.len() as u64;
    for (i, t) in plan.iter().enumerate() {
        let mut bytes = tensor_bytes(checkpoint, &cfg.mla, t)?;
        debug_assert_eq!(bytes.len(), planned_bytes(t), "{}", t.name);
        bytes.resize(padded(bytes.len()), 0);
        std::io::Write::write_all(&mut w, &bytes).map_err(io)?;
        written += bytes.len() as u64;
        progress(i + 1, plan.len());
    }
    std::io::Write::flush(&mut w).map_err(io)?;
    Ok(written)
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn planned_bytes(t: &Planned) -> usize {
    t.dims.iter().product::<usize>() / t.ty.block_size() * t.ty.type_size()
}

/// The GGML float type a stored tensor is written in: the dtype the model would hold it in
/// under `--matrices q8|q4|q4k` (bf16/f16 kept, f32 and FP8 as f32).
fn float_type(stored: DType) -> GgmlDType {
    match stored {
        DType::BF16 => GgmlDType::BF16,
        DType::F16 => GgmlDType::F16,
        _ => GgmlDType::F32,
    }
}

/// The block type of a projection `[N, K]` in `format` (Q4_K / Q6_K / Q5_K / Q3_K / Q2_K rows
/// that are not whole 256-value superblocks are Q4 / Q8 / Q5 / Q4 / Q4, as [`QuantMatrix`]
/// quantises them), or f32 when `K` is not a whole number of 32-value blocks.
fn block_type(format: QuantFormat, k: usize) -> GgmlDType {
    match format {
        _ if !k.is_multiple_of(linear::QUANT_GROUP) => GgmlDType::F32,
        QuantFormat::Q4K if k.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
        QuantFormat::Q6K if k.is_multiple_of(GgmlDType::Q6K.block_size()) => GgmlDType::Q6K,
        QuantFormat::Q5K if k.is_multiple_of(GgmlDType::Q5K.block_size()) => GgmlDType::Q5K,
        QuantFormat::Q3K if k.is_multiple_of(GgmlDType::Q3K.block_size()) => GgmlDType::Q3K,
        QuantFormat::Q2K if k.is_multiple_of(GgmlDType::Q2K.block_size()) => GgmlDType::Q2K,
        QuantFormat::Q8 | QuantFormat::Q6K => GgmlDType::Q8_0,
        QuantFormat::Q4 | QuantFormat::Q4K | QuantFormat::Q3K | QuantFormat::Q2K => GgmlDType::Q4_1,
        QuantFormat::Q5 | QuantFormat::Q5K => GgmlDType::Q5_1,
    }
}

fn plan_tensors(
    checkpoint: &crate::checkpoint::Checkpoint,
    cfg: &ModelConfig,
    format: QuantFormat,
) -> Result<Vec<Planned>> {
    let meta = |hf: &str| {
        checkpoint
            .tensors()
            .get(hf)
            .ok_or_else(|| ModelError::Weights {
                dir: checkpoint.dir().to_path_buf(),
                problems: vec![format!("{hf}: missing")],
            })
    };
    let mut plan = Vec::new();
    for &(gguf, hf) in MODEL_NAMES {
        let m = meta(hf)?;
        let (ty, content) = if hf == "lm_head.weight" {
            let f = crate::precision::default_head(format);
            (block_type(f, m.shape[1]), Payload::Quantised(hf.into(), f))
        } else if m.shape.len() == 2 {
            (float_type(m.dtype), Payload::Float(hf.into()))
        } else {
            (GgmlDType::F32, Payload::Float(hf.into()))
        };
        plan.push(Planned {
            name: gguf.into(),
            dims: m.shape.clone(),
            ty,
            content,
        });
    }
    let m = &cfg.mla;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for &(gguf, hf, kind) in LAYER_NAMES {
            let hf = format!("{p}.{hf}");
            if hf.ends_with("kv_b_proj.weight") {
                continue; // written split, below
            }
            let Some(stored) = checkpoint.tensors().get(&hf) else {
                continue; // e.g. q_proj in a q_lora model, the router in a dense layer
            };
            let (ty, content) = match kind {
                Kind::Projection => (
                    block_type(format, stored.shape[1]),
                    Payload::Quantised(hf, format),
                ),
                Kind::Plain if stored.shape.len() == 2 => {
                    (float_type(stored.dtype), Payload::Float(hf))
                }
                Kind::Plain => (GgmlDType::F32, Payload::Float(hf)),
            };
            plan.push(Planned {
                name: format!("blk.{l}.{gguf}"),
                dims: stored.shape.clone(),
                ty,
                content,
            });
        }
        let kv_b = format!("{p}.self_attn.kv_b_proj.weight");
        let ty = float_type(meta(&kv_b)?.dtype);
        let (h, rank) = (m.num_heads, m.kv_lora_rank);
        plan.push(Planned {
            name: format!("blk.{l}.attn_k_b.weight"),
            dims: vec![h, rank, m.qk_nope_head_dim],
            ty,
            content: Payload::KeyB(kv_b.clone()),
        });
        plan.push(Planned {
            name: format!("blk.{l}.attn_v_b.weight"),
            dims: vec![h, m.v_head_dim, rank],
            ty,
            content: Payload::ValueB(kv_b),
        });
        if let (Some(moe), true) = (&cfg.moe, cfg.is_moe_layer(l)) {
            for &(gguf, hf) in STACKED {
                let names: Vec<String> = (0..moe.gate.n_routed_experts)
                    .map(|e| format!("{p}.mlp.experts.{e}.{hf}"))
                    .collect();
                let shape = meta(&names[0])?.shape.clone();
                plan.push(Planned {
                    name: format!("blk.{l}.{gguf}"),
                    dims: vec![names.len(), shape[0], shape[1]],
                    ty: block_type(format, shape[1]),
                    content: Payload::Stacked(names, format),
                });
            }
        }
    }
    Ok(plan)
}

/// The stored bytes of one planned tensor.
fn tensor_bytes(
    checkpoint: &crate::checkpoint::Checkpoint,
    mla: &mla::MlaConfig,
    t: &Planned,
) -> Result<Vec<u8>> {
    // f32 values in the float type `t.ty` (rounded to nearest, as `to_dtype` rounds).
    let float = |x: Tensor| -> Result<Vec<u8>> {
        let q = candle_core::quantized::QTensor::quantize(&x, t.ty)?;
        Ok(q.data()?.into_owned())
    };
    let quantised = |hf: &str, format: QuantFormat| -> Result<Vec<u8>> {
        let w = rope_rows_interleaved(checkpoint.load(hf, DType::F32, &Device::Cpu)?, hf, mla)?;
        let q = QuantMatrix::quantize(&w, format)?;
        if t.ty == GgmlDType::F32 {
            return Ok(q
                .dequantize_rows()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect());
        }
        Ok(q.to_ggml()?.1)
    };
    let kv_b = |hf: &str| -> Result<Tensor> {
        let per_head = mla.qk_nope_head_dim + mla.v_head_dim;
        let w = checkpoint.load(hf, DType::F32, &Device::Cpu)?;
        Ok(w.reshape((mla.num_heads, per_head, mla.kv_lora_rank))?)
    };
    match &t.content {
        Payload::Float(hf) => float(checkpoint.load(hf, DType::F32, &Device::Cpu)?),
        Payload::Quantised(hf, format) => quantised(hf, *format),
        Payload::Stacked(names, format) => {
            let mut out = Vec::new();
            for hf in names {
                out.extend(quantised(hf, *format)?);
            }
            Ok(out)
        }
        Payload::KeyB(hf) => {
            let nope = t.dims[2];
            float(
                kv_b(hf)?
                    .narrow(1, 0, nope)?
                    .transpose(1, 2)?
                    .contiguous()?,
            )
        }
        Payload::ValueB(hf) => {
            let x = kv_b(hf)?;
            let nope = x.dims()[1] - t.dims[1];
            float(x.narrow(1, nope, t.dims[1])?.contiguous()?)
        }
    }
}

/// The rows of projection `w` (HF tensor `hf`) in the order llama.cpp's `deepseek2` rotates.
/// Its rotary pairs are interleaved, `(2i, 2i + 1)`; a checkpoint with `rope_interleave: false`
/// pairs `(i, i + d/2)` (HF's `rotate_half`). Rotating the pairs of `P · q` where `P` moves
/// row `i` to `2i` and row `i + d/2` to `2i + 1` gives `P · rotate_half(q)` (pair `i` keeps its
/// frequency), and the scores `q · k` sum the same products in another order, so the query
/// projection's rotary rows (each head's last `qk_rope_head_dim`) and `kv_a_proj_with_mqa`'s
/// (after the latent's `kv_lora_rank`) are written so moved. Other tensors, and interleaved
/// checkpoints, are returned as they are.
fn rope_rows_interleaved(w: Tensor, hf: &str, mla: &mla::MlaConfig) -> Result<Tensor> {
    if mla.rope_layout == rope_yarn::RopeLayout::Interleaved {
        return Ok(w);
    }
    let d = mla.qk_rope_head_dim;
    let (blocks, before) =
        if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_b_proj.weight") {
            (mla.num_heads, mla.qk_nope_head_dim)
        } else if hf.ends_with("self_attn.kv_a_proj_with_mqa.weight") {
            (1, mla.kv_lora_rank)
        } else {
            return Ok(w);
        };
    let per_block = before + d;
    if w.dims().first() != Some(&(blocks * per_block)) {
        return Err(ModelError::Input(format!(
            "{hf}: {:?} rows, expected {blocks} x ({before} + {d}) for its rotary rows",
            w.dims()
        )));
    }
    // `order[new] = old`: the block's leading rows stay, rotary row 2i takes i, 2i + 1 takes
    // i + d/2.
    let order: Vec<u32> = (0..blocks * per_block)
        .map(|new| {
            let (block, r) = (new / per_block, new % per_block);
            let old = match r.checked_sub(before) {
                None => r,
                Some(j) => before + j / 2 + (j % 2) * (d / 2),
            };
            (block * per_block + old) as u32
        })
        .collect();
    let order = Tensor::from_vec(order, blocks * per_block, w.device())?;
    Ok(w.index_select(&order, 0)?)
}

/// `deepseek2.*` metadata for `cfg` (the inverse of [`hf_config`]).
fn gguf_metadata(cfg: &ModelConfig, format: QuantFormat) -> Result<Vec<(String, Meta)>> {
    let m = &cfg.mla;
    let u = |v: usize| Meta::U32(v as u32);
    let k = |s: &str| format!("{ARCH}.{s}");
    let mut md = vec![
        ("general.architecture".to_string(), Meta::Str(ARCH.into())),
        ("general.name".into(), Meta::Str("DeepSeek".into())),
        (
            "general.file_type".into(),
            // llama_ftype: MOSTLY_Q8_0 = 7, MOSTLY_Q4_1 = 3, MOSTLY_Q4_K_S = 14 (Q4_K
            // layers, a Q6_K head), MOSTLY_Q6_K = 18, MOSTLY_Q5_1 = 9, MOSTLY_Q5_K_S = 16,
            // MOSTLY_Q3_K_S = 11, MOSTLY_Q2_K = 10
            Meta::U32(match format {
                QuantFormat::Q8 => 7,
                QuantFormat::Q4 => 3,
                QuantFormat::Q4K => 14,
                QuantFormat::Q6K => 18,
                QuantFormat::Q5 => 9,
                QuantFormat::Q5K => 16,
                QuantFormat::Q3K => 11,
                QuantFormat::Q2K => 10,
            }),
        ),
        ("general.quantization_version".into(), Meta::U32(2)),
        (k("block_count"), u(cfg.num_hidden_layers)),
        (
            k("context_length"),
            u(cfg.max_position_embeddings.unwrap_or(163_840)),
        ),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(m.num_heads)),
        (k("attention.head_count_kv"), Meta::U32(1)),
        (k("rope.freq_base"), Meta::F32(m.rope.theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Meta::F32(cfg.rms_norm_eps as f32),
        ),
        (k("leading_dense_block_count"), u(cfg.first_k_dense_replace)),
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("attention.q_lora_rank"), u(m.q_lora_rank.unwrap_or(0))),
        (k("attention.kv_lora_rank"), u(m.kv_lora_rank)),
        // The latent MQA head (what llama.cpp's MLA path attends with) and the per-head
        // widths of the split attn_k_b / attn_v_b.
        (
            k("attention.key_length"),
            u(m.kv_lora_rank + m.qk_rope_head_dim),
        ),
        (k("attention.value_length"), u(m.kv_lora_rank)),
        (
            k("attention.key_length_mla"),
            u(m.qk_nope_head_dim + m.qk_rope_head_dim),
        ),
        (k("attention.value_length_mla"), u(m.v_head_dim)),
        (k("rope.dimension_count"), u(m.qk_rope_head_dim)),
        ("tokenizer.ggml.model".into(), Meta::Str("none".into())),
    ];
    if let Some(bos) = cfg.bos_token_id {
        md.push(("tokenizer.ggml.bos_token_id".into(), Meta::U32(bos)));
    }
    if let Some(&eos) = cfg.eos_token_ids.first() {
        md.push(("tokenizer.ggml.eos_token_id".into(), Meta::U32(eos)));
    }
    if let Some(moe) = &cfg.moe {
        let g = &moe.gate;
        md.extend([
            (k("expert_count"), u(g.n_routed_experts)),
            (k("expert_used_count"), u(g.top_k)),
            (k("expert_group_count"), u(g.n_group)),
            (k("expert_group_used_count"), u(g.topk_group)),
            (
                k("expert_gating_func"),
                Meta::U32(match g.scoring {
                    moe::Scoring::Softmax => 1,
                    moe::Scoring::Sigmoid => 2,
                }),
            ),
            (
                k("expert_feed_forward_length"),
                u(moe.moe_intermediate_size),
            ),
            (k("expert_shared_count"), u(moe.n_shared_experts)),
            (
                k("expert_weights_scale"),
                Meta::F32(g.routed_scaling_factor),
            ),
            (k("expert_weights_norm"), Meta::Bool(g.normalize)),
        ]);
    }
    if let rope_yarn::RopeScaling::Yarn(y) = &m.rope.scaling {
        md.extend([
            (k("rope.scaling.type"), Meta::Str("yarn".into())),
            (k("rope.scaling.factor"), Meta::F32(y.factor as f32)),
            (
                k("rope.scaling.original_context_length"),
                u(y.original_max_position_embeddings),
            ),
            (
                k("rope.scaling.yarn_beta_fast"),
                Meta::F32(y.beta_fast as f32),
            ),
            (
                k("rope.scaling.yarn_beta_slow"),
                Meta::F32(y.beta_slow as f32),
            ),
            (
                k("rope.scaling.yarn_log_multiplier"),
                Meta::F32((0.1 * y.mscale_all_dim.unwrap_or(0.0)) as f32),
            ),
        ]);
    } else if m.rope.scaling != rope_yarn::RopeScaling::None {
        return Err(ModelError::config(
            "rope_scaling",
            "GGUF's deepseek2 layout has YaRN or no scaling",
        ));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header scan reads what candle's parser reads, and a tensor of a type this build
    /// cannot read is named in the error (candle's own message names only the type id).
    #[test]
    fn unsupported_tensor_types_are_named() {
        let src = fixtures::fixtures_dir().join("gguf/v3_noaux-Q8_0.gguf");
        let bytes = std::fs::read(&src).unwrap();
        let types = tensor_types(&bytes).unwrap();
        let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(types.len(), content.tensor_infos.len());
        for (name, id, _) in &types {
            let ty = content.tensor_infos[name].ggml_dtype;
            assert_eq!(linear::ggml_type_id(ty), *id, "{name}");
        }
        let (name, _, at) = types
            .iter()
            .find(|(n, _, _)| n.ends_with("ffn_up_exps.weight"))
            .unwrap()
            .clone();
        let mut patched = bytes.clone();
        patched[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iq2.gguf");
        std::fs::write(&path, &patched).unwrap();
        let e = GgufFile::open(&path).err().expect("opened").to_string();
        assert!(e.contains(&name) && e.contains("IQ2_XXS (16)"), "{e}");
        assert!(tensor_types(&bytes[..100]).is_err());
    }
}
