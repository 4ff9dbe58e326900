//! Parity with the PyTorch reference (`tests/reference/grpo_generate.py`, float64): losses
//! and gradients of every variant, in f32 (to 1e-5) and f64 (to 1e-9).
#![allow(clippy::disallowed_methods)] // tests read results on the host

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use grpo::{
    distillation_loss, group_advantages, policy_loss, token_log_probs, AdvantageScaling,
    LossAggregation, PolicyLossConfig,
};
use serde_json::Value;

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/grpo/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run tests/reference/grpo_generate.py)",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1, "fixture version");
    v
}

/// A nested JSON array as (flat values, shape).
fn flat(v: &Value) -> (Vec<f64>, Vec<usize>) {
    match v {
        Value::Array(items) => {
            let mut data = Vec::new();
            let mut inner = Vec::new();
            for it in items {
                let (d, s) = flat(it);
                data.extend(d);
                inner = s;
            }
            let mut shape = vec![items.len()];
            shape.extend(inner);
            (data, shape)
        }
        Value::Number(n) => (vec![n.as_f64().unwrap()], vec![]),
        other => panic!("not a number: {other}"),
    }
}

fn tensor(v: &Value, dtype: DType) -> Tensor {
    let (data, shape) = flat(v);
    Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest error relative to max(1, |want|).
fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-9
    } else {
        1e-5
    }
}

fn check_policy(dtype: DType) -> (f64, f64) {
    let fx = fixture();
    let p = &fx["policy"];
    let inp = &p["inputs"];
    let (rewards, rshape) = flat(&inp["rewards"]);
    let rewards: Vec<f32> = rewards.iter().map(|&r| r as f32).collect();
    let logp0 = tensor(&inp["logp"], dtype);
    let old = tensor(&inp["logp_old"], dtype);
    let reference = tensor(&inp["logp_ref"], dtype);
    let mask = tensor(&inp["mask"], dtype);
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    let cases = p["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let scaling = match c["scaling"].as_str().unwrap() {
            "group_std" => AdvantageScaling::GroupStd {
                eps: c["eps"].as_f64().unwrap(),
            },
            "none" => AdvantageScaling::None,
            s => panic!("{s}"),
        };
        let adv = group_advantages(&rewards, rshape[1], scaling).unwrap();
        let adv64: Vec<f64> = adv.iter().map(|&a| a as f64).collect();
        let (want_adv, _) = flat(&c["advantages"]);
        let e = max_err(&adv64, &want_adv);
        assert!(e < 1e-6, "{name}: advantages off by {e}");
        let max_len = c["max_len"].as_u64().unwrap() as usize;
        let config = PolicyLossConfig {
            epsilon_low: c["epsilon_low"].as_f64().unwrap(),
            epsilon_high: c["epsilon_high"].as_f64().unwrap(),
            beta: c["beta"].as_f64().unwrap(),
            aggregation: match c["aggregation"].as_str().unwrap() {
                "sequence_mean" => LossAggregation::SequenceMean,
                "token_mean" => LossAggregation::TokenMean,
                "constant_normalizer" => LossAggregation::ConstantNormalizer { max_len },
                s => panic!("{s}"),
            },
        };
        // Feed the reference's float64 advantages so f64 parity is exact; the f32
        // advantages of this crate were checked just above.
        let adv_t = tensor(&c["advantages"], dtype);
        let logp = Var::from_tensor(&logp0).unwrap();
        let on_policy = c["on_policy"].as_bool().unwrap();
        let out = policy_loss(
            &config,
            logp.as_tensor(),
            (!on_policy).then_some(&old),
            Some(&reference),
            &adv_t,
            &mask,
        )
        .unwrap();
        let loss = values(&out.loss);
        let el = max_err(&loss, &[c["loss"].as_f64().unwrap()]);
        let ek = max_err(
            &values(out.kl.as_ref().unwrap()),
            &[c["kl"].as_f64().unwrap()],
        );
        let ec = max_err(
            &values(&out.clip_fraction),
            &[c["clip_fraction"].as_f64().unwrap()],
        );
        let grads = out.loss.backward().unwrap();
        let g = values(grads.get(&logp).unwrap());
        let (want_g, gshape) = flat(&c["grad_logp"]);
        assert_eq!(gshape, logp0.dims());
        let eg = max_err(&g, &want_g);
        assert!(el < tol(dtype), "{name} {dtype:?}: loss off by {el}");
        assert!(ek < tol(dtype), "{name} {dtype:?}: kl off by {ek}");
        assert!(
            ec < tol(dtype),
            "{name} {dtype:?}: clip fraction off by {ec}"
        );
        assert!(eg < tol(dtype), "{name} {dtype:?}: gradient off by {eg}");
        worst_loss = worst_loss.max(el).max(ek).max(ec);
        worst_grad = worst_grad.max(eg);
    }
    println!(
        "policy {dtype:?}: max loss error {worst_loss:.2e}, max gradient error {worst_grad:.2e}"
    );
    (worst_loss, worst_grad)
}

#[test]
fn policy_loss_matches_torch_f32() {
    check_policy(DType::F32);
}

#[test]
fn policy_loss_matches_torch_f64() {
    check_policy(DType::F64);
}

fn check_log_probs(dtype: DType) {
    let fx = fixture();
    let lp = &fx["log_probs"];
    let logits = Var::from_tensor(&tensor(&lp["logits"], dtype)).unwrap();
    let ids = tensor(&lp["ids"], DType::F64).to_dtype(DType::U32).unwrap();
    let w = tensor(&lp["weights"], dtype);
    let got = token_log_probs(logits.as_tensor(), &ids).unwrap();
    let (want, _) = flat(&lp["logp"]);
    let e = max_err(&values(&got), &want);
    let grads = (got * w).unwrap().sum_all().unwrap().backward().unwrap();
    let (want_g, _) = flat(&lp["grad_logits"]);
    let eg = max_err(&values(grads.get(&logits).unwrap()), &want_g);
    println!("log-probs {dtype:?}: max value error {e:.2e}, max gradient error {eg:.2e}");
    assert!(e < tol(dtype) && eg < tol(dtype), "{e} {eg}");
}

#[test]
fn token_log_probs_match_torch() {
    check_log_probs(DType::F32);
    check_log_probs(DType::F64);
}

fn check_end_to_end(dtype: DType) {
    let fx = fixture();
    let e2e = &fx["end_to_end"];
    let logits = Var::from_tensor(&tensor(&e2e["logits"], dtype)).unwrap();
    let ids = tensor(&e2e["ids"], DType::F64)
        .to_dtype(DType::U32)
        .unwrap();
    let mask = tensor(&e2e["mask"], DType::F64)
        .to_dtype(DType::U8)
        .unwrap();
    let (rewards, rshape) = flat(&e2e["rewards"]);
    let rewards: Vec<f32> = rewards.iter().map(|&r| r as f32).collect();
    let adv = group_advantages(&rewards, rshape[1], AdvantageScaling::GRPO).unwrap();
    let adv = Tensor::new(adv.as_slice(), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let config = PolicyLossConfig {
        epsilon_low: e2e["epsilon_low"].as_f64().unwrap(),
        epsilon_high: e2e["epsilon_high"].as_f64().unwrap(),
        beta: e2e["beta"].as_f64().unwrap(),
        aggregation: LossAggregation::TokenMean,
    };
    let logp = token_log_probs(logits.as_tensor(), &ids).unwrap();
    let old = tensor(&e2e["logp_old"], dtype);
    let reference = tensor(&e2e["logp_ref"], dtype);
    let out = policy_loss(&config, &logp, Some(&old), Some(&reference), &adv, &mask).unwrap();
    let el = max_err(&values(&out.loss), &[e2e["loss"].as_f64().unwrap()]);
    let grads = out.loss.backward().unwrap();
    let (want_g, _) = flat(&e2e["grad_logits"]);
    let eg = max_err(&values(grads.get(&logits).unwrap()), &want_g);
    println!("end to end {dtype:?}: loss error {el:.2e}, max gradient error {eg:.2e}");
    // The advantages pass through f32 here (the crate's own), hence 1e-6 in f64.
    let t = tol(dtype).max(1e-6);
    assert!(el < t && eg < t, "{el} {eg}");
}

#[test]
fn logits_to_dapo_loss_matches_torch() {
    check_end_to_end(DType::F32);
    check_end_to_end(DType::F64);
}

fn check_distillation(dtype: DType) {
    let fx = fixture();
    let d = &fx["distillation"];
    let teacher = tensor(&d["teacher"], dtype);
    let mask = tensor(&d["mask"], dtype);
    let (mut worst_l, mut worst_g) = (0.0f64, 0.0f64);
    for c in d["cases"].as_array().unwrap() {
        let temperature = c["temperature"].as_f64().unwrap();
        let masked = c["masked"].as_bool().unwrap();
        let student = Var::from_tensor(&tensor(&d["student"], dtype)).unwrap();
        let loss = distillation_loss(
            student.as_tensor(),
            &teacher,
            masked.then_some(&mask),
            temperature,
        )
        .unwrap();
        let el = max_err(&values(&loss), &[c["loss"].as_f64().unwrap()]);
        let grads = loss.backward().unwrap();
        let (want_g, _) = flat(&c["grad_student"]);
        let eg = max_err(&values(grads.get(&student).unwrap()), &want_g);
        assert!(
            el < tol(dtype) && eg < tol(dtype),
            "T={temperature} masked={masked} {dtype:?}: loss {el}, grad {eg}"
        );
        worst_l = worst_l.max(el);
        worst_g = worst_g.max(eg);
    }
    println!(
        "distillation {dtype:?}: max loss error {worst_l:.2e}, max gradient error {worst_g:.2e}"
    );
}

#[test]
fn distillation_matches_torch() {
    check_distillation(DType::F32);
    check_distillation(DType::F64);
}
