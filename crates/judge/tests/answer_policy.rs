//! The answer policies on the output shapes of real long chain-of-thought models: each
//! relaxation of the careful policy next to the negative cases it must not accept.

use judge::response::ThinkFormat;
use judge::{AnswerPolicy, Judge, JudgeConfig, Kind};

fn careful() -> Judge {
    Judge::default()
}

fn strict() -> Judge {
    Judge::new(JudgeConfig {
        policy: AnswerPolicy::Strict,
        ..JudgeConfig::default()
    })
}

fn prefilled(policy: AnswerPolicy) -> Judge {
    Judge::new(JudgeConfig {
        policy,
        think_prefilled: true,
        ..JudgeConfig::default()
    })
}

/// (gold, response, careful verdict, strict verdict, why)
type Case = (&'static str, &'static str, bool, bool, &'static str);

fn run(kind: Kind, cases: &[Case]) {
    for (gold, response, want_careful, want_strict, why) in cases {
        let c = careful().check(kind, &(*gold).into(), response);
        assert_eq!(c.correct, *want_careful, "careful: {why}: {c:?}");
        let s = strict().check(kind, &(*gold).into(), response);
        assert_eq!(s.correct, *want_strict, "strict: {why}: {s:?}");
        assert!(
            !s.correct || c.correct,
            "strict accepts only what careful accepts: {why}"
        );
    }
}

#[test]
fn unfinished_reasoning_never_counts() {
    run(
        Kind::Math,
        &[
            (
                "5",
                "<think>Let me compute. The answer is 5, but wait, I should check the second case",
                false,
                false,
                "unterminated <think>",
            ),
            (
                "5",
                "<|begin_of_thought|>\n\nSo x is 5. Then y",
                false,
                false,
                "unterminated Sky-T1 thought",
            ),
            (
                "5",
                "Let me compute. First, x is 5. Then we need y, which is",
                false,
                false,
                "no tags, cut off: a number mid-reasoning",
            ),
            (
                "5",
                "So the answer is 5.\n\nWait, let me double-check this with 2 + 3 = ",
                false,
                false,
                "no tags: an answer followed by more reasoning is not final",
            ),
            (
                "5",
                "Step 1: \\boxed{5}. Now let me verify the second case: x = 4",
                false,
                false,
                "no tags: a mid-reasoning box followed by more work",
            ),
            (
                "25",
                "Adding them up, the answer is 25",
                false,
                false,
                "no tags, cut off right after a number (it could be 255)",
            ),
            (
                "255",
                "Adding the place values gives 255.\n\nSo, regardless of the method, the answer is 255.\n\nI think that's pretty much it.",
                true,
                false,
                "no tags: a final statement with a closing remark",
            ),
            (
                "7",
                "3 + 4 = 7, so the mean is 7.\n\nLet me double-check: $\\boxed{7}$ and that matches.",
                true,
                true,
                "no tags: a final box followed by an explanation",
            ),
        ],
    );
}

#[test]
fn think_prefilled() {
    let response = "Let me think. The answer is 5 since 2 + 3 = 5.";
    for policy in [AnswerPolicy::Careful, AnswerPolicy::Strict] {
        let j = prefilled(policy);
        let v = j.check(Kind::Math, &"5".into(), response);
        assert!(!v.correct, "{policy}: no </think>: unfinished reasoning");
        assert_eq!(v.format, ThinkFormat::Unterminated);
        assert_eq!(j.format_reward(response), 0.0);
        let done = "Let me think. 2 + 3 = 5.</think>The answer is $\\boxed{5}$.";
        assert!(j.check(Kind::Math, &"5".into(), done).correct, "{policy}");
        assert_eq!(j.format_reward(done), 1.0);
    }
    // Without the option the same untagged text is judged as text that may end in an answer.
    assert!(careful().check(Kind::Math, &"5".into(), response).correct);
}

#[test]
fn corrections_and_two_finals() {
    run(
        Kind::Math,
        &[
            (
                "5",
                "</think>The answer is 5... wait, actually 6.",
                false,
                false,
                "corrected answer: not 5",
            ),
            (
                "6",
                "</think>The answer is 5... wait, actually 6.",
                false,
                false,
                "corrected answer: no clear final either",
            ),
            (
                "5",
                "</think>So $\\boxed{5}$.\n\n**Answer:** 6",
                false,
                false,
                "careful: a box and a different stated answer are two finals",
            ),
            (
                "6",
                "</think>So $\\boxed{5}$.\n\n**Answer:** 6",
                false,
                false,
                "two finals: neither counts under careful, the box is 5",
            ),
            (
                "6",
                "</think>First I thought $\\boxed{5}$, but that was wrong; $\\boxed{6}$.",
                true,
                true,
                "the last box after a correction",
            ),
            (
                "-\\tau\\ln\\Delta",
                "</think>$\\boxed{t_s = \\tau \\ln \\frac{1}{\\Delta}}$ or equivalently $\\boxed{t_s = -\\tau\\ln\\Delta}$",
                true,
                true,
                "two equal boxes",
            ),
        ],
    );
}

#[test]
fn final_answer_places() {
    run(
        Kind::Math,
        &[
            (
                "7",
                "<|begin_of_thought|>\nwork\n<|end_of_thought|>\n\n<|begin_of_solution|>\nSo, the mean is $\\boxed{7}$.\n<|end_of_solution|>\n\nHuman: and then \\boxed{}",
                true,
                true,
                "Sky-T1 solution; text after <|end_of_solution|> and empty boxes ignored",
            ),
            (
                "7",
                "</think>The mean is $\\boxed{7}$. Checking: 3 + 4 = 7. \\boxed{}",
                true,
                true,
                "an empty box after the real one is not a box",
            ),
            (
                "7",
                "<|begin_of_thought|>\n3 + 4 = 7.\n\n**Final Answer**\n\n\\[ \\boxed{7} \\]\n<|end_of_thought|>\n\n<|begin_of_solution|>\nTo find the mean we first compute the total",
                true,
                false,
                "summary cut off: the final box that ends the reasoning counts under careful",
            ),
            (
                "9",
                "<think>So it is \\boxed{9}. Wait, let me redo the sum: 3 + 4 + 1</think>To find the mean we first",
                false,
                false,
                "summary cut off, and the reasoning's box is not final",
            ),
            (
                "83",
                "</think>The total is boxed{83}.",
                true,
                false,
                "backslash lost: careful only",
            ),
            (
                "even",
                "</think>**Answer:** even",
                true,
                false,
                "markdown anchor with a word",
            ),
            (
                "18",
                "</think>In any case, our solution seems solid. The greater integer is indeed 18.",
                true,
                false,
                "final statement without box",
            ),
            (
                "18",
                "In any case, the answer is correct. The greater integer is indeed 18.",
                true,
                false,
                "a verdict word is not extracted",
            ),
            (
                "44",
                "So x = 44 mod 83.\n\nThis matches, so I'm confident that 44 is the correct answer.",
                true,
                false,
                "value confirmed after it",
            ),
        ],
    );
    let v = careful().check(
        Kind::Math,
        &"18".into(),
        "So the answer is correct. The greater integer is indeed 18.",
    );
    assert_eq!(v.extracted.as_deref(), Some("18"));
}

#[test]
fn answer_forms() {
    run(
        Kind::Math,
        &[
            ("11,\\! 111,\\! 111,\\! 100", "</think>\\boxed{11111111100}", true, true, "thin-space thousands in the gold"),
            ("12", "</think>\\boxed{12^{\\mathrm{th}} \\text{ grade}}", true, true, "ordinal and unit"),
            ("7", "</think>\\boxed{2 + 5 = 7}", true, true, "value after the last ="),
            ("6", "</think>\\boxed{\\binom{6}{5} = 6}", true, true, "value after the last ="),
            ("5", "</think>\\boxed{2 + 5 = 7}", false, false, "the left side is not the answer"),
            ("\\frac{33}{100}", "</think>\\boxed{33\\%}", true, true, "explicit percent"),
            ("0.33", "</think>\\boxed{33}", false, false, "no percent sign: 33 is not 0.33"),
            ("0.1", "</think>\\boxed{0.1 \\text{ m/s}}", true, true, "compound unit"),
            ("100", "</think>\\boxed{100 \\text{ rad/s}}", true, true, "compound unit"),
            ("84.01", "</think>\\boxed{84.01 g/mol}", true, true, "plain compound unit"),
            ("84", "</think>\\boxed{84.01 g/mol}", false, false, "units do not round"),
            (
                "x/2-1/4+ce^{-2x}",
                "</think>\\boxed{y = \\frac{1}{2}x - \\frac{1}{4} + c e^{-2x}}",
                true,
                true,
                "equation with a free constant",
            ),
            (
                "x/2-1/4+ce^{-2x}",
                "</think>\\boxed{y = \\frac{1}{2}x + \\frac{1}{4} + c e^{-2x}}",
                false,
                false,
                "a different constant term",
            ),
            ("1.39e-10", "</think>\\boxed{1.39 \\times 10^{-10}}", true, true, "scientific notation"),
            ("1.39e-10", "</think>\\boxed{1.4 \\times 10^{-10}}", false, false, "no loose tolerance"),
            ("\\frac{1}{3}E_{1}+\\frac{2}{3}E_{2}", "</think>\\boxed{(1/3)E₁ + (2/3)E₂}", true, true, "unicode subscripts"),
            ("\\frac{1}{4-\\omega^{2}}", "</think>\\boxed{A = \\frac{1}{4 - \\omega^2}, \\quad \\text{for } \\omega^2 \\neq 4}", true, true, "side condition"),
        ],
    );
}

#[test]
fn gsm8k_needs_a_stated_answer() {
    run(
        Kind::Gsm8k,
        &[
            (
                "#### 4",
                "</think>She earns 18 dollars on Monday and 4 on Tuesday.",
                false,
                false,
                "no answer statement, no last-number fallback",
            ),
            (
                "#### 18",
                "</think>She makes $18.00 a day.",
                true,
                false,
                "a one-sentence answer section with one number",
            ),
            (
                "#### 18",
                "</think>So she pays $18 in total.",
                true,
                false,
                "a final statement",
            ),
            ("#### 18", "</think>#### 18", true, false, "GSM8K marker"),
            ("#### 18", "</think>\\boxed{18}", true, true, "box"),
            (
                "#### 18",
                "asdf 18 qwe zx 4 18 mmm 18 12 18,",
                false,
                false,
                "gibberish with digits",
            ),
            (
                "#### 18",
                "the the 18 18 18 of of 18 18",
                false,
                false,
                "degenerate repetition",
            ),
        ],
    );
    run(
        Kind::Math,
        &[
            (
                "18",
                "xj 18 qq 3 kk 18 lo 18 ## 18 vv 18 z",
                false,
                false,
                "gibberish with digits",
            ),
            (
                "3",
                "1 2 3",
                false,
                false,
                "a bare list of numbers is not 3",
            ),
        ],
    );
}
