//! Final-answer extraction from the answer section of a response.
//!
//! Tiers, tried in order; the first that finds something wins:
//!
//! 1. The last top-level `\boxed{...}` / `\fbox{...}` with balanced braces (also
//!    `\boxed 5`). If the last box is not closed (truncated output) there is **no answer**:
//!    earlier boxes are not used. When the reference is a list, a trailing run of boxes
//!    separated only by commas, `and`, `$` or spaces is joined into one list answer; boxes
//!    with other text between them (a correction) are not.
//! 2. The last anchor: `final answer is X`, `answer: X`, `answer is X`
//!    (case-insensitive, Markdown bold allowed); X runs to the end of its line.
//! 3. Task-specific tiers: GSM8K `#### N`; the last number (GSM8K only).
//! 4. A short one-line answer section (at most [`SHORT_ANSWER`] bytes) is the answer itself.
//!
//! Only the last [`MAX_SECTION`] bytes of an answer section are searched.

/// The tail of an answer section that extraction looks at.
pub const MAX_SECTION: usize = 64 * 1024;

/// Longest answer section that counts as an answer on its own.
pub const SHORT_ANSWER: usize = 64;

/// The last box of the answer section is not closed: the output was cut off, so there
/// is no final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the last \\boxed{{}} is truncated")]
pub struct Truncated;

/// One `\boxed{...}` found in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boxed<'a> {
    /// The content between the braces.
    pub content: &'a str,
    /// Byte offset of the `\boxed` command.
    pub start: usize,
    /// Byte offset just after the closing brace.
    pub end: usize,
}

/// The boxes of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boxes<'a> {
    /// Complete top-level boxes in order.
    pub complete: Vec<Boxed<'a>>,
    /// Whether the text ends inside an unclosed box.
    pub truncated: bool,
}

/// The last [`MAX_SECTION`] bytes of `s`, cut at a character boundary.
pub fn tail(s: &str) -> &str {
    if s.len() <= MAX_SECTION {
        return s;
    }
    let mut start = s.len() - MAX_SECTION;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Finds all top-level boxes.
pub fn boxes(s: &str) -> Boxes<'_> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find('\\') {
        let at = i + off;
        let rest = &s[at..];
        let name_len = if rest.starts_with("\\boxed") {
            6
        } else if rest.starts_with("\\fbox") {
            5
        } else {
            i = at + 1;
            continue;
        };
        let mut j = at + name_len;
        if b.get(j).is_some_and(|c| c.is_ascii_alphabetic()) {
            // `\boxedfoo` is another command.
            i = j;
            continue;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j >= b.len() {
            return Boxes {
                complete: out,
                truncated: true,
            };
        }
        if b[j] == b'{' {
            match crate::math::lexer::brace_group(s, j) {
                Some((content, end)) => {
                    out.push(Boxed {
                        content,
                        start: at,
                        end,
                    });
                    i = end;
                }
                None => {
                    return Boxes {
                        complete: out,
                        truncated: true,
                    }
                }
            }
        } else {
            // `\boxed 5`: one token.
            let end = s[j..]
                .find(|c: char| c.is_whitespace() || c == '$')
                .map_or(s.len(), |k| j + k);
            let content = s[j..end].trim_end_matches(['.', ',']);
            if !content.is_empty() {
                out.push(Boxed {
                    content,
                    start: at,
                    end,
                });
            }
            i = end.max(j + 1).min(s.len());
        }
        if out.len() > 10_000 {
            break;
        }
    }
    Boxes {
        complete: out,
        truncated: false,
    }
}

fn is_box_separator(between: &str) -> bool {
    let mut t = between.to_string();
    for w in [
        "\\text{and}",
        "\\text{ and }",
        "\\quad",
        "\\qquad",
        "\\text{or}",
        "\\text{ or }",
        "and",
        "or",
        "\\(",
        "\\)",
        "\\[",
        "\\]",
    ] {
        t = t.replace(w, " ");
    }
    t.chars()
        .all(|c| c.is_whitespace() || matches!(c, ',' | ';' | '$' | '.' | '&'))
}

/// The last box's content; with `join_run`, the trailing run of adjacent boxes joined with
/// `", "`. `Err(Truncated)` when the last box is truncated; `Ok(None)` when there is no box.
pub fn last_boxed(s: &str, join_run: bool) -> Result<Option<String>, Truncated> {
    let found = boxes(s);
    if found.truncated {
        return Err(Truncated);
    }
    let Some(last) = found.complete.last() else {
        return Ok(None);
    };
    if !join_run {
        return Ok(Some(last.content.trim().to_string()));
    }
    let mut run = vec![last];
    for pair in found.complete.windows(2).rev() {
        if is_box_separator(&s[pair[0].end..pair[1].start]) {
            run.push(&pair[0]);
        } else {
            break;
        }
    }
    run.reverse();
    Ok(Some(
        run.iter()
            .map(|b| b.content.trim())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

const ANCHORS: &[&str] = &["final answer is", "final answer:", "answer is", "answer:"];

/// Text after the last answer anchor, to the end of its line, with Markdown and `$`
/// stripped.
pub fn anchored(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    let mut best: Option<(usize, usize)> = None;
    for a in ANCHORS {
        if let Some(pos) = lower.rfind(a) {
            let end = pos + a.len();
            if best.is_none_or(|(p, _)| pos > p) {
                best = Some((pos, end));
            }
        }
    }
    let (_, end) = best?;
    let rest = &s[end..];
    let line = rest.trim_start_matches([' ', '*', ':', '\t']);
    let line = line.split('\n').next().unwrap_or("");
    let cleaned = clean_answer(line);
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Removes Markdown emphasis, `$`, `\(`/`\)` and trailing punctuation around an answer.
pub fn clean_answer(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t;
        t = t.trim_matches(|c: char| c.is_whitespace() || c == '*' || c == '$');
        t = t.strip_prefix("\\(").unwrap_or(t);
        t = t.strip_suffix("\\)").unwrap_or(t);
        t = t.strip_prefix("\\[").unwrap_or(t);
        t = t.strip_suffix("\\]").unwrap_or(t);
        t = t.trim_end_matches(['.', ',', ';']);
        if t == before {
            break;
        }
    }
    t.to_string()
}

/// The text after the last `#### ` (GSM8K), to the end of its line.
pub fn gsm8k_hashes(s: &str) -> Option<String> {
    let pos = s.rfind("####")?;
    let line = s[pos + 4..].split('\n').next().unwrap_or("");
    let cleaned = clean_answer(line);
    (!cleaned.is_empty()).then_some(cleaned)
}

/// The last number in `s` (sign, thousands commas and decimals kept).
pub fn last_number(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut end = None;
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if b[i].is_ascii_digit() {
            end = Some(i + 1);
            break;
        }
    }
    let end = end?;
    let mut start = end;
    while start > 0 {
        let c = b[start - 1];
        let digit_before = start >= 2 && b[start - 2].is_ascii_digit();
        if c.is_ascii_digit() || ((c == b',' || c == b'.') && digit_before) {
            start -= 1;
        } else {
            break;
        }
    }
    if start > 0 && b[start - 1] == b'-' {
        start -= 1;
    }
    Some(s[start..end].to_string())
}

/// A short, one-line answer section taken as the answer itself.
pub fn short_answer(s: &str) -> Option<String> {
    let t = s.trim();
    if t.is_empty() || t.len() > SHORT_ANSWER || t.contains('\n') {
        return None;
    }
    Some(clean_answer(t))
}

/// Extraction for math: boxed, then anchors, then a short answer section.
/// `Err(Truncated)` means the last box was truncated (no answer).
pub fn math_answer(section: &str, reference_is_list: bool) -> Result<Option<String>, Truncated> {
    let section = tail(section);
    if let Some(b) = last_boxed(section, reference_is_list)? {
        return Ok(Some(b));
    }
    Ok(anchored(section).or_else(|| short_answer(section)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_extraction() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("so \\boxed{5}.", Some("5"), "plain box"),
            (
                "\\boxed{\\frac{1}{2}}",
                Some("\\frac{1}{2}"),
                "nested braces",
            ),
            ("$\\boxed{x^{2}}$", Some("x^{2}"), "inside math mode"),
            ("\\boxed 5 done", Some("5"), "space form"),
            ("\\fbox{7}", Some("7"), "fbox"),
            (
                "\\boxed{1} wait, no: \\boxed{2}",
                Some("2"),
                "self-correction keeps the last",
            ),
            ("\\boxed{\\{1, 2\\}}", Some("\\{1, 2\\}"), "escaped braces"),
            ("nothing here", None, "no box"),
        ];
        for (input, want, why) in cases {
            assert_eq!(
                last_boxed(input, false),
                Ok(want.map(String::from)),
                "{why}"
            );
        }
        assert_eq!(
            last_boxed("\\boxed{1} then \\boxed{\\frac{3}{", false),
            Err(Truncated),
            "truncated box"
        );
    }

    #[test]
    fn box_runs_join_only_adjacent_boxes() {
        assert_eq!(
            last_boxed("\\boxed{1}, \\boxed{2}", true),
            Ok(Some("1, 2".into()))
        );
        assert_eq!(
            last_boxed("$\\boxed{1}$ and $\\boxed{2}$.", true),
            Ok(Some("1, 2".into()))
        );
        assert_eq!(
            last_boxed("\\boxed{1}. Hmm, that is wrong. \\boxed{2}", true),
            Ok(Some("2".into()))
        );
    }

    #[test]
    fn anchors() {
        assert_eq!(anchored("The final answer is $42$."), Some("42".into()));
        assert_eq!(anchored("**Answer:** 7\nmore"), Some("7".into()));
        assert_eq!(anchored("no anchor"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(last_number("pay $1,200.50 now"), Some("1,200.50".into()));
        assert_eq!(last_number("it is -3."), Some("-3".into()));
        assert_eq!(gsm8k_hashes("work\n#### 18"), Some("18".into()));
    }
}
