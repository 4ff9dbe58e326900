//! Structured outputs (`model::structured`): what a constraint costs per generated token,
//! against the unconstrained sampling step it joins (the named baseline, same run), on a
//! real tokenizer's vocabulary. Prints one JSON line.
//!
//! Per token a constrained sample computes the grammar's token mask, sets the other logits to
//! `-inf` and commits the chosen token; the baseline is drawing a token from the same logits
//! with R1's sampling settings (temperature 0.6, top-p 0.95), which every sample pays anyway.
//! Also timed once: indexing the vocabulary (the first constrained request of an engine),
//! compiling the schema (each structure not among the last 64 compiled), and the same
//! schema again (a copy of its kept compilation).
//!
//! Run: `scripts/fetch-tokenizer.sh && cargo run --release -p benchmarks --bin structured`
//! (the DeepSeek-V3 tokenizer, 129,280 logits).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use benchmarks::median_time;
use clap::Parser;
use model::structured::{Grammars, Structure};
use model::{Sampler, SamplingParams, Tokenizer};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Tokenizer directory (tokenizer.json).
    #[arg(long, default_value = "target/deepseek-v3-tokenizer")]
    tokenizer: PathBuf,
    /// Logits per row (the model's vocabulary: DeepSeek-V3's by default).
    #[arg(long, default_value_t = 129_280)]
    vocab: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tok = Tokenizer::from_dir(&args.tokenizer)?;
    let eos = tok.eos_id().unwrap_or(1);

    let t = Instant::now();
    let grammars = Grammars::new(&tok, args.vocab, eos)?;
    let index_s = t.elapsed().as_secs_f64();

    // A typical extraction schema, and an answer that follows it.
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
            "unit": {"enum": ["m", "s", "kg", "none"]}},
        "required": ["answer", "confidence", "steps", "unit"]});
    let answer = r#"{"answer": "The train covers 120 km in 1.5 hours, so its speed is 80 km/h.", "confidence": 0.92, "steps": ["distance = 120 km", "time = 1.5 h", "speed = distance / time = 80 km/h"], "unit": "none"}"#;
    let structure = Structure::JsonSchema(schema);
    let t = Instant::now();
    let fresh = grammars.constraint(&structure)?;
    let compile_s = t.elapsed().as_secs_f64();
    // The same structure again (the next sample or request): a copy of the kept start state.
    let t = Instant::now();
    let again = grammars.constraint(&structure)?;
    let again_s = t.elapsed().as_secs_f64();
    drop(again);

    let tokens = tok.encode_plain(answer)?;
    // Logits that favour nothing in particular (the mask cost does not depend on them).
    let logits: Vec<f32> = (0..args.vocab)
        .map(|i| ((i as f32) * 0.618).sin() * 4.0)
        .collect();

    // Mask + commit along the answer, token by token (each sample repeats the walk).
    let mut per_token = Vec::new();
    let mut c = fresh.clone();
    for &token in &tokens {
        let mut row = logits.clone();
        let t = Instant::now();
        c.mask(&mut row)?;
        c.commit(token)?;
        per_token.push(t.elapsed().as_secs_f64());
        ensure!(
            row[token as usize].is_finite(),
            "the schema refused its own answer"
        );
    }
    ensure!(c.finished(), "the answer did not complete the schema");
    per_token.sort_by(f64::total_cmp);
    let mask_median_ms = per_token[per_token.len() / 2] * 1e3;
    let mask_mean_ms = per_token.iter().sum::<f64>() / per_token.len() as f64 * 1e3;

    let mut sampler = Sampler::new(SamplingParams::r1_chat(0));
    let sample_ms = median_time(3, 21, || sampler.sample(&logits)).as_secs_f64() * 1e3;

    println!(
        "{}",
        json!({
            "tokenizer": args.tokenizer.display().to_string(),
            "vocab": args.vocab,
            "index_s": index_s,
            "compile_ms": compile_s * 1e3,
            "compiled_again_ms": again_s * 1e3,
            "answer_tokens": tokens.len(),
            "mask_commit_median_ms": mask_median_ms,
            "mask_commit_mean_ms": mask_mean_ms,
            "baseline_sample_ms": sample_ms,
            "mask_over_sample": mask_mean_ms / sample_ms,
        })
    );
    Ok(())
}
