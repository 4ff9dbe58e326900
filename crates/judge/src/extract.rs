//! Final-answer extraction.
//!
//! [`final_answer`] is the entry point; what it accepts depends on where the text comes
//! from ([`Place`]) and on the answer policy ([`crate::AnswerPolicy`]).
//!
//! Tiers:
//!
//! 1. **Box**: the last top-level `\boxed{...}` / `\fbox{...}` with balanced braces (also
//!    `\boxed 5`, and, under the careful policy only, `boxed{...}` whose backslash was
//!    lost). Empty boxes are not boxes. If the last box is not closed (truncated output)
//!    there is **no answer**: earlier boxes are not used. When the reference is a list, a
//!    trailing run of boxes separated only by commas, `and`, `$` or spaces is joined into
//!    one list answer; boxes with other text between them (a correction) are not.
//! 2. **Anchor** (careful policy only): the last `final answer is X`, `answer: X`,
//!    `answer is X` (case-insensitive, Markdown bold allowed); X runs to the end of its
//!    sentence (the next line when the anchor ends its line). A verdict word
//!    (`the answer is correct`) is not an answer.
//! 3. **Final statement** (careful policy only): the last sentence that states a
//!    conclusion (`So`, `Thus`, `Therefore`, `Hence`, `Finally`, `indeed`, `answer`,
//!    `result`, `total`...) as `... is X` / `... are X` / `... equals X`, where X looks
//!    like math (has a digit or a LaTeX command) and is short.
//! 4. GSM8K `#### N` (GSM8K only, careful policy).
//! 5. A short one-line text (at most [`SHORT_ANSWER`] bytes) is the answer itself.
//!
//! Where the text comes from matters:
//!
//! * [`Place::Answer`]: an answer section after closed reasoning (after `</think>`, or
//!   a Sky-T1 solution). The last box wins, but a later anchor or final statement with a
//!   different value makes the response ambiguous (two different finals): no answer.
//!   Tiers 2-3 count when no box exists and the text after them does not go on
//!   reasoning (`wait`, `but`, `let me`, `actually`, another answer...).
//! * [`Place::Open`]: text that may be unfinished reasoning (a response without tags, or
//!   the reasoning before a `</think>` whose summary gives no answer). An answer counts
//!   only if it **ends** the text: what follows it must be a short closing remark with
//!   no digits, no `=`, no question and no sign of further reasoning (`wait`, `but`,
//!   `let me`, `check`, `maybe`, `next`...), and an anchor or statement must end with a
//!   full stop or a line break (a response cut off in `the answer is 25` has no
//!   answer). The latest such answer wins. Under the strict policy only a box counts.
//!
//! There is no last-number fallback: a number that is not stated as the final answer is
//! never extracted, so gibberish with digits has no answer. Only the last [`MAX_SECTION`]
//! bytes of a text are searched, and every scan is linear in that.

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

/// Finds all top-level boxes (`\\boxed`, `\\fbox`; empty boxes are skipped).
pub fn boxes(s: &str) -> Boxes<'_> {
    boxes_with(s, false)
}

/// [`boxes`], also taking `boxed{...}` whose backslash was lost when `bare` is set.
pub fn boxes_with(s: &str, bare: bool) -> Boxes<'_> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("box") {
        let k = i + off;
        let (at, name_end) = if k >= 2 && &b[k - 2..k] == b"\\f" {
            (k - 2, k + 3)
        } else if s[k..].starts_with("boxed") && k >= 1 && b[k - 1] == b'\\' {
            (k - 1, k + 5)
        } else if bare
            && s[k..].starts_with("boxed{")
            && (k == 0 || !(b[k - 1].is_ascii_alphanumeric() || b[k - 1] == b'\\'))
        {
            (k, k + 5)
        } else {
            i = k + 3;
            continue;
        };
        let mut j = name_end;
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
                    if !content.trim().is_empty() {
                        out.push(Boxed {
                            content,
                            start: at,
                            end,
                        });
                    }
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
    Ok(last_box_in(s, &boxes(s), join_run)?.map(|(t, _)| t))
}

/// The last box (or joined run) of `found` and the offset just after it.
fn last_box_in(
    s: &str,
    found: &Boxes<'_>,
    join_run: bool,
) -> Result<Option<(String, usize)>, Truncated> {
    if found.truncated {
        return Err(Truncated);
    }
    let Some(last) = found.complete.last() else {
        return Ok(None);
    };
    if !join_run {
        return Ok(Some((last.content.trim().to_string(), last.end)));
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
    let text = run
        .iter()
        .map(|b| b.content.trim())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Some((text, last.end)))
}

/// Answer anchors; `final answer` alone needs a `:` or ` is` within 40 bytes on its line
/// (`**Final answer for Subproblem 1:** 3`). Listed first so that a longer anchor at the
/// same place wins.
const ANCHORS: &[&str] = &[
    "final answer",
    "final answer is",
    "final answer:",
    "answer is",
    "answer:",
];

/// Words that grade an answer rather than give one (`the answer is correct`).
const VERDICT_WORDS: &[&str] = &[
    "correct",
    "incorrect",
    "right",
    "wrong",
    "consistent",
    "valid",
    "invalid",
    "confirmed",
    "verified",
    "reasonable",
    "plausible",
    "not",
    "as",
    "the",
    "that",
    "this",
    "likely",
    "probably",
    "still",
    "indeed",
    "given",
    "unclear",
    "unknown",
    "undefined",
    "different",
    "same",
    "above",
    "below",
    "either",
];

/// Leading filler before the value of a statement.
const FILLERS: &[&str] = &[
    "around",
    "approximately",
    "about",
    "roughly",
    "definitely",
    "indeed",
    "exactly",
    "therefore",
    "thus",
    "then",
    "just",
    "simply",
    "equal to",
    "equals",
    "given by",
    "now",
    "still",
    "actually",
    "clearly",
    "as follows",
];

/// Text after the last answer anchor to the end of its sentence (the next line when the
/// anchor ends its line), with Markdown and `$` stripped. Verdict words are not answers.
pub fn anchored(s: &str) -> Option<String> {
    anchored_at(s).map(|c| c.text)
}

/// One extracted candidate: its text, where it ends in the searched text, and whether
/// it ended with a full stop, line break or closing delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    text: String,
    end: usize,
    terminated: bool,
    /// An explicit answer (anchor, `####`) rather than a statement.
    explicit: bool,
}

fn anchored_at(s: &str) -> Option<Candidate> {
    let lower = s.to_ascii_lowercase();
    let (_, mut end) = ANCHORS
        .iter()
        .filter_map(|a| lower.rfind(a).map(|p| (p, p + a.len())))
        .max_by_key(|&(p, _)| p)?;
    if lower[..end].ends_with("final answer") {
        // `**Final Answer for Subproblem 1:** 3`: the value follows the colon.
        let line = &lower[end..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        let colon = line.find(':');
        let is = line.find(" is ").map(|i| i + 3);
        match colon.into_iter().chain(is).min() {
            Some(c) if c <= 40 => end += c + 1,
            _ => return None,
        }
    }
    let rest = &s[end..];
    let skip = rest.len() - rest.trim_start_matches([' ', '*', ':', '\t']).len();
    let mut start = end + skip;
    if s[start..].starts_with('\n') {
        // `The final answer is:` then the value on the next line(s).
        let blank = s[start..].len() - s[start..].trim_start().len();
        start += blank;
    }
    if s[start..].starts_with("- ") {
        // `The final answers are:` followed by a list of several parts.
        return None;
    }
    let (stop, mut terminated) = sentence_end(s, start);
    let cleaned = value_of(&s[start..stop]);
    if !terminated && s[..start].trim_end_matches([' ', '*']).ends_with(':') {
        // A header anchor (`**Final Answer:** 3 bushels`) at the very end: complete
        // unless it stops in a number or an operator.
        let last = s[start..stop].trim_end().bytes().last();
        terminated =
            last.is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'}' | b')' | b'$' | b'*'));
    }
    let first = first_word(&cleaned);
    if cleaned.is_empty() || VERDICT_WORDS.contains(&first.as_str()) {
        return None;
    }
    Some(Candidate {
        text: cleaned,
        end: stop,
        terminated,
        explicit: true,
    })
}

fn first_word(s: &str) -> String {
    s.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn strip_fillers(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t;
        for f in FILLERS {
            if t.len() > f.len()
                && t.is_char_boundary(f.len())
                && t[..f.len()].eq_ignore_ascii_case(f)
                && !t.as_bytes()[f.len()].is_ascii_alphanumeric()
            {
                t = t[f.len()..].trim_start_matches([' ', ',', ':']);
            }
        }
        if t == before {
            break;
        }
    }
    clean_answer(t)
}

/// The answer in the text after a cue: fillers and Markdown removed, and plain words
/// after a leading number dropped (`15 sides` is 15, `9 customers` is 9).
fn value_of(raw: &str) -> String {
    let v = strip_fillers(raw);
    let b = v.as_bytes();
    let mut i = 0;
    if i < b.len() && matches!(b[i], b'-' | b'+') {
        i += 1;
    }
    let digits_from = i;
    while i < b.len() && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b',')) {
        i += 1;
    }
    if i > digits_from && i < b.len() && b[i] == b' ' {
        let rest = v[i..].trim().trim_end_matches(['.', '*']);
        // Words and units (`kcal m⁻² yr⁻¹`, `m/s`), no more math.
        let plain = rest.chars().next().is_some_and(char::is_alphabetic)
            && rest
                .chars()
                .all(|c| c.is_alphabetic() || " -'/·⁻¹²³".contains(c));
        if plain {
            return clean_answer(&v[..i]);
        }
    }
    v
}

/// The end of the sentence that starts at `start`: a line break, or `.`/`!`/`?`/`;`
/// followed by a space or the end, outside `$...$`, `\(...\)` and `\[...\]`. Returns the
/// offset and whether a terminator was found (`false`: the text ran out, other than
/// right after closed math).
fn sentence_end(s: &str, start: usize) -> (usize, bool) {
    let b = s.as_bytes();
    let mut i = start;
    let mut dollar = false;
    let mut depth = 0i32;
    let limit = (start + 2048).min(b.len());
    while i < limit {
        match b[i] {
            b'$' => dollar = !dollar,
            b'\\' if i + 1 < b.len() => {
                match b[i + 1] {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth -= 1,
                    _ => {}
                }
                i += 2;
                continue;
            }
            b'\n' if !dollar && depth <= 0 => return (i, true),
            b'.' | b'!' | b'?' | b';' if !dollar && depth <= 0 => {
                let next = b.get(i + 1);
                if next.is_none_or(|c| c.is_ascii_whitespace() || *c == b'*') {
                    return (i, true);
                }
            }
            _ => {}
        }
        i += 1;
    }
    // Running out right after closed math (`\\[ 5x + 4 = 0 \\]`) is a complete value.
    let rest = s[start..limit].trim_end();
    let closed = rest.ends_with("\\]") || rest.ends_with("\\)") || (rest.ends_with('$') && !dollar);
    (limit, limit < b.len() || closed)
}

/// Where the sentence containing offset `p` starts.
fn sentence_start(s: &str, p: usize) -> usize {
    let b = s.as_bytes();
    let floor = p.saturating_sub(600);
    let mut i = p;
    while i > floor {
        let c = b[i - 1];
        if c == b'\n' || (matches!(c, b'.' | b'!' | b'?') && b.get(i).is_some_and(|n| *n == b' ')) {
            return i;
        }
        i -= 1;
    }
    i
}

/// Words that mark a sentence as a conclusion.
const CONCLUSION_WORDS: &[&str] = &[
    "so",
    "thus",
    "therefore",
    "hence",
    "finally",
    "conclusion",
    "summary",
    "answer",
    "final",
    "result",
    "indeed",
    "overall",
    "total",
    "altogether",
    "consequently",
];

/// Verbs that state a value: `X is 5`, `the polygon has 15 sides`, `x = 5`.
const STATEMENT_CUES: &[&str] = &[
    " is", " are", " was", " were", " be", " equals", " has", " have", " =",
];

fn words_lower(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// Whether a value reads as a math answer: short, with a digit or a LaTeX command, and
/// not a sentence.
fn math_like(v: &str) -> bool {
    if v.is_empty() || v.len() > 120 {
        return false;
    }
    let has_math = v.bytes().any(|c| c.is_ascii_digit() || c == b'\\')
        || v.chars().any(|c| matches!(c, 'π' | '√' | '∞'));
    let long_words = v
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() >= 4)
        .count();
    has_math && long_words <= 3 && !VERDICT_WORDS.contains(&first_word(v).as_str())
}

fn parses_as_math(v: &str) -> bool {
    !matches!(
        crate::math::parse(v),
        Err(_) | Ok(crate::math::Expr::Text(_))
    )
}

/// The value text after a cue, cut where inline math that holds the cue closes
/// (`\(b = 2\) is the value`: 2).
fn cue_value(w: &str, value_start: usize, stop: usize, sentence: usize) -> &str {
    let v = &w[value_start..stop];
    let before = &w[sentence..value_start];
    let open_paren = before.matches("\\(").count() > before.matches("\\)").count();
    if open_paren {
        if let Some(e) = v.find("\\)") {
            return &v[..e];
        }
    }
    if before.matches('$').count() % 2 == 1 {
        if let Some(e) = v.find('$') {
            return &v[..e];
        }
    }
    v
}

/// The last conclusion sentence `... is X.` in the last few kilobytes of `s`, else a
/// last sentence opening with a conclusion word that holds exactly one number (`Thus,
/// the nucleus contains **4 up quarks**.`).
fn statement_at(s: &str) -> Option<Candidate> {
    [
        single_number_conclusion(s),
        reverse_statement(s),
        cue_statement(s),
    ]
    .into_iter()
    .flatten()
    .max_by_key(|c| c.end)
}

fn cue_statement(s: &str) -> Option<Candidate> {
    let mut from = s.len().saturating_sub(4096);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    let w = &s[from..];
    let lower = w.to_ascii_lowercase();
    let lb = lower.as_bytes();
    let mut cues: Vec<(usize, usize)> = Vec::new();
    for c in STATEMENT_CUES {
        for (p, m) in lower.match_indices(c) {
            let mut e = p + m.len();
            if e < lb.len() && lb[e] == b':' {
                e += 1;
            }
            if e < lb.len() && lb[e].is_ascii_whitespace() {
                cues.push((p, e));
            }
        }
    }
    cues.sort_unstable();
    for (k, &(p0, v0)) in cues.iter().enumerate().rev().take(64) {
        // A cue inside display or inline math that opened after an earlier cue of the
        // same sentence belongs to the value of that cue (`is: \[5x + 4 = 0\]`).
        let mut window = p0.saturating_sub(600);
        while !w.is_char_boundary(window) {
            window += 1;
        }
        let earlier = math_opened_at(&w[window..p0]).and_then(|o| {
            let opener = window + o;
            let from = sentence_start(w, w[..opener].trim_end().len());
            cues[..k]
                .iter()
                .rev()
                .find(|&&(q, _)| q >= from && q < opener)
                .map(|&(q, v)| (q, v, from))
        });
        let (_, value_start, start) = earlier.unwrap_or((p0, v0, sentence_start(w, p0)));
        let value_start =
            value_start + (w[value_start..].len() - w[value_start..].trim_start().len());
        let (stop, terminated) = sentence_end(w, value_start);
        let sentence = &w[start..stop];
        let concluding = words_lower(sentence).any(|x| CONCLUSION_WORDS.contains(&x.as_str()));
        if !concluding && going_on(sentence, GOING_ON) {
            continue;
        }
        let value = value_of(cue_value(w, value_start, stop, start));
        if !math_like(&value) || !parses_as_math(&value) {
            continue;
        }
        return Some(Candidate {
            text: value,
            end: from + stop,
            terminated,
            explicit: false,
        });
    }
    None
}

/// Where the math that is still open at the end of `before` was opened (`\[`, `\(`,
/// `$`), if any.
fn math_opened_at(before: &str) -> Option<usize> {
    for (open, close) in [("\\[", "\\]"), ("\\(", "\\)")] {
        if let Some(o) = before.rfind(open) {
            if before.rfind(close).is_none_or(|c| c < o) {
                return Some(o);
            }
        }
    }
    (before.matches('$').count() % 2 == 1)
        .then(|| before.rfind('$'))
        .flatten()
}

/// Phrases that confirm the value just before them as the answer.
const CONFIRMATIONS: &[&str] = &[
    " is the correct answer",
    " is the final answer",
    " is the answer",
    " is the correct sum",
    " is the correct value",
    " is the correct result",
    " is indeed the answer",
    " is correct.",
];

/// `I'm confident that 44 is the correct answer.`: the value before the phrase, in the
/// last sentence.
fn reverse_statement(s: &str) -> Option<Candidate> {
    let t = s.trim_end();
    let body = t.trim_end_matches(['.', '*', ' ']);
    let start = sentence_start(t, body.len());
    let sentence = &t[start..];
    let lower = sentence.to_ascii_lowercase();
    let p = CONFIRMATIONS.iter().filter_map(|c| lower.rfind(c)).max()?;
    let head = &sentence[..p];
    let from = ["that ", ", "]
        .iter()
        .filter_map(|m| head.rfind(m).map(|i| i + m.len()))
        .max()
        .unwrap_or(0);
    let value = value_of(&head[from..]);
    if !math_like(&value) || !parses_as_math(&value) {
        return None;
    }
    Some(Candidate {
        text: value,
        end: body.len(),
        terminated: true,
        explicit: false,
    })
}

/// The last sentence, if it opens with a conclusion word and holds exactly one number.
fn single_number_conclusion(s: &str) -> Option<Candidate> {
    let t = s.trim_end();
    let end = t.len();
    let body = t.trim_end_matches(['.', '*', ' ']);
    let start = sentence_start(t, body.len());
    let sentence = t[start..body.len()].trim_start_matches(['*', ' ', '-']);
    let opener = first_word(sentence);
    if !matches!(
        opener.as_str(),
        "so" | "thus" | "therefore" | "hence" | "finally" | "overall"
    ) || sentence.contains(['=', '\\'])
        || sentence
            .match_indices('$')
            .any(|(i, _)| !sentence[i + 1..].starts_with(|c: char| c.is_ascii_digit()))
    {
        return None;
    }
    let mut numbers = sentence
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .map(|x| x.trim_matches(['.', ',']))
        .filter(|x| x.bytes().any(|c| c.is_ascii_digit()));
    let n = numbers.next()?;
    if numbers.next().is_some() {
        return None;
    }
    Some(Candidate {
        text: n.to_string(),
        end,
        terminated: true,
        explicit: false,
    })
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
    gsm8k_hashes_at(s).map(|c| c.text)
}

fn gsm8k_hashes_at(s: &str) -> Option<Candidate> {
    let pos = s.rfind("####")?;
    let line = s[pos + 4..].split('\n').next().unwrap_or("");
    let cleaned = clean_answer(line);
    let end = pos + 4 + line.len();
    (!cleaned.is_empty()).then_some(Candidate {
        text: cleaned,
        end,
        terminated: true,
        explicit: true,
    })
}

/// The last number in `s` (sign, thousands commas and decimals kept). Used to read a
/// number out of an answer that was already extracted (`18 dollars`), never to find the
/// answer in a response.
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

/// A short, one-line answer section taken as the answer itself (not a sentence: fewer
/// than three plain words).
pub fn short_answer(s: &str) -> Option<String> {
    let t = s.trim();
    if t.is_empty() || t.len() > SHORT_ANSWER || t.contains('\n') {
        return None;
    }
    let words = t
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, '.' | ',' | ';' | '!' | '?' | '*')))
        .filter(|w| w.len() >= 2 && w.chars().all(|c| c.is_alphabetic() || c == '\''))
        .count();
    if words >= 3 {
        return None;
    }
    Some(clean_answer(t))
}

/// Where the searched text sits in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// An answer section after closed reasoning.
    Answer,
    /// Text that may be unfinished reasoning: an answer must end it.
    Open,
}

/// What [`final_answer`] should look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Where the text sits.
    pub place: Place,
    /// Only boxes count (the strict policy).
    pub boxed_only: bool,
    /// The reference is a list: join a trailing run of boxes.
    pub list: bool,
    /// Also read GSM8K's `#### N`.
    pub gsm8k: bool,
    /// Take a short one-line text as the answer itself.
    pub short: bool,
}

/// The outcome of extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extraction {
    /// The final answer.
    Answer(String),
    /// No final answer.
    Nothing,
    /// The last box is not closed (cut off): no answer.
    Truncated,
    /// Two different final answers (a box and a later answer statement): no answer.
    Conflict,
}

impl Extraction {
    /// The answer, if any.
    pub fn answer(self) -> Option<String> {
        match self {
            Extraction::Answer(a) => Some(a),
            _ => None,
        }
    }
}

/// Words in the text after an answer that show the reasoning goes on.
const GOING_ON: &[&str] = &[
    "wait",
    "but",
    "however",
    "hmm",
    "hmmm",
    "actually",
    "alternatively",
    "recheck",
    "mistake",
    "error",
    "wrong",
    "reconsider",
    "oops",
    "instead",
    "let",
    "let's",
    "maybe",
    "perhaps",
    "suppose",
    "assume",
    "next",
    "now",
    "then",
    "first",
    "compute",
    "calculate",
    "check",
    "verify",
    "double",
    "although",
    "though",
    "unless",
    "step",
];

/// Fewer words count as going on in a closed answer section (summaries restate work).
const GOING_ON_ANSWER: &[&str] = &[
    "wait",
    "but",
    "however",
    "hmm",
    "actually",
    "alternatively",
    "recheck",
    "mistake",
    "reconsider",
    "oops",
    "instead",
    "let",
    "let's",
];

/// Words after a box in open text that show the reasoning goes on (a box is a
/// commitment, so explanation may follow it, but not more work).
const GOING_ON_BOX: &[&str] = &[
    "wait",
    "hmm",
    "hmmm",
    "actually",
    "alternatively",
    "recheck",
    "wrong",
    "reconsider",
    "oops",
    "let",
    "let's",
    "maybe",
    "perhaps",
    "double",
];

/// How closely the text after an answer is inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// After any answer in a closed answer section.
    Answer,
    /// After a box in open text.
    OpenBox,
    /// After an unboxed answer in open text.
    Open,
}

/// Whether `rest`, the text after an answer, only closes the response.
fn closes(rest: &str, how: Tail) -> bool {
    let t = rest.trim_start_matches(|c: char| {
        c.is_whitespace() || matches!(c, '$' | '.' | ',' | ';' | ')' | '*' | '}' | ']' | '!')
    });
    let t = t.strip_prefix("\\]").unwrap_or(t);
    let t = t.strip_prefix("\\)").unwrap_or(t);
    let t = t.trim();
    match how {
        Tail::Answer => !going_on(t, GOING_ON_ANSWER),
        Tail::OpenBox => !going_on(t, GOING_ON_BOX),
        Tail::Open => {
            t.len() <= 400
                && !t
                    .bytes()
                    .any(|c| c.is_ascii_digit() || matches!(c, b'=' | b'?'))
                && !going_on(t, GOING_ON)
        }
    }
}

/// Whether `t` has one of `words` (`let` only as `let me` / `let us`, not `let me know`).
fn going_on(t: &str, words: &[&str]) -> bool {
    let ws: Vec<String> = words_lower(t).collect();
    ws.iter().enumerate().any(|(i, w)| {
        if w == "let" {
            let next = ws.get(i + 1).map(String::as_str);
            matches!(next, Some("me" | "us")) && ws.get(i + 2).map(String::as_str) != Some("know")
        } else {
            words.contains(&w.as_str())
        }
    })
}

/// Extracts the final answer from `text` under the module's policy.
///
/// ```
/// use judge::extract::{final_answer, Extraction, Place, Wanted};
/// let open = Wanted { place: Place::Open, boxed_only: false, list: false, gsm8k: false, short: true };
/// let done = "Adding up, 3 + 4 = 7.\n\nSo, the mean of her quiz scores currently is 7.";
/// assert_eq!(final_answer(done, open), Extraction::Answer("7".into()));
/// // Cut off mid-reasoning: the earlier statement is not a final answer.
/// let cut = "So the answer is 5. Wait, let me check 2 + 3 again";
/// assert_eq!(final_answer(cut, open), Extraction::Nothing);
/// ```
pub fn final_answer(text: &str, want: Wanted) -> Extraction {
    let text = tail(text);
    let found = boxes_with(text, !want.boxed_only);
    let boxed = match last_box_in(text, &found, want.list) {
        Err(Truncated) => return Extraction::Truncated,
        Ok(b) => b,
    };
    let (box_tail, stated_tail) = match want.place {
        Place::Answer => (Tail::Answer, Tail::Answer),
        Place::Open => (Tail::OpenBox, Tail::Open),
    };
    let boxed = boxed.filter(|(_, end)| closes(&text[*end..], box_tail));
    let mut stated: Vec<Candidate> = Vec::new();
    if want.gsm8k {
        stated.extend(gsm8k_hashes_at(text));
    }
    stated.extend(anchored_at(text));
    let anchors = stated.len();
    if want.boxed_only && boxed.is_none() {
        return Extraction::Nothing;
    }
    if let Some((b, end)) = boxed {
        // A later explicit answer (anchor, `####`) with another value: two different
        // finals.
        for c in stated[..anchors]
            .iter()
            .filter(|c| c.end > end && c.text != b)
        {
            let same = c.text.contains(&b) || crate::math::answers_match(&b, &c.text);
            if !same {
                return Extraction::Conflict;
            }
        }
        return Extraction::Answer(b);
    }
    if want.boxed_only {
        return Extraction::Nothing;
    }
    stated.extend(statement_at(text));
    stated.sort_by_key(|c| c.end);
    let open = want.place == Place::Open;
    // An anchor in an answer section may be followed by more explanation; a plain
    // statement must end the text wherever it is.
    let tail_of = |c: &Candidate| if c.explicit { stated_tail } else { Tail::Open };
    if let Some(c) = stated
        .iter()
        .rev()
        .find(|c| (c.terminated || !open) && closes(&text[c.end..], tail_of(c)))
    {
        return Extraction::Answer(boxed_inside(&c.text).unwrap_or_else(|| c.text.clone()));
    }
    if !open {
        if let Some(n) = one_number_sentence(text) {
            return Extraction::Answer(n);
        }
    }
    if want.short && !(open && going_on(text, GOING_ON)) {
        if let Some(s) = short_answer(text) {
            return Extraction::Answer(s);
        }
    }
    Extraction::Nothing
}

/// An answer section that is one short sentence with exactly one number in it (`She
/// makes $18.00 a day.`): that number.
fn one_number_sentence(text: &str) -> Option<String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 160 || t.contains(['\n', '=', '\\']) {
        return None;
    }
    let body = t.trim_end_matches(['.', '!', '*']);
    if body.contains(". ") || body.contains('?') {
        return None;
    }
    let mut numbers = body
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .map(|x| x.trim_matches(['.', ',']))
        .filter(|x| x.bytes().any(|c| c.is_ascii_digit()));
    let n = numbers.next()?;
    numbers.next().is_none().then(|| n.to_string())
}

/// The content of a box inside an anchored answer (`The answer is \boxed{5}.`).
fn boxed_inside(s: &str) -> Option<String> {
    let b = boxes_with(s, true);
    b.complete.last().map(|x| x.content.trim().to_string())
}

/// Extraction for math answer sections under the careful policy: boxed, then anchors
/// and final statements, then a short answer section. `Err(Truncated)` means the last
/// box was truncated (no answer).
pub fn math_answer(section: &str, reference_is_list: bool) -> Result<Option<String>, Truncated> {
    let want = Wanted {
        place: Place::Answer,
        boxed_only: false,
        list: reference_is_list,
        gsm8k: false,
        short: true,
    };
    match final_answer(section, want) {
        Extraction::Answer(a) => Ok(Some(a)),
        Extraction::Truncated => Err(Truncated),
        _ => Ok(None),
    }
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
