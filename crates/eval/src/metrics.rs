//! Metrics over per-sample verdicts.
//!
//! * Unbiased pass@k (Chen et al. 2021): `1 - C(n-c, k) / C(n, k)`, computed in the
//!   product form `1 - prod_{i=n-c+1..n} (1 - k/i)` (no huge binomials), 1 when
//!   `n - c < k`.
//! * pass@1 averaged over the k samples of each problem, then over problems.
//! * cons@k: majority vote over the samples' extracted answers, grouped by the judge's
//!   equivalence (so `1/2` and `0.5` are one vote), ties broken by the earliest sample;
//!   samples without an answer do not vote.
//! * SimpleQA-style: correct / incorrect / not attempted, accuracy given attempted and
//!   their F-score (harmonic mean of overall correct and accuracy given attempted).
//! * Confidence intervals: a percentile bootstrap over problems (fixed seed, so reports
//!   are reproducible) of the mean per-problem pass@1.

use serde::Serialize;

/// Unbiased pass@k for `n` samples of which `c` are correct.
///
/// ```
/// use eval::metrics::pass_at_k;
/// assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
/// assert_eq!(pass_at_k(4, 3, 2), 1.0);
/// assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
/// ```
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        c <= n && k >= 1 && k <= n,
        "pass@k needs c <= n and 1 <= k <= n"
    );
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// The index of the winning group in a majority vote: `answers[i]` is sample `i`'s
/// extracted answer (`None` does not vote); `same(a, b)` is the equivalence. Returns the
/// earliest sample of the largest group.
pub fn majority<F: Fn(&str, &str) -> bool>(answers: &[Option<String>], same: F) -> Option<usize> {
    // (representative sample, votes)
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let Some(a) = a else { continue };
        match groups
            .iter_mut()
            .find(|(r, _)| same(answers[*r].as_deref().unwrap_or(""), a))
        {
            Some(g) => g.1 += 1,
            None => groups.push((i, 1)),
        }
    }
    let mut best: Option<(usize, usize)> = None;
    for g in groups {
        if best.is_none_or(|b| g.1 > b.1) {
            best = Some(g);
        }
    }
    best.map(|b| b.0)
}

/// SimpleQA-style grades.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FactualGrades {
    /// Fraction correct.
    pub correct: f64,
    /// Fraction attempted and wrong.
    pub incorrect: f64,
    /// Fraction not attempted.
    pub not_attempted: f64,
    /// Correct among attempted.
    pub accuracy_given_attempted: f64,
    /// Harmonic mean of `correct` and `accuracy_given_attempted`.
    pub f_score: f64,
}

/// Whether a factual answer declines to answer ("I don't know", "cannot determine"...).
pub fn is_not_attempted(extracted: Option<&str>) -> bool {
    let Some(a) = extracted else { return true };
    let a = a.to_lowercase();
    let a = a.trim();
    a.is_empty()
        || [
            "i don't know",
            "i do not know",
            "not sure",
            "unknown",
            "cannot determine",
            "can't determine",
            "unable to determine",
            "i cannot answer",
            "i can't answer",
            "no answer",
        ]
        .iter()
        .any(|p| a.contains(p))
}

/// Grades from (correct, attempted) pairs.
pub fn factual_grades(samples: &[(bool, bool)]) -> FactualGrades {
    let n = samples.len().max(1) as f64;
    let correct = samples.iter().filter(|s| s.0).count() as f64;
    let attempted = samples.iter().filter(|s| s.1).count() as f64;
    let c = correct / n;
    let given = if attempted > 0.0 {
        correct / attempted
    } else {
        0.0
    };
    FactualGrades {
        correct: c,
        incorrect: (attempted - correct) / n,
        not_attempted: 1.0 - attempted / n,
        accuracy_given_attempted: given,
        f_score: if c + given > 0.0 {
            2.0 * c * given / (c + given)
        } else {
            0.0
        },
    }
}

/// Summary statistics of a list of lengths.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LengthStats {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Maximum.
    pub max: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx]
}

/// Mean, median, p90 and max of `xs`.
pub fn length_stats(xs: &[f64]) -> LengthStats {
    if xs.is_empty() {
        return LengthStats::default();
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    LengthStats {
        mean: s.iter().sum::<f64>() / s.len() as f64,
        median: percentile(&s, 0.5),
        p90: percentile(&s, 0.9),
        max: *s.last().unwrap(),
    }
}

/// A 95% percentile-bootstrap interval of the mean of `xs` (per-problem scores);
/// deterministic (fixed seed, 1000 resamples).
pub fn bootstrap_ci(xs: &[f64]) -> (f64, f64) {
    if xs.len() < 2 {
        let m = xs.first().copied().unwrap_or(0.0);
        return (m, m);
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let n = xs.len();
    let mut means: Vec<f64> = (0..1000)
        .map(|_| {
            (0..n)
                .map(|_| xs[(next() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    (percentile(&means, 0.025), percentile(&means, 0.975))
}

/// The mean of `xs` (0 when empty).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u64, k: u64) -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn pass_at_k_matches_the_binomial_formula() {
        for n in 1..=20usize {
            for c in 0..=n {
                for k in 1..=n {
                    let want = if n - c < k {
                        1.0
                    } else {
                        1.0 - binom((n - c) as u64, k as u64) / binom(n as u64, k as u64)
                    };
                    assert!((pass_at_k(n, c, k) - want).abs() < 1e-9, "{n} {c} {k}");
                }
                assert!((pass_at_k(n, c, 1) - c as f64 / n as f64).abs() < 1e-12);
            }
        }
        // Large n stays finite and exact enough.
        assert!((pass_at_k(1000, 1, 1) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn majority_groups_by_equivalence_and_breaks_ties_early() {
        let a = |v: &[Option<&str>]| v.iter().map(|x| x.map(String::from)).collect::<Vec<_>>();
        let eq = |x: &str, y: &str| x.trim_start_matches('0') == y.trim_start_matches('0');
        assert_eq!(
            majority(&a(&[Some("1"), Some("2"), Some("02"), None]), eq),
            Some(1)
        );
        assert_eq!(majority(&a(&[Some("1"), Some("2")]), eq), Some(0));
        assert_eq!(majority(&a(&[None, None]), eq), None);
    }

    #[test]
    fn simpleqa_f_score() {
        let g = factual_grades(&[(true, true), (false, true), (false, false), (true, true)]);
        assert_eq!((g.correct, g.incorrect, g.not_attempted), (0.5, 0.25, 0.25));
        assert!((g.accuracy_given_attempted - 2.0 / 3.0).abs() < 1e-12);
        assert!((g.f_score - 2.0 * 0.5 * (2.0 / 3.0) / (0.5 + 2.0 / 3.0)).abs() < 1e-12);
        assert!(is_not_attempted(Some("I don't know")) && !is_not_attempted(Some("Paris")));
        let (lo, hi) = bootstrap_ci(&[0.0, 1.0, 1.0, 0.0, 1.0]);
        assert!(lo < 0.6 && hi > 0.6 && lo >= 0.0 && hi <= 1.0);
    }
}
