//! R1-style responses: reasoning in `<think>...</think>`, then the answer.
//!
//! Policy:
//!
//! 1. The answer is everything after the last `</think>`; the reasoning is everything
//!    before it, without a leading `<think>`. A missing opening `<think>` is normal (R1
//!    chat templates pre-fill it).
//! 2. The Sky-T1 / OpenThoughts format is the same structure with other tags:
//!    `<|begin_of_thought|>` reasoning `<|end_of_thought|>`, then the answer inside
//!    `<|begin_of_solution|> ... <|end_of_solution|>`. The answer section is the solution
//!    (text after `<|end_of_solution|>` is not part of it); a solution without its end tag
//!    (cut off) runs to the end of the response.
//! 3. An opening tag (`<think>`, `<|begin_of_thought|>`) without its closing tag is an
//!    unterminated reasoning block: there is no final answer, whatever the reasoning
//!    contains.
//! 4. With [`SplitOptions::think_prefilled`] (the prompt ended with `<think>`), text
//!    before `</think>` is reasoning and a response without `</think>` is unterminated
//!    reasoning, like 3.
//! 5. Otherwise a response with no tags at all is [`ThinkFormat::NoTags`]: its whole text
//!    is returned as the answer section, but it may be a chain of thought cut off by the
//!    length limit, so the judge takes an answer from it only when the text ends with a
//!    final answer (see [`crate::extract`]).
//! 6. The format verdict ([`ThinkFormat::is_valid`]) accepts exactly one closing tag, at
//!    most one opening tag (and only at the start), non-empty reasoning and a non-empty
//!    answer, with either tag family.

/// How a response uses the think tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkFormat {
    /// `<think>reasoning</think>answer` (or the Sky-T1 tags, both present).
    Full,
    /// `reasoning</think>answer` (opening tag pre-filled by the template).
    Prefilled,
    /// No tags at all.
    NoTags,
    /// Reasoning never closed: no answer.
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

    /// The name used in reports: `full`, `prefilled`, `no_tags`, `unterminated`, `malformed`.
    pub fn name(self) -> &'static str {
        match self {
            ThinkFormat::Full => "full",
            ThinkFormat::Prefilled => "prefilled",
            ThinkFormat::NoTags => "no_tags",
            ThinkFormat::Unterminated => "unterminated",
            ThinkFormat::Malformed => "malformed",
        }
    }
}

/// How to read a response's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitOptions {
    /// The prompt pre-filled `<think>` (R1 chat templates): a response without `</think>`
    /// is unterminated reasoning, never an answer.
    pub think_prefilled: bool,
}

/// A response split into reasoning and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split<'a> {
    /// The reasoning text (empty when there are no tags).
    pub reasoning: &'a str,
    /// The final-answer section; `None` when the reasoning was never closed. For
    /// [`ThinkFormat::NoTags`] this is the whole response.
    pub answer: Option<&'a str>,
    /// The format verdict.
    pub format: ThinkFormat,
    /// The answer section was cut off: a Sky-T1 `<|begin_of_solution|>` without its
    /// `<|end_of_solution|>`, or an answer section that stops mid-sentence.
    pub answer_cut: bool,
}

struct Tags {
    open: &'static str,
    close: &'static str,
}

const R1: Tags = Tags {
    open: "<think>",
    close: "</think>",
};
const SKY: Tags = Tags {
    open: "<|begin_of_thought|>",
    close: "<|end_of_thought|>",
};
const SOLUTION_OPEN: &str = "<|begin_of_solution|>";
const SOLUTION_CLOSE: &str = "<|end_of_solution|>";

/// Splits `response` into reasoning and answer under the module's policy, with default
/// options (no pre-filled `<think>`).
///
/// ```
/// use judge::response::{split, ThinkFormat};
/// let s = split("Let me think... \\boxed{3}</think>The answer is \\boxed{4}.");
/// assert_eq!(s.format, ThinkFormat::Prefilled);
/// assert_eq!(s.answer, Some("The answer is \\boxed{4}."));
/// assert_eq!(split("<think>still going").answer, None);
/// let sky = split("<|begin_of_thought|>r<|end_of_thought|>\n\n<|begin_of_solution|>\\boxed{4}<|end_of_solution|>");
/// assert_eq!(sky.answer, Some("\\boxed{4}"));
/// ```
pub fn split(response: &str) -> Split<'_> {
    split_with(response, SplitOptions::default())
}

/// [`split`] with options.
///
/// ```
/// use judge::response::{split_with, SplitOptions, ThinkFormat};
/// let prefilled = SplitOptions { think_prefilled: true };
/// // Cut off by the length limit: no `</think>`, so no answer.
/// let s = split_with("Let me see... the answer is 5, but", prefilled);
/// assert_eq!((s.answer, s.format), (None, ThinkFormat::Unterminated));
/// ```
pub fn split_with(response: &str, options: SplitOptions) -> Split<'_> {
    let found = [&R1, &SKY]
        .into_iter()
        .find_map(|t| response.rfind(t.close).map(|p| (t, p)));
    match found {
        Some((tags, close)) => {
            let before = &response[..close];
            let mut answer = &response[close + tags.close.len()..];
            let trimmed = before.trim_start();
            let (reasoning, had_open) = match trimmed.strip_prefix(tags.open) {
                Some(r) => (r, true),
                None => (trimmed, false),
            };
            let single_close = !before.contains(tags.close);
            let no_stray_open = !reasoning.contains(tags.open) && !answer.contains(tags.open);
            let mut answer_cut = false;
            if let Some(p) = answer.find(SOLUTION_OPEN) {
                let sol = &answer[p + SOLUTION_OPEN.len()..];
                answer_cut = !sol.contains(SOLUTION_CLOSE);
                answer = sol.find(SOLUTION_CLOSE).map_or(sol, |e| &sol[..e]);
            }
            let last = answer.trim_end().chars().last();
            answer_cut |= last.is_some_and(|c| c.is_alphanumeric() || "+-*/=^_,({[\\".contains(c));
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
                answer_cut,
            }
        }
        None if options.think_prefilled
            || response.contains(R1.open)
            || response.contains(SKY.open) =>
        {
            Split {
                reasoning: response,
                answer: None,
                format: ThinkFormat::Unterminated,
                answer_cut: false,
            }
        }
        None => Split {
            reasoning: "",
            answer: Some(response),
            format: ThinkFormat::NoTags,
            answer_cut: false,
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
