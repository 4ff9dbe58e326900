//! Random checkpoints of any configuration in the release layout (for tests and benchmarks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::tensor::{Dtype, TensorView};

use crate::checkpoint::FP8_BLOCK;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::plan::expected_tensors;

/// Storage dtype of a random checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    /// f32 everywhere.
    F32,
    /// bf16 everywhere.
    Bf16,
    /// e4m3 with 128x128 `weight_scale_inv` for the quantisable projections, bf16 elsewhere.
    Fp8,
}

/// A tensor ready to be written: name, stored dtype, shape, little-endian bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

/// Largest shard written (bytes).
const SHARD_BYTES: usize = 2 << 30;

/// Writes `config_json` and random weights for it to `out` (shards + index).
///
/// Weights are uniform in `±sqrt(3 / fan_in)` (unit-variance activations), norms are 1 and
/// correction and norm biases 0; `seed` makes the result reproducible. `progress` is told each tensor.
pub fn write_random_checkpoint(
    config_json: &str,
    out: &Path,
    dtype: StoreDtype,
    seed: u64,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<()> {
    let cfg = ModelConfig::from_json_str(config_json)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let mut config: serde_json::Value = serde_json::from_str(config_json).expect("validated above");
    if dtype == StoreDtype::Fp8 {
        config["quantization_config"] = serde_json::json!({
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": [FP8_BLOCK, FP8_BLOCK]});
    }
    let cfg_path = out.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&config).expect("json") + "\n",
    )
    .map_err(|e| ModelError::io(&cfg_path, e))?;

    let (plan, _) = expected_tensors(&cfg);
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut shard: Vec<Stored> = Vec::new();
    let mut shard_bytes = 0;
    // Each shard is written as soon as it is full (memory stays at one shard, whatever the
    // model's size) under a temporary name, renamed once the count is known.
    let mut written: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let total = plan.len();
    for (i, t) in plan.iter().enumerate() {
        progress(&t.name, i + 1, total);
        let values = random_values(&t.name, &t.shape, &mut rng);
        let entries = match dtype {
            StoreDtype::F32 => vec![(
                t.name.clone(),
                Dtype::F32,
                t.shape.clone(),
                f32_bytes(&values),
            )],
            StoreDtype::Fp8 if t.fp8_in_releases && t.shape.len() == 2 => {
                let (q, scales, scale_shape) = quantize_fp8(&values, t.shape[0], t.shape[1]);
                vec![
                    (t.name.clone(), Dtype::F8_E4M3, t.shape.clone(), q),
                    (
                        format!("{}_scale_inv", t.name),
                        Dtype::F32,
                        scale_shape,
                        f32_bytes(&scales),
                    ),
                ]
            }
            StoreDtype::Bf16 | StoreDtype::Fp8 => {
                let bytes = values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect();
                vec![(t.name.clone(), Dtype::BF16, t.shape.clone(), bytes)]
            }
        };
        for e in entries {
            shard_bytes += e.3.len();
            shard.push(e);
        }
        if shard_bytes >= SHARD_BYTES {
            let path = out.join(format!(
                "shard-{:05}.safetensors.partial",
                written.len() + 1
            ));
            written.push(write_shard(&path, std::mem::take(&mut shard))?);
            shard_bytes = 0;
        }
    }
    if !shard.is_empty() {
        let path = out.join(format!(
            "shard-{:05}.safetensors.partial",
            written.len() + 1
        ));
        written.push(write_shard(&path, shard)?);
    }
    let n = written.len();
    let mut weight_map = BTreeMap::new();
    for (s, (partial, names)) in written.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", s + 1);
        let path = out.join(&file);
        std::fs::rename(&partial, &path).map_err(|e| ModelError::io(&path, e))?;
        for name in names {
            weight_map.insert(name, file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    let idx_path = out.join("model.safetensors.index.json");
    std::fs::write(
        &idx_path,
        serde_json::to_string_pretty(&index).expect("json") + "\n",
    )
    .map_err(|e| ModelError::io(&idx_path, e))
}

/// Writes one shard's tensors to `path`; returns the path and the tensor names.
fn write_shard(path: &Path, tensors: Vec<Stored>) -> Result<(PathBuf, Vec<String>)> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dt, shape, bytes)| {
            let view = TensorView::new(*dt, shape.clone(), bytes).expect("consistent view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((
        path.to_path_buf(),
        tensors.into_iter().map(|t| t.0).collect(),
    ))
}

fn random_values(name: &str, shape: &[usize], rng: &mut XorShift) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.ends_with("norm.weight") {
        return vec![1.0; n];
    }
    if name.ends_with("e_score_correction_bias") || name.ends_with("norm.bias") {
        return vec![0.0; n];
    }
    let bound = if name.ends_with("embed_tokens.weight") {
        1.0
    } else {
        (3.0 / *shape.last().unwrap_or(&1) as f32).sqrt()
    };
    (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Block-wise e4m3: `scale = amax / 448` per 128x128 block; returns (codes, scales, scale shape).
fn quantize_fp8(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>, Vec<usize>) {
    let (br, bc) = (rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK));
    let mut scales = vec![0f32; br * bc];
    for i in 0..rows {
        for j in 0..cols {
            let s = &mut scales[(i / FP8_BLOCK) * bc + j / FP8_BLOCK];
            *s = s.max(w[i * cols + j].abs());
        }
    }
    scales.iter_mut().for_each(|s| *s = s.max(1e-12) / 448.0);
    let codes = (0..rows * cols)
        .map(|k| {
            let (i, j) = (k / cols, k % cols);
            float8::F8E4M3::from_f32(w[k] / scales[(i / FP8_BLOCK) * bc + j / FP8_BLOCK]).to_bits()
        })
        .collect();
    (codes, scales, vec![br, bc])
}

/// A small fast generator: checkpoints of billions of values must not wait on a CSPRNG.
struct XorShift(u64);

impl XorShift {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}
