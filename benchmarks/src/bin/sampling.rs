//! The sampler's cost per token over DeepSeek's 129,280-token vocabulary with R1's settings
//! (temperature 0.6, top-p 0.95) and OpenAI's defaults (temperature 1, no truncation),
//! against the full sort of the vocabulary the sampler used to make
//! (`Sampler::distribution_by_full_sort` and a draw: the named baseline, same run). Every
//! sample of every running sequence pays it once per step, so at 64 sampled streams it is 64
//! times per step. Prints one JSON line per logit shape:
//! `peaked` (Zipf-like: a language model's usual next-token distribution, where top-p keeps
//! a few tokens) and `flat` (a random model's, where it keeps most of them).
//!
//! Run: `cargo run --release -p benchmarks --bin sampling`

use anyhow::Result;
use benchmarks::median_time;
use clap::Parser;
use model::{Sampler, SamplingParams};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Logits per row.
    #[arg(long, default_value_t = 129_280)]
    vocab: usize,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 31)]
    iters: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let v = args.vocab;
    // A fixed scrambling of ids, so that likely tokens are not the low ids.
    let scramble = |i: usize| (i.wrapping_mul(2_654_435_761) % v) as f32;
    let shapes: [(&str, Vec<f32>); 2] = [
        // Zipf: logit = -1.2 ln(rank), ranks scattered over the ids.
        (
            "peaked",
            (0..v).map(|i| -1.2 * (1.0 + scramble(i)).ln()).collect(),
        ),
        (
            "flat",
            (0..v).map(|i| (scramble(i) * 0.618).sin()).collect(),
        ),
    ];
    let settings = [
        ("r1 (t 0.6, top-p 0.95)", SamplingParams::r1_chat(0)),
        (
            "openai default (t 1)",
            SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                seed: 0,
            },
        ),
    ];
    for (shape, logits) in &shapes {
        for (name, params) in settings {
            let mut sampler = Sampler::new(params);
            let ours = median_time(3, args.iters, || sampler.sample(logits));
            let mut by_sort = Sampler::new(params);
            let sort = median_time(3, args.iters, || {
                let dist = by_sort.distribution_by_full_sort(logits);
                by_sort.draw(&dist)
            });
            let kept = Sampler::new(params).distribution(logits).len();
            println!(
                "{}",
                json!({
                    "logits": shape,
                    "settings": name,
                    "vocab": v,
                    "tokens_kept": kept,
                    "sampler_ms": ours.as_secs_f64() * 1e3,
                    "full_sort_ms": sort.as_secs_f64() * 1e3,
                    "speedup": sort.as_secs_f64() / ours.as_secs_f64(),
                })
            );
        }
    }
    Ok(())
}
