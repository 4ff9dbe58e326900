//! The JSONL case files read by `eval judge` and `eval bench`: one
//! `{"id", "kind", "gold", "response"}` object per line.
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

use judge::{Gold, Kind};
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
}

/// Parses one JSONL case line; the error names the 1-based line number and the problem
/// (`line N: ...`).
pub fn parse_case_line(line: &str, line_no: usize) -> Result<Case, String> {
    serde_json::from_str::<Case>(line).map_err(|e| format!("line {line_no}: {e}"))
}
