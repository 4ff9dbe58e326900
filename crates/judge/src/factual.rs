//! Factual short answers (SQuAD / TriviaQA normalisation).
//!
//! Policy:
//!
//! 1. Text is normalised as in the SQuAD evaluation script: lower case, punctuation
//!    removed, articles `a`/`an`/`the` removed, whitespace collapsed.
//! 2. Exact match (EM) and token F1 are computed against every alias; the scores are the
//!    maximum over aliases.
//! 3. The verdict is correct when the answer equals an alias (EM), or when an alias
//!    occurs in the answer as a whole-word sequence (`Paris` in `It is Paris.` but not in
//!    `Parisian`) **and** the answer does not hedge or negate it: an alias preceded by
//!    `not`/`no`/`never`, or an answer offering alternatives with `or` where an
//!    alternative does not contain an alias, is wrong. F1 alone never makes an answer
//!    correct (`John Quincy Adams` is not `John Adams`).

/// Scores of one answer against a list of aliases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FactualScore {
    /// Normalised exact match with some alias.
    pub exact_match: bool,
    /// Best token F1 over the aliases.
    pub f1: f64,
    /// The verdict under the module policy.
    pub correct: bool,
}

/// SQuAD normalisation.
pub fn normalise(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn f1(pred: &[&str], gold: &[&str]) -> f64 {
    if pred.is_empty() || gold.is_empty() {
        return if pred == gold { 1.0 } else { 0.0 };
    }
    let mut remaining: Vec<&str> = gold.to_vec();
    let mut common = 0usize;
    for w in pred {
        if let Some(i) = remaining.iter().position(|g| g == w) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / pred.len() as f64;
    let r = common as f64 / gold.len() as f64;
    2.0 * p * r / (p + r)
}

fn find_words(hay: &[&str], needle: &[&str]) -> Vec<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return Vec::new();
    }
    (0..=hay.len() - needle.len())
        .filter(|&i| hay[i..i + needle.len()] == *needle)
        .collect()
}

/// Scores `answer` against `aliases`.
///
/// ```
/// use judge::factual::score;
/// assert!(score("It is Paris.", &["Paris"]).correct);
/// assert!(!score("Lyon", &["Paris"]).correct);
/// assert!(!score("John Quincy Adams", &["John Adams"]).correct);
/// ```
pub fn score<S: AsRef<str>>(answer: &str, aliases: &[S]) -> FactualScore {
    let ans = normalise(answer);
    let words: Vec<&str> = ans.split_whitespace().collect();
    let mut out = FactualScore {
        exact_match: false,
        f1: 0.0,
        correct: false,
    };
    let norm_aliases: Vec<String> = aliases
        .iter()
        .map(|a| normalise(a.as_ref()))
        .filter(|a| !a.is_empty())
        .collect();
    for alias in &norm_aliases {
        let aw: Vec<&str> = alias.split_whitespace().collect();
        out.f1 = out.f1.max(f1(&words, &aw));
        if *alias == ans {
            out.exact_match = true;
            out.correct = true;
        }
    }
    if out.correct || words.len() > 200 {
        return out;
    }
    let contains_alias = |part: &[&str]| {
        norm_aliases.iter().any(|alias| {
            let aw: Vec<&str> = alias.split_whitespace().collect();
            find_words(part, &aw).iter().any(|&i| {
                !(i > 0 && matches!(part[i - 1], "not" | "no" | "never" | "isnt" | "nor"))
            })
        })
    };
    if !contains_alias(&words) {
        return out;
    }
    // Hedging: every alternative offered with "or" must name an alias.
    let parts: Vec<&[&str]> = words.split(|w| *w == "or").collect();
    out.correct = parts.len() == 1 || parts.iter().all(|p| contains_alias(p));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_normalisation() {
        assert_eq!(normalise("The  Eiffel-Tower!"), "eiffel tower");
        assert_eq!(normalise("An Apple a day"), "apple day");
    }

    #[test]
    fn verdicts() {
        let cases: &[(&str, &[&str], bool, &str)] = &[
            ("Paris", &["Paris"], true, "exact"),
            ("the paris.", &["Paris"], true, "normalised exact"),
            (
                "The capital is Paris.",
                &["Paris"],
                true,
                "alias as whole words",
            ),
            ("Parisian", &["Paris"], false, "not a whole word"),
            ("NYC", &["New York City", "NYC"], true, "second alias"),
            ("Lyon", &["Paris"], false, "different entity"),
            ("Paris or Lyon", &["Paris"], false, "hedged between two"),
            ("not Paris", &["Paris"], false, "negated"),
            (
                "John Quincy Adams",
                &["John Adams"],
                false,
                "high F1 but different person",
            ),
        ];
        for (ans, aliases, want, why) in cases {
            assert_eq!(score(ans, aliases).correct, *want, "{why}: {ans:?}");
        }
        let s = score("Adams", &["John Adams"]);
        assert!(s.f1 > 0.6 && !s.correct);
    }
}
