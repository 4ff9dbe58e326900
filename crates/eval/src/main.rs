//! `eval` command line: judge a JSONL file of responses.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eval::judge::{parse_case_line, Case};
use eval::Judge;
use rayon::prelude::*;

#[derive(Parser)]
#[command(
    name = "eval",
    about = "R1-style answer extraction and rule-based checking"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Judge every line of a JSONL case file; writes one verdict line per input line.
    Judge {
        /// Input JSONL: {"id", "kind", "gold", "response"} per line.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time judging of a case file in process: one thread, then all cores.
    Bench {
        /// Input JSONL case file.
        #[arg(long)]
        input: PathBuf,
        /// Repeat the file this many times per measurement.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
}

fn read_text(path: &PathBuf) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The `id` of a line that is JSON but not a valid case, for the output line.
fn raw_id(line: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(serde_json::Value::Null)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let judge = Judge::default();
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!();
        }
        Some(Command::Judge { input, out }) => {
            let text = read_text(&input)?;
            let lines: Vec<&str> = text.lines().collect();
            let cases: Vec<Result<Case, String>> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| parse_case_line(l, i + 1))
                .collect();
            let verdicts: Vec<String> = cases
                .par_iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Ok(case) => {
                        let v = judge.check(case.kind, &case.gold, &case.response);
                        serde_json::json!({"id": case.id, "correct": v.correct, "extracted": v.extracted}).to_string()
                    }
                    Err(msg) => {
                        eprintln!("{msg}");
                        let id = raw_id(lines[i]);
                        serde_json::json!({"id": id, "correct": false, "extracted": null}).to_string()
                    }
                })
                .collect();
            let sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(
                    fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut w = BufWriter::new(sink);
            for line in verdicts {
                writeln!(w, "{line}")?;
            }
            w.flush()?;
        }
        Some(Command::Bench { input, repeat }) => {
            let text = read_text(&input)?;
            let cases: Vec<Case> = text
                .lines()
                .enumerate()
                .filter_map(|(i, l)| parse_case_line(l, i + 1).ok())
                .collect();
            let n = cases.len() * repeat;
            let run = |c: &Case| judge.check(c.kind, &c.gold, &c.response).correct as usize;
            let t = Instant::now();
            let mut correct = 0;
            for _ in 0..repeat {
                correct += cases.iter().map(run).sum::<usize>();
            }
            let single = n as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..repeat {
                std::hint::black_box(cases.par_iter().map(run).sum::<usize>());
            }
            let all = n as f64 / t.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "cases": cases.len(), "correct": correct / repeat.max(1),
                    "single_thread_cases_per_s": single, "all_cores_cases_per_s": all,
                    "threads": rayon::current_num_threads(),
                })
            );
        }
    }
    Ok(())
}
