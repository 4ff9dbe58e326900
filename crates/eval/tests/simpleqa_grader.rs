//! The SimpleQA LLM grader against the fake OpenAI server: `eval run --task simpleqa
//! --grader-endpoint URL --grader-model NAME` sends the official simple-evals grader prompt
//! (the answer section of each response, not its reasoning) and its A/B/C replies decide
//! CORRECT / INCORRECT / NOT_ATTEMPTED; the rules stay the default; a task that asks for
//! the LLM grader without an endpoint is an error naming the task.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const CSV: &str = "metadata,problem,answer\n\
    \"{'topic': 'Art'}\",Who painted the Mona Lisa?,Leonardo da Vinci\n\
    \"{'topic': 'Geography'}\",What is the capital of Australia?,Canberra\n\
    \"{'topic': 'Music'}\",Who composed the opera Tosca?,Giacomo Puccini\n";

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn grader(dir: &Path) -> Server {
    // The grader's replies, keyed by the grader requests' task and `ID#SAMPLE`.
    let replies = dir.join("grades.jsonl");
    write_lines(
        &replies,
        &[
            json!({"task": "simpleqa.grader", "id": "0#0", "text": "A"}),
            json!({"task": "simpleqa.grader", "id": "1#0", "text": "B"}),
            json!({"task": "simpleqa.grader", "id": "2#0", "text": "C"}),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake_openai"))
        .arg(&replies)
        .arg(dir.join("server.log"))
        .args(["--no-faults", "--bodies"])
        .arg(dir.join("bodies.jsonl"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Server(child, format!("http://{addr}"))
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("simple_qa_test_set.csv"), CSV).unwrap();
    write_lines(
        &dir.path().join("responses.jsonl"),
        &[
            json!({"id": "0", "text": "<think>\nThe Mona Lisa... Leonardo.\n</think>\nLeonardo da Vinci painted it."}),
            json!({"id": "1", "text": "<think>\nBiggest city is Sydney.\n</think>\nI believe it is Sydney."}),
            json!({"id": "2", "text": "<think>\nNot sure.\n</think>\nI don't know."}),
        ],
    );
    dir
}

fn run(dir: &Path, extra: &[&str], out: &str) -> (std::process::Output, Option<Value>) {
    let o = dir.join(out);
    let output = Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(["run", "--data-dir"])
        .arg(dir)
        .arg("--responses")
        .arg(dir.join("responses.jsonl"))
        .arg("--out")
        .arg(&o)
        .args(extra)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(o.join("report.json"))
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    (output, report)
}

#[test]
fn the_llm_grader_decides_the_grades() {
    let dir = setup();
    let server = grader(dir.path());
    let (out, report) = run(
        dir.path(),
        &[
            "--task",
            "simpleqa",
            "--grader-endpoint",
            &server.1,
            "--grader-model",
            "grader",
        ],
        "llm",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = &report.unwrap()["tasks"][0];
    let grades: Vec<(&str, bool)> = t["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["grade"].as_str().unwrap(),
                s["correct"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        grades,
        [
            ("CORRECT", true),
            ("INCORRECT", false),
            ("NOT_ATTEMPTED", false)
        ]
    );
    let f = &t["metrics"]["factual"];
    let third = 1.0 / 3.0;
    for k in ["correct", "incorrect", "not_attempted"] {
        assert!((f[k].as_f64().unwrap() - third).abs() < 1e-9, "{k}: {f}");
    }
    assert!(
        t["source"].as_str().unwrap().contains("SimpleQA grader"),
        "{}",
        t["source"]
    );
    // What the grader was sent: the official prompt with the answer section only, at T=0.
    let bodies: Vec<Value> = std::fs::read_to_string(dir.path().join("bodies.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bodies.len(), 3);
    let prompts: Vec<&str> = bodies
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap())
        .collect();
    assert!(prompts.iter().all(|p| p
        .starts_with("Your job is to look at a question, a gold target, and a predicted answer")));
    assert!(
        prompts.iter().any(|p| p.contains(
            "Question: Who painted the Mona Lisa?\nGold target: Leonardo da Vinci\nPredicted answer: Leonardo da Vinci painted it.\n```"
        )),
        "{prompts:?}"
    );
    assert!(prompts
        .iter()
        .all(|p| !p.contains("<think>") && !p.contains("Biggest city")));
    assert!(bodies.iter().all(|b| b["temperature"] == 0.0), "{bodies:?}");
    // A rerun asks the grader nothing: its replies are in the run's cache.
    let (out, _) = run(
        dir.path(),
        &[
            "--task",
            "simpleqa",
            "--grader-endpoint",
            &server.1,
            "--grader-model",
            "grader",
        ],
        "llm",
    );
    assert!(out.status.success());
    let n = std::fs::read_to_string(dir.path().join("bodies.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(n, 3, "the grader was asked again");
}

#[test]
fn rules_stay_the_default_and_llm_without_endpoint_is_an_error() {
    let dir = setup();
    let (out, report) = run(dir.path(), &["--task", "simpleqa"], "rules");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = &report.unwrap()["tasks"][0];
    assert!(t["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s.get("grade").is_none()));
    assert!(!t["source"].as_str().unwrap().contains("grader"));
    let yaml = eval::task::BUILTIN
        .iter()
        .find(|(n, _)| *n == "simpleqa")
        .unwrap()
        .1
        .replace("checker: factual", "checker: factual\ngrader: llm")
        .replace("{data_dir}/", "");
    let task = dir.path().join("simpleqa-llm.yaml");
    std::fs::write(&task, yaml).unwrap();
    let (out, _) = run(
        dir.path(),
        &["--task", task.to_str().unwrap()],
        "no-endpoint",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("task simpleqa") && err.contains("--grader-endpoint"),
        "{err}"
    );
}
