//! The benchmark harness for R1-style models: tasks, datasets, response sources, a code
//! sandbox, metrics and reports, on top of the rule-based grader of the [`judge`] crate.
//!
//! # The grader
//!
//! Answer checking (the R1 think-format split, final-answer extraction and the math,
//! multiple-choice, GSM8K and factual checkers) lives in the `judge` crate, which has no
//! I/O or async dependencies and is usable on its own (for instance as a GRPO reward).
//! It is re-exported here as [`judge`], with its main types at the crate root, so
//! `eval::Judge` and `eval::judge::Judge` are the same type.
//!
//! # The harness
//!
//! Tasks are YAML ([`task`]); dataset loaders ([`dataset`]), prompt templates
//! ([`prompt`]), response sources (JSONL response files, OpenAI-compatible servers with a
//! crash-safe cache and, behind the `local-model` feature, a local checkpoint:
//! [`source`]), a process sandbox for generated code ([`sandbox`], [`code`]), metrics
//! ([`metrics`]), reports ([`report`]), per-sample regression diffs ([`diff`]), the runner
//! ([`run`]) and the bundled suite that `cargo run -p eval` runs ([`suite`]). The
//! `eval judge` and `eval bench` subcommands read JSONL case files ([`cases`]);
//! `eval export-sft` turns a run's correct, well-formed samples into a chat SFT set
//! ([`sft`]). Reports carry the GRPO rewards of the `judge` crate ([`judge::reward`]).
//! The built-in tasks' public data sets are listed, downloaded, verified against pinned
//! SHA-256s and converted by [`data`] (`eval data list`, `eval data fetch`); SimpleQA can be
//! graded by the official grader prompt through a model endpoint ([`grader`]).
//!
//! # Example
//!
//! ```
//! use eval::{Judge, Kind};
//!
//! let judge = Judge::default();
//! let verdict = judge.check(Kind::Math, &"0.5".into(), "<think>...</think>\\boxed{\\frac12}");
//! assert!(verdict.correct);
//! ```
#![deny(missing_docs)]

pub mod cases;
pub mod code;
pub mod data;
pub mod dataset;
pub mod diagnostics;
pub mod diff;
pub mod grader;
pub mod metrics;
pub mod prompt;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod sft;
pub mod source;
pub mod suite;
pub mod task;

pub use judge;
pub use judge::{AnswerPolicy, Gold, Judge, JudgeConfig, JudgeError, Kind, ParseError, Verdict};
