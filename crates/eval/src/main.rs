//! `eval` command line. With no subcommand it runs the bundled judge and harness self-test
//! (reports in `eval-out/bundled/`, relative to the current folder), then says which
//! benchmark data is in the data folder (`eval suite --responses ...` also scores it).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use eval::cases::{parse_case_line, Case};
use eval::report::{write_all, Report, REPORT_VERSION};
use eval::run::{run_task, GraderSource, RunOptions};
use eval::sft::{ExportOptions, OnePerProblem};
use eval::source::cache::Cache;
use eval::source::file::ResponseFile;
use eval::source::openai::{Api, OpenAi, OpenAiConfig};
use eval::source::pool::EndpointPool;
use eval::source::ResponseSource;
use eval::task::{Checker, Grader, Task};
use eval::{AnswerPolicy, JudgeConfig};
use rayon::prelude::*;

#[derive(Parser)]
#[command(
    name = "eval",
    about = "R1-style evaluation: the bundled judge and harness self-test, benchmark tasks on \
             model responses, benchmark data, answer checking"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where responses come from and how a run goes (shared by `run` and the default run).
#[derive(Args)]
struct SourceArgs {
    /// Responses from a file (JSONL: id, sample, text; optionally task).
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
    /// Override the generated-token budget per response.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sandbox workers for code tasks.
    #[arg(long)]
    workers: Option<usize>,
    /// Grade factual tasks (SimpleQA) with the official simple-evals grader prompt on this
    /// OpenAI-compatible server instead of the rules (also what tasks with `grader: llm` use).
    #[arg(long, requires = "grader_model")]
    grader_endpoint: Option<String>,
    /// Model name for the grader endpoint.
    #[arg(long, requires = "grader_endpoint")]
    grader_model: Option<String>,
}

// Parsed once per process; boxing the `Run` variant would only obscure the code.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The default run: the bundled judge and harness self-test (responses written for the
    /// suite, not model output), then the built-in tasks whose data is in the data folder,
    /// on the response source given (none given: they are listed, not scored).
    Suite {
        /// Report folder of the self-test.
        #[arg(long, default_value = "eval-out/bundled")]
        out: PathBuf,
        /// Report folder of the real tasks.
        #[arg(long, default_value = "eval-out/real")]
        real_out: PathBuf,
        /// Benchmark data folder (default: $EVAL_DATA_DIR, else ~/.cache/deepseek-eval/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Run task files against a responses file, an OpenAI-compatible endpoint or a local model.
    Run {
        /// Task YAML files, or names of built-in tasks (math500, gsm8k, humaneval...).
        #[arg(long = "task", required = true)]
        tasks: Vec<String>,
        /// Folder substituted for `{data_dir}` in dataset paths (default: $EVAL_DATA_DIR,
        /// else ~/.cache/deepseek-eval/data, where `eval data fetch` writes).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Report folder.
        #[arg(long, default_value = "eval-out/run")]
        out: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Benchmark data of the built-in tasks: list sources and status, fetch and verify.
    Data {
        #[command(subcommand)]
        command: DataCommand,
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

#[derive(Subcommand)]
enum DataCommand {
    /// Every built-in task: where its data comes from, licence and restrictions, pinned
    /// SHA-256, and whether it is in the data folder.
    List {
        /// Data folder (default: $EVAL_DATA_DIR, else ~/.cache/deepseek-eval/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Download tasks' data over HTTPS (build with `--features https`), verify the pinned
    /// SHA-256 before writing anything, convert to the task's file.
    Fetch {
        /// Built-in task names, or `all`.
        #[arg(required = true)]
        tasks: Vec<String>,
        /// Data folder (default: $EVAL_DATA_DIR, else ~/.cache/deepseek-eval/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Fetch every URL from MIRROR/HOST/PATH instead of https://HOST/PATH.
        #[arg(long)]
        mirror: Option<String>,
        /// Download sources that have no pinned SHA-256 (their hash is printed and
        /// recorded in DATA_DIR/SOURCE.source.json).
        #[arg(long)]
        allow_unpinned: bool,
        /// GPQA: seed of the A-D shuffle (recorded in every row).
        #[arg(long, default_value_t = 0)]
        gpqa_seed: u64,
        /// LiveCodeBench release N (release_vN: v1 to v6); the task YAMLs pick the date window.
        #[arg(long, default_value_t = 5)]
        lcb_release: usize,
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

/// `$EVAL_DATA_DIR`, else the user's cache folder + `deepseek-eval/data`
/// (`$XDG_CACHE_HOME` or `~/.cache`; macOS `~/Library/Caches`; Windows `%LOCALAPPDATA%`).
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EVAL_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let cache = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home().map(|h| h.join("Library/Caches"))
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| home().map(|h| h.join(".cache")))
    };
    cache
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("deepseek-eval/data")
}

impl SourceArgs {
    fn openai(&self, url: &str, model: &str) -> OpenAiConfig {
        let mut c = OpenAiConfig::new(url, model);
        c.api = self.api;
        c.max_retries = self.retries;
        c.backoff_base = std::time::Duration::from_millis(self.backoff_ms);
        c.api_key = std::env::var("OPENAI_API_KEY").ok();
        c
    }

    /// The response source, `None` when none was given.
    fn source(&self) -> Result<Option<Arc<dyn ResponseSource>>> {
        let model = self.model.as_deref().unwrap_or_default();
        Ok(Some(match (&self.responses, self.endpoint.as_slice()) {
            _ if self.model_dir.is_some() => local_source(
                self.model_dir.as_deref(),
                self.tokenizer.as_deref(),
                self.mtp,
            )?,
            (Some(r), _) => Arc::new(ResponseFile::load(r)?),
            (None, []) => return Ok(None),
            (None, [url]) => Arc::new(OpenAi::new(self.openai(url, model))?),
            (None, urls) => Arc::new(EndpointPool::new(
                urls.iter().map(|u| self.openai(u, model)).collect(),
                std::time::Duration::from_secs(30),
            )?),
        }))
    }

    fn run_options(&self) -> Result<RunOptions> {
        let mut opts = RunOptions {
            concurrency: self.concurrency,
            ..RunOptions::default()
        };
        if let Some(w) = self.workers {
            opts.workers = w;
        }
        if let (Some(url), Some(model)) = (&self.grader_endpoint, &self.grader_model) {
            opts.grader = Some(GraderSource(Arc::new(OpenAi::new(
                self.openai(url, model),
            )?)));
        }
        Ok(opts)
    }

    /// The command-line overrides of a task.
    fn apply(&self, task: &mut Task) {
        if let Some(t) = self.request_timeout {
            task.limits.request_timeout_s = t;
        }
        if let Some(k) = self.samples {
            task.samples = k;
        }
        if self.limit.is_some() {
            task.dataset.limit = self.limit;
        }
        if let Some(m) = self.max_tokens {
            task.sampling.max_tokens = m;
        }
        if self.grader_endpoint.is_some() && task.checker == Checker::Factual {
            task.grader = Grader::Llm;
        }
    }
}

/// Runs tasks on a source and writes the report; the number of samples without a response.
fn run_tasks(
    mut tasks: Vec<Task>,
    source: Arc<dyn ResponseSource>,
    args: &SourceArgs,
    data_dir: &Path,
    out: &Path,
    name: String,
) -> Result<usize> {
    let opts = args.run_options()?;
    let cache = if source.wants_cache() || opts.grader.is_some() {
        let p = args
            .cache
            .clone()
            .unwrap_or_else(|| out.join("responses.jsonl"));
        let c = Cache::open(&p)?;
        eprintln!("response cache: {} ({} cached)", p.display(), c.len());
        Some(Arc::new(c))
    } else {
        None
    };
    let rt = runtime()?;
    let mut reports = Vec::new();
    for task in &mut tasks {
        args.apply(task);
        let problems = eval::dataset::load(task, &task.dataset_path(data_dir))?;
        reports.push(rt.block_on(run_task(
            task,
            &problems,
            source.clone(),
            cache.clone(),
            &opts,
        ))?);
    }
    let report = Report {
        version: REPORT_VERSION,
        name,
        tasks: reports,
    };
    print_written(&report, out)?;
    Ok(report.tasks.iter().map(|t| t.metrics.errors).sum())
}

fn exit_on_errors(errors: usize) {
    if errors > 0 {
        eprintln!("{errors} samples could not be generated or graded; rerun to resume");
        std::process::exit(2);
    }
}

/// The default run: the self-test, then whatever real data is present.
fn suite(out: &Path, real_out: &Path, data_dir: &Path, args: &SourceArgs) -> Result<()> {
    let report = runtime()?.block_on(eval::suite::run(&RunOptions::default()))?;
    print_written(&report, out)?;
    println!(
        "\nThat was the bundled self-test: reference responses written for the suite, which \
         check the judge and the harness and say nothing about any model."
    );
    let present: Vec<&str> = eval::data::status(data_dir)
        .into_iter()
        .filter(|d| d.present)
        .map(|d| d.task)
        .collect();
    if present.is_empty() {
        println!(
            "No benchmark data in {} (`eval data list`; fetch with `eval data fetch TASK`): \
             no real task was run.",
            data_dir.display()
        );
        return Ok(());
    }
    let Some(source) = args.source()? else {
        println!(
            "Benchmark data in {} for: {}. No response source was given \
             (--responses FILE, --endpoint URL --model NAME or --model-dir DIR), \
             so no model was scored.",
            data_dir.display(),
            present.join(", ")
        );
        return Ok(());
    };
    let describe = source.describe();
    let tasks = present
        .iter()
        .map(|n| eval::task::builtin(n).context("built-in task"))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "\nRunning the real tasks with data in {} ({}) on {describe}:\n",
        data_dir.display(),
        present.join(", ")
    );
    let errors = run_tasks(
        tasks,
        source,
        args,
        data_dir,
        real_out,
        format!("real tasks on {describe}"),
    )?;
    println!(
        "\nScored {} on {describe} (reports in {}/).",
        present.join(", "),
        real_out.display()
    );
    exit_on_errors(errors);
    Ok(())
}

fn data_list(data_dir: &Path) -> std::io::Result<()> {
    let mut w = std::io::stdout().lock();
    writeln!(w, "Data folder: {}\n", data_dir.display())?;
    for d in eval::data::status(data_dir) {
        let state = if d.present {
            format!("present: {}", d.path.display())
        } else {
            "missing".to_string()
        };
        writeln!(w, "{} [{state}]", d.task)?;
        let Some(s) = d.source else {
            writeln!(w, "  no public source known\n")?;
            continue;
        };
        writeln!(w, "  {} (licence: {})", s.origin, s.license)?;
        if let Some(r) = s.restriction {
            writeln!(w, "  restriction: {r}")?;
        }
        for f in s.files {
            match f.sha256 {
                Some(h) => writeln!(w, "  {}\n    sha256 {h}", f.url)?,
                None => writeln!(
                    w,
                    "  {}\n    sha256 unknown (no verified copy; fetch needs --allow-unpinned)",
                    f.url
                )?,
            }
        }
        if s.tasks.len() > 1 {
            writeln!(w, "  (one fetch writes: {})", s.tasks.join(", "))?;
        }
        writeln!(w)?;
    }
    Ok(())
}

/// An indicatif bar for downloads.
struct Bar(indicatif::ProgressBar);

impl eval::data::Progress for Bar {
    fn start(&self, url: &str, total: Option<u64>) {
        self.0.reset();
        self.0.set_length(total.unwrap_or(0));
        self.0
            .set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn data_fetch(names: &[String], opts: &eval::data::FetchOptions) -> Result<()> {
    let mut sources: Vec<&eval::data::Source> = Vec::new();
    for n in names {
        let found: Vec<&eval::data::Source> = if n == "all" {
            eval::data::SOURCES.iter().collect()
        } else {
            vec![eval::data::source_for_task(n).ok_or_else(|| {
                let known: Vec<&str> = eval::task::BUILTIN.iter().map(|(n, _)| *n).collect();
                anyhow::anyhow!("{n}: no such built-in task ({}, or all)", known.join(", "))
            })?]
        };
        for s in found {
            if !sources.iter().any(|x| x.name == s.name) {
                sources.push(s);
            }
        }
    }
    let bar = Bar(indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    ));
    let rt = runtime()?;
    let mut failed = 0;
    for s in sources {
        match rt.block_on(eval::data::fetch(s, opts, &bar)) {
            Ok(f) => {
                for d in &f.files {
                    let how = if d.pinned {
                        "matches the pinned sha256"
                    } else {
                        "NOT PINNED: unverified, hash recorded"
                    };
                    println!(
                        "{}: {} ({} bytes) sha256 {} ({how})",
                        s.name, d.url, d.bytes, d.sha256
                    );
                }
                for (path, rows) in &f.outputs {
                    println!("{}: wrote {} ({rows} rows)", s.name, path.display());
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of the requested sources could not be fetched");
    }
    Ok(())
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
    // No subcommand: `eval suite` with its defaults.
    let command = match cli.command {
        Some(c) => c,
        None => Cli::parse_from(["eval", "suite"])
            .command
            .context("`eval suite` parses")?,
    };
    match command {
        Command::Suite {
            out,
            real_out,
            data_dir,
            source,
        } => {
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            suite(&out, &real_out, &data_dir, &source)?;
        }
        Command::Run {
            tasks,
            data_dir,
            out,
            source,
        } => {
            let Some(src) = source.source()? else {
                bail!("give --responses FILE, --endpoint URL --model NAME or --model-dir DIR")
            };
            let data_dir = data_dir.unwrap_or_else(default_data_dir);
            let loaded = tasks
                .iter()
                .map(|t| load_task(t))
                .collect::<Result<Vec<_>>>()?;
            let errors = run_tasks(loaded, src, &source, &data_dir, &out, tasks.join(" "))?;
            exit_on_errors(errors);
        }
        Command::Data { command } => match command {
            DataCommand::List { data_dir } => {
                match data_list(&data_dir.unwrap_or_else(default_data_dir)) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
            }
            DataCommand::Fetch {
                tasks,
                data_dir,
                mirror,
                allow_unpinned,
                gpqa_seed,
                lcb_release,
            } => {
                let mut opts =
                    eval::data::FetchOptions::new(data_dir.unwrap_or_else(default_data_dir));
                opts.mirror = mirror;
                opts.allow_unpinned = allow_unpinned;
                opts.gpqa_seed = gpqa_seed;
                opts.lcb_release = lcb_release;
                data_fetch(&tasks, &opts)?;
            }
        },
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
    // As the model CLI loads: freed activations stay in the heap for the next forward pass,
    // and what the load copies lands in 2 MiB pages from the first touch
    // (`model::host_memory`).
    model::host_memory::prepare_heap_for(dir);
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
