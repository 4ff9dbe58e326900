//! Rule-based answer checking for R1-style outputs: the accuracy and format rewards of
//! GRPO and the grader of the `eval` benchmark harness.
//!
//! # Design
//!
//! A check runs in three stages, each its own module:
//!
//! 1. [`response`] splits the reasoning from the answer at `</think>` (or the Sky-T1
//!    `<|end_of_thought|>` / `<|begin_of_solution|>` tags) and gives the R1 format
//!    verdict. An unterminated `<think>` means no answer, and with
//!    [`JudgeConfig::think_prefilled`] so does a response without `</think>`.
//! 2. [`extract`] finds the final answer under the [`AnswerPolicy`]: the last balanced
//!    `\boxed{}` (strict), or also anchors and final statements (careful, the default).
//!    In text that may be unfinished reasoning (no tags) an answer must end the text;
//!    a truncated last box is no answer; there is no last-number fallback.
//! 3. A checker per task kind compares with the reference: [`math`] (a LaTeX/plain-text
//!    parser to an expression tree, exact rational arithmetic with bounded big integers,
//!    evaluation at random points for symbolic identities, and structures: sets, tuples,
//!    intervals, matrices, relations), [`choice`] (multiple choice), [`numeric`] (GSM8K)
//!    and [`factual`] (SQuAD-normalised short answers with aliases).
//!
//! [`Judge::check`] ties the stages together, and [`reward`] turns verdicts into the GRPO
//! rewards (accuracy, format, R1's language consistency, their weighted sum, and a batch
//! API, parallel with the `parallel` feature). There is deliberately **no loose numeric
//! tolerance**: a decimal is an exact rational, so `0.333` is not `1/3` and `1/2^99` is
//! not `1/2^98`; floating point is used only for irrational or symbolic values, with a
//! tight relative tolerance. The policies of each module are listed in its documentation.
//!
//! Every check is bounded: inputs are cut to their last megabyte, extraction looks at the
//! last 64 KB, the parser refuses inputs over 8 KB, 4096 tokens or nesting deeper than 120,
//! exact values are limited to 65,536 bits (`10^{10^{10}}` is refused before any
//! arithmetic), and set matching has a work budget. Malformed input gives a verdict,
//! never a panic.
//!
//! The crate is pure computation: no I/O, no async runtime, and no threads unless the
//! optional `parallel` feature (rayon) is on for [`reward::score_batch`]. The benchmark
//! harness (tasks, datasets, response sources, sandbox, reports) is the `eval` crate.
//!
//! # Example
//!
//! ```
//! use judge::{Judge, Kind};
//!
//! let judge = Judge::default();
//! let response = "<think>\nx = 1/2, so the value is \\boxed{2}... no wait\n</think>\n\
//!                 The answer is $\\boxed{\\dfrac{1}{2}}$.";
//! let verdict = judge.check(Kind::Math, &"0.5".into(), response);
//! assert!(verdict.correct);
//! assert_eq!(verdict.extracted.as_deref(), Some("\\dfrac{1}{2}"));
//! assert!(verdict.format.is_valid());
//!
//! // 1/3 is not 0.333, and the reasoning's box does not count.
//! assert!(!judge.check(Kind::Math, &"\\frac13".into(), "</think>\\boxed{0.333}").correct);
//!
//! // The GRPO rewards.
//! assert_eq!(judge.accuracy_reward(Kind::Math, &"0.5".into(), response), 1.0);
//! assert_eq!(judge.format_reward("\\boxed{4}"), 0.0);
//! ```
#![deny(missing_docs)]

pub mod choice;
pub mod error;
pub mod extract;
pub mod factual;
pub mod grader;
pub mod math;
pub mod numeric;
pub mod response;
pub mod reward;

pub use error::{JudgeError, ParseError};
pub use grader::{AnswerPolicy, Gold, Judge, JudgeConfig, Kind, Verdict};
pub use reward::{
    score_batch, Completion, Language, RewardBreakdown, RewardConfig, RewardSummary, RewardWeights,
};

// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
