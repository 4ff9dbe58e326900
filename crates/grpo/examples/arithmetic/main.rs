//! GRPO on a toy task, on the CPU in seconds: a tiny policy learns single-digit addition
//! with R1-Zero's rewards (the `judge` crate's accuracy and format rewards).
//!
//! ```text
//! cargo run --release -p grpo --example arithmetic -- [--steps N] [--seed N]
//!     [--variant grpo|dapo|dr-grpo] [--iterations MU] [--svg PATH]
//! ```
//!
//! Prints step, mean training reward, evaluation reward and the untrained baseline, and
//! writes an SVG reward curve (default `target/grpo-arithmetic.svg`).

#[allow(dead_code)] // `Config::quick` is for the integration test
mod toy;

use std::path::PathBuf;

use grpo::{AdvantageScaling, PolicyLossConfig};

fn usage(msg: &str) -> ! {
    eprintln!(
        "error: {msg}\nusage: arithmetic [--steps N] [--seed N] [--variant grpo|dapo|dr-grpo] \
         [--iterations MU] [--svg PATH]"
    );
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = toy::Config::full();
    let mut variant = "grpo".to_string();
    let mut beta: Option<f64> = None;
    let mut log_all = false;
    let mut svg_path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/grpo-arithmetic.svg"
    ));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .unwrap_or_else(|_| usage(&format!("bad number {v}")))
        };
        match flag.as_str() {
            "--steps" => cfg.steps = num(value()),
            "--seed" => cfg.seed = num(value()) as u64,
            "--iterations" => cfg.iterations = num(value()).max(1),
            "--max-grad-norm" => {
                cfg.max_grad_norm = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --max-grad-norm"))
            }
            "--variant" => variant = value(),
            "--max-len" => cfg.max_len = num(value()),
            "--max-sum" => cfg.max_sum = num(value()) as u32,
            "--group" => cfg.group_size = num(value()),
            "--prompts" => cfg.prompts_per_step = num(value()),
            "--lr" => cfg.lr = value().parse().unwrap_or_else(|_| usage("bad --lr")),
            "--eos-bias" => {
                cfg.eos_bias = value().parse().unwrap_or_else(|_| usage("bad --eos-bias"))
            }
            "--beta" => beta = Some(value().parse().unwrap_or_else(|_| usage("bad --beta"))),
            "--svg" => svg_path = PathBuf::from(value()),
            "--log-all" => log_all = true,
            "-h" | "--help" => usage("help requested"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    (cfg.loss, cfg.scaling) = match variant.as_str() {
        "grpo" => (PolicyLossConfig::grpo(), AdvantageScaling::GRPO),
        "dapo" => (PolicyLossConfig::dapo(), AdvantageScaling::GRPO),
        "dr-grpo" => (
            PolicyLossConfig::dr_grpo(cfg.max_len),
            AdvantageScaling::None,
        ),
        other => usage(&format!("unknown variant {other}")),
    };
    if let Some(beta) = beta {
        cfg.loss.beta = beta;
    }
    println!(
        "GRPO ({variant}) on a+b= (a, b in 0..=9, a+b <= {}: {} prompts), {} prompts x {} \
         completions per step, {} steps, seed {}",
        cfg.max_sum,
        toy::all_prompts(&cfg).len(),
        cfg.prompts_per_step,
        cfg.group_size,
        cfg.steps,
        cfg.seed
    );
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>8} {:>7}  example",
        "step", "train", "eval", "acc", "base", "kl"
    );
    let run = toy::train(&cfg, |s| {
        if s.eval.is_none() && log_all {
            println!(
                "{:>5} {:>8.3} {:>8} {:>8} {:>8.3} {:>7.4} {:>8.3}  {}",
                s.step + 1,
                s.train_reward,
                "",
                "",
                s.baseline,
                s.kl,
                s.grad_norm,
                s.example
            );
        }
        if let Some(e) = s.eval {
            println!(
                "{:>5} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.4} {:>8.3}  {}",
                s.step + 1,
                s.train_reward,
                e.total(),
                e.accuracy,
                s.baseline,
                s.kl,
                s.grad_norm,
                s.example
            );
        }
    })?;
    let b = run.baseline;
    println!(
        "baseline (untrained policy): reward {:.3} (accuracy {:.3}, format {:.3})",
        b.total(),
        b.accuracy,
        b.format
    );
    println!(
        "trained policy:              reward {:.3} (accuracy {:.3}, format {:.3}) after {} steps, {:.1} s",
        run.last.total(),
        run.last.accuracy,
        run.last.format,
        cfg.steps,
        run.seconds
    );
    if let Some(dir) = svg_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let title = format!("GRPO ({variant}) on single-digit addition, judge rewards");
    std::fs::write(&svg_path, toy::svg(&run, &title))?;
    println!("reward curve: {}", svg_path.display());
    Ok(())
}
