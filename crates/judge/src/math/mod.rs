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

/// Whether `pred` is an acceptable answer for the reference `gold`.
///
/// ```
/// use judge::math::answers_match;
/// assert!(answers_match("\\frac{1}{2}", "0.5"));
/// assert!(!answers_match("\\frac{1}{3}", "0.333"));
/// assert!(answers_match("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)"));
/// ```
pub fn answers_match(gold: &str, pred: &str) -> bool {
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
