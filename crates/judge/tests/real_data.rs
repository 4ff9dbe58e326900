//! Real public data from `../shared/data` (skipped with a message when absent).
//!
//! * Every MATH-500 reference solution, judged against its own answer, is correct
//!   (at least 99.5%; each known failure is listed with its explanation).
//! * Every MATH-500 solution judged against a different problem's answer is wrong,
//!   except where the two answers are genuinely equal.
//! * Every GSM8K reference solution is correct against its `####` answer.

use std::path::PathBuf;

use judge::{math::answers_match, Judge, Kind};
use serde_json::Value;

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    dir.is_dir().then_some(dir)
}

fn load(name: &str) -> Option<Vec<Value>> {
    let Some(dir) = data_dir() else {
        eprintln!("SKIP: ../shared/data not found beside the repository");
        return None;
    };
    let path = dir.join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIP: {} not readable", path.display());
        return None;
    };
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

/// MATH-500 reference solutions that the judge is known to reject, with the reason.
/// (Reference solutions have no think tags, so they are judged as text that must end in
/// its answer; a box followed by a visible change of mind is not final.)
const MATH500_KNOWN_FAILURES: &[(&str, &str)] = &[
    (
        "test/precalculus/681.json",
        "the boxed answer is followed by `Alternatively, we can plug in...`, which reads as \
         reasoning going on",
    ),
    (
        "test/intermediate_algebra/754.json",
        "`the answer is $\\boxed{\\text{(B)}} 3(1 + r/10)^x = 7$`: stray text after the \
         box states another value (a typo in the dataset), read as two different finals",
    ),
];

#[test]
fn math500_solutions_match_their_answers() {
    let Some(rows) = load("math500.jsonl") else {
        return;
    };
    let judge = Judge::default();
    let mut failures = Vec::new();
    for r in &rows {
        let (sol, ans, id) = (
            r["solution"].as_str().unwrap_or(""),
            r["answer"].as_str().unwrap_or(""),
            r["unique_id"].as_str().unwrap_or(""),
        );
        let v = judge.check(Kind::Math, &ans.into(), sol);
        if !v.correct {
            failures.push((id.to_string(), ans.to_string(), v.extracted));
        }
    }
    let rate = 1.0 - failures.len() as f64 / rows.len() as f64;
    eprintln!(
        "MATH-500 self-consistency: {}/{} ({:.2}%)",
        rows.len() - failures.len(),
        rows.len(),
        rate * 100.0
    );
    let unexplained: Vec<_> = failures
        .iter()
        .filter(|(id, ..)| !MATH500_KNOWN_FAILURES.iter().any(|(k, _)| k == id))
        .collect();
    for f in unexplained.iter().take(40) {
        eprintln!("  unexplained failure: {f:?}");
    }
    assert!(
        rate >= 0.995,
        "MATH-500 self-consistency {:.2}% < 99.5%",
        rate * 100.0
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained MATH-500 failures",
        unexplained.len()
    );
}

#[test]
fn math500_solutions_reject_other_answers() {
    let Some(rows) = load("math500.jsonl") else {
        return;
    };
    let judge = Judge::default();
    let n = rows.len();
    let mut false_accepts = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        // Pair each solution with the answer of a problem far away in the file.
        let other = &rows[(i + n / 2 + 1) % n];
        let (sol, ans) = (
            r["solution"].as_str().unwrap_or(""),
            r["answer"].as_str().unwrap_or(""),
        );
        let other_ans = other["answer"].as_str().unwrap_or("");
        if answers_match(ans, other_ans) {
            continue; // the two answers are genuinely the same value
        }
        if judge.check(Kind::Math, &other_ans.into(), sol).correct {
            false_accepts.push((r["unique_id"].clone(), other_ans.to_string()));
        }
    }
    assert!(false_accepts.is_empty(), "false accepts: {false_accepts:?}");
}

#[test]
fn gsm8k_solutions_match_their_answers() {
    let Some(rows) = load("gsm8k_test.jsonl") else {
        return;
    };
    let judge = Judge::default();
    let mut failures = Vec::new();
    for r in &rows {
        let full = r["answer"].as_str().unwrap_or("");
        let v = judge.check(Kind::Gsm8k, &full.into(), full);
        if !v.correct {
            failures.push((full.lines().last().unwrap_or("").to_string(), v.extracted));
        }
    }
    eprintln!(
        "GSM8K self-consistency: {}/{}",
        rows.len() - failures.len(),
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.iter().take(10).collect::<Vec<_>>()
    );
}

#[test]
fn aime2024_answers_match_themselves_and_not_each_other() {
    let Some(rows) = load("aime2024.jsonl") else {
        return;
    };
    let judge = Judge::default();
    for (i, r) in rows.iter().enumerate() {
        let ans = r["answer"].to_string().trim_matches('"').to_string();
        let resp = format!("<think>work</think>The answer is $\\boxed{{{ans}}}$.");
        assert!(
            judge.check(Kind::Math, &ans.as_str().into(), &resp).correct,
            "{ans}"
        );
        let other = rows[(i + 1) % rows.len()]["answer"]
            .to_string()
            .trim_matches('"')
            .to_string();
        if other != ans {
            assert!(
                !judge
                    .check(Kind::Math, &other.as_str().into(), &resp)
                    .correct,
                "{ans} vs {other}"
            );
        }
    }
}
