//! The reward API: the batch equals one-by-one scoring on generated completions (on
//! several thread counts with the `parallel` feature), and degenerate inputs (empty, 1 MB,
//! pathological delimiters) give rewards in range without panics, in bounded time.

use std::time::{Duration, Instant};

use judge::reward::{count_words, Completion, Language, RewardBreakdown, RewardConfig};
use judge::{score_batch, Gold, Judge, JudgeConfig, Kind, RewardWeights};

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "Let me compute the sum. ",
    "所以我们得到 ",
    "首先计算 ",
    "$x^2 + 1$ ",
    "\\(a+b\\) ",
    "\\[\\int_0^1 x\\,dx\\] ",
    "wait, ",
    "42 ",
    "\\boxed{7} ",
    "the answer is 7. ",
    "Привет ",
    "π θ ",
    "$5 ",
    "\\begin{align} a &= b \\end{align} ",
    "<|end_of_thought|>",
    "\n\n",
];

fn generate(n: usize) -> Vec<(Kind, Gold, String)> {
    let mut rng = Rng(17);
    (0..n)
        .map(|i| {
            let mut reasoning = String::new();
            for _ in 0..(rng.next() % 12) {
                reasoning.push_str(rng.pick(PIECES));
            }
            let answer = rng.pick(&[
                "\\boxed{7}",
                "The answer is $\\boxed{\\frac{14}{2}}$.",
                "\\boxed{8}",
                "The answer is B.",
                "Paris",
                "",
            ]);
            let response = match rng.next() % 5 {
                0 => format!("<think>{reasoning}</think>{answer}"),
                1 => format!("{reasoning}</think>{answer}"),
                2 => format!("<think>{reasoning}"),
                3 => format!("{reasoning}{answer}"),
                _ => format!("<think>{reasoning}</think>{answer}</think>"),
            };
            let (kind, gold) = match i % 4 {
                0 | 1 => (Kind::Math, Gold::from("7")),
                2 => (Kind::Mc, Gold::from("B")),
                _ => (Kind::Factual, Gold::Aliases(vec!["Paris".into()])),
            };
            (kind, gold, response)
        })
        .collect()
}

fn completions(cases: &[(Kind, Gold, String)]) -> Vec<Completion<'_>> {
    cases
        .iter()
        .enumerate()
        .map(|(i, (k, g, r))| Completion {
            language: (i % 3 == 0).then_some(Language::Chinese),
            ..Completion::new(*k, g, r)
        })
        .collect()
}

#[test]
fn batch_equals_sequential() {
    let cases = generate(400);
    let batch = completions(&cases);
    let config = RewardConfig {
        weights: RewardWeights {
            accuracy: 1.0,
            format: 0.5,
            language: 0.3,
        },
        language: Language::English,
    };
    for judge in [
        Judge::default(),
        Judge::new(JudgeConfig {
            think_prefilled: true,
            policy: judge::AnswerPolicy::Strict,
            ..JudgeConfig::default()
        }),
    ] {
        let sequential: Vec<RewardBreakdown> =
            batch.iter().map(|c| judge.rewards(c, &config)).collect();
        assert_eq!(score_batch(&judge, &batch, &config), sequential);
        #[cfg(feature = "parallel")]
        for threads in [1, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let parallel = pool.install(|| score_batch(&judge, &batch, &config));
            assert_eq!(parallel, sequential, "{threads} threads");
        }
        // The generator reaches every outcome.
        assert!(sequential.iter().any(|r| r.accuracy == 1.0));
        assert!(sequential.iter().any(|r| r.accuracy == 0.0));
        assert!(sequential.iter().any(|r| r.format == 1.0));
        assert!(sequential
            .iter()
            .any(|r| r.language > 0.0 && r.language < 1.0));
    }
    assert!(score_batch(&Judge::default(), &[], &config).is_empty());
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let mb = 1 << 20;
    let inputs: Vec<String> = vec![
        String::new(),
        "<think>".into(),
        "</think>".into(),
        "$".into(),
        "\\".into(),
        "\\begin{".into(),
        "<|".into(),
        "word ".repeat(mb / 5),
        "中".repeat(mb / 3),
        format!(
            "<think>{}</think>\\boxed{{7}}",
            "Let me see. ".repeat(mb / 12)
        ),
        "$".repeat(mb),
        "\\(".repeat(mb / 2),
        "\\[a".repeat(mb / 3),
        "\\begin{align}x".repeat(mb / 14),
        "\\begin{unknown}".repeat(mb / 15),
        "<|".repeat(mb / 2),
        "\\".repeat(mb),
        "é\u{301}'’".repeat(mb / 8),
        "a'".repeat(mb / 2),
        "\u{FFFF}\u{10FFFF}\u{30FC}".repeat(mb / 10),
    ];
    let judge = Judge::default();
    let config = RewardConfig::default();
    let gold = Gold::from("7");
    for text in &inputs {
        let t = Instant::now();
        for lang in [Language::English, Language::Chinese] {
            let l = judge.language_reward(text, lang);
            assert!((0.0..=1.0).contains(&l), "{l}");
        }
        let r = judge.rewards(&Completion::new(Kind::Math, &gold, text), &config);
        assert!(r.total.is_finite() && (0.0..=3.0).contains(&r.total));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} bytes starting {:?} took {:?}",
            text.len(),
            &text.chars().take(20).collect::<String>(),
            t.elapsed()
        );
    }
    assert_eq!(count_words(&"word ".repeat(mb / 5)).latin, mb / 5);
    assert_eq!(count_words(&"中".repeat(1000)).cjk, 1000);
}
