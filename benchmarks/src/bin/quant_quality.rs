//! What each weight format costs in quality (issue 13): the next-token distribution of the
//! model with its matrices in each format against the same checkpoint with f32 matrices (the
//! exact model: bf16 values widened, FP8 dequantised in f32), over `--positions` positions of
//! one prefill (the `model_decode` prompt).
//!
//! Per format: mean and max KL(p_f32 ‖ p_format) over positions, the share of positions whose
//! arg-max agrees, and the bytes one decode step reads. One JSON line per format.
//!
//! Run: `cargo run --release -p benchmarks --bin quant_quality -- --model DIR
//! --formats bf16,q8,q4 --positions 512`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use model::{DeepSeek, MatrixFormat, Precision};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated formats to compare with f32: f32, bf16, f16, fp8, q8, q4.
    #[arg(long, default_value = "bf16,q8,q4", value_delimiter = ',')]
    formats: Vec<MatrixFormat>,
    /// Positions (prompt tokens) compared.
    #[arg(long, default_value_t = 512)]
    positions: usize,
}

/// Log-softmax of each row of `[T, V]` logits, in f64.
fn log_probs(logits: &Tensor) -> Result<Vec<Vec<f64>>> {
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z = r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
            r.iter().map(|&v| v as f64 - z).collect()
        })
        .collect())
}

fn argmax(r: &[f64]) -> usize {
    (0..r.len())
        .max_by(|&a, &b| r[a].total_cmp(&r[b]))
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cpu = Device::Cpu;
    let load = |m: MatrixFormat| {
        DeepSeek::load(&args.model, Precision::mixed(DType::F32, m), &cpu)
            .with_context(|| format!("loading {} with {m} matrices", args.model.display()))
    };
    let reference = load(MatrixFormat::Float(DType::F32))?;
    let vocab = reference.config().vocab_size as u64;
    // The `model_decode` prompt.
    let ids: Vec<u32> = (0..args.positions as u64)
        .map(|i| ((i * 1_000_003 + 12_345) % vocab) as u32)
        .collect();
    let want = log_probs(&reference.logits(&ids)?)?;
    drop(reference);
    for format in &args.formats {
        let model = load(*format)?;
        let got = log_probs(&model.logits(&ids)?)?;
        let (mut sum, mut max, mut agree) = (0f64, 0f64, 0usize);
        for (p, q) in want.iter().zip(&got) {
            let kl: f64 = p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum();
            sum += kl;
            max = max.max(kl);
            agree += usize::from(argmax(p) == argmax(q));
        }
        let n = want.len() as f64;
        let (bytes, _) = model.decode_weight_bytes();
        println!(
            "{{\"format\":\"{format}\",\"positions\":{},\"mean_kl\":{:.6e},\"max_kl\":{max:.6e},\
             \"top1_agreement\":{:.4},\"decode_bytes\":{bytes}}}",
            want.len(),
            sum / n,
            agree as f64 / n,
        );
    }
    Ok(())
}
