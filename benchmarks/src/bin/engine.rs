//! Serving throughput of the continuous-batching engine (issue #15): aggregate decode tok/s
//! and time to first token at several numbers of concurrent streams, in both engine modes,
//! and the cost of `n` samples of one prompt.
//!
//! For each concurrency `c`, `c` requests with distinct deterministic `--prompt-len`-token
//! prompts are submitted at once (`ignore_eos`, a budget none reaches). Reported:
//! - `ttft_*`: seconds from submission to each request's first token (queueing behind the
//!   other prefills included: the last of 64 waits for 64 prefills);
//! - `decode_tok_s`: once every stream has its first token, the time for the next
//!   `c · --new-tokens` tokens, all streams decoding together in every step (what llama.cpp's
//!   `llama-batched-bench` reports as S_TG). The streams are then cancelled.
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
use model::{DeepSeek, Precision, SamplingParams};

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
    /// Sampling temperature of every request (0: greedy; DeepSeek's R1 evaluations: 0.6).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus mass of every request (R1's evaluations: 0.95).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// bf16 matrices multiply bf16-rounded activations (`model serve --bf16-activations`).
    #[arg(long)]
    bf16_activations: bool,
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

/// What one burst of `c` simultaneous requests measured.
struct Burst {
    /// Seconds from submission to each request's first token.
    ttft: Vec<f64>,
    /// Tokens per second once every stream was decoding (no prefill left, none finished).
    decode_tok_s: f64,
}

/// Submits `prompts` at once with a budget none of them reaches, waits until every stream
/// has its first token (all prefills done), then times the next `window` tokens of all streams
/// together (every step decodes all of them: llama-batched-bench's S_TG), and cancels them.
fn burst(
    engine: &Engine,
    prompts: Vec<Vec<u32>>,
    window: usize,
    sampling: SamplingParams,
) -> Result<Burst> {
    let t0 = Instant::now();
    let (tx, rx) = channel();
    let count = prompts.len();
    let mut ids = Vec::new();
    for (i, prompt) in prompts.into_iter().enumerate() {
        let tx = tx.clone();
        ids.push(engine.submit(
            Request {
                prompt,
                params: RequestParams {
                    max_tokens: MAX_TOKENS,
                    ignore_eos: true,
                    sampling: SamplingParams {
                        seed: i as u64,
                        ..sampling
                    },
                    ..RequestParams::default()
                },
            },
            Box::new(move |e| tx.send((i, e, t0.elapsed().as_secs_f64())).is_ok()),
        )?);
    }
    drop(tx);
    let mut ttft = vec![f64::NAN; count];
    let mut started = 0;
    let mut window_start = None;
    let mut in_window = 0;
    let decode_tok_s = loop {
        let (i, e, t) = rx.recv()?;
        match e {
            Event::Token { .. } if ttft[i].is_nan() => {
                ttft[i] = t;
                started += 1;
                if started == count {
                    window_start = Some(t);
                }
            }
            Event::Token { .. } => {
                if let Some(t_start) = window_start {
                    in_window += 1;
                    if in_window == window {
                        break in_window as f64 / (t - t_start);
                    }
                }
            }
            // Its requests do not score their prompts.
            Event::Prompt { .. } => {}
            Event::Finished { .. } => anyhow::bail!("request {i} ended before the window"),
            Event::Error(e) => anyhow::bail!("request {i}: {e}"),
        }
    };
    for id in ids {
        engine.cancel(id);
    }
    let mut open = count;
    while open > 0 {
        if let (_, Event::Finished { .. } | Event::Error(_), _) = rx.recv()? {
            open -= 1;
        }
    }
    Ok(Burst { ttft, decode_tok_s })
}

/// A budget no stream of a burst reaches before it is cancelled.
const MAX_TOKENS: usize = 16 * 1024;

fn main() -> Result<()> {
    let args = Args::parse();
    // As the CLI does: large tensors reuse freed heap pages, and what the load copies lands
    // in huge pages from the first touch.
    model::host_memory::prepare_heap_for(&args.model);
    let model = Arc::new(DeepSeek::load_with(
        &args.model,
        &Device::Cpu,
        |checkpoint| {
            Precision::auto(checkpoint, DType::F32, &Device::Cpu)
                .with_bf16_activations(args.bf16_activations)
        },
    )?);
    let vocab = model.config().vocab_size;
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: 0,
        seed: 0,
    };
    let params = RequestParams {
        max_tokens: args.new_tokens,
        ignore_eos: true,
        sampling,
        ..RequestParams::default()
    };
    let mut rows = Vec::new();
    // The named baseline: one stream through `model::generate` (no engine), same prompt.
    {
        let p = prompt(0, args.prompt_len, vocab);
        let opts = GenerateOptions {
            max_new_tokens: args.new_tokens,
            sampling,
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
            // Reservations assume MAX_TOKENS per stream; only what is written is allocated.
            cache_tokens: (max_c * (args.prompt_len + MAX_TOKENS))
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
            let prompts = (0..c).map(|i| prompt(i, args.prompt_len, vocab)).collect();
            let b = burst(&engine, prompts, c * args.new_tokens, sampling)?;
            let mut sorted = b.ttft.clone();
            sorted.sort_by(f64::total_cmp);
            let row = serde_json::json!({
                "mode": mode, "concurrency": c, "decode_tok_s": b.decode_tok_s,
                "ttft_mean": b.ttft.iter().sum::<f64>() / c as f64,
                "ttft_p50": sorted[c / 2], "ttft_max": sorted[c - 1],
            });
            println!("{row}");
            rows.push(row);
        }
        if args.samples > 0 {
            // Distinct prompts, so the second request finds nothing of the first in the prefix
            // cache.
            let timed = |n: usize| -> Result<(f64, u64)> {
                let p = prompt(1000 + n, args.samples_prompt, vocab);
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
