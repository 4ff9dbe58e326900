//! The judge on real long chain-of-thought outputs: every row of
//! `../shared/data/real_outputs/skythought_math.jsonl` (675 Sky-T1 outputs on AIME 2024,
//! AMC 2023, Minerva Math and MATH-500; skipped with a message when absent), judged
//! under both answer policies and compared with
//!
//! * the two graders recorded in the data (the source repository's `math_equal` and
//!   math-verify 0.9.0; neither is ground truth), and
//! * our own careful verdicts: `tests/data/real_outputs_verdicts.tsv` holds a hand-graded
//!   verdict with a reason for every row where the recorded graders disagree or where the
//!   judge disagreed with both; on the other rows the graders' shared verdict stands.
//!
//! The test prints the counts and asserts: careful-policy agreement with our verdicts of
//! at least 97% overall and 85% on the hand-graded rows (math-verify gets 67% there),
//! no false accepts under either policy, more agreement than math-verify, and that
//! every row the policies disagree on is hand-graded.

use std::collections::HashMap;
use std::path::PathBuf;

use judge::{AnswerPolicy, Judge, JudgeConfig, Kind};
use serde_json::Value;

const VERDICTS: &str = include_str!("data/real_outputs_verdicts.tsv");

fn rows() -> Option<Vec<Value>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/real_outputs/skythought_math.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIP: {} not found", path.display());
        return None;
    };
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    )
}

fn hand_verdicts() -> HashMap<&'static str, (bool, &'static str)> {
    VERDICTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let id = f.next().expect("id");
            let verdict = match f.next() {
                Some("correct") => true,
                Some("wrong") => false,
                other => panic!("bad verdict {other:?} in line {l:?}"),
            };
            let reason = f.next().expect("every verdict has a reason");
            assert!(!reason.trim().is_empty(), "empty reason: {l:?}");
            (id, (verdict, reason))
        })
        .collect()
}

#[derive(Default, Debug)]
struct Counts {
    agree: usize,
    false_accepts: Vec<String>,
    false_rejects: Vec<String>,
    agree_source: usize,
    agree_math_verify: usize,
    hand_rows: usize,
    agree_hand: usize,
}

#[test]
fn real_long_cot_outputs() {
    let Some(rows) = rows() else {
        return;
    };
    let hand = hand_verdicts();
    let careful = Judge::default();
    let strict = Judge::new(JudgeConfig {
        policy: AnswerPolicy::Strict,
        ..JudgeConfig::default()
    });
    let mut counts = [Counts::default(), Counts::default()];
    let (mut src_agree, mut mv_agree, mut src_hand, mut mv_hand) = (0, 0, 0, 0);
    let mut unresolved = Vec::new();
    for r in &rows {
        let id = r["id"].as_str().expect("id");
        let gold = r["gold"].as_str().unwrap_or("");
        let response = r["response"].as_str().unwrap_or("");
        let source = r["source_grader_verdict"].as_bool().unwrap_or(false);
        let math_verify = r["math_verify_verdict"].as_bool().unwrap_or(false);
        let verdicts = [
            careful.check(Kind::Math, &gold.into(), response).correct,
            strict.check(Kind::Math, &gold.into(), response).correct,
        ];
        let truth = match hand.get(id) {
            Some(&(v, _)) => v,
            None => {
                // Rows not hand-graded: the recorded graders agree, and so must both
                // policies (otherwise the row needs a hand verdict).
                if source != math_verify || verdicts.iter().any(|&v| v != source) {
                    unresolved.push(id.to_string());
                }
                source
            }
        };
        src_agree += (source == truth) as usize;
        mv_agree += (math_verify == truth) as usize;
        if hand.contains_key(id) {
            src_hand += (source == truth) as usize;
            mv_hand += (math_verify == truth) as usize;
        }
        for (c, v) in counts.iter_mut().zip(verdicts) {
            c.agree += (v == truth) as usize;
            c.agree_source += (v == source) as usize;
            c.agree_math_verify += (v == math_verify) as usize;
            if hand.contains_key(id) {
                c.hand_rows += 1;
                c.agree_hand += (v == truth) as usize;
            }
            if v && !truth {
                c.false_accepts.push(id.to_string());
            }
            if !v && truth {
                c.false_rejects.push(id.to_string());
            }
        }
    }
    let n = rows.len();
    eprintln!(
        "real long-CoT outputs: {n} rows, {} hand-graded",
        hand.len()
    );
    eprintln!(
        "  recorded graders vs our verdicts: source {src_agree}/{n} (hand-graded rows {src_hand}/{}), \
         math-verify {mv_agree}/{n} (hand-graded rows {mv_hand}/{})",
        hand.len(),
        hand.len()
    );
    for (name, c) in ["careful", "strict"].iter().zip(&counts) {
        eprintln!(
            "  {name:>7}: ours {}/{n} (hand-graded rows {}/{}), source grader {}/{n}, \
             math-verify {}/{n}; false accepts {}, false rejects {}",
            c.agree,
            c.agree_hand,
            c.hand_rows,
            c.agree_source,
            c.agree_math_verify,
            c.false_accepts.len(),
            c.false_rejects.len()
        );
    }
    for id in &counts[0].false_rejects {
        eprintln!(
            "    careful false reject: {id}: {}",
            hand.get(id.as_str()).map_or("", |h| h.1)
        );
    }
    assert!(
        unresolved.is_empty(),
        "rows needing a hand verdict in tests/data/real_outputs_verdicts.tsv: {unresolved:?}"
    );
    let [c, s] = &counts;
    assert!(
        c.false_accepts.is_empty(),
        "careful false accepts: {:?}",
        c.false_accepts
    );
    assert!(
        s.false_accepts.is_empty(),
        "strict false accepts: {:?}",
        s.false_accepts
    );
    assert!(
        c.agree * 100 >= n * 97,
        "careful agreement {}/{n} < 97%",
        c.agree
    );
    assert!(
        c.agree_hand * 100 >= c.hand_rows * 85,
        "careful agreement on hand-graded rows {}/{} < 85%",
        c.agree_hand,
        c.hand_rows
    );
    assert!(
        c.agree > mv_agree,
        "careful {} <= math-verify {mv_agree}",
        c.agree
    );
    // Strict only ever rejects more than careful.
    assert!(s.agree <= c.agree && s.false_rejects.len() >= c.false_rejects.len());
}
