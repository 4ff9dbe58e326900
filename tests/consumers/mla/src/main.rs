//! A V2-Lite-shaped MLA layer with the `mla` crate alone: weights from the crate's own list,
//! a prefill and a decode step over the latent cache.
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mla::rope_yarn::RopeCache;
use mla::{AttentionPath, Mla, MlaConfig, MlaWeights};

fn run() {
    let cfg = MlaConfig::builder()
        .hidden_size(64)
        .num_attention_heads(4)
        .q_lora_rank(None)
        .kv_lora_rank(32)
        .qk_nope_head_dim(16)
        .qk_rope_head_dim(8)
        .v_head_dim(16)
        .build()
        .unwrap();
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = MlaWeights::expected(&cfg)
        .into_iter()
        .map(|w| (w.name, Tensor::randn(0f32, 0.1, w.shape, &dev).unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let layer = Mla::load(&vb, cfg.clone()).unwrap();
    let mut rope = RopeCache::new(cfg.rope);
    let mut cache = layer.new_cache(1).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 6, 64), &dev).unwrap();
    let prefill = layer
        .forward(
            &x.narrow(1, 0, 5).unwrap(),
            0,
            &mut rope,
            Some(&mut cache),
            AttentionPath::Absorbed,
        )
        .unwrap();
    let step = layer
        .forward(
            &x.narrow(1, 5, 1).unwrap(),
            5,
            &mut rope,
            Some(&mut cache),
            AttentionPath::Absorbed,
        )
        .unwrap();
    // The cached decode step equals the last row of a cache-free causal pass.
    let full = layer
        .forward(&x, 0, &mut rope, None, AttentionPath::Expanded)
        .unwrap();
    let diff = (full.narrow(1, 5, 1).unwrap() - &step)
        .unwrap()
        .abs()
        .unwrap();
    let max: f32 = diff
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(max < 1e-4, "decode vs full pass: {max}");
    assert_eq!(prefill.dims(), &[1, 5, 64]);
    assert_eq!(cache.lens(), &[6]);
    println!("mla: decode step matches the full pass to {max:e}");
}

fn main() {
    run();
}

#[cfg(test)]
mod tests {
    #[test]
    fn attends() {
        super::run();
    }
}
