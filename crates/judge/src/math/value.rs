//! Evaluation: exact rationals with a bit budget, and `f64` for everything else.
//!
//! [`exact`] returns the value of an expression when it is a rational number that can
//! be computed within [`MAX_BITS`]; powers, factorials and binomials whose results
//! would exceed that budget are refused (`None`) before any work is done, so
//! `10^{10^{10}}` costs nothing. [`eval_f64`] evaluates any scalar expression with the
//! given variable values; it is used only where no exact value exists (roots, π, trig,
//! variables).

use num_bigint::{BigInt, Sign};
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

use super::expr::{Const, Expr, Func};

/// Largest numerator plus denominator size, in bits, of any exact intermediate value.
pub const MAX_BITS: u64 = 1 << 16;

fn bits(r: &BigRational) -> u64 {
    r.numer().bits() + r.denom().bits()
}

fn within_budget(r: BigRational) -> Option<BigRational> {
    (bits(&r) <= MAX_BITS).then_some(r)
}

fn as_int(r: &BigRational) -> Option<i64> {
    if r.is_integer() {
        r.to_integer().to_i64()
    } else {
        None
    }
}

/// The exact rational value of `e`, or `None` if it is irrational, symbolic, undefined
/// or too large.
pub fn exact(e: &Expr) -> Option<BigRational> {
    match e {
        Expr::Num(r) => Some(r.clone()),
        Expr::Add(v) => {
            let mut acc = BigRational::zero();
            for t in v {
                acc = within_budget(acc + exact(t)?)?;
            }
            Some(acc)
        }
        Expr::Mul(v) => {
            let mut acc = BigRational::one();
            for t in v {
                acc = within_budget(acc * exact(t)?)?;
            }
            Some(acc)
        }
        Expr::Neg(a) => Some(-exact(a)?),
        Expr::Div(a, b) => {
            let d = exact(b)?;
            if d.is_zero() {
                return None;
            }
            within_budget(exact(a)? / d)
        }
        Expr::Pow(b, x) => pow(&exact(b)?, &exact(x)?),
        Expr::Factorial(a) => {
            let n = as_int(&exact(a)?)?;
            if !(0..=20_000).contains(&n) {
                return None;
            }
            // log2(n!) <= n * log2(n)
            let estimate = (n as f64) * (n.max(2) as f64).log2();
            if estimate > MAX_BITS as f64 {
                return None;
            }
            let mut acc = BigInt::one();
            for k in 2..=n {
                acc *= k;
            }
            Some(BigRational::from_integer(acc))
        }
        Expr::Binom(n, k) => {
            let n = as_int(&exact(n)?)?;
            let k = as_int(&exact(k)?)?;
            if !(0..=100_000).contains(&n) {
                return None;
            }
            if k < 0 || k > n {
                return Some(BigRational::zero());
            }
            let k = k.min(n - k);
            if (k as f64) * (n.max(2) as f64).log2() > MAX_BITS as f64 {
                return None;
            }
            let mut acc = BigInt::one();
            for i in 0..k {
                acc = acc * (n - i) / (i + 1);
            }
            Some(BigRational::from_integer(acc))
        }
        Expr::Func(f, a) => {
            let v = exact(a)?;
            match f {
                Func::Abs => Some(v.abs()),
                Func::Floor => Some(BigRational::from_integer(v.floor().to_integer())),
                Func::Ceil => Some(BigRational::from_integer(v.ceil().to_integer())),
                Func::Sin | Func::Tan | Func::Asin | Func::Atan | Func::Sinh | Func::Tanh
                    if v.is_zero() =>
                {
                    Some(v)
                }
                Func::Cos | Func::Cosh | Func::Exp if v.is_zero() => Some(BigRational::one()),
                Func::Ln if v.is_one() => Some(BigRational::zero()),
                _ => None,
            }
        }
        Expr::Log(b, x) => {
            let b = exact(b)?;
            let x = exact(x)?;
            if b <= BigRational::zero() || b.is_one() || x <= BigRational::zero() {
                return None;
            }
            // An exact logarithm only when x is an integer power of b.
            for k in -64i64..=64 {
                if let Some(p) = pow(&b, &BigRational::from_integer(k.into())) {
                    if p == x {
                        return Some(BigRational::from_integer(k.into()));
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// `b^x` exactly, when the result is rational and within budget.
pub fn pow(b: &BigRational, x: &BigRational) -> Option<BigRational> {
    if x.is_integer() {
        let n = x.to_integer();
        if b.is_zero() {
            return match n.sign() {
                Sign::Minus => None,
                Sign::NoSign => Some(BigRational::one()),
                Sign::Plus => Some(BigRational::zero()),
            };
        }
        if b.is_one() {
            return Some(BigRational::one());
        }
        if *b == -BigRational::one() {
            let odd = (&n % 2u32) != BigInt::zero();
            return Some(if odd {
                -BigRational::one()
            } else {
                BigRational::one()
            });
        }
        let n = n.to_i64()?;
        let per = bits(b).saturating_sub(1).max(1);
        if (n.unsigned_abs()).saturating_mul(per) > MAX_BITS {
            return None;
        }
        let r = num_traits::pow(b.clone(), n.unsigned_abs() as usize);
        return Some(if n < 0 { r.recip() } else { r });
    }
    // Rational exponent p/q: exact only if b has an exact q-th root.
    let q = x.denom().to_u32()?;
    if q > 64 {
        return None;
    }
    let root = exact_root(b, q)?;
    pow(&root, &BigRational::from_integer(x.numer().clone()))
}

fn exact_root(b: &BigRational, q: u32) -> Option<BigRational> {
    if b.is_negative() {
        if q.is_multiple_of(2) {
            return None;
        }
        return exact_root(&-b, q).map(|r| -r);
    }
    let n = b.numer().nth_root(q);
    let d = b.denom().nth_root(q);
    let r = BigRational::new(n, d);
    (num_traits::pow(r.clone(), q as usize) == *b).then_some(r)
}

/// Evaluates a scalar expression in `f64`; variables take values from `vars`
/// (a missing variable or a non-scalar gives NaN).
pub fn eval_f64(e: &Expr, vars: &[(String, f64)]) -> f64 {
    let ev = |x: &Expr| eval_f64(x, vars);
    match e {
        Expr::Num(r) => r.to_f64().unwrap_or(f64::NAN),
        Expr::Const(Const::Pi) => std::f64::consts::PI,
        Expr::Const(Const::E) => std::f64::consts::E,
        Expr::Const(Const::Inf) => f64::INFINITY,
        Expr::Var(v) => vars
            .iter()
            .find(|(n, _)| n == v)
            .map_or(f64::NAN, |(_, x)| *x),
        Expr::Add(v) => v.iter().map(ev).sum(),
        Expr::Mul(v) => v.iter().map(ev).product(),
        Expr::Neg(a) => -ev(a),
        Expr::Div(a, b) => ev(a) / ev(b),
        Expr::Pow(b, x) => {
            let base = ev(b);
            let ex = ev(x);
            if base < 0.0 {
                // Odd roots of negative numbers are real.
                if let Some(r) = exact(x) {
                    if !r.is_integer() {
                        let odd_den = (r.denom() % 2u32) == BigInt::one();
                        if odd_den {
                            let mag = (-base).powf(ex);
                            let odd_num = (r.numer() % 2u32) != BigInt::zero();
                            return if odd_num { -mag } else { mag };
                        }
                    }
                }
            }
            base.powf(ex)
        }
        Expr::Func(f, a) => {
            let x = ev(a);
            match f {
                Func::Sin => x.sin(),
                Func::Cos => x.cos(),
                Func::Tan => x.tan(),
                Func::Sec => 1.0 / x.cos(),
                Func::Csc => 1.0 / x.sin(),
                Func::Cot => 1.0 / x.tan(),
                Func::Asin => x.asin(),
                Func::Acos => x.acos(),
                Func::Atan => x.atan(),
                Func::Sinh => x.sinh(),
                Func::Cosh => x.cosh(),
                Func::Tanh => x.tanh(),
                Func::Ln => x.ln(),
                Func::Exp => x.exp(),
                Func::Abs => x.abs(),
                Func::Floor => x.floor(),
                Func::Ceil => x.ceil(),
            }
        }
        Expr::Log(b, x) => ev(x).ln() / ev(b).ln(),
        Expr::Factorial(a) => {
            let n = ev(a);
            if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
                return f64::NAN;
            }
            (2..=n as u64).map(|k| k as f64).product()
        }
        Expr::Binom(n, k) => {
            let (n, k) = (ev(n), ev(k));
            if n.fract() != 0.0 || k.fract() != 0.0 || n < 0.0 || k < 0.0 || k > n || n > 1e6 {
                return f64::NAN;
            }
            let k = k.min(n - k) as u64;
            (0..k).fold(1.0, |acc, i| acc * (n - i as f64) / (i as f64 + 1.0))
        }
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::parser::parse;

    fn ex(s: &str) -> Option<BigRational> {
        exact(&parse(s).unwrap())
    }

    #[test]
    fn huge_powers_are_refused_not_computed() {
        assert!(ex("10^{10^{10}}").is_none());
        assert!(ex("2^{100000}").is_none());
        assert!(ex("2^{1000}").is_some());
    }

    #[test]
    fn factorials_within_budget_are_exact() {
        assert_ne!(ex("\\frac{1}{2004!}"), ex("\\frac{1}{2006!}"));
        assert!(ex("100000!").is_none());
    }

    #[test]
    fn roots_are_exact_only_when_perfect() {
        assert_eq!(ex("\\sqrt{16}"), ex("4"));
        assert_eq!(ex("\\sqrt[3]{-27}"), ex("-3"));
        assert!(ex("\\sqrt{2}").is_none());
        assert_eq!(ex("8^{2/3}"), ex("4"));
    }

    #[test]
    fn logs_of_exact_powers_are_exact() {
        assert_eq!(ex("\\log_2 8"), ex("3"));
        assert_eq!(ex("\\log_{3}\\frac{1}{9}"), ex("-2"));
        assert!(ex("\\log_2 3").is_none());
    }
}
