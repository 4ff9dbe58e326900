//! Golden values from DeepSeek's configs and reports (see shared notes): a wrong
//! `original_max_position_embeddings` or mscale shows up here first.

use rope_yarn::{RopeConfig, RopeScaling, YarnParams};
use serde_json::json;

fn v3() -> RopeConfig {
    let cfg = json!({
        "rope_theta": 10000, "max_position_embeddings": 163840,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    });
    RopeConfig::from_hf_config(64, &cfg).unwrap()
}

fn v2_lite() -> RopeConfig {
    let cfg = json!({
        "rope_theta": 10000, "max_position_embeddings": 163840,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
    });
    RopeConfig::from_hf_config(64, &cfg).unwrap()
}

#[test]
fn v3_softmax_scale() {
    assert!((v3().softmax_scale(192) - 0.135_233_778_86).abs() < 1e-10);
}

#[test]
fn v2_lite_softmax_scale() {
    assert!((v2_lite().softmax_scale(192) - 0.114_721_386_79).abs() < 1e-10);
}

#[test]
fn plain_softmax_scale() {
    let plain = RopeConfig::new(64, 10000.0).unwrap();
    assert!((plain.softmax_scale(192) - 0.072_168_783_65).abs() < 1e-10);
}

/// low/high 23/36 is what code using `max_position_embeddings` instead of the original
/// pretrained length gets.
#[test]
fn v3_correction_range_uses_original_max_position_embeddings() {
    assert_eq!(v3().yarn_correction_range(), Some((10.0, 23.0)));
}

#[test]
fn v3_inv_freq() {
    let f = v3().inv_freq();
    assert_eq!(f.len(), 32);
    let rel = |a: f32, b: f32| ((a - b) / b).abs();
    assert!(rel(f[10], 5.623413e-2) < 1e-6, "{}", f[10]);
    assert!(rel(f[16], 5.5e-3) < 1e-3, "{}", f[16]);
    assert!(rel(f[23], 3.333804e-5) < 1e-6, "{}", f[23]);
    // Below `low` frequencies are untouched, above `high` divided by the factor.
    assert_eq!(f[0], 1.0);
    let plain = RopeConfig::new(64, 10000.0).unwrap().inv_freq();
    assert!(rel(f[31], plain[31] / 40.0) < 1e-6);
}

#[test]
fn official_configs_have_unit_attention_factor() {
    assert_eq!(v3().attention_factor(), 1.0);
    assert_eq!(v2_lite().attention_factor(), 1.0);
}

#[test]
fn attention_factor_without_both_mscales_is_mscale_of_factor() {
    let y = YarnParams::new(40.0, 4096);
    let c = RopeConfig::with_scaling(64, 10000.0, RopeScaling::Yarn(y)).unwrap();
    assert!((c.attention_factor() - (0.1 * 40f64.ln() + 1.0)).abs() < 1e-12);
    // And no mscale_all_dim means the plain softmax scale.
    assert!((c.softmax_scale(192) - 192f64.powf(-0.5)).abs() < 1e-15);
}

#[test]
fn linear_scaling_divides_every_frequency() {
    let plain = RopeConfig::new(16, 10000.0).unwrap().inv_freq();
    let lin = RopeConfig::with_scaling(16, 10000.0, RopeScaling::Linear { factor: 4.0 })
        .unwrap()
        .inv_freq();
    for (p, l) in plain.iter().zip(&lin) {
        assert!((p / 4.0 - l).abs() <= f32::EPSILON * p);
    }
}

#[test]
fn transformers_5_rope_parameters_spelling_matches_release_spelling() {
    let cfg = json!({
        "max_position_embeddings": 163840,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
            "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
            "mscale": 1.0, "mscale_all_dim": 1.0}
    });
    assert_eq!(RopeConfig::from_hf_config(64, &cfg).unwrap(), v3());
}

#[test]
fn missing_factor_falls_back_to_length_ratio() {
    let cfg = json!({"max_position_embeddings": 16384,
        "rope_scaling": {"type": "yarn", "original_max_position_embeddings": 4096}});
    match RopeConfig::from_hf_config(64, &cfg).unwrap().scaling {
        RopeScaling::Yarn(y) => assert_eq!(y.factor, 4.0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_configs_name_the_field() {
    let cases = [
        (
            json!({"rope_scaling": {"type": "yarn", "factor": "forty", "original_max_position_embeddings": 4096}}),
            "rope_scaling.factor",
        ),
        (
            json!({"rope_scaling": {"type": "dynamic_ntk"}}),
            "rope_scaling.rope_type",
        ),
        (
            json!({"rope_scaling": {"type": "yarn", "factor": 40}}),
            "rope_scaling.original_max_position_embeddings",
        ),
        (
            json!({"rope_parameters": {"rope_type": "yarn", "factor": -1, "original_max_position_embeddings": 4096}}),
            "rope_parameters.factor",
        ),
        (json!({"rope_theta": "x"}), "rope_theta"),
        (json!({"rope_scaling": 3}), "rope_scaling"),
        (json!([]), "config"),
    ];
    for (cfg, field) in cases {
        let err = RopeConfig::from_hf_config(64, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(field), "{cfg}: {err}");
    }
    let err = RopeConfig::new(63, 10000.0).unwrap_err().to_string();
    assert!(err.starts_with("dim"), "{err}");
}
