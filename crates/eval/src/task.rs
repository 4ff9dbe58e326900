//! Tasks as data: the YAML schema of a benchmark task.
//!
//! A task names its dataset (file, format, which fields hold what), the prompt template,
//! the checker and its answer policy (`policy: careful | strict`, `think_prefilled`),
//! how many samples to draw per problem and how (R1's protocol is the default:
//! temperature 0.6, top-p 0.95, no system prompt), and its time limits. Every
//! field except `name`, `dataset.path` and `checker` has a default, listed on the field.
//!
//! ```
//! use eval::task::{Checker, Task};
//! let t = Task::from_yaml_str("version: 1\nname: demo\nchecker: math\n\
//!     dataset: {path: demo.jsonl}\nprompt: \"{problem}\"\n", "demo.yaml").unwrap();
//! assert_eq!(t.checker, Checker::Math);
//! assert_eq!(t.samples, 1);
//! assert_eq!(t.sampling.temperature, 0.6);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use judge::{AnswerPolicy, Kind, Language};
use serde::{Deserialize, Serialize};

/// The task schema version this build reads.
pub const TASK_VERSION: u32 = 1;

/// R1's math instruction, appended by the built-in reasoning prompts.
pub const BOXED_INSTRUCTION: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// Errors while reading a task file; each names the file and, where known, the field.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The task file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("{file}: {message}")]
    Yaml {
        /// The task file.
        file: String,
        /// serde_yaml's message (names the field and position).
        message: String,
    },
    /// A field has an invalid value.
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        /// The task file.
        file: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// How a response is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// Boxed math answer, symbolic equivalence ([`Kind::Math`]).
    Math,
    /// GSM8K number ([`Kind::Gsm8k`]).
    Gsm8k,
    /// Multiple-choice letter ([`Kind::Mc`]).
    Mc,
    /// Short factual answer with aliases, SimpleQA-style grading ([`Kind::Factual`]).
    Factual,
    /// HumanEval: prompt + completion + `test` + `check(entry_point)`.
    Humaneval,
    /// MBPP: the program followed by a list of `assert` lines.
    PythonAsserts,
    /// LiveCodeBench stdin/stdout tests: `[{"input", "output"}]`, lines compared stripped.
    Stdio,
    /// LiveCodeBench function-call tests: `[{"input": JSON args, "output": JSON}]`
    /// against `entry_point`.
    FunctionCall,
}

impl Checker {
    /// The rule-based judge kind, for non-code checkers.
    pub fn judge_kind(self) -> Option<Kind> {
        match self {
            Checker::Math => Some(Kind::Math),
            Checker::Gsm8k => Some(Kind::Gsm8k),
            Checker::Mc => Some(Kind::Mc),
            Checker::Factual => Some(Kind::Factual),
            _ => None,
        }
    }

    /// Whether the checker runs generated code.
    pub fn is_code(self) -> bool {
        self.judge_kind().is_none()
    }
}

/// How a factual task's answers are graded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grader {
    /// The rule-based checker of the task's `checker` (the default).
    #[default]
    Rules,
    /// The official SimpleQA grader prompt through an OpenAI-compatible endpoint
    /// ([`crate::grader`]; `checker: factual` only; the endpoint comes from
    /// `eval run --grader-endpoint URL --grader-model NAME`).
    Llm,
}

/// Dataset file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Gzip-compressed JSONL.
    JsonlGz,
    /// CSV; see [`Dataset::csv_columns`] for header-less files.
    Csv,
}

/// Which record fields hold what. Values are field names in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fields {
    /// Problem identifier (default `id`; the row number when absent from the record).
    pub id: String,
    /// Reference answer, or a list of aliases (default `answer`).
    pub answer: String,
    /// Tests for code checkers (default `test`).
    pub tests: String,
    /// Function name for HumanEval / function-call checkers (default `entry_point`).
    pub entry_point: String,
    /// Subject for breakdowns (default `subject`; optional in records).
    pub subject: String,
    /// Difficulty level for breakdowns (default `level`; optional in records).
    pub level: String,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            id: "id".into(),
            answer: "answer".into(),
            tests: "test".into(),
            entry_point: "entry_point".into(),
            subject: "subject".into(),
            level: "level".into(),
        }
    }
}

/// Where the problems come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// Path; `{data_dir}` is replaced by the run's data folder, and a relative path is
    /// relative to the task file's folder.
    pub path: String,
    /// File format (default: from the extension, `.jsonl.gz`, `.csv`, else JSONL).
    #[serde(default)]
    pub format: Option<Format>,
    /// Field mapping (defaults on [`Fields`]).
    #[serde(default)]
    pub fields: Fields,
    /// Column names for a CSV without a header row (MMLU's raw files); empty = header row.
    #[serde(default)]
    pub csv_columns: Vec<String>,
    /// Use only the first N problems (default: all; applied after `window`).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Keep only the problems whose date field falls in a window (default: all), e.g.
    /// LiveCodeBench's contest dates.
    #[serde(default)]
    pub window: Option<DateWindow>,
}

/// A date window over a record field holding an ISO date (`2024-08-01` or
/// `2024-08-01T00:00:00`): the first 10 characters are compared with the bounds, both
/// inclusive. Records without the field are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateWindow {
    /// The record field (e.g. `contest_date`).
    pub field: String,
    /// First date kept, `YYYY-MM-DD` (default: no lower bound).
    #[serde(default)]
    pub from: Option<String>,
    /// Last date kept, `YYYY-MM-DD` (default: no upper bound).
    #[serde(default)]
    pub to: Option<String>,
}

impl DateWindow {
    /// Whether a record's date value is inside the window.
    pub fn contains(&self, date: &str) -> bool {
        let d = date.get(..10).unwrap_or(date);
        self.from.as_deref().is_none_or(|f| d >= f) && self.to.as_deref().is_none_or(|t| d <= t)
    }
}

impl Dataset {
    /// The format, explicit or from the extension.
    pub fn format(&self) -> Format {
        self.format.unwrap_or_else(|| {
            if self.path.ends_with(".gz") {
                Format::JsonlGz
            } else if self.path.ends_with(".csv") {
                Format::Csv
            } else {
                Format::Jsonl
            }
        })
    }
}

/// Sampling parameters sent to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// Temperature (default 0.6, R1's protocol).
    pub temperature: f64,
    /// Nucleus sampling (default 0.95).
    pub top_p: f64,
    /// Generated-token budget (default 32768).
    pub max_tokens: u32,
    /// Base seed; sample `i` is sent `seed + i` (default: none sent).
    pub seed: Option<u64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: 32768,
            seed: None,
        }
    }
}

/// Time and resource limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Per-request timeout in seconds (default 1800).
    pub request_timeout_s: f64,
    /// Wall-clock limit per program run in seconds (default 6, LiveCodeBench's).
    pub code_timeout_s: f64,
    /// Address-space limit per program in MiB (default 2048).
    pub memory_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout_s: 1800.0,
            code_timeout_s: 6.0,
            memory_mb: 2048,
        }
    }
}

/// One benchmark task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Schema version (default and current: [`TASK_VERSION`]).
    #[serde(default = "default_version")]
    pub version: u32,
    /// Task name, used in reports and cache keys.
    pub name: String,
    /// Free-text description.
    #[serde(default)]
    pub description: String,
    /// The dataset.
    pub dataset: Dataset,
    /// Prompt template: `{field}` is replaced by the record's field, `{{`/`}}` are braces.
    /// Default `{problem}\n\n` + [`BOXED_INSTRUCTION`].
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Optional system prompt (default none, R1's protocol).
    #[serde(default)]
    pub system: Option<String>,
    /// The checker.
    pub checker: Checker,
    /// Which final answers count for the rule-based checkers (default `careful`: a clear
    /// final answer, boxed or not; `strict`: only a final `\boxed{}` after the
    /// reasoning, R1's rule-based reward). See [`judge::AnswerPolicy`].
    #[serde(default)]
    pub policy: AnswerPolicy,
    /// How answers are graded (default `rules`; `llm`: the SimpleQA grader model, for
    /// `checker: factual`).
    #[serde(default)]
    pub grader: Grader,
    /// The prompt pre-fills `<think>` (R1 chat templates): text before `</think>` is
    /// reasoning and a response without `</think>` has no answer (default `false`).
    #[serde(default)]
    pub think_prefilled: bool,
    /// The target language of the language-consistency reward in the report (`english`,
    /// the default, or `chinese`; see [`judge::reward`]).
    #[serde(default)]
    pub language: Language,
    /// Samples per problem, k (default 1).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Sampling parameters.
    #[serde(default)]
    pub sampling: Sampling,
    /// Stop sequences (default none).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Free-form tags (e.g. `reasoning`, `code`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra metadata copied into reports.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The folder of the task file, for relative dataset paths (not part of the YAML).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn default_version() -> u32 {
    TASK_VERSION
}
fn default_samples() -> usize {
    1
}
fn default_prompt() -> String {
    let instruction = BOXED_INSTRUCTION.replace('{', "{{").replace('}', "}}");
    format!("{{problem}}\n\n{instruction}")
}

impl Task {
    /// Parses and validates a task; `file` names it in errors.
    pub fn from_yaml_str(text: &str, file: &str) -> Result<Task, TaskError> {
        let task: Task = serde_yaml::from_str(text).map_err(|e| TaskError::Yaml {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        task.validate(file)?;
        Ok(task)
    }

    /// Reads, parses and validates a task file.
    pub fn load(path: &Path) -> Result<Task, TaskError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
            file: file.clone(),
            source,
        })?;
        let mut task = Task::from_yaml_str(&text, &file)?;
        task.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(task)
    }

    fn validate(&self, file: &str) -> Result<(), TaskError> {
        let bad = |field: &'static str, message: String| {
            Err(TaskError::Invalid {
                file: file.to_string(),
                field,
                message,
            })
        };
        if self.version != TASK_VERSION {
            return bad(
                "version",
                format!("expected {TASK_VERSION}, found {}", self.version),
            );
        }
        if self.name.trim().is_empty() || self.name.contains('/') {
            return bad("name", "must be non-empty and contain no '/'".into());
        }
        if self.samples == 0 || self.samples > 1024 {
            return bad(
                "samples",
                format!("must be in 1..=1024, found {}", self.samples),
            );
        }
        if !(0.0..=2.0).contains(&self.sampling.temperature) {
            return bad(
                "sampling.temperature",
                format!("must be in [0, 2], found {}", self.sampling.temperature),
            );
        }
        if !(self.sampling.top_p > 0.0 && self.sampling.top_p <= 1.0) {
            return bad(
                "sampling.top_p",
                format!("must be in (0, 1], found {}", self.sampling.top_p),
            );
        }
        if self.limits.request_timeout_s <= 0.0 || self.limits.code_timeout_s <= 0.0 {
            return bad("limits", "timeouts must be positive".into());
        }
        if self.dataset.path.trim().is_empty() {
            return bad("dataset.path", "must not be empty".into());
        }
        if self.grader == Grader::Llm && self.checker != Checker::Factual {
            return bad(
                "grader",
                format!("`llm` grades factual answers only, not {:?}", self.checker),
            );
        }
        if let Some(w) = &self.dataset.window {
            let iso = |d: &Option<String>| {
                d.as_deref().is_none_or(|d| {
                    d.len() == 10
                        && d.bytes().enumerate().all(|(i, b)| {
                            if i == 4 || i == 7 {
                                b == b'-'
                            } else {
                                b.is_ascii_digit()
                            }
                        })
                })
            };
            if !iso(&w.from) || !iso(&w.to) {
                return bad(
                    "dataset.window",
                    format!("dates must be YYYY-MM-DD, found {:?}..{:?}", w.from, w.to),
                );
            }
        }
        if let Err(e) = crate::prompt::check_template(&self.prompt) {
            return bad("prompt", e);
        }
        Ok(())
    }

    /// The dataset path with `{data_dir}` substituted and made relative to the task file.
    pub fn dataset_path(&self, data_dir: &Path) -> PathBuf {
        let p = self
            .dataset
            .path
            .replace("{data_dir}", &data_dir.to_string_lossy());
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// The built-in task files (name, YAML), embedded so they work from any folder.
pub const BUILTIN: &[(&str, &str)] = &[
    ("math500", include_str!("../tasks/math500.yaml")),
    ("aime2024", include_str!("../tasks/aime2024.yaml")),
    ("aime2025", include_str!("../tasks/aime2025.yaml")),
    ("gsm8k", include_str!("../tasks/gsm8k.yaml")),
    ("humaneval", include_str!("../tasks/humaneval.yaml")),
    ("mbpp", include_str!("../tasks/mbpp.yaml")),
    ("livecodebench", include_str!("../tasks/livecodebench.yaml")),
    (
        "livecodebench_functional",
        include_str!("../tasks/livecodebench_functional.yaml"),
    ),
    ("gpqa", include_str!("../tasks/gpqa.yaml")),
    ("mmlu", include_str!("../tasks/mmlu.yaml")),
    ("simpleqa", include_str!("../tasks/simpleqa.yaml")),
];

/// A built-in task by name (its dataset path uses `{data_dir}`).
pub fn builtin(name: &str) -> Option<Task> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, y)| Task::from_yaml_str(y, &format!("tasks/{n}.yaml")).expect("built-in task"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_task_parses() {
        for (name, yaml) in BUILTIN {
            let t = Task::from_yaml_str(yaml, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&t.name, name);
        }
    }

    #[test]
    fn date_window_bounds_are_inclusive_and_validated() {
        let w = DateWindow {
            field: "contest_date".into(),
            from: Some("2024-08-01".into()),
            to: Some("2025-01-31".into()),
        };
        assert!(w.contains("2024-08-01T00:00:00") && w.contains("2025-01-31"));
        assert!(!w.contains("2024-07-31T23:59:59") && !w.contains("2025-02-01"));
        let e = Task::from_yaml_str(
            "name: x\nchecker: stdio\ndataset: {path: a, window: {field: d, from: 2024-8-1}}\n",
            "w.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("w.yaml") && e.contains("dataset.window"), "{e}");
        let e = Task::from_yaml_str(
            "name: x\nchecker: math\ngrader: llm\ndataset: {path: a}\n",
            "g.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`grader`"), "{e}");
    }

    #[test]
    fn answer_policy_fields() {
        let t = Task::from_yaml_str(
            "name: x\nchecker: math\ndataset: {path: a}\npolicy: strict\nthink_prefilled: true\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(t.policy, AnswerPolicy::Strict);
        assert!(t.think_prefilled);
        let d =
            Task::from_yaml_str("name: x\nchecker: math\ndataset: {path: a}\n", "d.yaml").unwrap();
        assert_eq!(d.policy, AnswerPolicy::Careful);
        assert!(!d.think_prefilled);
        let e = Task::from_yaml_str(
            "name: x\nchecker: math\ndataset: {path: a}\npolicy: lenient\n",
            "e.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("e.yaml") && e.contains("lenient"), "{e}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = Task::from_yaml_str(
            "name: x\nchecker: math\nsamples: 0\ndataset: {path: a.jsonl}\n",
            "x.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.yaml") && e.contains("samples"), "{e}");
        let e = Task::from_yaml_str(
            "name: x\nchecker: maths\ndataset: {path: a.jsonl}\n",
            "y.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("y.yaml") && e.contains("checker"), "{e}");
        let e = Task::from_yaml_str(
            "name: x\nchecker: math\ndataset: {path: a.jsonl, feilds: {}}\n",
            "z.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("feilds"), "{e}");
        // The default prompt is R1's, and is a valid template.
        let t =
            Task::from_yaml_str("name: x\nchecker: math\ndataset: {path: a}\n", "d.yaml").unwrap();
        let r = serde_json::json!({"problem": "1+1?"});
        let p = crate::prompt::render(&t.prompt, r.as_object().unwrap()).unwrap();
        assert_eq!(p, format!("1+1?\n\n{BOXED_INSTRUCTION}"));
    }
}
