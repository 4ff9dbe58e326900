//! Test support for the workspace: loads the parity fixtures that
//! `tests/reference/generate.py` writes with HF transformers 5.23, and compares tensors.
//!
//! A fixture case is a directory `tests/fixtures/<case>/` holding a tiny random checkpoint in
//! the layout of DeepSeek's releases (`config.json`, sharded safetensors with
//! `model.safetensors.index.json`) plus `reference.safetensors` (tensors captured from the HF
//! model) and `meta.json`. Reference tensor names:
//!
//! | name | shape | what |
//! |---|---|---|
//! | `input_ids` | `[T]` | the prompt |
//! | `rope.inv_freq`, `rope.attention_scaling` | `[d/2]`, `[1]` | the rotary table's parameters |
//! | `rope.positions`, `rope.cos`, `rope.sin` | `[P]`, `[P, d]` | HF cos/sin (`cat(f, f)`) at far positions |
//! | `rope.q_in/k_in`, `rope.q_out/k_out` | `[1, h, P, d]` | rotation in the case's HF layout (`rope.layout`: 0 interleaved, 1 evens-then-odds, 2 half-split pairs) |
//! | `prefill.layers.{l}.attn_in/attn_out` | `[T, hidden]` | attention input (after `input_layernorm`) and output |
//! | `prefill.layers.{l}.mlp_in/mlp_out` | `[T, hidden]` | FFN/MoE input and output |
//! | `prefill.layers.{l}.layer_in/layer_out` | `[T, hidden]` | decoder layer input and output |
//! | `prefill.layers.{l}.gate_logits/weights/indices` | `[T, E]`, `[T, k]` | router (indices ascending per token) |
//! | `prefill.final_hidden`, `prefill.logits` | `[T, hidden]`, `[T, V]` | after the final norm; logits |
//! | `decode.layers.{l}.attn_out`, `decode.logits` | `[T, ...]` | the same, one token at a time through the cache |
//! | `greedy` | `[16]` | greedy continuation of the prompt |
//! | `mtp.hidden`, `mtp.logits` | `[T-1, ...]` | depth-1 MTP module (MTP case only) |
//! | `prefill.layers.{l}.index_scores` | `[T, T]` | V3.2: the lightning indexer's scores, `-inf` on future keys |
//! | `prefill.layers.{l}.selected`, `decode.layers.{l}.selected` | `[T, T]` | V3.2: 1 where HF's indexer selected a visible key |
//! | `prefill.layers.{l}.index_gap` | `[1]` | V3.2: smallest gap between the k-th and (k+1)-th visible score |
//!
//! The V3.2 case (`v32_dsa`, DeepSeek Sparse Attention) is not in [`CASES`]: its attention is
//! not the dense MLA the component crates' parity tests run on every case.
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // test helpers read fixtures and results on the host

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// The fixture format version the Rust side expects (`meta.json` "version").
pub const FIXTURE_VERSION: u64 = 1;

/// Every fixture case, in the order of the generator.
pub const CASES: &[&str] = &[
    "v2_greedy",
    "v2_group_limited",
    "v3_noaux",
    "v3_mtp",
    "v3_fp8",
    "v3_rope_half",
];

/// The directory holding the committed fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The shared data directory (`../shared/data` beside the repository), if present.
pub fn shared_data_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    dir.is_dir().then_some(dir)
}

/// One loaded fixture case.
pub struct Case {
    /// Case name (directory name).
    pub name: String,
    /// The case directory, also the checkpoint directory.
    pub dir: PathBuf,
    /// `config.json` as written by the generator (release spelling).
    pub config: serde_json::Value,
    /// `meta.json`.
    pub meta: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

impl Case {
    /// Loads a case; panics with a regeneration hint if it is missing or stale.
    pub fn load(name: &str) -> Case {
        let dir = fixtures_dir().join(name);
        let read_json = |file: &str| -> serde_json::Value {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let meta = read_json("meta.json");
        let version = meta["version"].as_u64().unwrap_or(0);
        assert_eq!(
            version, FIXTURE_VERSION,
            "fixture {name} has version {version}, the tests expect {FIXTURE_VERSION}: \
             regenerate with `python tests/reference/generate.py`"
        );
        let config = read_json("config.json");
        let path = dir.join("reference.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Case {
            name: name.to_string(),
            dir,
            config,
            meta,
            tensors,
        }
    }

    /// A reference tensor by name; panics naming the case and the tensor if absent.
    pub fn tensor(&self, key: &str) -> Tensor {
        self.try_tensor(key)
            .unwrap_or_else(|| panic!("fixture {}: no reference tensor {key}", self.name))
    }

    /// A reference tensor by name, if present.
    pub fn try_tensor(&self, key: &str) -> Option<Tensor> {
        self.tensors.get(key).cloned()
    }

    /// A reference integer tensor as a flat `Vec<u32>` (token ids, expert indices, positions).
    pub fn ids(&self, key: &str) -> Vec<u32> {
        let t = self.tensor(key).to_dtype(DType::I64).expect("i64");
        let v: Vec<i64> = t.flatten_all().and_then(|t| t.to_vec1()).expect("ids");
        v.into_iter().map(|x| x as u32).collect()
    }

    /// An integer field of `config.json`.
    pub fn config_usize(&self, key: &str) -> usize {
        self.config[key]
            .as_u64()
            .unwrap_or_else(|| panic!("fixture {}: config.json has no integer {key}", self.name))
            as usize
    }
}

impl Case {
    /// The checkpoint shards (`model-*.safetensors`), sorted.
    pub fn shards(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap_or_else(|e| panic!("{}: {e}", self.dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                n.starts_with("model-") && n.ends_with(".safetensors")
            })
            .collect();
        v.sort();
        v
    }

    /// Every checkpoint tensor in f32, FP8 block weights dequantised
    /// (`W[i, j] = q[i, j] * weight_scale_inv[i / 128, j / 128]`, partial edge blocks), as the
    /// model crate does at load; the scales themselves are dropped. Component crates use this
    /// to run parity on the FP8 case without depending on the model crate.
    pub fn weights_f32(&self) -> HashMap<String, Tensor> {
        let mut raw = HashMap::new();
        for shard in self.shards() {
            raw.extend(
                candle_core::safetensors::load(&shard, &Device::Cpu)
                    .unwrap_or_else(|e| panic!("{}: {e}", shard.display())),
            );
        }
        raw.iter()
            .filter(|(name, _)| !name.ends_with("weight_scale_inv"))
            .map(|(name, t)| {
                let t = match raw.get(&format!("{name}_scale_inv")) {
                    Some(scale) => dequantize_fp8_blocks(t, scale),
                    None => t.to_dtype(DType::F32).expect("f32"),
                };
                (name.clone(), t)
            })
            .collect()
    }

    /// A `VarBuilder` over [`Case::weights_f32`], for loading layers under their HF names.
    pub fn var_builder(&self) -> candle_nn::VarBuilder<'static> {
        candle_nn::VarBuilder::from_tensors(self.weights_f32(), DType::F32, &Device::Cpu)
    }
}

fn dequantize_fp8_blocks(q: &Tensor, scale_inv: &Tensor) -> Tensor {
    let (rows, cols) = q.dims2().expect("2-D FP8 weight");
    let block = |n: usize| {
        Tensor::new(
            (0..n as u32).map(|i| i / 128).collect::<Vec<_>>(),
            &Device::Cpu,
        )
    };
    let scale = scale_inv
        .to_dtype(DType::F32)
        .and_then(|s| s.index_select(&block(rows)?, 0))
        .and_then(|s| s.index_select(&block(cols)?, 1))
        .expect("block scales");
    (q.to_dtype(DType::F32).expect("f32") * scale).expect("dequantise")
}

/// `log softmax(row)[token]`, computed in f64: the reference for a served token's
/// log-probability.
pub fn log_softmax_at(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[token as usize] as f64 - lse
}

/// Maximum absolute difference between two tensors of the same shape (as f32).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).expect("f32");
    let b = b.to_dtype(DType::F32).expect("f32");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
}

/// Deterministic stand-in for `Tensor::randn` (whose CPU draws are unseeded, so a test built
/// on it sees different weights on every run and can fail one run in many): `shape` values,
/// normal with mean 0 and deviation `std` (Box-Muller over SplitMix64 seeded by `seed`), f32 on
/// the CPU.
pub fn seeded_randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
    let mut next = splitmix(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (z * std as f64) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
}

/// Deterministic stand-in for `Tensor::rand`: `shape` values uniform in `[lo, hi)`.
pub fn seeded_rand(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut next = splitmix(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * next() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
}

/// SplitMix64 as uniform draws in `[0, 1)`.
fn splitmix(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Asserts `max |actual - expected| <= tol`, printing the difference either way.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32, what: &str) {
    assert_eq!(
        actual.dims(),
        expected.dims(),
        "{what}: shape {:?} vs reference {:?}",
        actual.dims(),
        expected.dims()
    );
    let diff = max_abs_diff(actual, expected);
    println!("{what}: max |diff| = {diff:.3e} (tol {tol:.0e})");
    assert!(diff <= tol, "{what}: max |diff| = {diff:e} > {tol:e}");
}
