//! `cargo run -p eval` with no arguments: the bundled self-test always runs and is called
//! what it is; with no data it says no real task was run; with data but no response
//! source it lists the tasks and says no model was scored; with a response source it also
//! scores the real tasks and says on what. The default data folder is the user's cache
//! folder (`$XDG_CACHE_HOME` or `~/.cache`, + `deepseek-eval/data`).

use std::path::Path;
use std::process::{Command, Output};

fn eval(cwd: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("EVAL_DATA_DIR")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const GSM8K: &str = "{\"question\": \"What is 2 + 3?\", \"answer\": \"2 + 3 = 5\\n#### 5\"}\n\
    {\"question\": \"What is 4 * 2?\", \"answer\": \"4 * 2 = 8\\n#### 8\"}\n";

#[test]
fn default_run_says_what_it_scored() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // A fresh machine: no data anywhere.
    let text = stdout(&eval(dir.path(), &home, &[]));
    assert!(
        text.contains("# Evaluation report: bundled self-test"),
        "{text}"
    );
    assert!(
        text.contains("written for the self-test, not model output"),
        "{text}"
    );
    assert!(text.contains("say nothing about any model"), "{text}");
    let data = home.join(".cache/deepseek-eval/data");
    assert!(
        text.contains(&format!("No benchmark data in {}", data.display()))
            && text.contains("no real task was run"),
        "{text}"
    );
    assert!(dir.path().join("eval-out/bundled/report.json").is_file());
    assert!(!dir.path().join("eval-out/real").exists());
    // Data present, no response source: listed, not scored.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("gsm8k_test.jsonl"), GSM8K).unwrap();
    let text = stdout(&eval(dir.path(), &home, &[]));
    assert!(
        text.contains("for: gsm8k. No response source was given")
            && text.contains("no model was scored"),
        "{text}"
    );
    assert!(!dir.path().join("eval-out/real").exists());
    // With a response source the real tasks are scored too, and the report says on what.
    let responses = dir.path().join("model.jsonl");
    std::fs::write(
        &responses,
        "{\"task\": \"gsm8k\", \"id\": \"0\", \"text\": \"<think>\\n2+3\\n</think>\\n\\\\boxed{5}\"}\n\
         {\"task\": \"gsm8k\", \"id\": \"1\", \"text\": \"<think>\\n4*2\\n</think>\\n\\\\boxed{9}\"}\n",
    )
    .unwrap();
    let text = stdout(&eval(
        dir.path(),
        &home,
        &["suite", "--responses", responses.to_str().unwrap()],
    ));
    let src = format!("responses from {}", responses.display());
    assert!(text.contains(&format!("Scored gsm8k on {src}")), "{text}");
    let md = std::fs::read_to_string(dir.path().join("eval-out/real/summary.md")).unwrap();
    assert!(md.contains(&format!("**Responses:** {src}")), "{md}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("eval-out/real/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["tasks"][0]["name"], "gsm8k");
    assert_eq!(report["tasks"][0]["metrics"]["pass1"], 0.5);
}
