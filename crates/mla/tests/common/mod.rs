//! Shared test helpers: fixture loading (with the FP8 dequantisation the model crate does),
//! random layers, and the every-path agreement check.
#![allow(clippy::disallowed_methods)] // tests read results on the host
#![allow(dead_code)]

use candle_core::Tensor;
use fixtures::Case;
use mla::{AttentionPath, Mla, MlaConfig, MlaWeights, QueryWeights};
use rope_yarn::{RopeCache, RopeConfig, RopeLayout};

/// `MlaConfig` from a fixture's `config.json` (what the model crate will do).
pub fn config_from_json(cfg: &serde_json::Value) -> MlaConfig {
    let us = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let rope_dim = us("qk_rope_head_dim");
    MlaConfig::builder()
        .hidden_size(us("hidden_size"))
        .num_attention_heads(us("num_attention_heads"))
        .q_lora_rank(cfg["q_lora_rank"].as_u64().map(|v| v as usize))
        .kv_lora_rank(us("kv_lora_rank"))
        .qk_nope_head_dim(us("qk_nope_head_dim"))
        .qk_rope_head_dim(rope_dim)
        .v_head_dim(us("v_head_dim"))
        .rms_norm_eps(cfg["rms_norm_eps"].as_f64().unwrap())
        .rope(RopeConfig::from_hf_config(rope_dim, cfg).unwrap())
        .rope_layout(
            if cfg["model_type"] == "deepseek_v3" && cfg["rope_interleave"] == false {
                RopeLayout::HalfSplit
            } else {
                RopeLayout::Interleaved
            },
        )
        .build()
        .unwrap()
}

/// Layer `l` of a fixture, loaded under the HF names (FP8 checkpoints dequantised by fixtures,
/// as the model crate does, which exercises loading from already-dequantised tensors).
pub fn load_layer(case: &Case, l: usize) -> Mla {
    let cfg = config_from_json(&case.config);
    Mla::load(
        &case.var_builder().pp(format!("model.layers.{l}.self_attn")),
        cfg,
    )
    .unwrap()
}

/// A small layer with random weights (`q_lora` selects the low-rank query).
pub fn random_layer(q_lora: bool, seed_scale: f32) -> Mla {
    random_layer_for(small_config(q_lora), seed_scale)
}

/// A layer of `cfg`'s shape with random weights (the low-rank query norm random too), the same
/// on every run: deviation `seed_scale`, each matrix drawn from its own seed.
pub fn random_layer_for(cfg: MlaConfig, seed_scale: f32) -> Mla {
    let seed = std::cell::Cell::new(u64::from(seed_scale.to_bits()));
    let draw = || {
        seed.set(seed.get() + 1);
        seed.get()
    };
    let w = |o: usize, i: usize| fixtures::seeded_randn(&[o, i], seed_scale, draw()).into();
    let norm = |n: usize| fixtures::seeded_rand(&[n], 0.5, 1.5, draw());
    let (c, h, rk) = (cfg.hidden_size, cfg.num_heads, cfg.kv_lora_rank);
    let (n, r, v) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
    let query = match cfg.q_lora_rank {
        Some(q) => QueryWeights::LowRank {
            q_a_proj: w(q, c),
            q_a_layernorm: norm(q),
            q_b_proj: w(h * (n + r), q),
        },
        None => QueryWeights::Direct {
            q_proj: w(h * (n + r), c),
        },
    };
    let weights = MlaWeights {
        query,
        kv_a_proj_with_mqa: w(rk + r, c),
        kv_a_layernorm: norm(rk),
        kv_b_proj: fixtures::seeded_randn(&[h * (n + v), rk], seed_scale, draw()).into(),
        o_proj: w(c, h * v),
    };
    Mla::new(cfg, weights).unwrap()
}

/// [`small_config`] with V2/V3's proportions between the latent and the heads,
/// `kv_lora_rank = 2·(nope + v)` (64): what decides which formulation the flash path runs
/// (absorbed below ~60 new tokens over a long cache, expanded above), as it does for V2/V3
/// around 500.
pub fn v2_proportioned_config(q_lora: bool) -> MlaConfig {
    MlaConfig {
        kv_lora_rank: 64,
        ..small_config(q_lora)
    }
}

pub fn small_config(q_lora: bool) -> MlaConfig {
    MlaConfig::builder()
        .hidden_size(64)
        .num_attention_heads(4)
        .q_lora_rank(q_lora.then_some(24))
        .kv_lora_rank(32)
        .qk_nope_head_dim(16)
        .qk_rope_head_dim(8)
        .v_head_dim(16)
        .build()
        .unwrap()
}

pub fn rope_for(mla: &Mla) -> RopeCache {
    RopeCache::new(mla.config().rope)
}

/// Every attention path: the two oracles first, then the flash path checked against them.
pub const PATHS: [AttentionPath; 3] = [
    AttentionPath::Expanded,
    AttentionPath::Absorbed,
    AttentionPath::Flash,
];

/// Feeds `x` `[B, T, C]` through a fresh cache `chunk` tokens at a time (1: token-by-token
/// decode) and concatenates the outputs `[B, T, C]`.
pub fn run_in_chunks(
    mla: &Mla,
    x: &Tensor,
    rope: &mut RopeCache,
    path: AttentionPath,
    chunk: usize,
) -> Tensor {
    let (b, t, _) = x.dims3().unwrap();
    let mut cache = mla.new_cache(b).unwrap();
    let outs: Vec<Tensor> = (0..t)
        .step_by(chunk)
        .map(|i| {
            let xi = x.narrow(1, i, chunk.min(t - i)).unwrap();
            mla.forward(&xi, i, rope, Some(&mut cache), path).unwrap()
        })
        .collect();
    Tensor::cat(&outs, 1).unwrap()
}

/// Runs `x` `[B, T, C]` through every code path: prefill without a cache, prefill through a
/// cache, token-by-token decode, and a 2-token chunked decode, each with every attention path.
/// Asserts all agree within `tol` and returns (name, output) for each.
pub fn run_every_path(mla: &Mla, x: &Tensor, tol: f32) -> Vec<(String, Tensor)> {
    let b = x.dim(0).unwrap();
    let mut rope = rope_for(mla);
    let mut outs = Vec::new();
    for path in PATHS {
        let y = mla.forward(x, 0, &mut rope, None, path).unwrap();
        outs.push((format!("prefill/{path:?}"), y));
        let mut cache = mla.new_cache(b).unwrap();
        let y = mla
            .forward(x, 0, &mut rope, Some(&mut cache), path)
            .unwrap();
        outs.push((format!("prefill-cache/{path:?}"), y));
        let decode = run_in_chunks(mla, x, &mut rope, path, 1);
        outs.push((format!("decode/{path:?}"), decode));
        let chunked = run_in_chunks(mla, x, &mut rope, path, 2);
        outs.push((format!("chunked/{path:?}"), chunked));
    }
    let (name0, ref0) = &outs[0];
    for (name, y) in &outs[1..] {
        let d = fixtures::max_abs_diff(y, ref0);
        assert!(d <= tol, "{name} vs {name0}: max |diff| {d:e} > {tol:e}");
    }
    outs
}

/// `max |t|` over all elements, in f32 (the scale relative tolerances are taken against).
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(candle_core::DType::F32)
        .and_then(|t| t.abs())
        .and_then(|t| t.max_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("max abs")
}
