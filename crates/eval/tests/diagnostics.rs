//! Run diagnostics end to end: `eval run` on a response file written by the test whose samples are
//! byte-identical (as from a server that ignores the sampling parameters), one problem
//! cut off at the token limit and one looping. At temperature 0.6 the run warns on the
//! console and in `report.json` and `summary.md`; at temperature 0 identical samples are
//! expected and not reported.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/suite");
const K: usize = 3;

/// Every problem's first reference response, repeated for all `K` samples; the first
/// problem's samples end at the token limit, the second problem's in a loop.
fn responses(dir: &Path) -> std::path::PathBuf {
    let mut first: Vec<(String, String)> = Vec::new();
    for l in std::fs::read_to_string(format!("{SUITE}/math.responses.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(l).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        if first.iter().all(|(i, _)| *i != id) {
            first.push((id, v["text"].as_str().unwrap().to_string()));
        }
    }
    assert!(first.len() >= 4, "enough problems");
    let mut out = String::new();
    for (i, (id, text)) in first.iter().enumerate() {
        let mut text = text.clone();
        if i == 1 {
            text += &"I should double-check the arithmetic here. ".repeat(30);
        }
        let finish = if i == 0 { "length" } else { "stop" };
        for s in 0..K {
            out +=
                &json!({"id": id, "sample": s, "text": text, "finish_reason": finish}).to_string();
            out.push('\n');
        }
    }
    let p = dir.join("responses.jsonl");
    std::fs::write(&p, out).unwrap();
    p
}

fn run(dir: &Path, temperature: f64) -> (Output, Value, String) {
    let task = dir.join(format!("task-{temperature}.yaml"));
    std::fs::write(
        &task,
        format!(
            "version: 1\nname: diag-math\ndataset: {{path: {SUITE}/math.jsonl}}\n\
             checker: math\nsamples: {K}\nsampling: {{temperature: {temperature}}}\n"
        ),
    )
    .unwrap();
    eval_run(
        &task,
        &responses(dir),
        &dir.join(format!("out-{temperature}")),
    )
}

/// `eval run --task TASK --responses RESPONSES --out OUT`: its output, `report.json` and
/// `summary.md`.
fn eval_run(task: &Path, responses: &Path, out: &Path) -> (Output, Value, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_eval"))
        .arg("run")
        .arg("--task")
        .arg(task)
        .arg("--responses")
        .arg(responses)
        .arg("--out")
        .arg(out)
        .env_remove("RUST_LOG")
        .output()
        .expect("running eval");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    // The summary says where the responses came from.
    assert!(
        md.contains("**Responses:** responses from "),
        "no response source in the summary:\n{md}"
    );
    (o, report, md)
}

#[test]
fn identical_samples_above_temperature_zero_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (o, report, md) = run(dir.path(), 0.6);
    let d = &report["tasks"][0]["diagnostics"];
    let problems = report["tasks"][0]["problems"].as_u64().unwrap();
    assert_eq!(d["temperature"], 0.6);
    assert_eq!(d["identical_problems"].as_u64(), Some(problems), "{d}");
    assert_eq!(d["multi_sample_problems"].as_u64(), Some(problems));
    assert_eq!(d["responses"].as_u64(), Some(problems * K as u64));
    assert_eq!(d["finish_reason_known"].as_u64(), Some(problems * K as u64));
    assert_eq!(d["truncated"].as_u64(), Some(K as u64));
    assert_eq!(d["repetition_loops"].as_u64(), Some(K as u64));
    assert_eq!(d["non_text"].as_u64(), Some(0));
    let warnings: Vec<&str> = d["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings[0].contains("byte-identical"), "{warnings:?}");
    assert!(warnings[1].contains("token limit"), "{warnings:?}");
    assert!(warnings[2].contains("degenerate"), "{warnings:?}");

    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("WARN"), "{stderr}");
    for w in &warnings {
        assert!(stderr.contains(w), "console lacks {w:?}: {stderr}");
        assert!(md.contains(w), "summary lacks {w:?}: {md}");
    }
    assert!(md.contains("## Diagnostics"), "{md}");
    assert!(
        md.contains(&format!("| diag-math | 0.6 | {problems} / {problems} |")),
        "{md}"
    );
}

#[test]
fn identical_samples_at_temperature_zero_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (o, report, md) = run(dir.path(), 0.0);
    let d = &report["tasks"][0]["diagnostics"];
    assert_eq!(d["identical_problems"].as_u64(), Some(0), "{d}");
    let warnings = d["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .all(|w| !w.as_str().unwrap().contains("identical")),
        "{warnings:?}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("byte-identical"), "{stderr}");
    assert!(!md.contains("byte-identical"), "{md}");
}

#[test]
fn response_files_without_finish_reason_skip_the_truncation_check() {
    // The bundled suite's reference responses: distinct samples, no finish reasons,
    // no loops: a clean run.
    let dir = tempfile::tempdir().unwrap();
    let (o, report, md) = eval_run(
        Path::new(&format!("{SUITE}/math.yaml")),
        Path::new(&format!("{SUITE}/math.responses.jsonl")),
        &dir.path().join("out"),
    );
    let d = &report["tasks"][0]["diagnostics"];
    assert_eq!(d["finish_reason_known"].as_u64(), Some(0), "{d}");
    assert!(d.get("truncated_share").is_none(), "{d}");
    assert_eq!(d["warnings"].as_array().unwrap().len(), 0, "{d}");
    assert!(md.contains("n/a (no finish reason)"), "{md}");
    assert!(md.contains("No warnings."), "{md}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("WARN"));
}
