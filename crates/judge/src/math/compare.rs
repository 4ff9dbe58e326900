//! Equivalence of two parsed answers.
//!
//! The comparison policy, in the order it is applied (`gold` is the reference,
//! `pred` the model's answer):
//!
//! 1. Structurally identical trees are equal.
//! 2. `±` expands to the pair of values; an answer with `±` is compared as a set.
//! 3. Relations: two equations `v = a` and `v = b` in the same variable compare their
//!    right-hand sides; other equations are the same relation when `lhs - rhs` of one is a
//!    non-zero constant multiple of the other's (checked at random points); inequalities
//!    in one variable are converted to intervals first. `x = 5` equals `5` and
//!    `x \in [1, 2]` equals `[1, 2]` (in both directions: the variable name is dropped).
//! 4. Sets and bare lists are order-free (a one-to-one matching, same size); tuples,
//!    points and vectors are ordered; a bare list equals a tuple in order.
//! 5. Intervals match when both ends and both closures match (the closure of an infinite
//!    end is ignored); an open interval `(a, b)` equals the tuple `(a, b)`; unions are
//!    order-free unions of intervals.
//! 6. Matrices compare entry by entry; a one-row or one-column matrix equals a tuple.
//! 7. Scalars: if both sides have exact rational values (integers, decimals, fractions,
//!    powers, factorials, perfect roots, within the bit budget), they must be equal
//!    exactly; `0.333 != 1/3`, `1/2^99 != 1/2^98`. There is no loose tolerance.
//! 8. Otherwise, if neither side has variables, both are evaluated in `f64` and must agree
//!    to a relative 1e-10 (1e-12 absolute against an exact zero); this is where
//!    `\frac{\sqrt 3}{2}` meets `\frac{1}{2}\sqrt 3`.
//! 9. With variables, both sides are evaluated at eight deterministic pseudo-random
//!    points in [0.5, 2.5]; every point where both are finite must agree to 1e-8
//!    relative, and at least three points must be usable.
//! 10. Infinity equals only infinity of the same sign; values that overflow `f64`
//!     without being exact are not comparable and are judged different.
//! 11. Word answers compare lower-cased with spaces and outer parentheses removed, and
//!     a word answer matches a single-letter variable of the same name (`\text{(C)}`
//!     vs `C`).
//!
//! 12. An answer that is a chain of equations (`2 + 5 = 7`, `\binom{6}{5} = 6`,
//!     `y(t) = e^{-t}`) is compared by its last side when the reference is not a
//!     relation.
//!
//! Policy 3's dropping of the variable is not symmetric in strictness: it lets
//! `y = 2x + 3` match `2x + 3`, which a human grader would also accept.

use super::expr::{Expr, RelOp};
use super::value::{eval_f64, exact};

/// Most elementary comparisons one check may make (bounds set matching).
const MAX_WORK: usize = 20_000;

/// Compares two parsed answers under the policy in the module documentation.
pub fn equivalent(gold: &Expr, pred: &Expr) -> bool {
    let mut c = Comparer { work: 0 };
    c.eq(gold, pred)
}

struct Comparer {
    work: usize,
}

fn pm_alternatives(e: &Expr, out: &mut Vec<Expr>) -> bool {
    // Expands `a ± b` (possibly nested once inside a sum or quotient) into its values.
    match e {
        Expr::PlusMinus(a, b) => {
            let mut lefts = Vec::new();
            if !pm_alternatives(a, &mut lefts) {
                lefts.push((**a).clone());
            }
            for l in lefts {
                out.push(Expr::Add(vec![l.clone(), (**b).clone()]));
                out.push(Expr::Add(vec![l, Expr::Neg(b.clone())]));
                if out.len() > 16 {
                    return false;
                }
            }
            true
        }
        Expr::Div(a, b) => {
            let mut inner = Vec::new();
            if pm_alternatives(a, &mut inner) {
                out.extend(inner.into_iter().map(|x| Expr::Div(Box::new(x), b.clone())));
                true
            } else {
                false
            }
        }
        _ => false,
    }
}

fn contains_pm(e: &Expr) -> bool {
    let mut found = false;
    e.visit(&mut |x| found |= matches!(x, Expr::PlusMinus(..)));
    found
}

/// Elements of a collection (sets and lists, with `±` members expanded).
fn members(e: &Expr) -> Option<Vec<Expr>> {
    let items: Vec<Expr> = match e {
        Expr::Set(v) | Expr::List(v) => v.clone(),
        Expr::PlusMinus(..) | Expr::Div(..) if contains_pm(e) => vec![e.clone()],
        _ => return None,
    };
    let mut out = Vec::new();
    for it in items {
        let mut alts = Vec::new();
        if contains_pm(&it) && pm_alternatives(&it, &mut alts) {
            out.extend(alts);
        } else {
            out.push(it);
        }
    }
    Some(out)
}

fn text_key(e: &Expr) -> Option<String> {
    let raw = match e {
        Expr::Text(t) => t.clone(),
        Expr::Var(v) => v.to_lowercase(),
        _ => return None,
    };
    Some(
        raw.trim_matches(|c: char| c == '(' || c == ')' || c == ' ')
            .to_string(),
    )
}

/// `v = a` with `v` a single variable (either side) gives `(v, a)`.
fn var_binding(e: &Expr) -> Option<(&str, &Expr)> {
    match e {
        Expr::Rel(v, ops) if ops.len() == 1 && matches!(ops[0], RelOp::Eq | RelOp::In) => {
            match (&v[0], &v[1]) {
                (Expr::Var(name), rhs) => Some((name, rhs)),
                (lhs, Expr::Var(name)) if ops[0] == RelOp::Eq => Some((name, lhs)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn neg_inf() -> Expr {
    Expr::Neg(Box::new(Expr::Const(super::expr::Const::Inf)))
}

fn inf() -> Expr {
    Expr::Const(super::expr::Const::Inf)
}

/// An inequality in one variable as an interval (or a list of them as a union).
fn as_interval_set(e: &Expr) -> Option<Expr> {
    match e {
        Expr::Interval { .. } | Expr::Union(_) => Some(e.clone()),
        Expr::Tuple(t) if t.len() == 2 && t.iter().all(Expr::is_scalar) => Some(Expr::Interval {
            lo: Box::new(t[0].clone()),
            hi: Box::new(t[1].clone()),
            lo_closed: false,
            hi_closed: false,
        }),
        Expr::List(items) if items.len() > 1 => {
            let parts: Option<Vec<Expr>> = items.iter().map(as_interval_set).collect();
            Some(Expr::Union(parts?))
        }
        Expr::Rel(v, ops) => {
            let is_var = |x: &Expr| matches!(x, Expr::Var(_));
            let bound_ok = |x: &Expr| x.variables().is_empty();
            let iv = |lo: &Expr, lo_c: bool, hi: &Expr, hi_c: bool| Expr::Interval {
                lo: Box::new(lo.clone()),
                hi: Box::new(hi.clone()),
                lo_closed: lo_c,
                hi_closed: hi_c,
            };
            match (v.as_slice(), ops.as_slice()) {
                ([x, set], [RelOp::In]) if is_var(x) => as_interval_set(set),
                ([a, b], [op]) => {
                    let (bound, op) = if is_var(a) && bound_ok(b) {
                        (b, *op)
                    } else if is_var(b) && bound_ok(a) {
                        (
                            a,
                            match op {
                                RelOp::Lt => RelOp::Gt,
                                RelOp::Le => RelOp::Ge,
                                RelOp::Gt => RelOp::Lt,
                                RelOp::Ge => RelOp::Le,
                                other => *other,
                            },
                        )
                    } else {
                        return None;
                    };
                    match op {
                        RelOp::Lt => Some(iv(&neg_inf(), false, bound, false)),
                        RelOp::Le => Some(iv(&neg_inf(), false, bound, true)),
                        RelOp::Gt => Some(iv(bound, false, &inf(), false)),
                        RelOp::Ge => Some(iv(bound, true, &inf(), false)),
                        _ => None,
                    }
                }
                ([a, x, b], [o1, o2]) if is_var(x) && bound_ok(a) && bound_ok(b) => {
                    let lower = |o: &RelOp| matches!(o, RelOp::Lt | RelOp::Le);
                    let upper = |o: &RelOp| matches!(o, RelOp::Gt | RelOp::Ge);
                    if lower(o1) && lower(o2) {
                        Some(iv(a, *o1 == RelOp::Le, b, *o2 == RelOp::Le))
                    } else if upper(o1) && upper(o2) {
                        Some(iv(b, *o2 == RelOp::Ge, a, *o1 == RelOp::Ge))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn is_inequality(e: &Expr) -> bool {
    matches!(e, Expr::Rel(_, ops) if ops.iter().any(|o| matches!(o, RelOp::Lt | RelOp::Le | RelOp::Gt | RelOp::Ge | RelOp::In)))
        || matches!(e, Expr::List(v) if v.len() > 1 && v.iter().all(is_inequality))
}

/// Deterministic sample points in [0.5, 2.5].
fn sample(point: usize, var: usize) -> f64 {
    let x =
        (point as f64 + 1.0) * 0.618_033_988_749_894_9 + (var as f64 + 1.0) * 0.414_213_562_373_095;
    0.5 + 2.0 * x.fract()
}

fn close(a: f64, b: f64, rel: f64, zero_abs: f64) -> bool {
    if a == b {
        return true;
    }
    if a == 0.0 || b == 0.0 {
        return (a - b).abs() <= zero_abs;
    }
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

impl Comparer {
    fn eq(&mut self, g: &Expr, p: &Expr) -> bool {
        self.work += 1;
        if self.work > MAX_WORK {
            return false;
        }
        if g == p {
            return true;
        }
        // Relations.
        if let (Some((gv, ga)), Some((pv, pa))) = (var_binding(g), var_binding(p)) {
            if gv == pv {
                return self.eq(ga, pa);
            }
        }
        if is_inequality(g) || is_inequality(p) {
            if let (Some(gi), Some(pi)) = (as_interval_set(g), as_interval_set(p)) {
                if !matches!(
                    (g, p),
                    (
                        Expr::Interval { .. } | Expr::Union(_),
                        Expr::Interval { .. } | Expr::Union(_)
                    )
                ) {
                    return self.eq(&gi, &pi);
                }
            }
        }
        match (g, p) {
            (Expr::Rel(..), Expr::Rel(..)) => return self.relation_eq(g, p),
            (Expr::Rel(..), _) => return var_binding(g).is_some_and(|(_, a)| self.eq(a, p)),
            (_, Expr::Rel(sides, ops)) => {
                if let Some((_, a)) = var_binding(p) {
                    return self.eq(g, a);
                }
                // `\boxed{2 + 5 = 7}`, `y(t) = ...`: the value after the last `=`.
                let all_eq = ops.iter().all(|o| *o == RelOp::Eq);
                return all_eq && sides.len() >= 2 && self.eq(g, &sides[sides.len() - 1]);
            }
            _ => {}
        }
        // Collections.
        if let (Some(gm), Some(pm)) = (members(g), members(p)) {
            return self.unordered(&gm, &pm);
        }
        match (g, p) {
            (Expr::Tuple(a), Expr::Tuple(b))
            | (Expr::Tuple(a), Expr::List(b))
            | (Expr::List(a), Expr::Tuple(b)) => return self.ordered(a, b),
            (Expr::Union(a), Expr::Union(b)) => return self.unordered(a, b),
            (
                Expr::Interval {
                    lo: l1,
                    hi: h1,
                    lo_closed: lc1,
                    hi_closed: hc1,
                },
                Expr::Interval {
                    lo: l2,
                    hi: h2,
                    lo_closed: lc2,
                    hi_closed: hc2,
                },
            ) => {
                let lo_ok = (lc1 == lc2 || l1.has_infinity()) && self.eq(l1, l2);
                let hi_ok = (hc1 == hc2 || h1.has_infinity()) && self.eq(h1, h2);
                return lo_ok && hi_ok;
            }
            (
                Expr::Interval {
                    lo,
                    hi,
                    lo_closed: false,
                    hi_closed: false,
                },
                Expr::Tuple(t),
            )
            | (
                Expr::Tuple(t),
                Expr::Interval {
                    lo,
                    hi,
                    lo_closed: false,
                    hi_closed: false,
                },
            ) if t.len() == 2 => {
                return self.eq(lo, &t[0]) && self.eq(hi, &t[1]);
            }
            (Expr::Matrix(a), Expr::Matrix(b)) => {
                return a.len() == b.len()
                    && a.iter().zip(b).all(|(ra, rb)| {
                        ra.len() == rb.len() && ra.iter().zip(rb).all(|(x, y)| self.eq(x, y))
                    })
            }
            (Expr::Matrix(m), Expr::Tuple(t)) | (Expr::Tuple(t), Expr::Matrix(m)) => {
                let flat: Vec<Expr> = if m.len() == 1 {
                    m[0].clone()
                } else if m.iter().all(|r| r.len() == 1) {
                    m.iter().map(|r| r[0].clone()).collect()
                } else {
                    return false;
                };
                return self.ordered(&flat, t);
            }
            (Expr::Based(d1, b1), Expr::Based(d2, b2)) => return d1 == d2 && b1 == b2,
            _ => {}
        }
        if let (Some(a), Some(b)) = (text_key(g), text_key(p)) {
            if a == b {
                return true;
            }
        }
        if g.is_scalar()
            && p.is_scalar()
            && !matches!(g, Expr::Based(..))
            && !matches!(p, Expr::Based(..))
        {
            return self.scalar_eq(g, p);
        }
        false
    }

    fn ordered(&mut self, a: &[Expr], b: &[Expr]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.eq(x, y))
    }

    fn unordered(&mut self, a: &[Expr], b: &[Expr]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut used = vec![false; b.len()];
        'outer: for x in a {
            for (j, y) in b.iter().enumerate() {
                if !used[j] && self.eq(x, y) {
                    used[j] = true;
                    continue 'outer;
                }
            }
            return false;
        }
        true
    }

    fn scalar_eq(&mut self, g: &Expr, p: &Expr) -> bool {
        let (gi, pi) = (g.has_infinity(), p.has_infinity());
        if gi || pi {
            if gi != pi {
                return false;
            }
            let (a, b) = (eval_f64(g, &[]), eval_f64(p, &[]));
            return a.is_infinite() && a == b;
        }
        if let (Some(a), Some(b)) = (exact(g), exact(p)) {
            return a == b;
        }
        let mut vars = g.variables();
        vars.extend(p.variables());
        vars.sort();
        vars.dedup();
        if vars.is_empty() {
            let (a, b) = (eval_f64(g, &[]), eval_f64(p, &[]));
            return a.is_finite() && b.is_finite() && close(a, b, 1e-10, 1e-12);
        }
        if vars.len() > 8 || g.size() + p.size() > 4000 {
            return false;
        }
        let mut usable = 0;
        for k in 0..8 {
            let env: Vec<(String, f64)> = vars
                .iter()
                .enumerate()
                .map(|(j, v)| (v.clone(), sample(k, j)))
                .collect();
            let (a, b) = (eval_f64(g, &env), eval_f64(p, &env));
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            if !close(a, b, 1e-8, 1e-9) {
                return false;
            }
            usable += 1;
        }
        usable >= 3
    }

    /// Two relations: same kind and `lhs - rhs` proportional (positively for inequalities).
    fn relation_eq(&mut self, g: &Expr, p: &Expr) -> bool {
        let (Expr::Rel(gv, gops), Expr::Rel(pv, pops)) = (g, p) else {
            return false;
        };
        if gops.len() != 1 || pops.len() != 1 {
            return false;
        }
        let norm = |v: &[Expr], op: RelOp| -> Option<(Expr, RelOp)> {
            let (a, b) = (&v[0], &v[1]);
            if !a.is_scalar() || !b.is_scalar() {
                return None;
            }
            let diff =
                |x: &Expr, y: &Expr| Expr::Add(vec![x.clone(), Expr::Neg(Box::new(y.clone()))]);
            Some(match op {
                RelOp::Gt => (diff(b, a), RelOp::Lt),
                RelOp::Ge => (diff(b, a), RelOp::Le),
                other => (diff(a, b), other),
            })
        };
        let (Some((gf, gop)), Some((pf, pop))) = (norm(gv, gops[0]), norm(pv, pops[0])) else {
            return false;
        };
        if gop != pop || gop == RelOp::In {
            return false;
        }
        let mut vars = gf.variables();
        vars.extend(pf.variables());
        vars.sort();
        vars.dedup();
        if vars.is_empty() || vars.len() > 8 {
            return false;
        }
        let mut ratio: Option<f64> = None;
        let mut usable = 0;
        for k in 0..8 {
            let env: Vec<(String, f64)> = vars
                .iter()
                .enumerate()
                .map(|(j, v)| (v.clone(), sample(k, j)))
                .collect();
            let (a, b) = (eval_f64(&gf, &env), eval_f64(&pf, &env));
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            if a.abs() < 1e-12 || b.abs() < 1e-12 {
                if a.abs() < 1e-12 && b.abs() < 1e-12 {
                    continue;
                }
                return false;
            }
            let r = a / b;
            match ratio {
                None => ratio = Some(r),
                Some(r0) if !close(r0, r, 1e-8, 1e-12) => return false,
                _ => {}
            }
            usable += 1;
        }
        let sign_ok = match gop {
            RelOp::Eq | RelOp::Ne => true,
            _ => ratio.is_some_and(|r| r > 0.0),
        };
        usable >= 3 && sign_ok
    }
}
