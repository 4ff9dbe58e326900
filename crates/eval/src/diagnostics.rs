//! Run diagnostics: signs that a run's responses say more about the serving setup than
//! about the model. Three checks per task, pure functions over the generated responses:
//!
//! - **identical samples**: the k samples of a problem are byte-identical although the
//!   task asked for temperature > 0 (the server most likely ignores the sampling
//!   parameters); never reported at temperature 0, where identical samples are expected;
//! - **truncation**: responses whose finish reason is `length` (the token limit was hit).
//!   Only responses whose source records a finish reason count: response files carry
//!   one only when their lines have a `finish_reason` field, so for them the check is
//!   usually skipped (`finish_reason_known` is 0 and `truncated_share` absent);
//! - **degenerate responses**: a repetition loop at the end ([`repetition_loop`]) or
//!   non-text characters ([`has_non_text`]).
//!
//! [`diagnose`] counts them into [`Diagnostics`] (in `report.json` as each task's
//! `diagnostics`, and in the "Diagnostics" section of `summary.md`) and words a warning
//! for each check above its threshold; the runner logs those with `tracing::warn!`.

use serde::Serialize;

use crate::source::Generation;

/// Share of responses (among those with a known finish reason) hitting the token limit
/// from which a task gets a warning.
pub const TRUNCATED_WARN_SHARE: f64 = 0.10;
/// Share of responses with a repetition loop or non-text characters from which a task
/// gets a warning.
pub const DEGENERATE_WARN_SHARE: f64 = 0.05;
/// Only the last this-many bytes of a response are searched for a repetition loop.
pub const LOOP_TAIL_BYTES: usize = 64 * 1024;
/// The shortest repeated unit (bytes) [`repetition_loop`] looks for; shorter periods
/// are found as their multiples.
pub const LOOP_MIN_UNIT: usize = 20;
/// Repetitions of a unit shorter than [`LOOP_LONG_UNIT`] bytes that make a loop.
pub const LOOP_MIN_REPEATS: usize = 8;
/// From this unit length (bytes), [`LOOP_LONG_REPEATS`] repetitions make a loop.
pub const LOOP_LONG_UNIT: usize = 200;
/// Repetitions of a long unit that make a loop.
pub const LOOP_LONG_REPEATS: usize = 4;
/// Consecutive identical non-blank lines at the end that make a loop.
pub const LOOP_LINE_REPEATS: usize = 10;

/// A task's run diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Diagnostics {
    /// The requested sampling temperature.
    pub temperature: f64,
    /// Problems whose samples were all byte-identical (at least two responses), counted
    /// only when `temperature > 0`.
    pub identical_problems: usize,
    /// Problems with at least two responses (what `identical_problems` is out of).
    pub multi_sample_problems: usize,
    /// Responses (samples that got one).
    pub responses: usize,
    /// Responses whose source recorded a finish reason.
    pub finish_reason_known: usize,
    /// Responses that stopped at the token limit (`finish_reason == "length"`).
    pub truncated: usize,
    /// `truncated / finish_reason_known`; absent when no finish reason is known (the
    /// check is skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_share: Option<f64>,
    /// Responses ending in a repetition loop.
    pub repetition_loops: usize,
    /// Responses with non-text characters (control characters other than `\n`, `\r`,
    /// `\t`, or U+FFFD).
    pub non_text: usize,
    /// Responses with a repetition loop or non-text characters, over `responses`.
    pub degenerate_share: f64,
    /// The warnings of the checks above their thresholds (empty when all is well).
    pub warnings: Vec<String>,
}

/// Whether the response stopped at the token limit: `Some(true)` for finish reason
/// `length` (OpenAI-compatible servers; the local model reports the same), `None` when
/// the source recorded no finish reason.
pub fn truncated(g: &Generation) -> Option<bool> {
    g.finish_reason.as_deref().map(|r| r == "length")
}

/// Whether `text` has characters that are not text: control characters other than
/// `\n`, `\r` and `\t` (C0, DEL and C1), or U+FFFD (bytes that were not valid UTF-8).
pub fn has_non_text(text: &str) -> bool {
    text.chars()
        .any(|c| c == '\u{FFFD}' || (c.is_control() && !matches!(c, '\n' | '\r' | '\t')))
}

/// Z-array of `s`: `z[i]` is the length of the longest common prefix of `s` and
/// `s[i..]` (`z[0] = 0`). Linear time.
fn z_array(s: &[u8]) -> Vec<usize> {
    let n = s.len();
    let mut z = vec![0; n];
    let (mut l, mut r) = (0, 0);
    for i in 1..n {
        if i < r {
            z[i] = (r - i).min(z[i - l]);
        }
        while i + z[i] < n && s[z[i]] == s[i + z[i]] {
            z[i] += 1;
        }
        if i + z[i] > r {
            l = i;
            r = i + z[i];
        }
    }
    z
}

/// Whether the response ends in a repetition loop: within its last [`LOOP_TAIL_BYTES`]
/// bytes, either the same unit of at least [`LOOP_MIN_UNIT`] bytes repeated
/// [`LOOP_MIN_REPEATS`] times (or a unit of [`LOOP_LONG_UNIT`] bytes or more,
/// [`LOOP_LONG_REPEATS`] times; a cut-off last repetition is fine, and a shorter period
/// counts through its multiples), or the same non-blank line [`LOOP_LINE_REPEATS`] times
/// in a row (blank lines between them ignored). Linear in the tail's length; ordinary
/// reasoning that repeats short words ("wait", "so") is not periodic over hundreds of
/// bytes and is not flagged.
pub fn repetition_loop(text: &str) -> bool {
    let b = text.as_bytes();
    let tail = &b[b.len().saturating_sub(LOOP_TAIL_BYTES)..];
    repeated_unit(tail) || repeated_line(tail)
}

fn repeated_unit(tail: &[u8]) -> bool {
    // The tail read backwards: a suffix of period p is a prefix of period p, whose
    // length is p + z[p].
    let rev: Vec<u8> = tail.iter().rev().copied().collect();
    let z = z_array(&rev);
    (LOOP_MIN_UNIT..rev.len()).any(|p| {
        let reps = if p >= LOOP_LONG_UNIT {
            LOOP_LONG_REPEATS
        } else {
            LOOP_MIN_REPEATS
        };
        p + z[p] >= p * reps
    })
}

fn repeated_line(tail: &[u8]) -> bool {
    let mut lines = tail
        .split(|&c| c == b'\n')
        .map(|l| l.trim_ascii_end())
        .filter(|l| !l.trim_ascii().is_empty())
        .rev()
        .peekable();
    let Some(mut last) = lines.next() else {
        return false;
    };
    // A last line cut off by the token limit: start from the line before it.
    if let Some(&prev) = lines.peek() {
        if prev != last && prev.starts_with(last) {
            last = prev;
            lines.next();
        }
    }
    1 + lines.take_while(|l| *l == last).count() >= LOOP_LINE_REPEATS
}

/// Counts a task's diagnostics over `gens` (`[problem][sample]`, `Err` for samples
/// without a response) at the requested `temperature`, with the warnings of the checks
/// above their thresholds.
pub fn diagnose(temperature: f64, gens: &[Vec<Result<Generation, String>>]) -> Diagnostics {
    let mut d = Diagnostics {
        temperature,
        ..Diagnostics::default()
    };
    let mut degenerate = 0;
    for problem in gens {
        let texts: Vec<String> = problem
            .iter()
            .filter_map(|g| g.as_ref().ok())
            .map(Generation::full_text)
            .collect();
        if texts.len() >= 2 {
            d.multi_sample_problems += 1;
            if temperature > 0.0 && texts.iter().all(|t| *t == texts[0]) {
                d.identical_problems += 1;
            }
        }
        for (g, text) in problem.iter().filter_map(|g| g.as_ref().ok()).zip(&texts) {
            d.responses += 1;
            if let Some(t) = truncated(g) {
                d.finish_reason_known += 1;
                d.truncated += t as usize;
            }
            let (looped, non_text) = (repetition_loop(text), has_non_text(text));
            d.repetition_loops += looped as usize;
            d.non_text += non_text as usize;
            degenerate += (looped || non_text) as usize;
        }
    }
    d.truncated_share =
        (d.finish_reason_known > 0).then(|| d.truncated as f64 / d.finish_reason_known as f64);
    d.degenerate_share = degenerate as f64 / d.responses.max(1) as f64;
    if d.identical_problems > 0 {
        d.warnings.push(format!(
            "{} of {} problems got byte-identical samples at temperature {}: the server \
             may be ignoring the sampling parameters",
            d.identical_problems, d.multi_sample_problems, temperature
        ));
    }
    if let Some(share) = d.truncated_share.filter(|s| *s >= TRUNCATED_WARN_SHARE) {
        d.warnings.push(format!(
            "{} of {} responses ({:.1}%) hit the token limit (finish_reason \"length\")",
            d.truncated,
            d.finish_reason_known,
            100.0 * share
        ));
    }
    if degenerate > 0 && d.degenerate_share >= DEGENERATE_WARN_SHARE {
        d.warnings.push(format!(
            "{} of {} responses ({:.1}%) look degenerate ({} repetition loops, {} with \
             non-text characters)",
            degenerate,
            d.responses,
            100.0 * d.degenerate_share,
            d.repetition_loops,
            d.non_text
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(text: &str) -> Result<Generation, String> {
        Ok(Generation {
            text: text.into(),
            ..Generation::default()
        })
    }

    fn fin(text: &str, reason: &str) -> Result<Generation, String> {
        Ok(Generation {
            text: text.into(),
            finish_reason: Some(reason.into()),
            ..Generation::default()
        })
    }

    /// A long, ordinary chain of thought that keeps repeating short words.
    fn normal_cot() -> String {
        let mut s = String::from("<think>\n");
        for i in 0..300 {
            s += &format!(
                "Wait, so step {i}: we have {} + {} = {}. So so wait, let me check it again. \
                 Hmm, wait.\n",
                i * 7 % 13,
                i % 11,
                i * 7 % 13 + i % 11
            );
        }
        s += "</think>\nThe answer is \\boxed{42}.";
        s
    }

    #[test]
    fn identical_samples_warn_only_above_temperature_zero() {
        let gens = vec![
            vec![g("same answer \\boxed{1}"), g("same answer \\boxed{1}")],
            vec![g("one"), g("two")],
            vec![g("lonely"), Err("timeout".into())],
        ];
        let d = diagnose(0.6, &gens);
        assert_eq!((d.identical_problems, d.multi_sample_problems), (1, 2));
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].contains("1 of 2 problems"),
            "{:?}",
            d.warnings
        );
        let d = diagnose(0.0, &gens);
        assert_eq!(d.identical_problems, 0);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn reasoning_counts_in_identity() {
        let a = Generation {
            text: "x".into(),
            reasoning: Some("r1".into()),
            ..Generation::default()
        };
        let b = Generation {
            reasoning: Some("r2".into()),
            ..a.clone()
        };
        let d = diagnose(1.0, &[vec![Ok(a), Ok(b)]]);
        assert_eq!(d.identical_problems, 0);
    }

    #[test]
    fn truncation_counts_known_finish_reasons_only() {
        let gens = vec![vec![fin("a", "length"), fin("b", "stop"), g("c")]];
        let d = diagnose(0.6, &gens);
        assert_eq!((d.truncated, d.finish_reason_known), (1, 2));
        assert_eq!(d.truncated_share, Some(0.5));
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("token limit"));
        // 1 in 20 is below the threshold.
        let mut many: Vec<_> = (0..19).map(|i| fin(&format!("r{i}"), "stop")).collect();
        many.push(fin("cut", "length"));
        let d = diagnose(0.6, &[many]);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // No finish reason anywhere: the check is skipped.
        let d = diagnose(0.6, &[vec![g("a"), g("b")]]);
        assert_eq!(d.truncated_share, None);
        assert!(d.warnings.is_empty());
        let json = serde_json::to_value(&d).unwrap();
        assert!(json.get("truncated_share").is_none());
    }

    #[test]
    fn loops_are_found() {
        let unit = "Let me reconsider the problem from the start. ";
        let looped = format!("{}{}", normal_cot(), unit.repeat(50));
        assert!(repetition_loop(&looped));
        // Cut off in the middle of a repetition, as at the token limit.
        assert!(repetition_loop(&looped[..looped.len() - 7]));
        // A short period counts through its multiples.
        assert!(repetition_loop(&format!("Answer: {}", "the ".repeat(200))));
        // A long unit (a paragraph) repeated a few times.
        let para: String = (0..30).map(|i| format!("fact {i}; ")).collect();
        assert!(para.len() >= LOOP_LONG_UNIT);
        assert!(repetition_loop(&format!("intro\n{}", para.repeat(4))));
        // The same short line over and over, blank lines between.
        assert!(repetition_loop(&format!(
            "start\n{}",
            "Wait.\n\n".repeat(12)
        )));
        // ... with the last one cut off.
        assert!(repetition_loop(&format!(
            "start\n{}Wa",
            "Wait.\n".repeat(12)
        )));
    }

    #[test]
    fn ordinary_text_is_not_a_loop() {
        assert!(!repetition_loop(&normal_cot()));
        assert!(!repetition_loop(""));
        assert!(!repetition_loop("\\boxed{2}"));
        assert!(!repetition_loop(&"wait ".repeat(20))); // 100 bytes: not many repeats of 20
        assert!(!repetition_loop(&format!("x\n{}", "Wait.\n".repeat(9))));
        let code = "def f(n):\n    if n < 2:\n        return n\n    return f(n - 1) + f(n - 2)\n\
                    \n\nassert f(10) == 55\nassert f(1) == 1\nassert f(0) == 0\n";
        assert!(!repetition_loop(code));
        // A loop early in a long response, far before the end, is not "at the end".
        let early = format!("{}{}", "again and again and ".repeat(50), normal_cot());
        assert!(!repetition_loop(&early));
    }

    #[test]
    fn loop_search_is_bounded_to_the_tail() {
        // A loop that ends more than LOOP_TAIL_BYTES before the end is out of reach;
        // a megabyte of looping is still fast (linear).
        let big = "0123456789abcdefghijklmnopqrstuvwxyz. ".repeat(30_000);
        assert!(repetition_loop(&big));
        let filler: String = (0..6000)
            .map(|i| format!("line {i}: {}\n", i * i))
            .collect();
        assert!(filler.len() > LOOP_TAIL_BYTES);
        assert!(!repetition_loop(&format!("{big}{filler}")));
    }

    #[test]
    fn non_text_is_found() {
        assert!(has_non_text("abc\u{0}def"));
        assert!(has_non_text("bad bytes \u{FFFD} here"));
        assert!(has_non_text("esc \u{1b}[0m"));
        assert!(has_non_text("c1 \u{85}"));
        assert!(!has_non_text(
            "tabs\tand\r\nnewlines, 中文, émoji 🙂, math ∑ x²"
        ));
    }

    #[test]
    fn degenerate_share_warns_above_threshold() {
        let unit = "I will now repeat this sentence forever. ";
        let mut gens = vec![vec![g(&unit.repeat(20)), g("fine \\boxed{1}")]];
        let d = diagnose(0.6, &gens);
        assert_eq!((d.repetition_loops, d.non_text), (1, 0));
        assert_eq!(d.degenerate_share, 0.5);
        assert!(d.warnings.iter().any(|w| w.contains("degenerate")));
        // 1 in 40 is below the threshold.
        gens.extend((0..19).map(|i| vec![g(&format!("a{i}")), g(&format!("b{i}"))]));
        let d = diagnose(0.6, &gens);
        assert_eq!(d.repetition_loops, 1);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let d = diagnose(0.6, &[vec![g("x\u{FFFD}y"), g("ok")]]);
        assert_eq!(d.non_text, 1);
        assert_eq!(d.warnings.len(), 1);
    }
}
