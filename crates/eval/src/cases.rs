//! The JSONL case files read by `eval judge` and `eval bench`: one
//! `{"id", "kind", "gold", "response"}` object per line, optionally with `"policy":
//! "careful" | "strict"` and `"think_prefilled": true` overriding the command's options
//! for that line.
//!
//! ```
//! use eval::cases::parse_case_line;
//! use eval::Kind;
//!
//! let case = parse_case_line(r#"{"id": 1, "gold": "4", "response": "</think>\\boxed{4}"}"#, 1)
//!     .unwrap();
//! assert_eq!(case.kind, Kind::Math);
//! assert_eq!(parse_case_line("not json", 7).unwrap_err().split(':').next(), Some("line 7"));
//! ```

use judge::{AnswerPolicy, Gold, Judge, JudgeConfig, Kind};
use serde::Deserialize;

/// One line of a judge input file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Case {
    /// Case identifier, echoed in the output.
    pub id: serde_json::Value,
    /// Checker (default `math`).
    #[serde(default)]
    pub kind: Kind,
    /// Reference answer or aliases.
    pub gold: Gold,
    /// The model's full response.
    pub response: String,
    /// Answer policy for this line (default: the command's).
    #[serde(default)]
    pub policy: Option<AnswerPolicy>,
    /// The prompt pre-filled `<think>` (default: the command's).
    #[serde(default)]
    pub think_prefilled: Option<bool>,
}

impl Case {
    /// The judge for this line: `base` with the line's overrides.
    ///
    /// ```
    /// use eval::cases::parse_case_line;
    /// use eval::{AnswerPolicy, JudgeConfig};
    /// let line = r#"{"id": 1, "gold": "7", "response": "</think>So the total is 7.", "policy": "strict"}"#;
    /// let case = parse_case_line(line, 1).unwrap();
    /// let judge = case.judge(JudgeConfig::default());
    /// assert_eq!(judge.config().policy, AnswerPolicy::Strict);
    /// assert!(!judge.check(case.kind, &case.gold, &case.response).correct);
    /// ```
    pub fn judge(&self, base: JudgeConfig) -> Judge {
        Judge::new(JudgeConfig {
            policy: self.policy.unwrap_or(base.policy),
            think_prefilled: self.think_prefilled.unwrap_or(base.think_prefilled),
            ..base
        })
    }
}

/// Parses one JSONL case line; the error names the 1-based line number and the problem
/// (`line N: ...`).
pub fn parse_case_line(line: &str, line_no: usize) -> Result<Case, String> {
    serde_json::from_str::<Case>(line).map_err(|e| format!("line {line_no}: {e}"))
}
