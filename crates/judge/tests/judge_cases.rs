//! End-to-end judge behaviour: think splitting, extraction tiers, kinds, rewards.

use judge::{Gold, Judge, JudgeConfig, Kind};

#[test]
fn r1_responses() {
    let j = Judge::default();
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "5",
            "<think>\n... \\boxed{5}\n</think>\nSo \\boxed{5}.",
            true,
            "full format",
        ),
        (
            "5",
            "reasoning \\boxed{4}</think>\n\\boxed{5}",
            true,
            "pre-filled <think>",
        ),
        (
            "5",
            "<think>reasoning \\boxed{5}",
            false,
            "unterminated reasoning: no answer",
        ),
        (
            "5",
            "<think>\\boxed{5}</think>I am not sure.",
            false,
            "answer only inside reasoning",
        ),
        (
            "2",
            "</think>\\boxed{1}. Wait, that is wrong. \\boxed{2}",
            true,
            "self-correction: last box",
        ),
        (
            "1",
            "</think>\\boxed{1}. Wait, that is wrong. \\boxed{2}",
            false,
            "self-correction: first box ignored",
        ),
        (
            "1, 2",
            "</think>\\boxed{1}, \\boxed{2}",
            true,
            "boxes forming a list",
        ),
        (
            "2",
            "</think>\\boxed{1}, \\boxed{2}",
            true,
            "scalar reference: last box only",
        ),
        (
            "\\frac{3}{4}",
            "</think>\\boxed{1} and then \\boxed{\\frac{3}{",
            false,
            "truncated box is no answer",
        ),
        ("42", "</think>The final answer is 42.", true, "anchor"),
        ("42", "</think>**Answer:** $42$", true, "markdown anchor"),
        ("42", "42", true, "no tags: all answer"),
        ("7", "</think>\\boxed 7", true, "space form box"),
    ];
    for (gold, resp, want, why) in cases {
        assert_eq!(
            j.check(Kind::Math, &(*gold).into(), resp).correct,
            *want,
            "{why}"
        );
    }
    let strict = Judge::new(JudgeConfig {
        require_think: true,
        ..JudgeConfig::default()
    });
    assert!(
        !strict.check(Kind::Math, &"42".into(), "42").correct,
        "require_think"
    );
}

#[test]
fn multiple_choice() {
    let j = Judge::default();
    let cases: &[(&str, &str, bool, &str)] = &[
        ("C", "</think>Answer: C", true, "plain"),
        (
            "B",
            "</think>**Answer:** B",
            true,
            "markdown (simple-evals misses it)",
        ),
        (
            "B",
            "</think>Answer: (B)",
            true,
            "parenthesised (simple-evals misses it)",
        ),
        (
            "C",
            "</think>\\boxed{C}",
            true,
            "boxed (simple-evals misses it)",
        ),
        ("C", "</think>answer: c", true, "lower case"),
        ("B", "</think>Answer: B or C", false, "two options"),
        (
            "A",
            "<think>Answer: A</think>Answer: D",
            false,
            "the reasoning's letter does not count",
        ),
        (
            "D",
            "</think>Answer: A\nActually, Answer: D",
            true,
            "last committed letter",
        ),
    ];
    for (gold, resp, want, why) in cases {
        assert_eq!(
            j.check(Kind::Mc, &(*gold).into(), resp).correct,
            *want,
            "{why}"
        );
    }
}

#[test]
fn gsm8k() {
    let j = Judge::default();
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "#### 18",
            "</think>She makes $18.00 a day.",
            true,
            "18.00 = 18 (lm-eval misses it)",
        ),
        ("18", "</think>#### 18", true, "hashes"),
        ("5", "</think>It costs $5.", true, "currency"),
        ("1200", "</think>The total is 1,200.", true, "thousands"),
        ("1200", "</think>\\boxed{1,200}", true, "boxed thousands"),
        (
            "12",
            "</think>The answer is 12 apples, since 3 * 4 = 12",
            true,
            "anchor with words",
        ),
        ("18", "</think>The answer is 17.", false, "wrong"),
        ("-3", "</think>#### -3", true, "negative"),
    ];
    for (gold, resp, want, why) in cases {
        assert_eq!(
            j.check(Kind::Gsm8k, &(*gold).into(), resp).correct,
            *want,
            "{why}"
        );
    }
}

#[test]
fn factual() {
    let j = Judge::default();
    let aliases = Gold::Aliases(vec!["Paris".into(), "Paris, France".into()]);
    assert!(j.check(Kind::Factual, &aliases, "</think>Paris").correct);
    assert!(
        j.check(Kind::Factual, &aliases, "</think>The answer is Paris.")
            .correct
    );
    assert!(!j.check(Kind::Factual, &aliases, "</think>Lyon").correct);
    assert!(
        !j.check(Kind::Factual, &aliases, "</think>Paris or Lyon")
            .correct
    );
    assert!(
        j.check(Kind::Factual, &aliases, "</think>\\boxed{\\text{Paris}}")
            .correct
    );
}

#[test]
fn rewards() {
    let j = Judge::default();
    assert_eq!(
        j.accuracy_reward(Kind::Math, &"4".into(), "r</think>\\boxed{4}"),
        1.0
    );
    assert_eq!(j.format_reward("r</think>\\boxed{4}"), 1.0);
    assert_eq!(j.format_reward("\\boxed{4}"), 0.0);
}
