//! Times `reward::score_batch` on one thread and on all cores.
//!
//! ```sh
//! cargo run --release -p judge --features parallel --example reward_throughput -- [CASES] [REPEAT]
//! ```
//!
//! `CASES` is a JSONL file of `{"kind", "gold", "response"}` lines (other fields ignored)
//! or a JSON file like `crates/judge-py/tests/cases.json` (default); each measurement
//! scores it `REPEAT` times (default 3). Prints one JSON line.

use std::time::Instant;

use judge::reward::{Completion, RewardConfig};
use judge::{score_batch, Gold, Judge, Kind};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    #[serde(default)]
    kind: Kind,
    gold: Gold,
    response: String,
}

#[derive(Deserialize)]
struct Shared {
    cases: Vec<Case>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../judge-py/tests/cases.json").to_string()
    });
    let repeat: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("reading {path}: {e}");
            std::process::exit(1);
        }
    };
    let cases: Vec<Case> = if path.ends_with(".jsonl") {
        let mut v = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str(line) {
                Ok(c) => v.push(c),
                Err(e) => {
                    eprintln!("{path}:{}: {e}", i + 1);
                    std::process::exit(1);
                }
            }
        }
        v
    } else {
        match serde_json::from_str::<Shared>(&text) {
            Ok(s) => s.cases,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(1);
            }
        }
    };
    let batch: Vec<Completion<'_>> = cases
        .iter()
        .map(|c| Completion::new(c.kind, &c.gold, &c.response))
        .collect();
    let judge = Judge::default();
    let config = RewardConfig::default();
    let time = |pool: &rayon::ThreadPool| {
        let t = Instant::now();
        let mut total = 0.0f64;
        for _ in 0..repeat {
            let r = pool.install(|| score_batch(&judge, &batch, &config));
            total += r.iter().map(|x| f64::from(x.total)).sum::<f64>();
        }
        (
            (batch.len() * repeat) as f64 / t.elapsed().as_secs_f64(),
            total,
        )
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    let all = rayon::ThreadPoolBuilder::new().build();
    let (Ok(one), Ok(all)) = (one, all) else {
        eprintln!("could not start a thread pool");
        std::process::exit(1);
    };
    let (single, a) = time(&one);
    let (multi, b) = time(&all);
    assert_eq!(a, b, "the batch must not depend on the thread count");
    println!(
        "{}",
        serde_json::json!({
            "cases": batch.len(),
            "repeat": repeat,
            "threads": all.current_num_threads(),
            "one_thread_cases_per_s": single,
            "all_threads_cases_per_s": multi,
        })
    );
}
