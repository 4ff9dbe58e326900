//! MTP speculative decoding: the verify cost (one main forward over 1, 2 and 3 tokens from a
//! warm cache), the draft cost (one MTP module step), measured acceptance and tokens/s with
//! and without MTP, and the speedup the measured costs imply at DeepSeek's reported 85% and
//! 90% acceptance (random weights accept almost nothing, so the measured speedup is a floor).
//!
//! Run: `cargo run --release -p benchmarks --bin mtp_verify` (the `v3_mtp` fixture and a
//! generated random checkpoint of a mid-sized V3-shaped config, f32 on CPU), or pass
//! `--checkpoint DIR` for any checkpoint with `num_nextn_predict_layers >= 1`.
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use benchmarks::median_time;
use candle_core::{DType, Device};
use clap::Parser;
use mla::AttentionPath;
use model::generate::{generate, GenerateOptions};
use model::mtp::{load_mtp_modules, Module};
use model::random::{write_random_checkpoint, StoreDtype};
use model::{DeepSeek, PathPolicy};
use mtp::{speculative_generate, DecoderBlock, Greedy, SpecOptions};

#[derive(Parser)]
struct Args {
    /// Checkpoint directories (default: the v3_mtp fixture and a generated mid-sized one).
    #[arg(long)]
    checkpoint: Vec<PathBuf>,
    /// Tokens in the warm cache before the timed forwards.
    #[arg(long, default_value_t = 64)]
    context: usize,
    /// Tokens generated for the tokens/s comparison.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
}

/// A V3-shaped config of ~60M parameters: big enough that matmuls, not overheads, dominate.
const MID_CONFIG: &str = r#"{
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 8192, "hidden_size": 512, "intermediate_size": 1536,
  "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
  "num_key_value_heads": 8, "q_lora_rank": 256, "kv_lora_rank": 128,
  "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
  "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "noaux_tc",
  "n_group": 4, "topk_group": 2, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid", "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0, "max_position_embeddings": 163840, "hidden_act": "silu",
  "attention_bias": false, "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
}"#;

fn mid_checkpoint() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-checkpoints/mtp_mid");
    if !dir.join("model.safetensors.index.json").exists() {
        eprintln!("writing random checkpoint to {}", dir.display());
        write_random_checkpoint(MID_CONFIG, &dir, StoreDtype::F32, 7, |_, _, _| {})?;
    }
    Ok(dir)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    name: String,
    verify: [Duration; 3],
    draft: Duration,
    acceptance: f64,
    plain_tps: f64,
    spec_tps: f64,
}

fn bench(dir: &Path, args: &Args, verify_path: AttentionPath) -> Result<Row> {
    let dev = Device::Cpu;
    let mut model = DeepSeek::load(dir, DType::F32, &dev)?;
    // Multi-token forwards (prefill and verification) use `verify_path`; one token: absorbed.
    model.paths = PathPolicy {
        short: AttentionPath::Absorbed,
        long: verify_path,
        short_max: 1,
    };
    let modules: Vec<Module> = load_mtp_modules(&model)?;
    ensure!(!modules.is_empty(), "{}: no MTP layer", dir.display());
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..args.context as u32)
        .map(|i| (i * 7919 + 3) % vocab)
        .collect();

    // Verify cost: forward over k tokens after a warm cache, rolled back after each run.
    let mut session = model.new_session()?;
    model.forward(&prompt, &mut session)?;
    let p = prompt.len();
    let mut verify = [Duration::ZERO; 3];
    for (k, slot) in verify.iter_mut().enumerate() {
        let block: Vec<u32> = (0..=k as u32).map(|i| (i * 31 + 5) % vocab).collect();
        *slot = median_time(3, 20, || {
            model.forward(&block, &mut session).unwrap();
            session.truncate(p);
        });
    }

    // Draft cost: one depth-1 module step (block over one token + shared head) after a warm
    // MTP cache of the same length.
    let m = &modules[0];
    let mut cache = m.new_cache()?;
    let warm_emb = model.embed(&prompt[1..])?;
    let h = model.forward(&prompt, &mut model.new_session()?)?.hidden;
    m.forward(&warm_emb, &h.narrow(0, 0, p - 1)?.unsqueeze(0)?, &mut cache)?;
    let len = <model::mtp::MtpBlock as DecoderBlock>::cache_len(&cache);
    let emb = model.embed(&[9])?;
    let prev = h.narrow(0, p - 1, 1)?.unsqueeze(0)?; // [1, 1, C]
    let draft = median_time(3, 20, || {
        let g = m.forward(&emb, &prev, &mut cache).unwrap();
        let logits = model.head(&g.squeeze(0).unwrap()).unwrap();
        let _ = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        <model::mtp::MtpBlock as DecoderBlock>::truncate(&mut cache, len);
    });

    // Tokens/s, greedy, without and with MTP (same output by construction).
    let opts = GenerateOptions {
        max_new_tokens: args.new_tokens,
        ..GenerateOptions::default()
    };
    let plain = generate(&model, &prompt, &opts, |_| Ok(true))?;
    let plain_tps = plain.decode_tokens_per_sec();
    let spec_opts = SpecOptions {
        max_new_tokens: args.new_tokens,
        stop_tokens: vec![],
    };
    let t = Instant::now();
    let spec = speculative_generate(&model, &modules, &prompt, &spec_opts, &mut Greedy, |_| true)?;
    let secs = t.elapsed().as_secs_f64() - plain.prefill_secs; // same prefill in both
    ensure!(
        spec.tokens == plain.tokens,
        "speculative greedy differs from plain greedy"
    );
    let spec_tps = (spec.tokens.len() - 1) as f64 / secs.max(1e-9);
    Ok(Row {
        name: format!(
            "{} ({verify_path:?})",
            dir.file_name()
                .map_or("?".into(), |s| s.to_string_lossy().into_owned())
        ),
        verify,
        draft,
        acceptance: spec.stats.acceptance_rate(),
        plain_tps,
        spec_tps,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dirs = if args.checkpoint.is_empty() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v3_mtp");
        vec![fixture, mid_checkpoint()?]
    } else {
        args.checkpoint.clone()
    };
    println!(
        "context {} tokens, {} generated, f32 on CPU, greedy, D = 1\n",
        args.context, args.new_tokens
    );
    println!("| checkpoint (multi-token MLA path) | verify t(1) ms | t(2) ms | t(3) ms | draft ms | measured acceptance | plain tok/s | MTP tok/s | measured speedup | implied @85% | implied @90% | DeepSeek |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (dir, path) in dirs
        .iter()
        .flat_map(|d| [(d, AttentionPath::Expanded), (d, AttentionPath::Absorbed)])
    {
        let r = bench(dir, &args, path)?;
        let [t1, t2, t3] = r.verify.map(ms);
        let d = ms(r.draft);
        // D = 1: each step costs one draft and a 2-token verify and yields 1 + a tokens.
        let implied = |a: f64| (1.0 + a) * t1 / (t2 + d);
        println!(
            "| {} | {t1:.3} | {t2:.3} | {t3:.3} | {d:.3} | {:.1}% | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.2}x | 1.8x |",
            r.name,
            100.0 * r.acceptance,
            r.plain_tps,
            r.spec_tps,
            r.spec_tps / r.plain_tps,
            implied(0.85),
            implied(0.90),
        );
    }
    Ok(())
}
