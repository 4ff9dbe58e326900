//! `eval run` on the bundled math and GSM8K tasks' response files (written for the suite) into a temporary
//! folder, then `eval export-sft` on it: only correct, well-formed samples are written,
//! in TRL's conversational format, once per problem when asked; malformed run files are
//! errors naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/suite");

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .output()
        .expect("running eval")
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .expect("reading output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `eval run` of the math and GSM8K tasks on their reference responses.
fn run(dir: &Path) -> std::path::PathBuf {
    let responses = dir.join("responses.jsonl");
    let mut text = String::new();
    for t in ["math", "gsm8k"] {
        text += &std::fs::read_to_string(format!("{SUITE}/{t}.responses.jsonl")).unwrap();
    }
    std::fs::write(&responses, text).unwrap();
    let out = dir.join("run");
    let o = eval(&[
        "run",
        "--task",
        &format!("{SUITE}/math.yaml"),
        "--task",
        &format!("{SUITE}/gsm8k.yaml"),
        "--responses",
        s(&responses),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// (task, id, sample) -> (correct, format) from report.json.
fn verdicts(run: &Path) -> BTreeMap<(String, String, u64), (bool, String)> {
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let mut m = BTreeMap::new();
    for t in report["tasks"].as_array().unwrap() {
        for x in t["samples"].as_array().unwrap() {
            m.insert(
                (
                    t["name"].as_str().unwrap().to_string(),
                    x["id"].as_str().unwrap().to_string(),
                    x["sample"].as_u64().unwrap(),
                ),
                (
                    x["correct"].as_bool().unwrap(),
                    x["format"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    m
}

fn key(line: &Value) -> (String, String, u64) {
    (
        line["task"].as_str().unwrap().to_string(),
        line["id"].as_str().unwrap().to_string(),
        line["sample"].as_u64().unwrap(),
    )
}

fn export(run: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["export-sft", "--run", s(run), "--out", s(out)];
    args.extend_from_slice(extra);
    let o = eval(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_jsonl(out)
}

#[test]
fn export_keeps_correct_well_formed_samples() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(dir.path());
    let verdicts = verdicts(&run);
    let good: BTreeSet<_> = verdicts
        .iter()
        .filter(|(_, (c, f))| *c && (f == "full" || f == "prefilled"))
        .map(|(k, _)| k.clone())
        .collect();
    // The suite's responses include wrong, truncated and untagged ones.
    assert!(good.len() >= 10 && good.len() < verdicts.len(), "{good:?}");

    // Every sample.
    let all = export(&run, &dir.path().join("all.jsonl"), &[]);
    let kept: BTreeSet<_> = all.iter().map(key).collect();
    assert_eq!(kept, good);
    assert_eq!(all.len(), good.len());
    for line in &all {
        let m = line["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2, "no system prompt in these tasks");
        assert_eq!(m[0]["role"], "user");
        assert_eq!(m[1]["role"], "assistant");
        assert!(!m[0]["content"].as_str().unwrap().is_empty());
        let answer = m[1]["content"].as_str().unwrap();
        assert!(answer.trim_start().starts_with("<think>"), "{answer}");
        assert_eq!(answer.matches("</think>").count(), 1, "{answer}");
    }
    // The pre-filled sample got its opening tag back.
    let prefilled = all
        .iter()
        .find(|l| l["id"] == "divisors-12" && l["sample"] == 3)
        .expect("divisors-12/3 is correct and pre-filled");
    assert!(prefilled["messages"][1]["content"]
        .as_str()
        .unwrap()
        .starts_with("<think>\n"));
    assert!(prefilled["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("sum of the positive divisors of $12$"));

    // One per problem: the shortest.
    let with_good: BTreeSet<_> = good
        .iter()
        .map(|(t, i, _)| (t.clone(), i.clone()))
        .collect();
    let shortest = export(
        &run,
        &dir.path().join("shortest.jsonl"),
        &["--one-per-problem", "shortest"],
    );
    assert_eq!(shortest.len(), with_good.len());
    let len = |l: &Value| {
        l["messages"][1]["content"]
            .as_str()
            .unwrap()
            .chars()
            .count()
    };
    for line in &shortest {
        assert!(good.contains(&key(line)));
        let k = key(line);
        let rivals = all.iter().filter(|l| {
            let r = key(l);
            r.0 == k.0 && r.1 == k.1
        });
        for r in rivals {
            // Lengths are of the responses as run; the pre-filled one gained its tag here.
            let extra = |l: &Value| {
                if l["id"] == "divisors-12" && l["sample"] == 3 {
                    "<think>\n".len()
                } else {
                    0
                }
            };
            assert!(len(line) - extra(line) <= len(r) - extra(r), "{k:?}");
        }
    }
    let per_problem: BTreeSet<_> = shortest
        .iter()
        .map(|l| (l["task"].to_string(), l["id"].to_string()))
        .collect();
    assert_eq!(per_problem.len(), shortest.len());

    // One per problem: random, reproducible from the seed.
    let a = export(
        &run,
        &dir.path().join("r1.jsonl"),
        &["--one-per-problem", "random", "--seed", "7"],
    );
    let b = export(
        &run,
        &dir.path().join("r2.jsonl"),
        &["--one-per-problem", "random", "--seed", "7"],
    );
    assert_eq!(a, b);
    assert_eq!(a.len(), with_good.len());
    assert!(a.iter().all(|l| good.contains(&key(l))));
    let choices: BTreeSet<Vec<(String, String, u64)>> = (0..16)
        .map(|seed| {
            let seed = seed.to_string();
            export(
                &run,
                &dir.path().join("r.jsonl"),
                &["--one-per-problem", "random", "--seed", &seed],
            )
            .iter()
            .map(key)
            .collect()
        })
        .collect();
    assert!(choices.len() > 1, "different seeds choose differently");
}

#[test]
fn reports_carry_the_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(dir.path());
    let md = std::fs::read_to_string(run.join("summary.md")).unwrap();
    assert!(md.contains("**GRPO rewards**"), "{md}");
    assert!(md.contains("(english)"), "{md}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    for t in report["tasks"].as_array().unwrap() {
        let samples = t["samples"].as_array().unwrap();
        let pass1 = t["metrics"]["pass1"].as_f64().unwrap();
        let mean_acc = t["metrics"]["rewards"]["accuracy"].as_f64().unwrap();
        // Every problem has the same number of samples, so the mean accuracy is pass@1.
        assert!((pass1 - mean_acc).abs() < 1e-9);
        for x in samples {
            let r = &x["rewards"];
            let ok = x["format"] == "full" || x["format"] == "prefilled";
            assert_eq!(r["format"].as_f64().unwrap(), if ok { 1.0 } else { 0.0 });
            assert_eq!(r["accuracy"].as_f64().unwrap() == 1.0, x["correct"] == true);
            let sum = r["accuracy"].as_f64().unwrap()
                + r["format"].as_f64().unwrap()
                + r["language"].as_f64().unwrap();
            assert!((r["total"].as_f64().unwrap() - sum).abs() < 1e-6);
        }
    }
}

#[test]
fn malformed_run_files_are_errors_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // A folder without samples.jsonl.
    let o = eval(&["export-sft", "--run", s(dir.path()), "--out", s(&out)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("samples.jsonl") && err.contains("not found"),
        "{err}"
    );
    // A broken second line.
    let good = r#"{"task":"t","id":"a","sample":0,"prompt":"p","response":"<think>r</think>1","correct":true,"extracted":"1","format":"full","rewards":{"accuracy":1.0,"format":1.0,"language":1.0,"total":3.0}}"#;
    let samples = dir.path().join("samples.jsonl");
    for (bad, what) in [
        (format!("{good}\n{{\"task\": \"t\", \"id\": \n"), ":2:"),
        (format!("{good}\n{{\"task\": \"t\"}}\n"), ":2:"),
        (format!("\n{good}\n{good}\n"), ":3:"),
        ("[1, 2]\n".to_string(), ":1:"),
    ] {
        std::fs::write(&samples, &bad).unwrap();
        let o = eval(&["export-sft", "--run", s(dir.path()), "--out", s(&out)]);
        assert!(!o.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("samples.jsonl{what}")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::write(&samples, [0xffu8, 0xfe]).unwrap();
    let o = eval(&["export-sft", "--run", s(&samples), "--out", s(&out)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not UTF-8"));
    // A good file works.
    std::fs::write(&samples, format!("{good}\n")).unwrap();
    let o = eval(&["export-sft", "--run", s(&samples), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_jsonl(&out).len(), 1);
}
