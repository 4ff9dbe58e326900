//! Multiple choice: the last committed option letter after the reasoning.
//!
//! Policy:
//!
//! 1. Candidates are the last `\boxed{...}` and the last answer anchor (`answer is`,
//!    `answer:`, `option`, `choice`, Markdown bold allowed); the later one wins.
//! 2. Inside the candidate, the option is the first letter A-J (either case) standing
//!    alone (`C`, `(C)`, `C)`, `C.`, `**C**`, `\text{C}`).
//! 3. Without an anchor, the last parenthesised option `(B)` in the answer section, or an
//!    answer section that is just a letter, is taken.
//! 4. An answer naming two different options (`B or C`, `B, C`, `B/C`, `B and C`) is
//!    [`Choice::Several`] and never correct.

use crate::extract::{boxes, tail};

/// What a response committed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// One option letter (upper case).
    One(char),
    /// Two or more different options: judged wrong.
    Several,
    /// No option found.
    Nothing,
}

fn option_letter(c: char) -> Option<char> {
    let u = c.to_ascii_uppercase();
    ('A'..='J').contains(&u).then_some(u)
}

fn boundary(c: Option<char>) -> bool {
    c.is_none_or(|c| !c.is_alphanumeric())
}

/// The first standalone option letter in `text` and whether another one follows it.
fn letters_in(text: &str) -> Choice {
    let line = text
        .split('\n')
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let mut t = line.trim_start();
    loop {
        let before = t;
        t = t.trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '*' | ':' | '$' | '(' | '{' | '[' | '_')
        });
        for p in [
            "\\text", "\\textbf", "\\mathrm", "\\boxed", "option", "Option", "choice", "Choice",
        ] {
            t = t.strip_prefix(p).unwrap_or(t);
        }
        if t == before {
            break;
        }
    }
    let mut chars = t.chars();
    let first = chars.next().and_then(option_letter);
    let Some(letter) = first.filter(|_| boundary(t.chars().nth(1))) else {
        return last_parenthesised(line).map_or(Choice::Nothing, Choice::One);
    };
    // Another option named after a conjunction or separator?
    let rest: String = t[1..].chars().collect();
    let words: Vec<&str> = rest
        .split(|c: char| {
            c.is_whitespace()
                || matches!(c, ',' | '/' | '&' | '(' | ')' | '*' | '$' | '{' | '}' | '.')
        })
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if matches!(pair[0], "or" | "and" | "&") && pair[1].len() == 1 {
            if let Some(other) = pair[1].chars().next().and_then(option_letter) {
                if other != letter && pair[1].chars().all(|c| c.is_ascii_uppercase()) {
                    return Choice::Several;
                }
            }
        }
    }
    if let Some(next) = words.first() {
        if next.len() == 1 && rest.trim_start().starts_with([',', '/']) {
            if let Some(other) = next
                .chars()
                .next()
                .filter(|c| c.is_ascii_uppercase())
                .and_then(option_letter)
            {
                if other != letter {
                    return Choice::Several;
                }
            }
        }
    }
    Choice::One(letter)
}

fn last_parenthesised(s: &str) -> Option<char> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(2)).rev().find_map(|i| {
        (b[i] == b'(' && b[i + 2] == b')')
            .then(|| option_letter(b[i + 1] as char))
            .flatten()
            .filter(|_| b[i + 1].is_ascii_uppercase())
    })
}

const ANCHORS: &[&str] = &[
    "answer is",
    "answer:",
    "answer :",
    "correct option is",
    "correct choice is",
    "option is",
];

/// The option a response's answer section commits to.
pub fn extract_choice(section: &str) -> Choice {
    let section = tail(section);
    let found = boxes(section);
    let boxed = found.complete.last().map(|b| (b.start, b.content));
    let lower = section.to_ascii_lowercase();
    let anchor = ANCHORS
        .iter()
        .filter_map(|a| lower.rfind(a).map(|p| (p, p + a.len())))
        .max_by_key(|&(p, _)| p);
    match (boxed, anchor) {
        (Some((bp, content)), Some((ap, _))) if bp >= ap => letters_in(content),
        (Some((_, content)), None) => letters_in(content),
        (_, Some((_, end))) => letters_in(&section[end..]),
        (None, None) => {
            if let Some(c) = last_parenthesised(section) {
                return Choice::One(c);
            }
            let t = section
                .trim()
                .trim_matches(|c: char| matches!(c, '*' | '.' | '(' | ')' | '$'));
            match (t.len(), t.chars().next().and_then(option_letter)) {
                (1, Some(c)) => Choice::One(c),
                _ => Choice::Nothing,
            }
        }
    }
}

/// The reference letter from a gold string such as `B`, `(B)` or `b`.
pub fn gold_letter(gold: &str) -> Option<char> {
    gold.trim()
        .trim_matches(|c: char| matches!(c, '(' | ')' | '.' | ' '))
        .chars()
        .next()
        .and_then(option_letter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_letters() {
        let cases: &[(&str, Choice, &str)] = &[
            ("Answer: C", Choice::One('C'), "plain anchor"),
            ("**Answer:** B", Choice::One('B'), "markdown bold"),
            ("Answer: (B)", Choice::One('B'), "parenthesised"),
            (
                "The answer is \\boxed{C}.",
                Choice::One('C'),
                "boxed after anchor text",
            ),
            ("answer: d", Choice::One('D'), "lower case"),
            (
                "I pick (A). On reflection (D)",
                Choice::One('D'),
                "last parenthesised",
            ),
            ("B", Choice::One('B'), "bare letter"),
            ("Answer: B or C", Choice::Several, "two options"),
            ("Answer: B, C", Choice::Several, "two options listed"),
            (
                "\\boxed{A}\nAnswer: E",
                Choice::One('E'),
                "later anchor wins",
            ),
            ("no idea", Choice::Nothing, "nothing committed"),
        ];
        for (input, want, why) in cases {
            assert_eq!(extract_choice(input), *want, "{why}: {input:?}");
        }
    }
}
