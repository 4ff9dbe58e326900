//! Bounded and safe: pathological inputs get a verdict quickly, never a panic or hang;
//! the fuzz corpus in `fuzz/corpus/judge` replays through the same code as the fuzz target.

use std::time::{Duration, Instant};

use judge::{math::answers_match, Judge, Kind};

/// Generous for unoptimised test builds on a loaded 2-core machine; release builds are
/// far below it.
const LIMIT: Duration = Duration::from_millis(1500);

fn timed(name: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    let took = t.elapsed();
    assert!(took < LIMIT, "{name} took {took:?}");
}

/// Same as the fuzz target's body.
fn fuzz_one(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = [Kind::Math, Kind::Mc, Kind::Gsm8k, Kind::Factual][(selector % 4) as usize];
    let (gold, response) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let gold = String::from_utf8_lossy(gold).into_owned();
    let _ = Judge::default().check_bytes(kind, &gold.as_str().into(), response);
    let _ = answers_match(&gold, &String::from_utf8_lossy(response));
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/judge");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        timed(&path.display().to_string(), || fuzz_one(&data));
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} files");
}

#[test]
fn pathological_math_inputs_get_verdicts() {
    let deep_braces = format!("{}1{}", "{".repeat(100_000), "}".repeat(100_000));
    let deep_parens = format!("{}1{}", "(".repeat(60_000), ")".repeat(60_000));
    let long_number = "9".repeat(50_000);
    let many = vec!["1"; 10_000].join(",");
    let nested_frac = format!("{}1{}", "\\frac{1}{".repeat(500), "}".repeat(500));
    let cases: Vec<(&str, String, String)> = vec![
        ("tower", "10^{10^{10}}".into(), "10^{10^{10}}+1".into()),
        ("tower vs inf", "\\infty".into(), "10^{10^{10}}".into()),
        ("power tower", "2".into(), "2^{2^{2^{2^{2^{2}}}}}".into()),
        (
            "huge factorial",
            "1".into(),
            "\\frac{1}{99999999999!}".into(),
        ),
        ("deep braces", "1".into(), deep_braces),
        ("deep parens", "1".into(), deep_parens),
        ("long number", long_number.clone(), long_number),
        ("long list", many.clone(), many),
        ("nested frac", "1".into(), nested_frac),
        (
            "huge binomial",
            "1".into(),
            "\\binom{10^{9}}{5000000}".into(),
        ),
        ("big root", "1".into(), "\\sqrt[64]{10^{4000}}".into()),
    ];
    for (name, gold, pred) in cases {
        timed(name, || {
            let _ = answers_match(&gold, &pred);
        });
    }
    assert!(
        !answers_match("\\infty", "10^{10^{10}}"),
        "overflow is not infinity"
    );
}

#[test]
fn huge_responses_get_verdicts() {
    let judge = Judge::default();
    let mut megabyte = "Let me think. ".repeat(80_000);
    megabyte.push_str("</think>The answer is \\boxed{42}.");
    timed("1 MB response", || {
        assert!(judge.check(Kind::Math, &"42".into(), &megabyte).correct)
    });

    let open_boxes = "\\boxed{".repeat(100_000);
    timed("unclosed boxes", || {
        assert!(!judge.check(Kind::Math, &"1".into(), &open_boxes).correct)
    });

    let many_boxes = "\\boxed{1}, ".repeat(50_000);
    timed("many boxes", || {
        let _ = judge.check(Kind::Math, &"1, 2".into(), &many_boxes);
    });

    let mut bytes = vec![0xffu8; 100_000];
    bytes.extend_from_slice(b"</think>\\boxed{7}");
    timed("invalid utf-8", || {
        assert!(judge.check_bytes(Kind::Math, &"7".into(), &bytes).correct)
    });

    for kind in [Kind::Mc, Kind::Gsm8k, Kind::Factual] {
        timed("other kinds on 1 MB", || {
            let _ = judge.check(kind, &"B".into(), &megabyte);
        });
    }
}

#[test]
fn sixty_four_kilobyte_checks_finish_in_milliseconds() {
    let judge = Judge::default();
    let body = "We compute $\\frac{a}{b} = \\sqrt{2}$ and so on. ".repeat(1_300);
    let response = format!("<think>{body}</think>{body}\\boxed{{\\frac{{\\sqrt{{3}}}}{{2}}}}");
    assert!(response.len() > 64_000);
    let t = Instant::now();
    for _ in 0..10 {
        assert!(
            judge
                .check(Kind::Math, &"\\frac{1}{2}\\sqrt3".into(), &response)
                .correct
        );
    }
    assert!(
        t.elapsed() / 10 < Duration::from_millis(50),
        "{:?} per check",
        t.elapsed() / 10
    );
}

#[test]
fn long_untagged_reasoning_is_fast_and_has_no_answer() {
    // A 30K-token chain of thought cut off by the length limit, full of statements.
    let body = "So x is 5. Then the answer is 12 = 3 \\cdot 4, so $y = 7$. Wait, \\boxed{7} is not right. ".repeat(1_500);
    let response = format!("{body}Now let me compute");
    for policy in [judge::AnswerPolicy::Careful, judge::AnswerPolicy::Strict] {
        let j = Judge::new(judge::JudgeConfig {
            policy,
            ..judge::JudgeConfig::default()
        });
        timed("untagged 130 KB", || {
            for gold in ["5", "7", "12"] {
                assert!(
                    !j.check(Kind::Math, &gold.into(), &response).correct,
                    "{gold}"
                );
                assert!(
                    !j.check(Kind::Gsm8k, &gold.into(), &response).correct,
                    "{gold}"
                );
            }
        });
    }
}
