//! Tokeniser for LaTeX and plain-text math answers.
//!
//! The lexer does the normalisations that are purely lexical, each one listed here
//! because it is a policy decision:
//!
//! 1. Spacing and sizing commands (`\left`, `\right`, `\!`, `\,`, `\;`, `\quad`,
//!    `\displaystyle`, `\big`...) are dropped; `\,` between digit groups is a
//!    thousands separator.
//! 2. Thousands separators are removed from integers: `1,000` (only outside brackets,
//!    every group exactly three digits), `7{,}425{,}000` and `32,\!348` (anywhere).
//! 3. A repeating decimal `0.\overline{3}` becomes one number token (= 1/3 exactly).
//! 4. `\text{...}`, `\textbf{...}`, `\mbox{...}`, `\mathrm{...}` and `\operatorname{...}`
//!    become one text token; the parser decides whether that is a unit, a word answer
//!    or a wrapped number.
//! 5. Unicode `≤ ≥ ≠ π √ ∞ − × · ÷ ± °` map to their LaTeX equivalents; subscript
//!    digits `₁` are `_1` and superscripts `⁻²` are `^{-2}`.
//! 6. A number written `1.39e-10` or `2.45e6` (no spaces, nothing glued after it) is
//!    scientific notation, `1.39 \times 10^{-10}`.
//! 7. A Greek command glued to a letter or two (`\omegat`, `\pit`, an unknown command)
//!    is the Greek letter times those letters.
//!
//! Input length and token count are bounded ([`MAX_TOKENS`]).

use crate::error::ParseError;

/// Most tokens one expression may have; longer inputs are refused.
pub const MAX_TOKENS: usize = 4096;

/// A decimal literal as written: integer digits, fraction digits and a repeating tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumLit {
    /// Digits before the point (may be empty for `.5`).
    pub int: String,
    /// Digits after the point.
    pub frac: String,
    /// Repeating digits from `\overline{...}`.
    pub rep: String,
}

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A number literal.
    Num(NumLit),
    /// A run of ASCII letters in plain text (`x`, `xy`, `sqrt`, `cm`).
    Word(String),
    /// A backslash command without the backslash (`frac`, `pi`, `le`).
    Cmd(String),
    /// The content of a `\text{...}`-like wrapper.
    Text(String),
    /// `\begin{env}`.
    Begin(String),
    /// `\end{env}`.
    End(String),
    /// A punctuation or operator character: `+ - * / ^ _ ( ) [ ] { } , = < > ! | & ; : '`.
    Sym(char),
    /// `\{`.
    SetOpen,
    /// `\}`.
    SetClose,
    /// `\\` (matrix row separator).
    RowSep,
}

const DROPPED_CMDS: &[&str] = &[
    "left",
    "right",
    "big",
    "Big",
    "bigg",
    "Bigg",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "displaystyle",
    "textstyle",
    "quad",
    "qquad",
    "!",
    ",",
    ";",
    ":",
    " ",
    "limits",
    "nolimits",
    "mathbf",
    "boldsymbol",
    "mathit",
    "mathnormal",
    "rm",
    "bf",
    "it",
    "hline",
    "mathbb",
    "mathcal",
    "scriptstyle",
    "phantom",
    "hspace",
];

const TEXT_CMDS: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "mbox",
    "mathrm",
    "operatorname",
    "textnormal",
    "hbox",
    "textsf",
    "texttt",
    "emph",
];

/// Reads a balanced `{...}` group starting at byte `i` (which must be `{`); returns the
/// inner text and the index after the closing brace.
pub(crate) fn brace_group(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'\\' => {
                j += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[i + 1..j], j + 1));
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

fn is_digit(b: Option<&u8>) -> bool {
    matches!(b, Some(c) if c.is_ascii_digit())
}

/// Exactly three digits at `i`, not followed by a fourth.
fn three_digits(b: &[u8], i: usize) -> bool {
    (0..3).all(|k| is_digit(b.get(i + k))) && !is_digit(b.get(i + 3))
}

/// Splits `s` into tokens.
pub fn lex(s: &str) -> Result<Vec<Tok>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0usize;
    let mut depth = 0i32;
    while i < b.len() {
        if out.len() > MAX_TOKENS {
            return Err(ParseError::TooLong);
        }
        let c = b[i];
        if c.is_ascii_whitespace() || c == b'$' || c == b'~' {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && is_digit(b.get(i + 1))) {
            let (lit, next) = lex_number(s, i, depth == 0);
            out.push(Tok::Num(lit));
            i = next;
            if let Some((sign, exp, next)) = e_notation(s, i) {
                // `1.39e-10` is 1.39 \times 10^{-10}.
                out.push(Tok::Cmd("times".into()));
                out.push(Tok::Num(int_lit("10")));
                out.push(Tok::Sym('^'));
                out.push(Tok::Sym('{'));
                if sign {
                    out.push(Tok::Sym('-'));
                }
                out.push(Tok::Num(int_lit(exp)));
                out.push(Tok::Sym('}'));
                i = next;
            }
            continue;
        }
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Tok::Word(s[start..i].to_string()));
            continue;
        }
        if c == b'\\' {
            let Some(&n) = b.get(i + 1) else {
                i += 1;
                continue;
            };
            if n == b'\\' {
                out.push(Tok::RowSep);
                i += 2;
                continue;
            }
            if n == b'{' || n == b'}' {
                out.push(if n == b'{' {
                    Tok::SetOpen
                } else {
                    Tok::SetClose
                });
                depth += if n == b'{' { 1 } else { -1 };
                i += 2;
                continue;
            }
            if !n.is_ascii_alphabetic() {
                // One-character command: \% \$ \, \! \; \: \  \#
                i += 2;
                match n {
                    b'%' => out.push(Tok::Sym('%')),
                    b'$' => out.push(Tok::Sym('$')),
                    b'|' => out.push(Tok::Sym('|')),
                    _ => {}
                }
                continue;
            }
            let start = i + 1;
            i += 1;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name = &s[start..i];
            if DROPPED_CMDS.contains(&name) {
                if matches!(name, "phantom" | "hspace") {
                    if let Some((_, next)) = skip_ws_group(s, i) {
                        i = next;
                    }
                }
                continue;
            }
            if TEXT_CMDS.contains(&name) {
                match skip_ws_group(s, i) {
                    Some((inner, next)) => {
                        out.push(Tok::Text(inner.to_string()));
                        i = next;
                    }
                    None => return Err(ParseError::Unbalanced),
                }
                continue;
            }
            if name == "begin" || name == "end" {
                let Some((env, next)) = skip_ws_group(s, i) else {
                    return Err(ParseError::Unbalanced);
                };
                let env = env.trim_end_matches('*').to_string();
                i = next;
                if name == "begin" {
                    if env == "array" {
                        // Skip the column specification.
                        if let Some((_, next)) = skip_ws_group(s, i) {
                            i = next;
                        }
                    }
                    out.push(Tok::Begin(env));
                } else {
                    out.push(Tok::End(env));
                }
                continue;
            }
            if let Some((greek, rest)) = glued_greek(name) {
                // `\omegat` (a missing space) is `\omega t`.
                out.push(Tok::Cmd(greek.to_string()));
                out.push(Tok::Word(rest.to_string()));
                continue;
            }
            out.push(Tok::Cmd(name.to_string()));
            continue;
        }
        if c >= 0x80 {
            let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
            if let Some(d) = subscript_digit(ch) {
                // `E₁` is `E_1`.
                out.push(Tok::Sym('_'));
                out.push(Tok::Num(int_lit(&d.to_string())));
                i += ch.len_utf8();
                continue;
            }
            if superscript(ch).is_some() {
                // `m⁻²` is `m^{-2}`.
                out.push(Tok::Sym('^'));
                out.push(Tok::Sym('{'));
                while let Some(sc) = s[i..].chars().next().and_then(superscript) {
                    match sc {
                        '-' => out.push(Tok::Sym('-')),
                        d => out.push(Tok::Num(int_lit(&d.to_string()))),
                    }
                    i += s[i..].chars().next().map_or(1, char::len_utf8);
                }
                out.push(Tok::Sym('}'));
                continue;
            }
            i += ch.len_utf8();
            let mapped = match ch {
                '≤' => Tok::Cmd("le".into()),
                '≥' => Tok::Cmd("ge".into()),
                '≠' => Tok::Cmd("ne".into()),
                'π' => Tok::Cmd("pi".into()),
                '√' => Tok::Cmd("sqrt".into()),
                '∞' => Tok::Cmd("infty".into()),
                '−' | '–' => Tok::Sym('-'),
                '×' | '·' | '⋅' => Tok::Cmd("cdot".into()),
                '÷' => Tok::Sym('/'),
                '±' => Tok::Cmd("pm".into()),
                '°' => Tok::Cmd("circ".into()),
                '∪' => Tok::Cmd("cup".into()),
                '∈' => Tok::Cmd("in".into()),
                '\u{a0}' | '\u{2009}' | '\u{202f}' => continue,
                other if other.is_alphabetic() => Tok::Word(other.to_string()),
                _ => return Err(ParseError::Unexpected(ch.to_string())),
            };
            out.push(mapped);
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if b"+-*/^_()[]{},=<>!|&;:'%".contains(&c) {
            // `{,}` is a thousands separator only between digits; handled in lex_number.
            out.push(Tok::Sym(c as char));
            i += 1;
            continue;
        }
        if c == b'.' {
            // A stray full stop (end of sentence) carries no meaning.
            i += 1;
            continue;
        }
        return Err(ParseError::Unexpected((c as char).to_string()));
    }
    Ok(out)
}

fn int_lit(digits: &str) -> NumLit {
    NumLit {
        int: digits.to_string(),
        frac: String::new(),
        rep: String::new(),
    }
}

/// `e-10` / `E6` right after a number (no space), not followed by a letter or digit:
/// (negative exponent, exponent digits, index after it).
fn e_notation(s: &str, i: usize) -> Option<(bool, &str, usize)> {
    let b = s.as_bytes();
    if !matches!(b.get(i), Some(b'e' | b'E')) {
        return None;
    }
    let mut j = i + 1;
    let sign = match b.get(j) {
        Some(b'-') => {
            j += 1;
            true
        }
        Some(b'+') => {
            j += 1;
            false
        }
        _ => false,
    };
    let start = j;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let ok = j > start
        && j - start <= 4
        && !b
            .get(j)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.');
    ok.then(|| (sign, &s[start..j], j))
}

fn subscript_digit(c: char) -> Option<u32> {
    ('₀'..='₉').contains(&c).then(|| c as u32 - '₀' as u32)
}

fn superscript(c: char) -> Option<char> {
    Some(match c {
        '⁰' => '0',
        '¹' => '1',
        '²' => '2',
        '³' => '3',
        '⁴' => '4',
        '⁵' => '5',
        '⁶' => '6',
        '⁷' => '7',
        '⁸' => '8',
        '⁹' => '9',
        '⁻' => '-',
        _ => return None,
    })
}

/// An unknown command that is a Greek letter (or `pi`) glued to one or two letters.
fn glued_greek(name: &str) -> Option<(&str, &str)> {
    const GREEK: &[&str] = &[
        "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "nu", "pi", "rho",
        "sigma", "tau", "phi", "omega", "Delta", "Omega",
    ];
    const KNOWN: &[&str] = &["pitchfork", "nuparrow", "phantom", "mathrm", "mu"];
    if KNOWN.contains(&name) {
        return None;
    }
    GREEK.iter().find_map(|g| {
        let rest = name.strip_prefix(g)?;
        (!rest.is_empty() && rest.len() <= 2).then_some((*g, rest))
    })
}

fn skip_ws_group(s: &str, mut i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    brace_group(s, i)
}

fn lex_number(s: &str, start: usize, top_level: bool) -> (NumLit, usize) {
    let b = s.as_bytes();
    let mut i = start;
    let mut int = String::new();
    while i < b.len() && b[i].is_ascii_digit() {
        int.push(b[i] as char);
        i += 1;
    }
    // Thousands separators.
    if !int.is_empty() {
        let first_group_ok = int.len() <= 3;
        loop {
            let spaced = |k: usize| {
                let mut k = k;
                while b.get(k) == Some(&b' ') {
                    k += 1;
                }
                k
            };
            if (b[i..].starts_with(b"{,}") || b[i..].starts_with(b",\\!"))
                && three_digits(b, spaced(i + 3))
            {
                let k = spaced(i + 3);
                int.push_str(&s[k..k + 3]);
                i = k + 3;
            } else if b[i..].starts_with(b"\\,") && three_digits(b, i + 2) {
                int.push_str(&s[i + 2..i + 5]);
                i += 5;
            } else if top_level
                && first_group_ok
                && b.get(i) == Some(&b',')
                && three_digits(b, i + 1)
            {
                int.push_str(&s[i + 1..i + 4]);
                i += 4;
            } else {
                break;
            }
        }
    }
    let mut frac = String::new();
    let mut rep = String::new();
    if b.get(i) == Some(&b'.') && (is_digit(b.get(i + 1)) || b[i + 1..].starts_with(b"\\overline"))
    {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            frac.push(b[i] as char);
            i += 1;
        }
        if b[i..].starts_with(b"\\overline") {
            if let Some((inner, next)) = skip_ws_group(s, i + "\\overline".len()) {
                if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                    rep = inner.to_string();
                    i = next;
                }
            }
        }
    }
    (NumLit { int, frac, rep }, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Tok {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        Tok::Num(NumLit {
            int: int.into(),
            frac: frac.into(),
            rep: String::new(),
        })
    }

    #[test]
    fn thousands_separators_are_merged_only_where_unambiguous() {
        assert_eq!(lex("1,000").unwrap(), vec![num("1000")]);
        assert_eq!(lex("7{,}425{,}000").unwrap(), vec![num("7425000")]);
        assert_eq!(lex("32,\\!348").unwrap(), vec![num("32348")]);
        // Inside brackets a comma separates coordinates.
        assert_eq!(lex("(1,000)").unwrap().len(), 5);
        // Groups that are not three digits are a list.
        assert_eq!(lex("1,23").unwrap().len(), 3);
        assert_eq!(lex("1234,567").unwrap().len(), 3);
    }

    #[test]
    fn text_wrappers_become_one_token() {
        assert_eq!(
            lex("5\\text{ cm}").unwrap(),
            vec![num("5"), Tok::Text(" cm".into())]
        );
    }

    #[test]
    fn spacing_commands_are_dropped() {
        assert_eq!(
            lex("\\left( 1 \\right)").unwrap(),
            vec![Tok::Sym('('), num("1"), Tok::Sym(')')]
        );
    }
}
