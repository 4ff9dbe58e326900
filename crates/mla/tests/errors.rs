//! Bad input returns an error naming what is wrong, never a panic.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{random_layer, rope_for, small_config};
use mla::{AttentionPath, LayerCache, Mla, MlaError};
use rope_yarn::{RopeCache, RopeConfig};

#[test]
fn wrong_hidden_size() {
    let mla = random_layer(false, 0.1);
    let mut rope = rope_for(&mla);
    let x = Tensor::zeros((1, 3, 63), DType::F32, &Device::Cpu).unwrap();
    let err = mla
        .forward(&x, 0, &mut rope, None, AttentionPath::Absorbed)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "x: expected [batch > 0, tokens > 0, 64], found [1, 3, 63]"
    );
    let x = Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        mla.forward(&x, 0, &mut rope, None, AttentionPath::Absorbed),
        Err(MlaError::InputShape { what: "x", .. })
    ));
    let x = Tensor::zeros((1, 0, 64), DType::F32, &Device::Cpu).unwrap();
    assert!(mla
        .forward(&x, 0, &mut rope, None, AttentionPath::Absorbed)
        .is_err());
}

#[test]
fn wrong_dtype() {
    let mla = random_layer(false, 0.1);
    let mut rope = rope_for(&mla);
    let x = Tensor::zeros((1, 3, 64), DType::BF16, &Device::Cpu).unwrap();
    let err = mla
        .forward(&x, 0, &mut rope, None, AttentionPath::Absorbed)
        .unwrap_err();
    assert!(err.to_string().starts_with("x: dtype BF16"), "{err}");
}

#[test]
fn position_beyond_what_the_cache_holds() {
    let mla = random_layer(true, 0.1);
    let mut rope = rope_for(&mla);
    let mut cache = mla.new_cache(1).unwrap();
    let x = Tensor::zeros((1, 2, 64), DType::F32, &Device::Cpu).unwrap();
    mla.forward(&x, 0, &mut rope, Some(&mut cache), AttentionPath::Absorbed)
        .unwrap();
    let err = mla
        .forward(&x, 5, &mut rope, Some(&mut cache), AttentionPath::Absorbed)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cache: position 5 is beyond what the cache holds (2 tokens)"
    );
    let err = mla
        .forward(&x, 1, &mut rope, Some(&mut cache), AttentionPath::Expanded)
        .unwrap_err();
    assert!(
        err.to_string().contains("truncate the cache to 1 first"),
        "{err}"
    );
    // Nothing was appended by the failed calls.
    assert_eq!(cache.lens(), &[2]);
}

#[test]
fn mismatched_cache() {
    let mla = random_layer(false, 0.1);
    let mut rope = rope_for(&mla);
    let x = Tensor::zeros((1, 1, 64), DType::F32, &Device::Cpu).unwrap();
    let mut wrong_rank = LayerCache::new(1, 16, 8, DType::F32, &Device::Cpu).unwrap();
    let err = mla
        .forward(
            &x,
            0,
            &mut rope,
            Some(&mut wrong_rank),
            AttentionPath::Absorbed,
        )
        .unwrap_err();
    assert!(err.to_string().contains("kv_lora_rank 16"), "{err}");
    let mut wrong_batch = mla.new_cache(2).unwrap();
    let err = mla
        .forward(
            &x,
            0,
            &mut rope,
            Some(&mut wrong_batch),
            AttentionPath::Absorbed,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "cache: holds 2 sequences, x has batch 1");
    let mut wrong_dtype = LayerCache::new(1, 32, 8, DType::F16, &Device::Cpu).unwrap();
    assert!(matches!(
        mla.forward(
            &x,
            0,
            &mut rope,
            Some(&mut wrong_dtype),
            AttentionPath::Absorbed
        ),
        Err(MlaError::DTypeMismatch { what: "cache", .. })
    ));
    let mut wrong_rope = RopeCache::new(RopeConfig::new(16, 10000.0).unwrap());
    let err = mla
        .forward(&x, 0, &mut wrong_rope, None, AttentionPath::Absorbed)
        .unwrap_err();
    assert!(err.to_string().starts_with("qk_rope_head_dim"), "{err}");
    // Direct cache misuse.
    let mut cache = mla.new_cache(1).unwrap();
    let c = Tensor::zeros((1, 2, 31), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((1, 2, 8), DType::F32, &Device::Cpu).unwrap();
    let err = cache.append(&c, &k).unwrap_err();
    assert_eq!(
        err.to_string(),
        "c_kv: expected [1, tokens, 32], found [1, 2, 31]"
    );
    assert!(cache.seq(3).is_err());
    assert!(cache.truncate_seq(1, 0).is_err());
    assert!(LayerCache::new(0, 32, 8, DType::F32, &Device::Cpu).is_err());
}

#[test]
fn wrong_weight_shape_names_the_tensor() {
    let good = random_layer(false, 0.1);
    let mut w = good.weights().clone();
    w.kv_b_proj = Tensor::zeros((4 * 32, 16), DType::F32, &Device::Cpu)
        .unwrap()
        .into();
    let err = Mla::new(small_config(false), w).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kv_b_proj: expected [128, 32], found [128, 16]"
    );
    // Low-rank weights under a q_proj config.
    let lowrank = random_layer(true, 0.1).weights().clone();
    let err = Mla::new(small_config(false), lowrank).unwrap_err();
    assert!(err.to_string().starts_with("q_lora_rank"), "{err}");
}

#[test]
fn missing_weight_names_the_tensor() {
    let vb = candle_nn::VarBuilder::from_tensors(
        std::collections::HashMap::new(),
        DType::F32,
        &Device::Cpu,
    );
    let err = Mla::load(&vb, small_config(true)).unwrap_err();
    assert!(err.to_string().starts_with("q_a_proj.weight"), "{err}");
}
