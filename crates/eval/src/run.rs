//! Orchestration: render prompts, get every sample (cached ones first, the rest
//! concurrently, each appended to the cache before it is scored), score them, and build
//! the task report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use judge::response::{split_with, SplitOptions, ThinkFormat};
use judge::reward::RewardBreakdown;
use judge::{Judge, JudgeConfig};
use rayon::prelude::*;

use crate::code;
use crate::dataset::Problem;
use crate::grader::{grade_simpleqa, Grade, Grades};
use crate::report::{SampleResult, TaskReport, Transcript, REWARD_WEIGHTS};
use crate::sandbox::{Isolation, SandboxConfig};
use crate::source::cache::Cache;
use crate::source::{Generation, Request, ResponseSource};
use crate::task::{Grader as TaskGrader, Task};

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Requests in flight at once (default 8).
    pub concurrency: usize,
    /// Sandbox workers for code tasks (default: available cores).
    pub workers: usize,
    /// Show progress bars (they hide themselves when stderr is not a terminal).
    pub progress: bool,
    /// Python interpreter for code tasks.
    pub python: PathBuf,
    /// The grader model of tasks with `grader: llm` (default none: such a task is an
    /// error).
    pub grader: Option<GraderSource>,
}

/// The endpoint of the LLM grader ([`crate::grader`]).
#[derive(Clone)]
pub struct GraderSource(pub Arc<dyn ResponseSource>);

impl std::fmt::Debug for GraderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraderSource({})", self.0.describe())
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 8,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
            python: crate::sandbox::default_python(),
            grader: None,
        }
    }
}

fn bar(len: usize, msg: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

/// The think-format name used in reports ([`ThinkFormat::name`]).
pub fn format_name(f: ThinkFormat) -> &'static str {
    f.name()
}

/// The judge a task's rule-based checkers use: its answer policy and `think_prefilled`.
pub fn task_judge(task: &Task) -> Judge {
    Judge::new(JudgeConfig {
        policy: task.policy,
        think_prefilled: task.think_prefilled,
        ..JudgeConfig::default()
    })
}

/// Gets every sample of every problem: `[problem][sample]`, `Err` for samples that
/// could not be had.
pub async fn generate(
    task: &Task,
    problems: &[Problem],
    source: Arc<dyn ResponseSource>,
    cache: Option<Arc<Cache>>,
    opts: &RunOptions,
) -> Result<Vec<Vec<Result<Generation, String>>>> {
    let k = task.samples;
    let mut out: Vec<Vec<Result<Generation, String>>> = problems
        .iter()
        .map(|_| (0..k).map(|_| Err("not generated".to_string())).collect())
        .collect();
    let mut todo = Vec::new();
    for (pi, p) in problems.iter().enumerate() {
        let prompt = crate::prompt::render(&task.prompt, &p.record)
            .map_err(|e| anyhow::anyhow!("task {}, problem {}: {e}", task.name, p.id))?;
        for (s, slot) in out[pi].iter_mut().enumerate() {
            if let Some(g) = cache.as_ref().and_then(|c| c.get(&task.name, &p.id, s)) {
                *slot = Ok(g);
                continue;
            }
            todo.push((
                pi,
                Request {
                    task: task.name.clone(),
                    id: p.id.clone(),
                    sample: s,
                    prompt: prompt.clone(),
                    system: task.system.clone(),
                    sampling: task.sampling.clone(),
                    stop: task.stop.clone(),
                    timeout: std::time::Duration::from_secs_f64(task.limits.request_timeout_s),
                },
            ));
        }
    }
    let cached = problems.len() * k - todo.len();
    tracing::info!(task = %task.name, cached, to_generate = todo.len(), source = %source.describe(), "generating");
    let pb = bar(
        problems.len() * k,
        format!("{} responses", task.name),
        opts.progress,
    );
    pb.inc(cached as u64);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (pi, req) in todo {
        let (sem, source, cache) = (sem.clone(), source.clone(), cache.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = source.generate(&req).await;
            let r = match r {
                Ok(g) => match cache
                    .as_ref()
                    .map(|c| c.append(&req.task, &req.id, req.sample, &g))
                {
                    Some(Err(e)) => Err(format!("cache: {e:#}")),
                    _ => Ok(g),
                },
                Err(e) => Err(format!("{e:#}")),
            };
            (pi, req.sample, r)
        });
    }
    while let Some(j) = set.join_next().await {
        let (pi, s, r) = j?;
        if let Err(e) = &r {
            tracing::warn!("{e}");
        }
        out[pi][s] = r;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// Scores generated samples and builds the task report, with every sample's GRPO rewards
/// ([`SampleResult::rewards`]) and transcript ([`TaskReport::transcripts`]).
pub fn score(
    task: &Task,
    problems: &[Problem],
    gens: &[Vec<Result<Generation, String>>],
    source: String,
    opts: &RunOptions,
) -> TaskReport {
    score_with(task, problems, gens, source, opts, None)
}

/// [`score`] with the LLM grader's grades (`[problem][sample]`), which decide the
/// verdicts of a rule-checked task when given.
pub fn score_with(
    task: &Task,
    problems: &[Problem],
    gens: &[Vec<Result<Generation, String>>],
    source: String,
    opts: &RunOptions,
    grades: Option<&Grades>,
) -> TaskReport {
    let judge = task_judge(task);
    let split_options = SplitOptions {
        think_prefilled: task.think_prefilled,
    };
    let sandbox = SandboxConfig {
        python: opts.python.clone(),
        timeout: std::time::Duration::from_secs_f64(task.limits.code_timeout_s),
        memory_mb: task.limits.memory_mb,
        ..SandboxConfig::default()
    };
    let items: Vec<(usize, usize)> = (0..problems.len())
        .flat_map(|p| (0..task.samples).map(move |s| (p, s)))
        .collect();
    let prompts: Vec<String> = problems
        .iter()
        .map(|p| crate::prompt::render(&task.prompt, &p.record).unwrap_or_default())
        .collect();
    let pb = bar(items.len(), format!("{} scoring", task.name), opts.progress);
    let one = |&(pi, s): &(usize, usize)| -> (SampleResult, Transcript) {
        let p = &problems[pi];
        let mut transcript = Transcript {
            prompt: prompts[pi].clone(),
            system: task.system.clone(),
            response: None,
        };
        let base = SampleResult {
            id: p.id.clone(),
            sample: s,
            correct: false,
            extracted: None,
            format: "malformed".into(),
            chars: 0,
            tokens: None,
            finish_reason: None,
            grade: None,
            error: None,
            rewards: RewardBreakdown::default(),
        };
        let r = match &gens[pi][s] {
            Err(e) => SampleResult {
                error: Some(e.clone()),
                ..base
            },
            Ok(g) => {
                let text = g.full_text();
                let (mut grade, mut error) = (None, None);
                let (correct, extracted) = match task.checker.judge_kind() {
                    Some(kind) => {
                        let v = judge.check(kind, &p.gold, &text);
                        match grades.map(|gs| &gs[pi][s]) {
                            None => (v.correct, v.extracted),
                            Some(Ok(g)) => {
                                grade = Some(g.name().to_string());
                                (*g == Grade::Correct, v.extracted)
                            }
                            Some(Err(e)) => {
                                error = Some(e.clone());
                                (false, v.extracted)
                            }
                        }
                    }
                    None => {
                        let v = code::check(task.checker, p, &text, &sandbox);
                        (v.correct, Some(v.detail))
                    }
                };
                let rewards = RewardBreakdown::compose(
                    if correct { 1.0 } else { 0.0 },
                    judge.format_reward(&text),
                    judge.language_reward(&text, task.language),
                    &REWARD_WEIGHTS,
                );
                let r = SampleResult {
                    correct,
                    extracted,
                    format: format_name(split_with(&text, split_options).format).into(),
                    chars: text.chars().count(),
                    tokens: g.completion_tokens,
                    finish_reason: g.finish_reason.clone(),
                    rewards,
                    grade,
                    error,
                    ..base
                };
                transcript.response = Some(text);
                r
            }
        };
        pb.inc(1);
        (r, transcript)
    };
    let scored: Vec<(SampleResult, Transcript)> = if task.checker.is_code() {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(opts.workers.max(1))
            .build()
        {
            Ok(pool) => pool.install(|| items.par_iter().map(one).collect()),
            Err(_) => items.iter().map(one).collect(),
        }
    } else {
        items.par_iter().map(one).collect()
    };
    pb.finish_and_clear();
    let (samples, transcripts): (Vec<SampleResult>, Vec<Transcript>) = scored.into_iter().unzip();
    let isolation: Option<Isolation> = task
        .checker
        .is_code()
        .then(|| Isolation::detect(&opts.python));
    let mut report = TaskReport::build(
        &task.name,
        task.checker,
        task.samples,
        problems,
        samples,
        source,
        isolation,
    );
    report.language = task.language;
    report.transcripts = transcripts;
    report.diagnostics = crate::diagnostics::diagnose(task.sampling.temperature, gens);
    report
}

/// Generates and scores one task (grading factual answers with the LLM grader of
/// [`RunOptions::grader`] when the task says `grader: llm`; its requests use `cache` even
/// when the responses come from a file).
pub async fn run_task(
    task: &Task,
    problems: &[Problem],
    source: Arc<dyn ResponseSource>,
    cache: Option<Arc<Cache>>,
    opts: &RunOptions,
) -> Result<TaskReport> {
    let model_cache = if source.wants_cache() {
        cache.clone()
    } else {
        None
    };
    let gens = generate(task, problems, source.clone(), model_cache, opts).await?;
    let mut desc = source.describe();
    let grades = match task.grader {
        TaskGrader::Rules => None,
        TaskGrader::Llm => {
            let g = opts.grader.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "task {}: `grader: llm` needs a grader endpoint \
                     (--grader-endpoint URL --grader-model NAME)",
                    task.name
                )
            })?;
            desc = format!(
                "{desc}; graded by the SimpleQA grader at {}",
                g.0.describe()
            );
            Some(grade_simpleqa(task, problems, &gens, g.0.clone(), cache, opts).await?)
        }
    };
    let report = score_with(task, problems, &gens, desc, opts, grades.as_ref());
    tracing::info!(task = %task.name, pass1 = report.metrics.pass1, errors = report.metrics.errors, "scored");
    for w in &report.diagnostics.warnings {
        tracing::warn!(task = %task.name, "{w}");
    }
    Ok(report)
}
