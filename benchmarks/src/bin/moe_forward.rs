//! MoE layer forward: grouped dispatch vs the naive per-token loop on a DeepSeek-V2-Lite-shaped
//! layer (hidden 2048, 64 routed experts top-6, 2 shared, moe_intermediate 1408, f32), the
//! decode step's weight bytes vs time, and a V3-shaped gate (256 experts, 8 groups, top-4
//! groups, top-8, hidden 7168).
//!
//! Run: `cargo run --release -p benchmarks --bin moe_forward`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::time::Duration;

use anyhow::Result;
use benchmarks::{median_time, read_bandwidth};
use candle_core::{Device, Tensor};
use clap::Parser;
use moe::{Dispatch, Experts, Gate, GateConfig, Mlp, Moe, MoeConfig, Scoring, TopkMethod};

#[derive(Parser)]
struct Args {
    /// Token counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,512")]
    tokens: Vec<usize>,
}

/// Cheap deterministic uniform(-a, a) weights (xorshift), far faster than randn for 2 GB.
fn weights(seed: u64, rows: usize, cols: usize, a: f32) -> Result<Tensor> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

fn mlp(seed: u64, h: usize, i: usize) -> Result<Mlp> {
    let a = 1.0 / (h as f32).sqrt();
    Ok(Mlp::new(
        weights(seed, i, h, a)?,
        weights(seed + 1, i, h, a)?,
        weights(seed + 2, h, i, 1.0 / (i as f32).sqrt())?,
    )?)
}

fn tok_s(t: usize, d: Duration) -> f64 {
    t as f64 / d.as_secs_f64()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {threads}");
    let bw = read_bandwidth();
    println!("measured read bandwidth: {:.1} GB/s", bw / 1e9);

    // --- V2-Lite-shaped layer ---
    let (h, e, k, i) = (2048, 64, 6, 1408);
    let gate_cfg = GateConfig::builder(h, e, k)
        .scoring(Scoring::Softmax)
        .topk_method(TopkMethod::Greedy)
        .build()?;
    let cfg = MoeConfig::new(gate_cfg.clone(), i, 2)?;
    let t0 = std::time::Instant::now();
    let experts = Experts::new(
        (0..e as u64)
            .map(|x| mlp(1000 + 3 * x, h, i))
            .collect::<Result<_>>()?,
    )?;
    let gate = Gate::new(gate_cfg, weights(1, e, h, 0.05)?, None)?;
    let layer = Moe::new(cfg, gate, experts, Some(mlp(7, h, 2 * i)?))?;
    println!("V2-Lite layer built in {:.1?}", t0.elapsed());

    println!("\n| tokens | grouped (tok/s) | naive per-token loop (tok/s) | speed-up | grouped ms | naive ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &t in &args.tokens {
        let x = weights(99 + t as u64, t, h, 1.0)?;
        let (gw, gi) = if t >= 256 { (1, 3) } else { (2, 10) };
        let grouped = median_time(gw, gi, || layer.forward_with(&x, Dispatch::Auto).unwrap());
        let (nw, ni) = if t >= 256 {
            (0, 1)
        } else if t >= 16 {
            (1, 3)
        } else {
            (2, 10)
        };
        let naive = median_time(nw, ni, || layer.forward_with(&x, Dispatch::Naive).unwrap());
        println!(
            "| {t} | {:.1} | {:.1} | {:.1}x | {:.2} | {:.2} |",
            tok_s(t, grouped),
            tok_s(t, naive),
            naive.as_secs_f64() / grouped.as_secs_f64(),
            grouped.as_secs_f64() * 1e3,
            naive.as_secs_f64() * 1e3
        );
    }

    // --- decode: bytes read vs time ---
    let x = weights(5, 1, h, 1.0)?;
    let bytes = layer.decode_weight_bytes() as f64;
    println!("\n| decode path (T=1) | time (ms) | weight bytes read (MB) | achieved GB/s | % of measured read bw |");
    println!("|---|---:|---:|---:|---:|");
    for (label, d) in [
        ("decode kernel (Auto)", Dispatch::Auto),
        ("grouped (linear kernel, n_e <= 8)", Dispatch::Grouped),
        ("naive loop (candle matmul)", Dispatch::Naive),
    ] {
        let dt = median_time(3, 20, || layer.forward_with(&x, d).unwrap());
        let gbs = bytes / dt.as_secs_f64();
        println!(
            "| {label} | {:.2} | {:.1} | {:.1} | {:.0}% |",
            dt.as_secs_f64() * 1e3,
            bytes / 1e6,
            gbs / 1e9,
            100.0 * gbs / bw
        );
    }
    drop(layer);

    // --- V3-shaped gate ---
    let (h3, e3) = (7168, 256);
    let cfg3 = GateConfig::builder(h3, e3, 8)
        .scoring(Scoring::Sigmoid)
        .topk_method(TopkMethod::NoauxTc)
        .groups(8, 4)
        .normalize(true)
        .routed_scaling_factor(2.5)
        .build()?;
    let bias = weights(3, 1, e3, 0.1)?.squeeze(0)?;
    let gate3 = Gate::new(cfg3.clone(), weights(2, e3, h3, 0.02)?, Some(bias))?;
    println!("\n| V3 gate, tokens | logits + routing (tok/s) | routing only (tok/s) | routing only, us/token |");
    println!("|---:|---:|---:|---:|");
    for &t in &args.tokens {
        let x = weights(50 + t as u64, t, h3, 1.0)?;
        let full = median_time(2, 10, || gate3.route(&x).unwrap());
        let logits: Vec<f32> = gate3.logits(&x)?.flatten_all()?.to_vec1()?;
        let sel = median_time(2, 10, || moe::route(&cfg3, &logits, gate3.bias()));
        println!(
            "| {t} | {:.0} | {:.0} | {:.2} |",
            tok_s(t, full),
            tok_s(t, sel),
            sel.as_secs_f64() * 1e6 / t as f64
        );
    }
    Ok(())
}
