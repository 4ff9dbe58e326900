//! `eval` command line. With no subcommand it runs the bundled suite and writes its
//! reports to `eval-out/bundled/` (relative to the current folder).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use eval::cases::{parse_case_line, Case};
use eval::report::{write_all, Report, REPORT_VERSION};
use eval::run::{run_task, RunOptions};
use eval::sft::{ExportOptions, OnePerProblem};
use eval::source::cache::Cache;
use eval::source::file::ResponseFile;
use eval::source::openai::{Api, OpenAi, OpenAiConfig};
use eval::source::pool::EndpointPool;
use eval::source::ResponseSource;
use eval::task::Task;
use eval::{AnswerPolicy, JudgeConfig};
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

// Parsed once per process; boxing the `Run` variant would only obscure the code.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the bundled suite (the default when no subcommand is given).
    Suite {
        /// Report folder.
        #[arg(long, default_value = "eval-out/bundled")]
        out: PathBuf,
    },
    /// Run task files against a responses file, an OpenAI-compatible endpoint or a local model.
    Run {
        /// Task YAML files, or names of built-in tasks (math500, gsm8k, humaneval...).
        #[arg(long = "task", required = true)]
        tasks: Vec<String>,
        /// Responses from a file (JSONL: id, sample, text).
        #[arg(long, conflicts_with = "endpoint")]
        responses: Option<PathBuf>,
        /// OpenAI-compatible server (http://host:port[/v1]); repeat it to spread the samples
        /// over several servers of the same model (a failing one is rested and its samples go
        /// to the others).
        #[arg(long, requires = "model")]
        endpoint: Vec<String>,
        /// Model name for the endpoint.
        #[arg(long)]
        model: Option<String>,
        /// A local DeepSeek checkpoint as the source (needs `--features local-model`).
        #[arg(long, conflicts_with_all = ["responses", "endpoint"])]
        model_dir: Option<PathBuf>,
        /// Tokenizer directory for --model-dir (default: the checkpoint directory).
        #[arg(long, requires = "model_dir")]
        tokenizer: Option<PathBuf>,
        /// For --model-dir: MTP speculative decoding with the checkpoint's MTP modules (same
        /// greedy responses, same sampling distribution; an error without MTP modules).
        #[arg(long, requires = "model_dir")]
        mtp: bool,
        /// Endpoint kind.
        #[arg(long, value_enum, default_value_t = Api::Chat)]
        api: Api,
        /// Requests in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Response cache (default: OUT/responses.jsonl).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Retries per request.
        #[arg(long, default_value_t = 6)]
        retries: u32,
        /// First retry backoff in milliseconds (doubles per retry, with jitter).
        #[arg(long, default_value_t = 500)]
        backoff_ms: u64,
        /// Override the task's per-request timeout (seconds).
        #[arg(long)]
        request_timeout: Option<f64>,
        /// Override samples per problem.
        #[arg(long)]
        samples: Option<usize>,
        /// Use only the first N problems.
        #[arg(long)]
        limit: Option<usize>,
        /// Folder substituted for `{data_dir}` in dataset paths (default: $EVAL_DATA_DIR,
        /// else ../shared/data beside the repository).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Sandbox workers for code tasks.
        #[arg(long)]
        workers: Option<usize>,
        /// Report folder.
        #[arg(long, default_value = "eval-out/run")]
        out: PathBuf,
    },
    /// Compare two report.json files; exits 1 when a sample regressed.
    Diff {
        /// The reference report.
        old: PathBuf,
        /// The new report.
        new: PathBuf,
    },
    /// Judge every line of a JSONL case file; writes one verdict line per input line
    /// ({"id", "correct", "extracted", "format", "format_ok"}).
    Judge {
        /// Input JSONL: {"id", "kind", "gold", "response"} per line, optionally with
        /// "policy" and "think_prefilled" overriding the options below.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Which final answers count: careful (a clear final answer, boxed or not) or
        /// strict (only a final \boxed{} after the reasoning, R1's rule-based reward).
        #[arg(long, default_value = "careful", value_parser = parse_policy)]
        policy: AnswerPolicy,
        /// The prompts pre-filled `<think>`: a response without `</think>` has no answer.
        #[arg(long)]
        think_prefilled: bool,
    },
    /// Write the correct, well-formed samples of a finished run as chat SFT data (JSONL,
    /// {"messages": [...], "id", "task", "sample"} per line; TRL's conversational format).
    ExportSft {
        /// The run's report folder (holding samples.jsonl), or a samples.jsonl file.
        #[arg(long)]
        run: PathBuf,
        /// Output JSONL file.
        #[arg(long)]
        out: PathBuf,
        /// Keep one sample per problem: the shortest or a random one (see --seed).
        #[arg(long, value_enum)]
        one_per_problem: Option<OnePerProblem>,
        /// Seed of --one-per-problem random.
        #[arg(long, default_value_t = 0)]
        seed: u64,
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

fn parse_policy(s: &str) -> Result<AnswerPolicy, String> {
    s.parse().map_err(|e: eval::JudgeError| e.to_string())
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

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EVAL_DATA_DIR") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("../shared/data");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn load_task(spec: &str) -> Result<Task> {
    let p = Path::new(spec);
    if p.exists() || spec.ends_with(".yaml") || spec.ends_with(".yml") {
        return Ok(Task::load(p)?);
    }
    eval::task::builtin(spec).with_context(|| {
        let names: Vec<&str> = eval::task::BUILTIN.iter().map(|(n, _)| *n).collect();
        format!(
            "{spec}: no such file or built-in task ({})",
            names.join(", ")
        )
    })
}

fn print_written(report: &Report, out: &Path) -> Result<()> {
    let w = write_all(report, out)?;
    print!("{}", eval::report::markdown::render(report));
    println!(
        "\nReports written to {}/ ({}, {}, {}, {})",
        out.display(),
        w.markdown.file_name().unwrap().to_string_lossy(),
        w.json.file_name().unwrap().to_string_lossy(),
        w.html.file_name().unwrap().to_string_lossy(),
        w.samples.file_name().unwrap().to_string_lossy()
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Suite {
        out: PathBuf::from("eval-out/bundled"),
    });
    match command {
        Command::Suite { out } => {
            let report = runtime()?.block_on(eval::suite::run(&RunOptions::default()))?;
            print_written(&report, &out)?;
        }
        Command::Run {
            tasks,
            responses,
            endpoint,
            model,
            model_dir,
            tokenizer,
            mtp,
            api,
            concurrency,
            cache,
            retries,
            backoff_ms,
            request_timeout,
            samples,
            limit,
            data_dir,
            workers,
            out,
        } => {
            let config = |url: &String| {
                let mut c = OpenAiConfig::new(url, model.as_deref().unwrap_or_default());
                c.api = api;
                c.max_retries = retries;
                c.backoff_base = std::time::Duration::from_millis(backoff_ms);
                c.api_key = std::env::var("OPENAI_API_KEY").ok();
                c
            };
            let source: Arc<dyn ResponseSource> = match (&responses, endpoint.as_slice()) {
                _ if model_dir.is_some() => {
                    local_source(model_dir.as_deref(), tokenizer.as_deref(), mtp)?
                }
                (Some(r), _) => Arc::new(ResponseFile::load(r)?),
                (None, [url]) => Arc::new(OpenAi::new(config(url))?),
                (None, []) => {
                    bail!("give --responses FILE, --endpoint URL --model NAME or --model-dir DIR")
                }
                (None, urls) => Arc::new(EndpointPool::new(
                    urls.iter().map(config).collect(),
                    std::time::Duration::from_secs(30),
                )?),
            };
            let cache = if source.wants_cache() {
                let p = cache.unwrap_or_else(|| out.join("responses.jsonl"));
                let c = Cache::open(&p)?;
                eprintln!("response cache: {} ({} cached)", p.display(), c.len());
                Some(Arc::new(c))
            } else {
                None
            };
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            let mut opts = RunOptions {
                concurrency,
                ..RunOptions::default()
            };
            if let Some(w) = workers {
                opts.workers = w;
            }
            let rt = runtime()?;
            let mut reports = Vec::new();
            for spec in &tasks {
                let mut task = load_task(spec)?;
                if let Some(t) = request_timeout {
                    task.limits.request_timeout_s = t;
                }
                if let Some(k) = samples {
                    task.samples = k;
                }
                if limit.is_some() {
                    task.dataset.limit = limit;
                }
                let problems = eval::dataset::load(&task, &task.dataset_path(&data_dir))?;
                reports.push(rt.block_on(run_task(
                    &task,
                    &problems,
                    source.clone(),
                    cache.clone(),
                    &opts,
                ))?);
            }
            let report = Report {
                version: REPORT_VERSION,
                name: tasks.join(" "),
                tasks: reports,
            };
            print_written(&report, &out)?;
            let errors: usize = report.tasks.iter().map(|t| t.metrics.errors).sum();
            if errors > 0 {
                eprintln!("{errors} samples could not be generated; rerun to resume");
                std::process::exit(2);
            }
        }
        Command::Diff { old, new } => {
            let read = |p: &PathBuf| -> Result<serde_json::Value> {
                serde_json::from_str(&read_text(p)?)
                    .with_context(|| format!("parsing {}", p.display()))
            };
            let changes = eval::diff::diff(&read(&old)?, &read(&new)?)?;
            let (text, regressions) = eval::diff::render(&changes);
            print!("{text}");
            if regressions > 0 {
                std::process::exit(1);
            }
        }
        Command::Judge {
            input,
            out,
            policy,
            think_prefilled,
        } => {
            let base = JudgeConfig {
                policy,
                think_prefilled,
                ..JudgeConfig::default()
            };
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
                        let v = case.judge(base).check(case.kind, &case.gold, &case.response);
                        serde_json::json!({
                            "id": case.id, "correct": v.correct, "extracted": v.extracted,
                            "format": eval::run::format_name(v.format),
                            "format_ok": v.format.is_valid(),
                        })
                        .to_string()
                    }
                    Err(msg) => {
                        eprintln!("{msg}");
                        let id = raw_id(lines[i]);
                        serde_json::json!({"id": id, "correct": false, "extracted": null, "format": null, "format_ok": false}).to_string()
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
        Command::ExportSft {
            run,
            out,
            one_per_problem,
            seed,
        } => {
            let opts = ExportOptions {
                one_per_problem,
                seed,
            };
            let s = eval::sft::export(&run, &out, &opts)?;
            eprintln!(
                "kept {} of {} samples ({} correct and well-formed; {} of {} problems) -> {}",
                s.written,
                s.samples,
                s.eligible,
                s.problems_written,
                s.problems,
                out.display()
            );
        }
        Command::Bench { input, repeat } => {
            let text = read_text(&input)?;
            let cases: Vec<Case> = text
                .lines()
                .enumerate()
                .filter_map(|(i, l)| parse_case_line(l, i + 1).ok())
                .collect();
            let n = cases.len() * repeat;
            let run = |c: &Case| {
                c.judge(JudgeConfig::default())
                    .check(c.kind, &c.gold, &c.response)
                    .correct as usize
            };
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

#[cfg(feature = "local-model")]
fn local_source(
    dir: Option<&Path>,
    tokenizer: Option<&Path>,
    mtp: bool,
) -> Result<Arc<dyn ResponseSource>> {
    use model::generate::Decoding;
    let dir = dir.expect("checked by the caller");
    let decoding = if mtp { Decoding::Mtp } else { Decoding::Plain };
    Ok(Arc::new(
        eval::source::local::LocalModel::load(dir, tokenizer)?.with_decoding(decoding)?,
    ))
}

#[cfg(not(feature = "local-model"))]
fn local_source(_: Option<&Path>, _: Option<&Path>, _: bool) -> Result<Arc<dyn ResponseSource>> {
    bail!(
        "--model-dir needs the local model: build with `cargo run -p eval --features local-model`"
    )
}
