//! DeepSeek-V3's rotary head with the `rope-yarn` crate alone.
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use candle_core::{Device, Tensor};
use rope_yarn::{RopeCache, RopeConfig, RopeLayout, RopeScaling, YarnParams};

fn run() {
    let yarn = YarnParams {
        mscale: Some(1.0),
        mscale_all_dim: Some(1.0),
        ..YarnParams::new(40.0, 4096)
    };
    let config = RopeConfig::with_scaling(64, 10000.0, RopeScaling::Yarn(yarn)).unwrap();
    // The V3 softmax scale (192-dim query/key heads), a golden value.
    assert!((config.softmax_scale(192) - 0.135_233_778_86).abs() < 1e-10);
    let mut rope = RopeCache::new(config);
    let q = Tensor::ones((1, 2, 3, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let rotated = rope.apply(&q, 0, RopeLayout::Interleaved).unwrap();
    // Position 0 is the identity rotation (times YaRN's attention factor, 1 here).
    let first: Vec<f32> = rotated
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(first.iter().all(|v| (v - 1.0).abs() < 1e-6), "{first:?}");
    println!("rope-yarn: V3 softmax scale {}", config.softmax_scale(192));
}

fn main() {
    run();
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotates() {
        super::run();
    }
}
