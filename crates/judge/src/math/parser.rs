//! Recursive-descent parser from tokens to [`Expr`].
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! list     := relation ((',' | ';' | "and" | "or") relation)*
//! relation := union (relop union)*
//! union    := sum ('\cup' sum)*
//! sum      := term (('+' | '-' | '\pm' | '\mp') term)*
//! term     := unary (('*' | '/' | '\cdot' | '\times' | '\div')? unary)*   -- juxtaposition multiplies
//! unary    := ('-' | '+' | '\pm') unary | power
//! power    := postfix ('^' exponent)?
//! postfix  := atom ('!' | '_' sub | '%')*
//! ```
//!
//! Parsing policies (each has a test in `tests/math_equivalence.rs`):
//!
//! 1. `2\frac{1}{2}` with integer parts is a mixed number (5/2); otherwise juxtaposition
//!    multiplies (`2\frac{x}{3}` = 2x/3).
//! 2. `\frac12` and `\sqrt2` take single-digit arguments as LaTeX does, but an exponent
//!    written `2^10` without braces is read as `2^{10}` (how plain-text answers mean it).
//! 3. Percent (`50\%`), degrees (`30^\circ`), currency (`\$5`) and text units after a
//!    quantity (`5\text{ cm}`, `864 \mbox{ inches}^2`, plain `5 cm` for known unit words)
//!    are dropped: `50\%` equals `50` but never `0.5`. Bare letters are never units.
//! 4. `(a, b)` is a tuple (equal to the open interval when compared with one); `[a, b]`,
//!    `(a, b]` and `[a, b)` are intervals; `\{...\}` is a set; a bare top-level list
//!    `a, b` is compared as a set.
//! 5. `a \pm b` is the pair `{a + b, a - b}`.
//! 6. `e` is Euler's number, `\pi`/`pi` is π, every other letter or Greek letter is a
//!    variable; multi-letter words that are not functions, constants or units are refused
//!    (the answer is then compared as text).
//! 7. `\log x` without a base is the natural logarithm; `\log_b x` has base `b`.
//! 8. `N_b` with a digit subscript is a numeral in base `b`, compared digit for digit.

use num_traits::Zero;

use super::expr::{Const, Expr, Func, RelOp};
use super::lexer::{lex, NumLit, Tok};
use crate::error::ParseError;

/// Deepest nesting the parser follows before refusing the input.
pub const MAX_DEPTH: usize = 120;

/// Longest input (bytes) the parser accepts.
pub const MAX_INPUT: usize = 8 * 1024;

/// Parses a LaTeX or plain-text answer.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    parse_at_depth(s, 0)
}

fn parse_at_depth(s: &str, depth: usize) -> Result<Expr, ParseError> {
    if s.len() > MAX_INPUT {
        return Err(ParseError::TooLong);
    }
    let toks = lex(s)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth,
    };
    let items = p.items(&|t| false_stop(t))?;
    if let Some(t) = p.peek() {
        return Err(ParseError::Unexpected(format!("{t:?}")));
    }
    Ok(match items.len() {
        0 => return Err(ParseError::UnexpectedEnd),
        1 => items.into_iter().next().unwrap_or(Expr::List(Vec::new())),
        _ => Expr::List(items),
    })
}

fn false_stop(_: &Tok) -> bool {
    false
}

const UNIT_WORDS: &[&str] = &[
    "cm",
    "mm",
    "km",
    "meter",
    "meters",
    "metre",
    "metres",
    "inch",
    "inches",
    "ft",
    "feet",
    "foot",
    "yard",
    "yards",
    "mile",
    "miles",
    "unit",
    "units",
    "sq",
    "square",
    "cubic",
    "degree",
    "degrees",
    "deg",
    "dollar",
    "dollars",
    "cent",
    "cents",
    "hour",
    "hours",
    "hr",
    "hrs",
    "minute",
    "minutes",
    "min",
    "mins",
    "second",
    "seconds",
    "sec",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "mph",
    "kg",
    "lb",
    "lbs",
    "pound",
    "pounds",
    "ounce",
    "ounces",
    "oz",
    "gallon",
    "gallons",
    "liter",
    "liters",
    "ml",
    "percent",
    "people",
    "students",
    "ways",
    "times",
    "points",
    "coins",
    "marbles",
    "tiles",
    "centimeters",
    "millimeters",
    "kilometers",
    "grams",
    "gram",
    "mol",
    "mole",
    "moles",
    "rad",
    "Hz",
    "kHz",
    "MHz",
    "GHz",
    "nm",
    "eV",
    "keV",
    "MeV",
    "GeV",
    "kJ",
    "kcal",
    "cal",
    "kPa",
    "atm",
    "mL",
    "bits",
    "parsec",
    "parsecs",
    "kpc",
    "Mpc",
    "erg",
    "ergs",
    "joules",
    "watts",
    "volts",
    "kelvin",
];

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

fn func_by_name(name: &str) -> Option<Func> {
    Some(match name {
        "sin" => Func::Sin,
        "cos" => Func::Cos,
        "tan" => Func::Tan,
        "sec" => Func::Sec,
        "csc" => Func::Csc,
        "cot" => Func::Cot,
        "arcsin" | "asin" => Func::Asin,
        "arccos" | "acos" => Func::Acos,
        "arctan" | "atan" => Func::Atan,
        "sinh" => Func::Sinh,
        "cosh" => Func::Cosh,
        "tanh" => Func::Tanh,
        "ln" | "log" => Func::Ln,
        "exp" => Func::Exp,
        "abs" => Func::Abs,
        _ => return None,
    })
}

fn is_unit_text(t: &str) -> bool {
    let t = t.trim();
    // Compound units (`m/s`, `kg m^2`, `kcal m⁻² yr⁻¹`, `J·s`) start with a letter.
    !t.is_empty()
        && t.len() <= 40
        && t.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '°')
        && t.chars()
            .all(|c| c.is_alphabetic() || c.is_ascii_digit() || " .-/^·⁻²³°{}".contains(c))
        && !matches!(t, "and" | "or")
}

fn is_ordinal(t: &str) -> bool {
    matches!(t.trim(), "th" | "st" | "nd" | "rd")
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.pos + k)
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat_sym(c) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> ParseError {
        match self.peek() {
            Some(t) => ParseError::Unexpected(format!("{t:?}")),
            None => ParseError::UnexpectedEnd,
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(ParseError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn is_separator(&self) -> bool {
        match self.peek() {
            Some(Tok::Sym(',' | ';')) => true,
            Some(Tok::Word(w)) => matches!(w.as_str(), "and" | "or"),
            Some(Tok::Text(t)) => matches!(t.trim(), "and" | "or" | "," | ""),
            _ => false,
        }
    }

    /// Comma-separated items until `stop` (not consumed) or the end.
    fn items(&mut self, stop: &dyn Fn(&Tok) -> bool) -> Result<Vec<Expr>, ParseError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(t) if stop(t) => break,
                _ => {}
            }
            if self.is_separator() {
                self.pos += 1;
                continue;
            }
            out.push(self.relation()?);
            if out.len() > 256 {
                return Err(ParseError::TooLong);
            }
            match self.peek() {
                None => break,
                Some(t) if stop(t) => break,
                _ if self.is_separator() => {}
                _ => return Err(self.unexpected()),
            }
        }
        Ok(out)
    }

    fn relop(&mut self) -> Option<RelOp> {
        let op = match self.peek()? {
            Tok::Sym('=') => RelOp::Eq,
            Tok::Sym('<') => {
                if self.peek_at(1) == Some(&Tok::Sym('=')) {
                    self.pos += 1;
                    RelOp::Le
                } else {
                    RelOp::Lt
                }
            }
            Tok::Sym('>') => {
                if self.peek_at(1) == Some(&Tok::Sym('=')) {
                    self.pos += 1;
                    RelOp::Ge
                } else {
                    RelOp::Gt
                }
            }
            Tok::Sym('!') if self.peek_at(1) == Some(&Tok::Sym('=')) => {
                self.pos += 1;
                RelOp::Ne
            }
            Tok::Cmd(c) => match c.as_str() {
                "le" | "leq" | "leqslant" => RelOp::Le,
                "ge" | "geq" | "geqslant" => RelOp::Ge,
                "lt" => RelOp::Lt,
                "gt" => RelOp::Gt,
                "ne" | "neq" => RelOp::Ne,
                "in" => RelOp::In,
                "approx" | "equiv" => RelOp::Eq,
                _ => return None,
            },
            _ => return None,
        };
        self.pos += 1;
        Some(op)
    }

    fn relation(&mut self) -> Result<Expr, ParseError> {
        let first = self.union()?;
        let mut operands = vec![first];
        let mut ops = Vec::new();
        while let Some(op) = self.relop() {
            ops.push(op);
            operands.push(self.union()?);
        }
        Ok(if ops.is_empty() {
            operands.pop().unwrap_or(Expr::List(Vec::new()))
        } else {
            Expr::Rel(operands, ops)
        })
    }

    fn union(&mut self) -> Result<Expr, ParseError> {
        let first = self.sum()?;
        let mut parts = vec![first];
        while matches!(self.peek(), Some(Tok::Cmd(c)) if c == "cup")
            || matches!(self.peek(), Some(Tok::Word(w)) if w == "U")
        {
            self.pos += 1;
            parts.push(self.sum()?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap_or(Expr::List(Vec::new()))
        } else {
            Expr::Union(parts)
        })
    }

    fn sum(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut terms = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::Sym('+')) => {
                    self.pos += 1;
                    terms.push(self.term()?);
                }
                Some(Tok::Sym('-')) => {
                    self.pos += 1;
                    terms.push(Expr::Neg(Box::new(self.term()?)));
                }
                Some(Tok::Cmd(c)) if c == "pm" || c == "mp" => {
                    self.pos += 1;
                    let lhs = build_sum(std::mem::take(&mut terms));
                    let rhs = self.term()?;
                    terms.push(Expr::PlusMinus(Box::new(lhs), Box::new(rhs)));
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(build_sum(terms))
    }

    /// A product that starts with an already-signed factor (used after `+`/`-`).
    fn term(&mut self) -> Result<Expr, ParseError> {
        let first = self.unary_no_sum()?;
        self.term_rest(first)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let first = self.unary_no_sum()?;
        self.term_rest(first)
    }

    fn unary_no_sum(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let r = match self.peek() {
            Some(Tok::Sym('-')) => {
                self.pos += 1;
                let inner = self.unary_no_sum()?;
                let inner = self.term_rest(inner)?;
                Ok(Expr::Neg(Box::new(inner)))
            }
            Some(Tok::Sym('+')) | Some(Tok::Sym('$')) => {
                self.pos += 1;
                self.unary_no_sum()
            }
            Some(Tok::Cmd(c)) if c == "pm" || c == "mp" => {
                self.pos += 1;
                let inner = self.unary_no_sum()?;
                let inner = self.term_rest(inner)?;
                Ok(Expr::PlusMinus(Box::new(Expr::int(0)), Box::new(inner)))
            }
            _ => self.power(),
        };
        self.depth -= 1;
        r
    }

    /// Continues a product after its first factor.
    fn term_rest(&mut self, first: Expr) -> Result<Expr, ParseError> {
        let mut factors = vec![first];
        loop {
            match self.peek() {
                Some(Tok::Sym('*')) => {
                    self.pos += 1;
                    factors.push(self.unary_no_sum()?);
                }
                Some(Tok::Cmd(c)) if matches!(c.as_str(), "cdot" | "times" | "ast") => {
                    self.pos += 1;
                    factors.push(self.unary_no_sum()?);
                }
                Some(Tok::Sym('/')) | Some(Tok::Cmd(_)) if self.at_division() => {
                    self.pos += 1;
                    let d = self.unary_no_sum()?;
                    let n = build_product(std::mem::take(&mut factors));
                    factors.push(Expr::Div(Box::new(n), Box::new(d)));
                }
                Some(Tok::Sym('%' | '$')) => self.pos += 1,
                Some(Tok::Cmd(c)) if c == "circ" || c == "degree" => {
                    self.pos += 1;
                    // `700°C`
                    if matches!(self.peek(), Some(Tok::Word(w)) if matches!(w.as_str(), "C" | "F" | "K"))
                    {
                        self.pos += 1;
                    }
                }
                // `84.01 g/mol`: a letter over a unit word is a compound unit.
                Some(Tok::Word(w))
                    if w.len() == 1
                        && self.peek_at(1) == Some(&Tok::Sym('/'))
                        && matches!(self.peek_at(2), Some(Tok::Word(u)) if UNIT_WORDS.contains(&u.as_str()) && u.len() > 1)
                        && self.peek_at(3).is_none() =>
                {
                    self.pos += 3;
                }
                Some(Tok::Text(t)) if is_unit_text(t) => {
                    self.pos += 1;
                    self.skip_unit_power();
                }
                Some(Tok::Word(w)) if UNIT_WORDS.contains(&w.as_str()) && w.len() > 1 => {
                    self.pos += 1;
                    self.skip_unit_power();
                }
                Some(t) if starts_implicit(t) => {
                    let f = self.power()?;
                    factors.push(f);
                }
                _ => break,
            }
            if factors.len() > 256 {
                return Err(ParseError::TooLong);
            }
        }
        Ok(build_product(factors))
    }

    fn at_division(&self) -> bool {
        matches!(self.peek(), Some(Tok::Sym('/')))
            || matches!(self.peek(), Some(Tok::Cmd(c)) if c == "div")
    }

    fn skip_unit_power(&mut self) {
        if self.peek() == Some(&Tok::Sym('^')) && matches!(self.peek_at(1), Some(Tok::Num(_))) {
            self.pos += 2;
        } else if self.peek() == Some(&Tok::Sym('^'))
            && self.peek_at(1) == Some(&Tok::Sym('{'))
            && matches!(self.peek_at(2), Some(Tok::Num(_)))
            && self.peek_at(3) == Some(&Tok::Sym('}'))
        {
            self.pos += 4;
        }
    }

    fn power(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let base = self.postfix()?;
        let r = if self.eat_sym('^') {
            match self.peek() {
                Some(Tok::Cmd(c)) if c == "circ" => {
                    self.pos += 1;
                    Ok(base)
                }
                Some(Tok::Sym('{'))
                    if matches!(self.peek_at(1), Some(Tok::Cmd(c)) if c == "circ")
                        && self.peek_at(2) == Some(&Tok::Sym('}')) =>
                {
                    self.pos += 3;
                    Ok(base)
                }
                // `12^{\mathrm{th}}`, `1^{st}`: an ordinal suffix, not a power.
                Some(Tok::Text(t) | Tok::Word(t)) if is_ordinal(t) => {
                    self.pos += 1;
                    Ok(base)
                }
                Some(Tok::Sym('{'))
                    if matches!(self.peek_at(1), Some(Tok::Text(t) | Tok::Word(t)) if is_ordinal(t))
                        && self.peek_at(2) == Some(&Tok::Sym('}')) =>
                {
                    self.pos += 3;
                    Ok(base)
                }
                _ => {
                    let exp = self.exponent()?;
                    // Postfix after the exponent, e.g. `x^2!` is rare; factorial binds to the atom.
                    Ok(Expr::Pow(Box::new(base), Box::new(exp)))
                }
            }
        } else {
            Ok(base)
        };
        self.depth -= 1;
        r
    }

    fn exponent(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(Tok::Num(lit)) => {
                let e = Expr::from_lit(lit);
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Sym('-')) => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.exponent()?)))
            }
            Some(Tok::Word(w))
                if w.len() > 1
                    && func_by_name(w).is_none()
                    && !matches!(w.as_str(), "pi" | "sqrt") =>
            {
                // `x^ab` in LaTeX is x^a b.
                let first = w.chars().next().map(|c| c.to_string()).unwrap_or_default();
                let rest = w[first.len()..].to_string();
                self.toks[self.pos] = Tok::Word(rest);
                Ok(letter_var(&first))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.atom()?;
        loop {
            match self.peek() {
                Some(Tok::Sym('!')) if self.peek_at(1) != Some(&Tok::Sym('=')) => {
                    self.pos += 1;
                    e = Expr::Factorial(Box::new(e));
                }
                Some(Tok::Sym('%')) => self.pos += 1,
                Some(Tok::Sym('\'')) => {
                    self.pos += 1;
                    if let Expr::Var(v) = &mut e {
                        v.push('\'');
                    }
                }
                Some(Tok::Sym('_')) => {
                    let digits = self.last_num_digits();
                    self.pos += 1;
                    let sub = self.subscript_text()?;
                    e = match e {
                        Expr::Num(_)
                            if !sub.is_empty() && sub.chars().all(|c| c.is_ascii_digit()) =>
                        {
                            Expr::Based(digits, sub)
                        }
                        Expr::Var(v) => Expr::Var(format!("{v}_{sub}")),
                        other => other,
                    };
                }
                _ => break,
            }
        }
        Ok(e)
    }

    /// Digits of the most recent number literal before the subscript.
    fn last_num_digits(&self) -> String {
        self.toks[..self.pos]
            .iter()
            .rev()
            .find_map(|t| match t {
                Tok::Num(l) => Some(format!(
                    "{}{}",
                    l.int.trim_start_matches('0'),
                    if l.frac.is_empty() {
                        String::new()
                    } else {
                        format!(".{}", l.frac)
                    }
                )),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The text of a subscript: one token or a braced group, flattened.
    fn subscript_text(&mut self) -> Result<String, ParseError> {
        fn tok_text(t: &Tok) -> String {
            match t {
                Tok::Num(l) => format!("{}{}", l.int, l.frac),
                Tok::Word(w) | Tok::Cmd(w) | Tok::Text(w) => w.clone(),
                Tok::Sym(c) => c.to_string(),
                _ => String::new(),
            }
        }
        match self.bump() {
            Some(Tok::Sym('{')) => {
                let mut s = String::new();
                let mut depth = 1;
                while let Some(t) = self.bump() {
                    match t {
                        Tok::Sym('{') => depth += 1,
                        Tok::Sym('}') => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(s);
                            }
                        }
                        _ => {}
                    }
                    s.push_str(&tok_text(&t));
                }
                Err(ParseError::Unbalanced)
            }
            Some(Tok::Num(l)) if l.frac.is_empty() && l.int.len() > 1 => {
                // LaTeX: `a_12` is a_1 followed by 2.
                let first = l.int[..1].to_string();
                self.pos -= 1;
                self.toks[self.pos] = Tok::Num(NumLit {
                    int: l.int[1..].to_string(),
                    frac: String::new(),
                    rep: String::new(),
                });
                Ok(first)
            }
            Some(t) => Ok(tok_text(&t)),
            None => Err(ParseError::UnexpectedEnd),
        }
    }

    /// A single-token or braced argument (`\frac12`, `\frac{1}{2}`).
    fn arg(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::Sym('{')) => {
                self.pos += 1;
                let e = self.group_until('}')?;
                Ok(e)
            }
            Some(Tok::Num(l)) if l.frac.is_empty() && l.int.len() > 1 => {
                let first = l.int[..1].to_string();
                self.toks[self.pos] = Tok::Num(NumLit {
                    int: l.int[1..].to_string(),
                    frac: String::new(),
                    rep: String::new(),
                });
                Ok(Expr::from_lit(&NumLit {
                    int: first,
                    frac: String::new(),
                    rep: String::new(),
                }))
            }
            Some(Tok::Word(w))
                if w.chars().count() > 1 && func_by_name(&w).is_none() && w != "pi" =>
            {
                let first = w.chars().next().map(|c| c.to_string()).unwrap_or_default();
                self.toks[self.pos] = Tok::Word(w[first.len()..].to_string());
                Ok(letter_var(&first))
            }
            Some(_) => self.postfix(),
            None => Err(ParseError::UnexpectedEnd),
        }
    }

    /// Parses a list up to `close` (consumed); one item is returned as is, several as a set.
    fn group_until(&mut self, close: char) -> Result<Expr, ParseError> {
        self.enter()?;
        let items = self.items(&|t| *t == Tok::Sym(close))?;
        self.expect_sym(close)?;
        self.depth -= 1;
        match items.len() {
            0 => Err(ParseError::UnexpectedEnd),
            1 => Ok(items.into_iter().next().unwrap_or(Expr::List(Vec::new()))),
            _ => Ok(Expr::Set(items)),
        }
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let r = self.atom_inner();
        self.depth -= 1;
        r
    }

    fn atom_inner(&mut self) -> Result<Expr, ParseError> {
        let Some(tok) = self.bump() else {
            return Err(ParseError::UnexpectedEnd);
        };
        match tok {
            Tok::Num(lit) => {
                let n = Expr::from_lit(&lit);
                if lit.frac.is_empty() && lit.rep.is_empty() {
                    if let Some(mixed) = self.try_mixed_fraction(&n) {
                        return Ok(mixed);
                    }
                }
                Ok(n)
            }
            Tok::Word(w) => self.word(&w),
            Tok::Cmd(c) => self.command(&c),
            Tok::Sym('(') | Tok::Sym('[') => {
                let open = if tok == Tok::Sym('(') { '(' } else { '[' };
                self.bracket(open)
            }
            Tok::Sym('{') => self.group_until('}'),
            Tok::SetOpen => {
                self.enter()?;
                let items = self.items(&|t| *t == Tok::SetClose)?;
                self.depth -= 1;
                if self.bump() != Some(Tok::SetClose) {
                    return Err(ParseError::Unbalanced);
                }
                Ok(Expr::Set(items))
            }
            Tok::Sym('|') => {
                let inner = self.sum_until_bar()?;
                Ok(Expr::Func(Func::Abs, Box::new(inner)))
            }
            Tok::Sym('$') => self.atom(),
            Tok::Text(t) => self.text_atom(&t),
            Tok::Begin(env) => self.matrix(&env),
            other => Err(ParseError::Unexpected(format!("{other:?}"))),
        }
    }

    fn sum_until_bar(&mut self) -> Result<Expr, ParseError> {
        // Inside |...| juxtaposition never starts at a bar, so the sum stops there.
        let inner = self.sum()?;
        if !self.eat_sym('|') {
            return Err(ParseError::Unbalanced);
        }
        Ok(inner)
    }

    fn text_atom(&mut self, t: &str) -> Result<Expr, ParseError> {
        let trimmed = t.trim();
        if trimmed.is_empty() {
            return self.atom();
        }
        let wordy = trimmed.chars().any(|c| c.is_alphabetic())
            && trimmed.split_whitespace().any(|w| w.chars().count() > 2);
        if !wordy {
            if let Ok(e) = parse_at_depth(trimmed, self.depth + 4) {
                return Ok(e);
            }
        }
        Ok(Expr::Text(normalise_text(trimmed)))
    }

    fn try_mixed_fraction(&mut self, whole: &Expr) -> Option<Expr> {
        let is_frac = matches!(self.peek(), Some(Tok::Cmd(c)) if matches!(c.as_str(), "frac" | "dfrac" | "tfrac"));
        if !is_frac {
            return None;
        }
        let save = self.pos;
        let saved_toks = self.toks.clone();
        self.pos += 1;
        let parts = self.arg().and_then(|a| Ok((a, self.arg()?)));
        match (parts, whole) {
            (Ok((Expr::Num(a), Expr::Num(b))), Expr::Num(w))
                if a.is_integer() && b.is_integer() && !b.is_zero() =>
            {
                Some(Expr::Num(w + a / b))
            }
            _ => {
                self.pos = save;
                self.toks = saved_toks;
                None
            }
        }
    }

    fn bracket(&mut self, open: char) -> Result<Expr, ParseError> {
        self.enter()?;
        let items = self.items(&|t| matches!(t, Tok::Sym(')') | Tok::Sym(']')))?;
        let close = match self.bump() {
            Some(Tok::Sym(c)) => c,
            _ => return Err(ParseError::Unbalanced),
        };
        self.depth -= 1;
        let same = (open == '(' && close == ')') || (open == '[' && close == ']');
        let mut items = items;
        match items.len() {
            1 if same => Ok(items.pop().unwrap_or(Expr::List(Vec::new()))),
            2 if !(open == '(' && close == ')') => {
                let hi = items.pop().unwrap_or(Expr::List(Vec::new()));
                let lo = items.pop().unwrap_or(Expr::List(Vec::new()));
                Ok(Expr::Interval {
                    lo: Box::new(lo),
                    hi: Box::new(hi),
                    lo_closed: open == '[',
                    hi_closed: close == ']',
                })
            }
            _ if same => Ok(Expr::Tuple(items)),
            _ => Err(ParseError::Unbalanced),
        }
    }

    fn word(&mut self, w: &str) -> Result<Expr, ParseError> {
        match w {
            "pi" => return Ok(Expr::Const(Const::Pi)),
            "inf" | "infty" | "infinity" | "oo" | "Infinity" => return Ok(Expr::Const(Const::Inf)),
            "sqrt" => return self.sqrt(),
            "e" => return Ok(Expr::Const(Const::E)),
            _ => {}
        }
        if let Some(f) = func_by_name(w) {
            return self.function(f);
        }
        let n = w.chars().count();
        if n == 1 {
            return Ok(letter_var(w));
        }
        if n == 2 {
            // `xy` is x times y; the second letter stays a token so that a power binds
            // to it alone (`ce^{-2x}` is c e^{-2x}).
            let first = w.chars().next().map(|c| c.to_string()).unwrap_or_default();
            self.pos -= 1;
            self.toks[self.pos] = Tok::Word(w[first.len()..].to_string());
            return Ok(letter_var(&first));
        }
        Err(ParseError::UnknownWord(w.to_string()))
    }

    fn sqrt(&mut self) -> Result<Expr, ParseError> {
        let index = if self.peek() == Some(&Tok::Sym('[')) {
            self.pos += 1;
            let e = self.sum()?;
            self.expect_sym(']')?;
            e
        } else {
            Expr::int(2)
        };
        let radicand = match self.peek() {
            Some(Tok::Sym('(')) => {
                self.pos += 1;
                self.bracket('(')?
            }
            _ => self.arg()?,
        };
        Ok(Expr::Pow(
            Box::new(radicand),
            Box::new(Expr::Div(Box::new(Expr::int(1)), Box::new(index))),
        ))
    }

    fn command(&mut self, c: &str) -> Result<Expr, ParseError> {
        match c {
            "frac" | "dfrac" | "tfrac" | "cfrac" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Ok(Expr::Div(Box::new(a), Box::new(b)))
            }
            "binom" | "dbinom" | "tbinom" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Ok(Expr::Binom(Box::new(a), Box::new(b)))
            }
            "sqrt" => self.sqrt(),
            "boxed" | "fbox" | "overline" | "underline" | "hat" | "vec" => self.arg(),
            // `\dot{x}` is the variable x' (a different name from x).
            "dot" | "ddot" => match self.arg()? {
                Expr::Var(v) => Ok(Expr::Var(format!(
                    "{v}{}",
                    if c == "dot" { "'" } else { "''" }
                ))),
                _ => Err(ParseError::Unexpected(format!("\\{c}"))),
            },
            "pi" => Ok(Expr::Const(Const::Pi)),
            "infty" | "infinity" => Ok(Expr::Const(Const::Inf)),
            "emptyset" | "varnothing" => Ok(Expr::Set(Vec::new())),
            "lfloor" | "lceil" => {
                let inner = self.sum()?;
                let close = if c == "lfloor" { "rfloor" } else { "rceil" };
                if self.bump() != Some(Tok::Cmd(close.to_string())) {
                    return Err(ParseError::Unbalanced);
                }
                Ok(Expr::Func(
                    if c == "lfloor" {
                        Func::Floor
                    } else {
                        Func::Ceil
                    },
                    Box::new(inner),
                ))
            }
            "vert" | "lvert" | "mid" => {
                let inner = self.sum()?;
                match self.bump() {
                    Some(Tok::Cmd(x)) if matches!(x.as_str(), "vert" | "rvert" | "mid") => {}
                    Some(Tok::Sym('|')) => {}
                    _ => return Err(ParseError::Unbalanced),
                }
                Ok(Expr::Func(Func::Abs, Box::new(inner)))
            }
            "log" | "lg" => {
                if self.eat_sym('_') {
                    let base = self.arg()?;
                    let arg = self.func_arg()?;
                    return Ok(Expr::Log(Box::new(base), Box::new(arg)));
                }
                self.function(Func::Ln)
            }
            "exp" => self.function(Func::Exp),
            "e" => Ok(Expr::Const(Const::E)),
            g if GREEK.contains(&g) => Ok(Expr::Var(g.to_string())),
            f => match func_by_name(f) {
                Some(func) => self.function(func),
                None => Err(ParseError::Unexpected(format!("\\{f}"))),
            },
        }
    }

    fn function(&mut self, f: Func) -> Result<Expr, ParseError> {
        // `\sin^2 x` squares the value; `\sin^{-1} x` is the inverse function.
        let mut power = None;
        if self.eat_sym('^') {
            let e = self.exponent()?;
            power = Some(e);
        }
        let mut f = f;
        if let Some(Expr::Neg(inner)) = &power {
            if **inner == Expr::int(1) {
                f = match f {
                    Func::Sin => Func::Asin,
                    Func::Cos => Func::Acos,
                    Func::Tan => Func::Atan,
                    other => other,
                };
                power = None;
            }
        }
        let arg = self.func_arg()?;
        let value = Expr::Func(f, Box::new(arg));
        Ok(match power {
            Some(p) => Expr::Pow(Box::new(value), Box::new(p)),
            None => value,
        })
    }

    fn func_arg(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(Tok::Sym('(')) => {
                self.pos += 1;
                self.bracket('(')
            }
            Some(Tok::Sym('{')) => {
                self.pos += 1;
                self.group_until('}')
            }
            _ => {
                // `\sin 2x`: the argument is the following product of simple factors.
                let mut factors = vec![self.power()?];
                while matches!(self.peek(), Some(Tok::Num(_)))
                    || matches!(self.peek(), Some(Tok::Word(w)) if func_by_name(w).is_none() && !UNIT_WORDS.contains(&w.as_str()) && !matches!(w.as_str(), "and" | "or" | "U"))
                    || matches!(self.peek(), Some(Tok::Cmd(c)) if c == "pi" || GREEK.contains(&c.as_str()))
                {
                    factors.push(self.power()?);
                }
                Ok(build_product(factors))
            }
        }
    }

    fn matrix(&mut self, env: &str) -> Result<Expr, ParseError> {
        if !matches!(
            env,
            "pmatrix" | "bmatrix" | "matrix" | "Bmatrix" | "vmatrix" | "array" | "smallmatrix"
        ) {
            return Err(ParseError::Unexpected(env.to_string()));
        }
        self.enter()?;
        let mut rows = Vec::new();
        let mut row = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ParseError::Unbalanced),
                Some(Tok::End(_)) => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Sym('&')) => {
                    self.pos += 1;
                    continue;
                }
                Some(Tok::RowSep) => {
                    self.pos += 1;
                    if !row.is_empty() {
                        rows.push(std::mem::take(&mut row));
                    }
                    continue;
                }
                _ => {}
            }
            row.push(self.sum()?);
            if row.len() + rows.len() > 1024 {
                return Err(ParseError::TooLong);
            }
            match self.peek() {
                Some(Tok::Sym('&')) | Some(Tok::RowSep) | Some(Tok::End(_)) => {}
                _ => return Err(self.unexpected()),
            }
        }
        if !row.is_empty() {
            rows.push(row);
        }
        self.depth -= 1;
        Ok(Expr::Matrix(rows))
    }
}

/// Whether a token may begin an implicitly multiplied factor.
fn starts_implicit(t: &Tok) -> bool {
    match t {
        Tok::Num(_) | Tok::Begin(_) => true,
        Tok::Sym(c) => matches!(c, '(' | '{' | '['),
        Tok::Word(w) => !matches!(w.as_str(), "and" | "or" | "U"),
        Tok::Cmd(c) => {
            matches!(
                c.as_str(),
                "frac"
                    | "dfrac"
                    | "tfrac"
                    | "cfrac"
                    | "sqrt"
                    | "pi"
                    | "infty"
                    | "binom"
                    | "dbinom"
                    | "lfloor"
                    | "lceil"
                    | "log"
                    | "ln"
                    | "exp"
            ) || GREEK.contains(&c.as_str())
                || func_by_name(c).is_some()
        }
        _ => false,
    }
}

fn letter_var(s: &str) -> Expr {
    if s == "e" {
        Expr::Const(Const::E)
    } else {
        Expr::Var(s.to_string())
    }
}

fn build_sum(mut terms: Vec<Expr>) -> Expr {
    if terms.len() == 1 {
        terms.pop().unwrap_or(Expr::int(0))
    } else {
        Expr::Add(terms)
    }
}

fn build_product(mut factors: Vec<Expr>) -> Expr {
    if factors.len() == 1 {
        factors.pop().unwrap_or(Expr::int(1))
    } else {
        Expr::Mul(factors)
    }
}

/// Lower-cases a word answer and collapses whitespace and surrounding punctuation.
pub fn normalise_text(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !matches!(c, '{' | '}' | '\\' | '$'))
        .collect();
    let words: Vec<&str> = s.split_whitespace().collect();
    words
        .join(" ")
        .trim_matches(|c: char| c == '.' || c == ',' || c == ' ')
        .to_lowercase()
}
