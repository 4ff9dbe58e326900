//! Parity with HF transformers 5.23 on the committed fixtures: gate logits, routing
//! (tie-aware), and MoE / dense MLP outputs for every dispatch path.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fixtures::{assert_close, Case};
use moe::gate::{affinity_scores, route_with_dropped_fill};
use moe::{Dispatch, Mlp, Moe, MoeConfig, MoeError};

const TOL: f32 = 1e-5;

/// MoE layers of the case that have gate references (the MTP layer has none).
fn moe_layers(case: &Case) -> Vec<usize> {
    let first = case.config_usize("first_k_dense_replace");
    let n = case.config_usize("num_hidden_layers");
    (first..n)
        .filter(|l| {
            case.try_tensor(&format!("prefill.layers.{l}.gate_indices"))
                .is_some()
        })
        .collect()
}

/// Tie-aware routing comparison. Returns the number of tokens whose expert sets differ (each
/// only by near-ties of the selection scores) and the max |diff| of the aligned weights.
fn compare_routing(layer: &Moe, case: &Case, l: usize, routing: &moe::Routing) -> (usize, f32) {
    let cfg = &layer.config().gate;
    let (e, k) = (cfg.n_routed_experts, cfg.top_k);
    let logits: Vec<f32> = case
        .tensor(&format!("prefill.layers.{l}.gate_logits"))
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ref_idx = case.ids(&format!("prefill.layers.{l}.gate_indices"));
    let ref_w: Vec<f32> = case
        .tensor(&format!("prefill.layers.{l}.gate_weights"))
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (mut flips, mut max_w) = (0, 0f32);
    let mut s = Vec::new();
    for t in 0..routing.n_tokens {
        affinity_scores(cfg.scoring, &logits[t * e..(t + 1) * e], &mut s);
        let sel: Vec<f32> = match (cfg.uses_bias(), layer.gate().bias()) {
            (true, Some(b)) => s.iter().zip(b).map(|(s, b)| s + b).collect(),
            _ => s.clone(),
        };
        let (idx, w) = routing.token(t);
        let ours: BTreeSet<u32> = idx.iter().copied().collect();
        let theirs: BTreeSet<u32> = ref_idx[t * k..(t + 1) * k].iter().copied().collect();
        if ours != theirs {
            flips += 1;
            for a in ours.difference(&theirs) {
                for b in theirs.difference(&ours) {
                    let gap = (sel[*a as usize] - sel[*b as usize]).abs();
                    assert!(
                        gap <= 1e-6,
                        "{} layer {l} token {t}: experts {ours:?} vs reference {theirs:?}; \
                         {a} and {b} differ by {gap:e} in selection score (not a tie)",
                        case.name
                    );
                }
            }
        }
        for (j, &x) in ref_idx[t * k..(t + 1) * k].iter().enumerate() {
            if let Some(pos) = idx.iter().position(|&i| i == x) {
                max_w = max_w.max((w[pos] - ref_w[t * k + j]).abs());
            }
        }
    }
    (flips, max_w)
}

fn check_moe_case(name: &str) {
    let case = Case::load(name);
    let cfg = MoeConfig::from_hf_json(&case.config).unwrap();
    let vb = case.var_builder();
    let layers = moe_layers(&case);
    assert!(
        !layers.is_empty(),
        "{name}: no MoE layer with gate references"
    );
    for l in layers {
        let layer = Moe::load(vb.pp(format!("model.layers.{l}.mlp")), &cfg).unwrap();
        let x = case.tensor(&format!("prefill.layers.{l}.mlp_in"));
        let expected = case.tensor(&format!("prefill.layers.{l}.mlp_out"));
        let what = |s: &str| format!("{name} layer {l} {s}");

        let (logits, routing) = layer.gate().route_with_logits(&x).unwrap();
        let ref_logits = case.tensor(&format!("prefill.layers.{l}.gate_logits"));
        assert_close(&logits, &ref_logits, TOL, &what("gate_logits"));
        let (flips, max_w) = compare_routing(&layer, &case, l, &routing);
        println!(
            "{}: routing tie flips {flips}, weights max |diff| = {max_w:.3e}",
            what("")
        );
        assert!(
            max_w <= TOL,
            "{}: weights differ by {max_w:e}",
            what("routing")
        );
        assert_eq!(
            flips,
            0,
            "{}: near-tie flips change the output",
            what("routing")
        );
        // The device-generic routing (tensor ops, no host copy) against the same references.
        let on_device = layer.gate().route_on_device(&x).unwrap().to_host().unwrap();
        let (flips, max_w) = compare_routing(&layer, &case, l, &on_device);
        assert!(
            max_w <= TOL,
            "{}: {max_w:e}",
            what("device routing weights")
        );
        assert_eq!(flips, 0, "{}: near-tie flips", what("device routing"));

        for (d, label) in [
            (Dispatch::Grouped, "grouped"),
            (Dispatch::Naive, "naive"),
            (Dispatch::Auto, "auto"),
            (Dispatch::Device, "device"),
        ] {
            let y = layer.forward_with(&x, d).unwrap();
            assert_close(&y, &expected, TOL, &what(label));
        }
        // Decode path: one token at a time.
        let t = x.dim(0).unwrap();
        let rows: Vec<Tensor> = (0..t)
            .map(|i| layer.forward(&x.narrow(0, i, 1).unwrap()).unwrap())
            .collect();
        let y = Tensor::cat(&rows, 0).unwrap();
        assert_close(&y, &expected, TOL, &what("decode (T=1 each)"));
        // Stacked experts (the GPU setup): Auto now takes the device path, decode included,
        // and the host paths still run on the experts' views of the stacks.
        let mut stacked = layer.clone();
        stacked.stack_experts().unwrap();
        let rows: Vec<Tensor> = (0..t)
            .map(|i| stacked.forward(&x.narrow(0, i, 1).unwrap()).unwrap())
            .collect();
        let y = Tensor::cat(&rows, 0).unwrap();
        assert_close(&y, &expected, TOL, &what("stacked decode (T=1 each)"));
        for d in [Dispatch::Auto, Dispatch::Grouped] {
            let y = stacked.forward_with(&x, d).unwrap();
            assert_close(&y, &expected, TOL, &what(&format!("stacked {d:?}")));
        }
    }
}

#[test]
fn v2_greedy_parity() {
    check_moe_case("v2_greedy");
}

#[test]
fn v2_group_limited_parity() {
    check_moe_case("v2_group_limited");
}

#[test]
fn v3_noaux_tc_parity() {
    check_moe_case("v3_noaux");
}

#[test]
fn v3_mtp_parity() {
    check_moe_case("v3_mtp");
}

#[test]
fn v3_fp8_dequantised_parity() {
    check_moe_case("v3_fp8");
}

#[test]
fn dense_mlp_parity() {
    for name in fixtures::CASES {
        let case = Case::load(name);
        let vb = case.var_builder();
        let (h, i) = (
            case.config_usize("hidden_size"),
            case.config_usize("intermediate_size"),
        );
        for l in 0..case.config_usize("first_k_dense_replace") {
            let mlp = Mlp::load(vb.pp(format!("model.layers.{l}.mlp")), h, i).unwrap();
            let x = case.tensor(&format!("prefill.layers.{l}.mlp_in"));
            let y = mlp.forward(&x).unwrap();
            let expected = case.tensor(&format!("prefill.layers.{l}.mlp_out"));
            assert_close(&y, &expected, TOL, &format!("{name} dense layer {l}"));
        }
    }
}

/// Regression: masking dropped groups with 0.0 instead of -inf. The fixture's mostly negative
/// `e_score_correction_bias` makes kept-group selection scores negative, so 0.0-masked experts
/// of dropped groups win; the correct rule must agree with HF and the buggy one must not.
#[test]
fn noaux_tc_masks_dropped_groups_with_neg_inf_not_zero() {
    let case = Case::load("v3_noaux");
    let cfg = MoeConfig::from_hf_json(&case.config).unwrap();
    let l = moe_layers(&case)[0];
    let layer = Moe::load(case.var_builder().pp(format!("model.layers.{l}.mlp")), &cfg).unwrap();
    let logits: Vec<f32> = case
        .tensor(&format!("prefill.layers.{l}.gate_logits"))
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let k = cfg.gate.top_k;
    let reference = case.ids(&format!("prefill.layers.{l}.gate_indices"));
    let sets = |idx: &[u32]| -> Vec<BTreeSet<u32>> {
        idx.chunks(k).map(|c| c.iter().copied().collect()).collect()
    };
    let bias = layer.gate().bias();
    let right = route_with_dropped_fill(&cfg.gate, &logits, bias, f32::NEG_INFINITY);
    let wrong = route_with_dropped_fill(&cfg.gate, &logits, bias, 0.0);
    assert_eq!(
        sets(&right.indices),
        sets(&reference),
        "-inf masking must match HF"
    );
    let disagreeing = sets(&wrong.indices)
        .iter()
        .zip(sets(&reference))
        .filter(|(a, b)| **a != *b)
        .count();
    println!(
        "0.0 masking disagrees with HF on {disagreeing} of {} tokens",
        right.n_tokens
    );
    assert!(
        disagreeing > 0,
        "the fixture no longer exposes the 0.0-masking bug"
    );
}

#[test]
fn missing_expert_weight_is_named() {
    let case = Case::load("v3_noaux");
    let cfg = MoeConfig::from_hf_json(&case.config).unwrap();
    let l = moe_layers(&case)[0];
    let mut tensors = case.weights_f32();
    let key = format!("model.layers.{l}.mlp.experts.7.up_proj.weight");
    assert!(tensors.remove(&key).is_some());
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = Moe::load(vb.pp(format!("model.layers.{l}.mlp")), &cfg).unwrap_err();
    assert!(matches!(err, MoeError::MissingTensor { .. }));
    assert_eq!(err.to_string(), format!("{key}: missing"));
}

#[test]
fn bad_group_configs_are_named() {
    let case = Case::load("v3_noaux");
    let mut c = case.config.clone();
    c["n_group"] = 3.into();
    let err = MoeConfig::from_hf_json(&c).unwrap_err().to_string();
    assert_eq!(
        err,
        "n_group: n_routed_experts (16) is not divisible by n_group (3)"
    );
    let mut c = case.config.clone();
    c["topk_group"] = 5.into();
    let err = MoeConfig::from_hf_json(&c).unwrap_err().to_string();
    assert_eq!(err, "topk_group: topk_group (5) must be in 1..=n_group (4)");
    let mut c = case.config.clone();
    c["topk_method"] = "top_p".into();
    let err = MoeConfig::from_hf_json(&c).unwrap_err().to_string();
    assert!(err.starts_with("topk_method: unknown"), "{err}");
}
