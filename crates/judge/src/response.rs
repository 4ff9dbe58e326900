//! R1-style responses: reasoning in `<think>...</think>`, then the answer.
//!
//! Policy:
//!
//! 1. The answer is everything after the last `</think>`; the reasoning is everything
//!    before it, without a leading `<think>`. A missing opening `<think>` is normal (R1
//!    chat templates pre-fill it).
//! 2. `<think>` without a closing `</think>` is an unterminated reasoning block: there is
//!    no final answer, whatever the reasoning contains.
//! 3. A response with no tags at all is all answer (non-reasoning models), unless the
//!    judge is configured to require the think format.
//! 4. The format verdict ([`ThinkFormat::is_valid`]) accepts exactly one `</think>`, at
//!    most one `<think>` (and only at the start), non-empty reasoning and a non-empty
//!    answer.

/// How a response uses the think tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkFormat {
    /// `<think>reasoning</think>answer`.
    Full,
    /// `reasoning</think>answer` (opening tag pre-filled by the template).
    Prefilled,
    /// No tags at all.
    NoTags,
    /// `<think>` never closed: no answer.
    Unterminated,
    /// Tags present but misused (several blocks, stray `<think>` after the start, empty
    /// reasoning or empty answer).
    Malformed,
}

impl ThinkFormat {
    /// The R1 format verdict: `true` for [`ThinkFormat::Full`] and [`ThinkFormat::Prefilled`].
    pub fn is_valid(self) -> bool {
        matches!(self, ThinkFormat::Full | ThinkFormat::Prefilled)
    }
}

/// A response split into reasoning and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split<'a> {
    /// The reasoning text (empty when there are no tags).
    pub reasoning: &'a str,
    /// The final-answer section; `None` when the reasoning was never closed.
    pub answer: Option<&'a str>,
    /// The format verdict.
    pub format: ThinkFormat,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Splits `response` into reasoning and answer under the module's policy.
///
/// ```
/// use judge::response::{split, ThinkFormat};
/// let s = split("Let me think... \\boxed{3}</think>The answer is \\boxed{4}.");
/// assert_eq!(s.format, ThinkFormat::Prefilled);
/// assert_eq!(s.answer, Some("The answer is \\boxed{4}."));
/// assert_eq!(split("<think>still going").answer, None);
/// ```
pub fn split(response: &str) -> Split<'_> {
    match response.rfind(CLOSE) {
        Some(close) => {
            let before = &response[..close];
            let answer = &response[close + CLOSE.len()..];
            let trimmed = before.trim_start();
            let (reasoning, had_open) = match trimmed.strip_prefix(OPEN) {
                Some(r) => (r, true),
                None => (trimmed, false),
            };
            let single_close = before.matches(CLOSE).next().is_none();
            let no_stray_open = !reasoning.contains(OPEN) && !answer.contains(OPEN);
            let format = if single_close
                && no_stray_open
                && !reasoning.trim().is_empty()
                && !answer.trim().is_empty()
            {
                if had_open {
                    ThinkFormat::Full
                } else {
                    ThinkFormat::Prefilled
                }
            } else {
                ThinkFormat::Malformed
            };
            Split {
                reasoning,
                answer: Some(answer),
                format,
            }
        }
        None if response.contains(OPEN) => Split {
            reasoning: response,
            answer: None,
            format: ThinkFormat::Unterminated,
        },
        None => Split {
            reasoning: "",
            answer: Some(response),
            format: ThinkFormat::NoTags,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_verdicts() {
        let cases = [
            ("<think>r</think>a", ThinkFormat::Full, "both tags"),
            (
                "\n<think>\nr</think>a",
                ThinkFormat::Full,
                "leading whitespace",
            ),
            (
                "r</think>a",
                ThinkFormat::Prefilled,
                "template pre-filled <think>",
            ),
            ("just an answer", ThinkFormat::NoTags, "no reasoning block"),
            ("<think>r", ThinkFormat::Unterminated, "truncated reasoning"),
            (
                "<think>r</think>a</think>b",
                ThinkFormat::Malformed,
                "two closing tags",
            ),
            (
                "<think>r</think>a<think>",
                ThinkFormat::Malformed,
                "stray opening tag",
            ),
            (
                "<think></think>a",
                ThinkFormat::Malformed,
                "empty reasoning",
            ),
            ("<think>r</think>  ", ThinkFormat::Malformed, "empty answer"),
        ];
        for (input, want, why) in cases {
            assert_eq!(split(input).format, want, "{why}: {input:?}");
        }
    }

    #[test]
    fn answer_inside_reasoning_never_counts() {
        assert_eq!(split("<think>\\boxed{5}").answer, None);
        assert_eq!(split("<think>\\boxed{5}</think>").answer, Some(""));
    }
}
