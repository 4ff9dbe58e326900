//! Reports: the per-task results and metrics ([`Report`]), written as JSON (every
//! sample's verdict, extracted answer and GRPO rewards), a Markdown summary
//! ([`markdown`]), a self-contained HTML page with inline SVG charts ([`html`]) and
//! `samples.jsonl`, every sample with its prompt and response ([`SampleLine`], what
//! `eval export-sft` reads).
//!
//! Reports hold no timestamps or timings, so the same responses always give the same
//! JSON (what `eval diff` and the snapshot tests compare).

pub mod html;
pub mod markdown;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use judge::reward::{Language, RewardBreakdown, RewardSummary};
use serde::{Deserialize, Serialize};

use crate::dataset::Problem;
use crate::metrics::{self, FactualGrades, LengthStats};
use crate::task::Checker;

/// Report format version.
pub const REPORT_VERSION: u32 = 1;

/// One sample's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleResult {
    /// Problem id.
    pub id: String,
    /// Sample index.
    pub sample: usize,
    /// The verdict.
    pub correct: bool,
    /// The extracted answer (code checkers: the run's outcome, `passed`, `timeout`...).
    pub extracted: Option<String>,
    /// Think-tag format: `full`, `prefilled`, `no_tags`, `unterminated`, `malformed`.
    pub format: String,
    /// Response length in characters (reasoning included).
    pub chars: usize,
    /// Generated tokens, when the source reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Why generation stopped, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The LLM grader's verdict (`CORRECT`, `INCORRECT`, `NOT_ATTEMPTED`) when the task
    /// is graded by a model ([`crate::grader`]); it decides `correct`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grade: Option<String>,
    /// Set when no response could be had (counted as wrong).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The GRPO rewards of the sample under [`REWARD_WEIGHTS`] (all zero without a
    /// response): accuracy is the verdict, format the R1 think format, language the
    /// task's target-language share of the reasoning ([`judge::reward`]).
    pub rewards: RewardBreakdown,
}

/// The weights of the reward totals in reports: the plain sum of accuracy, format and
/// language consistency ([`judge::reward::RewardWeights::default`]).
pub const REWARD_WEIGHTS: judge::reward::RewardWeights = judge::reward::RewardWeights {
    accuracy: 1.0,
    format: 1.0,
    language: 1.0,
};

/// What a sample was asked and answered; kept beside the report (not in `report.json`)
/// for `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    /// The rendered prompt (the user message).
    pub prompt: String,
    /// The system prompt, if the task has one.
    pub system: Option<String>,
    /// The full response as judged (reasoning put back in `<think>` form), `None` when
    /// none could be had.
    pub response: Option<String>,
}

/// One line of `samples.jsonl`: a sample's verdict and rewards with its prompt and
/// response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleLine {
    /// Task name.
    pub task: String,
    /// Problem id.
    pub id: String,
    /// Sample index.
    pub sample: usize,
    /// The rendered prompt (absent when the report kept no transcripts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The task's system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The response as judged (absent when none could be had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// The verdict.
    pub correct: bool,
    /// The extracted answer.
    #[serde(default)]
    pub extracted: Option<String>,
    /// Think-tag format (`full`, `prefilled`, `no_tags`, `unterminated`, `malformed`).
    pub format: String,
    /// The GRPO rewards.
    pub rewards: RewardBreakdown,
    /// Why no response could be had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// pass@1 of a subset of problems.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// Problems in the group.
    pub problems: usize,
    /// Mean pass@1.
    pub pass1: f64,
}

/// A task's aggregate metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean over problems of the fraction of correct samples.
    pub pass1: f64,
    /// 95% bootstrap interval of `pass1`.
    pub pass1_ci: [f64; 2],
    /// Unbiased pass@k for k = 1, 2, 4, ... up to the samples per problem.
    pub pass_at_k: BTreeMap<usize, f64>,
    /// Majority vote over all samples (not for code tasks).
    pub cons_at_k: Option<f64>,
    /// Fraction of samples in valid R1 think format.
    pub format_rate: f64,
    /// Response length in characters.
    pub chars: LengthStats,
    /// Generated tokens, when every sample reported them.
    pub tokens: Option<LengthStats>,
    /// SimpleQA-style grades (factual tasks).
    pub factual: Option<FactualGrades>,
    /// Samples with no response.
    pub errors: usize,
    /// Mean GRPO rewards over all samples (see [`SampleResult::rewards`]).
    pub rewards: RewardSummary,
}

/// One task's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// Task name.
    pub name: String,
    /// Checker.
    pub checker: Checker,
    /// Samples per problem.
    pub k: usize,
    /// Number of problems.
    pub problems: usize,
    /// Where responses came from.
    pub source: String,
    /// The target language of the language reward.
    pub language: Language,
    /// Sandbox isolation mode (code tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<crate::sandbox::Isolation>,
    /// Aggregates.
    pub metrics: Metrics,
    /// pass@1 per subject.
    pub by_subject: BTreeMap<String, Group>,
    /// pass@1 per level.
    pub by_level: BTreeMap<String, Group>,
    /// Run diagnostics: identical samples at temperature > 0, truncation, degenerate
    /// responses ([`crate::diagnostics`]).
    pub diagnostics: crate::diagnostics::Diagnostics,
    /// Every sample, ordered by problem then sample.
    pub samples: Vec<SampleResult>,
    /// Each sample's prompt and response, in the order of `samples` (empty when not
    /// kept); written to `samples.jsonl`, not to `report.json`.
    #[serde(skip)]
    pub transcripts: Vec<Transcript>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Suite or run name.
    pub name: String,
    /// The tasks.
    pub tasks: Vec<TaskReport>,
}

/// Whether two extracted answers are the same vote under the checker's equivalence.
pub fn same_answer(checker: Checker, a: &str, b: &str) -> bool {
    match checker {
        Checker::Math => a == b || judge::math::answers_match(a, b),
        Checker::Gsm8k => {
            a == b || {
                let x = judge::numeric::number_value(a);
                x.is_some() && x == judge::numeric::number_value(b)
            }
        }
        Checker::Mc => a == b,
        Checker::Factual => judge::factual::normalise(a) == judge::factual::normalise(b),
        _ => a == b,
    }
}

impl TaskReport {
    /// Aggregates `samples` (ordered by problem then sample, `k` per problem).
    pub fn build(
        name: &str,
        checker: Checker,
        k: usize,
        problems: &[Problem],
        samples: Vec<SampleResult>,
        source: String,
        isolation: Option<crate::sandbox::Isolation>,
    ) -> TaskReport {
        let per: Vec<&[SampleResult]> = samples.chunks(k.max(1)).collect();
        let scores: Vec<f64> = per
            .iter()
            .map(|s| s.iter().filter(|x| x.correct).count() as f64 / s.len() as f64)
            .collect();
        let mut pass_at_k = BTreeMap::new();
        let mut kk = 1;
        while kk <= k {
            let v: Vec<f64> = per
                .iter()
                .map(|s| metrics::pass_at_k(s.len(), s.iter().filter(|x| x.correct).count(), kk))
                .collect();
            pass_at_k.insert(kk, metrics::mean(&v));
            kk = if kk * 2 > k && kk != k { k } else { kk * 2 };
        }
        let cons_at_k = (!checker.is_code()).then(|| {
            let wins: Vec<f64> = per
                .iter()
                .map(|s| {
                    let answers: Vec<Option<String>> =
                        s.iter().map(|x| x.extracted.clone()).collect();
                    match metrics::majority(&answers, |a, b| same_answer(checker, a, b)) {
                        Some(i) if s[i].correct => 1.0,
                        _ => 0.0,
                    }
                })
                .collect();
            metrics::mean(&wins)
        });
        let n = samples.len().max(1) as f64;
        let format_rate = samples
            .iter()
            .filter(|s| s.format == "full" || s.format == "prefilled")
            .count() as f64
            / n;
        let chars: Vec<f64> = samples.iter().map(|s| s.chars as f64).collect();
        let tokens: Option<Vec<f64>> = samples.iter().map(|s| s.tokens.map(|t| t as f64)).collect();
        let factual = (checker == Checker::Factual).then(|| {
            let pairs: Vec<(bool, bool)> = samples
                .iter()
                .map(|s| {
                    let attempted = match &s.grade {
                        Some(g) => g != crate::grader::Grade::NotAttempted.name(),
                        None => !metrics::is_not_attempted(s.extracted.as_deref()),
                    };
                    (s.correct, attempted)
                })
                .collect();
            metrics::factual_grades(&pairs)
        });
        let group = |key: &dyn Fn(&Problem) -> Option<String>| {
            let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (p, s) in problems.iter().zip(&scores) {
                if let Some(g) = key(p) {
                    m.entry(g).or_default().push(*s);
                }
            }
            m.into_iter()
                .map(|(g, v)| {
                    (
                        g,
                        Group {
                            problems: v.len(),
                            pass1: metrics::mean(&v),
                        },
                    )
                })
                .collect()
        };
        let ci = metrics::bootstrap_ci(&scores);
        TaskReport {
            name: name.to_string(),
            checker,
            k,
            problems: problems.len(),
            source,
            language: Language::default(),
            isolation,
            metrics: Metrics {
                pass1: metrics::mean(&scores),
                pass1_ci: [ci.0, ci.1],
                pass_at_k,
                cons_at_k,
                format_rate,
                chars: metrics::length_stats(&chars),
                tokens: tokens
                    .filter(|t| !t.is_empty())
                    .map(|t| metrics::length_stats(&t)),
                factual,
                errors: samples.iter().filter(|s| s.error.is_some()).count(),
                rewards: RewardSummary::of(samples.iter().map(|s| &s.rewards)),
            },
            by_subject: group(&|p| p.subject.clone()),
            by_level: group(&|p| p.level.clone()),
            diagnostics: Default::default(),
            samples,
            transcripts: Vec::new(),
        }
    }

    /// The report's samples as `samples.jsonl` lines (prompts and responses from
    /// [`TaskReport::transcripts`], absent when it is empty).
    pub fn sample_lines(&self) -> impl Iterator<Item = SampleLine> + '_ {
        self.samples.iter().enumerate().map(|(i, s)| {
            let t = self.transcripts.get(i);
            SampleLine {
                task: self.name.clone(),
                id: s.id.clone(),
                sample: s.sample,
                prompt: t.map(|t| t.prompt.clone()),
                system: t.and_then(|t| t.system.clone()),
                response: t.and_then(|t| t.response.clone()),
                correct: s.correct,
                extracted: s.extracted.clone(),
                format: s.format.clone(),
                rewards: s.rewards,
                error: s.error.clone(),
            }
        })
    }
}

/// The paths written by [`write_all`].
#[derive(Debug, Clone)]
pub struct Written {
    /// `report.json`.
    pub json: PathBuf,
    /// `summary.md`.
    pub markdown: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
    /// `samples.jsonl`.
    pub samples: PathBuf,
}

/// Writes `report.json`, `summary.md`, `report.html` and `samples.jsonl` into `dir`
/// (created).
pub fn write_all(report: &Report, dir: &Path) -> Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let w = Written {
        json: dir.join("report.json"),
        markdown: dir.join("summary.md"),
        html: dir.join("report.html"),
        samples: dir.join("samples.jsonl"),
    };
    let write = |p: &Path, s: String| {
        std::fs::write(p, s).with_context(|| format!("writing {}", p.display()))
    };
    write(&w.json, serde_json::to_string_pretty(report)? + "\n")?;
    write(&w.markdown, markdown::render(report))?;
    write(&w.html, html::render(report))?;
    let mut lines = String::new();
    for t in &report.tasks {
        for line in t.sample_lines() {
            lines.push_str(&serde_json::to_string(&line)?);
            lines.push('\n');
        }
    }
    write(&w.samples, lines)?;
    Ok(w)
}
