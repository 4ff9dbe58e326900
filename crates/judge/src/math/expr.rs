//! The expression tree that both the reference and the prediction are parsed into.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};

use super::lexer::NumLit;

/// Named constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Const {
    /// π (`\pi`, `pi`, `π`).
    Pi,
    /// Euler's number (`e`; the letter `e` is always this constant).
    E,
    /// Positive infinity (`\infty`, `inf`, `oo`).
    Inf,
}

/// Elementary functions of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Func {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    /// Natural logarithm (`\ln`, and `\log` without a base).
    Ln,
    Exp,
    Abs,
    Floor,
    Ceil,
}

/// A relation symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Membership, `x \in [1, 2]`.
    In,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An exact rational literal (decimals are exact: `0.333` is 333/1000).
    Num(BigRational),
    /// A named constant.
    Const(Const),
    /// A variable (`x`, `x_1`, `\alpha`).
    Var(String),
    /// A digit string in a stated base, `2516_8`; compared digit for digit.
    Based(String, String),
    /// Sum of terms.
    Add(Vec<Expr>),
    /// Product of factors.
    Mul(Vec<Expr>),
    /// Negation.
    Neg(Box<Expr>),
    /// Quotient.
    Div(Box<Expr>, Box<Expr>),
    /// Power (roots are powers with a rational exponent).
    Pow(Box<Expr>, Box<Expr>),
    /// Function application.
    Func(Func, Box<Expr>),
    /// Logarithm with an explicit base: `Log(base, x)`.
    Log(Box<Expr>, Box<Expr>),
    /// `n!`.
    Factorial(Box<Expr>),
    /// Binomial coefficient.
    Binom(Box<Expr>, Box<Expr>),
    /// `a \pm b` (the pair of values `a + b`, `a - b`).
    PlusMinus(Box<Expr>, Box<Expr>),
    /// `(a, b, ...)`: ordered.
    Tuple(Vec<Expr>),
    /// A bare comma-separated list at top level: compared as a set.
    List(Vec<Expr>),
    /// `\{a, b\}`: order-free.
    Set(Vec<Expr>),
    /// An interval with open or closed ends.
    Interval {
        /// Lower end.
        lo: Box<Expr>,
        /// Upper end.
        hi: Box<Expr>,
        /// `[` rather than `(`.
        lo_closed: bool,
        /// `]` rather than `)`.
        hi_closed: bool,
    },
    /// Union of sets or intervals.
    Union(Vec<Expr>),
    /// A relation chain `a < b <= c`: n operands and n - 1 operators.
    Rel(Vec<Expr>, Vec<RelOp>),
    /// A matrix, row-major.
    Matrix(Vec<Vec<Expr>>),
    /// A word answer, lower-cased with spaces collapsed.
    Text(String),
}

impl Expr {
    /// The exact value of a decimal literal.
    pub fn from_lit(lit: &NumLit) -> Expr {
        let ten = BigInt::from(10u32);
        let int: BigInt = if lit.int.is_empty() {
            BigInt::zero()
        } else {
            lit.int.parse().unwrap_or_default()
        };
        let mut value = BigRational::from_integer(int);
        if !lit.frac.is_empty() {
            let f: BigInt = lit.frac.parse().unwrap_or_default();
            value += BigRational::new(f, num_traits::pow(ten.clone(), lit.frac.len()));
        }
        if !lit.rep.is_empty() {
            let r: BigInt = lit.rep.parse().unwrap_or_default();
            let scale = num_traits::pow(ten.clone(), lit.frac.len());
            let nines = num_traits::pow(ten, lit.rep.len()) - BigInt::one();
            value += BigRational::new(r, scale * nines);
        }
        Expr::Num(value)
    }

    /// An integer literal.
    pub fn int(n: i64) -> Expr {
        Expr::Num(BigRational::from_integer(BigInt::from(n)))
    }

    /// Whether the tree mentions infinity anywhere.
    pub fn has_infinity(&self) -> bool {
        let mut found = false;
        self.visit(&mut |e| found |= matches!(e, Expr::Const(Const::Inf)));
        found
    }

    /// Calls `f` on every node, parents first.
    pub fn visit(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Num(_) | Expr::Const(_) | Expr::Var(_) | Expr::Based(..) | Expr::Text(_) => {}
            Expr::Add(v)
            | Expr::Mul(v)
            | Expr::Tuple(v)
            | Expr::List(v)
            | Expr::Set(v)
            | Expr::Union(v) => v.iter().for_each(|e| e.visit(f)),
            Expr::Rel(v, _) => v.iter().for_each(|e| e.visit(f)),
            Expr::Neg(a) | Expr::Func(_, a) | Expr::Factorial(a) => a.visit(f),
            Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Log(a, b)
            | Expr::Binom(a, b)
            | Expr::PlusMinus(a, b) => {
                a.visit(f);
                b.visit(f)
            }
            Expr::Interval { lo, hi, .. } => {
                lo.visit(f);
                hi.visit(f)
            }
            Expr::Matrix(rows) => rows.iter().flatten().for_each(|e| e.visit(f)),
        }
    }

    /// Names of the free variables, sorted and deduplicated.
    pub fn variables(&self) -> Vec<String> {
        let mut vars = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Var(v) = e {
                vars.push(v.clone())
            }
        });
        vars.sort();
        vars.dedup();
        vars
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        let mut n = 0;
        self.visit(&mut |_| n += 1);
        n
    }

    /// Whether this is a scalar expression (not a set, tuple, relation, matrix or text).
    pub fn is_scalar(&self) -> bool {
        !matches!(
            self,
            Expr::Tuple(_)
                | Expr::List(_)
                | Expr::Set(_)
                | Expr::Interval { .. }
                | Expr::Union(_)
                | Expr::Rel(..)
                | Expr::Matrix(_)
                | Expr::Text(_)
                | Expr::PlusMinus(..)
        )
    }
}
