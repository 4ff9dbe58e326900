//! MLA chunked-prefill throughput, expanded vs absorbed vs flash, on a DeepSeek-V2-Lite-shaped
//! layer (hidden 2048, 16 heads, kv_lora_rank 512, nope 128, rope 64, v 128, plain `q_proj`),
//! random weights, on CPU.
//!
//! A `--prompt-len`-token prompt goes through the latent cache `--chunk` tokens at a time (each
//! chunk attends to the cache + itself), timed end to end (projections included) for each
//! path. The expanded and absorbed paths materialise the `[B, H, T, S]` f32 scores of a chunk;
//! they are skipped when that tensor alone would exceed `--max-scores-mib`. One JSON line per
//! path: tokens/s, the estimated peak attention scratch of the last (largest) chunk, and the
//! measured growth of the process's peak RSS during the run (Linux `clear_refs`).
//!
//! Run: `cargo run --release -p benchmarks --bin mla_prefill -- --prompt-len 2048`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use anyhow::{bail, Result};
use benchmarks::median_time;
use candle_core::{Device, Tensor};
use clap::Parser;
use mla::{AttentionPath, FlashFormulation, Mla, MlaConfig, FLASH_KEY_BLOCK, FLASH_QUERY_BLOCK};
use rope_yarn::RopeCache;

#[derive(Parser)]
struct Args {
    /// Prompt tokens.
    #[arg(long, default_value_t = 2048)]
    prompt_len: usize,
    /// Tokens per prefill chunk (each a `forward` through the cache).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Paths to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "flash,absorbed,expanded")]
    paths: Vec<String>,
    /// Timed prefills per path (median reported), after one untimed warm-up chunk.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Skip the expanded/absorbed paths when one chunk's f32 score tensor `[1, H, chunk, S]`
    /// would exceed this (MiB); their softmax holds ~3 such tensors at once.
    #[arg(long, default_value_t = 1024)]
    max_scores_mib: usize,
}

fn parse_path(name: &str) -> Result<AttentionPath> {
    Ok(match name {
        "expanded" => AttentionPath::Expanded,
        "absorbed" => AttentionPath::Absorbed,
        "flash" => AttentionPath::Flash,
        _ => bail!("unknown path {name:?} (expanded, absorbed, flash)"),
    })
}

/// Estimated peak attention scratch (bytes) of the last chunk, `t` tokens over `s` keys: the
/// f32 score-shaped tensors alive at once (scores, scaled/masked copy, probabilities) and
/// what each path holds besides them.
fn scratch_bytes(mla: &Mla, path: AttentionPath, t: usize, s: usize) -> usize {
    let cfg = mla.config();
    let (h, rk) = (cfg.num_heads, cfg.kv_lora_rank);
    let (n, r, v) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
    let f32b = 4;
    match path {
        // The K/V expansion of the whole cache (and the keys' copy).
        AttentionPath::Expanded => 3 * h * t * s * f32b + 2 * s * h * (n + r + v) * f32b,
        AttentionPath::Absorbed => 3 * h * t * s * f32b + h * t * rk * f32b,
        // One (tile, key block) of scores, the accumulators of every tile (old + new), and
        // for expanded blocks the block's keys and values.
        AttentionPath::Flash => {
            let scores = 3 * h * t.min(FLASH_QUERY_BLOCK) * FLASH_KEY_BLOCK * f32b;
            match mla.flash_formulation(t, s) {
                FlashFormulation::Absorbed => scores + 2 * h * t * rk * f32b,
                FlashFormulation::Expanded => {
                    scores + 2 * h * t * v * f32b + 2 * h * FLASH_KEY_BLOCK * (n + r + v) * f32b
                }
            }
        }
    }
}

/// The process's peak resident set since the last [`reset_peak_rss`], and the current one (KiB).
fn rss_kib() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets the peak RSS (Linux: writing 5 to `clear_refs`); harmless where unsupported.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Prefills `x` `[1, P, C]` through a fresh cache in chunks; returns the output `[1, P, C]`.
fn prefill(
    mla: &Mla,
    x: &Tensor,
    chunk: usize,
    rope: &mut RopeCache,
    path: AttentionPath,
) -> Result<Tensor> {
    let p = x.dim(1)?;
    let mut cache = mla.new_cache(1)?;
    cache.reserve(p)?;
    let mut outs = Vec::new();
    for start in (0..p).step_by(chunk) {
        let xi = x.narrow(1, start, chunk.min(p - start))?;
        outs.push(mla.forward(&xi, start, rope, Some(&mut cache), path)?);
    }
    Ok(Tensor::cat(&outs, 1)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = Device::Cpu;
    let cfg = MlaConfig::deepseek_v2_lite();
    let mla = benchmarks::random_mla_layer(&cfg, &dev)?;
    let mut rope = RopeCache::new(cfg.rope);
    rope.ensure(args.prompt_len);
    let x = Tensor::randn(0f32, 1.0, (1, args.prompt_len, cfg.hidden_size), &dev)?;
    let threads = candle_core::utils::get_num_threads();
    let (p, chunk) = (args.prompt_len, args.chunk.min(args.prompt_len));
    println!(
        "V2-Lite-shaped MLA layer, f32, CPU ({threads} threads); prompt {p} in chunks of {chunk}; \
         flash key block {FLASH_KEY_BLOCK}, query tile {FLASH_QUERY_BLOCK}"
    );
    let mut reference: Option<Tensor> = None;
    for name in &args.paths {
        let path = parse_path(name)?;
        let scores_mib = (cfg.num_heads * chunk * p * 4) >> 20;
        if path != AttentionPath::Flash && scores_mib > args.max_scores_mib {
            println!(
                "{{\"path\":\"{name}\",\"prompt_len\":{p},\"chunk\":{chunk},\"skipped\":\
                 \"scores {scores_mib} MiB > --max-scores-mib {}\"}}",
                args.max_scores_mib
            );
            continue;
        }
        // Warm-up: one chunk (allocator, thread pool, rope table).
        prefill(&mla, &x.narrow(1, 0, chunk)?, chunk, &mut rope, path)?;
        let mut out = None;
        reset_peak_rss();
        let rss_before = rss_kib().1;
        let secs = median_time(0, args.iters, || {
            out = None; // free the previous output before the next run allocates its own
            out = Some(prefill(&mla, &x, chunk, &mut rope, path).expect("prefill"));
        })
        .as_secs_f64();
        let peak_growth_mib = rss_kib().0.saturating_sub(rss_before) as f64 / 1024.0;
        let y = out.expect("at least one iteration");
        // Agreement with the first path run (f32: rounding only).
        let diff = match &reference {
            None => 0.0,
            Some(r) => (&y - r)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?,
        };
        reference.get_or_insert(y);
        let scratch = scratch_bytes(&mla, path, chunk, p) as f64 / (1 << 20) as f64;
        let form = match path {
            AttentionPath::Flash => format!("{:?}", mla.flash_formulation(chunk, p)),
            _ => "-".into(),
        };
        println!(
            "{{\"path\":\"{name}\",\"flash_formulation\":\"{form}\",\"prompt_len\":{p},\
             \"chunk\":{chunk},\"threads\":{threads},\"iters\":{},\"secs\":{secs:.3},\"tok_s\":{:.1},\"scratch_est_mib\":{scratch:.1},\
             \"peak_rss_growth_mib\":{peak_growth_mib:.1},\"max_diff_vs_first\":{diff:.2e}}}",
            args.iters,
            p as f64 / secs,
        );
    }
    Ok(())
}
