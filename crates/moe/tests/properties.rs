//! Property tests: grouped dispatch == per-token loop; V3 weights sum to the scaling factor;
//! selected experts lie in the kept groups; the bias changes selection, never the weights.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device, Tensor};
use moe::{
    gate::affinity_scores, route, route_tensors, Dispatch, Experts, Gate, GateConfig, Mlp, Moe,
    MoeConfig, Scoring, StackedExperts, TopkMethod,
};
use proptest::prelude::*;

/// Deterministic uniform(-a, a) values from a seed (splitmix64).
fn values(seed: u64, n: usize, a: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

fn tensor(seed: u64, rows: usize, cols: usize, a: f32) -> Tensor {
    Tensor::from_vec(values(seed, rows * cols, a), (rows, cols), &Device::Cpu).unwrap()
}

/// (E, n_group, topk_group, k, method, scoring)
fn gate_shape() -> impl Strategy<Value = GateConfig> {
    (
        prop::sample::select(vec![(4usize, 2usize), (8, 4), (16, 4), (16, 8), (12, 3)]),
        0usize..3,
        any::<bool>(),
        0.5f32..3.0,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|((e, g), method, sigmoid, rsf, tg, k)| {
            let method = [
                TopkMethod::Greedy,
                TopkMethod::GroupLimitedGreedy,
                TopkMethod::NoauxTc,
            ][method];
            let topk_group = 1 + tg.index(g);
            let max_k = if method == TopkMethod::Greedy {
                e
            } else {
                topk_group * e / g
            };
            GateConfig::builder(8, e, 1 + k.index(max_k))
                .scoring(if sigmoid {
                    Scoring::Sigmoid
                } else {
                    Scoring::Softmax
                })
                .topk_method(method)
                .groups(g, topk_group)
                .normalize(sigmoid)
                .routed_scaling_factor(rsf)
                .build()
                .unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn grouped_dispatch_equals_per_token_loop(cfg in gate_shape(), t in 1usize..12, seed in any::<u64>()) {
        let (h, e, i) = (cfg.hidden_size, cfg.n_routed_experts, 6);
        let mlp = |s: u64, i: usize| Mlp::new(tensor(s, i, h, 0.5), tensor(s + 1, i, h, 0.5), tensor(s + 2, h, i, 0.5)).unwrap();
        let experts = Experts::new((0..e as u64).map(|x| mlp(seed ^ (x * 7 + 100), i)).collect()).unwrap();
        let bias = Tensor::from_vec(values(seed ^ 3, e, 0.3), e, &Device::Cpu).unwrap();
        let gate = Gate::new(cfg.clone(), tensor(seed ^ 1, e, h, 1.0), Some(bias)).unwrap();
        let layer = Moe::new(MoeConfig::new(cfg, i, 1).unwrap(), gate, experts, Some(mlp(seed ^ 2, i))).unwrap();
        let x = tensor(seed ^ 5, t, h, 1.0);
        let naive = layer.forward_with(&x, Dispatch::Naive).unwrap();
        for d in [Dispatch::Grouped, Dispatch::Auto, Dispatch::Device] {
            let y = layer.forward_with(&x, d).unwrap();
            let diff = (y - &naive).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff <= 1e-5, "{d:?}: {diff}");
        }
        let row = x.narrow(0, 0, 1).unwrap();
        let diff = (layer.forward(&row).unwrap() - naive.narrow(0, 0, 1).unwrap()).unwrap()
            .abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        prop_assert!(diff <= 1e-5, "decode: {diff}");
    }

    #[test]
    fn device_routing_equals_host_routing(cfg in gate_shape(), t in 1usize..20, seed in any::<u64>()) {
        let e = cfg.n_routed_experts;
        let logits = values(seed, t * e, 4.0);
        let bias = values(seed ^ 9, e, 0.5);
        let host = route(&cfg, &logits, Some(&bias));
        let dev = route_tensors(
            &cfg,
            &Tensor::from_vec(logits, (t, e), &Device::Cpu).unwrap(),
            Some(&Tensor::from_vec(bias, e, &Device::Cpu).unwrap()),
        )
        .unwrap()
        .to_host()
        .unwrap();
        // Continuous random scores: no ties, so the same experts in the same order.
        prop_assert_eq!(&dev.indices, &host.indices);
        for (a, b) in dev.weights.iter().zip(&host.weights) {
            prop_assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{} vs {}", a, b);
        }
    }

    #[test]
    fn both_device_expert_paths_equal_the_per_token_loop(cfg in gate_shape(), t in 1usize..12, seed in any::<u64>()) {
        let (h, e, i) = (cfg.hidden_size, cfg.n_routed_experts, 6);
        let mlp = |s: u64| Mlp::new(tensor(s, i, h, 0.5), tensor(s + 1, i, h, 0.5), tensor(s + 2, h, i, 0.5)).unwrap();
        let experts = Experts::new((0..e as u64).map(|x| mlp(seed ^ (x * 7 + 100))).collect()).unwrap();
        let bias = Tensor::from_vec(values(seed ^ 3, e, 0.3), e, &Device::Cpu).unwrap();
        let gate = Gate::new(cfg.clone(), tensor(seed ^ 1, e, h, 1.0), Some(bias)).unwrap();
        let x = tensor(seed ^ 5, t, h, 1.0);
        let naive = experts.forward_naive(&x, &gate.route(&x).unwrap()).unwrap();
        let routing = gate.route_on_device(&x).unwrap();
        let stacked = StackedExperts::new(&(0..e).map(|j| experts.expert(j).clone()).collect::<Vec<_>>()).unwrap();
        for (label, y) in [
            ("gathered", stacked.forward_gathered(&x, &routing).unwrap()),
            ("all experts", stacked.forward_all(&x, &routing).unwrap()),
        ] {
            let diff = (y - &naive).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            prop_assert!(diff <= 1e-5, "{}: {}", label, diff);
        }
    }

    #[test]
    fn routing_invariants(cfg in gate_shape(), seed in any::<u64>()) {
        let (e, k, t) = (cfg.n_routed_experts, cfg.top_k, 16);
        let logits = values(seed, t * e, 4.0);
        let bias = values(seed ^ 9, e, 0.5);
        let r = route(&cfg, &logits, Some(&bias));
        let unbiased = route(&cfg, &logits, None);
        let g = cfg.experts_per_group();
        let mut s = Vec::new();
        for tok in 0..t {
            let row = &logits[tok * e..(tok + 1) * e];
            affinity_scores(cfg.scoring, row, &mut s);
            let (idx, w) = r.token(tok);
            // distinct experts
            let mut sorted = idx.to_vec();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), k);
            // the bias never enters the weights: w is s of the chosen experts, (normalised), scaled
            let denom = if cfg.normalize { idx.iter().map(|&i| s[i as usize]).sum::<f32>() + 1e-20 } else { 1.0 };
            for (&i, &wi) in idx.iter().zip(w) {
                let expect = s[i as usize] / denom * cfg.routed_scaling_factor;
                prop_assert!((wi - expect).abs() <= 1e-6 * expect.abs().max(1.0), "{} vs {}", wi, expect);
            }
            if cfg.normalize {
                let sum: f32 = w.iter().sum();
                prop_assert!((sum - cfg.routed_scaling_factor).abs() <= 1e-5, "{}", sum);
            }
            // selected experts lie in the kept groups: the topk_group best group scores
            if cfg.is_grouped() {
                let sel: Vec<f32> = if cfg.uses_bias() { s.iter().zip(&bias).map(|(a, b)| a + b).collect() } else { s.clone() };
                let mut gs: Vec<(f32, usize)> = sel.chunks(g).enumerate().map(|(j, c)| {
                    let mut c = c.to_vec();
                    c.sort_by(|a, b| b.total_cmp(a));
                    let score = if cfg.topk_method == TopkMethod::NoauxTc { c[0] + c[1] } else { c[0] };
                    (score, j)
                }).collect();
                gs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let kept: Vec<usize> = gs[..cfg.topk_group].iter().map(|x| x.1).collect();
                for &i in idx {
                    prop_assert!(kept.contains(&(i as usize / g)), "expert {} outside kept groups {:?}", i, kept);
                }
            }
            // without noaux_tc the bias is ignored entirely
            if !cfg.uses_bias() {
                prop_assert_eq!(idx, unbiased.token(tok).0);
            }
        }
    }
}

#[test]
fn zero_tokens() {
    let cfg = GateConfig::builder(8, 4, 2).build().unwrap();
    let gate = Gate::new(cfg.clone(), tensor(1, 4, 8, 1.0), None).unwrap();
    let mlp = || {
        Mlp::new(
            tensor(2, 3, 8, 1.0),
            tensor(3, 3, 8, 1.0),
            tensor(4, 8, 3, 1.0),
        )
        .unwrap()
    };
    let layer = Moe::new(
        MoeConfig::new(cfg, 3, 0).unwrap(),
        gate,
        Experts::new((0..4).map(|_| mlp()).collect()).unwrap(),
        None,
    )
    .unwrap();
    let x = Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(layer.forward(&x).unwrap().dims(), &[0, 8]);
}
