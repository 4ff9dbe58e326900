//! Math answers: a LaTeX/plain-text parser to an expression tree, exact evaluation and
//! an equivalence comparator.
//!
//! [`answers_match`] is the entry point: it first compares cheaply normalised strings,
//! then parses both sides and applies the policy of [`compare`]; when either side does
//! not parse, it falls back to comparing normalised text.

pub mod compare;
pub mod expr;
pub mod lexer;
pub mod parser;
pub mod value;

pub use compare::equivalent;
pub use expr::Expr;
pub use parser::parse;

/// Strips presentation-only LaTeX so that identical answers compare equal without
/// parsing: whitespace, `$`, `\left`/`\right`, thin spaces, `\dfrac`/`\tfrac`, a trailing
/// full stop.
pub fn normalise_latex(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^{\\circ}", "^\\circ"),
        ("\\displaystyle", ""),
    ] {
        if t.contains(from) {
            t = t.replace(from, to);
        }
    }
    let t: String = t
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '$')
        .collect();
    t.trim_end_matches('.').to_string()
}

/// Text used when an answer does not parse as math: `\text{}`-like wrappers, braces,
/// backslashes and spacing removed, lower-cased.
pub fn text_form(s: &str) -> String {
    let mut t = normalise_latex(s);
    for w in [
        "\\text",
        "\\textbf",
        "\\mathrm",
        "\\mbox",
        "\\textit",
        "\\operatorname",
    ] {
        t = t.replace(w, "");
    }
    t.chars()
        .filter(|c| !matches!(c, '{' | '}' | '\\' | '*'))
        .collect::<String>()
        .to_lowercase()
}

/// An answer with a trailing side condition (`A = \\frac{1}{4 - w^2}, \\quad \\text{for }
/// w^2 \\neq 4`, `x = 2 \\text{ where } x > 0`) without it.
fn without_condition(pred: &str) -> Option<&str> {
    let cut = [
        "\\text{for",
        "\\text{ for",
        "\\text{where",
        "\\text{ where",
        "\\text{if",
        "\\text{ if",
    ]
    .iter()
    .filter_map(|m| pred.find(m))
    .min()?;
    let head = pred[..cut]
        .trim_end()
        .trim_end_matches("\\quad")
        .trim_end_matches("\\qquad")
        .trim_end()
        .trim_end_matches([',', ';'])
        .trim_end();
    (!head.is_empty()).then_some(head)
}

/// Whether `pred` is an acceptable answer for the reference `gold`.
///
/// ```
/// use judge::math::answers_match;
/// assert!(answers_match("\\frac{1}{2}", "0.5"));
/// assert!(!answers_match("\\frac{1}{3}", "0.333"));
/// assert!(answers_match("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)"));
/// // An explicit percent sign may mean the fraction; a bare number never does.
/// assert!(answers_match("\\frac{33}{100}", "33\\%"));
/// assert!(answers_match("33", "33\\%"));
/// assert!(!answers_match("0.33", "33"));
/// ```
pub fn answers_match(gold: &str, pred: &str) -> bool {
    if plain_match(gold, pred) {
        return true;
    }
    // An explicit percent sign: `33\%` is also 33/100 (but `33` is never `0.33`).
    let as_fraction = |s: &str| {
        let t = s.trim().trim_end_matches(['.', ' ', '$']);
        let t = t.strip_suffix("\\%").or_else(|| t.strip_suffix('%'))?;
        (!t.trim().is_empty() && !t.contains('%')).then(|| format!("\\frac{{{t}}}{{100}}"))
    };
    match (as_fraction(gold), as_fraction(pred)) {
        (None, Some(p)) => plain_match(gold, &p),
        (Some(g), None) => plain_match(&g, pred),
        _ => false,
    }
}

fn plain_match(gold: &str, pred: &str) -> bool {
    if let Some(p) = without_condition(pred) {
        if plain_match(gold, p) {
            return true;
        }
    }
    let (g, p) = (normalise_latex(gold), normalise_latex(pred));
    if g.is_empty() || p.is_empty() {
        return false;
    }
    if g == p {
        return true;
    }
    match (parse(gold), parse(pred)) {
        (Ok(ge), Ok(pe)) => {
            if equivalent(&ge, &pe) {
                return true;
            }
            // A word answer that also parsed as letters (`\text{Navin}`) still gets its text form.
            matches!(ge, Expr::Text(_)) && text_form(gold) == text_form(pred)
        }
        _ => {
            let (a, b) = (text_form(gold), text_form(pred));
            !a.is_empty() && a == b
        }
    }
}
