//! What each weight format costs in quality (issue 13): the next-token distribution of the
//! model with its matrices in each format against the same checkpoint with f32 matrices (the
//! exact model: bf16 values widened, FP8 dequantised in f32), over `--positions` positions of
//! one prefill (the `model_decode` prompt).
//!
//! Per format: mean and max KL(p_f32 ‖ p_format) over positions, the share of positions whose
//! arg-max agrees, and the bytes one decode step reads. One JSON line per format.
//!
//! `--reference LABEL=FILE.npz` scores another engine's logits of the same checkpoint the same
//! way (`ids` and `logits` `[positions, vocab]`, as `model_cpu/llama_logits.py` writes for
//! llama.cpp's GGUFs): one more JSON line per file, `"format"` being its label.
//!
//! Run: `cargo run --release -p benchmarks --bin quant_quality -- --model DIR
//! --formats bf16,q8,q4 --positions 512 [--reference llama.cpp-Q8_0=llama_Q8_0.npz]`
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
    /// Comma-separated formats to compare with f32: f32, bf16, f16, fp8, q8, q4, q4k, q6k, q5,
    /// q5k, q3k, q2k.
    #[arg(long, default_value = "bf16,q8,q4", value_delimiter = ',')]
    formats: Vec<MatrixFormat>,
    /// Positions (prompt tokens) compared.
    #[arg(long, default_value_t = 512)]
    positions: usize,
    /// Another engine's logits to score against the same f32 model: `LABEL=FILE.npz` (arrays
    /// `ids`, which must be this prompt, and `logits` `[positions, vocab]`). Repeatable.
    #[arg(long)]
    reference: Vec<String>,
    /// Run each format's positions as decode steps (one token per forward: the matrix-vector
    /// kernels, which round activations to 8 bits for q8 and q4) instead of one prefill (the
    /// GEMM, f32 activations). The f32 reference is one prefill either way.
    #[arg(long)]
    decode: bool,
}

/// `model`'s logits `[T, V]` over `ids`: one prefill, or one decode step per token.
fn logits(model: &DeepSeek, ids: &[u32], decode: bool) -> Result<Tensor> {
    if !decode {
        return Ok(model.logits(ids)?);
    }
    let mut session = model.new_session()?;
    let rows = ids
        .iter()
        .map(|&t| Ok(model.forward(&[t], &mut session)?.logits))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// Mean and max KL(want ‖ got) over positions, and the share whose arg-max agrees.
fn compare(want: &[Vec<f64>], got: &[Vec<f64>]) -> (f64, f64, f64) {
    let (mut sum, mut max, mut agree) = (0f64, 0f64, 0usize);
    for (p, q) in want.iter().zip(got) {
        let kl: f64 = p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum();
        sum += kl;
        max = max.max(kl);
        agree += usize::from(argmax(p) == argmax(q));
    }
    let n = want.len() as f64;
    (sum / n, max, agree as f64 / n)
}

/// The logits of a `--reference LABEL=FILE.npz`, checked against this run's prompt and vocab.
fn read_reference(spec: &str, ids: &[u32], vocab: usize) -> Result<(String, Tensor)> {
    let (label, path) = spec
        .split_once('=')
        .with_context(|| format!("--reference {spec:?}: expected LABEL=FILE.npz"))?;
    let arrays = Tensor::read_npz(path).with_context(|| format!("reading {path}"))?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .with_context(|| format!("{path}: no array {name:?}"))
    };
    let theirs: Vec<i64> = get("ids")?.to_dtype(DType::I64)?.to_vec1()?;
    let ours: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    anyhow::ensure!(
        theirs == ours,
        "{path}: its ids are not this run's prompt ({} positions; check --positions)",
        theirs.len()
    );
    let logits = get("logits")?;
    anyhow::ensure!(
        logits.dims() == [ids.len(), vocab],
        "{path}: logits {:?}, expected [{}, {vocab}]",
        logits.dims(),
        ids.len()
    );
    Ok((label.to_string(), logits))
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
    let references = args
        .reference
        .iter()
        .map(|spec| read_reference(spec, &ids, vocab as usize))
        .collect::<Result<Vec<_>>>()?;
    let want = log_probs(&reference.logits(&ids)?)?;
    drop(reference);
    let print = |format: &str, got: &[Vec<f64>], bytes: Option<usize>| {
        let (mean, max, agree) = compare(&want, got);
        let bytes = bytes.map_or("null".to_string(), |b| b.to_string());
        println!(
            "{{\"format\":\"{format}\",\"positions\":{},\"mean_kl\":{mean:.6e},\"max_kl\":{max:.6e},\
             \"top1_agreement\":{agree:.4},\"decode_bytes\":{bytes}}}",
            want.len(),
        );
    };
    for format in &args.formats {
        let model = load(*format)?;
        let got = log_probs(&logits(&model, &ids, args.decode)?)?;
        let label = format!("{format}{}", if args.decode { " (decode)" } else { "" });
        print(&label, &got, Some(model.decode_weight_bytes().0));
    }
    for (label, logits) in &references {
        print(label, &log_probs(logits)?, None);
    }
    Ok(())
}
