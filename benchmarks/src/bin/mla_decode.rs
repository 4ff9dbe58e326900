//! MLA decode-step latency, flash vs absorbed (the fused CPU kernel, and the same path in
//! candle ops, its oracle) vs expanded, on a DeepSeek-V2-Lite-shaped layer
//! (hidden 2048, 16 heads, kv_lora_rank 512, nope 128, rope 64, v 128), f32 on CPU.
//!
//! For each context length the latent cache is filled directly with random values (no 32K-token
//! prefill through attention), then one decode step (1 new token) is timed for both paths; the
//! cache is rolled back after every step so the context stays fixed. The cache is paged
//! ([`mla::CACHE_PAGE`] tokens per page): the flash path reads the pages in place with an
//! online softmax (one pass over the cache), the absorbed path reads them in place page by
//! page (scores, one softmax, weighted sum); the expanded oracle first joins the pages into one
//! tensor (a copy of the cache per step). The expanded path
//! re-expands the whole latent cache through `kv_b_proj` at every step, as HF does.
//!
//! Run: `cargo run --release -p benchmarks --bin mla_decode`

use anyhow::Result;
use benchmarks::{median_time, read_bandwidth};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use mla::{AttentionPath, KvLayout, MlaConfig};
use rope_yarn::RopeCache;

#[derive(Parser)]
struct Args {
    /// Context lengths (tokens already in the cache).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384,32768")]
    contexts: Vec<usize>,
    /// Timed steps per measurement (median reported); long contexts use fewer.
    #[arg(long, default_value_t = 9)]
    iters: usize,
}

/// Measured f32 GEMM throughput (FLOP/s) on a shape like the expansion's.
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
    let cfg = MlaConfig::deepseek_v2_lite();
    let mla = benchmarks::random_mla_layer(&cfg, &dev)?;
    let mla_ops = mla.clone().with_fused_cpu(false);
    let (c, h, n, r, v, rk) = (
        cfg.hidden_size as f64,
        cfg.num_heads as f64,
        cfg.qk_nope_head_dim as f64,
        cfg.qk_rope_head_dim as f64,
        cfg.v_head_dim as f64,
        cfg.kv_lora_rank as f64,
    );
    let bw = read_bandwidth();
    let peak = gemm_flops(&dev)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "V2-Lite-shaped MLA layer, f32, CPU ({threads} threads); read bandwidth {:.1} GB/s, \
         f32 GEMM {:.1} GFLOP/s",
        bw / 1e9,
        peak / 1e9
    );
    let f32_bytes = 4.0;
    let weight_bytes = (h * (n + r) * c + (rk + r) * c + h * (n + v) * rk + c * h * v) * f32_bytes;
    let proj_flops = 2.0 * (h * (n + r) * c + (rk + r) * c + c * h * v);
    let mla_bpt = KvLayout::mla(&cfg).bytes_per_token(1, DType::F32);
    let mha_bpt = KvLayout::mha(&cfg).bytes_per_token(1, DType::F32);
    println!();
    println!(
        "| context | flash ms/step | absorbed ms/step | absorbed in candle ops ms/step | ops / fused | \
         expanded ms/step | expanded / absorbed | \
         cache B/token absorbed (MLA) | expanded K/V B/token (MHA equiv.) | \
         absorbed bytes/step | absorbed GFLOP/step | absorbed bound (ms) | absorbed % of bound | \
         expanded GFLOP/step | expanded bound (ms) | expanded % of bound |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rope = RopeCache::new(cfg.rope);
    for &ctx in &args.contexts {
        let mut cache = mla.new_cache(1)?;
        cache.reserve(ctx + 1)?;
        let c_kv = Tensor::randn(0f32, 1.0, (1, ctx, cfg.kv_lora_rank), &dev)?;
        let k_pe = Tensor::randn(0f32, 1.0, (1, ctx, cfg.qk_rope_head_dim), &dev)?;
        cache.append(&c_kv, &k_pe)?;
        drop((c_kv, k_pe));
        assert_eq!(cache.bytes_per_token(), (512 + 64) * 4);
        rope.ensure(ctx + 1);
        let x = Tensor::randn(0f32, 1.0, (1, 1, cfg.hidden_size), &dev)?;
        let iters = if ctx >= 16384 { 3 } else { args.iters };
        let mut time = |mla: &mla::Mla, path: AttentionPath| {
            median_time(1, iters, || {
                let y = mla
                    .forward(&x, ctx, &mut rope, Some(&mut cache), path)
                    .unwrap();
                cache.truncate(ctx);
                y
            })
            .as_secs_f64()
        };
        let t_flash = time(&mla, AttentionPath::Flash);
        let t_abs = time(&mla, AttentionPath::Absorbed);
        let t_ops = time(&mla_ops, AttentionPath::Absorbed);
        let t_exp = time(&mla, AttentionPath::Expanded);
        let s = (ctx + 1) as f64;
        // Absorbed, fused: reads the weights and the latent cache once (each chunk's second
        // read, for p · c_kv, comes from L2).
        let abs_bytes = weight_bytes + s * (rk + r) * f32_bytes;
        let abs_flops = proj_flops
            + 2.0 * h * n * rk
            + 2.0 * h * s * (rk + r)
            + 2.0 * h * s * rk
            + 2.0 * h * rk * v;
        let abs_bound = (abs_bytes / bw).max(abs_flops / peak);
        // Expanded: the kv_b_proj expansion of the whole context dominates.
        let exp_flops =
            proj_flops + 2.0 * s * rk * h * (n + v) + 2.0 * h * s * (n + r) + 2.0 * h * s * v;
        let exp_bytes =
            weight_bytes + s * (rk + r) * f32_bytes + 3.0 * s * h * (n + r + v) * f32_bytes;
        let exp_bound = (exp_bytes / bw).max(exp_flops / peak);
        println!(
            "| {ctx} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.1}x | {mla_bpt} | {mha_bpt} | {:.1} MB | {:.3} | {:.2} ({}) | {:.0}% | {:.1} | {:.1} ({}) | {:.0}% |",
            t_flash * 1e3,
            t_abs * 1e3,
            t_ops * 1e3,
            t_ops / t_abs,
            t_exp * 1e3,
            t_exp / t_abs,
            abs_bytes / 1e6,
            abs_flops / 1e9,
            abs_bound * 1e3,
            if abs_bytes / bw >= abs_flops / peak { "memory" } else { "compute" },
            100.0 * abs_bound / t_abs,
            exp_flops / 1e9,
            exp_bound * 1e3,
            if exp_bytes / bw >= exp_flops / peak { "memory" } else { "compute" },
            100.0 * exp_bound / t_exp,
        );
    }
    Ok(())
}
