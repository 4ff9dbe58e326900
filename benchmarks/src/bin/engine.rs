//! Serving throughput of the continuous-batching engine (issue #15): aggregate decode tok/s
//! and time to first token at several numbers of concurrent streams, in both engine modes,
//! and the cost of `n` samples of one prompt.
//!
//! For each concurrency `c`, `c` requests with distinct deterministic `--prompt-len`-token
//! prompts and `--new-tokens` tokens each (`ignore_eos`) are submitted at once. Reported:
//! - `ttft_*`: seconds from submission to each request's first token (prefill queueing
//!   included: the last of 64 waits for 64 prefills);
//! - `decode_tok_s`: tokens generated per second while all `c` streams were decoding (the
//!   window from the last first token to the first finish), what llama.cpp's
//!   `llama-batched-bench` reports as S_TG;
//! - `e2e_tok_s`: all generated tokens over the whole wall time.
//!
//! The `n` line: one request with `--samples` samples of a `--samples-prompt`-token prompt;
//! the engine's prompt-token counter shows how many prompt tokens were prefilled (one
//! prefill: the prompt's length) and the wall time compares with one sample.
//!
//! Run: `cargo run --release -p benchmarks --bin engine -- --model DIR` (see
//! `benchmarks/README.md`). The last line of output is JSON.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Parser;
use model::engine::{Engine, EngineConfig, Event, Request, RequestParams};
use model::generate::{generate, GenerateOptions};
use model::DeepSeek;

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Concurrent streams to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Engine modes to measure: invariant (batch-invariant, the default) and/or fast.
    #[arg(long, value_delimiter = ',', default_value = "invariant,fast")]
    modes: Vec<String>,
    /// Samples of one prompt for the shared-prefill line (0 skips it).
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Prompt tokens of the shared-prefill line.
    #[arg(long, default_value_t = 2048)]
    samples_prompt: usize,
}

/// Deterministic prompt `i` of `len` ids below `vocab`.
fn prompt(i: usize, len: usize, vocab: usize) -> Vec<u32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab as u64) as u32
        })
        .collect()
}

/// Token timestamps of each request, measured from `t0`.
fn run(engine: &Engine, requests: Vec<Request>) -> Result<(Vec<Vec<f64>>, f64)> {
    let t0 = Instant::now();
    let (tx, rx) = channel();
    let count = requests.len();
    for (i, r) in requests.into_iter().enumerate() {
        let tx = tx.clone();
        engine.submit(
            r,
            Box::new(move |e| tx.send((i, e, t0.elapsed().as_secs_f64())).is_ok()),
        )?;
    }
    drop(tx);
    let mut times = vec![Vec::new(); count];
    let mut open = count;
    while open > 0 {
        let (i, e, t) = rx.recv()?;
        match e {
            Event::Token { .. } => times[i].push(t),
            Event::Finished { .. } => open -= 1,
            Event::Error(e) => anyhow::bail!("request {i}: {e}"),
        }
    }
    Ok((times, t0.elapsed().as_secs_f64()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let model = Arc::new(DeepSeek::load_auto(&args.model, DType::F32, &Device::Cpu)?);
    let vocab = model.config().vocab_size;
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let params = RequestParams {
        max_tokens: args.new_tokens,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let mut rows = Vec::new();
    // The named baseline: one stream through `model::generate` (no engine), same prompt.
    {
        let p = prompt(0, args.prompt_len, vocab);
        let opts = GenerateOptions {
            max_new_tokens: args.new_tokens,
            ..GenerateOptions::default()
        };
        generate(
            &model,
            &p[..32.min(p.len())],
            &GenerateOptions {
                max_new_tokens: 4,
                ..opts.clone()
            },
            |_| Ok(true),
        )?;
        let g = generate(&model, &p, &opts, |_| Ok(true))?;
        let row = serde_json::json!({
            "mode": "generate (no engine)", "concurrency": 1,
            "decode_tok_s": g.decode_tokens_per_sec(), "ttft_mean": g.prefill_secs,
        });
        println!("{row}");
        rows.push(row);
    }
    for mode in &args.modes {
        let config = EngineConfig {
            max_running: max_c.max(args.samples),
            cache_tokens: (max_c * (args.prompt_len + args.new_tokens))
                .max(args.samples_prompt + args.samples * (args.new_tokens + 512))
                * 2,
            batch_invariant: mode != "fast",
            ..EngineConfig::default()
        };
        let engine = Engine::start(model.clone(), None, config)?;
        // Warm-up: one short request.
        engine.generate(Request {
            prompt: prompt(usize::MAX, 32, vocab),
            params: RequestParams {
                max_tokens: 4,
                ..params.clone()
            },
        })?;
        for &c in &args.concurrency {
            let requests = (0..c)
                .map(|i| Request {
                    prompt: prompt(i, args.prompt_len, vocab),
                    params: params.clone(),
                })
                .collect();
            let (times, wall) = run(&engine, requests)?;
            let firsts: Vec<f64> = times.iter().map(|t| t[0]).collect();
            let lasts: Vec<f64> = times.iter().map(|t| *t.last().unwrap()).collect();
            let (lo, hi) = (
                firsts.iter().copied().fold(0.0, f64::max),
                lasts.iter().copied().fold(f64::INFINITY, f64::min),
            );
            let in_window = times
                .iter()
                .flatten()
                .filter(|&&t| t > lo && t <= hi)
                .count();
            let decode = if hi > lo {
                in_window as f64 / (hi - lo)
            } else {
                f64::NAN
            };
            let total: usize = times.iter().map(Vec::len).sum();
            let mut sorted = firsts.clone();
            sorted.sort_by(f64::total_cmp);
            let row = serde_json::json!({
                "mode": mode, "concurrency": c, "decode_tok_s": decode,
                "e2e_tok_s": total as f64 / wall,
                "ttft_mean": firsts.iter().sum::<f64>() / c as f64,
                "ttft_p50": sorted[c / 2], "ttft_max": sorted[c - 1], "wall_s": wall,
            });
            println!("{row}");
            rows.push(row);
        }
        if args.samples > 0 {
            let p = prompt(7, args.samples_prompt, vocab);
            let timed = |n: usize| -> Result<(f64, u64)> {
                let before = engine.stats().prompt_tokens;
                let t0 = Instant::now();
                engine.generate(Request {
                    prompt: p.clone(),
                    params: RequestParams {
                        n,
                        max_tokens: 16,
                        ..params.clone()
                    },
                })?;
                Ok((
                    t0.elapsed().as_secs_f64(),
                    engine.stats().prompt_tokens - before,
                ))
            };
            let (one, _) = timed(1)?;
            let (many, prefilled) = timed(args.samples)?;
            let row = serde_json::json!({
                "mode": mode, "samples": args.samples, "prompt": args.samples_prompt,
                "prompt_tokens_prefilled": prefilled, "wall_one_s": one, "wall_n_s": many,
            });
            println!("{row}");
            rows.push(row);
        }
        engine.shutdown();
    }
    println!("{}", serde_json::Value::Array(rows));
    Ok(())
}
