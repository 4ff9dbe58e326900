//! Parity with HF transformers 5.23 on the committed fixtures (tests/fixtures).
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{Device, Tensor};
use fixtures::{assert_close, Case, CASES};
use rope_yarn::{apply_rotary, deinterleave, RopeCache, RopeConfig, RopeLayout};

fn config(case: &Case) -> RopeConfig {
    RopeConfig::from_hf_config(case.config_usize("qk_rope_head_dim"), &case.config).unwrap()
}

#[test]
fn inv_freq_and_attention_factor_match_hf() {
    for name in CASES {
        let case = Case::load(name);
        let cfg = config(&case);
        let ours = Tensor::new(cfg.inv_freq(), &Device::Cpu).unwrap();
        let theirs = case.tensor("rope.inv_freq");
        // Relative: the slowest frequencies are ~1e-6.
        let rel = ((ours - &theirs).unwrap() / &theirs).unwrap();
        let zeros = rel.zeros_like().unwrap();
        assert_close(&rel, &zeros, 1e-6, &format!("{name} inv_freq (relative)"));
        let hf_factor: Vec<f32> = case.tensor("rope.attention_scaling").to_vec1().unwrap();
        assert!(
            (cfg.attention_factor() as f32 - hf_factor[0]).abs() < 1e-7,
            "{name}"
        );
    }
}

#[test]
fn cos_sin_tables_match_hf_at_far_positions() {
    for name in CASES {
        let case = Case::load(name);
        let mut cache = RopeCache::new(config(&case));
        let positions: Vec<usize> = case
            .ids("rope.positions")
            .iter()
            .map(|&p| p as usize)
            .collect();
        let (cos, sin) = cache.cos_sin_at(&positions, &Device::Cpu).unwrap();
        let half = cos.dim(1).unwrap();
        // HF stores cat(f, f): the first half is the per-pair table.
        let hf_cos = case.tensor("rope.cos").narrow(1, 0, half).unwrap();
        let hf_sin = case.tensor("rope.sin").narrow(1, 0, half).unwrap();
        assert_close(&cos, &hf_cos, 2e-5, &format!("{name} cos"));
        assert_close(&sin, &hf_sin, 2e-5, &format!("{name} sin"));
    }
}

#[test]
fn rotated_q_and_k_match_hf() {
    for name in CASES {
        let case = Case::load(name);
        let mut cache = RopeCache::new(config(&case));
        let positions: Vec<usize> = case
            .ids("rope.positions")
            .iter()
            .map(|&p| p as usize)
            .collect();
        let (cos, sin) = cache.cos_sin_at(&positions, &Device::Cpu).unwrap();
        let hf_layout = case.ids("rope.layout")[0];
        let layout = if hf_layout == 2 {
            RopeLayout::HalfSplit
        } else {
            RopeLayout::Interleaved
        };
        for (input, output) in [("rope.q_in", "rope.q_out"), ("rope.k_in", "rope.k_out")] {
            let rotated = apply_rotary(&case.tensor(input), &cos, &sin, layout).unwrap();
            // V3 in HF writes [rotated evens | rotated odds]; V2 keeps the pairs in place, and
            // so does V3 with `rope_interleave: false` (layout 2: half-split pairs).
            let rotated = if hf_layout == 1 {
                deinterleave(&rotated).unwrap()
            } else {
                rotated
            };
            assert_close(
                &rotated,
                &case.tensor(output),
                5e-5,
                &format!("{name} {output}"),
            );
        }
    }
}
