//! The reward cases shared with the Python module's test
//! (`crates/judge-py/tests/cases.json`, also read by `crates/judge-py/tests/test_judge.py`):
//! verdict, extracted answer, think format and every reward component.

use judge::reward::{Completion, Language, RewardConfig, RewardWeights};
use judge::{score_batch, AnswerPolicy, Gold, Judge, JudgeConfig, Kind};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    weights: RewardWeights,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    kind: Kind,
    gold: Gold,
    response: String,
    #[serde(default)]
    policy: AnswerPolicy,
    #[serde(default)]
    think_prefilled: bool,
    #[serde(default)]
    language: Language,
    expect: Expect,
}

#[derive(Deserialize)]
struct Expect {
    correct: bool,
    /// Absent: not checked; `null`: no answer.
    #[serde(default, deserialize_with = "some")]
    extracted: Option<Option<String>>,
    format: String,
    accuracy: f32,
    format_reward: f32,
    language: f32,
    total: f32,
}

fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn load() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../judge-py/tests/cases.json");
    let text = std::fs::read_to_string(path).expect("reading the shared cases");
    serde_json::from_str(&text).expect("parsing the shared cases")
}

#[test]
fn shared_cases() {
    let file = load();
    assert!(file.cases.len() >= 10);
    for c in &file.cases {
        let judge = Judge::new(JudgeConfig {
            policy: c.policy,
            think_prefilled: c.think_prefilled,
            ..JudgeConfig::default()
        });
        let v = judge.check(c.kind, &c.gold, &c.response);
        let e = &c.expect;
        let name = &c.name;
        assert_eq!(v.correct, e.correct, "{name}");
        if let Some(x) = &e.extracted {
            assert_eq!(&v.extracted, x, "{name}");
        }
        assert_eq!(v.format.name(), e.format, "{name}");
        let config = RewardConfig {
            weights: file.weights,
            language: c.language,
        };
        let r = judge.rewards(&Completion::new(c.kind, &c.gold, &c.response), &config);
        assert_eq!(r.accuracy, e.accuracy, "{name}");
        assert_eq!(r.format, e.format_reward, "{name}");
        assert!((r.language - e.language).abs() < 1e-6, "{name}: {r:?}");
        assert!((r.total - e.total).abs() < 1e-6, "{name}: {r:?}");
    }
}

#[test]
fn shared_cases_in_one_batch() {
    // The default-option cases in one batch, with per-completion target languages.
    let file = load();
    let judge = Judge::default();
    let cases: Vec<&Case> = file
        .cases
        .iter()
        .filter(|c| c.policy == AnswerPolicy::Careful && !c.think_prefilled)
        .collect();
    let batch: Vec<Completion<'_>> = cases
        .iter()
        .map(|c| Completion {
            language: Some(c.language),
            ..Completion::new(c.kind, &c.gold, &c.response)
        })
        .collect();
    let config = RewardConfig {
        weights: file.weights,
        language: Language::English,
    };
    for (c, r) in cases.iter().zip(score_batch(&judge, &batch, &config)) {
        assert!((r.total - c.expect.total).abs() < 1e-6, "{}: {r:?}", c.name);
    }
}
