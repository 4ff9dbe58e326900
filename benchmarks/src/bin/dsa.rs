//! Decode-step latency of one DeepSeek-V3.2-shaped attention layer (MLA + the DSA lightning
//! indexer: hidden 7168, 128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64, v 128;
//! indexer 64 heads x 128, top-2048), f32 on CPU, at long contexts, in one run:
//!
//! - **dense**: MLA over every cached token ([`mla::Mla::forward`], absorbed path);
//! - **DSA**: the indexer scores every cached token and MLA attends to its top-2048
//!   ([`mla::Mla::forward_dsa`], absorbed path);
//! - **local+block**: a fixed pattern of the same size, the last 1984 tokens and the first
//!   block of 64 ([`mla::Mla::forward_sparse`], absorbed path).
//!
//! The caches (latent and indexer keys) are filled directly with random values (no 128K-token
//! prefill), then one decode step (1 new token) is timed; the caches are rolled back after every
//! step so the context stays fixed. Weights are random (the layer's cost does not depend on
//! them) and loaded through the crates' own loaders.
//!
//! Bytes read per step and the memory / compute bound use the same model as `mla_decode`:
//! weights once, the latent cache twice on the absorbed path (scores, then the weighted sum);
//! DSA reads the indexer keys once and the selected latents twice; FLOPs count the
//! projections, the indexer's `2·I·S·D` scores and the attention over the keys read.
//!
//! Run: `cargo run --release -p benchmarks --bin dsa`

use std::collections::HashMap;

use anyhow::Result;
use benchmarks::{median_time, read_bandwidth};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Parser;
use mla::{AttentionPath, DsaCache, Indexer, IndexerConfig, Mla, MlaConfig, SparsePattern};
use rope_yarn::RopeCache;

#[derive(Parser)]
struct Args {
    /// Context lengths (tokens already in the caches).
    #[arg(long, value_delimiter = ',', default_value = "4096,16384,65536,131072")]
    contexts: Vec<usize>,
    /// Timed steps per measurement (median reported); contexts of 64K and more use 3.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Indexer top-k (DeepSeek-V3.2: 2048).
    #[arg(long, default_value_t = 2048)]
    topk: usize,
}

/// A random V3.2 attention layer (MLA with low-rank query, and its indexer) loaded through
/// `Mla::load` / `Indexer::load` from tensors under the checkpoint names.
fn random_layer(cfg: &MlaConfig, icfg: &IndexerConfig, dev: &Device) -> Result<(Mla, Indexer)> {
    let (c, h, q) = (cfg.hidden_size, cfg.num_heads, icfg.q_lora_rank);
    let w = |o: usize, i: usize| Tensor::randn(0f32, (i as f32).powf(-0.5), (o, i), dev);
    let ones = |n: usize| Tensor::ones(n, DType::F32, dev);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("q_a_proj.weight".into(), w(q, c)?);
    t.insert("q_a_layernorm.weight".into(), ones(q)?);
    t.insert("q_b_proj.weight".into(), w(h * cfg.qk_head_dim(), q)?);
    t.insert("kv_a_proj_with_mqa.weight".into(), w(cfg.latent_dim(), c)?);
    t.insert("kv_a_layernorm.weight".into(), ones(cfg.kv_lora_rank)?);
    let kv_b_rows = h * (cfg.qk_nope_head_dim + cfg.v_head_dim);
    t.insert("kv_b_proj.weight".into(), w(kv_b_rows, cfg.kv_lora_rank)?);
    t.insert("o_proj.weight".into(), w(c, h * cfg.v_head_dim)?);
    let (i, d) = (icfg.n_heads, icfg.head_dim);
    t.insert("indexer.wq_b.weight".into(), w(i * d, q)?);
    t.insert("indexer.wk.weight".into(), w(d, c)?);
    t.insert("indexer.k_norm.weight".into(), ones(d)?);
    t.insert(
        "indexer.k_norm.bias".into(),
        Tensor::zeros(d, DType::F32, dev)?,
    );
    t.insert("indexer.weights_proj.weight".into(), w(i, c)?);
    let vb = VarBuilder::from_tensors(t, DType::F32, dev);
    let mla = Mla::load(&vb, cfg.clone())?;
    let indexer = Indexer::load(&vb.pp("indexer"), icfg.clone())?;
    Ok((mla, indexer))
}

/// Measured f32 GEMM throughput (FLOP/s) on a shape like the attention's.
fn gemm_flops(dev: &Device) -> Result<f64> {
    let (m, k, n) = (2048, 512, 4096);
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, k), dev)?;
    let t = median_time(1, 5, || a.matmul(&b.t().unwrap()).unwrap());
    Ok(2.0 * (m * k * n) as f64 / t.as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = Device::Cpu;
    let cfg = MlaConfig::deepseek_v3();
    let icfg = IndexerConfig::for_mla(&cfg, 64, 128, args.topk)?;
    let (mla, indexer) = random_layer(&cfg, &icfg, &dev)?;
    let f = |v: usize| v as f64;
    let (c, h, n, r, v, rk, q) = (
        f(cfg.hidden_size),
        f(cfg.num_heads),
        f(cfg.qk_nope_head_dim),
        f(cfg.qk_rope_head_dim),
        f(cfg.v_head_dim),
        f(cfg.kv_lora_rank),
        f(icfg.q_lora_rank),
    );
    let (ih, id) = (f(icfg.n_heads), f(icfg.head_dim));
    let bw = read_bandwidth();
    let peak = gemm_flops(&dev)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "V3.2-shaped attention layer (MLA + indexer top-{}), f32, CPU ({threads} threads); \
         read bandwidth {:.1} GB/s, f32 GEMM {:.1} GFLOP/s",
        args.topk,
        bw / 1e9,
        peak / 1e9
    );
    let b4 = 4.0;
    let mla_params = c * q + q * h * (n + r) + c * (rk + r) + rk * h * (n + v) + h * v * c;
    let index_params = q * ih * id + c * id + c * ih;
    let local = args.topk.saturating_sub(64).max(1);
    let pattern: SparsePattern = format!("local:{local},block:64:1:0").parse()?;
    // Attention over `k` keys on the absorbed path: bytes (latents read twice) and FLOPs
    // (q_lat = W_UKᵀ q_nope, scores over R + r dims, weighted sum over R, W_UV).
    let attend = |k: f64| {
        let bytes = 2.0 * k * (rk + r) * b4;
        let flops = 2.0 * h * n * rk + 2.0 * h * k * (rk + r) + 2.0 * h * k * rk + 2.0 * h * rk * v;
        (bytes, flops)
    };
    println!();
    println!(
        "| context | variant | keys attended | ms/step | MB read/step | GFLOP/step | bound (ms) | \
         % of bound | speed-up vs dense |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rope = RopeCache::new(cfg.rope);
    for &ctx in &args.contexts {
        let mut cache = DsaCache::new(&mla, &indexer, 1)?;
        cache.latent.reserve(ctx + 1)?;
        cache.latent.append(
            &Tensor::randn(0f32, 1.0, (1, ctx, cfg.kv_lora_rank), &dev)?,
            &Tensor::randn(0f32, 1.0, (1, ctx, cfg.qk_rope_head_dim), &dev)?,
        )?;
        cache
            .index
            .append(&Tensor::randn(0f32, 1.0, (1, ctx, icfg.head_dim), &dev)?)?;
        rope.ensure(ctx + 1);
        let x = Tensor::randn(0f32, 1.0, (1, 1, cfg.hidden_size), &dev)?;
        let iters = if ctx >= 65536 { 3 } else { args.iters };
        let path = AttentionPath::Absorbed;
        let mut time = |step: &mut dyn FnMut(&mut DsaCache)| {
            median_time(1, iters, || {
                step(&mut cache);
                cache.truncate(ctx);
            })
            .as_secs_f64()
        };
        let t_dense = time(&mut |c| {
            mla.forward(&x, ctx, &mut rope, Some(&mut c.latent), path)
                .unwrap();
        });
        let t_dsa = time(&mut |c| {
            mla.forward_dsa(&x, ctx, &mut rope, Some(c), &indexer, path)
                .unwrap();
        });
        let t_fixed = time(&mut |c| {
            mla.forward_sparse(&x, ctx, &mut rope, Some(&mut c.latent), path, &pattern)
                .unwrap();
        });
        let s = f(ctx + 1);
        let keys_fixed = f(pattern.select(0, ctx).len());
        let weights = |params: f64| (params * b4, 2.0 * params);
        let (w_mla, fl_mla) = weights(mla_params);
        let (w_ix, fl_ix) = weights(index_params);
        let dense = {
            let (b, fl) = attend(s);
            (w_mla + b, fl_mla + fl, s)
        };
        let k = s.min(f(args.topk));
        let dsa = {
            let (b, fl) = attend(k);
            let scores = s * id * b4; // the indexer keys, once
            (
                w_mla + w_ix + b + scores,
                fl_mla + fl_ix + fl + 2.0 * ih * s * id + 2.0 * ih * s,
                k,
            )
        };
        let fixed = {
            let (b, fl) = attend(keys_fixed);
            (w_mla + b, fl_mla + fl, keys_fixed)
        };
        for (name, t, (bytes, flops, keys)) in [
            ("dense", t_dense, dense),
            ("DSA top-k", t_dsa, dsa),
            ("local+block", t_fixed, fixed),
        ] {
            let bound = (bytes / bw).max(flops / peak);
            let kind = if bytes / bw >= flops / peak {
                "memory"
            } else {
                "compute"
            };
            println!(
                "| {ctx} | {name} | {keys:.0} | {:.2} | {:.1} | {:.2} | {:.2} ({kind}) | {:.0}% | \
                 {:.2}x |",
                t * 1e3,
                bytes / 1e6,
                flops / 1e9,
                bound * 1e3,
                100.0 * bound / t,
                t_dense / t,
            );
        }
    }
    Ok(())
}
