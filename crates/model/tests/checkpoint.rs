//! Loading: bad checkpoints and configs give one clear error naming what is wrong; random
//! checkpoints in every storage dtype load back; FP8 dequantisation handles partial blocks.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use fixtures::Case;
use model::random::{write_random_checkpoint, StoreDtype};
use model::{dequantize_fp8, DeepSeek, ModelConfig};

/// A scratch directory, removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch copy of a fixture checkpoint that tests may damage.
fn scratch_copy(case: &str, tag: &str) -> Scratch {
    let src = Case::load(case).dir;
    let dst = std::env::temp_dir().join(format!("model-test-{case}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    Scratch(dst)
}

fn load_err(dir: &Path) -> String {
    match DeepSeek::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn wrong_shapes_are_all_listed() {
    let dir = scratch_copy("v3_noaux", "shapes");
    edit_config(&dir, |c| c["kv_lora_rank"] = 24.into());
    let err = load_err(&dir);
    assert!(
        err.contains(
            "model.layers.0.self_attn.kv_b_proj.weight: expected [128, 24], found [128, 32]"
        ),
        "{err}"
    );
    assert!(
        err.contains("model.layers.2.self_attn.kv_a_layernorm.weight: expected [24], found [32]"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn missing_and_unexpected_tensors_are_listed() {
    let dir = scratch_copy("v2_greedy", "missing");
    // One layer fewer: the last layer's tensors become unexpected; one expert more: missing.
    edit_config(&dir, |c| {
        c["num_hidden_layers"] = 1.into();
        c["n_routed_experts"] = 9.into();
    });
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.1.self_attn.o_proj.weight: unexpected"),
        "{err}"
    );
    let dir = scratch_copy("v2_greedy", "missing2");
    edit_config(&dir, |c| c["num_hidden_layers"] = 3.into());
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.2.input_layernorm.weight: missing"),
        "{err}"
    );
}

#[test]
fn mtp_weights_are_expected_not_dropped() {
    // The MTP layer is part of the plan: declaring no MTP layers makes its tensors unexpected
    // (never silently misread as a decoder layer).
    let dir = scratch_copy("v3_mtp", "nompt");
    edit_config(&dir, |c| c["num_nextn_predict_layers"] = 0.into());
    let err = load_err(&dir);
    assert!(
        err.contains("model.layers.2.eh_proj.weight: unexpected"),
        "{err}"
    );
    DeepSeek::load(&Case::load("v3_mtp").dir, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn truncated_shard_names_the_file() {
    let dir = scratch_copy("v2_greedy", "trunc");
    let shard = dir.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 100).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn fp8_weight_without_scales_is_an_error() {
    let dir = scratch_copy("v3_fp8", "noscale");
    // Rewrite the index without one scale so the checkpoint lacks it.
    let idx = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    let name = "model.layers.0.self_attn.o_proj.weight_scale_inv";
    assert!(v["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove(name)
        .is_some());
    std::fs::write(&idx, v.to_string()).unwrap();
    // The shard still holds it; drop it from there too by re-saving without it.
    let shard = dir.join(
        v["weight_map"]["model.layers.0.self_attn.o_proj.weight"]
            .as_str()
            .unwrap(),
    );
    let mut tensors = candle_core::safetensors::load(&shard, &Device::Cpu).unwrap();
    tensors.remove(name);
    candle_core::safetensors::save(&tensors, &shard).unwrap();
    let err = load_err(&dir);
    assert!(err.contains(&format!("{name}: missing")), "{err}");
}

#[test]
fn bad_config_fields_are_named() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Case::load("v3_noaux").dir.join("config.json")).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("model_type", "llama".into(), "model_type"),
        ("hidden_size", 0.into(), "hidden_size"),
        ("topk_method", "greedy".into(), "topk_method"),
        ("n_group", 3.into(), "n_group"),
        ("qk_rope_head_dim", 15.into(), ""),
        (
            "quantization_config",
            serde_json::json!({"quant_method": "gptq"}),
            "quantization_config.quant_method",
        ),
        ("attention_bias", true.into(), "attention_bias"),
        ("rms_norm_eps", (-1e-6).into(), "rms_norm_eps"),
        (
            "max_position_embeddings",
            0.5.into(),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            0.into(),
            "max_position_embeddings",
        ),
    ];
    for (field, value, named) in cases {
        let mut c = base.clone();
        c[field] = value;
        let err = ModelConfig::from_json_str(&c.to_string())
            .expect_err(field)
            .to_string();
        assert!(err.contains(named), "{field}: {err}");
    }
    let err = ModelConfig::from_json_str("{\"model_type\": ")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config.json: invalid JSON"), "{err}");
}

/// A configuration asking for more layers or experts than the checkpoint could hold is refused
/// before its tensor list is built (2^32 layers would take unbounded memory and time).
#[test]
fn configs_larger_than_the_checkpoint_are_refused_before_listing_tensors() {
    for (field, named) in [
        ("num_hidden_layers", "num_hidden_layers"),
        ("n_routed_experts", "n_routed_experts"),
    ] {
        let dir = scratch_copy("v2_group_limited", field);
        edit_config(&dir, |c| c[field] = (1u64 << 32).into());
        let err = load_err(&dir);
        assert!(
            err.starts_with(named) && err.contains("needs at least"),
            "{field}: {err}"
        );
    }
}

#[test]
fn random_checkpoints_load_in_every_storage_dtype() {
    let config = std::fs::read_to_string(Case::load("v3_fp8").dir.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config
        .as_object_mut()
        .unwrap()
        .remove("quantization_config");
    for (store, tag) in [
        (StoreDtype::F32, "f32"),
        (StoreDtype::Bf16, "bf16"),
        (StoreDtype::Fp8, "fp8"),
    ] {
        let dir =
            std::env::temp_dir().join(format!("model-test-random-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_random_checkpoint(&config.to_string(), &dir, store, 1, |_, _, _| {}).unwrap();
        let model = DeepSeek::load(&dir, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.config().is_fp8(), store == StoreDtype::Fp8);
        let logits = model.logits(&[3, 4, 5]).unwrap();
        let finite = logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite());
        assert!(finite, "{tag}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn fp8_dequantisation_uses_partial_edge_blocks() {
    // 130 x 129: blocks [0..128) and [128..130) by [0..128) and [128..129).
    let (rows, cols) = (130, 129);
    let q = Tensor::ones((rows, cols), DType::F32, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F8E4M3)
        .unwrap();
    let scale = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let w = dequantize_fp8(&q, &scale)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(
        (w[0][0], w[0][128], w[129][0], w[129][128]),
        (1.0, 2.0, 3.0, 4.0)
    );
    assert_eq!((w[127][127], w[128][127]), (1.0, 3.0));
    let bad = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
    assert!(dequantize_fp8(&q, &bad)
        .unwrap_err()
        .to_string()
        .contains("expected [2, 2]"));
}
