//! Weight-level quantisation error of this workspace's q8/q4 formats against llama.cpp's
//! GGUF quantisations of the same checkpoint (issue 13: "not worse at the same bits per
//! weight").
//!
//! For every matrix of a llama.cpp DeepSeek-2 GGUF (made from the checkpoint with llama.cpp's
//! own converter and `llama-quantize`) that maps to checkpoint weights, it dequantises the GGUF
//! tensor (candle's GGUF reader), quantises the checkpoint's values with `linear::QuantMatrix`
//! in q8 and q4, and sums squared errors and squared values per llama.cpp type. Printed per
//! type: the weights it covers, its bits per weight, and the relative RMS error
//! `sqrt(Σ (ŵ - w)² / Σ w²)` of llama.cpp's type and of ours. One JSON line per type.
//!
//! Run: `cargo run --release -p benchmarks --bin quant_error -- --model CKPT_DIR
//! --gguf ckpt-Q4_K_M.gguf`
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use linear::{QuantFormat, QuantMatrix};
use model::Checkpoint;

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (the safetensors the GGUF was converted from).
    #[arg(long)]
    model: PathBuf,
    /// llama.cpp GGUF of the same checkpoint.
    #[arg(long)]
    gguf: PathBuf,
    /// Only the first N mapped tensors (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

/// The checkpoint tensors behind a GGUF tensor name: one name, or the per-expert names of a
/// stacked `*_exps` tensor (in expert order). `None` for tensors this tool does not compare.
fn hf_names(gguf: &str, experts: usize) -> Option<Vec<String>> {
    if gguf == "output.weight" {
        return Some(vec!["lm_head.weight".into()]);
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let p = format!("model.layers.{layer}");
    let one = |s: &str| Some(vec![format!("{p}.{s}.weight")]);
    let stacked = |s: &str| {
        Some(
            (0..experts)
                .map(|e| format!("{p}.mlp.experts.{e}.{s}.weight"))
                .collect(),
        )
    };
    match name {
        "attn_q.weight" => one("self_attn.q_proj"),
        "attn_q_a.weight" => one("self_attn.q_a_proj"),
        "attn_q_b.weight" => one("self_attn.q_b_proj"),
        "attn_kv_a_mqa.weight" => one("self_attn.kv_a_proj_with_mqa"),
        "attn_output.weight" => one("self_attn.o_proj"),
        "ffn_gate.weight" => one("mlp.gate_proj"),
        "ffn_up.weight" => one("mlp.up_proj"),
        "ffn_down.weight" => one("mlp.down_proj"),
        "ffn_gate_shexp.weight" => one("mlp.shared_experts.gate_proj"),
        "ffn_up_shexp.weight" => one("mlp.shared_experts.up_proj"),
        "ffn_down_shexp.weight" => one("mlp.shared_experts.down_proj"),
        "ffn_gate_exps.weight" => stacked("gate_proj"),
        "ffn_up_exps.weight" => stacked("up_proj"),
        "ffn_down_exps.weight" => stacked("down_proj"),
        _ => None,
    }
}

/// Σ (a - b)², Σ b².
fn sq_err(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(e, n), (&x, &y)| {
        let d = (x - y) as f64;
        (e + d * d, n + (y as f64) * (y as f64))
    })
}

#[derive(Default)]
struct Tally {
    weights: usize,
    bits: f64,
    /// (Σ err², Σ w²) for llama.cpp's type, our q8, our q4.
    llama: (f64, f64),
    q8: (f64, f64),
    q4: (f64, f64),
}

fn add(a: &mut (f64, f64), b: (f64, f64)) {
    a.0 += b.0;
    a.1 += b.1;
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cpu = Device::Cpu;
    let ckpt = Checkpoint::open(&args.model)?;
    let cfg = model::ModelConfig::from_file(&args.model.join("config.json"))?;
    let experts = cfg.moe.as_ref().map_or(0, |m| m.gate.n_routed_experts);
    let mut file = std::fs::File::open(&args.gguf)
        .with_context(|| format!("opening {}", args.gguf.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .with_context(|| format!("{}: not a GGUF file", args.gguf.display()))?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut by_type: BTreeMap<String, Tally> = BTreeMap::new();
    let mut done = 0;
    for name in names {
        let Some(hf) = hf_names(name, experts) else {
            continue;
        };
        if args.limit > 0 && done == args.limit {
            break;
        }
        done += 1;
        let info = &content.tensor_infos[name];
        let q = content.tensor(&mut file, name, &cpu)?;
        let theirs = q.dequantize(&cpu)?;
        let parts = hf.len();
        // candle orders GGUF dims row-major: [out, in], or [experts, out, in] when stacked.
        let theirs = theirs.reshape((parts, theirs.elem_count() / parts))?;
        let tally = by_type.entry(format!("{:?}", info.ggml_dtype)).or_default();
        tally.bits = 8.0 * info.ggml_dtype.type_size() as f64 / info.ggml_dtype.block_size() as f64;
        for (i, hf_name) in hf.iter().enumerate() {
            let w: Tensor = ckpt.load(hf_name, DType::F32, &cpu)?;
            let (n, k) = w.dims2()?;
            let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let tv: Vec<f32> = theirs.get(i)?.to_vec1()?;
            if tv.len() != wv.len() {
                bail!("{name}: {} values for {hf_name} [{n}, {k}]", tv.len());
            }
            add(&mut tally.llama, sq_err(&tv, &wv));
            for (format, acc) in [
                (QuantFormat::Q8, &mut tally.q8),
                (QuantFormat::Q4, &mut tally.q4),
            ] {
                let ours = QuantMatrix::from_rows(&wv, n, k, format)?.dequantize_rows();
                add(acc, sq_err(&ours, &wv));
            }
            tally.weights += wv.len();
        }
        eprintln!("{name} ({:?}, {} matrices)", info.ggml_dtype, parts);
    }
    let rel = |(e, n): (f64, f64)| (e / n).sqrt();
    for (ty, t) in &by_type {
        println!(
            "{{\"llama_type\":\"{ty}\",\"weights\":{},\"llama_bits\":{:.3},\"llama_rel_rms\":{:.5e},\
             \"q8_bits\":{:.3},\"q8_rel_rms\":{:.5e},\"q4_bits\":{:.3},\"q4_rel_rms\":{:.5e}}}",
            t.weights,
            t.bits,
            rel(t.llama),
            QuantFormat::Q8.bits_per_weight(),
            rel(t.q8),
            QuantFormat::Q4.bits_per_weight(),
            rel(t.q4),
        );
    }
    Ok(())
}
