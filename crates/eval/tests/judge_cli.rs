//! The `eval judge` subcommand: one verdict line per input line, malformed lines reported
//! on stderr and answered with `correct: false`. (The judge itself is tested in the
//! `judge` crate.)

#[test]
fn cli_judges_a_file_and_reports_malformed_lines() {
    let dir = std::env::temp_dir().join(format!("eval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id": "a", "kind": "math", "gold": "1/2", "response": "</think>\\boxed{0.5}"}"#, "\n",
            r#"{"id": "b", "gold": "3", "response": "</think>\\boxed{4}", "extra": 1}"#, "\n",
            "not json\n",
            r#"{"id": "d", "kind": "factual", "gold": ["Paris", "City of Light"], "response": "Paris"}"#, "\n",
        ),
    )
    .expect("write input");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["judge", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run eval");
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("line 3"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["correct"], true);
    assert_eq!(lines[0]["extracted"], "0.5");
    assert_eq!(lines[1]["correct"], false);
    assert_eq!(lines[2]["correct"], false);
    assert_eq!(lines[3]["correct"], true);
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["judge", "--input", "/nonexistent"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
}

#[test]
fn cli_answer_policy_and_think_prefilled() {
    let dir = std::env::temp_dir().join(format!("eval-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id": "unboxed", "gold": "7", "response": "</think>So, the mean is 7."}"#, "\n",
            r#"{"id": "boxed", "gold": "7", "response": "3 + 4 = 7</think>So, the mean is $\\boxed{7}$."}"#, "\n",
            r#"{"id": "cut", "gold": "5", "response": "So the answer is 5 since"}"#, "\n",
            r#"{"id": "line", "gold": "7", "response": "</think>So, the mean is 7.", "policy": "careful"}"#, "\n",
            r#"{"id": "pre", "gold": "5", "response": "So the answer is 5.", "think_prefilled": true}"#, "\n",
        ),
    )
    .expect("write input");
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
            .args(["judge", "--input"])
            .arg(&input)
            .args(extra)
            .output()
            .expect("run eval");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let careful = run(&[]);
    let correct: Vec<bool> = careful.iter().map(|v| v["correct"] == true).collect();
    assert_eq!(correct, [true, true, false, true, false]);
    assert_eq!(careful[1]["format"], "prefilled");
    assert_eq!(careful[1]["format_ok"], true);
    let strict = run(&["--policy", "strict"]);
    let correct: Vec<bool> = strict.iter().map(|v| v["correct"] == true).collect();
    assert_eq!(
        correct,
        [false, true, false, true, false],
        "line overrides win"
    );
    let prefilled = run(&["--think-prefilled"]);
    assert_eq!(prefilled[4]["format"], "unterminated");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["judge", "--policy", "lenient", "--input"])
        .arg(&input)
        .output()
        .expect("run");
    assert!(!bad.status.success());
}
